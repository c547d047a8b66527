package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// The hub client's tests: the agent runs in-process against the Key Vault
// emulator and fakeHub, an httptest TLS server that speaks the hubapi
// protocol as the real hub does (the real hub is tested end to end in
// test/integration). Counts of reads come from the emulator's request log.

// hubHost is the hub's Service name; KVINJECT_TEST_RESOLVE points it at the
// test server, whose certificate names it.
const hubHost = "kvinject-hub.kvinject-system.svc"

// Log messages of the hub client.
const (
	msgSource       = "rotation source"
	msgSafety       = "safety re-read"
	msgLagRetry     = "Key Vault still serves the version held; reading again"
	msgStuck        = "Key Vault still serves the version held of a secret the hub reported changed; asking the hub again later"
	msgReadFailed   = "read failed; keeping the last good set"
	hubTestRotation = 200 * time.Millisecond
)

// hubRequest is a watch request the fake hub received.
type hubRequest struct {
	auth string
	body hubapi.WatchRequest
	at   time.Time
}

// fakeHub is a version hub for one vault of the emulator: it holds each
// watch request until an object's published newest version differs from the
// one held, or until its maximum wait ends, and refuses what the real hub
// refuses (a missing or wrong token, another vault, an object it was not
// told about, a version that is not one of the object's).
type fakeHub struct {
	t      *testing.T
	h      *harness
	srv    *httptest.Server
	caPEM  []byte
	closed chan struct{}

	mu      sync.Mutex
	newest  map[string]string // [vault URL "|", except the pod's] kind/lower-case name -> newest enabled version
	vaults  map[string]string // the vaults it watches: URL -> the emulator's vault name
	kinds   map[string]bool   // the kinds it watches (default secrets); others are answered to poll
	old     bool              // refuse other kinds as a hub that watches secrets only did (BadRequest)
	retry   int               // RetryAfterSeconds of its poll answers
	token   string            // the token it accepts; "" accepts any
	refuse  *hubapi.Refusal
	status  int
	garbage bool // answer 200 with a body that is not a watch response
	recycle bool // close the connection after each answer, as the real hub does once it is old
	maxWait time.Duration
	wake    chan struct{}
	reqs    []hubRequest
	conns   int // connections accepted
	// reports are the reports of swapped sets (hubapi.ChangedPath) received;
	// reportAnswers are the statuses of the next answers (then 204).
	reports       []hubReport
	reportAnswers []int
}

// newHub starts a fake hub for h's vault and sets the agent's environment
// the way the webhook does with --hub-url (token file, CA), plus the
// test-only dialing of the hub's name. It returns the hub and the token file.
func (h *harness) newHub() (*fakeHub, *tokenDir) {
	h.t.Helper()
	caPEM, cert := hubCertificate(h.t, hubHost)
	f := &fakeHub{t: h.t, h: h, caPEM: caPEM, closed: make(chan struct{}), newest: map[string]string{},
		vaults: map[string]string{h.vaultURL(): h.vault}, kinds: map[string]bool{hubapi.KindSecret: true}, retry: 3600, maxWait: time.Minute, wake: make(chan struct{})}
	f.srv = httptest.NewUnstartedServer(f)
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	f.srv.EnableHTTP2 = true
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted case's handshake errors
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.mu.Lock()
			f.conns++
			f.mu.Unlock()
		}
	}
	f.srv.StartTLS()
	h.t.Cleanup(func() {
		close(f.closed)
		f.srv.Close()
	})
	tok := &tokenDir{t: h.t, dir: h.t.TempDir()}
	first := "hub-token-" + randHex(16)
	h.secretish(first)
	tok.write(first)
	h.env[agentconfig.EnvHubCA] = string(caPEM)
	h.env[agentconfig.EnvHubTokenFile] = tok.path()
	h.env[agentconfig.EnvTestResolve] += "," + hubHost + "=" + f.srv.Listener.Addr().String()
	return f, tok
}

// hubCertificate makes a CA and a serving certificate for host.
func hubCertificate(t *testing.T, host string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kvinject-hub-ca"},
		NotBefore: now, NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: now, NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}
}

// hubConfig is h.config for a sidecar that watches the fake hub.
func (h *harness) hubConfig(entries ...agentconfig.Entry) agentconfig.Config {
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, entries...)
	cfg.Rotation = hubTestRotation
	cfg.Hub = "https://" + hubHost
	return cfg
}

// hubOptions are h.options with quick hub backoffs and no safety re-read.
func (h *harness) hubOptions() agent.Options {
	o := h.options()
	o.HubMinBackoff = 20 * time.Millisecond
	o.HubMaxBackoff = 100 * time.Millisecond
	o.SafetyInterval = time.Hour
	return o
}

