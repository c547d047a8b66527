// Package offline applies the webhook's mutation to manifests instead of
// admission requests: `kvinject-webhook inject -f <file|->` reads Pods and
// workloads (Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
// CronJobs, ReplicationControllers) from multi-document YAML, also inside a
// `kind: List` (or PodList...) whose items are an array, and prints them as
// the cluster would run them.
//
// Each pod template is decided by injector.DecideWithClass, the decision the
// admission handler itself calls (mapping.ApplySecretProviderClass for a pod
// that names a class, then mapping.Resolve, then mutate.Patch), with the same
// defaults from the same flags. The Namespace, ServiceAccount and
// SecretProviderClass that the webhook reads from the API come from objects of
// the input, or else (Namespace and ServiceAccount) from flags. The returned
// patch is applied to the document as the API server applies it to the pod,
// so fields this build does not know are kept, and written into the
// document's text (editYAML), so that its comments and formatting stay.
// With Options.RemoveCSIVolumes, the CSI volume of the SecretProviderClass a
// template migrates is removed first (removeCSIVolumes).
//
// Documents that are not workloads, workloads whose template is not opted in
// or is already injected, and workloads in a namespace that the cluster never
// sends to the webhook (Options.ExcludedNamespaces; with a warning) are printed
// byte for byte as they came. Any refusal, unreadable document or input
// without documents fails the whole run, naming the document and the field,
// and nothing is printed.
package offline

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/internal/injector"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// Options configure an offline injection.
type Options struct {
	// Defaults and Mutate are the webhook's settings (injector.Options after Complete).
	Defaults mapping.Defaults
	Mutate   mutate.Config
	// Namespace is the namespace of objects that name none (kubectl's default: "default").
	Namespace string
	// NamespaceAnnotations are the annotations of every Namespace that the
	// input does not hold; nil means such a Namespace does not exist.
	NamespaceAnnotations map[string]string
	// ServiceAccountAnnotations are the annotations of every ServiceAccount
	// that the input does not hold; nil means such a ServiceAccount does not exist.
	ServiceAccountAnnotations map[string]string
	// ExcludedNamespaces are the namespaces whose pods the cluster never sends
	// to the webhook (its namespaceSelector); their templates are printed
	// unchanged, with a warning. nil means DefaultExcludedNamespaces().
	ExcludedNamespaces []string
	// RemoveCSIVolumes removes from a template that names a SecretProviderClass
	// (kvinject.dev/secret-provider-class) the Secrets Store CSI volumes of that
	// class and their volumeMounts, keeping the directory the containers read
	// through kvinject.dev/mount-path. Without it, such a template is refused,
	// as the webhook refuses the pod.
	RemoveCSIVolumes bool
}

// Input is one named stream of YAML (or JSON) documents.
type Input struct {
	// Name names the stream in messages, e.g. a file name or "<stdin>".
	Name string
	Data []byte
}

// Result is the output of a successful run.
type Result struct {
	// Output is every document, in input order, separated by "---".
	Output []byte
	// Warnings are for the user (stderr): unknown annotation keys and other
	// likely mistakes, and decisions made without a Namespace or
	// ServiceAccount that the cluster may have.
	Warnings []string
	// Notes are for the user too (stderr): what --remove-csi-volumes removed,
	// and the CSI volumes of other classes that remain.
	Notes []string
	// Injected counts the pod templates that were injected.
	Injected int
}

// Error lists every problem of a failed run; nothing was printed.
type Error struct {
	Problems []string
}

// Error returns the problems, one per line.
func (e *Error) Error() string { return strings.Join(e.Problems, "\n") }

// templatePaths are the JSON pointers of the pod template of each workload
// kind, by "<group>/<kind>"; "" is the pod itself.
var templatePaths = map[string]string{
	"/Pod":                   "",
	"/ReplicationController": "/spec/template",
	"apps/Deployment":        "/spec/template",
	"apps/StatefulSet":       "/spec/template",
	"apps/DaemonSet":         "/spec/template",
	"apps/ReplicaSet":        "/spec/template",
	"batch/Job":              "/spec/template",
	"batch/CronJob":          "/spec/jobTemplate/spec/template",
}

