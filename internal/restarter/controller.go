// Package restarter is kvinject's restart controller (cmd/restarter): it
// reads the version hub's feed of swapped sets (pkg/hubapi, FeedPath) and rolls
// the workloads whose pod template asks for it with
// kvinject.dev/on-change: restart, the way kubectl rollout restart does (an
// annotation on the pod template, here kvinject.dev/restarted-at).
//
// A report is a hint, never an order. A pod's ownerReferences are written by
// whoever creates the pod, so the controller walks the controller chain itself
// (controller=true, each UID matching the object it names, the pod matching
// the owner's selector) up to a Deployment (through its ReplicaSet), a
// StatefulSet or a DaemonSet, and reads the action from that owner's pod
// template, never from the pod. Reports are debounced per owner (one restart
// per burst across its pods) with a cooldown between restarts; a report from a
// pod created before the owner's last restart is ignored (its replacement reads
// the new version), so a restart never loops. Paused Deployments and OnDelete
// update strategies are reported as Events, not forced.
//
// The controller's rights come from a RoleBinding per namespace to the
// ClusterRole the install ships (docs/actions.md); in a namespace that has not
// opted in, the API server refuses it and it logs the fix. A
// ValidatingAdmissionPolicy in the install lets its ServiceAccount change
// nothing in a workload but kvinject.dev/restarted-at.
package restarter

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// Defaults of Options.
const (
	// DefaultDebounce is how long the controller collects reports of one
	// owner's pods before it restarts the owner once.
	DefaultDebounce = 10 * time.Second
	// DefaultCooldown is the least time between two restarts of one owner.
	DefaultCooldown = 2 * time.Minute
)

// Event reasons on the owner (or on the pod when there is no owner to act on).
const (
	// ReasonRestarted: the controller rolled the owner's pods.
	ReasonRestarted = "KvinjectRestarted"
	// ReasonRestartNotForced: the owner does not roll on a template change
	// (paused Deployment, OnDelete strategy); nothing was changed.
	ReasonRestartNotForced = "KvinjectRestartNotForced"
	// ReasonRestartFailed: the patch was refused or failed.
	ReasonRestartFailed = "KvinjectRestartFailed"
	// ReasonNoRestartableOwner: the pod asked for a restart but has no
	// Deployment, StatefulSet or DaemonSet to roll (Event on the pod).
	ReasonNoRestartableOwner = "KvinjectNoRestartableOwner"
)

// Options configure a Controller.
type Options struct {
	// Kube reads pods, ReplicaSets and workloads, and patches workloads.
	Kube kubernetes.Interface
	// Recorder records the Events (on owners, or on pods).
	Recorder record.EventRecorder
	// Debounce and Cooldown: 0 means DefaultDebounce and DefaultCooldown.
	Debounce, Cooldown time.Duration
	// ServiceAccount is the controller's own "<namespace>/<name>", for the
	// fix in the log when a namespace has not opted in.
	ServiceAccount string
	// Logger receives the log; nil discards it.
	Logger *slog.Logger
	// Metrics counts; nil counts nothing.
	Metrics *Metrics
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Controller turns the hub's reports into rolling restarts.
type Controller struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	pending map[ownerKey]*pending
	// optOutLogged keeps when a namespace's missing RoleBinding was last
	// logged (once per 10 minutes per namespace).
	optOutLogged map[string]time.Time
	wg           sync.WaitGroup
}

// ownerKey names a workload.
type ownerKey struct {
	Kind, Namespace, Name string
	UID                   types.UID
}

func (k ownerKey) String() string { return k.Kind + " " + k.Namespace + "/" + k.Name }

// pending is an owner's debounced restart.
type pending struct {
	timer   *time.Timer
	objects map[string]bool
	pods    map[string]bool
}

// New returns a Controller.
func New(opts Options) *Controller {
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.Cooldown == 0 {
		opts.Cooldown = DefaultCooldown
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	return &Controller{opts: opts, log: log, now: opts.Now, pending: map[ownerKey]*pending{}, optOutLogged: map[string]time.Time{}}
}

// Wait waits for the restarts in progress (pending ones are dropped by Stop).
func (c *Controller) Wait() { c.wg.Wait() }

// Stop drops the pending restarts.
func (c *Controller) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, p := range c.pending {
		p.timer.Stop()
		delete(c.pending, k)
	}
}

