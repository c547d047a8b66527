package agent

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

func TestParseResolve(t *testing.T) {
	for _, tc := range []struct {
		in      string
		lookups map[string]string // host -> address ("" for none)
		err     string
	}{
		{
			in: "login.microsoftonline.com=127.0.0.1:8443, *.vault.azure.net=127.0.0.1:9443",
			lookups: map[string]string{
				"login.microsoftonline.com":  "127.0.0.1:8443",
				"LOGIN.microsoftonline.com.": "127.0.0.1:8443",
				"myvault.vault.azure.net":    "127.0.0.1:9443",
				"vault.azure.net":            "",
				"example.com":                "",
			},
		},
		{in: "a.example=[::1]:443", lookups: map[string]string{"a.example": "[::1]:443"}},
		{in: "", err: "no rules"},
		{in: "host", err: "not host=ip:port"},
		{in: "host=127.0.0.1", err: "missing port"},
		{in: "=127.0.0.1:1", err: "not host=ip:port"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := parseResolve(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for host, want := range tc.lookups {
				if got, _ := r.lookup(host); got != want {
					t.Errorf("lookup(%q) = %q, want %q", host, got, want)
				}
			}
		})
	}
}

func TestCloudFor(t *testing.T) {
	for _, tc := range []struct {
		authority string
		want      cloud.Configuration
	}{
		{"", cloud.AzurePublic},
		{"https://login.microsoftonline.com/", cloud.AzurePublic},
		{"https://login.microsoftonline.us/", cloud.AzureGovernment},
		{"https://login.chinacloudapi.cn", func() cloud.Configuration {
			c := cloud.AzureChina
			c.ActiveDirectoryAuthorityHost = "https://login.chinacloudapi.cn/"
			return c
		}()},
	} {
		t.Run(tc.authority, func(t *testing.T) {
			got := cloudFor(tc.authority)
			if got.ActiveDirectoryAuthorityHost != tc.want.ActiveDirectoryAuthorityHost || len(got.Services) != len(tc.want.Services) {
				t.Errorf("cloudFor(%q) = %+v, want %+v", tc.authority, got, tc.want)
			}
		})
	}
}

func TestUserAgentString(t *testing.T) {
	if got, want := productUserAgent("kvinject-hub", ""), "kvinject-hub/"+version.Version; got != want {
		t.Errorf("hub User-Agent %q, want %q", got, want)
	}
	if got, want := userAgent("shop/checkout-1"), "kvinject-agent/"+version.Version+" (pod shop/checkout-1)"; got != want {
		t.Errorf("userAgent = %q, want %q", got, want)
	}
	if got, want := (Env{PodNamespace: "a b", PodName: "c(d)"}).Pod(), "ab/cd"; got != want {
		t.Errorf("Pod() = %q, want %q", got, want)
	}
}

// recorder records the User-Agent of every request.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	uas  map[string]string // host+path -> User-Agent
}

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.uas[req.URL.Host+req.URL.Path] = req.Header.Get("User-Agent")
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

