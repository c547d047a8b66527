// Package mutate computes the change kvinject makes to a pod: the in-memory secrets
// volume, the fetcher agent container, the identity wiring and the read-only mounts,
// as JSON patch operations against the pod as the API server sent it.
//
// It is a pure function of its inputs. The patch is built operation by operation,
// never by diffing a re-encoded pod, so it only ever adds what kvinject owns: it has
// no "remove" or "replace" operations and cannot drop fields that this binary's
// k8s.io/api does not know. It is idempotent: a pod that already carries exactly
// what would be injected gets an empty patch.
package mutate

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// Names and paths that kvinject owns inside an injected pod.
const (
	// VolumeName is the in-memory volume that holds the secret files.
	VolumeName = "kvinject-secrets"
	// TokenVolumeName is the projected workload-identity token, mounted only into the agent.
	TokenVolumeName = "kvinject-azure-token"
	// NoAPITokenVolumeName is an empty, read-only volume that the agent mounts where
	// Kubernetes puts the API token (APITokenDir). The API server's ServiceAccount
	// plugin does not mount the token into a container that already has a mount
	// there, so the agent, which never talks to the Kubernetes API, gets no API
	// token; and because the plugin then has nothing to add to the agent, the API
	// server has no reason to call the webhook a second time for the pod.
	NoAPITokenVolumeName = "kvinject-no-api-token"
	// APITokenDir is where the ServiceAccount plugin mounts the Kubernetes API token.
	APITokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	// AgentContainerName is the agent: a native sidecar, an init container, or a regular sidecar.
	AgentContainerName = mapping.AgentContainerName
	// AgentInitContainerName is the init-mode agent used with a regular (non-native) sidecar.
	AgentInitContainerName = mapping.AgentInitContainerName
	// AgentBinary is the agent's path inside its image.
	AgentBinary = "/kvinject-agent"
	// AgentDir is where the agent sees the secrets volume.
	AgentDir = "/var/run/kvinject/secrets"
	// TokenDir is where the agent sees the projected token.
	TokenDir = "/var/run/secrets/kvinject/azure-token"
	// TokenFile is the token's file name inside TokenDir.
	TokenFile = "azure-identity-token"
	// HubTokenVolumeName is the projected token the rotating agent presents to the hub.
	HubTokenVolumeName = "kvinject-hub-token"
	// HubTokenDir is where the rotating agent sees the hub token.
	HubTokenDir = "/var/run/secrets/kvinject/hub-token"
	// HubTokenFile is the hub token's file name.
	HubTokenFile = "token"
	// HubTokenExpirationSeconds is the hub token's lifetime: the API server's
	// minimum; the kubelet renews it at 80%.
	HubTokenExpirationSeconds = 600
	// TokenAudience is the audience Azure AD expects of a federated ServiceAccount token.
	TokenAudience = "api://AzureADTokenExchange"
	// TerminationLog is where the agent explains a failure for kubectl describe.
	TerminationLog = agentconfig.TerminationLog
)

// Config is the webhook's configuration of what it injects.
type Config struct {
	// AgentImage is the agent's image reference.
	AgentImage string
	// AgentImagePullPolicy is the agent's pull policy (default IfNotPresent).
	AgentImagePullPolicy corev1.PullPolicy
	// NativeSidecars makes the rotating agent a native sidecar (Kubernetes 1.29+);
	// otherwise it is an init container plus a regular sidecar.
	NativeSidecars bool
	// VolumeSizeLimit caps the in-memory volume.
	VolumeSizeLimit resource.Quantity
	// TokenExpirationSeconds is the projected token's lifetime (3600-86400).
	TokenExpirationSeconds int64
	// HubURL is the version hub's https URL; empty: rotating agents poll Key
	// Vault themselves. With it, the rotating agent (never the init-mode one)
	// gets --hub, a projected token of audience hubapi.Audience and HubCA.
	HubURL string
	// HubCA is the PEM bundle the agent trusts for the hub's certificate.
	HubCA string
	// RestartAction says a restart controller (cmd/restarter) reads the
	// hub's reports, so the restart action is admitted (with the hub).
	RestartAction bool
}

