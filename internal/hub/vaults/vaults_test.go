package vaults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// hour ago: versions created long before a listing are "settled" at once.
var past = time.Now().Add(-time.Hour).Truncate(time.Second)

func TestFirstSweep(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	a1 := e.set("api-key", past)
	a2 := e.set("api-key", past.Add(time.Minute))
	b1 := e.set("db-password", past)
	for i := range 30 { // two pages of secrets
		e.set(fmt.Sprintf("unwatched-%02d", i), past)
	}

	w := e.watch(obj("api-key", a2), obj("db-password", b1))
	quiet(t, w, "watch of the newest versions")

	// The same vault under another spelling of its URL and names: one vault,
	// one client; an older version is changed at once.
	ctx := context.Background()
	w2, err := e.hub.Watch(ctx, "https://HubVault.vault.azure.net", []hubapi.Object{obj("API-KEY", strings.ToUpper(a1))})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if got, want := recv(t, w2), []hubapi.Object{obj("API-KEY", a2)}; !cmp.Equal(got, want) {
		t.Errorf("batch of the older version: %v, want %v", got, want)
	}
	if n := e.clients.Load(); n != 1 {
		t.Errorf("Options.Client called %d times, want 1", n)
	}
	want := map[string]int64{"list_secrets 200": 2, "list_versions 200": 2}
	if got := e.hub.KeyVaultCalls(); !cmp.Equal(got, want) {
		t.Errorf("Key Vault calls %v, want %v", got, want)
	}
	if g := testutil.ToFloat64(e.hub.metrics.watchers.WithLabelValues("hubvault.vault.azure.net")); g != 1 {
		t.Errorf("kvinject_hub_watchers = %v, want 1 (the released watch is over)", g)
	}
	if n := e.emu.ListRequests(e.hubID); n != 4 {
		t.Errorf("the emulator saw %d list requests of the hub, want 4", n)
	}

	// A sweep without change lists no versions: the hint is trusted.
	e.sweep()
	if got := e.calls("list_versions 200"); got != 2 {
		t.Errorf("list_versions after a quiet sweep: %d, want 2", got)
	}
	quiet(t, w, "after a quiet sweep")
}

func TestNewVersionNotifiesItsWatchersOnce(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	a1 := e.set("a", past)
	b1 := e.set("b", past)
	var ofA, ofB []*Watch
	for range 3 {
		ofA = append(ofA, e.watch(obj("a", a1)))
	}
	for range 2 {
		ofB = append(ofB, e.watch(obj("b", b1)))
	}
	both := e.watch(obj("a", a1), obj("b", b1))

	a2 := e.set("a", time.Now())
	e.sweep()
	for i, w := range append(ofA, both) {
		if got, want := recv(t, w), []hubapi.Object{obj("a", a2)}; !cmp.Equal(got, want) {
			t.Errorf("watcher %d of a: %v, want %v", i, got, want)
		}
	}
	for i, w := range ofB {
		quiet(t, w, fmt.Sprintf("watcher %d of b", i))
	}
	e.sweep()
	for _, w := range append(ofA, both) {
		select {
		case b := <-w.Changed():
			t.Errorf("second batch %v", b)
		default:
		}
	}
	if n := testutil.ToFloat64(e.hub.metrics.notifications); n != 4 {
		t.Errorf("notifications = %v, want 4", n)
	}
	if n := testutil.CollectAndCount(e.hub.metrics.pacingDelay); n != 1 {
		t.Errorf("pacing delay series = %d", n)
	}
}

