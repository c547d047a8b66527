package vaults

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Kinds are the object kinds the hub can watch, in the order a sweep lists
// them.
var Kinds = []string{hubapi.KindSecret, hubapi.KindCertificate, hubapi.KindKey}

// ParseKinds parses a comma-separated list of kinds (secret, certificate,
// key; each at most once); the result is in the order of Kinds.
func ParseKinds(s string) ([]string, error) {
	seen := map[string]bool{}
	for _, k := range strings.Split(s, ",") {
		k = strings.ToLower(strings.TrimSpace(k))
		switch {
		case k == "":
			continue
		case !slices.Contains(Kinds, k):
			return nil, fmt.Errorf("unknown kind %q: use %s", k, strings.Join(Kinds, ", "))
		case seen[k]:
			return nil, fmt.Errorf("kind %q is named twice", k)
		}
		seen[k] = true
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("no kind: name at least one of %s", strings.Join(Kinds, ", "))
	}
	var out []string
	for _, k := range Kinds {
		if seen[k] {
			out = append(out, k)
		}
	}
	return out, nil
}

// Key Vault operations of the other kinds, as counted (secrets: opListSecrets
// and opListVersions).
const (
	opListCertificates       = "list_certificates"
	opListCertificateVersion = "list_certificate_versions"
	opListKeys               = "list_keys"
	opListKeyVersions        = "list_key_versions"
)

// item is one listed object or version, whatever its kind: never a value.
type item struct {
	name, version string
	created       int64 // Unix s; 0 unknown
	updated       int64 // Unix s; 0 unknown
	enabled       bool
	x5t           string // certificates: the thumbprint, base64url
}

// itemPager pages a listing of one kind.
type itemPager interface {
	More() bool
	NextPage(ctx context.Context) ([]item, error)
}

// sdkPager adapts an SDK pager: conv turns its page into items.
type sdkPager[T any] struct {
	p    *runtime.Pager[T]
	conv func(T) []item
}

func (s sdkPager[T]) More() bool { return s.p.More() }

func (s sdkPager[T]) NextPage(ctx context.Context) ([]item, error) {
	page, err := s.p.NextPage(ctx)
	if err != nil {
		return nil, err
	}
	return s.conv(page), nil
}

// kindLister lists one kind of a vault with the SDK's pagers (properties
// only).
type kindLister struct {
	kind               string
	opList, opVersions string
	list               func() itemPager
	versions           func(name string) itemPager
}

// identified is the SDK's ID of every kind.
type identified interface {
	Name() string
	Version() string
}

// itemOf builds an item from the properties that every kind has.
func itemOf(id identified, enabled *bool, created, updated *time.Time) item {
	it := item{name: id.Name(), version: id.Version(), enabled: enabled != nil && *enabled}
	if created != nil {
		it.created = created.Unix()
	}
	if updated != nil {
		it.updated = updated.Unix()
	}
	return it
}

// items converts the properties of a page with one.
func items[P any](ps []*P, one func(*P) (item, bool)) []item {
	out := make([]item, 0, len(ps))
	for _, p := range ps {
		if p == nil {
			continue
		}
		if it, ok := one(p); ok {
			out = append(out, it)
		}
	}
	return out
}

func secretItem(p *azsecrets.SecretProperties) (item, bool) {
	if p.ID == nil {
		return item{}, false
	}
	if a := p.Attributes; a != nil {
		return itemOf(p.ID, a.Enabled, a.Created, a.Updated), true
	}
	return itemOf(p.ID, nil, nil, nil), true
}

func certificateItem(p *azcertificates.CertificateProperties) (item, bool) {
	if p.ID == nil {
		return item{}, false
	}
	it := itemOf(p.ID, nil, nil, nil)
	if a := p.Attributes; a != nil {
		it = itemOf(p.ID, a.Enabled, a.Created, a.Updated)
	}
	if len(p.X509Thumbprint) > 0 {
		it.x5t = base64.RawURLEncoding.EncodeToString(p.X509Thumbprint)
	}
	return it, true
}

func keyItem(p *azkeys.KeyProperties) (item, bool) {
	if p.KID == nil {
		return item{}, false
	}
	if a := p.Attributes; a != nil {
		return itemOf(p.KID, a.Enabled, a.Created, a.Updated), true
	}
	return itemOf(p.KID, nil, nil, nil), true
}