// Patch returns the JSON patch that injects spec into pod. An empty patch means the
// pod already carries the injection. Errors name the conflicting part of the pod.
func Patch(pod *corev1.Pod, spec *mapping.Spec, cfg Config) ([]jsonpatch.Operation, error) {
	if err := CheckLinux(pod); err != nil {
		return nil, err
	}
	if agent := findContainer(pod, AgentContainerName); agent != nil {
		spec = adoptInjection(pod, spec, agent)
	}
	selected := map[string]bool{}
	for _, n := range spec.Containers {
		selected[n] = true
	}
	if err := checkReserved(pod, selected, cfg, spec.Rotation); err != nil {
		return nil, err
	}
	if err := checkOnChange(spec, cfg); err != nil {
		return nil, err
	}
	want := Desired(pod, spec, cfg)
	p := &patcher{}

	for _, v := range want.Volumes {
		if err := p.ensureVolume(pod.Spec.Volumes, v); err != nil {
			return nil, err
		}
	}
	// Mounts first: their paths use the pod's original container indexes, which the
	// insertion of the agent below shifts.
	mount := corev1.VolumeMount{Name: VolumeName, MountPath: spec.MountPath, ReadOnly: true}
	for i := range pod.Spec.InitContainers {
		if c := &pod.Spec.InitContainers[i]; selected[c.Name] {
			if err := p.ensureMount(c, "/spec/initContainers/"+strconv.Itoa(i), mount); err != nil {
				return nil, err
			}
		}
	}
	for i := range pod.Spec.Containers {
		if c := &pod.Spec.Containers[i]; selected[c.Name] {
			if err := p.ensureMount(c, "/spec/containers/"+strconv.Itoa(i), mount); err != nil {
				return nil, err
			}
		}
	}
	if err := p.ensureContainer(pod.Spec.InitContainers, "/spec/initContainers", want.InitAgent, agentIndex(pod.Spec.InitContainers, selected)); err != nil {
		return nil, err
	}
	if want.Sidecar != nil {
		if err := p.ensureContainer(pod.Spec.Containers, "/spec/containers", *want.Sidecar, len(pod.Spec.Containers)); err != nil {
			return nil, err
		}
	}
	p.ensureAnnotation(pod.Annotations, mapping.AnnotationStatus, mapping.StatusInjected)
	return p.ops, nil
}

// adoptInjection adapts spec to a pod that already carries an agent, as on
// re-invocation: the agent keeps the user it was given, and with the default
// selection the mount stays in the containers that have it, rather than spreading
// to containers other webhooks appended since (their proxies must not read the
// app's secrets, nor change the agent's user). Whether the existing agent is
// really kvinject's is still decided by ensureContainer.
func adoptInjection(pod *corev1.Pod, spec *mapping.Spec, agent *corev1.Container) *mapping.Spec {
	s := *spec
	if sc := agent.SecurityContext; sc != nil && sc.RunAsUser != nil && sc.RunAsGroup != nil && *sc.RunAsUser > 0 {
		s.AgentUser, s.AgentGroup = *sc.RunAsUser, *sc.RunAsGroup
	}
	if s.ContainersDefaulted {
		s.Containers = nil
		for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for _, c := range cs {
				if !mapping.IsAgentContainer(c.Name) && mounts(&c, VolumeName) {
					s.Containers = append(s.Containers, c.Name)
				}
			}
		}
	}
	return &s
}

// checkReserved refuses pods that use kvinject's names for their own purposes: an
// agent container in the wrong place, a container mounting the identity token, or
// an unselected container mounting the secrets volume.
func checkReserved(pod *corev1.Pod, selected map[string]bool, cfg Config, rotation time.Duration) error {
	inInit := rotation == 0 || cfg.NativeSidecars
	for i, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		field := [...]string{"spec.initContainers", "spec.containers"}[i]
		for _, c := range cs {
			if mapping.IsAgentContainer(c.Name) {
				wantInit := inInit || c.Name == AgentInitContainerName
				if (i == 0) != wantInit {
					return fmt.Errorf("%s: the container name %q is reserved for kvinject; rename the pod's container", field, c.Name)
				}
				continue
			}
			switch {
			case mounts(&c, TokenVolumeName):
				return fmt.Errorf("container %q mounts %q: the name is reserved for kvinject's identity token, which only the agent may mount", c.Name, TokenVolumeName)
			case mounts(&c, HubTokenVolumeName):
				return fmt.Errorf("container %q mounts %q: the name is reserved for kvinject's hub token, which only the agent may mount", c.Name, HubTokenVolumeName)
			case mounts(&c, VolumeName) && !selected[c.Name]:
				return fmt.Errorf("container %q mounts %q but is not among the containers that get the secrets; add it to %s", c.Name, VolumeName, mapping.AnnotationContainers)
			}
		}
	}
	return nil
}