// TestSameSecondVersionNotifies: Key Vault's timestamps have whole seconds, so
// a version created in the second of the one the agent holds cannot be told
// newer by its dates; the hub ranks it by when it first saw it.
func TestSameSecondVersionNotifies(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	now := time.Now()
	v1 := e.set("s", now)
	w := e.watch(obj("s", v1))
	v2 := e.set("s", now) // same created and updated second
	e.sweep()
	if got, want := recv(t, w), []hubapi.Object{obj("s", v2)}; !cmp.Equal(got, want) {
		t.Fatalf("batch %v, want %v", got, want)
	}
	// The agent now holds v2: nothing more to say, however often it sweeps.
	w2 := e.watch(obj("s", v2))
	e.sweep()
	quiet(t, w2, "holding the newest of the same second")
	// And one holding v1 (the older of the same second) is told at once.
	if got, want := recv(t, e.watch(obj("s", v1))), []hubapi.Object{obj("s", v2)}; !cmp.Equal(got, want) {
		t.Fatalf("watch of v1: %v, want %v", got, want)
	}
}

func TestTagChangeIsNoChange(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v1 := e.set("s", past)
	w := e.watch(obj("s", v1))
	before := e.calls("list_versions 200")
	if err := e.emu.UpdateSecret(testVault, "s", emulator.SecretUpdate{Tags: map[string]string{"owner": "x"}}); err != nil {
		t.Fatal(err)
	}
	e.sweep()
	if got := e.calls("list_versions 200"); got <= before {
		t.Errorf("updated changed but the versions were not listed (%d, %d)", before, got)
	}
	quiet(t, w, "after a tag change")
	e.sweep()
	quiet(t, w, "after a tag change and another sweep")
}

func TestDisabledNewestIsNoChange(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v1 := e.set("s", past)
	v2 := e.set("s", past.Add(time.Minute))
	holds1 := e.watch(obj("s", v1))
	holds2 := e.watch(obj("s", v2))
	if got := recv(t, holds1); !cmp.Equal(got, []hubapi.Object{obj("s", v2)}) {
		t.Fatalf("holder of v1: %v", got)
	}

	// The newest enabled one (v2) disabled: v1 is the newest enabled, but older.
	if err := e.emu.UpdateSecret(testVault, "s", emulator.SecretUpdate{Version: v2, Enabled: new(false)}); err != nil {
		t.Fatal(err)
	}
	e.sweep()
	quiet(t, holds2, "newest disabled")
	// Holding v1 or v2 is not changed now.
	quiet(t, e.watch(obj("s", v1)), "a new watch of v1")
	quiet(t, e.watch(obj("s", v2)), "a new watch of v2")

	// Enabled again: v2 is the newest again; its holders are not changed, v1's are.
	if err := e.emu.UpdateSecret(testVault, "s", emulator.SecretUpdate{Version: v2, Enabled: new(true)}); err != nil {
		t.Fatal(err)
	}
	e.sweep()
	quiet(t, holds2, "re-enabled")
	if got := recv(t, e.watch(obj("s", v1))); !cmp.Equal(got, []hubapi.Object{obj("s", v2)}) {
		t.Errorf("holder of v1 after re-enabling v2: %v", got)
	}

	// A new version created disabled.
	e.set("s", time.Now(), emulator.WithDisabled())
	e.sweep()
	quiet(t, holds2, "new disabled version")

	// Deleted: nobody is told; a new watch is refused like a made-up version.
	if err := e.emu.DeleteSecret(testVault, "s"); err != nil {
		t.Fatal(err)
	}
	e.sweep()
	quiet(t, holds2, "deleted")
	e.refuse(hubapi.ReasonUnknownVersion, obj("s", v2))
}

func TestVersionsAcrossPagesNewestByCreated(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	// 60 versions (three pages of 25, listed in id order), created in random
	// order relative to their ids and to the order they were added.
	created := make([]time.Time, 60)
	for i := range created {
		created[i] = past.Add(time.Duration(i) * time.Second)
	}
	rand.Shuffle(len(created), func(i, j int) { created[i], created[j] = created[j], created[i] })
	var newest, oldest string
	var newestAt, oldestAt time.Time
	for _, c := range created {
		id := e.set("many", c)
		if newest == "" || c.After(newestAt) {
			newest, newestAt = id, c
		}
		if oldest == "" || c.Before(oldestAt) {
			oldest, oldestAt = id, c
		}
	}
	// The last added (the emulator's current one) is not the newest by created,
	// unless the shuffle says so.
	w := e.watch(obj("many", oldest))
	if got := recv(t, w); !cmp.Equal(got, []hubapi.Object{obj("many", newest)}) {
		t.Errorf("batch %v, want the newest by created %s", got, newest)
	}
	if got := e.calls("list_versions 200"); got != 3 {
		t.Errorf("list_versions pages = %d, want 3", got)
	}
	quiet(t, e.watch(obj("many", newest)), "holder of the newest by created")
}

