package emulator

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/go-cmp/cmp"
)

func TestHTTP2AndOneChallenge(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	const n = 20
	for i := range n {
		e.SetSecret("myvault", "s"+string(rune('a'+i)), "v")
	}
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	for i := range n {
		if _, err := client.GetSecret(context.Background(), "s"+string(rune('a'+i)), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	// One 401 challenge (then the same get again with a token), one OpenID configuration,
	// one instance discovery (MSAL's token cache asks even for a trusted host), one token.
	want := Stats{Requests: n + 4, HTTP2Requests: n + 4, Connections: 2, Gets: n, Challenges: 1,
		Discovery: 1, InstanceDiscovery: 1, TokenRequests: 1, TokensIssued: 1}
	if diff := cmp.Diff(want, e.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}

	// The protocol as seen by a plain client, and HTTP/1.1 still works.
	resp, _ := rawDo(t, tr, http.MethodGet, e.VaultURL("myvault")+"secrets/sa?api-version=7.4", "", nil, nil)
	if resp.Proto != "HTTP/2.0" || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "h2" {
		t.Errorf("proto %s", resp.Proto)
	}
	h1 := transport(t, e)
	h1.ForceAttemptHTTP2 = false
	h1.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	resp, _ = rawDo(t, h1, http.MethodGet, e.VaultURL("myvault")+"secrets/sa?api-version=7.4", "", nil, nil)
	if resp.Proto != "HTTP/1.1" || resp.StatusCode != 401 {
		t.Errorf("HTTP/1.1 client: %s %d", resp.Proto, resp.StatusCode)
	}
}

func TestConcurrentGets(t *testing.T) {
	e := start(t, Options{Latency: 5 * time.Millisecond})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", "v")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Go(func() {
			if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := e.Stats(); s.TokenRequests != 1 || s.Challenges != 1 || s.Gets != 51 || s.Connections != 2 {
		t.Errorf("stats %+v", s)
	}
}

func TestFaults(t *testing.T) {
	http1 := func(t *testing.T, e *Emulator) http.RoundTripper {
		tr := transport(t, e)
		tr.ForceAttemptHTTP2 = false
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		return tr
	}
	tests := []struct {
		name      string
		fault     Fault
		transport func(*testing.T, *Emulator) http.RoundTripper
		retry     policy.RetryOptions
		check     func(t *testing.T, err error)
		faults    int64
	}{
		{name: "reset HTTP/2", fault: Fault{Kind: FaultReset, Match: OpGet}, retry: noRetry, faults: 1,
			check: func(t *testing.T, err error) {
				var re *azcore.ResponseError
				if err == nil || errors.As(err, &re) {
					t.Errorf("error %v, want a transport error", err)
				}
			}},
		// net/http retries an idempotent request once when a reused connection drops.
		{name: "reset HTTP/1.1", fault: Fault{Kind: FaultReset, Match: OpGet}, transport: http1, retry: noRetry, faults: 2,
			check: func(t *testing.T, err error) {
				var re *azcore.ResponseError
				if err == nil || errors.As(err, &re) {
					t.Errorf("error %v, want a transport error", err)
				}
			}},
		{name: "reset once then retried", fault: Fault{Kind: FaultReset, Count: 1}, retry: fastRetry, faults: 1,
			check: func(t *testing.T, err error) {
				if err != nil {
					t.Error(err)
				}
			}},
		{name: "503 twice then retried", fault: Fault{Kind: FaultStatus, Status: 503, Count: 2, Match: OpKeyVault}, retry: fastRetry, faults: 2,
			check: func(t *testing.T, err error) {
				if err != nil {
					t.Error(err)
				}
			}},
		{name: "500 until cleared", fault: Fault{Kind: FaultStatus, Match: OpGet}, retry: fastRetry, faults: 4,
			check: func(t *testing.T, err error) {
				var re *azcore.ResponseError
				if !errors.As(err, &re) || re.StatusCode != 500 {
					t.Errorf("error %v, want 500", err)
				}
			}},
		{name: "token endpoint 500", fault: Fault{Kind: FaultStatus, Match: OpToken}, retry: noRetry, faults: 1,
			check: func(t *testing.T, err error) {
				var afe *azidentity.AuthenticationFailedError
				if !errors.As(err, &afe) || afe.RawResponse.StatusCode != 500 || !strings.Contains(err.Error(), "AADSTS90033") {
					t.Errorf("error %v, want AuthenticationFailedError 500", err)
				}
			}},
		{name: "fault on another vault", fault: Fault{Kind: FaultStatus, Vault: "other"}, retry: noRetry, faults: 0,
			check: func(t *testing.T, err error) {
				if err != nil {
					t.Error(err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, Options{})
			tr := http.RoundTripper(transport(t, e))
			if tc.transport != nil {
				tr = tc.transport(t, e)
			}
			clientID, cred := registerWorkload(t, e, tr)
			e.SetSecret("myvault", "s", "v")
			if err := e.Grant("myvault", clientID, PermGet); err != nil {
				t.Fatal(err)
			}
			if err := e.InjectFault(tc.fault); err != nil {
				t.Fatal(err)
			}
			client := secretsClient(t, e.VaultURL("myvault"), cred, tr, tc.retry)
			_, err := client.GetSecret(context.Background(), "s", "", nil)
			tc.check(t, err)
			if got := e.Stats().Faults; got != tc.faults {
				t.Errorf("Faults = %d, want %d", got, tc.faults)
			}
			e.ClearFaults()
			if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
				t.Errorf("after ClearFaults: %v", err)
			}
		})
	}

	e := start(t, Options{})
	for _, bad := range []Fault{{Kind: "nope"}, {Kind: FaultStatus, Status: 200}, {Kind: FaultReset, Match: "nope"}, {Kind: FaultReset, Count: -1}} {
		if err := e.InjectFault(bad); err == nil {
			t.Errorf("InjectFault(%+v) accepted", bad)
		}
	}
}

func TestLatency(t *testing.T) {
	e := start(t, Options{Latency: 30 * time.Millisecond})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", "v")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	begin := time.Now()
	if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
	// Cold: challenge, discovery, token, get: four delayed requests.
	if d := time.Since(begin); d < 4*30*time.Millisecond {
		t.Errorf("cold get took %v, want at least 120ms", d)
	}
	e.SetLatency(60 * time.Millisecond)
	begin = time.Now()
	if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d < 60*time.Millisecond {
		t.Errorf("warm get took %v, want at least 60ms", d)
	}
	e.SetLatency(0)
	// Admin requests are never delayed.
	e.SetLatency(time.Hour)
	begin = time.Now()
	resp, _ := rawDo(t, tr, http.MethodGet, e.AuthorityHost()+"_emulator/stats", "", http.Header{AdminTokenHeader: {e.AdminToken()}}, nil)
	if resp.StatusCode != 200 || time.Since(begin) > time.Second {
		t.Errorf("admin: %d after %v", resp.StatusCode, time.Since(begin))
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogsNeverContainSecrets(t *testing.T) {
	var logs syncBuffer
	e := start(t, Options{Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	tr := transport(t, e)
	const value, adminValue = "Sup3r-S3cret-Value", "admin-set-secret-value"
	clientID, cred := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", value)
	e.SetSecret("myvault", "off", value, WithDisabled())
	if err := e.Grant("myvault", clientID, PermGet, PermList); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetSecret(context.Background(), "off", "", nil); err == nil {
		t.Fatal("disabled secret readable")
	}
	if _, err := client.NewListSecretPropertiesVersionsPager("s", nil).NextPage(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Managed identity and the admin API (which carries a value in its body).
	t.Setenv("IDENTITY_ENDPOINT", e.MSIEndpoint())
	t.Setenv("IDENTITY_HEADER", e.IdentityHeader())
	mi := newUUID()
	if err := e.AddManagedIdentity(mi); err != nil {
		t.Fatal(err)
	}
	if err := e.Grant("myvault", mi, PermGet); err != nil {
		t.Fatal(err)
	}
	miCred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
		ID: azidentity.ClientID(mi), ClientOptions: clientOptions(tr, noRetry)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := secretsClient(t, e.VaultURL("myvault"), miCred, tr, noRetry).GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(SecretConfig{Value: adminValue})
	resp, _ := rawDo(t, tr, http.MethodPut, e.AuthorityHost()+"_emulator/vaults/myvault/secrets/fromadmin", "",
		http.Header{AdminTokenHeader: {e.AdminToken()}}, body)
	if resp.StatusCode != 200 {
		t.Fatalf("admin: %d", resp.StatusCode)
	}

	out := logs.String()
	secrets := map[string]string{
		"secret value":    value,
		"admin value":     adminValue,
		"access token":    vaultToken(t, cred, e.TenantID()),
		"MI token":        vaultToken(t, miCred, ""),
		"assertion":       strings.Split(unsignedJWT(t, map[string]any{"iss": testIssuer}), ".")[0], // the JWT header, common to all assertions
		"admin token":     e.AdminToken(),
		"identity header": e.IdentityHeader(),
	}
	for what, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("logs contain the %s", what)
		}
	}
	for _, want := range []string{`"client_id":"` + clientID + `"`, `"client_id":"` + mi + `"`, `"status":403`, `"path":"/secrets/s/"`, `"op":"msi"`} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func TestAdminAPI(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	admin := func(method, path string, body any) (int, []byte) {
		t.Helper()
		var b []byte
		if body != nil {
			var err error
			if b, err = json.Marshal(body); err != nil {
				t.Fatal(err)
			}
		}
		resp, out := rawDo(t, tr, method, e.AuthorityHost()+"_emulator"+path, "",
			http.Header{AdminTokenHeader: {e.AdminToken()}, "Content-Type": {"application/json"}}, b)
		return resp.StatusCode, out
	}
	if resp, _ := rawDo(t, tr, http.MethodGet, e.AuthorityHost()+"_emulator/stats", "", nil, nil); resp.StatusCode != 401 {
		t.Errorf("no admin token: %d", resp.StatusCode)
	}
	clientID := newUUID()
	steps := []struct {
		method, path string
		body         any
		status       int
	}{
		{"PUT", "/vaults/adminvault", VaultOptions{}, 204},
		{"PUT", "/vaults/adminvault/secrets/s", SecretConfig{Value: "v1", ContentType: "text/plain"}, 200},
		{"POST", "/identities/workload", WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}, 204},
		{"POST", "/vaults/adminvault/grants", GrantConfig{ClientID: clientID, Permissions: []Permission{PermGet}}, 204},
		{"POST", "/vaults/nosuch/grants", GrantConfig{ClientID: clientID, Permissions: []Permission{PermGet}}, 404},
		{"POST", "/vaults/adminvault/grants", map[string]any{"bogus": 1}, 400},
		{"POST", "/config", Config{Vaults: []VaultConfig{{Name: "cfgvault", VaultOptions: VaultOptions{RBAC: true},
			Secrets: []SecretConfig{{Name: "c", Value: "cv"}}, Grants: []GrantConfig{{ClientID: clientID, Permissions: []Permission{PermGet}}}}}}, 204},
		{"PUT", "/latency", map[string]string{"latency": "1ms"}, 204},
		{"PUT", "/throttle", map[string]any{"limit": 100, "window": "1s"}, 204},
	}
	for _, s := range steps {
		if got, body := admin(s.method, s.path, s.body); got != s.status {
			t.Fatalf("%s %s: %d %s, want %d", s.method, s.path, got, body, s.status)
		}
	}
	cred := workloadCred(t, clientID, e.TenantID(), saToken(t, testIssuer, testSubject, DefaultAudience, time.Now().Add(time.Hour)), tr, nil)
	client := secretsClient(t, e.VaultURL("adminvault"), cred, tr, noRetry)
	get := func() (string, int) {
		t.Helper()
		resp, err := client.GetSecret(context.Background(), "s", "", nil)
		var re *azcore.ResponseError
		switch {
		case err == nil:
			return *resp.Value, 200
		case errors.As(err, &re):
			return re.ErrorCode, re.StatusCode
		}
		t.Fatal(err)
		return "", 0
	}
	checks := []struct {
		method, path string
		body         any
		value        string
		status       int
	}{
		{"", "", nil, "v1", 200},
		{"POST", "/vaults/adminvault/secrets/s/disable", nil, "Forbidden", 403},
		{"POST", "/vaults/adminvault/secrets/s/enable", nil, "v1", 200},
		{"PUT", "/vaults/adminvault/firewall", map[string]bool{"blocked": true}, "Forbidden", 403},
		{"PUT", "/vaults/adminvault/firewall", map[string]bool{"blocked": false}, "v1", 200},
		{"POST", "/faults", Fault{Kind: FaultStatus, Status: 503, Count: 1, Match: OpGet}, "ServiceUnavailable", 503},
		{"", "", nil, "v1", 200},
		{"POST", "/faults", Fault{Kind: FaultStatus, Status: 500}, "InternalServerError", 500},
		{"DELETE", "/faults", nil, "v1", 200},
		{"PUT", "/vaults/adminvault/secrets/s", SecretConfig{Value: "v2"}, "v2", 200},
		{"DELETE", "/vaults/adminvault/secrets/s", nil, "SecretNotFound", 404},
		{"POST", "/expire-tokens", nil, "Unauthorized", 401},
	}
	for i, c := range checks {
		if c.method != "" {
			if status, body := admin(c.method, c.path, c.body); status >= 300 {
				t.Fatalf("step %d: %s %s: %d %s", i, c.method, c.path, status, body)
			}
		}
		if v, status := get(); v != c.value || status != c.status {
			t.Errorf("step %d (%s %s): got %q %d, want %q %d", i, c.method, c.path, v, status, c.value, c.status)
		}
	}
	if s, ok := e.Secret("cfgvault", "c"); !ok || s.Value != "cv" {
		t.Errorf("config secret: %+v %v", s, ok)
	}
	status, body := admin("GET", "/stats", nil)
	var st AdminStats
	if err := json.Unmarshal(body, &st); err != nil || status != 200 {
		t.Fatalf("stats: %d %s", status, body)
	}
	if st.VaultReads["adminvault"] == 0 || st.Gets == 0 {
		t.Errorf("stats %s", body)
	}
	// The admin API answers on every emulated host.
	resp, _ := rawDo(t, tr, http.MethodGet, e.VaultURL("adminvault")+"_emulator/stats", "", http.Header{AdminTokenHeader: {e.AdminToken()}}, nil)
	if resp.StatusCode != 200 {
		t.Errorf("admin on a vault host: %d", resp.StatusCode)
	}
}

func TestDialContext(t *testing.T) {
	e := start(t, Options{})
	_, port, _ := net.SplitHostPort(e.Addr())
	for _, addr := range []string{"login.microsoftonline.com:443", "LOGIN.microsoftonline.us:443", "localhost:" + port, e.Addr()} {
		c, err := e.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		if c.RemoteAddr().String() != e.Addr() {
			t.Errorf("%s dialed %s", addr, c.RemoteAddr())
		}
		c.Close()
	}
	if len(e.CAPEM()) == 0 || !bytes.HasPrefix(e.CAPEM(), []byte("-----BEGIN CERTIFICATE-----")) {
		t.Error("CAPEM is not a PEM certificate")
	}
	// Without the emulator's CA a client refuses the emulator.
	_, err := (&http.Client{Transport: &http.Transport{DialContext: e.DialContext}}).Get("https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration")
	if err == nil {
		t.Error("system roots trusted the emulator")
	}
}

func TestClose(t *testing.T) {
	e, err := Start(Options{Latency: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tr := transport(t, e)
	done := make(chan error, 1)
	go func() {
		_, err := (&http.Client{Transport: tr}).Get(e.AuthorityHost() + "common/v2.0/.well-known/openid-configuration")
		done <- err
	}()
	// Close once the request is in its handler (the emulator counted it), where
	// the hour of latency holds it until Close wakes it.
	deadline := time.Now().Add(10 * time.Second)
	for e.Stats().Requests == 0 {
		select {
		case err := <-done:
			t.Fatalf("the request ended before it reached the emulator: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the request did not reach the emulator within 10s")
		}
		time.Sleep(time.Millisecond)
	}
	begin := time.Now()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := <-done; err == nil {
		t.Error("in-flight request succeeded after Close")
	}
	if c, err := net.DialTimeout("tcp", e.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("listener still open after Close")
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	tr.CloseIdleConnections()
}