func mounts(c *corev1.Container, volume string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return true
		}
	}
	return false
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

// Injection is what a pod should carry for a spec.
type Injection struct {
	Volumes []corev1.Volume
	// InitAgent goes into initContainers: the native sidecar, or the init-mode agent.
	InitAgent corev1.Container
	// Sidecar is the regular sidecar used when native sidecars are off and rotation is on.
	Sidecar *corev1.Container
}

// Desired returns the volumes and agent containers that inject spec into pod.
func Desired(pod *corev1.Pod, spec *mapping.Spec, cfg Config) Injection {
	uid, gid := spec.AgentUser, spec.AgentGroup
	inj := Injection{Volumes: []corev1.Volume{{
		Name: VolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium:    corev1.StorageMediumMemory,
			SizeLimit: sizeLimit(cfg.VolumeSizeLimit),
		}},
	}}}
	if spec.Identity.Kind == agentconfig.IdentityWorkload {
		inj.Volumes = append(inj.Volumes, tokenVolume(cfg.TokenExpirationSeconds))
	}
	if usesHub(spec, cfg) {
		inj.Volumes = append(inj.Volumes, hubTokenVolume())
	}
	inj.Volumes = append(inj.Volumes, noAPITokenVolume())
	base := agentconfig.Config{
		VaultURL:  spec.VaultURL,
		Entries:   spec.Entries,
		Templates: spec.Templates,
		Dir:       AgentDir,
		FileMode:  spec.FileMode,
		Rotation:  spec.Rotation,
		Identity:  spec.Identity.Kind,
		OnChange:  spec.OnChange,
	}
	switch {
	case spec.Rotation == 0:
		inj.InitAgent = agentContainer(AgentContainerName, agentconfig.ModeInit, base, spec, cfg, uid, gid)
	case cfg.NativeSidecars:
		inj.InitAgent = agentContainer(AgentContainerName, agentconfig.ModeSidecar, base, spec, cfg, uid, gid)
		always := corev1.ContainerRestartPolicyAlways
		inj.InitAgent.RestartPolicy = &always
		inj.InitAgent.StartupProbe = startupProbe()
	default:
		inj.InitAgent = agentContainer(AgentInitContainerName, agentconfig.ModeInit, base, spec, cfg, uid, gid)
		sidecar := agentContainer(AgentContainerName, agentconfig.ModeSidecar, base, spec, cfg, uid, gid)
		inj.Sidecar = &sidecar
	}
	return inj
}

// agentContainer builds one agent container in the given mode. Every field the API
// server would default is set explicitly, so a re-invoked webhook sees its own
// container unchanged.
func agentContainer(name, mode string, base agentconfig.Config, spec *mapping.Spec, cfg Config, uid, gid int64) corev1.Container {
	base.Mode = mode
	hub := mode == agentconfig.ModeSidecar && usesHub(spec, cfg)
	if mode == agentconfig.ModeInit {
		// The action follows new sets, which only the rotating agent writes.
		base.Rotation = 0
		base.OnChange = agentconfig.OnChange{}
	}
	if hub {
		base.Hub = cfg.HubURL
	}
	mounts := []corev1.VolumeMount{{Name: VolumeName, MountPath: AgentDir}}
	if spec.Identity.Kind == agentconfig.IdentityWorkload {
		mounts = append(mounts, corev1.VolumeMount{Name: TokenVolumeName, MountPath: TokenDir, ReadOnly: true})
	}
	env := agentEnv(spec)
	if hub {
		mounts = append(mounts, corev1.VolumeMount{Name: HubTokenVolumeName, MountPath: HubTokenDir, ReadOnly: true})
		env = append(env,
			corev1.EnvVar{Name: agentconfig.EnvHubTokenFile, Value: path.Join(HubTokenDir, HubTokenFile)},
			corev1.EnvVar{Name: agentconfig.EnvHubCA, Value: cfg.HubCA},
		)
	}
	mounts = append(mounts, corev1.VolumeMount{Name: NoAPITokenVolumeName, MountPath: APITokenDir, ReadOnly: true})
	pull := cfg.AgentImagePullPolicy
	if pull == "" {
		pull = corev1.PullIfNotPresent
	}
	return corev1.Container{
		Name:                     name,
		Image:                    cfg.AgentImage,
		ImagePullPolicy:          pull,
		Command:                  []string{AgentBinary},
		Args:                     base.Args(),
		Env:                      env,
		Resources:                spec.Resources,
		VolumeMounts:             mounts,
		TerminationMessagePath:   TerminationLog,
		TerminationMessagePolicy: corev1.TerminationMessageReadFile,
		SecurityContext:          restricted(uid, gid),
	}
}