func TestMaxVersionsBoundsTheListing(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour, MaxVersions: 30}})
	var ids []string
	for i := range 60 {
		ids = append(ids, e.set("many", past.Add(time.Duration(i)*time.Second)))
	}
	sorted := slices.Sorted(slices.Values(ids))
	// The first 30 ids are seen (two pages, the second cut), the others are not.
	e.watch(obj("many", sorted[0]))
	e.refuse(hubapi.ReasonUnknownVersion, obj("many", sorted[59]))
	if got := e.calls("list_versions 200"); got != 4 {
		t.Errorf("list_versions pages = %d, want 4 (2 per listing)", got)
	}
	if n := e.logs.count("more versions than --max-versions"); n != 1 {
		t.Errorf("truncation logged %d times, want 1", n)
	}
}

func TestNewestEnabled(t *testing.T) {
	for _, tc := range []struct {
		name string
		vs   []version
		prev string
		want string
	}{
		{"empty", nil, "", ""},
		{"all disabled", []version{{id: "a", created: 1, enabled: false, seq: 0}, {id: "b", created: 2, enabled: false, seq: 0}}, "", ""},
		{"newest by created, not by id", []version{{id: "f", created: 1, enabled: true, seq: 0}, {id: "a", created: 3, enabled: true, seq: 0}, {id: "c", created: 2, enabled: true, seq: 0}}, "", "a"},
		{"disabled newest skipped", []version{{id: "a", created: 1, enabled: true, seq: 0}, {id: "b", created: 5, enabled: false, seq: 0}}, "a", "a"},
		{"tie: previous kept", []version{{id: "a", created: 5, enabled: true, seq: 0}, {id: "b", created: 5, enabled: true, seq: 0}, {id: "c", created: 1, enabled: true, seq: 0}}, "a", "a"},
		{"tie: greatest id", []version{{id: "b", created: 5, enabled: true, seq: 0}, {id: "a", created: 5, enabled: true, seq: 0}, {id: "c", created: 1, enabled: true, seq: 0}}, "c", "b"},
		{"tie, previous older", []version{{id: "x", created: 4, enabled: true, seq: 0}, {id: "b", created: 5, enabled: true, seq: 0}, {id: "a", created: 5, enabled: true, seq: 0}}, "x", "b"},
		{"same second, discovered later", []version{{id: "b", created: 5, enabled: true, seq: 0}, {id: "a", created: 5, enabled: true, seq: 1}}, "b", "a"},
		{"same second, discovered later but disabled", []version{{id: "b", created: 5, enabled: true, seq: 0}, {id: "a", created: 5, enabled: false, seq: 1}}, "b", "b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := newestEnabled(tc.vs, tc.prev); got.id != tc.want {
				t.Errorf("newestEnabled = %q, want %q", got.id, tc.want)
			}
		})
	}
}

