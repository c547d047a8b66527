package restarter

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
)

const ns = "team-a"

var (
	t0     = time.Date(2026, 12, 8, 10, 0, 0, 0, time.UTC)
	selLbl = map[string]string{"app": "web"}
)

func template(ann map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: selLbl, Annotations: ann}}
}

func restartTemplate(extra ...string) corev1.PodTemplateSpec {
	ann := map[string]string{mapping.AnnotationOnChange: "restart"}
	for i := 0; i+1 < len(extra); i += 2 {
		ann[extra[i]] = extra[i+1]
	}
	return template(ann)
}

func ctrlRef(kind, name string, uid types.UID) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, UID: uid, Controller: &yes}}
}

func deployment(tpl corev1.PodTemplateSpec) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web", UID: "dep-uid"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: selLbl}, Template: tpl},
	}
}

func replicaSet() *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-abc", UID: "rs-uid", OwnerReferences: ctrlRef("Deployment", "web", "dep-uid")},
		Spec:       appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: selLbl}},
	}
}

func pod(name string, created time.Time, owners []metav1.OwnerReference) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: name, UID: types.UID(name + "-uid"), Labels: selLbl,
		CreationTimestamp: metav1.NewTime(created), OwnerReferences: owners,
	}}
}

func report(p *corev1.Pod) hubapi.Change {
	return hubapi.Change{Namespace: p.Namespace, Pod: p.Name, PodUID: string(p.UID), Time: t0,
		Vault: "https://v.vault.azure.net/", Objects: []hubapi.Object{{Kind: "secret", Name: "DB-PASSWORD", Version: strings.Repeat("b", 32)}}}
}

type harness struct {
	kube     *fake.Clientset
	c        *Controller
	recorder *record.FakeRecorder
	log      *bytes.Buffer
	mu       sync.Mutex
	now      time.Time
}

