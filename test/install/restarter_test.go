//go:build integration

package install

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/kvinject/kvinject/internal/restarter"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// restarterGrants are the restart controller's permissions in a namespace
// that bound its ClusterRole (docs/actions.md keeps the same list).
var restarterGrants = []rbacRule{
	{"", "", "events", "", "create"},
	{"", "", "events", "", "patch"},
	{"", "", "pods", "", "get"},
	{"", "apps", "daemonsets", "", "get"},
	{"", "apps", "daemonsets", "", "patch"},
	{"", "apps", "deployments", "", "get"},
	{"", "apps", "deployments", "", "patch"},
	{"", "apps", "replicasets", "", "get"},
	{"", "apps", "statefulsets", "", "get"},
	{"", "apps", "statefulsets", "", "patch"},
}

// restarterLeaderGrants are its permissions in its own namespace.
var restarterLeaderGrants = []rbacRule{
	{"", "", "events", "", "create"},
	{"", "", "events", "", "patch"},
	{"", "coordination.k8s.io", "leases", "", "create"},
	{"", "coordination.k8s.io", "leases", "kvinject-restarter", "get"},
	{"", "coordination.k8s.io", "leases", "kvinject-restarter", "update"},
}

// TestKustomizeRestarter installs manifests/examples/restarter on the real
// API server and proves the restart controller's part (proveRestarter).
func TestKustomizeRestarter(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/examples/restarter")
	c.apply(t, in.objs)
	proveRestarter(t, c, in)
}

// TestHelmRestarter installs the chart with hub.enabled and
// restarter.enabled, as release "secrets" in another namespace (names
// "secrets-kvinject-...": the ClusterRole a namespace binds, the
// ServiceAccount the policy and the hub name), and proves it like the
// kustomize install.
func TestHelmRestarter(t *testing.T) {
	c := startCluster(t)
	const ns = "platform-kvinject"
	c.ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, nil)
	values := append(append([]string(nil), hubValues...), "restarter.enabled=true")
	in := renderHelm(t, "secrets", ns, values...)
	if got, want := in.restarter.Spec.Template.Spec.ServiceAccountName, "secrets-kvinject-restarter"; got != want {
		t.Fatalf("the restarter's ServiceAccount is %q, want %q (the release's names)", got, want)
	}
	// The hub's CA comes from the certificate mode's Secret: the webhook's
	// in builtin mode, the hub's own with cert-manager.
	for mode, secret := range map[string]string{"builtin": "secrets-kvinject-webhook-cert", "cert-manager": "secrets-kvinject-hub-tls"} {
		t.Run(mode+" rendering", func(t *testing.T) {
			r := renderHelm(t, "secrets", ns, append([]string{"certificates.mode=" + mode}, values...)...)
			checkRestarterRendering(t, r)
			for _, v := range r.restarter.Spec.Template.Spec.Volumes {
				if v.Name == "hub-ca" && (v.Secret == nil || v.Secret.SecretName != secret) {
					t.Errorf("the restarter's hub-ca volume is not the Secret %s: %s", secret, v.VolumeSource.String())
				}
			}
		})
	}
	c.apply(t, in.objs)
	proveRestarter(t, c, in)
}

