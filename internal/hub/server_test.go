package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testcert"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// fixture is a hub Server over real TLS on 127.0.0.1, with the real vaults
// package against the Key Vault emulator (the hub's identity granted list
// only), and a fake API server for TokenReviews and pods.
type fixture struct {
	emu     *emulator.Emulator
	hubID   string
	rv      *reviewer
	srv     *Server
	url     string
	client  *http.Client
	reg     *prometheus.Registry
	stop    context.CancelFunc
	served  chan error
	tokens  map[string]string // name -> bearer token
	version map[string]string // secret -> its first version
	kube    *fake.Clientset   // the fake API server
	caPEM   []byte            // the CA of the hub's serving certificate
	orders  *corev1.Pod       // the pod of the "orders" token
}

const (
	fixtureVault  = "ordersvault"
	fixtureVault2 = "deniedvault"
)

func newFixture(t testing.TB, opts Options) *fixture {
	t.Helper()
	emu, err := emulator.Start(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	f := &fixture{emu: emu, hubID: "0d7a6c41-0000-4f5e-9c8e-4b5d0f0a1b2c", reg: prometheus.NewRegistry(), tokens: map[string]string{}, version: map[string]string{}}
	for _, v := range []string{fixtureVault, fixtureVault2} {
		if err := emu.AddVault(v, emulator.VaultOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := emu.Grant(fixtureVault, f.hubID, emulator.PermList); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"API-KEY", "DB-PASSWORD", "OLD"} {
		f.version[s] = emu.SetSecret(fixtureVault, s, "value-of-"+s)
	}
	emu.SetSecret(fixtureVault2, "API-KEY", "denied-value")

	// The hub's Key Vault client, built as cmd/hub builds it.
	dir := t.TempDir()
	ca := filepath.Join(dir, "emulator-ca.pem")
	tokenFile := filepath.Join(dir, "azure-identity-token")
	enc := base64.RawURLEncoding.EncodeToString
	assertion := enc([]byte(`{"alg":"RS256"}`)) + "." + enc(fmt.Appendf(nil, `{"iss":"https://issuer.test/","sub":"system:serviceaccount:kvinject-system:kvinject-hub","aud":["api://AzureADTokenExchange"],"exp":%d}`, time.Now().Add(time.Hour).Unix())) + ".c2ln"
	for file, b := range map[string][]byte{ca: emu.CAPEM(), tokenFile: []byte(assertion)} {
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: f.hubID, Issuer: "https://issuer.test/", Subject: "system:serviceaccount:kvinject-system:kvinject-hub"}); err != nil {
		t.Fatal(err)
	}
	env := agent.Env{ClientID: f.hubID, TenantID: emu.TenantID(), TokenFile: tokenFile, TestCAFile: ca,
		TestResolve: "login.microsoftonline.com=" + emu.Addr() + ",*.vault.azure.net=" + emu.Addr()}
	quiet := slog.New(slog.DiscardHandler)
	testLog := slog.New(slog.DiscardHandler)
	if os.Getenv("HUB_TEST_LOG") != "" {
		testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	vh, err := vaults.New(vaults.Options{
		Logger: testLog,
		Client: func(u string) (*azsecrets.Client, error) {
			c, err := agent.NewClients(u, agentconfig.IdentityWorkload, env, policy.RetryOptions{MaxRetries: -1}, quiet)
			if err != nil {
				return nil, err
			}
			t.Cleanup(c.Transport.CloseIdleConnections)
			return c.Secrets, nil
		},
		SweepInterval: 200 * time.Millisecond,
		Registerer:    f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}

	// The fake API server: two injected pods, tokens for them.
	orders := injectedPod(t, map[string]string{
		mapping.AnnotationVault:    fixtureVault,
		mapping.AnnotationSecrets:  "api.txt=API-KEY, db.txt=DB-PASSWORD, old.txt=OLD@" + f.version["OLD"] + ", tls.pem=cert:SERVER-CERT, jwt.pem=key:SIGNING",
		mapping.AnnotationRotation: "1m",
	}, mutate.Config{NativeSidecars: true})
	denied := injectedPod(t, map[string]string{
		mapping.AnnotationVault: fixtureVault2, mapping.AnnotationSecrets: "api.txt=API-KEY", mapping.AnnotationRotation: "1m",
	}, mutate.Config{NativeSidecars: true})
	denied.Name, denied.UID = "denied", "u-denied"
	exp := time.Now().Add(10 * time.Minute).Unix()
	bound := func(pod *corev1.Pod, uid string) authenticationv1.TokenReviewStatus {
		return authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{hubapi.Audience}, User: podUser(pod.Namespace, pod.Spec.ServiceAccountName, pod.Name, uid)}
	}
	f.rv = &reviewer{tokens: map[string]authenticationv1.TokenReviewStatus{}}
	for name, st := range map[string]authenticationv1.TokenReviewStatus{
		"orders":   bound(orders, string(orders.UID)),
		"denied":   bound(denied, string(denied.UID)),
		"replaced": bound(orders, "u-of-a-deleted-pod"),
		"not-pod":  {Authenticated: true, Audiences: []string{hubapi.Audience}, User: podUser("shop", "app", "", "")},
		"wrong":    {Authenticated: false, Error: "token audiences don't match"},
	} {
		f.tokens[name] = jwt(fmt.Sprintf(`{"sub":%q,"exp":%d}`, name, exp))
		f.rv.tokens[f.tokens[name]] = st
	}
	f.tokens["expiring"] = jwt(fmt.Sprintf(`{"exp":%d}`, time.Now().Add(2*time.Second).Unix()))
	f.rv.tokens[f.tokens["expiring"]] = bound(orders, string(orders.UID))
	kube := f.rv.clientset()
	f.kube = kube
	if err := kube.Tracker().Add(orders); err != nil {
		t.Fatal(err)
	}
	if err := kube.Tracker().Add(denied); err != nil {
		t.Fatal(err)
	}

	opts.Kube, opts.Vaults, opts.Registerer = kube, vh, f.reg
	if opts.Logger == nil {
		opts.Logger = testLog
	}
	if f.srv, err = NewServer(opts); err != nil {
		t.Fatal(err)
	}

	sc, err := testcert.New("hub test CA", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := sc.Cert, sc.Pool
	f.caPEM, f.orders = sc.CAPEM, orders
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.url = "https://" + ln.Addr().String() + hubapi.WatchPath
	ctx, cancel := context.WithCancel(context.Background())
	f.stop = cancel
	f.served = make(chan error, 1)
	vhDone := make(chan error, 1)
	go func() { vhDone <- vh.Run(ctx) }()
	go func() {
		f.served <- f.srv.Serve(ctx, ln, TLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }))
	}()
	t.Cleanup(func() {
		cancel()
		<-f.served
		<-vhDone
	})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	f.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	return f
}

// answer is a decoded answer of the hub.
type answer struct {
	status  int
	header  http.Header
	changed []hubapi.Object
	poll    []hubapi.Polled
	refusal *hubapi.Refusal
	took    time.Duration
	reused  bool
	closed  bool
}

// watch posts a watch request with the named token ("" sends none).
func (f *fixture) watch(t *testing.T, ctx context.Context, token string, vault string, objs ...hubapi.Object) answer {
	t.Helper()
	body, _ := json.Marshal(hubapi.WatchRequest{Vault: vault, Objects: objs})
	var a answer
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { a.reused = i.Reused }})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+f.tokens[token])
	}
	start := time.Now()
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer resp.Body.Close()
	a.took, a.status, a.header, a.closed = time.Since(start), resp.StatusCode, resp.Header, resp.Close
	if resp.StatusCode == http.StatusOK {
		var wr hubapi.WatchResponse
		if err := json.NewDecoder(resp.Body).Decode(&wr); err != nil {
			t.Fatalf("decoding the answer: %v", err)
		}
		a.changed, a.poll = wr.Changed, wr.Poll
	} else {
		a.refusal = hubapi.ReadRefusal(resp)
	}
	return a
}

