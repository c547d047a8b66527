package hubapi

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestReadRefusal(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
		want   Refusal
	}{
		{"refusal", 403, `{"reason":"UnknownVersion","message":"secret API-KEY: not a version of it"}`, Refusal{ReasonUnknownVersion, "secret API-KEY: not a version of it"}},
		{"not JSON", 502, "<html>bad gateway</html>", Refusal{"", "HTTP 502 Bad Gateway"}},
		{"reason without message", 503, `{"reason":"Unavailable"}`, Refusal{ReasonUnavailable, "HTTP 503 Service Unavailable"}},
		{"empty", 401, "", Refusal{"", "HTTP 401 Unauthorized"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tc.status, Body: io.NopCloser(strings.NewReader(tc.body))}
			if got := ReadRefusal(resp); *got != tc.want {
				t.Fatalf("ReadRefusal = %+v, want %+v", *got, tc.want)
			}
		})
	}
	r := &Refusal{Reason: ReasonNotPodObject, Message: "m"}
	if got := r.Error(); got != "the hub refused the watch (NotPodObject): m" {
		t.Fatalf("Error() = %q", got)
	}
	if got := (Object{Kind: KindSecret, Name: "API-KEY", Version: "0a"}).String(); got != "secret/API-KEY@0a" {
		t.Fatalf("String() = %q", got)
	}
}