func TestUnknownVersionRefused(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}, emu: emulator.Options{Latency: 20 * time.Millisecond}})
	v1 := e.set("s", past)
	e.watch(obj("s", v1))
	base := e.calls("list_versions 200")

	madeUp := "0123456789abcdef0123456789abcdef"
	r1 := e.refuse(hubapi.ReasonUnknownVersion, obj("s", madeUp))
	r2 := e.refuse(hubapi.ReasonUnknownVersion, obj("nosuch", madeUp))
	// The same words whether the object exists or not.
	if strings.ReplaceAll(r1.Message, "secret s ", "secret X ") != strings.ReplaceAll(r2.Message, "secret nosuch ", "secret X ") {
		t.Errorf("refusals differ:\n%s\n%s", r1.Message, r2.Message)
	}
	if got := e.calls("list_versions 200") + e.calls("list_versions 404") - base; got != 2 {
		t.Errorf("version listings for two refusals: %d, want 2", got)
	}

	// Many watches of one unknown version at once share listings.
	base = e.calls("list_versions 200")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := e.hub.Watch(context.Background(), e.url, []hubapi.Object{obj("s", madeUp)})
			if r, ok := err.(*Refusal); !ok || r.Reason != hubapi.ReasonUnknownVersion {
				t.Errorf("concurrent watch: %v", err)
			}
		})
	}
	wg.Wait()
	if got := e.calls("list_versions 200") - base; got < 1 || got > 4 {
		t.Errorf("20 concurrent watches of an unknown version made %d listings, want 1 to 4", got)
	}

	// A version created after the last sweep is found by the watch's listing.
	v2 := e.set("s", time.Now())
	w := e.watch(obj("s", v2))
	quiet(t, w, "holder of a version newer than the last sweep")
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v := e.set("s", past)
	ok := []hubapi.Object{obj("s", v)}
	for _, tc := range []struct {
		name  string
		vault string
		objs  []hubapi.Object
	}{
		{"http", "http://hubvault.vault.azure.net/", ok},
		{"other domain", "https://hubvault.example.com/", ok},
		{"path", "https://hubvault.vault.azure.net/secrets", ok},
		{"name only", "hubvault", ok},
		{"no objects", e.url, nil},
		{"unknown kind", e.url, []hubapi.Object{{Kind: "cert", Name: "s", Version: v}}},
		{"bad name", e.url, []hubapi.Object{obj("s/x", v)}},
		{"no version", e.url, []hubapi.Object{obj("s", "")}},
		{"bad version", e.url, []hubapi.Object{obj("s", "../x")}},
		{"too many", e.url, slices.Repeat(ok, hubapi.MaxObjects+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.hub.Watch(context.Background(), tc.vault, tc.objs)
			r, isRefusal := err.(*Refusal)
			if !isRefusal || r.Reason != hubapi.ReasonBadRequest {
				t.Fatalf("Watch: %v, want a BadRequest refusal", err)
			}
		})
	}
	if n := e.clients.Load(); n != 0 {
		t.Errorf("bad requests built %d clients", n)
	}
}

func TestNotListable(t *testing.T) {
	e := newEnv(t, envOpts{
		opts:   Options{SweepInterval: time.Hour},
		noPerm: true,
		before: func(h *Hub) { h.notListableRetry = 200 * time.Millisecond },
	})
	v1 := e.set("s", past)
	r := e.refuse(hubapi.ReasonVaultNotListable, obj("s", v1))
	if r.RetryAfter <= 0 || !strings.Contains(r.Message, "list permission") {
		t.Errorf("refusal %+v: want a Retry-After and the fix", r)
	}
	label := "hubvault.vault.azure.net"
	if g := testutil.ToFloat64(e.hub.metrics.listable.WithLabelValues(label, hubapi.KindSecret)); g != 0 {
		t.Errorf("kvinject_hub_vault_listable = %v, want 0", g)
	}
	// Retried every notListableRetry; reported once.
	waitFor(t, "three listings", func() bool { return e.calls("list_secrets 403") >= 3 })
	e.refuse(hubapi.ReasonVaultNotListable, obj("s", v1))
	if n := e.logs.count("the hub may not list this vault"); n != 1 {
		t.Errorf("not listable logged %d times, want 1", n)
	}
	if n := testutil.ToFloat64(e.hub.metrics.sweeps.WithLabelValues(sweepNotListable)); n < 3 {
		t.Errorf("sweeps{not_listable} = %v, want >= 3", n)
	}

	// Granted: the next retry recovers.
	if err := e.emu.Grant(testVault, e.hubID, emulator.PermList); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the vault listable again", func() bool { return e.status() == statusOK })
	if g := testutil.ToFloat64(e.hub.metrics.listable.WithLabelValues(label, hubapi.KindSecret)); g != 1 {
		t.Errorf("kvinject_hub_vault_listable = %v after recovery, want 1", g)
	}
	w := e.watch(obj("s", v1))
	quiet(t, w, "after recovery")
	if n := e.logs.count("may list this vault again"); n != 1 {
		t.Errorf("recovery logged %d times, want 1", n)
	}
}