// object is the part of a Kubernetes object that the injector reads.
type object struct {
	APIVersion string
	Kind       string
	Metadata   struct {
		Name         string `json:"name"`
		GenerateName string `json:"generateName"`
		Namespace    string `json:"namespace"`
	}
}

// typeOf returns the apiVersion and kind of an object, or false when they are
// not both strings (then it is no Kubernetes object the injector knows).
func typeOf(raw []byte) (apiVersion, kind string, ok bool) {
	var t struct {
		APIVersion any `json:"apiVersion"`
		Kind       any `json:"kind"`
	}
	if json.Unmarshal(raw, &t) != nil {
		return "", "", false
	}
	apiVersion, ok1 := t.APIVersion.(string)
	kind, ok2 := t.Kind.(string)
	return apiVersion, kind, ok1 && ok2
}

func (o *object) group() string {
	g, _, found := strings.Cut(o.APIVersion, "/")
	if !found {
		return "" // the core group: "v1"
	}
	return g
}

// document is one YAML document of an input.
type document struct {
	seq   int    // position in the whole input, from 1
	where string // "<input>: document N"
	raw   []byte // as read
	json  []byte // nil when the document is empty (comments only)
	// patch holds the operations on json, with paths from its root.
	patch []patchOp
}

// run is the state of one Inject call.
type run struct {
	opts     Options
	excluded map[string]bool
	nss      map[string]*corev1.Namespace
	sas      map[string]*corev1.ServiceAccount       // by "<namespace>/<name>"
	spcs     map[string]*mapping.SecretProviderClass // by "<namespace>/<name>"
	unserved map[string]string                       // apiVersion of classes in versions not served, by "<namespace>/<name>"
	warned   map[string]bool
	reported map[string]bool
	res      Result
	problems []problem
}

func newRun(opts Options) *run {
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	if opts.ExcludedNamespaces == nil {
		opts.ExcludedNamespaces = DefaultExcludedNamespaces()
	}
	r := &run{opts: opts, excluded: map[string]bool{}, nss: map[string]*corev1.Namespace{}, sas: map[string]*corev1.ServiceAccount{},
		spcs: map[string]*mapping.SecretProviderClass{}, unserved: map[string]string{},
		warned: map[string]bool{}, reported: map[string]bool{}}
	for _, ns := range opts.ExcludedNamespaces {
		r.excluded[ns] = true
	}
	return r
}

// Inject reads every document of inputs and returns them, with the pod
// templates that opt in injected as the webhook would inject them.
func Inject(inputs []Input, opts Options) (Result, error) {
	r := newRun(opts)
	var docs []*document
	for _, in := range inputs {
		d, err := split(in)
		if err != nil {
			r.problem(nil, err.Error())
			continue
		}
		if !hasContent(d) {
			// An empty input is most likely a failed upstream command in a
			// pipe: do not make it an empty, successful render.
			r.problem(nil, fmt.Sprintf("no documents in %s", in.Name))
			continue
		}
		docs = append(docs, d...)
	}
	for i, d := range docs {
		d.seq = i + 1
	}
	// The Namespaces and ServiceAccounts first: a workload may come before them.
	for _, d := range docs {
		r.visit(d, "", d.where, d.json, r.collect)
	}
	for _, d := range docs {
		r.visit(d, "", d.where, d.json, r.inject)
	}
	if len(r.problems) > 0 {
		return Result{Warnings: r.res.Warnings}, r.err()
	}
	var out bytes.Buffer
	for i, d := range docs {
		if i > 0 {
			out.WriteString("---\n")
		}
		b, err := d.render()
		if err != nil {
			r.problem(d, fmt.Sprintf("%s: %v", d.where, err))
			return Result{Warnings: r.res.Warnings}, r.err()
		}
		out.Write(b)
	}
	r.res.Output = out.Bytes()
	return r.res, nil
}

