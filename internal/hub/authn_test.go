package hub

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// jwt returns an unsigned JWT with the given payload.
func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","kid":"k"}`)) + "." + enc([]byte(payload)) + "." + enc([]byte("signature"))
}

func TestTokenExpiry(t *testing.T) {
	tests := []struct {
		name  string
		token string
		want  time.Time
		ok    bool
	}{
		{"integer exp", jwt(`{"aud":["kvinject-hub"],"exp":1767225600,"iat":1767225000}`), time.Unix(1767225600, 0), true},
		{"fractional exp", jwt(`{"exp":1767225600.5}`), time.Unix(1767225600, 5e8), true},
		{"no exp", jwt(`{"aud":"kvinject-hub"}`), time.Time{}, false},
		{"null exp", jwt(`{"exp":null}`), time.Time{}, false},
		{"string exp", jwt(`{"exp":"1767225600"}`), time.Time{}, false},
		{"zero exp", jwt(`{"exp":0}`), time.Time{}, false},
		{"negative exp", jwt(`{"exp":-5}`), time.Time{}, false},
		{"huge exp", jwt(`{"exp":1e300}`), time.Time{}, false},
		{"payload not JSON", jwt(`not json`), time.Time{}, false},
		{"payload not base64", "a.b*c.d", time.Time{}, false},
		{"two parts", "a.b", time.Time{}, false},
		{"opaque token", "0123456789abcdef", time.Time{}, false},
		{"empty", "", time.Time{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tokenExpiry(tc.token)
			if ok != tc.ok || !got.Equal(tc.want) {
				t.Errorf("tokenExpiry = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	// A padded payload (some encoders pad) still parses.
	enc := base64.URLEncoding.EncodeToString
	padded := enc([]byte(`{}`)) + "." + enc([]byte(`{"exp":1767225600}`)) + "." + enc([]byte("s"))
	if got, ok := tokenExpiry(padded); !ok || !got.Equal(time.Unix(1767225600, 0)) {
		t.Errorf("padded token: %v, %v", got, ok)
	}
}

func podUser(ns, sa, pod, uid string) authenticationv1.UserInfo {
	u := authenticationv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + sa, Extra: map[string]authenticationv1.ExtraValue{}}
	if pod != "" {
		u.Extra[ExtraPodName] = authenticationv1.ExtraValue{pod}
	}
	if uid != "" {
		u.Extra[ExtraPodUID] = authenticationv1.ExtraValue{uid}
	}
	return u
}

func TestIdentityOf(t *testing.T) {
	ok := authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{hubapi.Audience}, User: podUser("shop", "app", "orders", "u-1")}
	tests := []struct {
		name    string
		edit    func(*authenticationv1.TokenReviewStatus)
		want    string
		wantMsg string
	}{
		{"pod-bound token", func(*authenticationv1.TokenReviewStatus) {}, "", ""},
		{"not authenticated", func(s *authenticationv1.TokenReviewStatus) {
			s.Authenticated, s.Error = false, "[invalid bearer token, token audiences [\"api://AzureADTokenExchange\"] is invalid for the target audiences [\"kvinject-hub\"]]"
		}, hubapi.ReasonUnauthenticated, "did not accept the token"},
		{"audience missing from the answer", func(s *authenticationv1.TokenReviewStatus) { s.Audiences = []string{"https://kubernetes.default.svc"} }, hubapi.ReasonUnauthenticated, "do not include kvinject-hub"},
		{"no audiences in the answer", func(s *authenticationv1.TokenReviewStatus) { s.Audiences = nil }, hubapi.ReasonUnauthenticated, "do not include kvinject-hub"},
		{"a user", func(s *authenticationv1.TokenReviewStatus) { s.User = authenticationv1.UserInfo{Username: "alice"} }, hubapi.ReasonNotAPod, `"alice"`},
		{"a node", func(s *authenticationv1.TokenReviewStatus) { s.User.Username = "system:node:n1" }, hubapi.ReasonNotAPod, "not to a ServiceAccount"},
		{"not bound to a pod", func(s *authenticationv1.TokenReviewStatus) { s.User = podUser("shop", "app", "", "") }, hubapi.ReasonNotAPod, "not bound to a pod"},
		{"pod name without UID", func(s *authenticationv1.TokenReviewStatus) { s.User = podUser("shop", "app", "orders", "") }, hubapi.ReasonNotAPod, "not bound to a pod"},
		{"two pod names", func(s *authenticationv1.TokenReviewStatus) {
			s.User.Extra[ExtraPodName] = authenticationv1.ExtraValue{"a", "b"}
		}, hubapi.ReasonNotAPod, "not bound to a pod"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := *ok.DeepCopy()
			tc.edit(&st)
			id, ref := identityOf(st)
			checkRefusal(t, ref, tc.want, tc.wantMsg)
			if tc.want == "" && (id.Namespace != "shop" || id.ServiceAccount != "app" || id.PodName != "orders" || id.PodUID != "u-1") {
				t.Errorf("identity %+v", id)
			}
		})
	}
}

// reviewer is a fake API server's TokenReview endpoint: tokens maps a token
// to its answer; block, when set, holds each review until closed.
type reviewer struct {
	mu     sync.Mutex
	tokens map[string]authenticationv1.TokenReviewStatus
	fail   error
	block  chan struct{}
	calls  atomic.Int64
}

func (rv *reviewer) clientset() *fake.Clientset {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		rv.calls.Add(1)
		if rv.block != nil {
			<-rv.block
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview).DeepCopy()
		if len(tr.Spec.Audiences) != 1 || tr.Spec.Audiences[0] != hubapi.Audience {
			return true, nil, fmt.Errorf("the review asks for audiences %q", tr.Spec.Audiences)
		}
		rv.mu.Lock()
		defer rv.mu.Unlock()
		if rv.fail != nil {
			return true, nil, rv.fail
		}
		tr.Status = rv.tokens[tr.Spec.Token]
		return true, tr, nil
	})
	return cs
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestAuthenticateCachesByToken(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	accepted := authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{hubapi.Audience}, User: podUser("shop", "app", "orders", "u-1")}
	long := jwt(fmt.Sprintf(`{"exp":%d}`, clk.now().Add(time.Hour).Unix()))      // cached 10m (the cap)
	short := jwt(fmt.Sprintf(`{"exp":%d}`, clk.now().Add(3*time.Minute).Unix())) // cached until exp
	opaque := "opaque-token"                                                     // no exp: cached 1m
	refused := jwt(`{"exp":1}`)                                                  // the API server says no: cached 10s
	rv := &reviewer{tokens: map[string]authenticationv1.TokenReviewStatus{long: accepted, short: accepted, opaque: accepted}}
	m, _ := newMetrics(nil)
	a := newAuthenticator(rv.clientset(), m, clk.now, nil)
	ctx := context.Background()

	// reviews returns how many TokenReviews authenticating token cost.
	reviews := func(token string) int64 {
		t.Helper()
		before := rv.calls.Load()
		id, ref := a.authenticate(ctx, token)
		if token == refused {
			if ref == nil || ref.reason != hubapi.ReasonUnauthenticated {
				t.Fatalf("refused token: %v", ref)
			}
		} else if ref != nil || id.PodUID != "u-1" {
			t.Fatalf("accepted token: %+v, %v", id, ref)
		}
		return rv.calls.Load() - before
	}
	for _, tok := range []string{long, short, opaque, refused} {
		if n := reviews(tok); n != 1 {
			t.Fatalf("first use: %d reviews", n)
		}
		if n := reviews(tok); n != 0 {
			t.Fatalf("second use: %d reviews, want the cached answer", n)
		}
	}
	if id, _ := a.authenticate(ctx, short); !id.Expires.Equal(clk.now().Add(3 * time.Minute)) {
		t.Errorf("identity expires %v, want the token's exp", id.Expires)
	}
	steps := []struct {
		advance time.Duration
		token   string
		want    int64
	}{
		{9 * time.Second, refused, 0},
		{2 * time.Second, refused, 1}, // negative answers: 10s
		{48 * time.Second, opaque, 0},
		{2 * time.Second, opaque, 1}, // no exp: 1m
		{2 * time.Minute, short, 1},  // 3m01s: past the token's exp
		{6 * time.Minute, long, 0},   // 9m01s
		{1 * time.Minute, long, 1},   // 10m01s: the cap
	}
	for _, s := range steps {
		clk.add(s.advance)
		if n := reviews(s.token); n != s.want {
			t.Errorf("after %v more: %d reviews, want %d", s.advance, n, s.want)
		}
	}

	// An API server error is not cached: the next request asks again.
	rv.fail = errors.New("connection refused")
	other := jwt(`{"exp":1900000000}`)
	for range 2 {
		before := rv.calls.Load()
		if _, ref := a.authenticate(ctx, other); ref == nil || ref.reason != hubapi.ReasonUnavailable {
			t.Fatalf("API server down: %v, want Unavailable", ref)
		}
		if rv.calls.Load()-before != 1 {
			t.Fatal("an API server error was cached")
		}
	}
}

