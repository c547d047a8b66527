package injector

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// TestMalformedReviews: whatever arrives, the server answers with an AdmissionReview
// that refuses the request and says why; it never panics or hangs.
func TestMalformedReviews(t *testing.T) {
	srv := newTestServer(t, baseFlags, nil)
	valid, err := json.Marshal(map[string]any{
		"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"request": map[string]any{
			"uid": "u1", "kind": map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"resource":  map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"operation": "CREATE", "namespace": "apps",
			"object": map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"labels": map[string]string{"kvinject.dev/inject": "true"}}, "spec": map[string]any{"containers": "not-a-list"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, body, contentType, want string
	}{
		{"empty body", "", "application/json", "the AdmissionReview has no request"},
		{"wrong content type", `{}`, "text/plain", "contentType=text/plain, expected application/json"},
		{"truncated JSON", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1",`, "application/json", "json parse error: unexpected end of JSON input"},
		{"not JSON", "\xff\xfe\x00garbage", "application/json", "couldn't get version/kind; json parse error"},
		{"no request", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, "application/json", "the AdmissionReview has no request"},
		{"pod that does not decode", string(valid), "application/json", "decoding the pod"},
		{"no object", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u2","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE"}}`, "application/json", "the AdmissionReview request has no object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader([]byte(tt.body)))
			req.Header.Set("Content-Type", tt.contentType)
			srv.ServeHTTP(rec, req)
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
				t.Fatalf("HTTP %d, body %q is not an AdmissionReview answer: %v", rec.Code, rec.Body, err)
			}
			r := out.Response
			if r.Allowed || r.Result == nil || r.Result.Code != http.StatusBadRequest || !strings.Contains(r.Result.Message, tt.want) {
				t.Errorf("answer allowed=%v result=%+v, want a 400 refusal mentioning %q", r.Allowed, r.Result, tt.want)
			}
		})
	}
}

// TestMalformedPods: odd but well-formed AdmissionReviews get exact, bounded answers.
func TestMalformedPods(t *testing.T) {
	srv := newTestServer(t, baseFlags, loadObjects(t, "testdata/cluster.yaml"))
	review := func(apiVersion, pod string) []byte {
		return []byte(`{"apiVersion":"` + apiVersion + `","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},` +
			`"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","namespace":"apps","object":` + pod + `}}`)
	}
	pod := func(annotations string) string {
		return `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"kvinject.dev/inject":"true"},"annotations":{` + annotations +
			`}},"spec":{"serviceAccountName":"orders","containers":[{"name":"app","image":"app:1"}]}}`
	}
	huge := strings.Repeat("a=B_C,", 40000) // a 240 KB annotation of bad entries
	tests := []struct {
		name, body string
		allowed    bool
		want       string
	}{
		// controller-runtime decodes the envelope by its fields; the API server only
		// sends the versions the configuration lists (admissionReviewVersions: v1).
		{"unknown AdmissionReview version is read as v1", string(review("admission.k8s.io/v2", pod(`"kvinject.dev/vault":"myvault","kvinject.dev/secrets":"a=A"`))), true, ""},
		{"v1beta1 AdmissionReview", string(review("admission.k8s.io/v1beta1", pod(`"kvinject.dev/vault":"myvault","kvinject.dev/secrets":"a=A"`))), true, ""},
		{"huge annotation", string(review("admission.k8s.io/v1", pod(`"kvinject.dev/vault":"myvault","kvinject.dev/secrets":"`+huge+`"`))), false,
			`must be 1-127 letters, digits or hyphens; write <file>=<secret-name>[@<version>]; and 248 more problems`},
		{"non-UTF-8 value", string(review("admission.k8s.io/v1", pod(`"kvinject.dev/vault":"my`+"\xff"+`vault","kvinject.dev/secrets":"a=A"`))), false,
			"kvinject.dev/vault: \"my\ufffdvault\" is not a valid vault name"},
		{"duplicate keys: the last wins", string(review("admission.k8s.io/v1", pod(`"kvinject.dev/vault":"evil_vault","kvinject.dev/vault":"myvault","kvinject.dev/secrets":"a=A"`))), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, Path, strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			srv.ServeHTTP(rec, req)
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
				t.Fatalf("HTTP %d: %q is not an AdmissionReview answer: %v", rec.Code, rec.Body, err)
			}
			r := out.Response
			if r.Allowed != tt.allowed {
				t.Fatalf("allowed = %v (%v), want %v", r.Allowed, r.Result, tt.allowed)
			}
			if tt.want != "" && (r.Result == nil || !strings.Contains(r.Result.Message, tt.want)) {
				t.Errorf("message %q does not contain %q", r.Result.Message, tt.want)
			}
			if r.Result != nil && len(r.Result.Message) > 4096 {
				t.Errorf("the answer's message is %d bytes; it must stay short whatever the input", len(r.Result.Message))
			}
		})
	}
}
