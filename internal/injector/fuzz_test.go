package injector

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	sigsjson "sigs.k8s.io/json"

	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// fuzzServer is the golden tests' server (the handler behind controller-runtime's
// admission webhook, a fake client holding testdata/cluster.yaml), built without a
// *testing.T. It does not recover panics, so the fuzzer sees them with their stack,
// and it keeps the request the handler was given, as decoded by the webhook.
type fuzzServer struct {
	wh   *admission.Webhook
	last *admission.Request
}

func newFuzzServer(tb testing.TB, flags []string) *fuzzServer {
	tb.Helper()
	var opts Options
	fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	opts.BindFlags(fs)
	if err := fs.Parse(flags); err != nil {
		tb.Fatalf("flags %q: %v", flags, err)
	}
	if err := opts.Complete(); err != nil {
		tb.Fatalf("flags %q: %v", flags, err)
	}
	h := opts.NewHandler()
	h.Reader = fake.NewClientBuilder().WithObjects(loadObjects(tb, filepath.Join("testdata", "cluster.yaml"))...).Build()
	h.Log = logr.Discard()
	s := &fuzzServer{}
	recoverPanic := false
	s.wh = &admission.Webhook{
		Handler: admission.HandlerFunc(func(ctx context.Context, req admission.Request) admission.Response {
			s.last = &req
			return h.Handle(ctx, req)
		}),
		RecoverPanic:   &recoverPanic,
		LogConstructor: func(logr.Logger, *admission.Request) logr.Logger { return logr.Discard() },
	}
	return s
}

// fuzzGoldenRequests returns every golden request.json by case name.
func fuzzGoldenRequests(tb testing.TB) map[string][]byte {
	tb.Helper()
	dirs, err := os.ReadDir(goldenDir)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string][]byte{}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(goldenDir, d.Name(), "request.json"))
		if err != nil {
			tb.Fatal(err)
		}
		out[d.Name()] = b
	}
	return out
}

// review serves body and checks what holds for any body: no panic, an HTTP 200
// AdmissionReview answer for the request's uid, a reason for every refusal, and
// only "add" operations in a patch. It returns the answer and the request the
// handler saw (nil if the webhook could not decode one).
func (s *fuzzServer) review(t *testing.T, body []byte) (*admissionv1.AdmissionResponse, *admission.Request) {
	t.Helper()
	s.last = nil
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	s.wh.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
		t.Fatalf("answer is not an AdmissionReview response: %v: %s", err, rec.Body)
	}
	resp, seen := out.Response, s.last
	if seen != nil && resp.UID != seen.UID {
		t.Errorf("answer uid %q, want the request's %q", resp.UID, seen.UID)
	}
	if !resp.Allowed && (resp.Result == nil || resp.Result.Message == "") {
		t.Errorf("refusal without a reason: %+v", resp.Result)
	}
	if resp.Result != nil && resp.Result.Code == http.StatusInternalServerError && strings.Contains(resp.Result.Message, "unable to encode") {
		t.Errorf("the webhook could not encode the answer: %s", resp.Result.Message)
	}
	if len(resp.Patch) > 0 {
		if !resp.Allowed {
			t.Errorf("a refusal carries a patch: %s", resp.Patch)
		}
		if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Errorf("patch type %v, want JSONPatch", resp.PatchType)
		}
		var ops []map[string]any
		if err := json.Unmarshal(resp.Patch, &ops); err != nil {
			t.Fatalf("patch is not JSON: %v: %s", err, resp.Patch)
		}
		for _, op := range ops {
			if op["op"] != "add" {
				t.Errorf("patch has a %q operation at %v: kvinject must only add", op["op"], op["path"])
			}
		}
		if _, err := jsonpatch.DecodePatch(resp.Patch); err != nil {
			t.Fatalf("decoding the patch: %v: %s", err, resp.Patch)
		}
	}
	return resp, seen
}

