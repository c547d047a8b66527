package vaults

import (
	"context"
	"testing"
	"time"
)

// TestHint: an event's version that is new to the hub lists the secret at once
// and notifies its watchers without waiting for a sweep; a duplicate, a late
// event for an older version, and events of secrets or vaults nobody watches
// cost no Key Vault call.
func TestHint(t *testing.T) {
	e := newEnv(t, envOpts{opts: Options{SweepInterval: time.Hour}})
	v1 := e.set("API-KEY", past)
	w := e.watch(obj("API-KEY", v1))
	ctx := context.Background()
	before := e.calls("list_versions 200")

	v2 := e.set("API-KEY", past.Add(time.Minute))
	res, err := e.hub.Hint(ctx, "https://"+testVault+".vault.azure.net", "api-key", v2)
	if err != nil || res != HintListed {
		t.Fatalf("Hint(new version) = %s, %v; want %s", res, err, HintListed)
	}
	select {
	case batch := <-w.Changed():
		if len(batch) != 1 || batch[0].Version != v2 || batch[0].Name != "API-KEY" {
			t.Errorf("batch %+v, want API-KEY@%s", batch, v2)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher was not notified after the hint")
	}
	listed := e.calls("list_versions 200")
	if listed != before+1 {
		t.Errorf("%d version listings for one hint, want 1", listed-before)
	}

	w2 := e.watch(obj("API-KEY", v2))
	for _, tc := range []struct {
		name, vault, secret, version, want string
	}{
		{"duplicate", e.url, "API-KEY", v2, HintKnown},
		{"late event of an older version", e.url, "API-KEY", v1, HintKnown},
		{"a secret nobody watches", e.url, "OTHER", v2, HintUnwatched},
		{"a vault nobody watches", "https://othervault.vault.azure.net/", "API-KEY", v2, HintUnwatched},
		{"not a vault URL", "https://example.com/", "API-KEY", v2, HintUnwatched},
		{"not a version id", e.url, "API-KEY", "../x", HintUnwatched},
	} {
		if res, err := e.hub.Hint(ctx, tc.vault, tc.secret, tc.version); err != nil || res != tc.want {
			t.Errorf("%s: Hint = %s, %v; want %s", tc.name, res, err, tc.want)
		}
	}
	if got := e.calls("list_versions 200"); got != listed {
		t.Errorf("%d version listings for duplicate, late and unwatched hints, want 0", got-listed)
	}
	select {
	case batch := <-w2.Changed():
		t.Errorf("a watcher of the newest version was notified: %+v", batch)
	default:
	}
}
