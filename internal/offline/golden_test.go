package offline

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/kvinject/kvinject/internal/injector"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenDir holds one directory per case:
//
//	input.yaml     the documents, given on stdin (-f -) (required)
//	flags.txt      flags added to baseFlags, one per line (optional)
//	output.yaml    what is printed on success (written by -update)
//	error.txt      what is printed on stderr when the run fails (written by -update)
//	warnings.txt   the warnings printed on stderr on success (written by -update)
const goldenDir = "testdata/golden"

var caseFiles = map[string]bool{"input.yaml": true, "flags.txt": true, "output.yaml": true, "error.txt": true, "warnings.txt": true}

// baseFlags are the flags every case starts from: those of the webhook's own
// golden cases (internal/injector).
var baseFlags = []string{
	"--agent-image=ghcr.io/kvinject/agent:v0.1.0",
	"--managed-identity-client-id=5e8c2a1f-3b4d-4c6e-9f0a-1b2c3d4e5f60",
}

func TestGolden(t *testing.T) {
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		dir := filepath.Join(goldenDir, e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			if !e.IsDir() {
				t.Fatalf("%s is not a case directory: remove it", dir)
			}
			files, _ := os.ReadDir(dir)
			for _, f := range files {
				if !caseFiles[f.Name()] {
					t.Errorf("%s: unknown file %s: remove it", dir, f.Name())
				}
			}
			runGoldenCase(t, dir)
		})
	}
}

