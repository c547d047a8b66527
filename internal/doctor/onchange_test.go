package doctor

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/agent"
)

// TestCheckOnChange: the action is checked without being run: its grammar,
// for http in the pod that something listens on the port, for restart that
// the agent has the hub and its token.
func TestCheckOnChange(t *testing.T) {
	var called int
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called++ }))
	defer app.Close()
	u, _ := url.Parse(app.URL)
	// A port nothing listens on: one just closed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	inPod := agent.Env{PodName: "p", PodNamespace: "ns"}
	for _, tc := range []struct {
		name     string
		onChange string
		hub      string
		env      agent.Env
		status   Status
		want     string
	}{
		{"bad grammar", "http:8080", "", inPod, StatusFail, `"http:8080": no path`},
		{"restart without hub", "restart", "", inPod, StatusFail, "restart needs the version hub, but the agent has no --hub"},
		{"restart with hub", "restart", "https://hub", agent.Env{HubTokenFile: token}, StatusOK, "reports each new set to the hub https://hub"},
		{"restart without its token", "restart", "https://hub", agent.Env{HubTokenFile: token + ".missing"}, StatusWarn, "cannot read its token"},
		{"http outside the pod", "http:" + u.Port() + "/-/reload", "", agent.Env{}, StatusSkip, "the doctor does not run in the pod"},
		{"http listening", "http:" + u.Port() + "/-/reload;method=PUT", "", inPod, StatusOK, "PUT http://127.0.0.1:" + u.Port() + "/-/reload after each new set (timeout 5s, 5 retries); something accepts connections"},
		{"http not listening", "http:" + strconv.Itoa(closedPort) + "/-/reload", "", inPod, StatusWarn, "nothing accepts connections on 127.0.0.1:" + strconv.Itoa(closedPort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := checkOnChange(context.Background(), Config{OnChange: tc.onChange, Hub: tc.hub, Env: tc.env})
			if c.Status != tc.status || !strings.Contains(c.Detail, tc.want) || c.Kind != CheckOnChange {
				t.Errorf("check %+v; want %s with %q", c, tc.status, tc.want)
			}
			if (c.Status == StatusFail || c.Status == StatusWarn) && c.Fix == "" {
				t.Errorf("check %+v has no fix", c)
			}
		})
	}
	if called != 0 {
		t.Errorf("the app's endpoint was called %d times; the doctor must never call it", called)
	}
}
