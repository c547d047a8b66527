package vaults

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

var allKinds = []string{hubapi.KindSecret, hubapi.KindCertificate, hubapi.KindKey}

// listAll is what the hub's identity needs to watch every kind in an access
// policy vault; listAllRBAC in an RBAC vault (no list-only action there).
var (
	listAll     = []emulator.Permission{emulator.PermList, emulator.PermCertificatesList, emulator.PermKeysList}
	listAllRBAC = []emulator.Permission{emulator.PermList, emulator.PermCertificatesGet, emulator.PermKeysGet}
)

func kobj(kind, name, version string) hubapi.Object {
	return hubapi.Object{Kind: kind, Name: name, Version: version}
}

// newCert imports a new certificate (a new key and leaf) as a new version of
// name.
func (e *env) newCert(name string) string {
	e.t.Helper()
	c, err := emulator.NewTestChain(name+".example.test", "EC")
	if err != nil {
		e.t.Fatal(err)
	}
	return e.importCert(name, c)
}

func (e *env) importCert(name string, c emulator.TestChain) string {
	e.t.Helper()
	v, err := e.emu.ImportCertificate(testVault, name, c.LeafKey, c.Chain())
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// newKey adds a new version of a key (a new P-256 public key).
func (e *env) newKey(name string) string {
	e.t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	v, err := e.emu.SetKey(testVault, name, k.Public())
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// polledAtOnce checks that w ended at once with an empty batch and the
// objects to poll with reason, and returns them.
func polledAtOnce(t *testing.T, w *Watch, reason string) []hubapi.Polled {
	t.Helper()
	if b := recv(t, w); len(b) != 0 {
		t.Fatalf("batch %v, want empty", b)
	}
	p := w.Polled()
	if len(p) == 0 {
		t.Fatal("Polled is empty, want the objects to poll")
	}
	for _, x := range p {
		if x.Reason != reason || x.Message == "" || x.RetryAfterSeconds <= 0 {
			t.Errorf("polled %+v, want reason %s with a message and a retry", x, reason)
		}
	}
	return p
}

func TestParseKinds(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"secret", []string{"secret"}, ""},
		{"key, Secret,certificate", allKinds, ""},
		{"secret,key", []string{"secret", "key"}, ""},
		{"secret,cert", nil, `unknown kind "cert"`},
		{"secret,secret", nil, "named twice"},
		{" , ", nil, "no kind"},
	} {
		got, err := ParseKinds(tc.in)
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ParseKinds(%q) = %v, %v; want error with %q", tc.in, got, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("ParseKinds(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestNewKindsOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"no secrets", Options{Kinds: []string{hubapi.KindKey}}},
		{"unknown kind", Options{Kinds: []string{"secret", "cert"}}},
		{"certificates without a client", Options{Kinds: []string{"secret", "certificate"}}},
		{"keys without a client", Options{Kinds: []string{"secret", "key"}}},
	} {
		tc.opts.Client = newEnvClientStub
		if _, err := New(tc.opts); err == nil {
			t.Errorf("%s: New accepted %v", tc.name, tc.opts.Kinds)
		}
	}
}