func (f *fakeHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	refuse := func(status int, reason, msg string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(hubapi.Refusal{Reason: reason, Message: msg})
	}
	if r.URL.Path == hubapi.ChangedPath && r.Method == http.MethodPost {
		f.serveChanged(w, r)
		return
	}
	if r.URL.Path != hubapi.WatchPath || r.Method != http.MethodPost {
		refuse(http.StatusNotFound, hubapi.ReasonBadRequest, "POST "+hubapi.WatchPath+" only")
		return
	}
	var req hubapi.WatchRequest
	decodeErr := json.NewDecoder(http.MaxBytesReader(w, r.Body, hubapi.MaxRequestBytes)).Decode(&req)
	f.mu.Lock()
	f.reqs = append(f.reqs, hubRequest{auth: r.Header.Get("Authorization"), body: req, at: time.Now()})
	token, refusal, status, garbage, maxWait, recycle := f.token, f.refuse, f.status, f.garbage, f.maxWait, f.recycle
	f.mu.Unlock()
	if refusal != nil {
		refuse(status, refusal.Reason, refusal.Message)
		return
	}
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); !ok || got == "" || (token != "" && got != token) {
		refuse(http.StatusUnauthorized, hubapi.ReasonUnauthenticated, "the token was not accepted")
		return
	}
	if decodeErr != nil || len(req.Objects) == 0 || len(req.Objects) > hubapi.MaxObjects {
		refuse(http.StatusBadRequest, hubapi.ReasonBadRequest, "not a watch request")
		return
	}
	f.mu.Lock()
	vaultName, ok := f.vaults[req.Vault]
	f.mu.Unlock()
	if !ok {
		refuse(http.StatusForbidden, hubapi.ReasonNotPodObject, "the pod does not read this vault")
		return
	}
	f.mu.Lock()
	var poll []hubapi.Polled
	for _, o := range req.Objects {
		if f.old && o.Kind != hubapi.KindSecret {
			f.mu.Unlock()
			refuse(http.StatusBadRequest, hubapi.ReasonBadRequest, "objects[0]: kind \""+o.Kind+"\": the hub watches secrets only")
			return
		}
		if !f.kinds[o.Kind] {
			poll = append(poll, hubapi.Polled{Kind: o.Kind, Name: o.Name, Reason: hubapi.PollKindNotWatched,
				Message: "the fake hub does not watch " + o.Kind + "s", RetryAfterSeconds: f.retry})
		}
	}
	if len(poll) > 0 {
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(hubapi.WatchResponse{Poll: poll})
		return
	}
	for _, o := range req.Objects {
		_, watched := f.newest[f.key(req.Vault, o.Kind, o.Name)]
		if !watched {
			f.mu.Unlock()
			refuse(http.StatusForbidden, hubapi.ReasonNotPodObject, "the pod does not read "+o.Name)
			return
		}
		known := slices.ContainsFunc(f.h.versionsIn(vaultName, o.Kind, o.Name), func(v string) bool { return strings.EqualFold(v, o.Version) })
		if !known {
			f.mu.Unlock()
			refuse(http.StatusForbidden, hubapi.ReasonUnknownVersion, "not a version of "+o.Name)
			return
		}
	}
	f.mu.Unlock()
	w.Header().Set(hubapi.MaxWaitHeader, maxWait.String())
	w.Header().Set("Content-Type", "application/json")
	if recycle {
		w.Header().Set("Connection", "close") // HTTP/2: GOAWAY once the answer is sent
	}
	if garbage {
		_, _ = w.Write([]byte("<html>not json</html>"))
		return
	}
	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	for {
		var changed []hubapi.Object
		f.mu.Lock()
		for _, o := range req.Objects {
			if n := f.newest[f.key(req.Vault, o.Kind, o.Name)]; !strings.EqualFold(n, o.Version) {
				changed = append(changed, hubapi.Object{Kind: o.Kind, Name: o.Name, Version: n})
			}
		}
		wake := f.wake
		f.mu.Unlock()
		if len(changed) > 0 {
			_ = json.NewEncoder(w).Encode(hubapi.WatchResponse{Changed: changed})
			return
		}
		select {
		case <-wake:
		case <-timer.C:
			_ = json.NewEncoder(w).Encode(hubapi.WatchResponse{})
			return
		case <-r.Context().Done():
			return
		case <-f.closed:
			return
		}
	}
}

// key is the key of newest for an object of vault (a URL).
func (f *fakeHub) key(vault, kind, name string) string {
	k := kind + "/" + strings.ToLower(name)
	if vault != f.h.vaultURL() {
		k = vault + "|" + k
	}
	return k
}

// addVault makes the hub watch another vault of the emulator too.
func (f *fakeHub) addVault(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vaults["https://"+name+".vault.azure.net/"] = name
}

// followIn publishes the newest enabled version of each secret of another
// vault of the emulator.
func (f *fakeHub) followIn(vaultName string, names ...string) {
	for _, name := range names {
		var newest string
		for _, v := range f.h.emu.SecretVersions(vaultName, name) {
			if v.Enabled {
				newest = v.Version
			}
		}
		f.mu.Lock()
		f.newest[f.key("https://"+vaultName+".vault.azure.net/", hubapi.KindSecret, name)] = newest
		close(f.wake)
		f.wake = make(chan struct{})
		f.mu.Unlock()
	}
}

// publish sets the newest enabled version the hub reports for a secret.
func (f *fakeHub) publish(name, version string) {
	f.publishKind(hubapi.KindSecret, name, version)
}