// split reads the documents of an input.
func split(in Input) ([]*document, error) {
	rd := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(in.Data)))
	var docs []*document
	for n := 1; ; n++ {
		raw, err := rd.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: reading document %d: %w", in.Name, n, err)
		}
		d := &document{where: fmt.Sprintf("%s: document %d", in.Name, n), raw: raw}
		j, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: not valid YAML: %w", d.where, err)
		}
		if t := bytes.TrimSpace(j); !bytes.Equal(t, []byte("null")) {
			d.json = t
		}
		docs = append(docs, d)
	}
}

// hasContent reports whether any of docs is more than comments and blank lines.
func hasContent(docs []*document) bool {
	for _, d := range docs {
		if d.json != nil {
			return true
		}
	}
	return false
}

// visitor is called for each object: the document, the JSON pointer of the
// object in it ("" for the document itself), its name for messages, and its JSON.
type visitor func(d *document, at, where string, obj *object, raw []byte)

// visit calls fn for the object raw at pointer at of d, and for each item of a List.
func (r *run) visit(d *document, at, where string, raw []byte, fn visitor) {
	if len(raw) == 0 || raw[0] != '{' {
		return // empty, or not an object: not a Kubernetes object, printed as it is
	}
	apiVersion, kind, ok := typeOf(raw)
	if !ok {
		return // no Kubernetes object: printed as it is
	}
	obj := object{APIVersion: apiVersion, Kind: kind}
	if items, ok := listItems(kind, raw); ok {
		for i, item := range items {
			r.visit(d, fmt.Sprintf("%s/items/%d", at, i), fmt.Sprintf("%s, item %d", where, i+1), item, fn)
		}
		return
	}
	if _, workload := templatePaths[obj.group()+"/"+kind]; !workload && !readByDecision(&obj) {
		return // neither a workload nor an object a decision reads
	}
	var meta struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	_ = json.Unmarshal(raw, &meta) // an object: cannot fail
	if len(meta.Metadata) > 0 {
		if json.Unmarshal(meta.Metadata, &obj.Metadata) != nil {
			r.problem(d, fmt.Sprintf("%s (%s): metadata: not an object with string name, generateName and namespace", where, kind))
			return
		}
	}
	fn(d, at, where, &obj, raw)
}

// listItems returns the items of a List: an object whose kind is List or ends
// in List (PodList, DeploymentList...) and whose items are a JSON array. Any
// other object, such as a custom kind that only ends in List, is no List.
func listItems(kind string, raw []byte) ([]json.RawMessage, bool) {
	if !strings.HasSuffix(kind, "List") {
		return nil, false
	}
	var list struct {
		Items json.RawMessage `json:"items"`
	}
	if json.Unmarshal(raw, &list) != nil || len(list.Items) == 0 || list.Items[0] != '[' {
		return nil, false // no items, or not an array (null included)
	}
	var items []json.RawMessage
	if json.Unmarshal(list.Items, &items) != nil {
		return nil, false // cannot happen: the array was read once already
	}
	return items, true
}

// spcVersions are the versions of SecretProviderClass that the Secrets Store
// CSI driver serves (the same schema; v1alpha1 is deprecated but served).
var spcVersions = []string{"v1", "v1alpha1"}

// isSecretProviderClass reports whether obj is a SecretProviderClass of the
// CSI driver's group, in any version; served tells whether the driver serves
// that version.
func isSecretProviderClass(obj *object) (ok, served bool) {
	gvk := injector.SecretProviderClassGVK
	if obj.Kind != gvk.Kind || obj.group() != gvk.Group {
		return false, false
	}
	_, version, _ := strings.Cut(obj.APIVersion, "/")
	return true, slices.Contains(spcVersions, version)
}