// TestKindRotation: a new version of a watched certificate or key reaches
// its watcher, with one listing of each watched kind per sweep, in both
// permission models, and the hub reads no value (newEnv's cleanup).
func TestKindRotation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kind  string
		rbac  bool
		op    string
		fresh func(e *env) string
	}{
		{"certificate, access policy", hubapi.KindCertificate, false, opListCertificates, func(e *env) string { return e.newCert("c") }},
		{"certificate, RBAC", hubapi.KindCertificate, true, opListCertificates, func(e *env) string { return e.newCert("c") }},
		{"key, access policy", hubapi.KindKey, false, opListKeys, func(e *env) string { return e.newKey("c") }},
		{"key, RBAC", hubapi.KindKey, true, opListKeys, func(e *env) string { return e.newKey("c") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			perms := listAll
			if tc.rbac {
				perms = listAllRBAC
			}
			e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour, Kinds: allKinds}, perms: perms, vault: emulator.VaultOptions{RBAC: tc.rbac}})
			s1 := e.set("s", past)
			v1 := tc.fresh(e)
			w := e.watch(obj("s", s1), kobj(tc.kind, "c", v1))
			quiet(t, w, "holder of the newest versions")
			before := e.calls(tc.op + " 200")
			e.sweep()
			if n := e.calls(tc.op + " 200"); n != before+1 {
				t.Errorf("%s pages in one sweep: %d, want 1", tc.op, n-before)
			}
			quiet(t, w, "after a sweep without change")
			v2 := tc.fresh(e)
			e.sweep()
			got := recv(t, w)
			if want := []hubapi.Object{kobj(tc.kind, "c", v2)}; !slices.Equal(got, want) {
				t.Fatalf("batch %v, want %v", got, want)
			}
			if n := testutil.ToFloat64(e.hub.metrics.listable.WithLabelValues("hubvault.vault.azure.net", tc.kind)); n != 1 {
				t.Errorf("kvinject_hub_vault_listable{kind=%s} = %v, want 1", tc.kind, n)
			}
			// The old version is still a version of the object: accepted,
			// and changed at once.
			if got := recv(t, e.watch(kobj(tc.kind, "c", v1))); !slices.Equal(got, []hubapi.Object{kobj(tc.kind, "c", v2)}) {
				t.Errorf("watch of the old version: batch %v, want the new one", got)
			}
			// A version of another object, or of another kind, is refused.
			e.refuse(hubapi.ReasonUnknownVersion, kobj(tc.kind, "c", s1))
			e.refuse(hubapi.ReasonUnknownVersion, kobj(tc.kind, "s", s1))
		})
	}
}

// TestCertificateSameThumbprint: a new certificate version holding the same
// certificate (x5t) notifies nobody; a new certificate does.
func TestCertificateSameThumbprint(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour, Kinds: allKinds}, perms: listAll})
	chain, err := emulator.NewTestChain("same.example.test", "EC")
	if err != nil {
		t.Fatal(err)
	}
	v1 := e.importCert("c", chain)
	w := e.watch(kobj(hubapi.KindCertificate, "c", v1))
	e.importCert("c", chain) // the same certificate again
	e.sweep()
	quiet(t, w, "a new version with the same thumbprint")
	v3 := e.newCert("c")
	e.sweep()
	if got, want := recv(t, w), []hubapi.Object{kobj(hubapi.KindCertificate, "c", v3)}; !slices.Equal(got, want) {
		t.Fatalf("batch %v, want %v", got, want)
	}
}

// TestKindNotWatched: objects of kinds outside Options.Kinds are answered at
// once to poll, without a Key Vault call for them.
func TestKindNotWatched(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	s1 := e.set("s", past)
	c1 := e.newCert("c")
	w, err := e.hub.Watch(context.Background(), e.url, []hubapi.Object{obj("s", s1), kobj(hubapi.KindCertificate, "c", c1), kobj(hubapi.KindKey, "c", c1)})
	if err != nil {
		t.Fatal(err)
	}
	p := polledAtOnce(t, w, hubapi.PollKindNotWatched)
	if len(p) != 2 || p[0].Kind != hubapi.KindCertificate || p[1].Kind != hubapi.KindKey {
		t.Errorf("polled %+v, want the certificate and the key", p)
	}
	if n := e.clients.Load(); n != 0 {
		t.Errorf("a request naming kinds the hub does not watch built %d clients: it must not sweep the vault for it", n)
	}
	w.Close()
	for k, n := range e.hub.KeyVaultCalls() {
		if !strings.HasPrefix(k, opListSecrets+" ") && !strings.HasPrefix(k, opListVersions+" ") && n > 0 {
			t.Errorf("Key Vault call %s x%d for a kind the hub does not watch", k, n)
		}
	}
	if n := testutil.ToFloat64(e.hub.metrics.polled.WithLabelValues(hubapi.KindCertificate, hubapi.PollKindNotWatched)); n != 1 {
		t.Errorf("polled{certificate,KindNotWatched} = %v, want 1", n)
	}
	quiet(t, e.watch(obj("s", s1)), "the secret alone is watched")
	if r, err := e.hub.HintObject(context.Background(), e.url, hubapi.KindCertificate, "c", c1); r != HintUnwatched || err != nil {
		t.Errorf("HintObject of an unwatched kind = %s, %v; want %s", r, err, HintUnwatched)
	}
}