func TestNotListableEndsOpenWatches(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v1 := e.set("s", past)
	w := e.watch(obj("s", v1))
	if err := e.emu.SetFirewall(testVault, true); err != nil {
		t.Fatal(err)
	}
	e.sweep()
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed")
	}
	if r, ok := w.Err().(*Refusal); !ok || r.Reason != hubapi.ReasonVaultNotListable {
		t.Errorf("Err = %v", w.Err())
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  emulator.Fault
		status string
		result string
	}{
		{"429", emulator.Fault{Kind: emulator.FaultThrottle, RetryAfterSeconds: 1, Count: 2, Match: emulator.OpList}, "429", sweepThrottled},
		{"503", emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Count: 2, Match: emulator.OpList}, "503", sweepError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{
				opts:   Options{SweepInterval: time.Hour},
				before: func(h *Hub) { h.backoffBase = 300 * time.Millisecond },
			})
			v1 := e.set("s", past)
			w := e.watch(obj("s", v1))
			v2 := e.set("s", time.Now())
			if err := e.emu.InjectFault(tc.fault); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			select {
			case e.vault().kick <- struct{}{}:
			default:
			}
			if got := recv(t, w); !cmp.Equal(got, []hubapi.Object{obj("s", v2)}) {
				t.Errorf("batch after recovery: %v", got)
			}
			elapsed := time.Since(start)
			if n := e.calls("list_secrets " + tc.status); n != 2 {
				t.Errorf("list_secrets %s = %d, want 2", tc.status, n)
			}
			if n := testutil.ToFloat64(e.hub.metrics.sweeps.WithLabelValues(tc.result)); n != 2 {
				t.Errorf("sweeps{%s} = %v, want 2", tc.result, n)
			}
			// Two backoffs: at least 1 s (Retry-After) + 0.6 s, or 0.3 s + 0.6 s.
			min := 900 * time.Millisecond
			if tc.fault.Kind == emulator.FaultThrottle {
				min = 1600 * time.Millisecond
			}
			if elapsed < min {
				t.Errorf("recovered after %v, before the backoff (%v) ended", elapsed, min)
			}
		})
	}
}

func TestFirstSweepFailsThenRefusesUnavailable(t *testing.T) {
	e := newEnv(t, envOpts{
		opts:   Options{SweepInterval: time.Hour},
		before: func(h *Hub) { h.backoffBase = 200 * time.Millisecond },
	})
	v1 := e.set("s", past)
	if err := e.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 500, Count: 1, Match: emulator.OpList}); err != nil {
		t.Fatal(err)
	}
	r := e.refuse(hubapi.ReasonUnavailable, obj("s", v1))
	if r.RetryAfter <= 0 {
		t.Errorf("no Retry-After: %+v", r)
	}
	waitFor(t, "a successful sweep", func() bool { return e.status() == statusOK })
	e.watch(obj("s", v1))
}

