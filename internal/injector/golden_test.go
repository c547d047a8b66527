package injector

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/kvinject/kvinject/internal/injector/injectortest"
	"github.com/kvinject/kvinject/pkg/mutate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenDir holds one directory per case:
//
//	request.json  the AdmissionReview the API server sends (required)
//	flags.txt     webhook flags added to baseFlags, one per line (optional)
//	cluster.yaml  Namespaces and ServiceAccounts replacing testdata/cluster.yaml (optional)
//	golden.json   the expected answer and the pod after applying the patch (written by -update)
const goldenDir = "testdata/golden"

var caseFiles = map[string]bool{"request.json": true, "flags.txt": true, "cluster.yaml": true, "golden.json": true}

// baseFlags are the webhook flags every case starts from.
var baseFlags = []string{
	"--agent-image=ghcr.io/kvinject/agent:v0.1.0",
	"--managed-identity-client-id=5e8c2a1f-3b4d-4c6e-9f0a-1b2c3d4e5f60",
}

// golden is what a case pins: the admission answer and the resulting pod.
type golden struct {
	Allowed  bool            `json:"allowed"`
	Code     int32           `json:"code,omitempty"`
	Message  string          `json:"message,omitempty"`
	Warnings []string        `json:"warnings,omitempty"`
	Patched  bool            `json:"patched"`
	Pod      json.RawMessage `json:"pod,omitempty"`
}

func TestGolden(t *testing.T) {
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) < 40 {
		t.Fatalf("only %d golden cases in %s", len(entries), goldenDir)
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
					t.Errorf("%s: unknown file %s (a stale golden file?): remove it", dir, f.Name())
				}
			}
			runGoldenCase(t, dir)
		})
	}
}

// caseSetup returns a golden case's webhook flags (baseFlags, then its
// flags.txt) and the file of its cluster objects (its cluster.yaml, else the
// shared testdata/cluster.yaml).
func caseSetup(dir string) (flags []string, clusterFile string) {
	flags = append([]string(nil), baseFlags...)
	if b, err := os.ReadFile(filepath.Join(dir, "flags.txt")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				flags = append(flags, l)
			}
		}
	}
	clusterFile = filepath.Join(goldenDir, "..", "cluster.yaml")
	if _, err := os.Stat(filepath.Join(dir, "cluster.yaml")); err == nil {
		clusterFile = filepath.Join(dir, "cluster.yaml")
	}
	return flags, clusterFile
}

func runGoldenCase(t *testing.T, dir string) {
	reqBody := mustRead(t, filepath.Join(dir, "request.json"))
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(reqBody, &review); err != nil || review.Request == nil {
		t.Fatalf("request.json is not an AdmissionReview with a request: %v", err)
	}
	flags, clusterFile := caseSetup(dir)
	srv := newTestServer(t, flags, loadObjects(t, clusterFile))

	resp := srv.review(t, reqBody)
	if resp.UID != review.Request.UID {
		t.Errorf("response uid %q, want the request's %q", resp.UID, review.Request.UID)
	}
	got := golden{Allowed: resp.Allowed, Warnings: resp.Warnings}
	if resp.Result != nil {
		got.Code, got.Message = resp.Result.Code, resp.Result.Message
		if resp.Allowed {
			got.Code, got.Message = 0, "" // controller-runtime's 200 and reason for allowed requests
		}
	}
	var patchedPod []byte
	if len(resp.Patch) > 0 {
		got.Patched = true
		patchedPod = applyPatch(t, review.Request.Object.Raw, resp.Patch)
		got.Pod = indent(t, patchedPod)
		checkInvariants(t, patchedPod)

		// Idempotency: the injected pod, sent again (as on reinvocation), is unchanged.
		review.Request.Object.Raw = patchedPod
		again := srv.review(t, mustJSON(t, review))
		if !again.Allowed || len(again.Patch) > 0 {
			t.Errorf("second pass over the injected pod: allowed=%v patch=%s, want allowed with no patch", again.Allowed, again.Patch)
		}
	}

	goldenPath := filepath.Join(dir, "golden.json")
	gotJSON := append(mustIndentJSON(t, got), '\n')
	if *update {
		if err := os.WriteFile(goldenPath, gotJSON, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want := mustRead(t, goldenPath)
	var gotV, wantV any
	_ = json.Unmarshal(gotJSON, &gotV)
	if err := json.Unmarshal(want, &wantV); err != nil {
		t.Fatalf("golden.json: %v", err)
	}
	if d := cmp.Diff(wantV, gotV); d != "" {
		t.Errorf("answer differs from %s (-want +got; run go test ./internal/injector -run TestGolden -update to accept):\n%s", goldenPath, d)
	}
}

// testServer is the handler behind controller-runtime's admission webhook, as served.
type testServer struct{ http.Handler }

func newTestServer(t *testing.T, flags []string, objs []client.Object) *testServer {
	t.Helper()
	var opts Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	opts.BindFlags(fs)
	if err := fs.Parse(flags); err != nil {
		t.Fatalf("flags %q: %v", flags, err)
	}
	if err := opts.Complete(); err != nil {
		t.Fatalf("flags %q: %v", flags, err)
	}
	h := opts.NewHandler()
	h.Reader = fake.NewClientBuilder().WithObjects(objs...).Build()
	h.Log = logr.Discard()
	return &testServer{&admissionWebhook{h}}
}

// admissionWebhook serves h the way cmd/webhook does.
type admissionWebhook struct{ h *Handler }

func (a *admissionWebhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	recoverPanic := true
	wh := &admission.Webhook{Handler: a.h, RecoverPanic: &recoverPanic}
	wh.ServeHTTP(w, r)
}

// review posts an AdmissionReview body and returns the response part.
func (s *testServer) review(t *testing.T, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
		t.Fatalf("answer is not an AdmissionReview response: %v: %s", err, rec.Body)
	}
	return out.Response
}

// applyPatch applies a JSON patch to a raw pod after checking that it only adds.
func applyPatch(t *testing.T, raw, patch []byte) []byte {
	t.Helper()
	var ops []map[string]any
	if err := json.Unmarshal(patch, &ops); err != nil {
		t.Fatalf("patch is not JSON: %v", err)
	}
	for _, op := range ops {
		if op["op"] != "add" {
			t.Errorf("patch has a %q operation at %v: kvinject must only add", op["op"], op["path"])
		}
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decoding the patch: %v", err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("applying the patch: %v\n%s", err, patch)
	}
	return out
}

// loadObjects reads the cluster objects of a golden case (see
// injectortest.LoadObjects); a file it cannot read whole fails the test.
func loadObjects(t testing.TB, file string) []client.Object {
	t.Helper()
	objs, err := injectortest.LoadObjects(file, SecretProviderClassGVK)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func mustRead(t testing.TB, f string) []byte {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustIndentJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func indent(t *testing.T, raw []byte) json.RawMessage {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "  ", "  "); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checkInvariants(t *testing.T, raw []byte) {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatalf("patched pod does not decode: %v", err)
	}
	if err := mutate.CheckInvariants(&pod); err != nil {
		t.Errorf("injection invariants: %v", err)
	}
}