// checkInjection checks a patch against the pod it was computed for: it applies,
// the injected pod keeps kvinject's invariants, and serving the injected pod again
// (as on reinvocation) admits it unchanged.
func (s *fuzzServer) checkInjection(t *testing.T, seen *admission.Request, patch []byte) {
	t.Helper()
	raw := seen.Object.Raw
	if !apiServerShaped(raw) {
		// The API server never sends such a pod (see apiServerShaped); the handler
		// still answered without panicking, which is all that can be asked.
		return
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decoding the patch: %v", err)
	}
	patched, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("applying the patch: %v\npod: %s\npatch: %s", err, raw, patch)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(patched, &pod); err != nil {
		t.Fatalf("patched pod does not decode: %v\n%s", err, patched)
	}
	if err := mutate.CheckInvariants(&pod); err != nil {
		t.Errorf("injection invariants: %v\npod: %s\npatch: %s", err, raw, patch)
	}

	again := seen.AdmissionRequest
	again.Object.Raw = patched
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: admissionv1.SchemeGroupVersion.String(), Kind: "AdmissionReview"},
		Request:  &again,
	})
	if err != nil {
		t.Fatalf("encoding the second review: %v", err)
	}
	resp, _ := s.review(t, body)
	if !resp.Allowed || len(resp.Patch) > 0 {
		msg := ""
		if resp.Result != nil {
			msg = resp.Result.Message
		}
		t.Errorf("second pass over the injected pod: allowed=%v %q patch=%s, want allowed with no patch\npod: %s", resp.Allowed, msg, resp.Patch, patched)
	}
}

// apiServerShaped reports whether raw is a pod as the API server sends it: its own
// re-encoding of a typed object, so a JSON object with "metadata" and "spec"
// objects, keys spelled exactly as the API's field names and never repeated, and
// no null array elements. The handler decodes pods with encoding/json, which also
// accepts "Spec" for "spec" and takes the last of repeated keys, while a JSON
// patch addresses keys exactly; the two only agree on such pods.
func apiServerShaped(raw []byte) bool {
	var top map[string]json.RawMessage
	if json.Unmarshal(raw, &top) != nil {
		return false
	}
	for _, k := range []string{"metadata", "spec"} {
		if v := bytes.TrimSpace(top[k]); len(v) == 0 || v[0] != '{' {
			return false
		}
	}
	if !noDuplicateKeysOrNullElements(raw) {
		return false
	}
	var loose, exact corev1.Pod
	if json.Unmarshal(raw, &loose) != nil || sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &exact) != nil {
		return false
	}
	return reflect.DeepEqual(loose, exact)
}

// noDuplicateKeysOrNullElements walks raw's tokens.
func noDuplicateKeysOrNullElements(raw []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	type frame struct {
		array bool
		keys  map[string]bool
		key   bool // in an object, the next token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && !top.array && top.key {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				continue
			}
			k, _ := tok.(string)
			if top.keys[k] {
				return false
			}
			top.keys[k] = true
			top.key = false
			continue
		}
		if top != nil && top.array && tok == nil {
			return false
		}
		if top != nil && !top.array {
			top.key = true // this token is the value; the next is a key
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				stack = append(stack, &frame{keys: map[string]bool{}, key: true})
			case '[':
				stack = append(stack, &frame{array: true})
			case ']':
				stack = stack[:len(stack)-1]
			}
		}
	}
}

// fuzzVariants are truncated and mutated copies of a golden request.
func fuzzVariants(body []byte) [][]byte {
	replace := func(old, new string) []byte {
		return bytes.Replace(body, []byte(old), []byte(new), 1)
	}
	return [][]byte{
		body,
		body[:len(body)/2],
		body[:len(body)-2],
		replace(`"CREATE"`, `"UPDATE"`),
		replace(`"kvinject.dev/inject": "true"`, `"kvinject.dev/inject": "True"`),
		replace(`"kind": "Pod"`, `"kind": "Service"`),
		replace(`"spec": {`, `"Spec": {`),
		replace(`"containers": [`, `"containers": [null, `),
		replace(`"annotations": {`, `"annotations": {"kvinject.dev/containers": "kvinject-agent", `),
		replace(`"object": {`, `"object": null, "x": {`),
	}
}

