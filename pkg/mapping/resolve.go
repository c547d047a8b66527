package mapping

import (
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Default values, used where neither the pod, its namespace nor the webhook's flags say otherwise.
const (
	DefaultMountPath = "/app/secrets"
	DefaultRotation  = agentconfig.DefaultRotation
	// MinRotation is the shortest polling interval; shorter ones would load Key Vault for little gain.
	MinRotation = 30 * time.Second
	// MaxRotation is the longest polling interval.
	MaxRotation = 24 * time.Hour
	// ModeGroupShared is the default file mode when the pod has an fsGroup.
	ModeGroupShared = 0o440
	// ModeWorldReadable is the default file mode without an fsGroup.
	ModeWorldReadable = agentconfig.ModeWorldReadable
	// DefaultAgentUser is the agent's uid and gid when the app containers do not share one.
	DefaultAgentUser int64 = 65532
)

// Defaults are the webhook's cluster-wide settings, the last in line after the pod's
// and the namespace's annotations.
type Defaults struct {
	// Vault is the default vault name or URL.
	Vault string
	// Identity is the default identity, in the annotation's grammar (e.g. "managed:<client-id>").
	Identity string
	// ManagedIdentityClientID serves "managed" without a client ID, e.g. the AKS add-on's identity.
	ManagedIdentityClientID string
	// TenantID is the default Azure AD tenant.
	TenantID string
	// Cloud is the default cloud name.
	Cloud string
	// MountPath is the default mount path.
	MountPath string
	// Rotation is the default polling interval; 0 means off.
	Rotation time.Duration
	// Resources are the agent's default requests and limits.
	Resources corev1.ResourceRequirements
	// Policy is the cluster-wide ceiling on vaults and identities.
	Policy Policy
}

// Spec is a pod's resolved injection: everything the mutation and the agent need.
type Spec struct {
	VaultURL string
	Cloud    agentconfig.Cloud
	Entries  []agentconfig.Entry
	// Templates are files rendered from the entries (kvinject.dev/template.<file>),
	// sorted by file.
	Templates []agentconfig.Template
	// MountPath is where the selected containers see the files.
	MountPath string
	// Containers names the containers (regular or init) that get the mount.
	Containers []string
	// ContainersDefaulted is true when Containers is the default (every regular
	// container) rather than the pod's kvinject.dev/containers.
	ContainersDefaulted bool
	FileMode            uint32
	// Rotation is the polling interval; 0 means off (fetch once, as an init container).
	Rotation  time.Duration
	Identity  Identity
	Resources corev1.ResourceRequirements
	// AgentUser and AgentGroup are the agent's uid and gid: those every selected
	// container runs as when they agree and are not root, else DefaultAgentUser.
	AgentUser, AgentGroup int64
	// OnChange is the rotating agent's action after each new set
	// (kvinject.dev/on-change); zero: none. A restart needs the version hub,
	// which the mutation checks (mapping does not know the webhook's hub).
	OnChange agentconfig.OnChange
}

// problems collects validation failures, each prefixed with the field it concerns.
type problems []string

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

// Resolve decides what to inject into pod, given its namespace and ServiceAccount
// (either may be nil when not found) and the webhook's defaults. It returns the
// Spec, warnings for the user (unknown annotation keys and likely mistakes) and,
// if any annotation is invalid, an *InvalidError naming each one.
func Resolve(pod *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount, d Defaults) (*Spec, []string, error) {
	var (
		podAnn = pod.Annotations
		nsAnn  map[string]string
		saAnn  map[string]string
		probs  problems
	)
	if ns != nil {
		nsAnn = ns.Annotations
	}
	if sa != nil {
		saAnn = sa.Annotations
	}
	warnings := unknownKeyWarnings(podAnn)

	// lookup returns the pod's value, else the namespace's, else the default, and where it came from.
	lookup := func(key, def string) (string, string) {
		if v, ok := podAnn[key]; ok {
			return strings.TrimSpace(v), key
		}
		if v, ok := nsAnn[key]; ok {
			return strings.TrimSpace(v), "namespace annotation " + key
		}
		return def, "webhook default for " + key
	}

	spec := &Spec{}
	cloudName, cloudSrc := lookup(AnnotationCloud, d.Cloud)
	cloud, err := agentconfig.ParseCloud(cloudName)
	if err != nil {
		probs.add(cloudSrc, "%v", err)
	}
	spec.Cloud = cloud

	switch vault, src := lookup(AnnotationVault, d.Vault); {
	case vault == "":
		probs.add(AnnotationVault, "not set: annotate the pod or its namespace with %s=<vault-name>", AnnotationVault)
	case err == nil:
		if spec.VaultURL, err = agentconfig.VaultURL(vault, cloud); err != nil {
			probs.add(src, "%v", err)
		}
	}

	entriesOK := false
	if raw, ok := podAnn[AnnotationSecrets]; !ok || strings.TrimSpace(raw) == "" {
		probs.add(AnnotationSecrets, "not set: list the files to write, e.g. %s: connectionstring.txt=DATABASE-CONNECTION-STRING", AnnotationSecrets)
	} else if spec.Entries, err = agentconfig.ParseEntries(raw); err != nil {
		probs.add(AnnotationSecrets, "%v", err)
	} else {
		entriesOK = true
	}

	if spec.VaultURL != "" {
		for i, e := range spec.Entries {
			v, err := agentconfig.ResolveEntryVault(e.Vault, cloud, spec.VaultURL)
			if err != nil {
				probs.add(AnnotationSecrets, "entry %q: %v", e.String(), err)
				continue
			}
			spec.Entries[i].Vault = v
		}
	}

	spec.MountPath = firstNonEmpty(strings.TrimSpace(podAnn[AnnotationMountPath]), d.MountPath, DefaultMountPath)
	if err := validateMountPath(spec.MountPath); err != nil {
		probs.add(AnnotationMountPath, "%v", err)
	}

	spec.ContainersDefaulted = strings.TrimSpace(podAnn[AnnotationContainers]) == ""
	spec.Containers, err = selectContainers(pod, podAnn[AnnotationContainers])
	if err != nil {
		probs.add(AnnotationContainers, "%v", err)
	}

	hasFSGroup := pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.FSGroup != nil
	spec.AgentUser, spec.AgentGroup = agentUser(pod, spec.Containers)
	spec.FileMode = ModeWorldReadable
	if hasFSGroup {
		spec.FileMode = ModeGroupShared
	}
	if raw, ok := podAnn[AnnotationFileMode]; ok {
		if spec.FileMode, err = agentconfig.ParseFileMode(raw); err != nil {
			probs.add(AnnotationFileMode, "%v", err)
		} else if !appsCanRead(spec.FileMode, hasFSGroup, spec.AgentUser != DefaultAgentUser) {
			warnings = append(warnings, fmt.Sprintf("%s %04o: app containers cannot read the files unless they share the agent's user (all run as one non-root runAsUser) or group (securityContext.fsGroup); use 0444 or set fsGroup", AnnotationFileMode, spec.FileMode))
		}
	}
	for _, e := range spec.Entries {
		if e.Mode != 0 && !appsCanRead(e.Mode, hasFSGroup, spec.AgentUser != DefaultAgentUser) {
			warnings = append(warnings, fmt.Sprintf("%s: entry %q, mode %04o: app containers cannot read its files unless they share the agent's user (all run as one non-root runAsUser) or group (securityContext.fsGroup); use ;mode=0444, or set fsGroup and ;mode=0440", AnnotationSecrets, e.String(), e.Mode))
		}
	}

	spec.Templates = resolveTemplates(podAnn, spec.Entries, entriesOK, &probs)
	for _, t := range spec.Templates {
		if t.Mode != 0 && !appsCanRead(t.Mode, hasFSGroup, spec.AgentUser != DefaultAgentUser) {
			warnings = append(warnings, fmt.Sprintf("%s%s %04o: app containers cannot read the rendered file unless they share the agent's user (all run as one non-root runAsUser) or group (securityContext.fsGroup); use 0444, or set fsGroup and 0440", AnnotationTemplateModePrefix, t.File, t.Mode))
		}
	}

	spec.Rotation = d.Rotation
	if raw, ok := podAnn[AnnotationRotation]; ok {
		if spec.Rotation, err = ParseRotation(raw); err != nil {
			probs.add(AnnotationRotation, "%v", err)
		}
	}

	if raw, ok := podAnn[AnnotationOnChange]; ok {
		spec.OnChange = resolveOnChange(pod, raw, spec.Rotation, podAnn, &probs)
		if w := onChangePortWarning(pod, spec.OnChange); w != "" {
			warnings = append(warnings, w)
		}
		if !spec.OnChange.IsZero() && len(spec.Entries) > 0 && allPinned(spec.Entries) {
			warnings = append(warnings, fmt.Sprintf("%s: every entry of %s is pinned to a version, so the set never changes and %q never runs: drop @<version> from the entries that should rotate, or remove %s", AnnotationOnChange, AnnotationSecrets, spec.OnChange.String(), AnnotationOnChange))
		}
	}
	if spec.Rotation == 0 {
		if opt := optionalEntries(spec.Entries); len(opt) > 0 {
			warnings = append(warnings, fmt.Sprintf("%s: %s optional, but rotation is off: an object absent when the pod starts is read again only when the pod restarts; set %s to an interval (such as 2m) to pick it up while the pod runs",
				AnnotationSecrets, opt, AnnotationRotation))
		}
	}

	spec.Identity = resolveIdentity(pod, saAnn, lookup, d, &probs)
	checkPolicy(spec, pod.Namespace, nsAnn, d.Policy, &probs)

	spec.Resources = resolveResources(podAnn, d.Resources, &probs)

	if len(probs) > 0 {
		return nil, warnings, &agentconfig.InvalidError{Problems: probs}
	}
	return spec, warnings, nil
}

// agentUser picks the agent's user and group: the ones every selected container
// runs as, when they agree and are not root, so owner-only file modes work; else
// DefaultAgentUser.
func agentUser(pod *corev1.Pod, names []string) (uid, gid int64) {
	// Processes of one user in a shared PID namespace can read each other's files
	// through /proc/<pid>/root: the agent's identity token must not be one of them.
	if (pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace) || pod.Spec.HostPID {
		return DefaultAgentUser, DefaultAgentUser
	}
	selected := map[string]bool{}
	for _, n := range names {
		selected[n] = true
	}
	var uids, gids []*int64
	visit := func(c *corev1.Container) {
		if !selected[c.Name] {
			return
		}
		var u, g *int64
		if psc := pod.Spec.SecurityContext; psc != nil {
			u, g = psc.RunAsUser, psc.RunAsGroup
		}
		if sc := c.SecurityContext; sc != nil {
			if sc.RunAsUser != nil {
				u = sc.RunAsUser
			}
			if sc.RunAsGroup != nil {
				g = sc.RunAsGroup
			}
		}
		uids, gids = append(uids, u), append(gids, g)
	}
	for i := range pod.Spec.InitContainers {
		visit(&pod.Spec.InitContainers[i])
	}
	for i := range pod.Spec.Containers {
		visit(&pod.Spec.Containers[i])
	}
	return common(uids), common(gids)
}

// common returns the shared non-root value of ids, or DefaultAgentUser.
func common(ids []*int64) int64 {
	if len(ids) == 0 || ids[0] == nil || *ids[0] == 0 {
		return DefaultAgentUser
	}
	for _, id := range ids[1:] {
		if id == nil || *id != *ids[0] {
			return DefaultAgentUser
		}
	}
	return *ids[0]
}

// appsCanRead reports whether app containers can read files of the given mode:
// through the other bits, the group bits with an fsGroup, or the owner bits when
// they run as the agent's user.
func appsCanRead(mode uint32, fsGroup, sharedUser bool) bool {
	return mode&0o004 != 0 || (fsGroup && mode&0o040 != 0) || (sharedUser && mode&0o400 != 0)
}

// resolveIdentity applies the identity rules: an explicit identity (pod, then
// namespace) wins; otherwise a ServiceAccount with a workload-identity client ID
// means workload identity; otherwise the webhook's default identity.
func resolveIdentity(pod *corev1.Pod, saAnn map[string]string, lookup func(string, string) (string, string), d Defaults, probs *problems) Identity {
	saName := pod.Spec.ServiceAccountName
	if saName == "" {
		saName = "default"
	}
	raw, src := lookup(AnnotationIdentity, "")
	if raw == "" {
		switch {
		case saAnn[AnnotationWIClientID] != "":
			raw, src = string(agentconfig.IdentityWorkload), fmt.Sprintf("ServiceAccount %q", saName)
		case d.Identity != "":
			raw, src = d.Identity, "webhook default for "+AnnotationIdentity
		default:
			probs.add(AnnotationIdentity, "no Azure identity: annotate ServiceAccount %q with %s=<client-id> for workload identity, or set %s to managed:<client-id> or system", saName, AnnotationWIClientID, AnnotationIdentity)
			return Identity{}
		}
	}
	choice, err := parseIdentity(raw)
	if err != nil {
		probs.add(src, "%v", err)
		return Identity{}
	}
	tenant, tenantSrc := lookup(AnnotationTenantID, d.TenantID)
	if _, onPod := pod.Annotations[AnnotationTenantID]; !onPod && saAnn[AnnotationWITenantID] != "" && choice.kind == agentconfig.IdentityWorkload {
		tenant, tenantSrc = strings.TrimSpace(saAnn[AnnotationWITenantID]), fmt.Sprintf("ServiceAccount %q annotation %s", saName, AnnotationWITenantID)
	}
	if tenant != "" {
		if err := validateTenant(tenant); err != nil {
			probs.add(tenantSrc, "%v", err)
		}
	}
	id := Identity{Kind: choice.kind, ClientID: choice.clientID, TenantID: tenant}
	switch choice.kind {
	case agentconfig.IdentityWorkload:
		id.ClientID = strings.TrimSpace(saAnn[AnnotationWIClientID])
		switch {
		case id.ClientID == "":
			probs.add(src, "workload identity needs ServiceAccount %q to carry the annotation %s=<client-id>", saName, AnnotationWIClientID)
		case !agentconfig.IsGUID(id.ClientID):
			probs.add(fmt.Sprintf("ServiceAccount %q annotation %s", saName, AnnotationWIClientID), "%q must be a GUID like 00000000-0000-0000-0000-000000000000", id.ClientID)
		}
		id.ClientID = strings.ToLower(id.ClientID)
		if tenant == "" {
			probs.add(AnnotationTenantID, "workload identity needs a tenant: annotate ServiceAccount %q with %s=<tenant-id>, or set %s", saName, AnnotationWITenantID, AnnotationTenantID)
		}
	case agentconfig.IdentityManaged:
		if id.ClientID == "" {
			id.ClientID = strings.ToLower(d.ManagedIdentityClientID)
		}
		if id.ClientID == "" {
			probs.add(src, "%q needs a client ID: write managed:<client-id> (the webhook has no default managed identity)", raw)
		}
	}
	return id
}

// selectContainers returns the containers that get the mount: those named in the
// annotation (regular or init), else every regular container.
func selectContainers(pod *corev1.Pod, raw string) ([]string, error) {
	known := map[string]bool{}
	var all []string
	for _, c := range pod.Spec.InitContainers {
		known[c.Name] = true
	}
	for _, c := range pod.Spec.Containers {
		known[c.Name] = true
		if !IsAgentContainer(c.Name) {
			all = append(all, c.Name)
		}
	}
	if strings.TrimSpace(raw) == "" {
		return all, nil
	}
	var (
		names []string
		seen  = map[string]bool{}
		bad   []string
	)
	for _, n := range strings.Split(raw, ",") {
		n = strings.TrimSpace(n)
		switch {
		case n == "" || seen[n]:
			continue
		case IsAgentContainer(n):
			return nil, fmt.Errorf("%q is kvinject's own agent; name the app containers that read the secrets", n)
		case !known[n]:
			bad = append(bad, strconv.Quote(n))
		}
		seen[n] = true
		names = append(names, n)
	}
	if len(bad) > 0 {
		avail := make([]string, 0, len(known))
		for n := range known {
			avail = append(avail, n)
		}
		sort.Strings(avail)
		return nil, fmt.Errorf("no container named %s in the pod; its containers are %s", strings.Join(bad, ", "), strings.Join(avail, ", "))
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%q names no container; leave it out to mount into every container", raw)
	}
	return names, nil
}

// validateMountPath checks that a mount path is absolute, clean and not a system directory.
func validateMountPath(p string) error {
	switch {
	case !path.IsAbs(p):
		return fmt.Errorf("%q must be an absolute path such as %s", p, DefaultMountPath)
	case path.Clean(p) != p:
		return fmt.Errorf("%q must be a clean path (no '..', '.', '//' or trailing '/'); did you mean %q?", p, path.Clean(p))
	case strings.ContainsAny(p, ":\x00"):
		return fmt.Errorf("%q must not contain ':'", p)
	}
	if p == "/" || p == "/etc" {
		return fmt.Errorf("%q is a system directory; choose a directory of the app such as %s", p, DefaultMountPath)
	}
	for _, sys := range []string{"/dev", "/proc", "/sys", "/var/run/secrets/kubernetes.io"} {
		if p == sys || strings.HasPrefix(p, sys+"/") {
			return fmt.Errorf("%q is inside the system directory %s; choose a directory of the app such as %s", p, sys, DefaultMountPath)
		}
	}
	return nil
}

// ParseRotation parses "off" or an interval between MinRotation and MaxRotation.
func ParseRotation(raw string) (time.Duration, error) {
	s := strings.TrimSpace(raw)
	if strings.EqualFold(s, "off") {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is neither \"off\" nor a duration such as 2m or 90s", raw)
	case d < MinRotation:
		return 0, fmt.Errorf("%q is shorter than the minimum of %s; use \"off\" to fetch once", raw, MinRotation)
	case d > MaxRotation:
		return 0, fmt.Errorf("%q is longer than the maximum of %s", raw, MaxRotation)
	}
	return d, nil
}