// waitHeld waits (at most 10 s) until the server holds n watches.
func (f *fixture) waitHeld(n float64) {
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(f.srv.metrics.held) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

func secretAt(name, version string) hubapi.Object {
	return hubapi.Object{Kind: hubapi.KindSecret, Name: name, Version: version}
}

const vaultURL = "https://" + fixtureVault + ".vault.azure.net/"

func TestServeAnswersAChange(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	// Key Vault's timestamps are whole seconds, and of two versions created
	// in the same second the hub keeps the one it saw first: change later.
	go func() {
		time.Sleep(1500 * time.Millisecond)
		f.emu.SetSecret(fixtureVault, "API-KEY", "value-2")
	}()
	a := f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]), secretAt("DB-PASSWORD", f.version["DB-PASSWORD"]))
	newest, _ := f.emu.Secret(fixtureVault, "API-KEY")
	if a.status != http.StatusOK || len(a.changed) != 1 || a.changed[0] != secretAt("API-KEY", newest.Version) {
		t.Fatalf("answer %d %+v %v, want API-KEY@%s", a.status, a.changed, a.refusal, newest.Version)
	}
	if a.took < 1400*time.Millisecond {
		t.Errorf("answered after %v, before the change", a.took)
	}
	if got := a.header.Get(hubapi.MaxWaitHeader); got != "2m6s" {
		t.Errorf("%s: %q, want 2m6s (the wait, its jitter, and the hold of a paced change)", hubapi.MaxWaitHeader, got)
	}
	// An agent that still holds the old version hears of the new one at once.
	a = f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
	if a.status != http.StatusOK || len(a.changed) != 1 || a.took > 5*time.Second {
		t.Errorf("old version: %d %+v after %v", a.status, a.changed, a.took)
	}
	if n := f.emu.ValueReads(f.hubID); n != 0 {
		t.Errorf("the hub's identity read %d values", n)
	}
	if testutil.ToFloat64(f.srv.metrics.requests.WithLabelValues(resultChanged)) != 2 {
		t.Errorf("changed answers counted %v", testutil.ToFloat64(f.srv.metrics.requests.WithLabelValues(resultChanged)))
	}
}