// readByDecision reports whether a decision reads obj: a Namespace, a
// ServiceAccount or a SecretProviderClass (of any version, to say when one is
// not served).
func readByDecision(obj *object) bool {
	if ok, _ := isSecretProviderClass(obj); ok {
		return true
	}
	return obj.group() == "" && (obj.Kind == "Namespace" || obj.Kind == "ServiceAccount")
}

// collect records the Namespaces, ServiceAccounts and SecretProviderClasses of the input.
func (r *run) collect(d *document, _, where string, obj *object, raw []byte) {
	if !readByDecision(obj) {
		return
	}
	switch obj.Kind {
	case injector.SecretProviderClassGVK.Kind:
		if _, served := isSecretProviderClass(obj); !served {
			ns := obj.Metadata.Namespace
			if ns == "" {
				ns = r.opts.Namespace
			}
			r.unserved[ns+"/"+obj.Metadata.Name] = obj.APIVersion
			return
		}
		var u map[string]any
		if err := json.Unmarshal(raw, &u); err != nil {
			r.problem(d, fmt.Sprintf("%s (SecretProviderClass %s): %v", where, obj.Metadata.Name, err))
			return
		}
		spc, err := injector.SecretProviderClassFrom(u)
		if err != nil {
			r.problem(d, fmt.Sprintf("%s (SecretProviderClass %s): %v", where, obj.Metadata.Name, err))
			return
		}
		if spc.Namespace == "" {
			spc.Namespace = r.opts.Namespace
		}
		r.spcs[spc.Namespace+"/"+spc.Name] = &spc
	case "Namespace":
		ns := &corev1.Namespace{}
		if err := json.Unmarshal(raw, ns); err != nil {
			r.problem(d, fmt.Sprintf("%s (Namespace %s): %v", where, obj.Metadata.Name, err))
			return
		}
		r.nss[ns.Name] = ns
	case "ServiceAccount":
		sa := &corev1.ServiceAccount{}
		if err := json.Unmarshal(raw, sa); err != nil {
			r.problem(d, fmt.Sprintf("%s (ServiceAccount %s): %v", where, obj.Metadata.Name, err))
			return
		}
		if sa.Namespace == "" {
			sa.Namespace = r.opts.Namespace
		}
		r.sas[sa.Namespace+"/"+sa.Name] = sa
	}
}