// FuzzAdmissionReview serves arbitrary AdmissionReview bodies, starting from the
// golden requests, through the golden tests' server with baseFlags.
func FuzzAdmissionReview(f *testing.F) {
	// Every golden request, and truncated and mutated copies of a few: the
	// variants mostly stop early, so more of them only slow the fuzzer down.
	for name, body := range fuzzGoldenRequests(f) {
		switch name {
		case "minimal-workload-identity", "containers-selection", "init-container-reads-secrets", "no-annotations-map":
			for _, v := range fuzzVariants(body) {
				f.Add(v)
			}
		default:
			f.Add(body)
		}
	}
	f.Add([]byte(``))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","namespace":"apps","object":{"metadata":{"labels":{"kvinject.dev/inject":"true"},"annotations":{"kvinject.dev/vault":"v1v","kvinject.dev/secrets":"a=A","kvinject.dev/identity":"system"}},"spec":{}}}}`))
	srv := newFuzzServer(f, baseFlags)
	f.Fuzz(func(t *testing.T, body []byte) {
		resp, seen := srv.review(t, body)
		if len(resp.Patch) > 0 && seen != nil {
			srv.checkInjection(t, seen, resp.Patch)
		}
	})
}

// fuzzAnnotationKeys are the annotations FuzzPodAnnotations sets, in the order of
// its arguments; bit i of its set argument says whether the i-th is present.
var fuzzAnnotationKeys = []string{
	mapping.AnnotationSecrets, mapping.AnnotationVault, mapping.AnnotationMountPath,
	mapping.AnnotationContainers, mapping.AnnotationFileMode, mapping.AnnotationRotation,
	mapping.AnnotationIdentity, mapping.AnnotationTenantID, mapping.AnnotationCloud,
	mapping.AnnotationOnChange,
}

// fuzzPods are the golden pods FuzzPodAnnotations starts from; the first is the minimal one.
var fuzzPods = []string{"minimal-workload-identity", "init-container-reads-secrets", "mixed-run-as-user", "fsgroup-group-shared-mode"}

