package events

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/internal/testing/emulator"
)

const (
	account   = "kvievents"
	queueName = "vault-events"
	vaultName = "ordersvault"
)

// hints records the hints it is given, as the hub's Key Vault side would
// answer them: listed for a version it has not seen, known for one it has.
type hints struct {
	mu    sync.Mutex
	got   []string // name@version, in order
	known map[string]bool
	fail  int             // fail the next n
	kinds map[string]bool // the kinds watched; nil: secrets only
}

func (h *hints) HintObject(_ context.Context, vaultURL, kind, name, version string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	watched := h.kinds[kind] || h.kinds == nil && kind == KindSecret
	if vaultURL != "https://"+vaultName+".vault.azure.net/" || !watched {
		return vaults.HintUnwatched, nil
	}
	if h.fail > 0 {
		h.fail--
		return vaults.HintFailed, fmt.Errorf("Key Vault answered 429")
	}
	key := strings.ToLower(name + "@" + version)
	if h.known[key] {
		return vaults.HintKnown, nil
	}
	h.known[key] = true
	h.got = append(h.got, key)
	return vaults.HintListed, nil
}

func (h *hints) listed() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.got...)
}

// env is an emulator with a vault whose events go to a queue, and the hub's
// identity, allowed to process the queue's messages.
type env struct {
	t    *testing.T
	emu  *emulator.Emulator
	cred azcore.TokenCredential
	id   string
}

func newEnv(t *testing.T, opts emulator.EventOptions, grant bool) *env {
	t.Helper()
	emu, err := emulator.Start(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	if err := emu.AddQueue(account, queueName); err != nil {
		t.Fatal(err)
	}
	emu.SetSecret(vaultName, "API-KEY", "v0")
	if err := emu.SubscribeEvents(vaultName, account, queueName, opts); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, emu: emu, id: "6f1f4d55-0000-4c4c-9a9a-0123456789ab"}
	const iss, sub = "https://issuer.test/", "system:serviceaccount:kvinject-system:kvinject-hub"
	if err := emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: e.id, Issuer: iss, Subject: sub}); err != nil {
		t.Fatal(err)
	}
	if grant {
		e.grant()
	}
	enc := base64.RawURLEncoding.EncodeToString
	assertion := enc([]byte(`{"alg":"RS256"}`)) + "." + enc(fmt.Appendf(nil, `{"iss":%q,"sub":%q,"aud":["api://AzureADTokenExchange"],"exp":%d}`, iss, sub, time.Now().Add(time.Hour).Unix())) + ".c2ln"
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(assertion), 0o600); err != nil {
		t.Fatal(err)
	}
	tr := emu.Transport()
	t.Cleanup(tr.CloseIdleConnections)
	e.cred, err = azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
		ClientID: e.id, TenantID: emu.TenantID(), TokenFilePath: file,
		ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: tr}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) grant() {
	if err := e.emu.GrantQueue(account, queueName, e.id, emulator.PermQueuePeek, emulator.PermQueueProcess); err != nil {
		e.t.Fatal(err)
	}
}