// TestServePollsKindsNotWatched: a hub that watches secrets only answers a
// request with the pod's certificate and key at once, 200, with them to poll;
// they are authorized first like secrets.
func TestServePollsKindsNotWatched(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	other := "0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name     string
		token    string
		objs     []hubapi.Object
		status   int
		wantPoll []string
		reason   string
	}{
		{"certificate and key of the pod", "orders", []hubapi.Object{secretAt("API-KEY", f.version["API-KEY"]),
			{Kind: hubapi.KindCertificate, Name: "SERVER-CERT", Version: other}, {Kind: hubapi.KindKey, Name: "signing", Version: other}},
			http.StatusOK, []string{"certificate/SERVER-CERT", "key/signing"}, ""},
		{"a certificate of another pod", "denied", []hubapi.Object{{Kind: hubapi.KindCertificate, Name: "SERVER-CERT", Version: other}},
			http.StatusForbidden, nil, hubapi.ReasonNotPodObject},
		{"a secret named as a certificate", "orders", []hubapi.Object{{Kind: hubapi.KindCertificate, Name: "API-KEY", Version: other}},
			http.StatusForbidden, nil, hubapi.ReasonNotPodObject},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vault := vaultURL
			if tc.token == "denied" {
				vault = "https://" + fixtureVault2 + ".vault.azure.net/"
			}
			a := f.watch(t, context.Background(), tc.token, vault, tc.objs...)
			if a.status != tc.status || (a.refusal != nil && a.refusal.Reason != tc.reason) {
				t.Fatalf("answer %d %v, want %d %s", a.status, a.refusal, tc.status, tc.reason)
			}
			if a.took > 5*time.Second {
				t.Errorf("answered after %v, want at once", a.took)
			}
			var got []string
			for _, p := range a.poll {
				got = append(got, p.Kind+"/"+p.Name)
				if p.Reason != hubapi.PollKindNotWatched || !strings.Contains(p.Message, "--watch-kinds") || p.RetryAfterSeconds <= 0 {
					t.Errorf("poll %+v, want %s naming --watch-kinds, with a retry", p, hubapi.PollKindNotWatched)
				}
			}
			if !slices.Equal(got, tc.wantPoll) || len(a.changed) != 0 {
				t.Errorf("poll %v changed %v, want poll %v and nothing changed", got, a.changed, tc.wantPoll)
			}
		})
	}
}

func TestServeWaitEnds(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Second})
	a := f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
	if a.status != http.StatusOK || len(a.changed) != 0 {
		t.Fatalf("answer %d %+v %v, want 200 and nothing changed", a.status, a.changed, a.refusal)
	}
	if a.took < 850*time.Millisecond || a.took > 3*time.Second {
		t.Errorf("held %v, want about the 1s wait (+-10%%)", a.took)
	}
	// A token that expires in 2 s is held no longer than that.
	f2 := newFixture(t, Options{MaxWait: time.Minute})
	a = f2.watch(t, context.Background(), "expiring", vaultURL, secretAt("API-KEY", f2.version["API-KEY"]))
	if a.status != http.StatusOK || a.took > 4*time.Second {
		t.Errorf("expiring token: %d %v after %v, want 200 by its expiry", a.status, a.refusal, a.took)
	}
}