// proveRestarter proves the restart controller's part of an applied install:
// its objects fit together (checkRestarterRendering); its pod passes Pod
// Security; it has no rights in a namespace until the namespace binds its
// ClusterRole, and then exactly restarterGrants; the controller, with its
// ServiceAccount's token, restarts a real Deployment reached through a real
// ReplicaSet and records the Event; and the ValidatingAdmissionPolicy lets it
// change nothing but kvinject.dev/restarted-at.
func proveRestarter(t *testing.T, c *cluster, in *install) {
	t.Helper()
	ctx := context.Background()
	dep := in.restarter
	if dep == nil {
		t.Fatalf("%s: the install has no restarter", in.name)
	}
	t.Run("rendering", func(t *testing.T) { checkRestarterRendering(t, in) })
	t.Run("pod security", func(t *testing.T) { c.checkTemplateSecurity(t, in.namespace, dep) })
	clusterRole := restarterClusterRole(t, in)

	sa := dep.Spec.Template.Spec.ServiceAccountName
	const optedIn, other = "team-restart", "team-other"
	c.ensureNamespace(t, optedIn, nil, map[string]map[string]string{"default": nil})
	c.ensureNamespace(t, other, nil, nil)
	baseline := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: in.namespace, Name: "rbac-baseline"}}
	if err := c.client.Create(ctx, baseline); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The opt-in docs/actions.md and the chart's notes give: kubectl create
	// rolebinding <restarter> -n <ns> --clusterrole=<restarter>
	// --serviceaccount=<install namespace>:<restarter>
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: optedIn, Name: clusterRole},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: clusterRole},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: in.namespace}},
	}
	if err := c.client.Create(ctx, rb); err != nil {
		t.Fatal(err)
	}
	_, cfg := c.serviceAccountKubeconfig(t, in.namespace, sa)
	_, baseCfg := c.serviceAccountKubeconfig(t, in.namespace, "rbac-baseline")
	kube, baseKube := kubernetes.NewForConfigOrDie(cfg), kubernetes.NewForConfigOrDie(baseCfg)

	t.Run("rbac", func(t *testing.T) {
		for ns, want := range map[string][]rbacRule{optedIn: restarterGrants, other: nil, in.namespace: restarterLeaderGrants} {
			got, _ := rulesReview(t, kube, ns)
			base, _ := rulesReview(t, baseKube, ns)
			want = append([]rbacRule(nil), want...)
			sortRules(want)
			if diff := cmp.Diff(want, subtract(got, base), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("the restarter's permissions in %s (-want +got):\n%s", ns, diff)
			}
		}
	})

	// A Deployment, its ReplicaSet and a pod, as the controllers would
	// have made them (envtest runs no controller-manager).
	labels := map[string]string{"app": "web"}
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{mapping.AnnotationOnChange: "restart", "team": "a"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/app:1"}}},
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: optedIn, Name: "web"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tmpl},
	}
	if err := c.client.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	yes := true
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: optedIn, Name: "web-5d4f8", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: d.Name, UID: d.UID, Controller: &yes}}},
		Spec:       appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: tmpl},
	}
	if err := c.client.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: optedIn, Name: "web-5d4f8-x1", Labels: labels, OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}}},
		Spec:       tmpl.Spec,
	}
	if err := c.client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}

	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer bc.Shutdown()
	ctl := restarter.New(restarter.Options{
		Kube: kube, Recorder: bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kvinject-restarter"}),
		Debounce: 200 * time.Millisecond, Cooldown: time.Minute, ServiceAccount: in.namespace + "/" + sa,
	})
	defer func() { ctl.Stop(); ctl.Wait() }()
	report := hubapi.Change{Namespace: optedIn, Pod: pod.Name, PodUID: string(pod.UID), Time: time.Now(), Vault: "https://appvault.vault.azure.net/",
		Objects: []hubapi.Object{{Kind: "secret", Name: "DB-PASSWORD", Version: strings.Repeat("c", 32)}}}

	// The policy is in force once the API server's informer has it (about
	// 0.2 s here): wait for it before the restarter patches anything.
	start := time.Now()
	eventually(t, 20*time.Second, "the policy is in force", func() error {
		_, err := kube.AppsV1().Deployments(optedIn).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":7}}`), metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			return errNotYet
		}
		return nil
	})
	t.Logf("in force after %s", time.Since(start))

	t.Run("restart", func(t *testing.T) {
		if got := ctl.Handle(ctx, report); got != restarter.ResultScheduled {
			t.Fatalf("report: %s", got)
		}
		eventually(t, 10*time.Second, "the Deployment's template gets kvinject.dev/restarted-at", func() error {
			got := &appsv1.Deployment{}
			if err := c.client.Get(ctx, types.NamespacedName{Namespace: optedIn, Name: "web"}, got); err != nil {
				return err
			}
			if got.Spec.Template.Annotations[mapping.AnnotationRestartedAt] == "" {
				return errNotYet
			}
			if got.Spec.Template.Annotations["team"] != "a" || got.Spec.Template.Spec.Containers[0].Image != "registry.example/app:1" {
				t.Fatalf("the restart changed more than its annotation: %+v", got.Spec.Template)
			}
			return nil
		})
		eventually(t, 10*time.Second, "an Event on the Deployment", func() error {
			evs, err := c.kube.CoreV1().Events(optedIn).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=web,involvedObject.kind=Deployment"})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == restarter.ReasonRestarted && strings.Contains(e.Message, "secret/DB-PASSWORD changed (reported by pod web-5d4f8-x1)") {
					return nil
				}
			}
			return errNotYet
		})
		// The reporting pod predates the restart: its later reports
		// restart nothing.
		if got := ctl.Handle(ctx, report); got != restarter.ResultBeforeLastRestart {
			t.Fatalf("report after the restart: %s", got)
		}
	})

	t.Run("namespace not opted in", func(t *testing.T) {
		r := report
		r.Namespace = other
		if got := ctl.Handle(ctx, r); got != restarter.ResultNotOptedIn {
			t.Fatalf("report in %s: %s", other, got)
		}
	})

	t.Run("policy", func(t *testing.T) {
		deny := func(name string, patch string, want string) {
			t.Helper()
			_, err := kube.AppsV1().Deployments(optedIn).Patch(ctx, "web", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: the restarter's patch %s: %v, want a refusal with %q", name, patch, err, want)
			}
		}
		deny("replicas", `{"spec":{"replicas":5}}`, "may change nothing in a workload's spec")
		deny("image", `{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"evil:1"}]}}}}`, "may change nothing in a workload's spec")
		deny("another template annotation", `{"spec":{"template":{"metadata":{"annotations":{"team":"b"}}}}}`, "may only set the pod template annotation kvinject.dev/restarted-at")
		deny("removing a template annotation", `{"spec":{"template":{"metadata":{"annotations":{"team":null}}}}}`, "may only set the pod template annotation kvinject.dev/restarted-at")
		deny("a bad time", `{"spec":{"template":{"metadata":{"annotations":{"kvinject.dev/restarted-at":"$(rm -rf)"}}}}}`, "an RFC 3339 UTC time")
		deny("template labels", `{"spec":{"template":{"metadata":{"labels":{"x":"y"}}}}}`, "may change nothing in a workload's spec")
		deny("object labels", `{"metadata":{"labels":{"x":"y"}}}`, "may not change a workload's labels")
		deny("minReadySeconds", `{"spec":{"minReadySeconds":9}}`, "may change nothing in a workload's spec")
		ok := `{"spec":{"template":{"metadata":{"annotations":{"kvinject.dev/restarted-at":"2026-12-08T10:00:00Z"}}}}}`
		if _, err := kube.AppsV1().Deployments(optedIn).Patch(ctx, "web", types.MergePatchType, []byte(ok), metav1.PatchOptions{}); err != nil {
			t.Errorf("the restart annotation alone: %v", err)
		}
		// The admin's own changes are not the policy's business.
		if _, err := c.kube.AppsV1().Deployments(optedIn).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}); err != nil {
			t.Errorf("an admin's patch: %v", err)
		}
	})
}