// Results of Handle, the label of kvinject_restarter_reports_total.
const (
	ResultScheduled         = "scheduled"
	ResultPodGone           = "pod_gone"
	ResultNotOptedIn        = "namespace_not_opted_in"
	ResultNoOwner           = "no_restartable_owner"
	ResultOwnerMismatch     = "owner_not_verified"
	ResultNoRestartAction   = "owner_has_no_restart_action"
	ResultBeforeLastRestart = "pod_predates_last_restart"
	ResultError             = "error"
)

// Handle takes one report: it verifies the pod and its owner and schedules
// the owner's debounced restart. It returns the result (a Result* constant).
func (c *Controller) Handle(ctx context.Context, ch hubapi.Change) string {
	res := c.handle(ctx, ch)
	c.opts.Metrics.reports.WithLabelValues(res).Inc()
	return res
}

func (c *Controller) handle(ctx context.Context, ch hubapi.Change) string {
	log := c.log.With("pod", ch.Namespace+"/"+ch.Pod, "podUID", ch.PodUID)
	pod, err := c.opts.Kube.CoreV1().Pods(ch.Namespace).Get(ctx, ch.Pod, metav1.GetOptions{})
	switch {
	case apierrors.IsForbidden(err):
		c.logOptOut(ch.Namespace)
		return ResultNotOptedIn
	case apierrors.IsNotFound(err):
		log.Debug("the reporting pod is gone; its replacement reads the current versions")
		return ResultPodGone
	case err != nil:
		log.Warn("cannot read the reporting pod; the report is dropped", "error", err)
		return ResultError
	case string(pod.UID) != ch.PodUID:
		log.Debug("the reporting pod was replaced (another UID); its replacement reads the current versions")
		return ResultPodGone
	}
	o, res, err := c.ownerOf(ctx, pod)
	if err != nil {
		if apierrors.IsForbidden(err) {
			c.logOptOut(ch.Namespace)
			return ResultNotOptedIn
		}
		log.Warn("cannot read the reporting pod's owner; the report is dropped", "error", err)
		return ResultError
	}
	if res != "" {
		return res
	}
	if !wantsRestart(o.template) {
		log.Warn("the pod's agent reported a swapped set for a restart, but its owner's pod template does not ask for kvinject.dev/on-change: restart; nothing is restarted (the action is read from the owner, never from the pod)", "owner", o.key.String())
		return ResultNoRestartAction
	}
	if last, ok := restartedAt(o.template); ok && !pod.CreationTimestamp.Time.After(last) {
		log.Debug("the pod predates its owner's last restart; its replacement reads the new version", "owner", o.key.String(), "restartedAt", last)
		return ResultBeforeLastRestart
	}
	c.schedule(o.key, ch)
	log.Info("restart scheduled", "owner", o.key.String(), "objects", objectNames(ch.Objects), "debounce", c.opts.Debounce)
	return ResultScheduled
}

// logOptOut logs, once per 10 minutes per namespace, that the namespace has
// not granted the controller its rights, and how to.
func (c *Controller) logOptOut(ns string) {
	c.mu.Lock()
	last, seen := c.optOutLogged[ns]
	now := c.now()
	if seen && now.Sub(last) < 10*time.Minute {
		c.mu.Unlock()
		return
	}
	c.optOutLogged[ns] = now
	c.mu.Unlock()
	saNS, saName, _ := strings.Cut(c.opts.ServiceAccount, "/")
	c.log.Warn("a pod asked for a restart, but its namespace has not opted in: the API server refuses the restart controller there (logged once per 10 minutes per namespace)",
		"namespace", ns,
		// The installs name the ClusterRole after the ServiceAccount.
		"fix", fmt.Sprintf("kubectl create rolebinding %s -n %s --clusterrole=%s --serviceaccount=%s:%s", saName, ns, saName, saNS, saName))
}

// owner is a verified workload.
type owner struct {
	key      ownerKey
	obj      runtime.Object
	template *corev1.PodTemplateSpec
	selector *metav1.LabelSelector
	// notForced says why changing the template does not roll the pods
	// (paused, OnDelete); empty when it does.
	notForced string
}

