//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvinject/kvinject/internal/injector"
	"github.com/kvinject/kvinject/internal/injector/injectortest"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

const goldenRoot = "../../internal/injector/testdata"

// deniedPrefix is how the API server (and so kubectl) reports our denials.
const deniedPrefix = `admission webhook "pods.kvinject.dev" denied the request: `

// setupGoldenCluster creates the Namespaces and ServiceAccounts the golden cases run
// against: the shared testdata/cluster.yaml and every case's own cluster.yaml.
func setupGoldenCluster(t *testing.T) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(goldenRoot, "golden", "*", "cluster.yaml"))
	for _, f := range append([]string{filepath.Join(goldenRoot, "cluster.yaml")}, files...) {
		createObjects(t, f)
	}
}

// createObjects creates the Namespaces, ServiceAccounts and SecretProviderClasses
// of a YAML file, once. The file is read as the unit tests read it
// (injectortest.LoadObjects): a document that does not decode fails the test.
func createObjects(t *testing.T, file string) {
	t.Helper()
	// SecretProviderClasses are served by the CRD in test/crds, which testenv installs.
	objs, err := injectortest.LoadObjects(file, injector.SecretProviderClassGVK)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, obj := range objs {
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		if err := env.Client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: creating %s %s: %v", file, kind, client.ObjectKeyFromObject(obj), err)
		}
	}
}

// TestGoldenCasesThroughTheAPIServer creates the pod of every golden case that runs
// with the default webhook flags through the real API server and checks that what
// is stored (or the denial kubectl shows) is exactly what the golden answer says.
func TestGoldenCasesThroughTheAPIServer(t *testing.T) {
	setupGoldenCluster(t)
	cases, _ := os.ReadDir(filepath.Join(goldenRoot, "golden"))
	ran := 0
	for _, c := range cases {
		dir := filepath.Join(goldenRoot, "golden", c.Name())
		if _, err := os.Stat(filepath.Join(dir, "flags.txt")); err == nil {
			continue // needs other webhook flags
		}
		var review admissionv1.AdmissionReview
		mustReadJSON(t, filepath.Join(dir, "request.json"), &review)
		req := review.Request
		if req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.DryRun != nil && *req.DryRun {
			continue
		}
		var want struct {
			Allowed bool            `json:"allowed"`
			Message string          `json:"message"`
			Pod     json.RawMessage `json:"pod"`
		}
		mustReadJSON(t, filepath.Join(dir, "golden.json"), &want)
		ran++
		t.Run(c.Name(), func(t *testing.T) {
			pod := &corev1.Pod{}
			if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
				t.Fatal(err)
			}
			if pod.Name != "" {
				pod.Name = strings.TrimSuffix(shorten(c.Name()), "-")
			}
			// The API server adds its own ServiceAccount token volume.
			dropAPIAccess(pod)
			sent := pod.DeepCopy()
			err := env.Client.Create(context.Background(), pod)
			if !want.Allowed {
				if err == nil {
					t.Fatalf("created; want the denial %q", want.Message)
				}
				if got, wantMsg := err.Error(), deniedPrefix+want.Message; got != wantMsg {
					t.Errorf("denial as kubectl shows it:\n got: %s\nwant: %s", got, wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			var golden corev1.Pod
			if len(want.Pod) > 0 {
				if err := json.Unmarshal(want.Pod, &golden); err != nil {
					t.Fatal(err)
				}
			} else {
				golden = *sent // admitted unchanged: as sent
			}
			if d := cmp.Diff(kvinjectParts(t, &golden), kvinjectParts(t, pod)); d != "" {
				t.Errorf("stored pod differs from the golden answer in kvinject's parts (-golden +stored):\n%s", d)
			}
		})
	}
	if ran < 40 {
		t.Errorf("only %d golden cases ran through the API server", ran)
	}
}

// kvinjectParts extracts what kvinject owns in a pod, as JSON values: the status
// annotation, its volumes and containers, each container's secrets mount, and the
// order of the init containers.
func kvinjectParts(t *testing.T, pod *corev1.Pod) map[string]any {
	t.Helper()
	parts := map[string]any{"status": pod.Annotations[mapping.AnnotationStatus]}
	toJSON := func(v any) any {
		b, _ := json.Marshal(v)
		var out any
		_ = json.Unmarshal(b, &out)
		return out
	}
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kvinject-") {
			parts["volume "+v.Name] = toJSON(v)
		}
	}
	var order []string
	for i, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if i == 0 {
				order = append(order, c.Name)
			}
			if mapping.IsAgentContainer(c.Name) {
				// The API server's ServiceAccount plugin mounts its token into every
				// container, ours included: that mount is not kvinject's.
				c := *c.DeepCopy()
				dropAPIAccessMounts(&c)
				parts["container "+c.Name] = toJSON(c)
				continue
			}
			for _, m := range c.VolumeMounts {
				if m.Name == mutate.VolumeName {
					parts["mount in "+c.Name] = toJSON(m)
				}
			}
		}
	}
	parts["initContainers"] = order
	return parts
}