// TestKindNotListable: a vault that lets the hub list secrets but not
// certificates: certificate watchers are told to poll (at once, and when the
// permission goes away during a watch), reported once with log and metric,
// while the secrets stay watched; the listing is retried and recovers.
func TestKindNotListable(t *testing.T) {
	e := newEnv(t, envOpts{
		opts:   Options{SweepInterval: time.Hour, Kinds: allKinds},
		perms:  listAll,
		before: func(h *Hub) { h.notListableRetry = 50 * time.Millisecond },
	})
	label := "hubvault.vault.azure.net"
	s1 := e.set("s", past)
	c1 := e.newCert("c")
	w := e.watch(obj("s", s1), kobj(hubapi.KindCertificate, "c", c1))
	quiet(t, w, "both watched")

	// The permission goes away during the watch.
	if err := e.emu.Revoke(testVault, e.hubID, emulator.PermCertificatesList); err != nil {
		t.Fatal(err)
	}
	e.sweep()
	p := polledAtOnce(t, w, hubapi.PollKindNotListable)
	if len(p) != 1 || p[0].Kind != hubapi.KindCertificate || p[0].Name != "c" || !strings.Contains(p[0].Message, "certificates") {
		t.Errorf("polled %+v, want certificate c with a message naming the permission", p)
	}
	if g := testutil.ToFloat64(e.hub.metrics.listable.WithLabelValues(label, hubapi.KindCertificate)); g != 0 {
		t.Errorf("listable{certificate} = %v, want 0", g)
	}
	if g := testutil.ToFloat64(e.hub.metrics.listable.WithLabelValues(label, hubapi.KindSecret)); g != 1 {
		t.Errorf("listable{secret} = %v, want 1", g)
	}
	// A new request with the certificate: answered at once to poll; without
	// it: watched.
	w2, err := e.hub.Watch(context.Background(), e.url, []hubapi.Object{obj("s", s1), kobj(hubapi.KindCertificate, "c", c1)})
	if err != nil {
		t.Fatal(err)
	}
	polledAtOnce(t, w2, hubapi.PollKindNotListable)
	ws := e.watch(obj("s", s1))
	e.sweep()
	e.sweep()
	if n := e.logs.count("the hub may not list this kind in this vault"); n != 1 {
		t.Errorf("not listable logged %d times, want once", n)
	}
	s2 := e.set("s", time.Now().Add(-5*time.Second))
	e.sweep()
	if got := recv(t, ws); !slices.Equal(got, []hubapi.Object{obj("s", s2)}) {
		t.Errorf("secret batch %v, want %v", got, s2)
	}

	// Granted again: the retried listing recovers.
	if err := e.emu.Grant(testVault, e.hubID, emulator.PermCertificatesList); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	e.sweep()
	if g := testutil.ToFloat64(e.hub.metrics.listable.WithLabelValues(label, hubapi.KindCertificate)); g != 1 {
		t.Errorf("listable{certificate} after the grant = %v, want 1", g)
	}
	quiet(t, e.watch(obj("s", s2), kobj(hubapi.KindCertificate, "c", c1)), "watched again")
}