func runGoldenCase(t *testing.T, dir string) {
	input := mustRead(t, filepath.Join(dir, "input.yaml"))
	flags := caseFlags(t, dir)
	code, stdout, stderr := runMain(t, append([]string{"-f", "-"}, flags...), input)

	got := map[string]string{}
	switch code {
	case 0:
		got["output.yaml"] = stdout
		if stderr != "" {
			got["warnings.txt"] = stderr
		}
		checkOutput(t, input, []byte(stdout), flags)
	case 1:
		if stdout != "" {
			t.Errorf("a failed run printed to stdout:\n%s", stdout)
		}
		got["error.txt"] = stderr
	default:
		t.Fatalf("exit code %d (bad usage?): %s", code, stderr)
	}

	for name := range caseFiles {
		if name == "input.yaml" || name == "flags.txt" {
			continue
		}
		path := filepath.Join(dir, name)
		if *update {
			if s, ok := got[name]; ok {
				if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if _, ok := got[name]; !ok {
			if err == nil {
				t.Errorf("%s exists but the run printed no %s (run go test ./internal/offline -run TestGolden -update to accept)", path, name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v (run with -update to create it)", path, err)
			continue
		}
		if d := cmp.Diff(string(want), got[name]); d != "" {
			t.Errorf("%s differs (-want +got; run go test ./internal/offline -run TestGolden -update to accept):\n%s", path, d)
		}
	}
}

// checkOutput checks what every successful run must satisfy: the output reads
// back; documents that do not change are printed byte for byte; every opted-in
// template is what the admission handler makes of the same pod (injected with
// the injection invariants, or left unchanged when the handler allows it
// unpatched), except in the namespaces the cluster never sends to the webhook,
// where it is left unchanged; a second run over the output changes nothing,
// and the handler agrees that its templates need nothing more.
func checkOutput(t *testing.T, input, output []byte, flags []string) {
	t.Helper()
	in, err := split(Input{Name: "input", Data: input})
	if err != nil {
		t.Fatal(err)
	}
	out, err := split(Input{Name: "output", Data: output})
	if err != nil {
		t.Fatalf("the output does not read back: %v", err)
	}
	if len(in) != len(out) {
		t.Fatalf("%d documents in, %d out", len(in), len(out))
	}
	c := newChecker(t, flags, in)
	for i := range in {
		if bytes.Equal(in[i].json, out[i].json) {
			if !bytes.Equal(bytes.TrimRight(in[i].raw, "\n"), bytes.TrimRight(out[i].raw, "\n")) {
				t.Errorf("document %d did not change but is not printed as it came:\n%s", i+1, out[i].raw)
			}
		}
		c.comparePods(t, "document "+strconv.Itoa(i+1), in[i].json, out[i].json)
	}

	code, again, stderr := runMain(t, append([]string{"-f", "-"}, flags...), output)
	if code != 0 || again != string(output) {
		t.Errorf("a second run over the output: exit %d, stderr %s, diff (-first +second):\n%s", code, stderr, cmp.Diff(string(output), again))
	}
	for i := range out {
		c.comparePods(t, "output document "+strconv.Itoa(i+1), out[i].json, out[i].json)
	}
}

// checker compares the offline injector's templates with the admission
// handler's answers, under the case's flags.
type checker struct {
	handler   *injector.Handler
	namespace string          // the effective namespace of objects that name none
	excluded  map[string]bool // the namespaces never sent to the webhook
	// removeCSI is --remove-csi-volumes: the handler is asked about the
	// template as inject decides it, without the migrated class's CSI volume.
	removeCSI bool
}

// newChecker returns a checker whose admission handler is configured by the
// case's webhook flags and reads the Namespaces and ServiceAccounts that the
// offline injector reads: those of the input, else those that its
// --namespace-annotation and --service-account-annotation flags describe.
func newChecker(t *testing.T, flags []string, docs []*document) *checker {
	t.Helper()
	var stderr bytes.Buffer
	cmd, code, ok := parse(append([]string{"-f", "-"}, flags...), &stderr)
	if !ok {
		t.Fatalf("the case's flags: exit code %d: %s", code, stderr.String())
	}
	r := newRun(cmd.opts)
	for _, d := range docs {
		r.visit(d, "", d.where, d.json, r.collect)
	}
	c := &checker{namespace: r.opts.Namespace, excluded: r.excluded, removeCSI: cmd.opts.RemoveCSIVolumes}
	// The objects the flags describe, for every template that needs one.
	for _, d := range docs {
		obj, ok := jsonObject(t, d.json)
		if !ok {
			continue
		}
		for _, tp := range templates(obj, c.namespace) {
			if _, found := r.nss[tp.namespace]; !found && cmd.opts.NamespaceAnnotations != nil {
				ns := &corev1.Namespace{}
				ns.Name, ns.Annotations = tp.namespace, cmd.opts.NamespaceAnnotations
				r.nss[ns.Name] = ns
			}
			saName := injector.ServiceAccountName(podOfTemplate(t, tp))
			if _, found := r.sas[tp.namespace+"/"+saName]; !found && cmd.opts.ServiceAccountAnnotations != nil {
				sa := &corev1.ServiceAccount{}
				sa.Namespace, sa.Name, sa.Annotations = tp.namespace, saName, cmd.opts.ServiceAccountAnnotations
				r.sas[sa.Namespace+"/"+sa.Name] = sa
			}
		}
	}
	var objs []client.Object
	for _, ns := range r.nss {
		objs = append(objs, ns)
	}
	for _, sa := range r.sas {
		objs = append(objs, sa)
	}
	// SecretProviderClasses as the API server would serve them to the handler.
	for _, d := range docs {
		obj, ok := jsonObject(t, d.json)
		if !ok || obj["kind"] != injector.SecretProviderClassGVK.Kind {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		// The CSI driver's CRD serves the same class in each of its versions.
		gv := u.GroupVersionKind().GroupVersion()
		if gv.Group != injector.SecretProviderClassGVK.Group || !slices.Contains(spcVersions, gv.Version) {
			continue
		}
		u.SetAPIVersion(injector.SecretProviderClassGVK.GroupVersion().String())
		if u.GetNamespace() == "" {
			u.SetNamespace(c.namespace)
		}
		objs = append(objs, u)
	}
	c.handler = cmd.iopts.NewHandler()
	c.handler.Reader = fake.NewClientBuilder().WithObjects(objs...).Build()
	c.handler.Log = logr.Discard()
	return c
}

// comparePods compares each pod template of a document as printed (out) with
// the admission handler's answer for the template as read (in).
func (c *checker) comparePods(t *testing.T, what string, in, out []byte) {
	t.Helper()
	inObj, ok := jsonObject(t, in)
	if !ok {
		return // no object: no template
	}
	outObj, _ := jsonObject(t, out)
	inPods, outPods := templates(inObj, c.namespace), templates(outObj, c.namespace)
	if len(inPods) != len(outPods) {
		t.Fatalf("%s: %d templates in, %d out", what, len(inPods), len(outPods))
	}
	for i, ip := range inPods {
		op := outPods[i]
		where := fmt.Sprintf("%s, %s", what, ip.what)
		if c.removeCSI {
			ip.pod = withoutCSIVolumes(t, where, ip.pod)
		}
		changed := !cmp.Equal(ip.pod, op.pod)
		pod := podOfTemplate(t, ip)
		switch {
		case !injector.OptedIn(pod):
			if changed {
				t.Errorf("%s: the template changed without opting in", where)
			}
			continue
		case c.excluded[ip.namespace]:
			// The API server never calls the webhook for these pods.
			if changed {
				t.Errorf("%s: injected, but namespace %s is never sent to the webhook", where, ip.namespace)
			}
			continue
		}
		if changed {
			checkInjected(t, where, op.pod)
		}
		raw, _ := json.Marshal(ip.pod)
		resp := c.handler.Handle(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Operation: admissionv1.Create, Namespace: ip.namespace, Object: runtime.RawExtension{Raw: asAdmitted(t, ip.pod)},
		}})
		switch {
		case !resp.Allowed:
			t.Errorf("%s: the offline injector allows the template, the handler refuses it: %v", where, resp.Result)
			continue
		case len(resp.Patches) == 0:
			if changed {
				t.Errorf("%s: the offline injector changed the template, the handler leaves it unchanged: %v", where, resp.Result)
			}
			continue
		case !changed:
			t.Errorf("%s: the offline injector leaves the template unchanged, the handler patches it with %d operations", where, len(resp.Patches))
			continue
		}
		patch, _ := json.Marshal(resp.Patches)
		p, err := jsonpatch.DecodePatch(patch)
		if err != nil {
			t.Fatal(err)
		}
		patched, err := p.Apply(raw)
		if err != nil {
			t.Fatal(err)
		}
		var want map[string]any
		_ = json.Unmarshal(patched, &want)
		if d := cmp.Diff(want, op.pod); d != "" {
			t.Errorf("%s: differs from the admission handler's pod (-handler +offline):\n%s", where, d)
		}
	}
}

// withoutCSIVolumes returns pod without the CSI volumes of the class it
// migrates, as --remove-csi-volumes removes them.
func withoutCSIVolumes(t *testing.T, where string, pod map[string]any) map[string]any {
	t.Helper()
	raw, _ := json.Marshal(pod)
	p := &corev1.Pod{}
	if err := json.Unmarshal(raw, p); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	class, ok := p.Annotations[mapping.AnnotationSecretProviderClass]
	if !ok {
		return pod
	}
	rm, err := removeCSIVolumes(p, class)
	if err != nil || len(rm.ops) == 0 {
		return pod
	}
	ops, _ := json.Marshal(rm.ops)
	patch, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	if raw, err = patch.Apply(raw); err != nil {
		t.Fatalf("%s: removing the CSI volumes: %v", where, err)
	}
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return out
}

// asAdmitted returns the pod of a template as the API server sends it to the
// webhook: the deprecated spec.serviceAccount copied into spec.serviceAccountName.
func asAdmitted(t *testing.T, pod map[string]any) []byte {
	t.Helper()
	raw, _ := json.Marshal(pod)
	var p map[string]any
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	if spec, ok := p["spec"].(map[string]any); ok {
		if name, _ := spec["serviceAccountName"].(string); name == "" && spec["serviceAccount"] != nil {
			spec["serviceAccountName"] = spec["serviceAccount"]
		}
	}
	raw, _ = json.Marshal(p)
	return raw
}

// jsonObject decodes a document's JSON; false when it is no object.
func jsonObject(t *testing.T, raw []byte) (map[string]any, bool) {
	t.Helper()
	if len(raw) == 0 {
		return nil, false
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	m, ok := v.(map[string]any)
	return m, ok
}

// podOfTemplate decodes a template's pod.
func podOfTemplate(t *testing.T, tp templatePod) *corev1.Pod {
	t.Helper()
	raw, _ := json.Marshal(tp.pod)
	pod := &corev1.Pod{}
	if err := json.Unmarshal(raw, pod); err != nil {
		t.Fatalf("%s: %v", tp.what, err)
	}
	return pod
}

// checkInjected checks the injection invariants of an injected pod.
func checkInjected(t *testing.T, where string, pod map[string]any) {
	t.Helper()
	var injected corev1.Pod
	b, _ := json.Marshal(pod)
	if err := json.Unmarshal(b, &injected); err != nil {
		t.Fatal(err)
	}
	if err := mutate.CheckInvariants(&injected); err != nil {
		t.Errorf("%s: injection invariants: %v", where, err)
	}
}

type templatePod struct {
	what, namespace string
	pod             map[string]any
}

// templates returns the pods of an object's templates (of each item of a
// List), with namespace for objects that name none.
func templates(obj map[string]any, namespace string) []templatePod {
	kind, _ := obj["kind"].(string)
	if items, ok := obj["items"].([]any); ok && strings.HasSuffix(kind, "List") {
		var out []templatePod
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				out = append(out, templates(m, namespace)...)
			}
		}
		return out
	}
	apiVersion, _ := obj["apiVersion"].(string)
	group, _, found := strings.Cut(apiVersion, "/")
	if !found {
		group = ""
	}
	path, ok := templatePaths[group+"/"+kind]
	if !ok {
		return nil
	}
	md, _ := obj["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	if ns == "" {
		ns = namespace
	}
	cur := obj
	for _, k := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		if k == "" {
			break
		}
		cur, _ = cur[k].(map[string]any)
	}
	name, _ := md["name"].(string)
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": cur["metadata"], "spec": cur["spec"]}
	return []templatePod{{what: kind + " " + name, namespace: ns, pod: pod}}
}

func caseFlags(t *testing.T, dir string) []string {
	flags := append([]string(nil), baseFlags...)
	if b, err := os.ReadFile(filepath.Join(dir, "flags.txt")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				flags = append(flags, l)
			}
		}
	}
	return flags
}

func runMain(t *testing.T, args []string, stdin []byte) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Main(args, bytes.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func mustRead(t *testing.T, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
