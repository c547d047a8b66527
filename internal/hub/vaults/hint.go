package vaults

import (
	"context"
	"time"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Results of Hint, the label of kvinject_hub_events_total's result in the
// event intake.
const (
	// HintListed: the secret is watched and the version was new to the hub:
	// its versions were listed (watchers notified if the newest changed).
	HintListed = "listed"
	// HintKnown: the hub already knows the version (a duplicate or late
	// event): no Key Vault call.
	HintKnown = "known"
	// HintUnwatched: no agent of this replica watches the vault or the
	// secret: dropped, no Key Vault call.
	HintUnwatched = "unwatched"
	// HintFailed: the listing failed (the sweep will catch up).
	HintFailed = "failed"
)

// Hint tells the hub that a secret may have a new version, as a Key Vault
// event says: when an agent watches that secret and the version is not one
// the hub knows, it lists the secret's versions now (metadata only, paced
// within the read budget) instead of at the next sweep, and notifies the
// watchers if the newest enabled version changed. An event is only a hint:
// the listing decides, so a late event for an older version never moves
// anyone backwards, and a duplicate costs nothing. vaultURL is any form of
// the vault's URL; the answer is one of the Hint* results.
func (h *Hub) Hint(ctx context.Context, vaultURL, name, version string) (string, error) {
	return h.HintObject(ctx, vaultURL, hubapi.KindSecret, name, version)
}

// HintObject is Hint for an object of any kind (hubapi.KindSecret,
// KindCertificate, KindKey): a kind the hub does not watch is HintUnwatched.
func (h *Hub) HintObject(ctx context.Context, vaultURL, kind, name, version string) (string, error) {
	canonical, _, r := normalizeVault(vaultURL)
	if r != nil || !hubapi.IsKind(kind) || !validSecretName(name) || (version != "" && !validVersion(version)) {
		return HintUnwatched, nil
	}
	h.mu.Lock()
	v := h.vaults[canonical]
	h.mu.Unlock()
	if v == nil {
		return HintUnwatched, nil
	}
	v.mu.Lock()
	o := v.objects[objectKey(kind, name)]
	if o == nil || len(o.watchers) == 0 || v.stopped {
		v.mu.Unlock()
		return HintUnwatched, nil
	}
	if _, ok := o.knows(lowerVersion(version)); ok && version != "" {
		v.mu.Unlock()
		return HintKnown, nil
	}
	hint := int64(-1)
	if u, ok := v.lastSeen[o.key]; ok {
		hint = u
	}
	v.mu.Unlock()
	if err := v.refresh(ctx, o, time.Now(), hint, true); err != nil {
		return HintFailed, err
	}
	return HintListed, nil
}