// inject decides on the pod template of a workload and records its patch.
func (r *run) inject(d *document, at, where string, obj *object, raw []byte) {
	tmplPath, ok := templatePaths[obj.group()+"/"+obj.Kind]
	if !ok {
		return
	}
	namespace := obj.Metadata.Namespace
	if namespace == "" {
		namespace = r.opts.Namespace
	}
	name := obj.Metadata.Name
	if name == "" && obj.Metadata.GenerateName != "" {
		name = obj.Metadata.GenerateName + "*"
	}
	where = fmt.Sprintf("%s (%s %s/%s)", where, obj.Kind, namespace, name)
	field := strings.ReplaceAll(strings.TrimPrefix(tmplPath, "/"), "/", ".")
	fail := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if field != "" {
			msg = field + ": " + msg
		}
		r.problem(d, where+": "+msg)
	}

	podJSON, err := podOf(raw, tmplPath)
	if err != nil {
		fail("%v", err)
		return
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(podJSON, pod); err != nil {
		fail("not a pod template: %v", err)
		return
	}
	if !injector.OptedIn(pod) {
		return
	}
	if r.excluded[namespace] {
		r.res.Warnings = append(r.res.Warnings, fmt.Sprintf("%s: not injected: the webhook's namespaceSelector excludes namespace %s (excluded: %s), so the cluster never sends its pods to the webhook",
			where, namespace, strings.Join(r.opts.ExcludedNamespaces, ", ")))
		return
	}
	var removal csiRemoval
	if class, ok := pod.Annotations[mapping.AnnotationSecretProviderClass]; ok && r.opts.RemoveCSIVolumes {
		if removal, err = removeCSIVolumes(pod, class); err != nil {
			var e *Error
			if errors.As(err, &e) {
				for _, p := range e.Problems {
					fail("%s", p)
				}
			} else {
				fail("%v", err)
			}
			return
		}
		if len(removal.ops) > 0 {
			if pod, err = patchPod(podJSON, removal.ops); err != nil {
				fail("internal error: removing the CSI volume: %v", err)
				return
			}
		}
	}
	// As in the handler: a pod being created may not carry its namespace yet.
	pod.Namespace = namespace
	// As the API server does before admission: the deprecated
	// spec.serviceAccount stands for spec.serviceAccountName.
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = pod.Spec.DeprecatedServiceAccount
	}
	ns, sa := r.lookup(where, pod)
	var spc *mapping.SecretProviderClass
	if name, ok := pod.Annotations[mapping.AnnotationSecretProviderClass]; ok {
		// Only from the input: there is no cluster to read it from.
		if spc = r.spcs[namespace+"/"+name]; spc == nil && r.unserved[namespace+"/"+name] != "" {
			r.res.Warnings = append(r.res.Warnings, fmt.Sprintf("%s: SecretProviderClass %s/%s of the input is %s, a version the Secrets Store CSI driver does not serve (it serves %s): read as missing (write it as secrets-store.csi.x-k8s.io/v1)",
				where, namespace, name, r.unserved[namespace+"/"+name], strings.Join(spcVersions, " and ")))
		} else if spc == nil {
			r.res.Warnings = append(r.res.Warnings, fmt.Sprintf("%s: SecretProviderClass %s/%s is not in the input (add it: kubectl get secretproviderclass -n %s %s -o yaml)",
				where, namespace, name, namespace, name))
		}
	}
	dec := injector.DecideWithClass(pod, ns, sa, spc, r.opts.Defaults, r.opts.Mutate)
	for _, w := range dec.Warnings {
		r.res.Warnings = append(r.res.Warnings, where+": "+prefixed(field, w))
	}
	switch dec.Result {
	case injector.ResultDenied:
		var inv *agentconfig.InvalidError
		if errors.As(dec.Denial, &inv) {
			for _, p := range inv.Problems {
				fail("%s", p)
			}
			return
		}
		fail("%v", dec.Denial)
		return
	case injector.ResultUnchanged:
		return
	}
	for _, op := range removal.ops {
		op.Path = at + tmplPath + op.Path
		d.patch = append(d.patch, op)
	}
	for _, n := range removal.notes {
		r.res.Notes = append(r.res.Notes, where+": "+prefixed(field, n))
	}
	for _, op := range dec.Patch {
		v, err := json.Marshal(op.Value)
		if err != nil {
			fail("internal error: encoding the patch: %v", err)
			return
		}
		d.patch = append(d.patch, patchOp{Op: op.Operation, Path: at + tmplPath + op.Path, Value: v})
	}
	r.res.Injected++
}

// patchPod returns the pod podJSON with ops applied.
func patchPod(podJSON []byte, ops []patchOp) (*corev1.Pod, error) {
	raw, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		return nil, err
	}
	patched, err := p.Apply(podJSON)
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(patched, pod); err != nil {
		return nil, err
	}
	return pod, nil
}

// prefixed puts the template's field before a warning that names an annotation.
func prefixed(field, msg string) string {
	if field == "" {
		return msg
	}
	return field + ": " + msg
}