// agentEnv is the identity wiring (the azidentity environment contract) plus the
// pod's identity for audit logs and error messages.
func agentEnv(spec *mapping.Spec) []corev1.EnvVar {
	var env []corev1.EnvVar
	if spec.Identity.ClientID != "" {
		env = append(env, corev1.EnvVar{Name: agentconfig.EnvClientID, Value: spec.Identity.ClientID})
	}
	if spec.Identity.TenantID != "" {
		env = append(env, corev1.EnvVar{Name: agentconfig.EnvTenantID, Value: spec.Identity.TenantID})
	}
	env = append(env, corev1.EnvVar{Name: agentconfig.EnvAuthorityHost, Value: spec.Cloud.AuthorityHost})
	if spec.Identity.Kind == agentconfig.IdentityWorkload {
		env = append(env, corev1.EnvVar{Name: agentconfig.EnvTokenFile, Value: path.Join(TokenDir, TokenFile)})
	}
	field := func(name, fieldPath string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: fieldPath},
		}}
	}
	return append(env,
		field(agentconfig.EnvPodName, agentconfig.FieldPodName),
		field(agentconfig.EnvPodNamespace, agentconfig.FieldPodNamespace),
		field(agentconfig.EnvServiceAccount, agentconfig.FieldServiceAccount),
	)
}

// restricted is a security context that passes Pod Security "restricted".
func restricted(uid, gid int64) *corev1.SecurityContext {
	f, t := false, true
	return &corev1.SecurityContext{
		RunAsNonRoot:             &t,
		RunAsUser:                &uid,
		RunAsGroup:               &gid,
		AllowPrivilegeEscalation: &f,
		ReadOnlyRootFilesystem:   &t,
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// startupProbe passes once the agent has written the first complete set, which
// holds back every container after the native sidecar until then.
func startupProbe() *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
			Command: append([]string{AgentBinary}, agentconfig.Config{Mode: agentconfig.ModeProbe, Dir: AgentDir}.Args()...),
		}},
		TimeoutSeconds:   2,
		PeriodSeconds:    1,
		SuccessThreshold: 1,
		// Five minutes: the agent itself exits with an explanation on a permanent error.
		FailureThreshold: 300,
	}
}

// tokenVolume is the projected ServiceAccount token that Azure AD exchanges.
func tokenVolume(expiration int64) corev1.Volume {
	if expiration == 0 {
		expiration = 3600
	}
	mode := int32(0o644)
	return corev1.Volume{
		Name: TokenVolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          TokenAudience,
				ExpirationSeconds: &expiration,
				Path:              TokenFile,
			}}},
			DefaultMode: &mode,
		}},
	}
}