// TestUserAgentOnEveryRequest checks that Azure AD, the managed-identity
// endpoint and Key Vault all see the agent and the pod in the User-Agent.
func TestUserAgentOnEveryRequest(t *testing.T) {
	emu, err := emulator.Start(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	tr := emu.Transport()
	defer tr.CloseIdleConnections()
	emu.SetSecret("uavault", "s", "v")

	// Workload identity.
	// Fresh IDs: MSAL caches managed-identity tokens per process.
	wiID, miID := randomGUID(), randomGUID()
	if err := emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: wiID, Issuer: exIssuer, Subject: "system:serviceaccount:ns:sa"}); err != nil {
		t.Fatal(err)
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(enc(map[string]string{"alg": "none"})+"."+enc(map[string]any{
		"iss": exIssuer, "sub": "system:serviceaccount:ns:sa", "aud": "api://AzureADTokenExchange", "exp": time.Now().Add(time.Hour).Unix(),
	})+".sig"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Managed identity (App Service source, selected by the environment).
	if err := emu.AddManagedIdentity(miID); err != nil {
		t.Fatal(err)
	}
	t.Setenv("IDENTITY_ENDPOINT", emu.MSIEndpoint())
	t.Setenv("IDENTITY_HEADER", emu.IdentityHeader())
	for _, id := range []string{wiID, miID} {
		if err := emu.Grant("uavault", id, emulator.PermGet); err != nil {
			t.Fatal(err)
		}
	}

	want := "kvinject-agent/" + version.Version + " (pod ns/app-1)"
	for _, tc := range []struct {
		kind agentconfig.IdentityKind
		env  Env
	}{
		{agentconfig.IdentityWorkload, Env{ClientID: wiID, TenantID: emu.TenantID(), TokenFile: tok, AuthorityHost: "https://login.microsoftonline.com/"}},
		{agentconfig.IdentityManaged, Env{ClientID: miID}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			tc.env.PodNamespace, tc.env.PodName = "ns", "app-1"
			rec := &recorder{next: tr, uas: map[string]string{}}
			co := clientOptions(rec, tc.env, policy.RetryOptions{MaxRetries: -1})
			cred, err := newCredential(tc.kind, tc.env, co)
			if err != nil {
				t.Fatal(err)
			}
			client, err := newSecretsClient(emu.VaultURL("uavault"), cred, co)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
				t.Fatal(err)
			}
			sawToken, sawVault := false, false
			for where, ua := range rec.uas {
				if !strings.HasSuffix(ua, " "+want) {
					t.Errorf("%s: User-Agent %q does not end with %q", where, ua, want)
				}
				sawToken = sawToken || strings.Contains(where, "/token")
				sawVault = sawVault || strings.Contains(where, ".vault.azure.net")
			}
			if !sawToken || !sawVault {
				t.Errorf("requests seen: %v", rec.uas)
			}
		})
	}
}

