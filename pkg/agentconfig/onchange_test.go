package agentconfig

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseOnChange(t *testing.T) {
	http := func(port int, path, method string, timeout time.Duration, retries int) OnChange {
		return OnChange{Kind: OnChangeHTTP, Port: port, Path: path, Method: method, Timeout: timeout, Retries: retries}
	}
	tests := []struct {
		raw       string
		want      OnChange
		canonical string
	}{
		{"restart", OnChange{Kind: OnChangeRestart}, "restart"},
		{" Restart ", OnChange{Kind: OnChangeRestart}, "restart"},
		{"http:8080/-/reload", http(8080, "/-/reload", "POST", 5*time.Second, 5), "http:8080/-/reload"},
		{"HTTP:1/", http(1, "/", "POST", 5*time.Second, 5), "http:1/"},
		{"http:65535/a%2Fb?x=1&y=z:@!$'()*+,~", http(65535, "/a%2Fb?x=1&y=z:@!$'()*+,~", "POST", 5*time.Second, 5), "http:65535/a%2Fb?x=1&y=z:@!$'()*+,~"},
		{"http:9090/api/reload?source=kvinject;method=PUT;timeout=3s;retries=3",
			http(9090, "/api/reload?source=kvinject", "PUT", 3*time.Second, 3), "http:9090/api/reload?source=kvinject;method=PUT;timeout=3s;retries=3"},
		{"http:9090/r ; RETRIES=0 ; Timeout=1m ; Method=get", http(9090, "/r", "GET", time.Minute, 0), "http:9090/r;method=GET;timeout=1m0s;retries=0"},
		{"http:9090/r;method=post;timeout=5s;retries=5", http(9090, "/r", "POST", 5*time.Second, 5), "http:9090/r"},
		{"http:9090/r;timeout=1500ms;method=patch", http(9090, "/r", "PATCH", 1500*time.Millisecond, 5), "http:9090/r;method=PATCH;timeout=1.5s"},
		{"http:08080/r", http(8080, "/r", "POST", 5*time.Second, 5), "http:8080/r"},
	}
	for _, tt := range tests {
		got, err := ParseOnChange(tt.raw)
		if err != nil {
			t.Errorf("ParseOnChange(%q): %v", tt.raw, err)
			continue
		}
		if d := cmp.Diff(tt.want, got); d != "" {
			t.Errorf("ParseOnChange(%q) (-want +got):\n%s", tt.raw, d)
		}
		if s := got.String(); s != tt.canonical {
			t.Errorf("ParseOnChange(%q).String() = %q, want %q", tt.raw, s, tt.canonical)
		}
		again, err := ParseOnChange(got.String())
		if err != nil || again != got {
			t.Errorf("the canonical form %q does not parse back: %+v, %v", got.String(), again, err)
		}
	}
	if u := tests[5].want.URL(); u != "http://127.0.0.1:9090/api/reload?source=kvinject" {
		t.Errorf("URL() = %q", u)
	}
}