// TestKindNotListableAtWatch: without the permission from the start, the
// first watch of a certificate is answered to poll.
func TestKindNotListableAtWatch(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour, Kinds: allKinds}})
	s1 := e.set("s", past)
	k1 := e.newKey("k")
	w, err := e.hub.Watch(context.Background(), e.url, []hubapi.Object{obj("s", s1), kobj(hubapi.KindKey, "k", k1)})
	if err != nil {
		t.Fatal(err)
	}
	p := polledAtOnce(t, w, hubapi.PollKindNotListable)
	if len(p) != 1 || p[0].Kind != hubapi.KindKey || !strings.Contains(p[0].Message, "keys") {
		t.Errorf("polled %+v, want key k with a message naming the permission", p)
	}
	if n := testutil.ToFloat64(e.hub.metrics.polled.WithLabelValues(hubapi.KindKey, hubapi.PollKindNotListable)); n != 1 {
		t.Errorf("polled{key,KindNotListable} = %v, want 1", n)
	}
}

// TestHintObject: a hint about a watched key lists its versions at once.
func TestHintObject(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour, Kinds: allKinds}, perms: listAll})
	k1 := e.newKey("k")
	w := e.watch(kobj(hubapi.KindKey, "k", k1))
	ctx := context.Background()
	if r, err := e.hub.HintObject(ctx, e.url, hubapi.KindKey, "k", k1); r != HintKnown || err != nil {
		t.Errorf("HintObject(held version) = %s, %v; want %s", r, err, HintKnown)
	}
	k2 := e.newKey("k")
	if r, err := e.hub.HintObject(ctx, e.url, hubapi.KindKey, "k", k2); r != HintListed || err != nil {
		t.Fatalf("HintObject(new version) = %s, %v; want %s", r, err, HintListed)
	}
	if got := recv(t, w); !slices.Equal(got, []hubapi.Object{kobj(hubapi.KindKey, "k", k2)}) {
		t.Errorf("batch %v, want %s", got, k2)
	}
	if r, _ := e.hub.HintObject(ctx, e.url, hubapi.KindSecret, "k", k2); r != HintUnwatched {
		t.Errorf("HintObject of the secret of the same name = %s, want %s", r, HintUnwatched)
	}
}

// newEnvClientStub is an Options.Client for tests of New's checks.
func newEnvClientStub(string) (*azsecrets.Client, error) { return nil, errors.New("not for use") }

// failingPager is a listing that fails with status.
type failingPager struct {
	status int
	done   bool
}

func (p *failingPager) More() bool { return !p.done }
func (p *failingPager) NextPage(context.Context) ([]item, error) {
	p.done = true
	return nil, &azcore.ResponseError{StatusCode: p.status, ErrorCode: http.StatusText(p.status)}
}

// TestKindFailureLeavesSecretsWatched: a listing of certificates that keeps
// failing (500, or 429) is retried at each sweep without stopping the
// secrets' sweep: a secret's new version is still notified, and a new watch
// holding an old version is told at once.
func TestKindFailureLeavesSecretsWatched(t *testing.T) {
	for _, code := range []int{http.StatusInternalServerError, http.StatusTooManyRequests} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			e := newEnv(t, envOpts{opts: Options{SweepInterval: 200 * time.Millisecond, Kinds: allKinds}, perms: listAll,
				before: func(h *Hub) { h.backoffBase = 10 * time.Millisecond }})
			s1 := e.set("s", past)
			c1 := e.newCert("c")
			w := e.watch(obj("s", s1), kobj(hubapi.KindCertificate, "c", c1))
			quiet(t, w, "both watched")
			v := e.vault()
			v.mu.Lock()
			v.listers[hubapi.KindCertificate].list = func() itemPager { return &failingPager{status: code} }
			v.mu.Unlock()
			s2 := e.set("s", time.Now().Add(-5*time.Second))
			select {
			case <-w.Changed():
			case <-time.After(5 * time.Second):
				t.Fatalf("secret s changed to %s, nobody was told while the certificates' listing fails", s2)
			}
			ws := e.watch(obj("s", s1))
			select {
			case <-ws.Changed():
			case <-time.After(2 * time.Second):
				t.Error("a new watch holding the old secret version was not told")
			}
		})
	}
}
