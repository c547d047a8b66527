package mutate

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/mapping"
)

var cfg = Config{AgentImage: "agent:v1", NativeSidecars: true, VolumeSizeLimit: resource.MustParse("16Mi")}

func testSpec(rotation time.Duration, kind agentconfig.IdentityKind) *mapping.Spec {
	return &mapping.Spec{
		VaultURL:   "https://myvault.vault.azure.net/",
		Cloud:      agentconfig.AzurePublicCloud,
		Entries:    []agentconfig.Entry{{File: "a.txt", Name: "A"}, {File: "b/c", Name: "C", Version: "4387e9f3d6e14c459867679a90fd0f79"}},
		MountPath:  "/app/secrets",
		Containers: []string{"app"},
		FileMode:   0o444,
		Rotation:   rotation,
		Identity:   mapping.Identity{Kind: kind, ClientID: "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9", TenantID: "t"},
		AgentUser:  mapping.DefaultAgentUser, AgentGroup: mapping.DefaultAgentUser,
	}
}

func testPod(inits ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
		Spec:       corev1.PodSpec{InitContainers: inits, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
}

// apply patches pod the way the API server does and decodes the result.
func apply(t *testing.T, pod *corev1.Pod, spec *mapping.Spec, c Config) *corev1.Pod {
	t.Helper()
	ops, err := Patch(pod, spec, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op.Operation != "add" {
			t.Fatalf("operation %q at %s", op.Operation, op.Path)
		}
	}
	raw, _ := json.Marshal(pod)
	patch, _ := json.Marshal(ops)
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, patch)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

func names(cs []corev1.Container) []string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return n
}

func TestPlacement(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	mesh := corev1.Container{Name: "istio-proxy", RestartPolicy: &always}
	logs := corev1.Container{Name: "logs", RestartPolicy: &always}
	migrate := corev1.Container{Name: "migrate"}
	tests := []struct {
		name       string
		inits      []corev1.Container
		containers []string
		rotation   time.Duration
		native     bool
		wantInits  []string
		wantMain   []string
	}{
		{name: "no init containers", rotation: time.Minute, native: true, wantInits: []string{"kvinject-agent"}, wantMain: []string{"app"}},
		{name: "first", inits: []corev1.Container{migrate}, rotation: time.Minute, native: true, wantInits: []string{"kvinject-agent", "migrate"}, wantMain: []string{"app"}},
		{name: "after mesh sidecar", inits: []corev1.Container{mesh, migrate}, rotation: time.Minute, native: true, wantInits: []string{"istio-proxy", "kvinject-agent", "migrate"}, wantMain: []string{"app"}},
		{name: "before a sidecar that reads", inits: []corev1.Container{mesh, logs}, containers: []string{"app", "logs"}, rotation: time.Minute, native: true, wantInits: []string{"istio-proxy", "kvinject-agent", "logs"}, wantMain: []string{"app"}},
		{name: "init mode", inits: []corev1.Container{migrate}, native: true, wantInits: []string{"kvinject-agent", "migrate"}, wantMain: []string{"app"}},
		{name: "regular sidecar", inits: []corev1.Container{migrate}, rotation: time.Minute, wantInits: []string{"kvinject-agent-init", "migrate"}, wantMain: []string{"app", "kvinject-agent"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(tt.rotation, agentconfig.IdentitySystem)
			if tt.containers != nil {
				spec.Containers = tt.containers
			}
			c := cfg
			c.NativeSidecars = tt.native
			got := apply(t, testPod(tt.inits...), spec, c)
			if d := cmp.Diff(tt.wantInits, names(got.Spec.InitContainers)); d != "" {
				t.Errorf("initContainers (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.wantMain, names(got.Spec.Containers)); d != "" {
				t.Errorf("containers (-want +got):\n%s", d)
			}
			if err := CheckInvariants(got); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestReinvocation: another webhook puts its native sidecar first after kvinject ran;
// kvinject, re-invoked, changes nothing.
func TestReinvocation(t *testing.T) {
	spec := testSpec(time.Minute, agentconfig.IdentityWorkload)
	pod := apply(t, testPod(), spec, cfg)
	always := corev1.ContainerRestartPolicyAlways
	pod.Spec.InitContainers = append([]corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}}, pod.Spec.InitContainers...)
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "istio-envoy"})
	ops, err := Patch(pod, spec, cfg)
	if err != nil || len(ops) != 0 {
		t.Errorf("re-invocation: ops=%v err=%v, want none", ops, err)
	}
}

// TestAgentArgsAgree proves that what mutate writes is what the agent parses.
func TestAgentArgsAgree(t *testing.T) {
	for _, rotation := range []time.Duration{0, 90 * time.Second} {
		spec := testSpec(rotation, agentconfig.IdentityWorkload)
		for _, native := range []bool{true, false} {
			c := cfg
			c.NativeSidecars = native
			inj := Desired(testPod(), spec, c)
			agents := []corev1.Container{inj.InitAgent}
			if inj.Sidecar != nil {
				agents = append(agents, *inj.Sidecar)
			}
			for _, a := range agents {
				got, err := agentconfig.ParseArgs(a.Args, nil)
				if err != nil {
					t.Fatalf("%s: %v", a.Name, err)
				}
				want := agentconfig.Config{Mode: got.Mode, VaultURL: spec.VaultURL, Entries: spec.Entries, Dir: AgentDir, FileMode: spec.FileMode, Identity: spec.Identity.Kind}
				if got.Mode == agentconfig.ModeSidecar {
					want.Rotation = rotation
				}
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("%s (-want +got):\n%s", a.Name, d)
				}
				if a.StartupProbe != nil {
					probe, err := agentconfig.ParseArgs(a.StartupProbe.Exec.Command[1:], nil)
					if err != nil || probe.Mode != agentconfig.ModeProbe || probe.Dir != AgentDir {
						t.Errorf("startup probe %q: %+v %v", a.StartupProbe.Exec.Command, probe, err)
					}
				}
			}
		}
	}
}