// resolveOnChange parses kvinject.dev/on-change and refuses actions that
// could never run (rotation off) or would reach the wrong process (http on a
// pod in the node's network namespace). rotation is the pod's resolved
// interval.
func resolveOnChange(pod *corev1.Pod, raw string, rotation time.Duration, podAnn map[string]string, probs *problems) agentconfig.OnChange {
	oc, err := agentconfig.ParseOnChange(raw)
	if err != nil {
		probs.add(AnnotationOnChange, "%v", err)
		return agentconfig.OnChange{}
	}
	if rotation == 0 {
		why := fmt.Sprintf("%s is off", AnnotationRotation)
		if _, onPod := podAnn[AnnotationRotation]; !onPod {
			why = "rotation is off by the webhook's default (--default-rotation=off)"
		}
		probs.add(AnnotationOnChange, "%q: %s, so the secrets are read once and the set never changes after the first: remove %s, or turn rotation on with %s: 2m", oc.String(), why, AnnotationOnChange, AnnotationRotation)
		return agentconfig.OnChange{}
	}
	if oc.Kind == agentconfig.OnChangeHTTP && pod.Spec.HostNetwork {
		probs.add(AnnotationOnChange, "%q: the pod uses hostNetwork, so 127.0.0.1 is the node's and the agent would call whatever listens on port %d of the node: use restart, or watch the files (see docs/contract.md, \"Actions on change\")", oc.String(), oc.Port)
		return agentconfig.OnChange{}
	}
	return oc
}