// checkOnChange refuses a restart action that the rotating agent could not
// report: the agent reports each new set to the version hub, which only a
// rotating agent of a webhook with a hub has (usesHub; with native sidecars
// off, that is the regular sidecar).
func checkOnChange(spec *mapping.Spec, cfg Config) error {
	if spec.OnChange.Kind != agentconfig.OnChangeRestart {
		return nil
	}
	if usesHub(spec, cfg) {
		if cfg.RestartAction {
			return nil
		}
		return fmt.Errorf("%s: %q needs the restart controller, kvinject-restarter, which rolls the pod's owner from the hub's reports, but this webhook runs without --restart-action (the restarter's install sets it). Fix: install the restarter (Helm: --set restarter.enabled=true; kustomize: components/restarter-builtin-certs or restarter-cert-manager, docs/actions.md), or use http:<port><path> to call the app's reload endpoint", mapping.AnnotationOnChange, spec.OnChange.String())
	}
	return fmt.Errorf("%s: %q needs the version hub (the agent reports each new set to the hub, and the restart controller restarts the pod's owner from the hub's reports), but this webhook injects no hub: its --hub-url is empty, or it cannot read the hub's CA bundle (see its log). Fix: install the hub and the restarter (Helm: --set hub.enabled=true,restarter.enabled=true; kustomize: manifests/install/*-hub with components/restarter-*), or use http:<port><path> to call the app's reload endpoint", mapping.AnnotationOnChange, spec.OnChange.String())
}

// usesHub reports whether the rotating agent watches the version hub: a hub is
// configured and the pod rotates.
func usesHub(spec *mapping.Spec, cfg Config) bool {
	return cfg.HubURL != "" && spec.Rotation > 0
}

// hubTokenVolume is the projected ServiceAccount token the rotating agent
// presents to the version hub: audience hubapi.Audience, which the API server
// does not accept, and the shortest lifetime the API server allows.
func hubTokenVolume() corev1.Volume {
	expiration := int64(HubTokenExpirationSeconds)
	mode := int32(0o644)
	return corev1.Volume{
		Name: HubTokenVolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          hubapi.Audience,
				ExpirationSeconds: &expiration,
				Path:              HubTokenFile,
			}}},
			DefaultMode: &mode,
		}},
	}
}

// noAPITokenVolume is the empty volume that keeps the API token out of the agent
// (see NoAPITokenVolumeName). It is in memory like the secrets, and small.
func noAPITokenVolume() corev1.Volume {
	limit := resource.MustParse("4Ki")
	return corev1.Volume{
		Name: NoAPITokenVolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium:    corev1.StorageMediumMemory,
			SizeLimit: &limit,
		}},
	}
}

func sizeLimit(q resource.Quantity) *resource.Quantity {
	if q.IsZero() {
		return nil
	}
	return &q
}

// agentIndex is where the agent goes in initContainers: first, except after the
// native sidecars the pod already has at the front (a service-mesh proxy the
// agent's own traffic may need), unless one of those reads the secrets.
func agentIndex(inits []corev1.Container, selected map[string]bool) int {
	i := 0
	for i < len(inits) {
		c := inits[i]
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways || selected[c.Name] {
			break
		}
		i++
	}
	return i
}

// patcher accumulates add operations.
type patcher struct {
	ops []jsonpatch.Operation
	// created records arrays and maps that an earlier operation of this patch created.
	created map[string]bool
}

func (p *patcher) add(path string, value any) {
	p.ops = append(p.ops, jsonpatch.Operation{Operation: "add", Path: path, Value: value})
}

// appendTo adds value at the end of the array at path, creating the array if the
// pod has none (exists is false) and no earlier operation created it.
func (p *patcher) appendTo(path string, exists bool, value any) {
	if p.created == nil {
		p.created = map[string]bool{}
	}
	if !exists && !p.created[path] {
		p.created[path] = true
		p.add(path, []any{value})
		return
	}
	p.add(path+"/-", value)
}

func (p *patcher) ensureVolume(have []corev1.Volume, v corev1.Volume) error {
	for _, h := range have {
		if h.Name != v.Name {
			continue
		}
		if equality.Semantic.DeepEqual(h, v) {
			return nil
		}
		return fmt.Errorf("spec.volumes: the name %q is reserved for kvinject; rename the pod's volume", v.Name)
	}
	p.appendTo("/spec/volumes", have != nil, v)
	return nil
}