func TestAuthenticateSharesConcurrentReviews(t *testing.T) {
	token := jwt(`{"exp":4000000000}`)
	rv := &reviewer{
		tokens: map[string]authenticationv1.TokenReviewStatus{token: {Authenticated: true, Audiences: []string{hubapi.Audience}, User: podUser("shop", "app", "orders", "u-1")}},
		block:  make(chan struct{}),
	}
	var answered atomic.Int64
	m, _ := newMetrics(nil)
	a := newAuthenticator(rv.clientset(), m, time.Now, func() { answered.Add(1) })
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if id, ref := a.authenticate(context.Background(), token); ref != nil || id.PodName != "orders" {
				errs <- fmt.Errorf("%+v, %v", id, ref)
			}
		})
	}
	// Let every goroutine reach the flight, then answer the one review.
	for rv.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(rv.block)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if c := rv.calls.Load(); c != 1 {
		t.Errorf("%d concurrent requests with one token cost %d TokenReviews, want 1", n, c)
	}
	if answered.Load() != 1 {
		t.Errorf("answered called %d times", answered.Load())
	}
	if a.cache.len() != 1 {
		t.Errorf("cache holds %d entries", a.cache.len())
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   string
	}{
		{"Bearer abc.def.ghi", "abc.def.ghi"},
		{"bearer  abc", "abc"},
		{"", ""},
		{"Basic dXNlcjpwYXNz", ""},
		{"Bearer ", ""},
		{"Bearer " + strings.Repeat("a", maxTokenBytes+1), ""},
	} {
		r := httptest.NewRequest("POST", hubapi.WatchPath, nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		got, ref := bearerToken(r)
		if got != tc.want || (tc.want == "") != (ref != nil) {
			t.Errorf("%.20q: %q, %v", tc.header, got, ref)
		}
		if ref != nil && (ref.reason != hubapi.ReasonUnauthenticated || strings.Contains(ref.message, "dXNlcjpwYXNz")) {
			t.Errorf("%.20q: refusal %v", tc.header, ref)
		}
	}
}