// allPinned reports whether every entry reads a pinned version.
func allPinned(entries []agentconfig.Entry) bool {
	for _, e := range entries {
		if e.Version == "" {
			return false
		}
	}
	return true
}

// onChangePortWarning warns when the http action's port is not a
// containerPort of any container of the pod: declaring ports is optional, but
// an undeclared one is often a typo, which the agent would only log at the
// first rotation.
func onChangePortWarning(pod *corev1.Pod, oc agentconfig.OnChange) string {
	if oc.Kind != agentconfig.OnChangeHTTP {
		return ""
	}
	for _, cs := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				if int(p.ContainerPort) == oc.Port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
					return ""
				}
			}
		}
	}
	return fmt.Sprintf("%s: no container of the pod declares containerPort %d, where the agent will call %s %s after each new set: check the port of the app's reload endpoint (declaring it in the container's ports silences this warning)", AnnotationOnChange, oc.Port, oc.Method, oc.URL())
}

// resolveResources overrides the default agent resources with the pod's annotations.
func resolveResources(ann map[string]string, def corev1.ResourceRequirements, probs *problems) corev1.ResourceRequirements {
	r := corev1.ResourceRequirements{Requests: copyList(def.Requests), Limits: copyList(def.Limits)}
	set := func(key string, list *corev1.ResourceList, name corev1.ResourceName) {
		raw, ok := ann[key]
		if !ok {
			return
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(raw))
		if err != nil || q.Sign() <= 0 {
			probs.add(key, "%q is not a positive quantity such as 50m (CPU) or 32Mi (memory)", raw)
			return
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[name] = q
	}
	set(AnnotationAgentCPURequest, &r.Requests, corev1.ResourceCPU)
	set(AnnotationAgentMemoryRequest, &r.Requests, corev1.ResourceMemory)
	set(AnnotationAgentCPULimit, &r.Limits, corev1.ResourceCPU)
	set(AnnotationAgentMemoryLimit, &r.Limits, corev1.ResourceMemory)
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := r.Requests[name]
		lim, hasLim := r.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			probs.add(Prefix+"agent-"+string(name)+"-request", "%s is more than the %s limit %s", req.String(), name, lim.String())
		}
	}
	return r
}