func (p *patcher) ensureMount(c *corev1.Container, base string, m corev1.VolumeMount) error {
	for _, h := range c.VolumeMounts {
		switch {
		case h.Name == m.Name && h.MountPath == m.MountPath && h.ReadOnly && h.SubPath == "" && h.SubPathExpr == "":
			return nil
		case h.Name == m.Name:
			return fmt.Errorf("container %q: the volume name %q is reserved for kvinject", c.Name, m.Name)
		case path.Clean(h.MountPath) == m.MountPath:
			return fmt.Errorf("container %q already mounts volume %q at %s: set %s to another directory", c.Name, h.Name, m.MountPath, mapping.AnnotationMountPath)
		}
	}
	p.appendTo(base+"/volumeMounts", c.VolumeMounts != nil, m)
	return nil
}

// ensureContainer inserts c at index i of the array at base, unless the pod already
// has it. A container of the same name that differs is a conflict: the name is
// reserved, so a pod cannot bring its own "agent".
func (p *patcher) ensureContainer(have []corev1.Container, base string, c corev1.Container, i int) error {
	for _, h := range have {
		if h.Name != c.Name {
			continue
		}
		if isOwnAgent(h, c) {
			return nil
		}
		return fmt.Errorf("%s: the container name %q is reserved for kvinject; rename the pod's container", strings.TrimPrefix(strings.ReplaceAll(base, "/", "."), "."), c.Name)
	}
	if have == nil {
		p.add(base, []corev1.Container{c})
		return nil
	}
	p.add(base+"/"+strconv.Itoa(i), c)
	return nil
}

// isOwnAgent reports whether have is the agent container want, as the API server
// stores it after its own plugins ran: every field kvinject sets is equal, except
// the pull policy (AlwaysPullImages rewrites it); resources kvinject left unset may
// have been filled in (LimitRanger defaults, requests defaulted from limits); and
// the only other additions are env variables and volume mounts that admission
// plugins append to every container (the ServiceAccount plugin's API token mount,
// another injector's env), provided they neither repeat kvinject's names, nor
// configure the agent (agentconfig.EnvPrefix, KVINJECT_*), nor mount over its paths.
func isOwnAgent(have, want corev1.Container) bool {
	ownEnv, ownMounts := map[string]bool{}, map[string]bool{}
	for _, e := range want.Env {
		ownEnv[e.Name] = true
	}
	var ownPaths []string
	for _, m := range want.VolumeMounts {
		ownMounts[m.Name] = true
		ownPaths = append(ownPaths, m.MountPath)
	}
	h := have.DeepCopy()
	h.Env = h.Env[:0]
	for _, e := range have.Env {
		if ownEnv[e.Name] || strings.HasPrefix(e.Name, agentconfig.EnvPrefix) {
			h.Env = append(h.Env, e)
		}
	}
	h.ImagePullPolicy = want.ImagePullPolicy
	h.Resources.Requests = onlyNamed(have.Resources.Requests, want.Resources.Requests)
	h.Resources.Limits = onlyNamed(have.Resources.Limits, want.Resources.Limits)
	if len(want.ResizePolicy) == 0 {
		h.ResizePolicy = nil
	}
	h.VolumeMounts = h.VolumeMounts[:0]
	for _, m := range have.VolumeMounts {
		if ownMounts[m.Name] || overlaps(m.MountPath, ownPaths) {
			h.VolumeMounts = append(h.VolumeMounts, m)
		}
	}
	return equality.Semantic.DeepEqual(*h, want)
}

// onlyNamed keeps the entries of have whose names want has.
func onlyNamed(have, want corev1.ResourceList) corev1.ResourceList {
	var out corev1.ResourceList
	for name, q := range have {
		if _, ok := want[name]; ok {
			if out == nil {
				out = corev1.ResourceList{}
			}
			out[name] = q
		}
	}
	return out
}

// overlaps reports whether p is one of paths, or inside or above one of them.
func overlaps(p string, paths []string) bool {
	p = path.Clean(p)
	for _, q := range paths {
		if p == q || strings.HasPrefix(p, q+"/") || strings.HasPrefix(q, p+"/") {
			return true
		}
	}
	return false
}

func (p *patcher) ensureAnnotation(have map[string]string, key, value string) {
	switch {
	case have == nil:
		p.add("/metadata/annotations", map[string]string{key: value})
	case have[key] != value:
		p.add("/metadata/annotations/"+escape(key), value)
	}
}

// escape encodes a JSON pointer segment (RFC 6901).
func escape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
