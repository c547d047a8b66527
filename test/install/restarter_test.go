//go:build integration

package install

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
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
// API server and proves the restart controller's part: its pod passes Pod
// Security; it has no rights in a namespace until the namespace binds its
// ClusterRole, and then exactly restarterGrants; the controller, with its
// ServiceAccount's token, restarts a real Deployment reached through a real
// ReplicaSet and records the Event; and the ValidatingAdmissionPolicy lets it
// change nothing but kvinject.dev/restarted-at.
func TestKustomizeRestarter(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/examples/restarter")
	c.apply(t, in.objs)
	ctx := context.Background()

	dep := in.restarter
	if dep == nil {
		t.Fatal("the install has no restarter")
	}
	t.Run("pod security", func(t *testing.T) { c.checkTemplateSecurity(t, in.namespace, dep) })
	if f := hubFlags(t, in)["restarter-service-account"]; f != in.namespace+"/"+dep.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("the hub's --restarter-service-account is %q", f)
	}

	sa := dep.Spec.Template.Spec.ServiceAccountName
	const optedIn, other = "team-restart", "team-other"
	c.ensureNamespace(t, optedIn, nil, map[string]map[string]string{"default": nil})
	c.ensureNamespace(t, other, nil, nil)
	baseline := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: in.namespace, Name: "rbac-baseline"}}
	if err := c.client.Create(ctx, baseline); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The opt-in docs/actions.md gives: kubectl create rolebinding
	// kvinject-restarter -n <ns> --clusterrole=kvinject-restarter
	// --serviceaccount=kvinject-system:kvinject-restarter
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: optedIn, Name: "kvinject-restarter"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kvinject-restarter"},
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