func newHarness(t *testing.T, cooldown time.Duration, objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{kube: fake.NewClientset(objs...), recorder: record.NewFakeRecorder(100), log: &bytes.Buffer{}, now: t0.Add(time.Hour)}
	h.c = New(Options{
		Kube: h.kube, Recorder: h.recorder, Debounce: 50 * time.Millisecond, Cooldown: cooldown,
		ServiceAccount: "kvinject-system/kvinject-restarter",
		Logger:         slog.New(slog.NewTextHandler(&lockedWriter{w: h.log, mu: &h.mu}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:            func() time.Time { h.mu.Lock(); defer h.mu.Unlock(); return h.now },
	})
	t.Cleanup(func() { h.c.Stop(); h.c.Wait() })
	return h
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (h *harness) logs() string { h.mu.Lock(); defer h.mu.Unlock(); return h.log.String() }

// patches returns the patch actions on workloads.
func (h *harness) patches() []k8stesting.PatchAction {
	var out []k8stesting.PatchAction
	for _, a := range h.kube.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			out = append(out, p)
		}
	}
	return out
}

// settle waits for the debounce and the restart.
func (h *harness) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		h.c.mu.Lock()
		n := len(h.c.pending)
		h.c.mu.Unlock()
		if n == 0 {
			h.c.Wait()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the debounced restart did not happen within 5 s")
}

func (h *harness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// TestRestartsVerifiedOwnerOnce: reports from three pods of one Deployment
// (through its ReplicaSet) restart it once, by the template annotation, with
// an Event naming the objects and not the values.
func TestRestartsVerifiedOwnerOnce(t *testing.T) {
	rsRef := ctrlRef("ReplicaSet", "web-abc", "rs-uid")
	p1, p2, p3 := pod("web-1", t0, rsRef), pod("web-2", t0, rsRef), pod("web-3", t0, rsRef)
	h := newHarness(t, time.Minute, deployment(restartTemplate()), replicaSet(), p1, p2, p3)
	for _, p := range []*corev1.Pod{p1, p2, p3} {
		if res := h.c.Handle(context.Background(), report(p)); res != ResultScheduled {
			t.Fatalf("report of %s: %s", p.Name, res)
		}
	}
	h.settle(t)
	ps := h.patches()
	if len(ps) != 1 {
		t.Fatalf("%d patches, want 1 for the burst", len(ps))
	}
	if ps[0].GetResource().Resource != "deployments" || ps[0].GetName() != "web" || ps[0].GetPatchType() != types.MergePatchType {
		t.Fatalf("patch: %s %s %s", ps[0].GetResource(), ps[0].GetName(), ps[0].GetPatchType())
	}
	d, _ := h.kube.AppsV1().Deployments(ns).Get(context.Background(), "web", metav1.GetOptions{})
	if got := d.Spec.Template.Annotations[mapping.AnnotationRestartedAt]; got != h.now.Format(time.RFC3339) {
		t.Fatalf("restarted-at = %q", got)
	}
	if d.Spec.Template.Annotations[mapping.AnnotationOnChange] != "restart" {
		t.Fatal("the patch dropped another template annotation")
	}
	ev := h.events()
	if len(ev) != 1 || !strings.Contains(ev[0], "Normal "+ReasonRestarted) || !strings.Contains(ev[0], "secret/DB-PASSWORD changed (reported by pod web-1 and 2 more)") {
		t.Fatalf("events: %q", ev)
	}

	// The restart's own pods predate nothing; the old pods' later reports
	// are ignored, so a restart never loops.
	if res := h.c.Handle(context.Background(), report(p1)); res != ResultBeforeLastRestart {
		t.Fatalf("old pod after the restart: %s", res)
	}
}

// TestCooldownDelaysTheNextRestart: a change reported by a pod of the new
// generation within the cooldown restarts the owner when the cooldown ends.
func TestCooldownDelaysTheNextRestart(t *testing.T) {
	rsRef := ctrlRef("ReplicaSet", "web-abc", "rs-uid")
	last := t0.Add(time.Hour).Add(-500 * time.Millisecond).Truncate(time.Second)
	newPod := pod("web-new", last.Add(time.Second), rsRef)
	h := newHarness(t, 2*time.Second, deployment(restartTemplate(mapping.AnnotationRestartedAt, last.Format(time.RFC3339))), replicaSet(), newPod)
	// now is 1 s after the last restart at most: the cooldown (2 s) holds it.
	h.mu.Lock()
	h.now = last.Add(time.Second)
	h.mu.Unlock()
	if res := h.c.Handle(context.Background(), report(newPod)); res != ResultScheduled {
		t.Fatalf("report: %s", res)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(h.patches()); n != 0 {
		t.Fatalf("%d patches within the cooldown", n)
	}
	if !strings.Contains(h.logs(), "restart delayed by the cooldown") {
		t.Fatalf("log: %s", h.logs())
	}
	h.mu.Lock()
	h.now = last.Add(3 * time.Second)
	h.mu.Unlock()
	h.settle(t)
	if n := len(h.patches()); n != 1 {
		t.Fatalf("%d patches after the cooldown, want 1", n)
	}
}

// TestOwnersAreVerified: what a pod claims is checked, and the action is
// read from the owner's template only.
func TestOwnersAreVerified(t *testing.T) {
	yes := true
	for _, tc := range []struct {
		name   string
		pod    *corev1.Pod
		objs   []runtime.Object
		want   string
		event  string
		logged string
	}{
		{
			name: "ReplicaSet UID does not match",
			pod:  pod("p", t0, ctrlRef("ReplicaSet", "web-abc", "forged")),
			objs: []runtime.Object{deployment(restartTemplate()), replicaSet()},
			want: ResultOwnerMismatch, logged: "ReplicaSet web-abc has UID rs-uid, the pod names forged",
		},
		{
			name: "Deployment UID does not match",
			pod:  pod("p", t0, ctrlRef("ReplicaSet", "web-abc", "rs-uid")),
			objs: []runtime.Object{func() *appsv1.Deployment { d := deployment(restartTemplate()); d.UID = "other"; return d }(), replicaSet()},
			want: ResultOwnerMismatch, logged: "Deployment web has UID other, the ReplicaSet names dep-uid",
		},
		{
			name: "pod outside the selector",
			pod: func() *corev1.Pod {
				p := pod("p", t0, ctrlRef("ReplicaSet", "web-abc", "rs-uid"))
				p.Labels = map[string]string{"app": "evil"}
				return p
			}(),
			objs: []runtime.Object{deployment(restartTemplate()), replicaSet()},
			want: ResultOwnerMismatch, logged: "does not match ReplicaSet web-abc's selector",
		},
		{
			name: "owner does not ask for a restart (the pod cannot ask for it)",
			pod:  pod("p", t0, ctrlRef("ReplicaSet", "web-abc", "rs-uid")),
			objs: []runtime.Object{deployment(template(nil)), replicaSet()},
			want: ResultNoRestartAction, logged: "the action is read from the owner, never from the pod",
		},
		{
			name: "no controller",
			pod:  pod("p", t0, nil),
			want: ResultNoOwner, event: "Warning " + ReasonNoRestartableOwner + " kvinject.dev/on-change: restart rolls a Deployment, StatefulSet or DaemonSet, but it has no controller",
		},
		{
			name: "a Job",
			pod:  pod("p", t0, []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: "j", UID: "j", Controller: &yes}}),
			want: ResultNoOwner, event: "its controller is a Job (batch/v1)",
		},
		{
			name: "a non-controller owner only",
			pod:  pod("p", t0, []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-abc", UID: "rs-uid"}}),
			objs: []runtime.Object{deployment(restartTemplate()), replicaSet()},
			want: ResultNoOwner,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, time.Minute, append(tc.objs, tc.pod)...)
			if got := h.c.Handle(context.Background(), report(tc.pod)); got != tc.want {
				t.Fatalf("result %s, want %s", got, tc.want)
			}
			time.Sleep(100 * time.Millisecond)
			if n := len(h.patches()); n != 0 {
				t.Fatalf("%d patches", n)
			}
			if tc.logged != "" && !strings.Contains(h.logs(), tc.logged) {
				t.Errorf("log lacks %q:\n%s", tc.logged, h.logs())
			}
			if tc.event != "" {
				if ev := h.events(); len(ev) != 1 || !strings.Contains(ev[0], tc.event) {
					t.Errorf("events %q, want one with %q", ev, tc.event)
				}
			}
		})
	}
}

