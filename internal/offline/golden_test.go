package offline

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/kvinject/kvinject/internal/injector"
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
// back; documents that do not change are printed byte for byte; injected
// templates meet the injection invariants and are what the admission handler
// makes of the same pod; a second run over the output changes nothing.
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
	handler := newHandler(t, flags, in)
	for i := range in {
		if bytes.Equal(in[i].json, out[i].json) {
			if !bytes.Equal(bytes.TrimRight(in[i].raw, "\n"), bytes.TrimRight(out[i].raw, "\n")) {
				t.Errorf("document %d did not change but is not printed as it came:\n%s", i+1, out[i].raw)
			}
			continue
		}
		comparePods(t, i+1, in[i].json, out[i].json, handler)
	}

	code, again, stderr := runMain(t, append([]string{"-f", "-"}, flags...), output)
	if code != 0 || again != string(output) {
		t.Errorf("a second run over the output: exit %d, stderr %s, diff (-first +second):\n%s", code, stderr, cmp.Diff(string(output), again))
	}
}

// comparePods compares each pod template of a changed document with the
// admission handler's answer for the input's template.
func comparePods(t *testing.T, n int, in, out []byte, h *injector.Handler) {
	t.Helper()
	var inObj, outObj map[string]any
	if err := json.Unmarshal(in, &inObj); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out, &outObj); err != nil {
		t.Fatal(err)
	}
	inPods, outPods := templates(inObj, ""), templates(outObj, "")
	if len(inPods) != len(outPods) {
		t.Fatalf("document %d: %d templates in, %d out", n, len(inPods), len(outPods))
	}
	for i, ip := range inPods {
		op := outPods[i]
		if cmp.Equal(ip.pod, op.pod) {
			continue
		}
		raw, _ := json.Marshal(ip.pod)
		var pod corev1.Pod
		if err := json.Unmarshal(raw, &pod); err != nil {
			t.Fatal(err)
		}
		if pod.Labels["kvinject.dev/inject"] != "true" {
			t.Errorf("document %d: template of %s changed without opting in", n, ip.what)
			continue
		}
		checkInjected(t, n, ip.what, op.pod)
		if h == nil {
			continue
		}
		resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Operation: admissionv1.Create, Namespace: ip.namespace, Object: runtime.RawExtension{Raw: raw},
		}})
		if !resp.Allowed || len(resp.Patches) == 0 {
			t.Errorf("document %d, %s: the handler answers allowed=%v with %d operations: %v", n, ip.what, resp.Allowed, len(resp.Patches), resp.Result)
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
			t.Errorf("document %d, %s: differs from the admission handler's pod (-handler +offline):\n%s", n, ip.what, d)
		}
	}
}

// checkInjected checks the injection invariants of an injected pod.
func checkInjected(t *testing.T, n int, what string, pod map[string]any) {
	t.Helper()
	var injected corev1.Pod
	b, _ := json.Marshal(pod)
	if err := json.Unmarshal(b, &injected); err != nil {
		t.Fatal(err)
	}
	if err := mutate.CheckInvariants(&injected); err != nil {
		t.Errorf("document %d, %s: injection invariants: %v", n, what, err)
	}
}

type templatePod struct {
	what, namespace string
	pod             map[string]any
}

// templates returns the pods of an object's templates (of each item of a List).
func templates(obj map[string]any, namespace string) []templatePod {
	if items, ok := obj["items"].([]any); ok {
		var out []templatePod
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				out = append(out, templates(m, namespace)...)
			}
		}
		return out
	}
	kind, _ := obj["kind"].(string)
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

// newHandler returns the admission handler configured by the case's webhook
// flags, reading the Namespaces and ServiceAccounts of the input (or nil when
// the case gives them by flag instead, which only the offline injector reads).
func newHandler(t *testing.T, flags []string, docs []*document) *injector.Handler {
	t.Helper()
	var opts injector.Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	opts.BindFlags(fs)
	var webhookFlags []string
	for _, f := range flags {
		switch {
		case strings.HasPrefix(f, "-n="), strings.HasPrefix(f, "--namespace="):
		case strings.Contains(f, "-annotation="):
			return nil
		default:
			webhookFlags = append(webhookFlags, f)
		}
	}
	if err := fs.Parse(webhookFlags); err != nil {
		t.Fatal(err)
	}
	if err := opts.Complete(); err != nil {
		t.Fatal(err)
	}
	r := newRun(Options{Namespace: "default"})
	for _, d := range docs {
		r.visit(d, "", d.where, d.json, r.collect)
	}
	var objs []client.Object
	for _, ns := range r.nss {
		objs = append(objs, ns)
	}
	for _, sa := range r.sas {
		objs = append(objs, sa)
	}
	h := opts.NewHandler()
	h.Reader = fake.NewClientBuilder().WithObjects(objs...).Build()
	h.Log = logr.Discard()
	return h
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