// TestPacing releases the watches of one changed object, FIFO, one token per
// changed object, on a fake clock.
func TestPacing(t *testing.T) {
	fc := newFakeClock()
	var mu sync.Mutex
	type release struct {
		w  *Watch
		at time.Time
		n  int
	}
	var released []release
	e := newEnv(t, envOpts{
		opts: Options{SweepInterval: time.Hour, ReadBudget: 10}, // 100 ms per read, burst 1
		before: func(h *Hub) {
			h.clock = fc
			h.onRelease = func(w *Watch, batch []hubapi.Object, at time.Time) {
				mu.Lock()
				released = append(released, release{w, at, len(batch)})
				mu.Unlock()
			}
		},
	})
	s1, t1 := e.set("s", past), e.set("t", past)
	s2, t2 := e.set("s", past.Add(time.Minute)), e.set("t", past.Add(time.Minute))
	e.watch(obj("s", s2), obj("t", t2)) // the first sweep; not changed
	fc.Advance(10 * time.Second)        // refill what the sweep spent

	var order []*Watch
	for range 6 {
		order = append(order, e.watch(obj("s", s1)))
	}
	two := e.watch(obj("s", s1), obj("t", t1)) // costs 2
	order = append(order, two)
	last := e.watch(obj("t", t1))
	order = append(order, last)

	count := func() int { mu.Lock(); defer mu.Unlock(); return len(released) }
	// The first is released at once; then one per 100 ms.
	for i := 1; i < len(order); i++ {
		waitFor(t, fmt.Sprintf("release %d and the pacer's timer", i), func() bool {
			return count() == i && len(fc.deadlines()) == 1
		})
		want := 100 * time.Millisecond // one token
		if order[i] == two {
			want = 200 * time.Millisecond // two changed objects, two tokens
		}
		if d := fc.deadlines()[0]; d != want {
			t.Errorf("release %d: the pacer waits %v, want %v", i, d, want)
		}
		fc.Advance(fc.deadlines()[0])
	}
	waitFor(t, "all released", func() bool { return count() == len(order) })
	mu.Lock()
	defer mu.Unlock()
	for i, r := range released {
		if r.w != order[i] {
			t.Errorf("release %d is not the %d-th watch: not FIFO", i, i)
		}
		if i > 0 {
			gap := r.at.Sub(released[i-1].at)
			want := 100 * time.Millisecond * time.Duration(r.n)
			if gap != want {
				t.Errorf("release %d (%d objects) came %v after the previous one, want %v", i, r.n, gap, want)
			}
		}
	}
	for _, w := range order {
		select {
		case <-w.Changed():
		default:
			t.Error("a released watch has no batch")
		}
	}
	if n := testutil.ToFloat64(e.hub.metrics.notifications); n != float64(len(order)) {
		t.Errorf("notifications = %v, want %d", n, len(order))
	}
}