// errNotYet is what an eventually condition returns while it waits.
var errNotYet = errorString("not yet")

type errorString string

func (e errorString) Error() string { return string(e) }

// restarterTokenFile is cmd/restarter's --hub-token-file default, where the
// installs project its token.
const restarterTokenFile = "/var/run/secrets/kvinject/hub-token/token"

// restarterContainer returns the restart controller's container.
func restarterContainer(t *testing.T, in *install) *corev1.Container {
	t.Helper()
	cs := in.restarter.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%s: the restarter's Deployment has %d containers, want 1", in.name, len(cs))
	}
	return &cs[0]
}

// restarterArgs returns the restart controller's flags as written, with the
// binary's default for --service-account ($POD_NAMESPACE/kvinject-restarter)
// when it is not given. A flag given twice or not as --flag=value fails the test.
func restarterArgs(t *testing.T, in *install) map[string]string {
	t.Helper()
	flags := map[string]string{}
	for _, a := range restarterContainer(t, in).Args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			t.Fatalf("%s: restarter argument %q is not --flag=value", in.name, a)
		}
		if _, dup := flags[name]; dup {
			t.Fatalf("%s: the restarter's --%s is given twice", in.name, name)
		}
		flags[name] = value
	}
	if _, ok := flags["service-account"]; !ok {
		flags["service-account"] = in.restarter.Namespace + "/kvinject-restarter"
	}
	return flags
}