func dropAPIAccess(pod *corev1.Pod) {
	keep := pod.Spec.Volumes[:0]
	for _, v := range pod.Spec.Volumes {
		if !strings.HasPrefix(v.Name, "kube-api-access-") {
			keep = append(keep, v)
		}
	}
	pod.Spec.Volumes = keep
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			dropAPIAccessMounts(&cs[i])
		}
	}
}

func dropAPIAccessMounts(c *corev1.Container) {
	mounts := c.VolumeMounts[:0]
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(m.Name, "kube-api-access-") {
			mounts = append(mounts, m)
		}
	}
	c.VolumeMounts = mounts
}

func TestNotOptedInIsUntouched(t *testing.T) {
	ns := newNamespace(t, nil, nil)
	pod := appPod(ns, "plain", nil)
	delete(pod.Labels, mapping.LabelInject)
	pod.Annotations = map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a=B"}
	mustCreate(t, pod)
	if len(pod.Spec.InitContainers) != 0 || pod.Annotations[mapping.AnnotationStatus] != "" || len(pod.Spec.Volumes) != 1 {
		t.Errorf("a pod without the opt-in label was changed: init=%v volumes=%v annotations=%v", pod.Spec.InitContainers, pod.Spec.Volumes, pod.Annotations)
	}
}

func TestWorkloadIdentityFromServiceAccount(t *testing.T) {
	const clientID, tenant = "c0ffee00-1111-4222-8333-444455556666", "contoso.onmicrosoft.com"
	ns := newNamespace(t, nil, map[string]map[string]string{"orders": {
		mapping.AnnotationWIClientID: clientID, mapping.AnnotationWITenantID: tenant,
	}})
	pod := appPod(ns, "wi", map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a.txt=A"})
	pod.Spec.ServiceAccountName = "orders"
	mustCreate(t, pod)
	agent := findContainer(t, pod, mapping.AgentContainerName)
	env := map[string]string{}
	for _, e := range agent.Env {
		env[e.Name] = e.Value
	}
	want := map[string]string{"AZURE_CLIENT_ID": clientID, "AZURE_TENANT_ID": tenant, "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/", "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/kvinject/azure-token/azure-identity-token"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("agent env %s = %q, want %q", k, env[k], v)
		}
	}
	for _, c := range pod.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == mutate.TokenVolumeName {
				t.Errorf("app container %s mounts the identity token", c.Name)
			}
		}
	}
}