// lookup returns the pod's Namespace and ServiceAccount as the cluster would
// have them: from the input, else from the flags' annotations, else none
// (which the run warns about once, since the cluster may have them).
func (r *run) lookup(where string, pod *corev1.Pod) (*corev1.Namespace, *corev1.ServiceAccount) {
	ns, found := r.nss[pod.Namespace]
	switch {
	case found:
	case r.opts.NamespaceAnnotations != nil:
		ns = &corev1.Namespace{}
		ns.Name, ns.Annotations = pod.Namespace, r.opts.NamespaceAnnotations
	default:
		r.warnOnce("ns/"+pod.Namespace, fmt.Sprintf("%s: Namespace %q is not in the input and no --namespace-annotation is given: decided without its defaults and policy (add it to the input: kubectl get namespace %s -o yaml)",
			where, pod.Namespace, pod.Namespace))
	}
	saName := injector.ServiceAccountName(pod)
	sa, found := r.sas[pod.Namespace+"/"+saName]
	switch {
	case found:
	case r.opts.ServiceAccountAnnotations != nil:
		sa = &corev1.ServiceAccount{}
		sa.Namespace, sa.Name, sa.Annotations = pod.Namespace, saName, r.opts.ServiceAccountAnnotations
	case !choosesIdentity(pod, ns):
		r.warnOnce("sa/"+pod.Namespace+"/"+saName, fmt.Sprintf("%s: ServiceAccount %s/%s is not in the input and no --service-account-annotation is given: decided without its workload identity (add it to the input: kubectl get serviceaccount -n %s %s -o yaml)",
			where, pod.Namespace, saName, pod.Namespace, saName))
	}
	return ns, sa
}

// choosesIdentity reports whether the pod or its namespace names the identity,
// so that the ServiceAccount does not matter to the decision.
func choosesIdentity(pod *corev1.Pod, ns *corev1.Namespace) bool {
	if _, ok := pod.Annotations[mapping.AnnotationIdentity]; ok {
		return true
	}
	if ns != nil {
		_, ok := ns.Annotations[mapping.AnnotationIdentity]
		return ok
	}
	return false
}

// problem is a reason to refuse the run, in the document it is about.
type problem struct {
	seq int // the document's position in the whole input
	msg string
}

// problem records a problem of d (nil: of no document) once: the objects
// are visited twice.
func (r *run) problem(d *document, msg string) {
	if r.reported[msg] {
		return
	}
	r.reported[msg] = true
	p := problem{msg: msg}
	if d != nil {
		p.seq = d.seq
	}
	r.problems = append(r.problems, p)
}

// err returns the problems in input order.
func (r *run) err() *Error {
	sort.SliceStable(r.problems, func(i, j int) bool { return r.problems[i].seq < r.problems[j].seq })
	e := &Error{}
	for _, p := range r.problems {
		e.Problems = append(e.Problems, p.msg)
	}
	return e
}

func (r *run) warnOnce(key, msg string) {
	if !r.warned[key] {
		r.warned[key] = true
		r.res.Warnings = append(r.res.Warnings, msg)
	}
}

// podOf returns the pod that a workload's template at pointer path stands for,
// as JSON: its metadata and spec, as the API server would send the pod.
func podOf(raw []byte, path string) ([]byte, error) {
	if path == "" {
		return raw, nil
	}
	var cur json.RawMessage = raw
	for _, key := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(cur, &m); err != nil || m == nil {
			return nil, fmt.Errorf("not an object")
		}
		next, ok := m[key]
		if !ok || bytes.Equal(next, []byte("null")) {
			return nil, errors.New("missing: a workload needs a pod template")
		}
		cur = next
	}
	var tmpl struct {
		Metadata json.RawMessage `json:"metadata,omitempty"`
		Spec     json.RawMessage `json:"spec,omitempty"`
	}
	if err := json.Unmarshal(cur, &tmpl); err != nil {
		return nil, fmt.Errorf("not a pod template: %v", err)
	}
	return json.Marshal(struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Metadata   json.RawMessage `json:"metadata,omitempty"`
		Spec       json.RawMessage `json:"spec,omitempty"`
	}{"v1", "Pod", tmpl.Metadata, tmpl.Spec})
}

// render returns the document as it is printed: as it came when nothing
// changed, else with the patch written into its text (see editYAML).
func (d *document) render() ([]byte, error) {
	if len(d.patch) == 0 {
		if len(d.raw) > 0 && d.raw[len(d.raw)-1] != '\n' {
			return append(append([]byte(nil), d.raw...), '\n'), nil
		}
		return d.raw, nil
	}
	out, _, err := editYAML(d.raw, d.json, d.patch)
	return out, err
}