func TestNewCredentialConfigErrors(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("x.y.z"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		kind agentconfig.IdentityKind
		env  Env
		want string
	}{
		{"workload without anything", agentconfig.IdentityWorkload, Env{}, "workload identity needs AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE"},
		{"workload without token file", agentconfig.IdentityWorkload, Env{ClientID: exClient, TenantID: exTenant, TokenFile: "/nonexistent/token"}, "the projected service account token /nonexistent/token cannot be read"},
		{"managed without client ID", agentconfig.IdentityManaged, Env{}, "a user-assigned managed identity needs AZURE_CLIENT_ID"},
		{"unknown kind", "pod", Env{}, `unknown identity kind "pod"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newCredential(tc.kind, tc.env, clientOptions(http.DefaultClient, tc.env, policy.RetryOptions{}))
			var ce *ConfigError
			if !errorsAs(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a ConfigError containing %q", err, tc.want)
			}
			if transient(err) {
				t.Error("a configuration error is not transient")
			}
		})
	}
	if _, err := newCredential(agentconfig.IdentityWorkload, Env{ClientID: exClient, TenantID: exTenant, TokenFile: tok}, clientOptions(http.DefaultClient, Env{}, policy.RetryOptions{})); err != nil {
		t.Fatalf("complete workload environment: %v", err)
	}
}

func TestNewTransportTestOptions(t *testing.T) {
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	tr, err := newTransport(Env{}, log)
	if err != nil {
		t.Fatal(err)
	}
	if !tr.ForceAttemptHTTP2 || tr.MaxIdleConnsPerHost != maxIdleConnsPerHost || (tr.TLSClientConfig != nil && tr.TLSClientConfig.RootCAs != nil) || tr.DialContext == nil {
		t.Errorf("production transport: HTTP/2 %v, idle per host %d, TLS config %v", tr.ForceAttemptHTTP2, tr.MaxIdleConnsPerHost, tr.TLSClientConfig)
	}
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "x.pem")
	_ = os.WriteFile(notPEM, []byte("nope"), 0o600)
	for _, tc := range []struct {
		env  Env
		want string
	}{
		{Env{TestCAFile: filepath.Join(dir, "missing.pem")}, "KVINJECT_TEST_CA_FILE"},
		{Env{TestCAFile: notPEM}, "holds no PEM certificate"},
		{Env{TestResolve: "nonsense"}, "KVINJECT_TEST_RESOLVE"},
	} {
		if _, err := newTransport(tc.env, log); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("newTransport(%+v): %v, want %q", tc.env, err, tc.want)
		}
	}
}

func TestArgsRoundTrip(t *testing.T) {
	entries := []agentconfig.Entry{
		{File: "connectionstring.txt", Name: "DATABASE-CONNECTION-STRING"},
		{File: "apikey.txt", Name: "API-KEY", Version: "4387e9f3d6e14c459867679a90fd0f79"},
		{File: "db/password", Name: "db-password"},
	}
	for _, cfg := range []agentconfig.Config{
		{Mode: agentconfig.ModeSidecar, VaultURL: "https://myvault.vault.azure.net/", Entries: entries, Dir: "/var/run/kvinject/secrets",
			FileMode: 0o440, Rotation: 2 * time.Minute, Identity: agentconfig.IdentityWorkload},
		{Mode: agentconfig.ModeInit, VaultURL: "https://myvault.vault.usgovcloudapi.net/", Entries: entries[:1], Dir: "/var/run/kvinject/secrets",
			FileMode: 0o444, Identity: agentconfig.IdentityManaged},
		{Mode: agentconfig.ModeInit, VaultURL: "https://myvault.vault.azure.cn/", Entries: entries[1:], Dir: "/s",
			FileMode: 0o400, Identity: agentconfig.IdentitySystem},
		{Mode: agentconfig.ModeProbe, Dir: "/var/run/kvinject/secrets", FileMode: agentconfig.ModeWorldReadable},
	} {
		t.Run(cfg.Mode+" "+string(cfg.Identity), func(t *testing.T) {
			args := cfg.Args()
			got, local, err := parseArgs(args)
			if err != nil {
				t.Fatalf("parseArgs(%q): %v", args, err)
			}
			if diff := cmp.Diff(cfg, got); diff != "" {
				t.Errorf("round trip of %q (-want +got):\n%s", args, diff)
			}
			// agentconfig's reader without the agent's own flags agrees.
			viaConfig, err := agentconfig.ParseArgs(args, nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(viaConfig, got); diff != "" {
				t.Errorf("agent and agentconfig parse %q differently (-agentconfig +agent):\n%s", args, diff)
			}
			if want := (localFlags{terminationLog: DefaultTerminationLog, initTimeout: DefaultInitTimeout}); local != want {
				t.Errorf("local flags %+v, want defaults %+v", local, want)
			}
		})
	}

	// The agent's own flags share the flag set.
	cfg := agentconfig.Config{Mode: agentconfig.ModeInit, VaultURL: "https://v1.vault.azure.net/", Entries: entries[:1], Dir: "/d", FileMode: 0o440, Identity: agentconfig.IdentitySystem}
	_, local, err := parseArgs(append(cfg.Args(), "--termination-log=/tmp/t", "--log-level=debug", "--init-timeout=5s"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (localFlags{terminationLog: "/tmp/t", logLevel: slog.LevelDebug, initTimeout: 5 * time.Second}); local != want {
		t.Errorf("local flags %+v, want %+v", local, want)
	}
}

func TestTerminationLogFlagAfterABadFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"init", "--secret=..x=A", "--termination-log=/t/1"}, "/t/1"},
		{[]string{"init", "--bogus", "-termination-log", "/t/2"}, "/t/2"},
		{[]string{"init", "--bogus"}, DefaultTerminationLog},
	} {
		_, local, err := parseArgs(tc.args)
		if err == nil || local.terminationLog != tc.want {
			t.Errorf("parseArgs(%q): termination log %q, error %v; want %q and an error", tc.args, local.terminationLog, err, tc.want)
		}
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "mode"},
		{[]string{"fetch", "--dir=/d"}, `mode "fetch"`},
		{[]string{"init", "--dir=/d", "--vault=https://v1.vault.azure.net/", "--identity=system"}, "no --secret"},
		{[]string{"init", "--dir=/d", "--vault=https://v1.vault.azure.net/", "--identity=system", "--secret=..x=A"}, "must not start with '..'"},
		{[]string{"init", "--dir=/d", "--vault=https://v1.vault.azure.net/", "--identity=system", "--secret=a=A", "extra"}, `unexpected argument "extra"`},
		{[]string{"init", "--dir=/d", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"init", "--dir=/d", "--log-level=loud"}, "log-level"},
		{[]string{"init", "--dir=/d", "--init-timeout=0s"}, "--init-timeout must be positive"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, _, err := parseArgs(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseArgs: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestReadTokenClaims(t *testing.T) {
	dir := t.TempDir()
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		name    string
		content string
		want    tokenClaims
		ok      bool
	}{
		{"audience list", enc(`{}`) + "." + enc(`{"iss":"https://i/","sub":"system:serviceaccount:a:b","aud":["x","y"]}`) + ".s", tokenClaims{"https://i/", "system:serviceaccount:a:b", []string{"x", "y"}}, true},
		{"audience string", enc(`{}`) + "." + enc(`{"iss":"https://i/","aud":"x"}`) + ".s\n", tokenClaims{Issuer: "https://i/", Audience: []string{"x"}}, true},
		{"not a JWT", "abc", tokenClaims{}, false},
		{"bad payload", "a.!!!.c", tokenClaims{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			_ = os.WriteFile(p, []byte(tc.content), 0o600)
			got, ok := readTokenClaims(p)
			if ok != tc.ok {
				t.Fatalf("ok = %v", ok)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// errorsAs is errors.As, for brevity in tables.
func errorsAs(err error, target any) bool { return errors.As(err, target) }

// randomGUID returns a random GUID-shaped client ID.
func randomGUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// TestFetchStopsOnlyForSharedFailures: on a cold client, a first request
// that fails for every secret (here a 500) stops the round, while one whose
// secret is gone does not.
func TestFetchStopsOnlyForSharedFailures(t *testing.T) {
	emu, err := emulator.Start(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	tr := emu.Transport()
	defer tr.CloseIdleConnections()
	id := randomGUID()
	if err := emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: id, Issuer: exIssuer, Subject: "system:serviceaccount:ns:sa"}); err != nil {
		t.Fatal(err)
	}
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	tok := filepath.Join(t.TempDir(), "token")
	_ = os.WriteFile(tok, []byte(enc(map[string]string{"alg": "none"})+"."+enc(map[string]any{
		"iss": exIssuer, "sub": "system:serviceaccount:ns:sa", "aud": "api://AzureADTokenExchange", "exp": time.Now().Add(time.Hour).Unix(),
	})+".sig"), 0o600)
	emu.SetSecret("fvault", "gone", "x")
	emu.SetSecret("fvault", "a", "va")
	emu.SetSecret("fvault", "b", "vb")
	_ = emu.DeleteSecret("fvault", "gone")
	_ = emu.Grant("fvault", id, emulator.PermGet)
	env := Env{ClientID: id, TenantID: emu.TenantID(), TokenFile: tok, AuthorityHost: "https://login.microsoftonline.com/"}
	newFetcher := func() *fetcher {
		co := clientOptions(&http.Client{Transport: tr}, env, policy.RetryOptions{MaxRetries: -1})
		cred, err := newCredential(agentconfig.IdentityWorkload, env, co)
		if err != nil {
			t.Fatal(err)
		}
		sc := &serialCredential{cred: cred}
		client, err := newSecretsClient(emu.VaultURL("fvault"), sc, co)
		if err != nil {
			t.Fatal(err)
		}
		return &fetcher{secrets: client, cred: sc, scope: vaultScope(emu.VaultURL("fvault")), vault: emu.VaultURL("fvault"), concurrency: 4}
	}
	refs := []objectRef{{name: "gone"}, {name: "a"}, {name: "b"}}
	names := map[objectRef]agentconfig.Entry{}
	for _, r := range refs {
		names[r] = agentconfig.Entry{File: r.name, Name: r.name}
	}

	res := newFetcher().fetch(context.Background(), refs, names)
	if len(res.errs) != 1 || !gone(res.errs[refs[0]]) || string(res.values[refs[1]].value) != "va" || string(res.values[refs[2]].value) != "vb" {
		t.Errorf("gone first: values %d, errors %v", len(res.values), res.errs)
	}

	emu.ResetStats()
	_ = emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 500, Count: 1, Match: emulator.OpGet})
	refs[0], refs[1] = refs[1], refs[0]
	f := newFetcher()
	res = f.fetch(context.Background(), refs, names)
	if len(res.errs) != 1 || len(res.values) != 0 || f.lanes[laneSecrets].warm {
		t.Errorf("500 first: values %d, errors %v, warm %v", len(res.values), res.errs, f.lanes[laneSecrets].warm)
	}
	if st := emu.Stats(); st.Faults != 1 || st.Gets != 0 {
		t.Errorf("500 first: %d faults, %d gets; want 1 and 0 (the rest not tried)", st.Faults, st.Gets)
	}
	if got := vaultScope("https://myvault.vault.usgovcloudapi.net/"); got != "https://vault.usgovcloudapi.net/.default" {
		t.Errorf("vaultScope = %q", got)
	}
}