// ownerOf walks the pod's controller chain: the ReplicaSet's Deployment, a
// StatefulSet or a DaemonSet, each verified by UID, and the pod by the
// owner's selector. A result other than "" means there is nothing to restart.
func (c *Controller) ownerOf(ctx context.Context, pod *corev1.Pod) (*owner, string, error) {
	apps := c.opts.Kube.AppsV1()
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		c.noOwner(pod, "it has no controller (ownerReferences with controller: true)")
		return nil, ResultNoOwner, nil
	}
	if g, _ := apiGroup(ref.APIVersion); g != "apps" {
		c.noOwner(pod, fmt.Sprintf("its controller is a %s (%s)", ref.Kind, ref.APIVersion))
		return nil, ResultNoOwner, nil
	}
	mismatch := func(what string) (*owner, string, error) {
		c.log.Warn("a report's pod names an owner that does not verify; nothing is restarted", "pod", pod.Namespace+"/"+pod.Name, "problem", what)
		return nil, ResultOwnerMismatch, nil
	}
	// The owner to roll, and who names it (for the mismatch message).
	var key ownerKey
	namedBy := "the pod"
	switch ref.Kind {
	case "ReplicaSet":
		rs, err := apps.ReplicaSets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return mismatch("ReplicaSet " + ref.Name + " does not exist")
		} else if err != nil {
			return nil, "", err
		}
		if rs.UID != ref.UID {
			return mismatch(fmt.Sprintf("ReplicaSet %s has UID %s, the pod names %s", rs.Name, rs.UID, ref.UID))
		}
		if !selects(rs.Spec.Selector, pod) {
			return mismatch("the pod does not match ReplicaSet " + rs.Name + "'s selector")
		}
		dref := metav1.GetControllerOf(rs)
		if dref == nil || dref.Kind != "Deployment" {
			c.noOwner(pod, "its ReplicaSet "+rs.Name+" is not controlled by a Deployment")
			return nil, ResultNoOwner, nil
		}
		key, namedBy = ownerKey{"Deployment", pod.Namespace, dref.Name, dref.UID}, "the ReplicaSet"
	case "StatefulSet", "DaemonSet":
		key = ownerKey{ref.Kind, pod.Namespace, ref.Name, ref.UID}
	default:
		c.noOwner(pod, fmt.Sprintf("its controller is a %s", ref.Kind))
		return nil, ResultNoOwner, nil
	}
	o, err := c.get(ctx, key)
	if apierrors.IsNotFound(err) {
		return mismatch(key.Kind + " " + key.Name + " does not exist")
	} else if err != nil {
		return nil, "", err
	}
	if o.key.UID != key.UID {
		return mismatch(fmt.Sprintf("%s %s has UID %s, %s names %s", key.Kind, key.Name, o.key.UID, namedBy, key.UID))
	}
	if !selects(o.selector, pod) {
		return mismatch(fmt.Sprintf("the pod does not match %s's selector", o.key))
	}
	return o, "", nil
}

// noOwner records on the pod that it has nothing the controller can roll.
func (c *Controller) noOwner(pod *corev1.Pod, why string) {
	msg := fmt.Sprintf("kvinject.dev/on-change: restart rolls a Deployment, StatefulSet or DaemonSet, but %s; restart the pod yourself, or use an http: action", why)
	c.log.Info("no restartable owner", "pod", pod.Namespace+"/"+pod.Name, "why", why)
	if c.opts.Recorder != nil {
		c.opts.Recorder.Event(pod, corev1.EventTypeWarning, ReasonNoRestartableOwner, msg)
	}
}

// apiGroup returns the group and version of an apiVersion.
func apiGroup(apiVersion string) (group string, version string) {
	g, v, ok := strings.Cut(apiVersion, "/")
	if !ok {
		return "", g
	}
	return g, v
}

func selects(sel *metav1.LabelSelector, pod *corev1.Pod) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(labels.Set(pod.Labels))
}