func TestTokenOnlyInAgent(t *testing.T) {
	pod := testPod(corev1.Container{Name: "migrate"})
	spec := testSpec(time.Minute, agentconfig.IdentityWorkload)
	spec.Containers = []string{"app", "migrate"}
	got := apply(t, pod, spec, cfg)
	for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		for _, m := range c.VolumeMounts {
			if m.Name == TokenVolumeName && c.Name != AgentContainerName {
				t.Errorf("%s mounts the token", c.Name)
			}
		}
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "AZURE_") && c.Name != AgentContainerName {
				t.Errorf("%s has %s", c.Name, e.Name)
			}
		}
	}
}

func TestEscape(t *testing.T) {
	if got := escape("kvinject.dev/status~x"); got != "kvinject.dev~1status~0x" {
		t.Errorf("escape = %q", got)
	}
}

func TestInvariantsCatchViolations(t *testing.T) {
	good := apply(t, testPod(), testSpec(time.Minute, agentconfig.IdentityWorkload), cfg)
	if err := CheckInvariants(good); err != nil {
		t.Fatal(err)
	}
	tests := map[string]func(p *corev1.Pod){
		"disk volume":      func(p *corev1.Pod) { p.Spec.Volumes[0].EmptyDir.Medium = "" },
		"privileged agent": func(p *corev1.Pod) { t := true; p.Spec.InitContainers[0].SecurityContext.Privileged = &t },
		"writable root":    func(p *corev1.Pod) { f := false; p.Spec.InitContainers[0].SecurityContext.ReadOnlyRootFilesystem = &f },
		"token in app": func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: TokenVolumeName})
		},
		"read-write mount": func(p *corev1.Pod) { p.Spec.Containers[0].VolumeMounts[0].ReadOnly = false },
		"reader before agent": func(p *corev1.Pod) {
			p.Spec.InitContainers = append([]corev1.Container{{Name: "x", VolumeMounts: []corev1.VolumeMount{{Name: VolumeName, ReadOnly: true}}}}, p.Spec.InitContainers...)
		},
		"no status": func(p *corev1.Pod) { delete(p.Annotations, mapping.AnnotationStatus) },
	}
	for name, breakIt := range tests {
		p := good.DeepCopy()
		breakIt(p)
		if err := CheckInvariants(p); err == nil {
			t.Errorf("%s: not caught", name)
		}
	}
}