// restarterObject returns the one rendered object of a kind whose component
// is the restarter.
func restarterObject(t *testing.T, in *install, kind string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, u := range in.find(kind) {
		if u.GetLabels()["app.kubernetes.io/component"] == "restarter" {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d restarter %ss rendered, want 1", in.name, len(found), kind)
	}
	return found[0]
}

// restarterClusterRole returns the name of the ClusterRole namespaces bind to opt in.
func restarterClusterRole(t *testing.T, in *install) string {
	t.Helper()
	return restarterObject(t, in, "ClusterRole").GetName()
}

// checkRestarterRendering checks, without a cluster, that the restart
// controller's objects fit together and with the hub's and the webhook's:
// the hub's URL and the peers' Service, the CA of the hub's certificate (the
// Secret the hub serves from: the webhook's in builtin mode, the hub's own
// with cert-manager; ca.crt only), its hub token, its ServiceAccount as the
// hub, the policy and its own flag name it, the webhook's --restart-action,
// and a ClusterRole the install binds nowhere.
func checkRestarterRendering(t *testing.T, in *install) {
	t.Helper()
	dep, ns := in.restarter, in.namespace
	sa := dep.Spec.Template.Spec.ServiceAccountName
	username := "system:serviceaccount:" + ns + ":" + sa
	flags := restarterArgs(t, in)
	ctr := restarterContainer(t, in)
	if dep.Namespace != ns || in.hubPeers.Namespace != ns {
		t.Errorf("the restarter is in namespace %s (peers' Service %s), the webhook in %s", dep.Namespace, in.hubPeers.Namespace, ns)
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Errorf("the restarter's replicas: %v, want 1 (one leader works)", dep.Spec.Replicas)
	}
	checkGoMemLimit(t, dep)

	// Its identity, as the hub and its own flag know it.
	if got := hubFlags(t, in)["restarter-service-account"]; got != ns+"/"+sa {
		t.Errorf("the hub's --restarter-service-account is %q, want %s/%s", got, ns, sa)
	}
	if got := flags["service-account"]; got != ns+"/"+sa {
		t.Errorf("the restarter's --service-account (or its default) is %q, want %s/%s", got, ns, sa)
	}
	if got := flagValue(t, in, "restart-action"); got != "true" {
		t.Errorf("the webhook's --restart-action=%s, want true", got)
	}

	// The hub, through its Service's name (checked in its certificate) and
	// every replica through the headless peers' Service.
	if got, want := flags["hub-url"], flagValue(t, in, "hub-url"); got != want {
		t.Errorf("the restarter's --hub-url=%s, the webhook's %s", got, want)
	}
	host, port, err := net.SplitHostPort(flags["hub-peers"])
	if err != nil {
		t.Fatalf("the restarter's --hub-peers=%q: %v", flags["hub-peers"], err)
	}
	if want := in.hubPeers.Name + "." + ns + ".svc"; host != want {
		t.Errorf("the restarter's --hub-peers names %s, want the peers' Service %s", host, want)
	}
	hubPort := containerPort(t, hubContainer(t, in), intstr.FromString("hub"))
	if port != strconv.Itoa(hubPort) {
		t.Errorf("the restarter's --hub-peers port is %s, the hub listens on %d", port, hubPort)
	}
	if in.hubPeers.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("the peers' Service has clusterIP %q, want None (headless: one address per hub replica)", in.hubPeers.Spec.ClusterIP)
	}
	peers := labels.SelectorFromSet(in.hubPeers.Spec.Selector)
	if !peers.Matches(labels.Set(in.hub.Spec.Template.Labels)) || peers.Matches(labels.Set(in.deployment.Spec.Template.Labels)) || peers.Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("the peers' Service selects %v: want the hub's pods only", in.hubPeers.Spec.Selector)
	}
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(dep.Spec.Template.Labels)) || sel.Matches(labels.Set(in.hub.Spec.Template.Labels)) || sel.Matches(labels.Set(in.deployment.Spec.Template.Labels)) {
		t.Errorf("the restarter's Deployment selects %v: want its own pods only", dep.Spec.Selector)
	}

	// Its volumes: the hub's CA alone, and its hub token.
	mounts := map[string]string{}
	for _, m := range ctr.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	var ca *corev1.SecretVolumeSource
	var token *corev1.ServiceAccountTokenProjection
	for _, v := range dep.Spec.Template.Spec.Volumes {
		switch {
		case v.Name == "hub-ca" && v.Secret != nil:
			ca = v.Secret
		case v.Name == "hub-token" && v.Projected != nil && len(v.Projected.Sources) == 1:
			token = v.Projected.Sources[0].ServiceAccountToken
		}
	}
	if ca == nil || token == nil {
		t.Fatalf("the restarter lacks the Secret volume hub-ca or the projected token hub-token: %+v", dep.Spec.Template.Spec.Volumes)
	}
	if want := hubCertVolume(t, in).SecretName; ca.SecretName != want {
		t.Errorf("the restarter trusts ca.crt of Secret %s, the hub serves from %s", ca.SecretName, want)
	}
	if len(ca.Items) != 1 || ca.Items[0].Key != "ca.crt" || mounts["hub-ca"]+"/"+ca.Items[0].Path != flags["hub-ca-file"] {
		t.Errorf("the restarter's hub-ca volume %+v mounted at %s: want ca.crt alone, at --hub-ca-file=%s", ca.Items, mounts["hub-ca"], flags["hub-ca-file"])
	}
	tokenFile := flags["hub-token-file"]
	if tokenFile == "" {
		tokenFile = restarterTokenFile
	}
	if token.Audience != hubapi.Audience || mounts["hub-token"]+"/"+token.Path != tokenFile {
		t.Errorf("the restarter's token: audience %q at %s/%s, want audience %s at %s", token.Audience, mounts["hub-token"], token.Path, hubapi.Audience, tokenFile)
	}

	// The policy names its ServiceAccount; its ClusterRole is bound by nothing
	// of the install, its leader Role to it alone.
	vap := &admissionv1.ValidatingAdmissionPolicy{}
	fromUnstructured(t, restarterObject(t, in, "ValidatingAdmissionPolicy"), vap)
	if len(vap.Spec.MatchConditions) != 1 || !strings.Contains(vap.Spec.MatchConditions[0].Expression, "'"+username+"'") {
		t.Errorf("the policy %s matches %+v, want the restarter's user %s", vap.Name, vap.Spec.MatchConditions, username)
	}
	vapb := &admissionv1.ValidatingAdmissionPolicyBinding{}
	fromUnstructured(t, restarterObject(t, in, "ValidatingAdmissionPolicyBinding"), vapb)
	if vapb.Spec.PolicyName != vap.Name || !slices.Equal(vapb.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("the policy's binding: policy %q, actions %v; want %s, [Deny]", vapb.Spec.PolicyName, vapb.Spec.ValidationActions, vap.Name)
	}
	clusterRole := restarterClusterRole(t, in)
	for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
		for _, u := range in.find(kind) {
			rb := &rbacv1.RoleBinding{}
			fromUnstructured(t, u, rb)
			if rb.RoleRef.Kind == "ClusterRole" && rb.RoleRef.Name == clusterRole {
				t.Errorf("%s binds the ClusterRole %s, which only namespaces that opt in bind", describe(u), clusterRole)
			}
			for _, s := range rb.Subjects {
				if s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == ns && (kind != "RoleBinding" || rb.Namespace != ns || rb.RoleRef.Kind != "Role") {
					t.Errorf("%s gives the restarter %s %s beyond its leader Role", describe(u), rb.RoleRef.Kind, rb.RoleRef.Name)
				}
			}
		}
	}
}