func secretLister(c *azsecrets.Client) *kindLister {
	return &kindLister{
		kind: hubapi.KindSecret, opList: opListSecrets, opVersions: opListVersions,
		list: func() itemPager {
			return sdkPager[azsecrets.ListSecretPropertiesResponse]{c.NewListSecretPropertiesPager(nil),
				func(r azsecrets.ListSecretPropertiesResponse) []item { return items(r.Value, secretItem) }}
		},
		versions: func(name string) itemPager {
			return sdkPager[azsecrets.ListSecretPropertiesVersionsResponse]{c.NewListSecretPropertiesVersionsPager(name, nil),
				func(r azsecrets.ListSecretPropertiesVersionsResponse) []item { return items(r.Value, secretItem) }}
		},
	}
}

func certificateLister(c *azcertificates.Client) *kindLister {
	return &kindLister{
		kind: hubapi.KindCertificate, opList: opListCertificates, opVersions: opListCertificateVersion,
		list: func() itemPager {
			return sdkPager[azcertificates.ListCertificatePropertiesResponse]{c.NewListCertificatePropertiesPager(nil),
				func(r azcertificates.ListCertificatePropertiesResponse) []item {
					return items(r.Value, certificateItem)
				}}
		},
		versions: func(name string) itemPager {
			return sdkPager[azcertificates.ListCertificatePropertiesVersionsResponse]{c.NewListCertificatePropertiesVersionsPager(name, nil),
				func(r azcertificates.ListCertificatePropertiesVersionsResponse) []item {
					return items(r.Value, certificateItem)
				}}
		},
	}
}

func keyLister(c *azkeys.Client) *kindLister {
	return &kindLister{
		kind: hubapi.KindKey, opList: opListKeys, opVersions: opListKeyVersions,
		list: func() itemPager {
			return sdkPager[azkeys.ListKeyPropertiesResponse]{c.NewListKeyPropertiesPager(nil),
				func(r azkeys.ListKeyPropertiesResponse) []item { return items(r.Value, keyItem) }}
		},
		versions: func(name string) itemPager {
			return sdkPager[azkeys.ListKeyPropertiesVersionsResponse]{c.NewListKeyPropertiesVersionsPager(name, nil),
				func(r azkeys.ListKeyPropertiesVersionsResponse) []item { return items(r.Value, keyItem) }}
		},
	}
}

// listers builds the listers of the watched kinds of a vault with the
// Options' clients.
func (h *Hub) listers(canonical string) (map[string]*kindLister, error) {
	out := make(map[string]*kindLister, len(h.opts.Kinds))
	for _, k := range h.opts.Kinds {
		switch k {
		case hubapi.KindSecret:
			c, err := h.opts.Client(canonical)
			if err != nil {
				return nil, err
			}
			out[k] = secretLister(c)
		case hubapi.KindCertificate:
			c, err := h.opts.CertificateClient(canonical)
			if err != nil {
				return nil, err
			}
			out[k] = certificateLister(c)
		case hubapi.KindKey:
			c, err := h.opts.KeyClient(canonical)
			if err != nil {
				return nil, err
			}
			out[k] = keyLister(c)
		}
	}
	return out, nil
}

// listPermission is the fix a refused listing of kind asks for.
func listPermission(kind string) string {
	switch kind {
	case hubapi.KindCertificate:
		return "the list permission on certificates (access policy) or the certificates/read data action (RBAC)"
	case hubapi.KindKey:
		return "the list permission on keys (access policy) or the keys/read data action (RBAC)"
	}
	return "the list permission on secrets (access policy) or the secrets/readMetadata data action (RBAC)"
}