// TestAgentAsStored: the API server's ServiceAccount plugin and other injectors append
// to every container; kvinject still recognises its agent, but not a tampered one.
func TestAgentAsStored(t *testing.T) {
	spec := testSpec(time.Minute, agentconfig.IdentityWorkload)
	spec.Resources = corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("24Mi")}}
	want := Desired(testPod(), spec, cfg).InitAgent
	tests := []struct {
		name   string
		change func(c *corev1.Container)
		own    bool
	}{
		{"unchanged", func(c *corev1.Container) {}, true},
		{"another plugin's mount", func(c *corev1.Container) {
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "ca-bundle", MountPath: "/etc/ssl/extra", ReadOnly: true})
		}, true},
		{"api token mounted instead of the empty volume", func(c *corev1.Container) {
			for i := range c.VolumeMounts {
				if c.VolumeMounts[i].MountPath == APITokenDir {
					c.VolumeMounts[i].Name = "kube-api-access-x"
				}
			}
		}, false},
		{"another injector's env", func(c *corev1.Container) { c.Env = append(c.Env, corev1.EnvVar{Name: "HTTP_PROXY", Value: "x"}) }, true},
		{"repeated own env", func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "AZURE_CLIENT_ID", Value: "other"})
		}, false},
		{"mount over own path", func(c *corev1.Container) {
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "x", MountPath: AgentDir + "/sub"})
		}, false},
		{"other image", func(c *corev1.Container) { c.Image = "evil:latest" }, false},
		{"extra argument", func(c *corev1.Container) { c.Args = append(c.Args, "--vault=https://other.vault.azure.net/") }, false},
		{"privileged", func(c *corev1.Container) { t := true; c.SecurityContext.Privileged = &t }, false},
		{"extra port", func(c *corev1.Container) { c.Ports = []corev1.ContainerPort{{ContainerPort: 1}} }, false},
		{"AlwaysPullImages", func(c *corev1.Container) { c.ImagePullPolicy = corev1.PullAlways }, true},
		{"LimitRange default CPU limit", func(c *corev1.Container) {
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}
		}, true},
		{"changed own request", func(c *corev1.Container) {
			c.Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}
		}, false},
		{"agent configuration through env", func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "KVINJECT_TEST_RESOLVE", Value: "*.vault.azure.net=203.0.113.1:443"})
		}, false},
	}
	for _, tt := range tests {
		have := *want.DeepCopy()
		tt.change(&have)
		if got := isOwnAgent(have, want); got != tt.own {
			t.Errorf("%s: isOwnAgent = %v, want %v", tt.name, got, tt.own)
		}
	}
}

// TestReinvocationAfterLaterWebhook: a webhook that runs after kvinject appends its
// own sidecar with another user; re-invoked, kvinject neither mounts the secrets into
// it nor changes its mind about the agent's user.
func TestReinvocationAfterLaterWebhook(t *testing.T) {
	uid := int64(1000)
	pod := testPod()
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &uid, RunAsGroup: &uid}
	spec, _, err := mapping.Resolve(withAnnotations(pod), nil, nil, mapping.Defaults{Identity: "system"})
	if err != nil {
		t.Fatal(err)
	}
	injected := apply(t, pod, spec, cfg)
	proxyUID := int64(2102)
	injected.Spec.Containers = append(injected.Spec.Containers, corev1.Container{Name: "linkerd-proxy", SecurityContext: &corev1.SecurityContext{RunAsUser: &proxyUID}})
	again, _, err := mapping.Resolve(injected, nil, nil, mapping.Defaults{Identity: "system"})
	if err != nil {
		t.Fatal(err)
	}
	ops, err := Patch(injected, again, cfg)
	if err != nil || len(ops) != 0 {
		t.Errorf("re-invocation after another webhook: ops=%v err=%v, want none", ops, err)
	}
}

