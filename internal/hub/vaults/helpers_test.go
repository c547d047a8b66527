package vaults

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

const (
	testIssuer  = "https://oidc.example.test/"
	testSubject = "system:serviceaccount:kvinject:kvinject-hub"
	testVault   = "hubvault"
)

// env is a hub on a Key Vault emulator; the hub's identity is a workload
// identity granted only emulator.PermList (unless envOpts.perms says else).
type env struct {
	t       testing.TB
	emu     *emulator.Emulator
	hub     *Hub
	hubID   string
	url     string // the vault's canonical URL
	logs    *logBuffer
	reg     *prometheus.Registry
	clients atomic.Int32 // calls of Options.Client
	stop    func()       // ends Run and waits for it (idempotent)
}

type envOpts struct {
	opts   Options               // Client, Logger and Registerer are set by newEnv
	perms  []emulator.Permission // of the hub's identity; nil: list only
	noPerm bool                  // grant nothing
	// before runs before Run (set test seams here).
	before func(h *Hub)
	emu    emulator.Options
	// vault are the test vault's options (RBAC).
	vault emulator.VaultOptions
}

func newEnv(t testing.TB, eo envOpts) *env {
	t.Helper()
	emu, err := emulator.Start(eo.emu)
	if err != nil {
		t.Fatal(err)
	}
	tr := emu.Transport()
	e := &env{t: t, emu: emu, logs: &logBuffer{}, reg: prometheus.NewRegistry(), url: emu.VaultURL(testVault)}
	if err := emu.AddVault(testVault, eo.vault); err != nil {
		t.Fatal(err)
	}
	e.hubID = "0d5d4c1e-7b7e-4c55-9c0e-8a4f2f0e1b11"
	if err := emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: e.hubID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		t.Fatal(err)
	}
	perms := eo.perms
	if perms == nil {
		perms = []emulator.Permission{emulator.PermList}
	}
	if !eo.noPerm {
		if err := emu.Grant(testVault, e.hubID, perms...); err != nil {
			t.Fatal(err)
		}
	}
	cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientID: e.hubID, TenantID: emu.TenantID(), TokenFilePath: tokenFile(t),
		ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: tr}},
	})
	if err != nil {
		t.Fatal(err)
	}
	opts := eo.opts
	opts.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Registerer = e.reg
	// The unmodified SDK clients, as cmd/hub builds them (no retries).
	co := azcore.ClientOptions{Transport: &http.Client{Transport: tr}, Retry: policy.RetryOptions{MaxRetries: -1}}
	opts.Client = func(vaultURL string) (*azsecrets.Client, error) {
		e.clients.Add(1)
		return azsecrets.NewClient(vaultURL, cred, &azsecrets.ClientOptions{ClientOptions: co})
	}
	opts.CertificateClient = func(vaultURL string) (*azcertificates.Client, error) {
		return azcertificates.NewClient(vaultURL, cred, &azcertificates.ClientOptions{ClientOptions: co})
	}
	opts.KeyClient = func(vaultURL string) (*azkeys.Client, error) {
		return azkeys.NewClient(vaultURL, cred, &azkeys.ClientOptions{ClientOptions: co})
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if eo.before != nil {
		eo.before(h)
	}
	e.hub = h
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	e.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of its context's end")
		}
	})
	t.Cleanup(func() {
		e.stop()
		if n := emu.ValueReads(e.hubID); n != 0 {
			t.Errorf("the hub's identity sent %d value reads; it must never read a value", n)
		}
		tr.CloseIdleConnections()
		if err := emu.Close(); err != nil {
			t.Errorf("emulator Close: %v", err)
		}
		if t.Failed() {
			t.Logf("hub log:\n%s", e.logs.String())
		}
	})
	return e
}

// tokenFile writes a projected service-account token of the hub's identity.
func tokenFile(t testing.TB) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	jwt := enc(map[string]string{"alg": "RS256", "kid": "test"}) + "." + enc(map[string]any{
		"iss": testIssuer, "sub": testSubject, "aud": []string{emulator.DefaultAudience},
		"exp": time.Now().Add(2 * time.Hour).Unix(), "iat": time.Now().Unix(),
	}) + ".c2ln"
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// set adds a version created at the given time (whole seconds).
func (e *env) set(name string, created time.Time, opts ...emulator.SecretOption) string {
	return e.emu.SetSecret(testVault, name, "value-of-"+name, append([]emulator.SecretOption{emulator.WithCreated(created)}, opts...)...)
}