// intake returns a running intake of the queue; it stops with the test.
func (e *env) intake(h Hinter, edit func(*IntakeOptions)) (*Intake, *Metrics) {
	e.t.Helper()
	tr := e.emu.Transport()
	e.t.Cleanup(tr.CloseIdleConnections)
	q, err := azqueue.NewQueueClient(emulator.QueueURL(account, queueName), e.cred, &azqueue.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: tr}, Retry: policy.RetryOptions{MaxRetries: -1}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := NewMetrics(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	opts := IntakeOptions{Queue: q, Hints: h, Metrics: m, PollInterval: 50 * time.Millisecond, MaxAttempts: 3}
	if edit != nil {
		edit(&opts)
	}
	in, err := NewIntake(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = in.Run(ctx); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return in, m
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) stats() emulator.QueueStats {
	st, err := e.emu.QueueStats(account, queueName)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// TestIntakeOneReplica: each new version reaches the hub once, in seconds,
// and its message is deleted after it was handled.
func TestIntakeOneReplica(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{}, true)
	h := &hints{known: map[string]bool{}}
	_, m := e.intake(h, nil)
	var want []string
	for range 3 {
		want = append(want, "api-key@"+e.emu.SetSecret(vaultName, "API-KEY", "v"))
	}
	e.emu.SetSecret("othervault", "API-KEY", "x") // not subscribed
	eventually(t, "every version hinted and every message deleted", func() bool {
		st := e.stats()
		return len(h.listed()) == 3 && st.Messages == 0 && st.Deleted == 3
	})
	if got := h.listed(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("hinted %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(m.events.WithLabelValues(KindSecret, vaults.HintListed)); got != 3 {
		t.Errorf("events listed %v, want 3", got)
	}
	if testutil.CollectAndCount(m.lag) != 1 || testutil.ToFloat64(m.messages.WithLabelValues("deleted")) != 3 {
		t.Errorf("lag observed or deletions not counted")
	}
}

// TestIntakeKinds: certificate and key events are hinted with their kind
// when the hub watches it (--watch-kinds), and counted unwatched otherwise.
func TestIntakeKinds(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{}, true)
	h := &hints{known: map[string]bool{}, kinds: map[string]bool{KindSecret: true, KindKey: true}}
	_, m := e.intake(h, nil)
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := e.emu.SetKey(vaultName, "SIGNING", priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := emulator.NewTestChain("web.contoso.example", "EC")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.emu.ImportCertificate(vaultName, "WEB", ch.LeafKey, ch.Chain()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both events handled and deleted", func() bool { return e.stats().Deleted == 2 })
	if got := h.listed(); len(got) != 1 || got[0] != "signing@"+strings.ToLower(kv) {
		t.Errorf("hinted %v, want the key's new version", got)
	}
	if testutil.ToFloat64(m.events.WithLabelValues(KindKey, vaults.HintListed)) != 1 || testutil.ToFloat64(m.events.WithLabelValues(KindCertificate, vaults.HintUnwatched)) != 1 {
		t.Error("the key's event is not counted listed, or the certificate's not unwatched")
	}
}

// TestIntakeFaults: with 30% of events dropped and the rest duplicated and
// delayed (reordered), what arrives is hinted once per version, and every
// message is deleted.
func TestIntakeFaults(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{Faults: emulator.EventFaults{DropRate: 0.3, DuplicateRate: 0.5, MaxDelay: 100 * time.Millisecond}}, true)
	h := &hints{known: map[string]bool{}}
	_, m := e.intake(h, nil)
	versions := map[string]bool{}
	for range 30 {
		versions["api-key@"+e.emu.SetSecret(vaultName, "API-KEY", "v")] = true
	}
	time.Sleep(200 * time.Millisecond) // the delayed deliveries
	eventually(t, "the queue emptied", func() bool { return e.stats().Messages == 0 })
	got := h.listed()
	seen := map[string]bool{}
	for _, k := range got {
		if !versions[k] || seen[k] {
			t.Errorf("hinted %s: unknown or twice", k)
		}
		seen[k] = true
	}
	if len(got) < 10 || len(got) > 30 {
		t.Errorf("%d versions hinted of 30 with 30%% dropped", len(got))
	}
	if dup := testutil.ToFloat64(m.events.WithLabelValues(KindSecret, "duplicate")); dup == 0 {
		t.Error("no duplicate counted with half of the events delivered twice")
	}
}

// TestIntakeTwoReplicas: both replicas hear of every event (whichever holds
// the watchers); only the deleter deletes, after DeleteAfter.
func TestIntakeTwoReplicas(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{}, true)
	ha, hb := &hints{known: map[string]bool{}}, &hints{known: map[string]bool{}}
	_, ma := e.intake(ha, func(o *IntakeOptions) {
		o.Deleter = func() bool { return true }
		o.DeleteAfter = 1500 * time.Millisecond
	})
	_, mb := e.intake(hb, func(o *IntakeOptions) {
		o.Deleter = func() bool { return false }
		o.DeleteAfter = 1500 * time.Millisecond
	})
	v := "api-key@" + e.emu.SetSecret(vaultName, "API-KEY", "v")
	eventually(t, "both replicas hinted", func() bool { return len(ha.listed()) == 1 && len(hb.listed()) == 1 })
	if st := e.stats(); st.Messages != 1 {
		t.Errorf("the message was deleted before DeleteAfter: %+v", st)
	}
	eventually(t, "the deleter deleted the message", func() bool { st := e.stats(); return st.Messages == 0 && st.Deleted == 1 })
	if ha.listed()[0] != v || hb.listed()[0] != v {
		t.Errorf("hinted %v and %v, want %s", ha.listed(), hb.listed(), v)
	}
	if testutil.ToFloat64(mb.messages.WithLabelValues("deleted")) != 0 || testutil.ToFloat64(ma.messages.WithLabelValues("deleted")) != 1 {
		t.Error("the deletions were not the deleter's alone")
	}
}

// TestIntakeBurstBeyondOnePeek: a peek sees only the first 32 messages, so
// with more queued every replica must still read each one before the deleter
// deletes it (DeleteAfter counts from the deleter's first read, not from the
// insertion), and a replica that may not delete waits PollInterval between
// peeks of a full page instead of peeking it again at once.
func TestIntakeBurstBeyondOnePeek(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{}, true)
	// First a backlog with no deleter running: the other replica alone.
	hb := &hints{known: map[string]bool{}}
	const n = 80
	for i := range n {
		e.emu.SetSecret(vaultName, fmt.Sprintf("S-%02d", i), "v")
	}
	_, mb := e.intake(hb, func(o *IntakeOptions) {
		o.Deleter = func() bool { return false }
		o.PollInterval = 150 * time.Millisecond
		o.DeleteAfter = 300 * time.Millisecond
	})
	q := emulator.QueueURL(account, queueName)
	eventually(t, "the first page read", func() bool { return len(hb.listed()) == peekBatch })
	before := testutil.ToFloat64(mb.requests.WithLabelValues(q, "peek", "200"))
	time.Sleep(600 * time.Millisecond)
	if peeks := testutil.ToFloat64(mb.requests.WithLabelValues(q, "peek", "200")) - before; peeks > 6 {
		t.Errorf("%v peeks in 600ms of a full page it may not delete, with a poll interval of 150ms", peeks)
	}
	if age := testutil.ToFloat64(mb.backlog.WithLabelValues(q)); age < 0.4 {
		t.Errorf("kvinject_hub_event_oldest_read_seconds = %v with nobody deleting for 600ms", age)
	}
	// The deleter starts: both replicas read all 80.
	ha := &hints{known: map[string]bool{}}
	e.intake(ha, func(o *IntakeOptions) {
		o.Deleter = func() bool { return true }
		o.DeleteAfter = 300 * time.Millisecond
	})
	eventually(t, "the queue emptied", func() bool { return e.stats().Messages == 0 })
	if a, b := len(ha.listed()), len(hb.listed()); a != n || b != n {
		t.Errorf("the deleter read %d events and the other replica %d, of %d", a, b, n)
	}
	eventually(t, "the other replica sees the empty queue", func() bool { return testutil.ToFloat64(mb.backlog.WithLabelValues(q)) < 0.1 })
}

// TestIntakePoisonAndExpiry: a message that is not an event is counted and
// deleted after MaxAttempts without stopping the intake; NearExpiry and
// Expired events are counted and logged, not hinted; a failed listing is
// retried before its message is deleted.
func TestIntakePoisonAndExpiry(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{}, true)
	h := &hints{known: map[string]bool{}, fail: 1}
	_, m := e.intake(h, nil)
	if err := e.emu.EnqueueRaw(account, queueName, "not an event"); err != nil {
		t.Fatal(err)
	}
	if err := e.emu.PublishEvent(vaultName, emulator.EventSecretNearExpiry, "Secret", "API-KEY", "0a0b", time.Time{}, time.Now().Add(720*time.Hour)); err != nil {
		t.Fatal(err)
	}
	v := e.emu.SetSecret(vaultName, "API-KEY", "v")
	eventually(t, "the queue emptied", func() bool { st := e.stats(); return st.Messages == 0 && st.Deleted == 3 })
	if got := h.listed(); len(got) != 1 || got[0] != "api-key@"+v {
		t.Errorf("hinted %v, want the new version once after a failed listing", got)
	}
	if testutil.ToFloat64(m.messages.WithLabelValues("unreadable")) != 1 {
		t.Error("the unreadable message was not counted once")
	}
	if testutil.ToFloat64(m.expiry.WithLabelValues(KindSecret, ChangeNearExpiry)) != 1 {
		t.Error("the NearExpiry event was not counted")
	}
	if testutil.ToFloat64(m.events.WithLabelValues(KindSecret, vaults.HintFailed)) != 1 {
		t.Error("the failed listing was not counted")
	}
}

// TestIntakeRefused: without the queue role the intake reports the queue as
// not readable and waits (a minute) instead of retrying in a loop.
func TestIntakeRefused(t *testing.T) {
	e := newEnv(t, emulator.EventOptions{}, false)
	h := &hints{known: map[string]bool{}}
	_, m := e.intake(h, nil)
	q := emulator.QueueURL(account, queueName)
	eventually(t, "the queue reported not readable", func() bool {
		return testutil.ToFloat64(m.requests.WithLabelValues(q, "peek", "403")) == 1 && testutil.ToFloat64(m.queueOK.WithLabelValues(q)) == 0
	})
	time.Sleep(200 * time.Millisecond)
	if n := testutil.ToFloat64(m.requests.WithLabelValues(q, "peek", "403")); n != 1 {
		t.Errorf("%v refused peeks in 200ms, want 1 (then a minute's wait)", n)
	}
}