func withAnnotations(pod *corev1.Pod) *corev1.Pod {
	pod.Annotations = map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a=A"}
	return pod
}

func TestReservedNames(t *testing.T) {
	tests := map[string]struct {
		pod  func() *corev1.Pod
		want string
	}{
		"agent name among regular containers": {func() *corev1.Pod {
			p := testPod()
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: AgentContainerName})
			return p
		}, `spec.containers: the container name "kvinject-agent" is reserved`},
		"app mounts the token volume": {func() *corev1.Pod {
			p := testPod()
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: TokenVolumeName, MountPath: "/t"}}
			return p
		}, `container "app" mounts "kvinject-azure-token"`},
		"unselected container mounts the secrets volume": {func() *corev1.Pod {
			p := testPod()
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "spy", VolumeMounts: []corev1.VolumeMount{{Name: VolumeName, MountPath: "/s"}}})
			return p
		}, `container "spy" mounts "kvinject-secrets" but is not among the containers`},
	}
	for name, tt := range tests {
		_, err := Patch(tt.pod(), testSpec(time.Minute, agentconfig.IdentityWorkload), cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", name, err, tt.want)
		}
	}
}

// TestOnChangeOnlyRotatingAgent: the action goes to the agent that writes new
// sets (the native sidecar, or the regular sidecar without native sidecars),
// never to an init-mode agent, and a restart needs that agent to get the hub.
func TestOnChangeOnlyRotatingAgent(t *testing.T) {
	const hub = "https://kvinject-hub.kvinject-system.svc"
	httpAction, _ := agentconfig.ParseOnChange("http:8080/-/reload")
	restart := agentconfig.OnChange{Kind: agentconfig.OnChangeRestart}
	for _, tt := range []struct {
		name        string
		action      agentconfig.OnChange
		native      bool
		hubURL      string
		noRestarter bool
		wantErr     string
	}{
		{name: "http native", action: httpAction, native: true},
		{name: "http regular sidecar", action: httpAction},
		{name: "restart native with hub", action: restart, native: true, hubURL: hub},
		{name: "restart regular sidecar with hub", action: restart, hubURL: hub},
		{name: "restart with hub without restarter", action: restart, native: true, hubURL: hub, noRestarter: true, wantErr: "runs without --restart-action"},
		{name: "restart without hub", action: restart, native: true, wantErr: `kvinject.dev/on-change: "restart" needs the version hub`},
		{name: "restart regular sidecar without hub", action: restart, wantErr: "its --hub-url is empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			spec := testSpec(time.Minute, agentconfig.IdentitySystem)
			spec.OnChange = tt.action
			c := cfg
			c.NativeSidecars, c.HubURL, c.HubCA, c.RestartAction = tt.native, tt.hubURL, "ca", !tt.noRestarter
			ops, err := Patch(testPod(), spec, c)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Patch = %d operations, %v; want an error containing %q", len(ops), err, tt.wantErr)
				}
				return
			}
			pod := apply(t, testPod(), spec, c)
			var rotating int
			for _, a := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
				if !mapping.IsAgentContainer(a.Name) {
					continue
				}
				got, err := agentconfig.ParseArgs(a.Args, nil)
				if err != nil {
					t.Fatalf("%s: %v", a.Name, err)
				}
				switch got.Mode {
				case agentconfig.ModeSidecar:
					rotating++
					if got.OnChange != tt.action {
						t.Errorf("%s: OnChange %+v, want %+v", a.Name, got.OnChange, tt.action)
					}
				default:
					if !got.OnChange.IsZero() {
						t.Errorf("%s (%s mode) got --on-change=%s", a.Name, got.Mode, got.OnChange)
					}
				}
			}
			if rotating != 1 {
				t.Errorf("%d rotating agents, want 1", rotating)
			}
		})
	}
}