func TestServeRefusals(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	api := func(v string) hubapi.Object { return secretAt("API-KEY", v) }
	tests := []struct {
		name      string
		token     string
		vault     string
		objs      []hubapi.Object
		status    int
		reason    string
		inMessage string
	}{
		{"no token", "", vaultURL, []hubapi.Object{api(f.version["API-KEY"])}, 401, hubapi.ReasonUnauthenticated, "no bearer token"},
		{"token refused by the API server", "wrong", vaultURL, []hubapi.Object{api(f.version["API-KEY"])}, 401, hubapi.ReasonUnauthenticated, "did not accept the token"},
		{"token of no pod", "not-pod", vaultURL, []hubapi.Object{api(f.version["API-KEY"])}, 401, hubapi.ReasonNotAPod, "not bound to a pod"},
		{"pod replaced", "replaced", vaultURL, []hubapi.Object{api(f.version["API-KEY"])}, 403, hubapi.ReasonPodMismatch, "deleted and replaced"},
		{"another pod's objects", "denied", vaultURL, []hubapi.Object{api(f.version["API-KEY"])}, 403, hubapi.ReasonNotPodObject, "reads vault https://deniedvault.vault.azure.net/"},
		{"pinned object", "orders", vaultURL, []hubapi.Object{secretAt("OLD", f.version["OLD"])}, 403, hubapi.ReasonNotPodObject, `secret "OLD"`},
		{"made-up version", "orders", vaultURL, []hubapi.Object{api("00000000000000000000000000000000")}, 403, hubapi.ReasonUnknownVersion, "not a version"},
		{"another object's version", "orders", vaultURL, []hubapi.Object{api(f.version["DB-PASSWORD"])}, 403, hubapi.ReasonUnknownVersion, "not a version"},
		{"vault the hub may not list", "denied", "https://" + fixtureVault2 + ".vault.azure.net/", []hubapi.Object{api("00000000000000000000000000000000")}, 503, hubapi.ReasonVaultNotListable, ""},
		{"bad request", "orders", vaultURL, []hubapi.Object{{Kind: "cert", Name: "API-KEY", Version: f.version["API-KEY"]}}, 400, hubapi.ReasonBadRequest, `kind "cert"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(f.srv.metrics.refusals.WithLabelValues(tc.reason))
			a := f.watch(t, context.Background(), tc.token, tc.vault, tc.objs...)
			if a.status != tc.status || a.refusal == nil || a.refusal.Reason != tc.reason || !strings.Contains(a.refusal.Message, tc.inMessage) {
				t.Fatalf("answer %d %+v, want %d %s containing %q", a.status, a.refusal, tc.status, tc.reason, tc.inMessage)
			}
			if got := testutil.ToFloat64(f.srv.metrics.refusals.WithLabelValues(tc.reason)); got != before+1 {
				t.Errorf("kvinject_hub_refusals_total{reason=%s} went from %v to %v", tc.reason, before, got)
			}
			if tc.status == 503 {
				if ra, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || ra < 1 {
					t.Errorf("Retry-After %q", a.header.Get("Retry-After"))
				}
			}
			for _, tok := range f.tokens {
				if strings.Contains(a.refusal.Message, tok) {
					t.Error("the refusal contains a token")
				}
			}
		})
	}
	// Wrong method.
	resp, err := f.client.Get(f.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", resp.StatusCode)
	}
	if n := f.emu.ValueReads(f.hubID); n != 0 {
		t.Errorf("the hub's identity read %d values", n)
	}
}

func TestServeRecyclesOldConnections(t *testing.T) {
	for _, tc := range []struct {
		age       time.Duration
		wantClose bool
	}{{time.Hour, false}, {time.Millisecond, true}} {
		f := newFixture(t, Options{MaxWait: 200 * time.Millisecond, MaxConnectionAge: tc.age})
		first := f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
		second := f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
		if first.status != 200 || second.status != 200 {
			t.Fatalf("age %v: answers %d, %d", tc.age, first.status, second.status)
		}
		if first.closed != tc.wantClose || second.reused == tc.wantClose {
			t.Errorf("max age %v: Connection: close %v, next request reused the connection %v; want close %v", tc.age, first.closed, second.reused, tc.wantClose)
		}
	}
}

func TestServeDrainsHeldWatches(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	done := make(chan answer, 1)
	go func() {
		done <- f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
	}()
	f.waitHeld(1)
	if f.srv.Ready(nil) != nil {
		t.Errorf("not ready while serving: %v", f.srv.Ready(nil))
	}
	f.stop()
	a := <-done
	if a.status != http.StatusServiceUnavailable || a.refusal.Reason != hubapi.ReasonUnavailable || !a.closed {
		t.Fatalf("held watch at shutdown: %d %+v (Connection: close %v), want 503 Unavailable", a.status, a.refusal, a.closed)
	}
	if ra, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || ra < 1 || ra > 6 {
		t.Errorf("Retry-After %q, want a few seconds", a.header.Get("Retry-After"))
	}
	if err := <-f.served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	f.served <- nil // for the cleanup
	if f.srv.Ready(nil) == nil {
		t.Error("ready while draining")
	}
}

// serveGoroutines counts the goroutines that a watch held by net/http keeps:
// the hub's handler, and the connection's background read.
func serveGoroutines() int {
	buf := make([]byte, 1<<22)
	stacks := string(buf[:runtime.Stack(buf, true)])
	n := 0
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "net/http.(*connReader).backgroundRead") || strings.Contains(g, "hub.(*Server).ServeHTTP") {
			n++
		}
	}
	return n
}

// TestServeParksHeldWatches: a held watch keeps no goroutine (its connection
// is parked), is answered when its secret changes, and its connection then
// serves the agent's next watch.
func TestServeParksHeldWatches(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	const n = 8
	answers := make(chan answer, n)
	for range n {
		go func() {
			answers <- f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
		}()
	}
	f.waitHeld(n)
	if got := testutil.ToFloat64(f.srv.metrics.held); got != n {
		t.Fatalf("held %v watches, want %d", got, n)
	}
	if g := serveGoroutines(); g != 0 {
		t.Errorf("%d net/http or handler goroutines while %d watches are held, want 0 (parked)", g, n)
	}
	time.Sleep(1100 * time.Millisecond) // a new version in a later second than the first
	newest := f.emu.SetSecret(fixtureVault, "API-KEY", "value-2")
	for range n {
		a := <-answers
		if a.status != http.StatusOK || len(a.changed) != 1 || a.changed[0] != secretAt("API-KEY", newest) {
			t.Fatalf("answer %d %+v %v, want API-KEY@%s", a.status, a.changed, a.refusal, newest)
		}
		if a.closed {
			t.Error("a young connection was closed after the answer")
		}
	}
	if got := testutil.ToFloat64(f.srv.metrics.held); got != 0 {
		t.Errorf("held %v after the answers", got)
	}
	// The next watch comes on a connection the server took back.
	a := f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", "0000000000000000000000000000dead"))
	if !a.reused || a.status != http.StatusForbidden || a.refusal.Reason != hubapi.ReasonUnknownVersion {
		t.Errorf("next watch: reused %v, %d %+v; want a reused connection and UnknownVersion", a.reused, a.status, a.refusal)
	}
}

// TestServeDrainAnswersParkedWatches: Drain answers parked watches at once
// with 503 Unavailable, Retry-After and Connection: close.
func TestServeDrainAnswersParkedWatches(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	done := make(chan answer, 1)
	go func() {
		done <- f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
	}()
	f.waitHeld(1)
	f.srv.Drain()
	a := <-done
	if a.status != http.StatusServiceUnavailable || a.refusal.Reason != hubapi.ReasonUnavailable || !a.closed ||
		!strings.Contains(a.refusal.Message, "shutting down") || a.took > 5*time.Second {
		t.Fatalf("parked watch at Drain: %d %+v (Connection: close %v) after %v, want 503 Unavailable at once", a.status, a.refusal, a.closed, a.took)
	}
	if ra, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || ra < 1 || ra > 6 {
		t.Errorf("Retry-After %q, want a few seconds", a.header.Get("Retry-After"))
	}
}

// TestServeVaultEndAnswersParkedWatches: when the hub loses list on the vault,
// its parked watches are answered with 503 VaultNotListable (the agents then
// poll).
func TestServeVaultEndAnswersParkedWatches(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Minute})
	done := make(chan answer, 1)
	go func() {
		done <- f.watch(t, context.Background(), "orders", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
	}()
	f.waitHeld(1)
	if err := f.emu.Revoke(fixtureVault, f.hubID, emulator.PermList); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.status != http.StatusServiceUnavailable || a.refusal.Reason != hubapi.ReasonVaultNotListable || a.took > 10*time.Second {
		t.Fatalf("parked watch when the vault became not listable: %d %+v after %v, want 503 VaultNotListable", a.status, a.refusal, a.took)
	}
	if got := testutil.ToFloat64(f.srv.metrics.refusals.WithLabelValues(hubapi.ReasonVaultNotListable)); got != 1 {
		t.Errorf("VaultNotListable refusals counted %v, want 1", got)
	}
}

// TestServeHoldsWhereItCannotPark: over HTTP/2 (a handler outside Serve)
// the connection cannot be taken, and the handler holds the watch itself: it
// is answered at the end of its wait, and a client that leaves is counted.
func TestServeHoldsWhereItCannotPark(t *testing.T) {
	f := newFixture(t, Options{MaxWait: 500 * time.Millisecond})
	ts := httptest.NewUnstartedServer(f.srv)
	ts.EnableHTTP2 = true
	ts.StartTLS()
	defer ts.Close()
	post := func(ctx context.Context) (*http.Response, error) {
		body, _ := json.Marshal(hubapi.WatchRequest{Vault: vaultURL, Objects: []hubapi.Object{secretAt("API-KEY", f.version["API-KEY"])}})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+hubapi.WatchPath, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+f.tokens["orders"])
		return ts.Client().Do(req)
	}
	resp, err := post(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK || resp.Header.Get(hubapi.MaxWaitHeader) == "" {
		t.Fatalf("HTTP/%d %d (%s %q), want HTTP/2 200 with the wait's bound", resp.ProtoMajor, resp.StatusCode, hubapi.MaxWaitHeader, resp.Header.Get(hubapi.MaxWaitHeader))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := post(ctx); err == nil {
		t.Fatal("a watch answered before its wait ended")
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(f.srv.metrics.requests.WithLabelValues(resultClientGone)) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(f.srv.metrics.requests.WithLabelValues(resultClientGone)); got != 1 {
		t.Errorf("client_gone counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.srv.metrics.held); got != 0 {
		t.Errorf("held %v after the client left", got)
	}
}

// TestServeEntryVaults: a pod whose entries read a second vault (vault=)
// may watch the objects of each vault at that vault, and nothing else.
func TestServeEntryVaults(t *testing.T) {
	f := newFixture(t, Options{MaxWait: time.Second})
	multi := injectedPod(t, map[string]string{
		mapping.AnnotationVault:    fixtureVault2,
		mapping.AnnotationSecrets:  "api.txt=API-KEY, orders-api.txt=API-KEY;vault=" + fixtureVault,
		mapping.AnnotationRotation: "1m",
	}, mutate.Config{NativeSidecars: true})
	multi.Name, multi.UID = "multi", "u-multi"
	if err := f.kube.Tracker().Add(multi); err != nil {
		t.Fatal(err)
	}
	f.tokens["multi"] = jwt(fmt.Sprintf(`{"sub":"multi","exp":%d}`, time.Now().Add(10*time.Minute).Unix()))
	f.rv.tokens[f.tokens["multi"]] = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{hubapi.Audience},
		User: podUser(multi.Namespace, multi.Spec.ServiceAccountName, multi.Name, string(multi.UID))}

	a := f.watch(t, context.Background(), "multi", vaultURL, secretAt("API-KEY", f.version["API-KEY"]))
	if a.status != http.StatusOK || len(a.changed) != 0 {
		t.Fatalf("watch of the entry's vault: %d %+v %+v, want 200 without a change", a.status, a.changed, a.refusal)
	}
	for _, tc := range []struct {
		name, vault string
		obj         hubapi.Object
		inMessage   string
	}{
		{"the other vault's object", vaultURL, secretAt("DB-PASSWORD", f.version["DB-PASSWORD"]), `does not read secret "DB-PASSWORD" of ` + vaultURL},
		{"a vault no entry reads", "https://thirdvault.vault.azure.net/", secretAt("API-KEY", f.version["API-KEY"]),
			"reads vaults https://" + fixtureVault2 + ".vault.azure.net/, " + vaultURL + ", not https://thirdvault.vault.azure.net/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := f.watch(t, context.Background(), "multi", tc.vault, tc.obj)
			if a.status != http.StatusForbidden || a.refusal == nil || a.refusal.Reason != hubapi.ReasonNotPodObject || !strings.Contains(a.refusal.Message, tc.inMessage) {
				t.Fatalf("answer %d %+v, want 403 %s containing %q", a.status, a.refusal, hubapi.ReasonNotPodObject, tc.inMessage)
			}
		})
	}
}
