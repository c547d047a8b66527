package hubapi

import (
	"encoding/json"
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

func TestIsKind(t *testing.T) {
	for _, tc := range []struct {
		kind string
		want bool
	}{{KindSecret, true}, {KindCertificate, true}, {KindKey, true}, {"cert", false}, {"Secret", false}, {"", false}} {
		if got := IsKind(tc.kind); got != tc.want {
			t.Errorf("IsKind(%q) = %v, want %v", tc.kind, got, tc.want)
		}
	}
}

// TestWatchResponseJSON: the wire names of an answer with objects to poll,
// and an answer without them has no "poll" (what older agents read).
func TestWatchResponseJSON(t *testing.T) {
	for _, tc := range []struct {
		name string
		resp WatchResponse
		want string
	}{
		{"changed only", WatchResponse{Changed: []Object{{KindKey, "K", "0b"}}}, `{"changed":[{"kind":"key","name":"K","version":"0b"}]}`},
		{"poll", WatchResponse{Poll: []Polled{{Kind: KindCertificate, Name: "C", Reason: PollKindNotWatched, Message: "m", RetryAfterSeconds: 3600}}},
			`{"poll":[{"kind":"certificate","name":"C","reason":"KindNotWatched","message":"m","retryAfterSeconds":3600}]}`},
		{"empty", WatchResponse{}, `{}`},
	} {
		b, err := json.Marshal(tc.resp)
		if err != nil || string(b) != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.name, b, err, tc.want)
		}
	}
}