// TestCloseBeforeRelease drops a closed watch's batch and gives its budget back.
func TestCloseBeforeRelease(t *testing.T) {
	fc := newFakeClock()
	e := newEnv(t, envOpts{
		opts:   Options{SweepInterval: time.Hour, ReadBudget: 1}, // 1 s per read, burst 1
		before: func(h *Hub) { h.clock = fc },
	})
	s1 := e.set("s", past)
	s2 := e.set("s", past.Add(time.Minute))
	e.watch(obj("s", s2))
	fc.Advance(time.Minute)
	v := e.vault()

	a := e.watch(obj("s", s1)) // released at once
	recv(t, a)
	b := e.watch(obj("s", s1)) // waits 1 s
	waitFor(t, "b's timer", func() bool { return len(fc.deadlines()) == 1 })
	if !b.Pending() || a.Pending() {
		t.Errorf("Pending: a (released) %v, b (waiting) %v", a.Pending(), b.Pending())
	}
	b.Close()
	waitFor(t, "the pacer to drop b", func() bool { return idle(v) && len(fc.deadlines()) == 0 })
	if tok := v.limiter.TokensAt(fc.Now()); tok != 0 {
		t.Errorf("tokens after dropping b: %v, want 0 (b's reservation given back)", tok)
	}

	// c waits 1 s (not 2: b's token came back); d, queued behind it, is closed
	// before its turn and costs nothing.
	c := e.watch(obj("s", s1))
	d := e.watch(obj("s", s1))
	waitFor(t, "c's timer", func() bool { return len(fc.deadlines()) == 1 })
	if dl := fc.deadlines()[0]; dl != time.Second {
		t.Errorf("c waits %v, want 1s", dl)
	}
	d.Close()
	fc.Advance(time.Second)
	recv(t, c)
	f := e.watch(obj("s", s1))
	waitFor(t, "f's timer", func() bool { return len(fc.deadlines()) == 1 })
	if dl := fc.deadlines()[0]; dl != time.Second {
		t.Errorf("f waits %v, want 1s (d cost nothing)", dl)
	}
	f.Close()
	waitFor(t, "the pacer to drop f", func() bool { return idle(v) && len(fc.deadlines()) == 0 })

	for _, w := range []*Watch{b, d, f} {
		select {
		case got := <-w.Changed():
			t.Errorf("a closed watch got %v", got)
		default:
		}
		w.Close() // idempotent
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.watchers != 1 || len(v.objects[objectKey(hubapi.KindSecret, "s")].watchers) != 1 || v.current != nil || v.qhead != len(v.queue) {
		t.Errorf("state after closing: %d watchers, %d indexed, current %v, queue %d/%d",
			v.watchers, len(v.objects[objectKey(hubapi.KindSecret, "s")].watchers), v.current, v.qhead, len(v.queue))
	}
}

func TestIdleTimeoutStopsTheSweeper(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: 50 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}})
	v1 := e.set("s", past)
	w := e.watch(obj("s", v1))
	waitFor(t, "sweeps going on", func() bool { return e.calls("list_secrets 200") >= 3 })
	// Watched: it keeps sweeping past the idle timeout.
	time.Sleep(400 * time.Millisecond)
	e.vault()
	w.Close()
	waitFor(t, "the vault to stop", func() bool {
		e.hub.mu.Lock()
		defer e.hub.mu.Unlock()
		return len(e.hub.vaults) == 0
	})
	n := e.calls("list_secrets 200")
	time.Sleep(300 * time.Millisecond)
	if m := e.calls("list_secrets 200"); m != n {
		t.Errorf("%d listings after the vault stopped", m-n)
	}
	if c := testutil.CollectAndCount(e.hub.metrics.watchers); c != 0 {
		t.Errorf("%d watcher series left", c)
	}
	// Watched again: a new sweeper, a new client.
	e.watch(obj("s", v1))
	if c := e.clients.Load(); c != 2 {
		t.Errorf("Options.Client called %d times, want 2", c)
	}
}

func TestWatchBeforeRun(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New accepted a nil Client")
	}
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v1 := e.set("s", past)
	h, err := New(Options{Client: e.hub.opts.Client})
	if err != nil {
		t.Fatal(err)
	}
	// Not running: the Watch waits for Run, bounded by its context.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = h.Watch(ctx, e.url, []hubapi.Object{obj("s", v1)})
	if r, ok := err.(*Refusal); !ok || r.Reason != hubapi.ReasonUnavailable {
		t.Errorf("Watch before Run: %v", err)
	}
}

// idle reports whether the pacer releases nothing now.
func idle(v *vault) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.current == nil
}

func TestRunEndEndsWatches(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v1 := e.set("s", past)
	w := e.watch(obj("s", v1))
	if w.Err() != nil {
		t.Fatalf("Err before the end: %v", w.Err())
	}
	e.stop()
	select {
	case <-w.Done():
	default:
		t.Fatal("Done not closed when Run returned")
	}
	if r, ok := w.Err().(*Refusal); !ok || r.Reason != hubapi.ReasonUnavailable {
		t.Errorf("Err = %v, want Unavailable", w.Err())
	}
	_, err := e.hub.Watch(context.Background(), e.url, []hubapi.Object{obj("s", v1)})
	if r, ok := err.(*Refusal); !ok || r.Reason != hubapi.ReasonUnavailable {
		t.Errorf("Watch after Run: %v", err)
	}
	if err := e.hub.Run(context.Background()); err == nil {
		t.Error("a second Run was accepted")
	}
}