func deploymentOwner(d *appsv1.Deployment) *owner {
	o := &owner{key: ownerKey{"Deployment", d.Namespace, d.Name, d.UID}, obj: d, template: &d.Spec.Template, selector: d.Spec.Selector}
	if d.Spec.Paused {
		o.notForced = "the Deployment is paused; resume it (kubectl rollout resume deployment/" + d.Name + ") to roll out the new version"
	}
	return o
}

func statefulSetOwner(s *appsv1.StatefulSet) *owner {
	o := &owner{key: ownerKey{"StatefulSet", s.Namespace, s.Name, s.UID}, obj: s, template: &s.Spec.Template, selector: s.Spec.Selector}
	if s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType {
		o.notForced = "its updateStrategy is OnDelete, so a template change rolls nothing; delete its pods to pick up the new version, or use RollingUpdate"
	}
	return o
}

func daemonSetOwner(ds *appsv1.DaemonSet) *owner {
	o := &owner{key: ownerKey{"DaemonSet", ds.Namespace, ds.Name, ds.UID}, obj: ds, template: &ds.Spec.Template, selector: ds.Spec.Selector}
	if ds.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType {
		o.notForced = "its updateStrategy is OnDelete, so a template change rolls nothing; delete its pods to pick up the new version, or use RollingUpdate"
	}
	return o
}

// wantsRestart reports whether the pod template asks for the restart action
// (parsed as the webhook parses it).
func wantsRestart(t *corev1.PodTemplateSpec) bool {
	raw, ok := t.Annotations[mapping.AnnotationOnChange]
	if !ok {
		return false
	}
	oc, err := agentconfig.ParseOnChange(raw)
	return err == nil && oc.Kind == agentconfig.OnChangeRestart
}

// restartedAt is the template's last restart by the controller.
func restartedAt(t *corev1.PodTemplateSpec) (time.Time, bool) {
	v, ok := t.Annotations[mapping.AnnotationRestartedAt]
	if !ok {
		return time.Time{}, false
	}
	ts, err := time.Parse(time.RFC3339, v)
	return ts, err == nil
}

// schedule adds a report to the owner's debounced restart.
func (c *Controller) schedule(k ownerKey, ch hubapi.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pending[k]
	if !ok {
		p = &pending{objects: map[string]bool{}, pods: map[string]bool{}}
		c.pending[k] = p
		p.timer = time.AfterFunc(c.opts.Debounce, func() { c.fire(k) })
	}
	p.pods[ch.Pod] = true
	for _, o := range ch.Objects {
		p.objects[o.Kind+"/"+o.Name] = true
	}
}

// fire restarts the owner once its burst is over, unless its cooldown has
// not passed (then it waits for it).
func (c *Controller) fire(k ownerKey) {
	c.wg.Add(1)
	defer c.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	retryIn, done := c.restart(ctx, k)
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.pending[k]
	if !ok {
		return // stopped
	}
	if !done {
		p.timer = time.AfterFunc(retryIn, func() { c.fire(k) })
		return
	}
	delete(c.pending, k)
}