func TestNamespaceDefaults(t *testing.T) {
	ns := newNamespace(t, map[string]string{
		mapping.AnnotationVault:    "teamvault",
		mapping.AnnotationIdentity: "system",
		mapping.AnnotationCloud:    "AzureChinaCloud",
	}, nil)
	pod := appPod(ns, "defaults", map[string]string{mapping.AnnotationSecrets: "a.txt=A"})
	mustCreate(t, pod)
	args := strings.Join(findContainer(t, pod, mapping.AgentContainerName).Args, " ")
	for _, want := range []string{"--vault=https://teamvault.vault.azure.cn/", "--identity=system"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
}

func TestRestrictedNamespaceAdmitsInjectedPod(t *testing.T) {
	ns := newNamespace(t, nil, nil)
	labelNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	pod := appPod(ns, "restricted", map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a.txt=A", mapping.AnnotationIdentity: "system"})
	f, tr := false, true
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: &tr, SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: &f, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	mustCreate(t, pod)
	findContainer(t, pod, mapping.AgentContainerName)

	// The same check refuses a non-compliant pod, so the admission above means something.
	bad := appPod(ns, "not-restricted", nil)
	delete(bad.Labels, mapping.LabelInject)
	if err := env.Client.Create(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Errorf("a non-compliant pod in a restricted namespace: %v", err)
	}
}

func TestServerSideDryRun(t *testing.T) {
	ns := newNamespace(t, nil, nil)
	pod := appPod(ns, "dry", map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a.txt=A", mapping.AnnotationIdentity: "system"})
	if err := env.Client.Create(context.Background(), pod, client.DryRunAll); err != nil {
		t.Fatal(err)
	}
	findContainer(t, pod, mapping.AgentContainerName)
	err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(pod), &corev1.Pod{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("dry-run pod was stored: %v", err)
	}
}

// TestWebhookDown runs last among the admission tests: it stops the webhook.
func TestWebhookDown(t *testing.T) {
	ns := newNamespace(t, nil, nil)
	env.StopWebhook()
	t.Cleanup(func() {
		if err := env.StartWebhook(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
	plain := appPod(ns, "plain", nil)
	delete(plain.Labels, mapping.LabelInject)
	mustCreate(t, plain)

	opted := appPod(ns, "opted", map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a.txt=A", mapping.AnnotationIdentity: "system"})
	err := env.Client.Create(context.Background(), opted)
	if err == nil {
		t.Fatal("an opted-in pod was created while the webhook was down: it would run without its secrets")
	}
	if !strings.Contains(err.Error(), `failed calling webhook "pods.kvinject.dev"`) {
		t.Errorf("error = %v, want one naming the webhook", err)
	}
}

// --- helpers ---

var nsCounter int

func newNamespace(t *testing.T, annotations map[string]string, serviceAccounts map[string]map[string]string) string {
	t.Helper()
	nsCounter++
	name := shorten(strings.ToLower(t.Name()))
	name = strings.Trim(name[:min(len(name), 50)], "-") + "-" + time.Now().Format("150405") + "-" + string(rune('a'+nsCounter%26))
	if serviceAccounts == nil {
		serviceAccounts = map[string]map[string]string{}
	}
	if _, ok := serviceAccounts["default"]; !ok {
		serviceAccounts["default"] = nil
	}
	if err := env.EnsureNamespace(context.Background(), name, nil, annotations, serviceAccounts); err != nil {
		t.Fatal(err)
	}
	return name
}

func labelNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Name: name}, ns); err != nil {
		t.Fatal(err)
	}
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	for k, v := range labels {
		ns.Labels[k] = v
	}
	if err := env.Client.Update(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
}

func appPod(ns, name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name, mapping.LabelInject: "true"}, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "contoso.azurecr.io/app:1"}}},
	}
}

func mustCreate(t *testing.T, obj client.Object) {
	t.Helper()
	if err := env.Client.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %s: %v", obj.GetName(), err)
	}
}

func findContainer(t *testing.T, pod *corev1.Pod, name string) *corev1.Container {
	t.Helper()
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	t.Fatalf("pod %s has no container %s (init: %d, containers: %d)", pod.Name, name, len(pod.Spec.InitContainers), len(pod.Spec.Containers))
	return nil
}

func mustReadJSON(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// shorten makes a DNS label from a test or case name.
func shorten(s string) string {
	s = strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(s))
	if len(s) > 55 {
		s = s[:55]
	}
	return s
}
