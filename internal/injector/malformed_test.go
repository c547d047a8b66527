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