// compareRestarters checks that the chart's restart controller is the
// kustomize install's: its flags (--service-account with the binary's
// default when not given), pod template (labels and args aside),
// Deployment's spec (selector aside), the peers' Service and the
// ValidatingAdmissionPolicy and its binding. The RBAC is compared with the
// rest (rbacRules).
func compareRestarters(t *testing.T, k, h *install) {
	t.Helper()
	if diff := cmp.Diff(restarterArgs(t, k), restarterArgs(t, h)); diff != "" {
		t.Errorf("the restarter's flags differ (-kustomize +helm):\n%s", diff)
	}
	kp, hp := k.restarter.Spec.Template.DeepCopy(), h.restarter.Spec.Template.DeepCopy()
	for _, p := range []*corev1.PodTemplateSpec{kp, hp} {
		p.Labels = nil
		p.Spec.Containers[0].Args = nil
	}
	if diff := cmp.Diff(kp, hp); diff != "" {
		t.Errorf("the restarter's pod templates differ (-kustomize +helm):\n%s", diff)
	}
	kd, hd := k.restarter.Spec.DeepCopy(), h.restarter.Spec.DeepCopy()
	kd.Template, hd.Template, kd.Selector, hd.Selector = corev1.PodTemplateSpec{}, corev1.PodTemplateSpec{}, nil, nil
	if diff := cmp.Diff(kd, hd); diff != "" {
		t.Errorf("the restarter's Deployment specs differ (-kustomize +helm):\n%s", diff)
	}
	ks, hs := k.hubPeers.Spec.DeepCopy(), h.hubPeers.Spec.DeepCopy()
	ks.Selector, hs.Selector = nil, nil
	if diff := cmp.Diff(ks, hs); diff != "" {
		t.Errorf("the peers' Service specs differ (-kustomize +helm):\n%s", diff)
	}
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		ku, hu := restarterObject(t, k, kind), restarterObject(t, h, kind)
		if diff := cmp.Diff(ku.Object["spec"], hu.Object["spec"]); diff != "" {
			t.Errorf("the restarter's %s specs differ (-kustomize +helm):\n%s", kind, diff)
		}
	}
}