// restart rolls the owner (fresh from the API server) once; done is false
// when it must be tried again after retryIn (cooldown, conflict, error).
func (c *Controller) restart(ctx context.Context, k ownerKey) (retryIn time.Duration, done bool) {
	c.mu.Lock()
	p := c.pending[k]
	if p == nil {
		c.mu.Unlock()
		return 0, true // stopped meanwhile
	}
	objs, pods := sortedKeys(p.objects), sortedKeys(p.pods)
	c.mu.Unlock()
	log := c.log.With("owner", k.String())
	o, err := c.get(ctx, k)
	if apierrors.IsNotFound(err) || (err == nil && o.key.UID != k.UID) {
		log.Info("the owner is gone or was replaced; nothing to restart")
		c.opts.Metrics.restarts.WithLabelValues(k.Kind, "owner_gone").Inc()
		return 0, true
	}
	if err != nil {
		log.Warn("cannot read the owner; retrying", "error", err)
		c.opts.Metrics.restarts.WithLabelValues(k.Kind, "error").Inc()
		return 30 * time.Second, false
	}
	if !wantsRestart(o.template) {
		log.Info("the owner no longer asks for kvinject.dev/on-change: restart; nothing restarted")
		return 0, true
	}
	now := c.now().UTC().Truncate(time.Second)
	if last, ok := restartedAt(o.template); ok && now.Before(last.Add(c.opts.Cooldown)) {
		wait := last.Add(c.opts.Cooldown).Sub(now)
		log.Info("restart delayed by the cooldown since the last one", "restartedAt", last, "in", wait)
		return wait, false
	}
	why := fmt.Sprintf("%s changed (reported by pod %s)", describe(objs), describePods(pods))
	if o.notForced != "" {
		msg := fmt.Sprintf("%s, but kvinject did not restart %s: %s", why, k, o.notForced)
		log.Warn("restart not forced", "why", o.notForced, "objects", strings.Join(objs, ","))
		c.event(o.obj, corev1.EventTypeWarning, ReasonRestartNotForced, msg)
		c.opts.Metrics.restarts.WithLabelValues(k.Kind, "not_forced").Inc()
		return 0, true
	}
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{mapping.AnnotationRestartedAt: now.Format(time.RFC3339)}}}}})
	if err := c.patch(ctx, k, patch); err != nil {
		log.Warn("the restart patch failed", "error", err)
		c.event(o.obj, corev1.EventTypeWarning, ReasonRestartFailed, fmt.Sprintf("%s, but the restart failed: %v", why, err))
		c.opts.Metrics.restarts.WithLabelValues(k.Kind, "failed").Inc()
		if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
			return 0, true
		}
		return 30 * time.Second, false
	}
	log.Info("rolling restart", "objects", strings.Join(objs, ","), "pods", strings.Join(pods, ","), "restartedAt", now.Format(time.RFC3339))
	c.event(o.obj, corev1.EventTypeNormal, ReasonRestarted, fmt.Sprintf("rolling restart: %s", why))
	c.opts.Metrics.restarts.WithLabelValues(k.Kind, "restarted").Inc()
	return 0, true
}

func (c *Controller) event(obj runtime.Object, typ, reason, msg string) {
	if c.opts.Recorder != nil {
		c.opts.Recorder.Event(obj, typ, reason, msg)
	}
}

// get reads the owner.
func (c *Controller) get(ctx context.Context, k ownerKey) (*owner, error) {
	apps := c.opts.Kube.AppsV1()
	switch k.Kind {
	case "Deployment":
		d, err := apps.Deployments(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return deploymentOwner(d), nil
	case "StatefulSet":
		s, err := apps.StatefulSets(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return statefulSetOwner(s), nil
	default:
		ds, err := apps.DaemonSets(k.Namespace).Get(ctx, k.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return daemonSetOwner(ds), nil
	}
}

// patch applies a merge patch that sets the template's restart annotation,
// with the owner's UID as a precondition (a replaced owner is not touched).
func (c *Controller) patch(ctx context.Context, k ownerKey, patch []byte) error {
	var m map[string]any
	_ = json.Unmarshal(patch, &m)
	m["metadata"] = map[string]any{"uid": string(k.UID)}
	patch, _ = json.Marshal(m)
	apps := c.opts.Kube.AppsV1()
	opts := metav1.PatchOptions{FieldManager: "kvinject-restarter"}
	var err error
	switch k.Kind {
	case "Deployment":
		_, err = apps.Deployments(k.Namespace).Patch(ctx, k.Name, types.MergePatchType, patch, opts)
	case "StatefulSet":
		_, err = apps.StatefulSets(k.Namespace).Patch(ctx, k.Name, types.MergePatchType, patch, opts)
	default:
		_, err = apps.DaemonSets(k.Namespace).Patch(ctx, k.Name, types.MergePatchType, patch, opts)
	}
	return err
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func describe(objs []string) string {
	if len(objs) == 0 {
		return "a secret"
	}
	if len(objs) > 5 {
		return strings.Join(objs[:5], ", ") + fmt.Sprintf(" and %d more", len(objs)-5)
	}
	return strings.Join(objs, ", ")
}

func describePods(pods []string) string {
	if len(pods) <= 1 {
		return strings.Join(pods, "")
	}
	return fmt.Sprintf("%s and %d more", pods[0], len(pods)-1)
}

func objectNames(objs []hubapi.Object) string {
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.Kind + "/" + o.Name
	}
	return strings.Join(names, ",")
}
