package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// TestActionClientNoProxyNoRedirect: the http action never goes through a
// proxy of the environment (it would take the call out of the pod) and never
// follows a redirect (3xx is a failure, retried like any other status).
func TestActionClientNoProxyNoRedirect(t *testing.T) {
	var proxied, redirected atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { proxied.Add(1) }))
	defer proxy.Close()
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { redirected.Add(1) }))
	defer target.Close()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/elsewhere", http.StatusFound)
	}))
	defer app.Close()
	// Every proxy variable, including for loopback (NO_PROXY empty): the
	// client must not read them at all.
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("http_proxy", proxy.URL)
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")

	c := newActionClient(time.Second)
	if tr, ok := c.Transport.(*http.Transport); !ok || tr.Proxy != nil {
		t.Fatalf("transport %T with a Proxy function; want none", c.Transport)
	}
	u, _ := url.Parse(app.URL)
	port := u.Port()
	oc, err := agentconfig.ParseOnChange("http:" + port + "/-/reload")
	if err != nil {
		t.Fatal(err)
	}
	out := httpAction(oc)(context.Background(), []changedObject{{kind: "secret", name: "a", version: "v"}})
	if out.status != http.StatusFound || out.err == nil || !out.retry || !strings.Contains(out.err.Error(), "does not follow") {
		t.Errorf("outcome %+v, want a retried failure with status 302 that says redirects are not followed", out)
	}
	if proxied.Load() != 0 || redirected.Load() != 0 {
		t.Errorf("%d calls through the proxy, %d to the redirect's target; want none", proxied.Load(), redirected.Load())
	}
}

// TestActionTimeout: an app that does not answer within the timeout is a
// failure that is retried.
func TestActionTimeout(t *testing.T) {
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer app.Close()
	defer close(release)
	u, _ := url.Parse(app.URL)
	oc, _ := agentconfig.ParseOnChange("http:" + u.Port() + "/r;timeout=1s")
	start := time.Now()
	out := httpAction(oc)(context.Background(), nil)
	if took := time.Since(start); out.err == nil || !out.retry || took > 3*time.Second {
		t.Errorf("outcome %+v after %s; want a retried failure after about 1s", out, took)
	}
}

func TestMergeChanged(t *testing.T) {
	a1 := changedObject{kind: "secret", name: "a", version: "1"}
	a2 := changedObject{kind: "secret", name: "A", version: "2"}
	b := changedObject{kind: "secret", name: "b", version: "1"}
	c := changedObject{kind: "certificate", name: "a", version: "9"}
	for _, tt := range []struct {
		older, newer, want []changedObject
	}{
		{nil, []changedObject{a1}, []changedObject{a1}},
		{[]changedObject{a1, b}, []changedObject{a2}, []changedObject{a2, b}},
		{[]changedObject{a1}, []changedObject{b, c}, []changedObject{a1, b, c}},
	} {
		got := mergeChanged(tt.older, tt.newer)
		if d := cmp.Diff(tt.want, got, cmp.AllowUnexported(changedObject{})); d != "" {
			t.Errorf("mergeChanged(%v, %v) (-want +got):\n%s", tt.older, tt.newer, d)
		}
	}
	if s := objectNames([]changedObject{a1, c}); s != "secret/a,certificate/a" {
		t.Errorf("objectNames = %q", s)
	}
}

// TestChangedHeader: the header names every object up to 4 KiB, then ends
// with ",...".
func TestChangedHeader(t *testing.T) {
	few := []changedObject{{kind: "secret", name: "a"}, {kind: "key", name: "k"}}
	if got := changedHeader(few); got != "secret/a,key/k" {
		t.Errorf("changedHeader = %q", got)
	}
	var many []changedObject
	for i := range 256 {
		many = append(many, changedObject{kind: "certificate", name: fmt.Sprintf("%0120d", i)})
	}
	got := changedHeader(many)
	if len(got) > maxChangedHeader || !strings.HasSuffix(got, ",...") || !strings.HasPrefix(got, "certificate/"+fmt.Sprintf("%0120d", 0)+",") {
		t.Errorf("changedHeader of 256 long names: %d bytes, ending %q", len(got), got[len(got)-20:])
	}
	for _, name := range strings.Split(strings.TrimSuffix(got, ",..."), ",") {
		if len(name) != len("certificate/")+120 {
			t.Errorf("a name was cut: %q", name)
		}
	}
}