func obj(name, version string) hubapi.Object {
	return hubapi.Object{Kind: hubapi.KindSecret, Name: name, Version: version}
}

// watch opens a watch that must be accepted; it is closed when the test ends.
func (e *env) watch(objs ...hubapi.Object) *Watch {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	w, err := e.hub.Watch(ctx, e.url, objs)
	if err != nil {
		e.t.Fatalf("Watch(%v): %v", objs, err)
	}
	e.t.Cleanup(w.Close)
	return w
}

// refuse opens a watch that must be refused with reason.
func (e *env) refuse(reason string, objs ...hubapi.Object) *Refusal {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	w, err := e.hub.Watch(ctx, e.url, objs)
	if err == nil {
		w.Close()
		e.t.Fatalf("Watch(%v) accepted, want refusal %s", objs, reason)
	}
	var r *Refusal
	if !errors.As(err, &r) {
		e.t.Fatalf("Watch(%v): %v is not a *Refusal", objs, err)
	}
	if r.Reason != reason {
		e.t.Fatalf("Watch(%v) refused with %s (%s), want %s", objs, r.Reason, r.Message, reason)
	}
	return r
}

// vault returns the hub's state of the test vault.
func (e *env) vault() *vault {
	e.hub.mu.Lock()
	defer e.hub.mu.Unlock()
	v := e.hub.vaults[e.url]
	if v == nil {
		e.t.Fatalf("the hub has no vault %s", e.url)
	}
	return v
}

// status is the vault's status.
func (e *env) status() vaultStatus {
	v := e.vault()
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.status
}

// sweep makes the vault sweep now and waits for a sweep that began after the
// call to end.
func (e *env) sweep() {
	e.t.Helper()
	v := e.vault()
	v.mu.Lock()
	target := v.sweepSeq + 1
	if v.sweeping {
		target++
	}
	v.mu.Unlock()
	select {
	case v.kick <- struct{}{}:
	default:
	}
	e.waitSweeps(v, target)
}

func (e *env) waitSweeps(v *vault, target int) {
	e.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		v.mu.Lock()
		seq, ch := v.sweepSeq, v.sweepEnd
		v.mu.Unlock()
		if seq >= target {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			e.t.Fatalf("sweep %d did not end within 20s", target)
		}
	}
}

// calls returns the Key Vault calls of one op and status.
func (e *env) calls(key string) int64 { return e.hub.KeyVaultCalls()[key] }

// recv waits for a watch's batch.
func recv(t testing.TB, w *Watch) []hubapi.Object {
	t.Helper()
	select {
	case b := <-w.Changed():
		return b
	case <-time.After(15 * time.Second):
		t.Fatal("no batch within 15s")
		return nil
	}
}

// quiet checks that a watch is still waiting: not queued, no batch.
func quiet(t testing.TB, w *Watch, what string) {
	t.Helper()
	select {
	case b := <-w.Changed():
		t.Errorf("%s: got batch %v, want none", what, b)
		return
	default:
	}
	w.v.mu.Lock()
	defer w.v.mu.Unlock()
	if w.state != stateWatching {
		t.Errorf("%s: state %d, want watching", what, w.state)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count counts the records whose line contains s.
func (l *logBuffer) count(s string) int {
	return strings.Count(l.String(), s)
}

// fakeClock is a manual clock for the pacer.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t.ch, func() bool { return false }
	}
	c.timers = append(c.timers, t)
	return t.ch, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.timers {
			if x == t {
				c.timers = append(c.timers[:i], c.timers[i+1:]...)
				return true
			}
		}
		return false
	}
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// deadlines returns the pending timers' times, relative to now.
func (c *fakeClock) deadlines() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for _, t := range c.timers {
		out = append(out, t.at.Sub(c.now))
	}
	return out
}