// TestReportsThatNeedNothing: a gone or replaced pod, and a pod that predates
// the owner's last restart.
func TestReportsThatNeedNothing(t *testing.T) {
	rsRef := ctrlRef("ReplicaSet", "web-abc", "rs-uid")
	old := pod("web-old", t0, rsRef)
	h := newHarness(t, time.Minute, deployment(restartTemplate(mapping.AnnotationRestartedAt, t0.Add(time.Minute).Format(time.RFC3339))), replicaSet(), old)
	if got := h.c.Handle(context.Background(), report(old)); got != ResultBeforeLastRestart {
		t.Fatalf("old pod: %s", got)
	}
	gone := pod("web-gone", t0, rsRef)
	if got := h.c.Handle(context.Background(), report(gone)); got != ResultPodGone {
		t.Fatalf("gone pod: %s", got)
	}
	replaced := report(old)
	replaced.PodUID = "another"
	if got := h.c.Handle(context.Background(), replaced); got != ResultPodGone {
		t.Fatalf("replaced pod: %s", got)
	}
}

// TestNotForced: a paused Deployment and OnDelete strategies get a Warning
// Event and no patch.
func TestNotForced(t *testing.T) {
	paused := deployment(restartTemplate())
	paused.Spec.Paused = true
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db", UID: "sts-uid"},
		Spec: appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: selLbl}, Template: restartTemplate(),
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}},
	}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent", UID: "ds-uid"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: selLbl}, Template: restartTemplate(),
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.OnDeleteDaemonSetStrategyType}},
	}
	for _, tc := range []struct {
		owner runtime.Object
		pod   *corev1.Pod
		want  string
	}{
		{paused, pod("web-1", t0, ctrlRef("ReplicaSet", "web-abc", "rs-uid")), "kubectl rollout resume deployment/web"},
		{sts, pod("db-0", t0, ctrlRef("StatefulSet", "db", "sts-uid")), "its updateStrategy is OnDelete"},
		{ds, pod("agent-x", t0, ctrlRef("DaemonSet", "agent", "ds-uid")), "its updateStrategy is OnDelete"},
	} {
		h := newHarness(t, time.Minute, tc.owner, replicaSet(), tc.pod)
		if got := h.c.Handle(context.Background(), report(tc.pod)); got != ResultScheduled {
			t.Fatalf("%s: %s", tc.pod.Name, got)
		}
		h.settle(t)
		if n := len(h.patches()); n != 0 {
			t.Fatalf("%s: %d patches", tc.pod.Name, n)
		}
		if ev := h.events(); len(ev) != 1 || !strings.Contains(ev[0], "Warning "+ReasonRestartNotForced) || !strings.Contains(ev[0], tc.want) {
			t.Fatalf("%s: events %q", tc.pod.Name, ev)
		}
	}
}

// TestStatefulSetAndDaemonSetRestart: direct owners roll too.
func TestStatefulSetAndDaemonSetRestart(t *testing.T) {
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db", UID: "sts-uid"},
		Spec:       appsv1.StatefulSetSpec{Selector: &metav1.LabelSelector{MatchLabels: selLbl}, Template: restartTemplate()},
	}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent", UID: "ds-uid"},
		Spec:       appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: selLbl}, Template: restartTemplate()},
	}
	p1, p2 := pod("db-0", t0, ctrlRef("StatefulSet", "db", "sts-uid")), pod("agent-x", t0, ctrlRef("DaemonSet", "agent", "ds-uid"))
	h := newHarness(t, time.Minute, sts, ds, p1, p2)
	h.c.Handle(context.Background(), report(p1))
	h.c.Handle(context.Background(), report(p2))
	h.settle(t)
	got := map[string]bool{}
	for _, p := range h.patches() {
		got[p.GetResource().Resource+"/"+p.GetName()] = true
	}
	if !got["statefulsets/db"] || !got["daemonsets/agent"] || len(got) != 2 {
		t.Fatalf("patches: %v", got)
	}
}

// TestNamespaceNotOptedIn: without the RoleBinding the API server says 403;
// the controller logs the exact fix, once per namespace per 10 minutes.
func TestNamespaceNotOptedIn(t *testing.T) {
	h := newHarness(t, time.Minute)
	h.kube.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "web-1", nil)
	})
	p := pod("web-1", t0, nil)
	for range 3 {
		if got := h.c.Handle(context.Background(), report(p)); got != ResultNotOptedIn {
			t.Fatalf("result %s", got)
		}
	}
	fix := "kubectl create rolebinding kvinject-restarter -n team-a --clusterrole=kvinject-restarter --serviceaccount=kvinject-system:kvinject-restarter"
	if n := strings.Count(h.logs(), fix); n != 1 {
		t.Fatalf("the fix is logged %d times, want once:\n%s", n, h.logs())
	}
}