func copyList(l corev1.ResourceList) corev1.ResourceList {
	if l == nil {
		return nil
	}
	out := make(corev1.ResourceList, len(l))
	for k, v := range l {
		out[k] = v.DeepCopy()
	}
	return out
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// Validate checks the webhook's defaults with the same rules as the annotations,
// naming the flag at fault, so a bad flag fails at start-up rather than per pod.
func (d Defaults) Validate() error {
	var probs problems
	cloud, err := agentconfig.ParseCloud(d.Cloud)
	if err != nil {
		probs.add("--default-cloud", "%v", err)
	}
	if d.Vault != "" && err == nil {
		if _, err := agentconfig.VaultURL(d.Vault, cloud); err != nil {
			probs.add("--default-vault", "%v", err)
		}
	}
	if d.Identity != "" {
		if _, err := parseIdentity(d.Identity); err != nil {
			probs.add("--default-identity", "%v", err)
		}
	}
	if c, err := parseIdentity(d.Identity); err == nil && c.kind == agentconfig.IdentityManaged && c.clientID == "" && d.ManagedIdentityClientID == "" {
		probs.add("--default-identity", "%q needs --managed-identity-client-id, or write managed:<client-id>", d.Identity)
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := d.Resources.Requests[name]
		lim, hasLim := d.Resources.Limits[name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			probs.add("--agent-"+string(name)+"-request", "%s is more than --agent-%s-limit %s", req.String(), name, lim.String())
		}
	}
	if err := d.Policy.Validate(); err != nil {
		probs = append(probs, err.(*agentconfig.InvalidError).Problems...)
	}
	if d.ManagedIdentityClientID != "" && !agentconfig.IsGUID(d.ManagedIdentityClientID) {
		probs.add("--managed-identity-client-id", "%q must be a GUID", d.ManagedIdentityClientID)
	}
	if d.TenantID != "" {
		if err := validateTenant(d.TenantID); err != nil {
			probs.add("--default-tenant-id", "%v", err)
		}
	}
	if d.MountPath != "" {
		if err := validateMountPath(d.MountPath); err != nil {
			probs.add("--default-mount-path", "%v", err)
		}
	}
	if d.Rotation != 0 && (d.Rotation < MinRotation || d.Rotation > MaxRotation) {
		probs.add("--default-rotation", "%s must be off or between %s and %s", d.Rotation, MinRotation, MaxRotation)
	}
	if len(probs) > 0 {
		return &agentconfig.InvalidError{Problems: probs}
	}
	return nil
}

// resolveTemplates reads the pod's kvinject.dev/template.<file> and
// kvinject.dev/template-mode.<file> annotations, sorted by file, and checks
// them against the entries (when the entries themselves are valid).
func resolveTemplates(ann map[string]string, entries []agentconfig.Entry, entriesOK bool, probs *problems) []agentconfig.Template {
	for _, bare := range []string{strings.TrimSuffix(AnnotationTemplatePrefix, "."), strings.TrimSuffix(AnnotationTemplateModePrefix, ".")} {
		if _, ok := ann[bare]; ok {
			probs.add(bare, "names no file: write %s.<file>, e.g. %s.appsettings.json", bare, bare)
		}
	}
	var (
		ts    []agentconfig.Template
		modes = map[string]string{}
	)
	for k, v := range ann {
		if file, ok := strings.CutPrefix(k, AnnotationTemplatePrefix); ok {
			ts = append(ts, agentconfig.Template{File: file, Text: v})
		} else if file, ok := strings.CutPrefix(k, AnnotationTemplateModePrefix); ok {
			modes[file] = v
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].File < ts[j].File })
	fileNames := map[string]bool{}
	for i := range ts {
		fileNames[ts[i].File] = true
		raw, ok := modes[ts[i].File]
		if !ok {
			continue
		}
		m, err := agentconfig.ParseFileMode(raw)
		if err != nil {
			probs.add(AnnotationTemplateModePrefix+ts[i].File, "%v", err)
			continue
		}
		ts[i].Mode = m
	}
	var orphans []string
	for f := range modes {
		if !fileNames[f] {
			orphans = append(orphans, f)
		}
	}
	sort.Strings(orphans)
	for _, f := range orphans {
		probs.add(AnnotationTemplateModePrefix+f, "there is no template %s%s for this mode; add the template, or remove the mode", AnnotationTemplatePrefix, f)
	}
	if !entriesOK {
		return ts
	}
	_, tprobs := agentconfig.CheckTemplates(ts, entries)
	for _, p := range tprobs {
		if p.File == "" {
			probs.add(AnnotationSecrets, "%s", p.Msg)
		} else {
			probs.add(AnnotationTemplatePrefix+p.File, "%s", p.Msg)
		}
	}
	return ts
}

// optionalEntries names the optional entries for a message: `entry "a" is` or
// `entries "a", "b" are`; "" when there are none.
func optionalEntries(entries []agentconfig.Entry) string {
	var names []string
	for _, e := range entries {
		if e.Optional {
			names = append(names, strconv.Quote(e.String()))
		}
	}
	switch len(names) {
	case 0:
		return ""
	case 1:
		return "entry " + names[0] + " is"
	}
	return "entries " + strings.Join(names, ", ") + " are"
}