// publishKind sets the newest version the hub reports for an object of kind.
func (f *fakeHub) publishKind(kind, name, version string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.newest[kind+"/"+strings.ToLower(name)] = version
	close(f.wake)
	f.wake = make(chan struct{})
}

// follow publishes the emulator's newest enabled version of each secret, as
// the hub's sweep does.
func (f *fakeHub) follow(names ...string) {
	for _, name := range names {
		var newest string
		for _, v := range f.h.emu.SecretVersions(f.h.vault, name) {
			if v.Enabled {
				newest = v.Version
			}
		}
		f.publish(name, newest)
	}
}

// followKind publishes the newest version of a certificate or key.
func (f *fakeHub) followKind(kind, name string) {
	vs := f.h.versionsOf(kind, name)
	f.publishKind(kind, name, vs[len(vs)-1])
}

// watchKinds sets the kinds the hub watches and the retry of its poll
// answers.
func (f *fakeHub) watchKinds(retry int, kinds ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kinds, f.retry = map[string]bool{}, retry
	for _, k := range kinds {
		f.kinds[k] = true
	}
}

// versionsOf returns the versions of an object of the emulator, oldest first.
func (h *harness) versionsOf(kind, name string) []string { return h.versionsIn(h.vault, kind, name) }

// versionsIn returns the versions of an object of a vault of the emulator.
func (h *harness) versionsIn(vault, kind, name string) []string {
	switch kind {
	case hubapi.KindCertificate:
		return h.emu.CertificateVersions(vault, name)
	case hubapi.KindKey:
		return h.emu.KeyVersions(vault, name)
	}
	var out []string
	for _, v := range h.emu.SecretVersions(vault, name) {
		out = append(out, v.Version)
	}
	return out
}

// refuseWith makes the hub refuse every request (nil: stop refusing).
func (f *fakeHub) refuseWith(status int, r *hubapi.Refusal) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse, f.status = r, status
}

func (f *fakeHub) setToken(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token = tok
}

func (f *fakeHub) setMaxWait(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maxWait = d
}

func (f *fakeHub) requests() []hubRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

// held returns the version of name a watch request held.
func (r hubRequest) held(name string) string {
	for _, o := range r.body.Objects {
		if strings.EqualFold(o.Name, name) {
			return o.Version
		}
	}
	return ""
}

// records returns the agent's log records with the message msg whose
// attributes include want, from byte from of the logs.
func (h *harness) records(from int, msg string, want map[string]string) []map[string]any {
	h.t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(h.logs.String()[from:], "\n") {
		if !strings.Contains(line, logMsg(msg)) {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			h.t.Fatalf("log record %s: %v", line, err)
		}
		ok := true
		for k, v := range want {
			if got, _ := rec[k].(string); got != v {
				ok = false
			}
		}
		if ok {
			out = append(out, rec)
		}
	}
	return out
}

// reads counts the emulator's successful gets of the secret, certificate or
// key path (e.g. "/secrets/a"), any version, from its request log.
type readLog struct{ buf *syncBuffer }

func newReadLog() (readLog, emulator.Options) {
	rl := readLog{buf: &syncBuffer{}}
	return rl, emulator.Options{Logger: slog.New(slog.NewJSONHandler(rl.buf, nil))}
}

func (rl readLog) count(path string) int {
	re := regexp.MustCompile("^" + regexp.QuoteMeta(path) + "(/[0-9a-f]*)?$")
	n := 0
	for _, line := range strings.Split(rl.buf.String(), "\n") {
		var rec struct {
			Method, Path string
			Status       int
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Method == http.MethodGet && rec.Status == 200 && re.MatchString(rec.Path) {
			n++
		}
	}
	return n
}

// startHubAgent writes secrets a and b, starts a sidecar that maps them
// (and extra entries) and watches hub, and waits for the first set and the
// first watch request.
func startHubAgent(t *testing.T, h *harness, hub *fakeHub, opts agent.Options, extra ...agentconfig.Entry) (cfg agentconfig.Config, stop func() error) {
	t.Helper()
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet, emulator.PermList, emulator.PermCertificatesGet, emulator.PermKeysGet); err != nil {
		t.Fatal(err)
	}
	// Created a minute ago: a later version is newer by its creation time,
	// which has whole seconds only (history entries order by it).
	a1 := "VALUE-a-" + randHex(12)
	h.secretish(a1)
	h.emu.SetSecret(h.vault, "a", a1, emulator.WithCreated(time.Now().Add(-time.Minute)))
	h.setSecret("b")
	hub.follow("a", "b")
	cfg = h.hubConfig(append([]agentconfig.Entry{{File: "a", Name: "a"}, {File: "b", Name: "b"}}, extra...)...)
	stop = h.runSidecar(cfg, opts)
	h.waitFor("the first set", 10*time.Second, func() bool { return atomicdir.Check(h.dir) == nil })
	return cfg, stop
}