// FuzzPodAnnotations takes a golden pod (by default the minimal one) and fuzzes the
// values of its kvinject.dev/ annotations, with native sidecars on or off, and
// with or without the version hub.
func FuzzPodAnnotations(f *testing.F) {
	golden := fuzzGoldenRequests(f)
	reviews := make([]map[string]any, len(fuzzPods))
	for i, name := range fuzzPods {
		if err := json.Unmarshal(golden[name], &reviews[i]); err != nil {
			f.Fatalf("%s: %v", name, err)
		}
	}
	hubFlags := []string{"--hub-url=https://kvinject-hub.kvinject-system.svc", "--hub-ca-file=testdata/hub-ca.pem"}
	flags := func(more ...string) []string { return append(append([]string(nil), baseFlags...), more...) }
	type setup struct{ native, hub bool }
	servers := map[setup]*fuzzServer{
		{true, false}:  newFuzzServer(f, baseFlags),
		{false, false}: newFuzzServer(f, flags("--native-sidecars=false")),
		{true, true}:   newFuzzServer(f, flags(hubFlags...)),
		{false, true}:  newFuzzServer(f, flags(append([]string{"--native-sidecars=false"}, hubFlags...)...)),
	}

	const all = 1<<10 - 1
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	type seed struct {
		pod                                                                                          uint8
		native, hub                                                                                  bool
		set                                                                                          uint16
		secrets, vault, mountPath, containers, fileMode, rotation, identity, tenant, cloud, onChange string
	}
	minimal := seed{0, true, false, 0b11, "connectionstring.txt=DATABASE-CONNECTION-STRING, apikey.txt=API-KEY", "myvault", "", "", "", "", "", "", "", ""}
	seeds := []seed{minimal}
	for _, s := range []seed{
		{pod: 0, native: true, set: all, secrets: "db/password=DB-PASSWORD@" + v, vault: "https://MyVault.vault.azure.net:443/", mountPath: "/mnt/kv", containers: "app", fileMode: "0400", rotation: "90s", identity: "workload", tenant: "contoso.onmicrosoft.com", cloud: "azurepubliccloud"},
		{pod: 0, native: false, set: all, secrets: "a=A\nb=B", vault: "govvault", mountPath: "/app/secrets", containers: "", fileMode: "0o440", rotation: "off", identity: "managed:0D9F8E7C-6B5A-4C3D-8E2F-1A0B9C8D7E6F", tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47", cloud: "AzureUSGovernmentCloud"},
		{pod: 0, native: false, set: all, secrets: "a=A", vault: "https://v1.vault.azure.cn/", mountPath: "/s", fileMode: "0644", rotation: "24h", identity: "system", cloud: "AzureChinaCloud"},
		{pod: 0, native: true, set: all, secrets: "a=A", vault: "myvault", identity: "managed", rotation: "29s"},
		{pod: 0, native: true, set: 0b1000011, secrets: "a=A,a/b=B", vault: "myvault", identity: "workload:x"},
		{pod: 0, native: true, set: 0b111, secrets: "../x=A", vault: "http://myvault.vault.azure.net/", mountPath: "/var/run/secrets/kubernetes.io/serviceaccount"},
		{pod: 0, native: true, set: 0b1001, secrets: "a=A", containers: "kvinject-agent"},
		{pod: 0, native: true, set: 0b110011, secrets: "a=A", vault: "myvault", fileMode: "0755", rotation: "fast"},
		{pod: 1, native: true, set: 0b1011, secrets: "a=A", vault: "myvault", containers: "migrate,app"},
		{pod: 1, native: false, set: 0b101011, secrets: "a=A", vault: "myvault", containers: "wait-for-db", rotation: "5m"},
		{pod: 1, native: true, set: 0b1011, secrets: "a=A", vault: "myvault", containers: "nope, app"},
		{pod: 2, native: true, set: 0b10011, secrets: "a=A", vault: "myvault", fileMode: "0600"},
		{pod: 3, native: false, set: 0b10011, secrets: "a=A", vault: "myvault", fileMode: "0440"},
		{pod: 0, native: true, set: 0, secrets: "", vault: ""},
		{pod: 0, native: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "http:8080/-/reload"},
		{pod: 0, native: false, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "HTTP:9090/api/reload?source=kvinject;method=put;timeout=3s;retries=3"},
		{pod: 0, native: true, hub: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "restart"},
		{pod: 0, native: false, hub: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "restart"},
		{pod: 0, native: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "restart"},
		{pod: 0, native: true, hub: true, set: 0b1000100011, secrets: "a=A", vault: "myvault", rotation: "off", onChange: "restart"},
		{pod: 1, native: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "http:0/x;method=DELETE"},
		{pod: 2, native: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "http:8080/a b#c;;"},
		{pod: 3, native: false, hub: true, set: 0b1000000011, secrets: "a=A", vault: "myvault", onChange: "signal:HUP"},
	} {
		seeds = append(seeds, s)
	}
	for _, s := range seeds {
		f.Add(s.pod, s.native, s.hub, s.set, s.secrets, s.vault, s.mountPath, s.containers, s.fileMode, s.rotation, s.identity, s.tenant, s.cloud, s.onChange)
	}
	f.Fuzz(func(t *testing.T, pod uint8, native, hub bool, set uint16, secrets, vault, mountPath, containers, fileMode, rotation, identity, tenant, cloud, onChange string) {
		review := deepCopyJSON(reviews[int(pod)%len(reviews)])
		meta := review["request"].(map[string]any)["object"].(map[string]any)["metadata"].(map[string]any)
		ann, _ := meta["annotations"].(map[string]any)
		if ann == nil {
			ann = map[string]any{}
			meta["annotations"] = ann
		}
		for i, val := range []string{secrets, vault, mountPath, containers, fileMode, rotation, identity, tenant, cloud, onChange} {
			delete(ann, fuzzAnnotationKeys[i])
			if set&(1<<i) != 0 {
				ann[fuzzAnnotationKeys[i]] = val
			}
		}
		body, err := json.Marshal(review)
		if err != nil {
			t.Fatal(err)
		}
		srv := servers[setup{native, hub}]
		resp, seen := srv.review(t, body)
		if seen == nil {
			t.Fatalf("the webhook did not decode the review: %+v", resp.Result)
		}
		if resp.Result != nil && resp.Result.Code >= 500 {
			t.Errorf("server error: %s", resp.Result.Message)
		}
		if len(resp.Patch) > 0 {
			srv.checkInjection(t, seen, resp.Patch)
		}
	})
}

// deepCopyJSON copies a decoded JSON object.
func deepCopyJSON(m map[string]any) map[string]any {
	var copyValue func(v any) any
	copyValue = func(v any) any {
		switch v := v.(type) {
		case map[string]any:
			out := make(map[string]any, len(v))
			for k, e := range v {
				out[k] = copyValue(e)
			}
			return out
		case []any:
			out := make([]any, len(v))
			for i, e := range v {
				out[i] = copyValue(e)
			}
			return out
		}
		return v
	}
	return copyValue(m).(map[string]any)
}