func TestParseOnChangeErrors(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"", `"": empty; write http:<port><path>`},
		{"   ", "empty"},
		{"reload", `"reload": unknown action; write http:<port><path>`},
		{"exec:/bin/reload", `unknown action "exec"`},
		{"signal:HUP", "signals are not supported"},
		{"SIGHUP", "signals are not supported"},
		{"https:8443/reload", "plain HTTP"},
		{"http://localhost:8080/reload", "write the port right after http:"},
		{"http:/reload", "no port"},
		{"http:localhost:8080/reload", `port "localhost:8080" must be a number`},
		{"http:+80/r", `port "+80" must be a number`},
		{"http:0/r", "port 0 must be from 1 to 65535"},
		{"http:65536/r", "port 65536 must be from 1 to 65535"},
		{"http:99999999999999999999/r", "must be a number"},
		{"http:8080", "no path"},
		{"http:8080/r#frag", "fragment"},
		{"http:8080/a b", "may only use the characters of a URL path"},
		{"http:8080/a\"b", "may only use the characters of a URL path"},
		{"http:8080/a%zz", "percent-encoding"},
		{"http:8080/a%2", "percent-encoding"},
		{"http:8080/" + strings.Repeat("a", MaxOnChangePath), "longer than 512"},
		{"http:8080/" + strings.Repeat("a", 700), "longer than the longest valid action"},
		{"http:8080/r;", "empty option"},
		{"http:8080/r;;method=PUT", "empty option"},
		{"http:8080/r;method=PUT;method=POST", "option method is given twice"},
		{"http:8080/r;METHOD=PUT;method=POST", "option method is given twice"},
		{"http:8080/r;method=DELETE", `method "DELETE": use POST, PUT, PATCH, GET`},
		{"http:8080/r;method", "option method needs a value"},
		{"http:8080/r;timeout=", "option timeout needs a value"},
		{"http:8080/r;timeout=soon", `timeout "soon" is not a duration`},
		{"http:8080/r;timeout=500ms", "must be from 1s to 1m0s"},
		{"http:8080/r;timeout=2m", "must be from 1s to 1m0s"},
		{"http:8080/r;retries=11", `retries "11" must be a number from 0 to 10`},
		{"http:8080/r;retries=-1", "from 0 to 10"},
		{"http:8080/r;header=x", `unknown option "header"; options are method=`},
		{"restart;now", "restart takes no options"},
	}
	for _, tt := range tests {
		got, err := ParseOnChange(tt.raw)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseOnChange(%q) = %+v, %v; want an error containing %q", tt.raw, got, err, tt.want)
		}
	}
}

func TestOnChangeArgs(t *testing.T) {
	ok := []string{"--dir=/d", "--vault=https://v.vault.azure.net/", "--identity=workload", "--secret=a=B"}
	for _, tt := range []struct {
		args []string
		want string // "" for success
	}{
		{append([]string{"sidecar", "--on-change=http:8080/-/reload"}, ok...), ""},
		{append([]string{"sidecar", "--on-change=restart", "--hub=https://hub"}, ok...), ""},
		{append([]string{"init", "--on-change=http:8080/-/reload"}, ok...), "--on-change is only for sidecar mode"},
		{append([]string{"sidecar", "--on-change=restart"}, ok...), "--on-change=restart needs --hub"},
		{append([]string{"sidecar", "--on-change=http:8080"}, ok...), `invalid value "http:8080" for flag -on-change: "http:8080": no path`},
	} {
		c, err := ParseArgs(tt.args, nil)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("ParseArgs(%q): %v", tt.args, err)
		case tt.want == "" && c.OnChange.IsZero():
			t.Errorf("ParseArgs(%q) lost --on-change", tt.args)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("ParseArgs(%q) = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
	entries := []Entry{{File: "a", Name: "B"}}
	for _, oc := range []OnChange{
		{Kind: OnChangeRestart},
		{Kind: OnChangeHTTP, Port: 9090, Path: "/api/reload?source=kvinject", Method: "PUT", Timeout: 3 * time.Second, Retries: 3},
	} {
		c := Config{Mode: ModeSidecar, VaultURL: "https://v.vault.azure.net/", Entries: entries, Dir: "/s", FileMode: 0o444,
			Rotation: time.Minute, Identity: IdentitySystem, Hub: "https://kvinject-hub.kvinject-system.svc", OnChange: oc}
		got, err := ParseArgs(c.Args(), nil)
		if err != nil {
			t.Fatalf("ParseArgs(%q): %v", c.Args(), err)
		}
		if d := cmp.Diff(c, got); d != "" {
			t.Errorf("round trip of %q (-want +got):\n%s", c.Args(), d)
		}
	}
	// The init agent of a pod never carries the action, even when the
	// Config does: Args writes it in sidecar mode only.
	c := Config{Mode: ModeInit, VaultURL: "https://v.vault.azure.net/", Entries: entries, Dir: "/s", Identity: IdentitySystem, OnChange: OnChange{Kind: OnChangeRestart}}
	for _, a := range c.Args() {
		if strings.HasPrefix(a, "--"+FlagOnChange) {
			t.Errorf("init-mode Args() = %q, with %s", c.Args(), a)
		}
	}
}