// TestHubChangeReadsOnlyThatObject: a change the hub reports is read (that
// object only, once), swapped in as a whole set, and the next watch request
// holds the new version; nothing is polled meanwhile.
func TestHubChangeReadsOnlyThatObject(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	pinned, pv := h.setSecret("p")
	_, stop := startHubAgent(t, h, hub, h.hubOptions(), agentconfig.Entry{File: "p", Name: "p", Version: pv})
	h.waitFor("a watch request", 5*time.Second, func() bool { return len(hub.requests()) >= 1 })
	req := hub.requests()[0]
	if req.body.Vault != h.vaultURL() || len(req.body.Objects) != 2 || req.held("a") == "" || req.held("b") == "" || req.held("p") != "" {
		t.Fatalf("watch request %+v: want the vault and a and b (not the pinned p) with their versions", req.body)
	}
	// Several rotation intervals: nothing is read while the hub holds the request.
	time.Sleep(3 * hubTestRotation)
	readsA, readsB := rl.count("/secrets/a"), rl.count("/secrets/b")
	if readsA != 1 || readsB != 1 {
		t.Errorf("reads of a and b before the change: %d, %d; want 1 each (the first set only)", readsA, readsB)
	}
	before := atomicdir.Current(h.dir)
	mark := len(h.logs.String())

	a2, v2 := h.setSecret("a")
	hub.follow("a")
	h.waitFor("the new value of a", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	h.waitFor("the change in the logs", 5*time.Second, func() bool {
		return len(h.records(mark, msgChanged, map[string]string{"source": "hub", "trigger": "hub"})) == 1
	})
	h.waitFor("a watch request with the new version", 5*time.Second, func() bool {
		r := hub.requests()
		return strings.EqualFold(r[len(r)-1].held("a"), v2)
	})
	if got := rl.count("/secrets/a") - readsA; got != 1 {
		t.Errorf("the change was read %d times, want once", got)
	}
	if got := rl.count("/secrets/b") - readsB; got != 0 {
		t.Errorf("b was read %d times after the change of a, want 0", got)
	}
	if got := rl.count("/secrets/p"); got != 1 {
		t.Errorf("pinned p was read %d times, want once", got)
	}
	if atomicdir.Current(h.dir) == before || h.read("p") != pinned {
		t.Error("the set was not swapped, or the pinned file changed")
	}
	if n := len(h.records(0, msgChanged, nil)); n != 1 {
		t.Errorf("%d sets written, want 1", n)
	}
	if recs := h.records(0, msgSource, nil); len(recs) != 1 || recs[0]["source"] != "hub" {
		t.Errorf("rotation source records %v, want one: hub", recs)
	}
	if n := len(h.records(0, msgNoChange, nil)); n != 0 {
		t.Errorf("%d polls without a change; with the hub, want none", n)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestHubTokenReadEachRequest: every watch request carries the token file's
// current content; the kubelet's renewal is picked up without a restart. The
// hub closes the connection after each answer meanwhile (recycling), which
// is no failure.
func TestHubTokenReadEachRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, tok := h.newHub()
	hub.setMaxWait(time.Second) // the shortest the agent believes; answers come back empty
	hub.mu.Lock()
	hub.recycle = true
	hub.mu.Unlock()
	first := mustRead(t, tok.path())
	hub.setToken(first)
	startHubAgent(t, h, hub, h.hubOptions())
	h.waitFor("a watch request", 5*time.Second, func() bool { return len(hub.requests()) >= 1 })

	second := "hub-token-" + randHex(16)
	h.secretish(second)
	hub.setToken("") // any token, so that no request is refused during the swap
	tok.write(second)
	hub.setToken(second)
	h.waitFor("two requests with the new token", 10*time.Second, func() bool {
		n := 0
		for _, r := range hub.requests() {
			if r.auth == "Bearer "+second {
				n++
			}
		}
		return n >= 2
	})
	reqs := hub.requests()
	switched := false
	for i, r := range reqs {
		switch r.auth {
		case "Bearer " + first:
			if switched {
				t.Errorf("request %d carried the old token after the new one", i)
			}
		case "Bearer " + second:
			switched = true
		default:
			t.Errorf("request %d: Authorization %q is neither token", i, r.auth)
		}
	}
	if recs := h.records(0, msgSource, map[string]string{"source": "poll"}); len(recs) != 0 {
		t.Errorf("fell back to polling: %v", recs)
	}
	hub.mu.Lock()
	conns := hub.conns
	hub.mu.Unlock()
	if conns < 2 || conns > len(reqs) {
		t.Errorf("%d connections for %d requests: want a new one after each recycled answer", conns, len(reqs))
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestHubFallback: an untrusted certificate, a refusal, an answer that is not
// the protocol's and an unreachable hub each switch the rotation source to
// polling, logged once with the reason, and the watched secrets are then
// polled at the stretched interval (HubFallbackStretch x --rotation).
func TestHubFallback(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		break_ func(h *harness, hub *fakeHub)
		reason string
		errHas string
	}{
		{"untrusted certificate", func(h *harness, hub *fakeHub) {
			h.env[agentconfig.EnvHubCA] = string(h.emu.CAPEM()) // a CA, not the hub's
		}, "UntrustedCertificate", agentconfig.EnvHubCA},
		{"refused", func(h *harness, hub *fakeHub) {
			hub.refuseWith(http.StatusForbidden, &hubapi.Refusal{Reason: hubapi.ReasonNotPodObject, Message: "the pod's agent does not read b"})
		}, hubapi.ReasonNotPodObject, "the pod's agent does not read b"},
		{"bad answer", func(h *harness, hub *fakeHub) {
			hub.mu.Lock()
			hub.garbage = true
			hub.mu.Unlock()
		}, "BadAnswer", "not a watch response"},
		{"unreachable", func(h *harness, hub *fakeHub) {
			h.env[agentconfig.EnvTestResolve] += "," + hubHost + "=127.0.0.1:1"
		}, "ConnectionFailed", "cannot reach the hub"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rl, eopts := newReadLog()
			h := newHarness(t, eopts)
			hub, _ := h.newHub()
			tc.break_(h, hub)
			opts := h.hubOptions()
			opts.HubMaxBackoff = 200 * time.Millisecond
			start := time.Now()
			startHubAgent(t, h, hub, opts)
			h.waitFor("the switch to polling", 5*time.Second, func() bool {
				return len(h.records(0, msgSource, map[string]string{"source": "poll"})) > 0
			})
			switched := time.Now()
			sw := h.records(0, msgSource, map[string]string{"source": "poll"})[0]
			if sw["reason"] != tc.reason || !strings.Contains(sw["error"].(string), tc.errHas) || sw["pollEvery"] != "1s" {
				t.Errorf("switch record %v: want reason %s, an error with %q, pollEvery 1s", sw, tc.reason, tc.errHas)
			}
			polled := func() int {
				return len(h.records(0, msgNoChange, map[string]string{"source": "poll", "trigger": "poll"}))
			}
			h.waitFor("two stretched polls", 10*time.Second, func() bool { return polled() >= 2 })
			// Two polls at 5 x 200ms, the first spread over [0.5s, 1.5s) and
			// the next 1s (±10%) later, take at least 1.4s; at --rotation they
			// would take 0.4s. (Only a lower bound: a loaded machine is slow.)
			if d := time.Since(switched); d < 1300*time.Millisecond {
				t.Errorf("two polls within %s of the switch: not the stretched interval", d)
			}
			if got := rl.count("/secrets/a"); got < 3 || got > 1+polled()+1 {
				t.Errorf("a was read %d times: want the first set and one read per poll (%d)", got, polled())
			}
			// Once per switch, however many attempts failed.
			if n := len(h.records(0, msgSource, map[string]string{"source": "poll"})); n != 1 {
				t.Errorf("%d switches to polling logged, want 1", n)
			}
			if tc.name == "refused" {
				if n := len(hub.requests()); n < 5 || float64(n) > time.Since(start).Seconds()/0.01 {
					t.Errorf("%d attempts to reach the hub: want several, with backoff", n)
				}
			}
			if tc.name == "untrusted certificate" || tc.name == "unreachable" {
				if n := len(hub.requests()); n != 0 {
					t.Errorf("the hub got %d requests", n)
				}
			}
		})
	}
}

// TestHubBackPicksUpChange: while the hub is down the agent polls (at the
// stretched interval); when it is back, its first answer brings the version
// changed meanwhile at once, and the rotation source is the hub again.
func TestHubBackPicksUpChange(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	hub.refuseWith(http.StatusServiceUnavailable, &hubapi.Refusal{Reason: hubapi.ReasonUnavailable, Message: "shutting down"})
	opts := h.hubOptions()
	// --rotation 1s: the stretched poll (5s) cannot be what picks the change up.
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	_, v1 := h.setSecret("a")
	h.setSecret("b")
	hub.follow("a", "b")
	cfg := h.hubConfig(agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b"})
	cfg.Rotation = time.Second
	h.runSidecar(cfg, opts)
	h.waitFor("the switch to polling", 10*time.Second, func() bool {
		return len(h.records(0, msgSource, map[string]string{"source": "poll", "reason": hubapi.ReasonUnavailable})) == 1
	})
	a2, _ := h.setSecret("a")
	hub.follow("a")
	mark, logMark := len(hub.requests()), len(h.logs.String())
	back := time.Now()
	hub.refuseWith(0, nil)
	h.waitFor("the change", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	if d := time.Since(back); d > 3*time.Second {
		t.Errorf("the change took %s after the hub came back", d)
	}
	h.waitFor("the switch back", 5*time.Second, func() bool {
		return len(h.records(logMark, msgSource, map[string]string{"source": "hub", "hub": cfg.Hub})) == 1
	})
	h.waitFor("the change in the logs", 5*time.Second, func() bool { return len(h.records(0, msgChanged, nil)) > 0 })
	if recs := h.records(0, msgChanged, nil); len(recs) != 1 || recs[0]["source"] != "hub" || recs[0]["trigger"] != "hub" {
		t.Errorf("change records %v: want one, source hub, trigger hub", recs)
	}
	// The first request after the outage held the old version: the hub answered at once.
	reqs := hub.requests()[mark:]
	if len(reqs) == 0 || !strings.EqualFold(reqs[0].held("a"), v1) {
		t.Errorf("the first request after the outage did not hold the old version %s: %+v", v1, reqs)
	}
	if n := len(h.records(0, msgNoChange, map[string]string{"trigger": "poll"})); n != 0 {
		t.Errorf("%d stretched polls within the test: the interval is not stretched", n)
	}
}

// TestHubCertificatesPolled: certificates and keys, which the hub answers it
// does not watch, are polled every --rotation while the hub drives the
// secrets.
func TestHubCertificatesPolled(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	h.importCert("web-cert", "EC", nil)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := h.emu.SetKey(h.vault, "signing-key", k1.Public()); err != nil {
		t.Fatal(err)
	}
	startHubAgent(t, h, hub, h.hubOptions(), entry(t, "ca.crt=cert:web-cert"), entry(t, "signing.pub=key:signing-key"))
	first := h.read("ca.crt")
	h.waitFor("three polls of the certificate and key", 10*time.Second, func() bool {
		return len(h.records(0, msgNoChange, map[string]string{"source": "hub", "trigger": "rotation"})) >= 3
	})
	if c, k := rl.count("/certificates/web-cert"), rl.count("/keys/signing-key"); c < 4 || k < 4 {
		t.Errorf("certificate read %d times, key %d: want the first set and one per poll", c, k)
	}
	if a := rl.count("/secrets/a"); a != 1 {
		t.Errorf("secret a read %d times, want once: the hub watches it", a)
	}
	h.importCert("web-cert", "EC", nil)
	h.waitFor("the new certificate", 5*time.Second, func() bool { return h.read("ca.crt") != first })
	h.waitFor("the change in the logs", 5*time.Second, func() bool { return len(h.records(0, msgChanged, nil)) > 0 })
	if recs := h.records(0, msgChanged, map[string]string{"trigger": "rotation"}); len(recs) != 1 {
		t.Errorf("change records %v, want one by the rotation poll", recs)
	}
	reqs := hub.requests()
	if len(reqs[0].body.Objects) != 4 {
		t.Errorf("first watch request %+v: want the secrets, the certificate and the key", reqs[0].body)
	}
	if last := reqs[len(reqs)-1]; len(last.body.Objects) != 2 || last.held("web-cert") != "" {
		t.Errorf("watch request %+v after the hub's poll answer: want the secrets only", last.body)
	}
}

// TestHubSafetyReread: while the hub drives rotation, the whole set is read
// again every --safety-interval, which catches what the hub missed.
func TestHubSafetyReread(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	opts := h.hubOptions()
	opts.SafetyInterval = 300 * time.Millisecond
	startHubAgent(t, h, hub, opts)
	h.waitFor("two safety re-reads", 10*time.Second, func() bool { return len(h.records(0, msgSafety, nil)) >= 2 })
	recs := h.records(0, msgSafety, nil)
	if recs[0]["count"] != 1.0 || recs[1]["count"] != 2.0 || recs[0]["source"] != "hub" || recs[0]["objects"] != 2.0 {
		t.Errorf("safety records %v: want counts 1 and 2 of 2 objects, source hub", recs)
	}
	// The first set's read and one per safety re-read (logged before it reads).
	h.waitFor("the second safety re-read's read", 5*time.Second, func() bool { return rl.count("/secrets/a") >= 3 })
	// A change the hub does not report is picked up by the next one.
	a2, _ := h.setSecret("a")
	h.waitFor("the change", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	h.waitFor("the change in the logs", 5*time.Second, func() bool {
		return len(h.records(0, msgChanged, map[string]string{"trigger": "safety"})) == 1
	})
}

// TestHubReplicationLag: when Key Vault still serves the version held after
// the hub reported a new one, the agent reads again after a short backoff,
// and picks the new version up without asking the hub again; a version Key
// Vault never serves costs a few reads per round, never a loop.
func TestHubReplicationLag(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	opts := h.hubOptions()
	opts.MinBackoff = 200 * time.Millisecond // lag retries after 0.2s, 0.4s, 0.8s
	startHubAgent(t, h, hub, opts)
	h.waitFor("a watch request", 5*time.Second, func() bool { return len(hub.requests()) >= 1 })

	// The hub has seen a version that this replica does not serve yet.
	future := randHex(16)
	hub.publish("a", future)
	h.waitFor("a retry", 5*time.Second, func() bool { return len(h.records(0, msgLagRetry, nil)) >= 1 })
	mark := len(hub.requests())
	a2, v2 := h.setSecret("a")
	hub.follow("a") // before the agent's next read: the hub's sweep sees it too
	h.waitFor("the new value", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	for _, r := range hub.requests()[mark:] {
		if !strings.EqualFold(r.held("a"), v2) {
			t.Errorf("a watch request held a@%s before the retry read the new version %s", r.held("a"), v2)
		}
	}
	if n := len(h.records(0, msgStuck, nil)); n != 0 {
		t.Errorf("gave up %d times", n)
	}

	// b's reported version never appears: a few reads, then the hub again later.
	readsB := rl.count("/secrets/b")
	hub.publish("b", randHex(16))
	h.waitFor("giving up on b for now", 10*time.Second, func() bool {
		return len(h.records(0, msgStuck, map[string]string{"secrets": "b"})) >= 1
	})
	time.Sleep(time.Second)
	got := rl.count("/secrets/b") - readsB
	// A round is 4 reads over 1.4s, then a wait; in the ~3s here, at most 3 rounds.
	if got < 4 || got > 12 {
		t.Errorf("b read %d times: want 4 per round, a few rounds", got)
	}
	if recs := h.records(0, msgSource, map[string]string{"source": "poll"}); len(recs) != 0 {
		t.Errorf("fell back to polling: %v", recs)
	}
}

// TestHubReadFailureBacksOff: a notified object that cannot be read keeps
// the last good set and is read again after a backoff.
func TestHubReadFailureBacksOff(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	startHubAgent(t, h, hub, h.hubOptions())
	if err := h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 500, Match: emulator.OpGet, Count: 3}); err != nil {
		t.Fatal(err)
	}
	a2, _ := h.setSecret("a")
	hub.follow("a")
	h.waitFor("the new value after the faults", 10*time.Second, func() bool { return h.fileIs("a", a2) })
	// One read per failure, each after a backoff (retryIn), then the hub again.
	recs := h.records(0, msgReadFailed, map[string]string{"source": "hub", "trigger": "hub", "code": "InternalServerError"})
	if len(recs) != 3 {
		t.Errorf("%d read failures logged, want 3 (one per fault):\n%s", len(recs), h.logs)
	}
	for _, r := range recs {
		if d, err := time.ParseDuration(r["retryIn"].(string)); err != nil || d <= 0 {
			t.Errorf("read failure %v: want a retryIn", r)
		}
	}
}

// TestHubInitNeverTalksToHub: an init agent with a hub in its configuration
// reads once and never calls the hub.
func TestHubInitNeverTalksToHub(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	a, _ := h.setSecret("a")
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"})
	cfg.Hub = "https://" + hubHost
	if err := h.run(context.Background(), cfg, h.hubOptions()); err != nil {
		t.Fatal(err)
	}
	if h.read("a") != a || len(hub.requests()) != 0 {
		t.Errorf("init: file %v, %d hub requests; want the value and none", h.read("a") == a, len(hub.requests()))
	}
}

// TestHubConfigErrorPolls: without the hub's CA the agent cannot use the hub
// at all: it says so once and polls every --rotation, as without a hub.
func TestHubConfigErrorPolls(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	delete(h.env, agentconfig.EnvHubCA)
	startHubAgent(t, h, hub, h.hubOptions())
	h.waitFor("three polls", 10*time.Second, func() bool {
		return len(h.records(0, msgNoChange, map[string]string{"source": "poll"})) >= 3
	})
	recs := h.records(0, msgSource, nil)
	if len(recs) != 1 || recs[0]["reason"] != "HubConfig" || !strings.Contains(recs[0]["error"].(string), agentconfig.EnvHubCA) || recs[0]["pollEvery"] != "200ms" {
		t.Errorf("rotation source records %v: want one, HubConfig naming %s, polling every 200ms", recs, agentconfig.EnvHubCA)
	}
	if n := len(hub.requests()); n != 0 {
		t.Errorf("the hub got %d requests", n)
	}
}

// TestHubHistory: a history entry is watched too (the hub reports the newest
// enabled version, which is what the entry holds first), and a plain entry
// of the same secret shares its place in the watch request.
func TestHubHistory(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	_, stop := startHubAgent(t, h, hub, h.hubOptions(), entry(t, "hist=secret:a;history=2"))
	h.waitFor("a watch request", 5*time.Second, func() bool { return len(hub.requests()) >= 1 })
	if objs := hub.requests()[0].body.Objects; len(objs) != 2 {
		t.Errorf("watch request objects %v: want a once and b", objs)
	}
	a1 := h.read("a")
	a2, v2 := h.setSecret("a")
	hub.follow("a")
	h.waitFor("the new versions", 5*time.Second, func() bool {
		return h.fileIs("a", a2) && h.fileIs("hist/0", a2) && h.fileIs("hist/1", a1)
	})
	h.waitFor("a watch request with the new version", 5*time.Second, func() bool {
		r := hub.requests()
		return strings.EqualFold(r[len(r)-1].held("a"), v2)
	})
	if n := len(h.records(0, msgChanged, map[string]string{"trigger": "hub"})); n != 1 {
		t.Errorf("%d sets written, want 1 with both entries", n)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// newKeyVersion adds a new version of a key (a new P-256 public key).
func (h *harness) newKeyVersion(name string) {
	h.t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.emu.SetKey(h.vault, name, k.Public()); err != nil {
		h.t.Fatal(err)
	}
}

// TestHubCertificatesWatched: with a hub that watches certificates and keys,
// neither is polled, and a new version of each is read once (that object
// only) when the hub reports it, swapped in as a whole set.
func TestHubCertificatesWatched(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	hub.watchKinds(3600, hubapi.KindSecret, hubapi.KindCertificate, hubapi.KindKey)
	h.importCert("web-cert", "EC", nil)
	h.newKeyVersion("signing-key")
	hub.followKind(hubapi.KindCertificate, "web-cert")
	hub.followKind(hubapi.KindKey, "signing-key")
	startHubAgent(t, h, hub, h.hubOptions(), entry(t, "ca.crt=cert:web-cert"), entry(t, "signing.pub=key:signing-key"))
	firstCert, firstKey := h.read("ca.crt"), h.read("signing.pub")
	time.Sleep(5 * hubTestRotation)
	counts := func() [3]int {
		return [3]int{rl.count("/certificates/web-cert"), rl.count("/keys/signing-key"), rl.count("/secrets/a")}
	}
	if got := counts(); got != [3]int{1, 1, 1} {
		t.Errorf("reads of certificate, key, secret %v after %s: want one each (the first set), nothing polled", got, 5*hubTestRotation)
	}

	h.importCert("web-cert", "EC", nil)
	hub.followKind(hubapi.KindCertificate, "web-cert")
	h.waitFor("the new certificate", 5*time.Second, func() bool { return h.read("ca.crt") != firstCert })
	if got := counts(); got != [3]int{2, 1, 1} {
		t.Errorf("reads after the certificate's change %v: want the certificate only", got)
	}
	h.newKeyVersion("signing-key")
	hub.followKind(hubapi.KindKey, "signing-key")
	h.waitFor("the new key", 5*time.Second, func() bool { return h.read("signing.pub") != firstKey })
	if got := counts(); got != [3]int{2, 2, 1} {
		t.Errorf("reads after the key's change %v: want the key only", got)
	}
	h.waitFor("the changes in the logs", 5*time.Second, func() bool { return len(h.records(0, msgChanged, nil)) >= 2 })
	if recs := h.records(0, msgChanged, map[string]string{"source": "hub", "trigger": "hub"}); len(recs) != 2 {
		t.Errorf("change records %v, want two by the hub", h.records(0, msgChanged, nil))
	}
	certs := h.versionsOf(hubapi.KindCertificate, "web-cert")
	h.waitFor("a watch request holding the new versions", 5*time.Second, func() bool {
		reqs := hub.requests()
		last := reqs[len(reqs)-1]
		return len(last.body.Objects) == 4 && strings.EqualFold(last.held("web-cert"), certs[len(certs)-1])
	})
}

// TestHubDeclinedNamedAgain: objects the hub answered it does not watch are
// named to it again after its retry, and watched once it watches them.
func TestHubDeclinedNamedAgain(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	hub.watchKinds(1, hubapi.KindSecret)
	hub.setMaxWait(300 * time.Millisecond) // declined objects are named again at the next request after the retry
	h.importCert("web-cert", "EC", nil)
	hub.followKind(hubapi.KindCertificate, "web-cert")
	startHubAgent(t, h, hub, h.hubOptions(), entry(t, "ca.crt=cert:web-cert"))
	h.waitFor("the poll answer and a request without the certificate", 5*time.Second, func() bool {
		reqs := hub.requests()
		return len(reqs) >= 2 && reqs[len(reqs)-1].held("web-cert") == ""
	})
	if n := len(h.records(0, "the hub does not watch these objects: polling them every rotation", nil)); n != 1 {
		t.Errorf("%d records of the poll answer, want 1", n)
	}
	hub.watchKinds(1, hubapi.KindSecret, hubapi.KindCertificate)
	h.waitFor("the certificate named again after the retry", 5*time.Second, func() bool {
		reqs := hub.requests()
		return reqs[len(reqs)-1].held("web-cert") != ""
	})
	first := h.read("ca.crt")
	h.importCert("web-cert", "EC", nil)
	hub.followKind(hubapi.KindCertificate, "web-cert")
	h.waitFor("the new certificate", 5*time.Second, func() bool { return h.read("ca.crt") != first })
	h.waitFor("the change in the logs", 5*time.Second, func() bool { return len(h.records(0, msgChanged, nil)) > 0 })
	if recs := h.records(0, msgChanged, nil); len(recs) != 1 || recs[0]["trigger"] != "hub" {
		t.Errorf("change records %v, want one by the hub", recs)
	}
}

// TestHubOlderHub: a hub that watches secrets only and refuses a request
// naming a certificate (BadRequest, as before certificates and keys could be
// watched) still watches the secrets; the certificate is polled.
func TestHubOlderHub(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	hub.mu.Lock()
	hub.old = true
	hub.mu.Unlock()
	h.importCert("web-cert", "EC", nil)
	startHubAgent(t, h, hub, h.hubOptions(), entry(t, "ca.crt=cert:web-cert"))
	h.waitFor("a request with the secrets only", 5*time.Second, func() bool {
		reqs := hub.requests()
		return len(reqs) >= 2 && len(reqs[len(reqs)-1].body.Objects) == 2
	})
	h.waitFor("polls of the certificate", 5*time.Second, func() bool { return rl.count("/certificates/web-cert") >= 3 })
	if recs := h.records(0, msgSource, map[string]string{"source": "poll"}); len(recs) != 0 {
		t.Errorf("the agent switched to polling: %v", recs)
	}
	a2, _ := h.setSecret("a")
	hub.follow("a")
	h.waitFor("the secret's change through the hub", 5*time.Second, func() bool { return h.fileIs("a", a2) })
}