// sweepsKind reports whether this sweep lists kind: secrets always; another
// kind when the vault has objects of it and, if Key Vault refused its listing,
// its retry is due.
func (v *vault) sweepsKind(kind string, now time.Time) bool {
	if kind == hubapi.KindSecret {
		return true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if ks := v.kinds[kind]; ks != nil && ks.notListable && now.Before(ks.retryAt) {
		return false
	}
	for _, o := range v.objects {
		if o.kind == kind {
			return true
		}
	}
	return false
}

// listKind lists the objects of one kind, all pages, into seen (objectKey ->
// updated).
func (v *vault) listKind(l *kindLister, seen map[string]int64) error {
	pager := l.list()
	for pager.More() {
		v.debit(1)
		page, err := pager.NextPage(v.ctx)
		v.count(l.opList, err)
		if err != nil {
			return err
		}
		for _, it := range page {
			seen[objectKey(l.kind, it.name)] = it.updated
		}
	}
	return nil
}

// kindStateLocked returns the state of a kind, created if needed.
func (v *vault) kindStateLocked(kind string) *kindState {
	ks := v.kinds[kind]
	if ks == nil {
		ks = &kindState{}
		v.kinds[kind] = ks
	}
	return ks
}

// kindListed records a successful listing of a kind.
func (v *vault) kindListed(kind string) {
	if kind == hubapi.KindSecret {
		return // the vault's status (succeeded)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	ks := v.kindStateLocked(kind)
	if ks.notListable {
		v.h.log.Info("the hub may list this kind in this vault again", "vault", v.url, "kind", kind)
	}
	ks.notListable, ks.msg = false, ""
	v.h.metrics.listable.WithLabelValues(v.label, kind).Set(1)
}

// kindRefused records that Key Vault refused the listing of a kind other than
// secrets (401, 403): logged once until it recovers, exported, and the
// watches of its objects are answered at once with them to poll. It is listed
// again after NotListableRetry.
func (v *vault) kindRefused(kind string, err error) {
	h := v.h
	v.mu.Lock()
	defer v.mu.Unlock()
	ks := v.kindStateLocked(kind)
	ks.retryAt = time.Now().Add(h.notListableRetry)
	h.metrics.listable.WithLabelValues(v.label, kind).Set(0)
	if ks.notListable {
		return
	}
	ks.notListable = true
	ks.msg = fmt.Sprintf("Key Vault refused the hub's listing of %ss in %s (HTTP %d): the hub needs %s; poll this %s meanwhile",
		kind, v.url, status(err), listPermission(kind), kind)
	h.log.Warn("the hub may not list this kind in this vault: its watchers poll these objects; retrying every "+h.notListableRetry.String(),
		"vault", v.url, "kind", kind, "status", status(err), "err", shortErr(err))
	var ws []*Watch
	for _, o := range v.objects {
		if o.kind != kind {
			continue
		}
		for _, r := range o.watchers {
			ws = append(ws, r.w)
		}
	}
	for _, w := range ws {
		v.releasePollLocked(w)
	}
}

// kindFailed records a listing of a kind other than secrets that failed
// for another reason than a refusal (throttled, 5xx, a connection): logged
// and counted; the kind is listed again at the next sweep, and the secrets'
// sweep goes on.
func (v *vault) kindFailed(kind string, err error) {
	h := v.h
	result := sweepError
	if status(err) == http.StatusTooManyRequests {
		result = sweepThrottled
	}
	h.metrics.sweeps.WithLabelValues(result).Inc()
	h.log.Warn("listing this kind failed; retried at the next sweep", "vault", v.url, "kind", kind, "status", status(err), "err", shortErr(err))
}

// pollOfLocked returns the object of a watch request that the hub does not
// watch, with why; ok false when it is watched. A kind Key Vault refused is
// polled until its retry is due; after that the watch lists the object
// itself (and finds it refused again, or listable).
func (v *vault) pollOfLocked(o hubapi.Object) (hubapi.Polled, bool) {
	if p, ok := v.h.notWatched(o); ok {
		return p, true
	}
	if ks := v.kinds[o.Kind]; ks != nil && ks.notListable && time.Now().Before(ks.retryAt) {
		return hubapi.Polled{Kind: o.Kind, Name: o.Name, Reason: hubapi.PollKindNotListable, Message: ks.msg,
			RetryAfterSeconds: int(max(time.Second, time.Until(ks.retryAt)).Round(time.Second) / time.Second)}, true
	}
	return hubapi.Polled{}, false
}

// notWatched returns an object of a kind not in Options.Kinds, with why; ok
// false for a watched kind.
func (h *Hub) notWatched(o hubapi.Object) (hubapi.Polled, bool) {
	if slices.Contains(h.opts.Kinds, o.Kind) {
		return hubapi.Polled{}, false
	}
	return hubapi.Polled{Kind: o.Kind, Name: o.Name, Reason: hubapi.PollKindNotWatched,
		Message:           fmt.Sprintf("the hub does not watch %ss (its --watch-kinds is %s): poll this %s", o.Kind, strings.Join(h.opts.Kinds, ","), o.Kind),
		RetryAfterSeconds: int(KindNotWatchedRetry / time.Second)}, true
}

// KindNotWatchedRetry is the RetryAfterSeconds of an object of a kind the hub
// does not watch: its configuration changes only with a rollout.
const KindNotWatchedRetry = time.Hour

// releasePollLocked ends a watch at once, out of pacing, with no changed
// objects and its objects that the hub no longer watches to poll (their
// kind became not listable): the agent watches the others again at once.
func (v *vault) releasePollLocked(w *Watch) {
	if w.state == stateDone {
		return
	}
	for _, wo := range w.objs {
		if p, ok := v.pollOfLocked(hubapi.Object{Kind: wo.o.kind, Name: wo.name}); ok {
			w.polled = append(w.polled, p)
			v.h.metrics.polled.WithLabelValues(p.Kind, p.Reason).Inc()
		}
	}
	w.state = stateDone
	v.unindexLocked(w)
	w.ch <- []hubapi.Object{}
	w.notifyLocked()
	if v.current == w {
		select {
		case v.wake <- struct{}{}:
		default:
		}
	}
}
