package vaults

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"golang.org/x/time/rate"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Key Vault operations, as counted.
const (
	opListSecrets  = "list_secrets"
	opListVersions = "list_versions"
)

// vaultStatus is what the last listing of a vault said.
type vaultStatus uint8

const (
	statusUnknown     vaultStatus = iota // no sweep finished yet
	statusOK                             // the last sweep succeeded
	statusFailing                        // 429, 5xx or connection errors: backing off
	statusNotListable                    // 401, 403: retried every NotListableRetry
)

// generation ends the watches of a vault together (Watch.Done) when the vault
// becomes not listable or the hub stops; a new one starts then.
type generation struct {
	done chan struct{}
	err  *Refusal
}

// vault is one swept vault. mu guards the fields below it.
type vault struct {
	h       *Hub
	url     string                 // canonical
	label   string                 // host: the metrics label
	listers map[string]*kindLister // of the watched kinds
	ctx     context.Context
	cancel  context.CancelFunc
	limiter *rate.Limiter
	kick    chan struct{} // sweep now (instead of waiting for the interval)
	wake    chan struct{} // the pacer: the queue grew, or its current watch closed

	mu        sync.Mutex
	swept     chan struct{} // closed when the first sweep ended, whatever its result
	status    vaultStatus
	statusMsg string
	retryAt   time.Time // of the next sweep when failing or not listable
	failures  int       // consecutive transient failures
	gen       *generation
	objects   map[string]*object    // watched (or recently watched) objects, by objectKey
	lastSeen  map[string]int64      // every object of the last sweep: objectKey -> updated (Unix s)
	kinds     map[string]*kindState // the listability of the kinds other than secrets
	watchers  int
	inflight  int // Watch calls holding the vault
	idleSince time.Time
	stopped   bool
	sweeping  bool
	sweepSeq  int           // sweeps ended
	sweepEnd  chan struct{} // closed and replaced when a sweep ends (tests)
	queue     []*Watch      // FIFO of changed watches; queue[qhead:] are pending
	qhead     int
	current   *Watch // being released by the pacer
}

// object is a watched secret of a vault.
type object struct {
	key     string    // objectKey
	kind    string    // hubapi.Kind*
	name    string    // as first watched
	known   []version // listed versions, by id
	newest  version   // newest enabled version; id "" when none (all disabled, deleted)
	exists  bool      // the last listing found it
	listed  bool      // versions listed at least once
	settled bool      // the listing came long enough after updated to trust the hint
	// listedUpdated is the secret's updated (Unix s) seen before the last
	// version listing; -1 when unknown.
	listedUpdated int64
	listedAt      time.Time // start of the last version listing
	truncated     bool      // more than MaxVersions versions (logged once)
	// nextSeq is the discovery rank the next listing gives the versions it
	// finds first (see version.seq).
	nextSeq     uint32
	flight      *flight
	watchers    []ref
	lastWatched time.Time
}

// ref is an entry of an object's watcher index: the watch and the index of the
// object in its objs.
type ref struct {
	w *Watch
	i int32
}

// flight is one version listing that concurrent callers share.
type flight struct {
	start time.Time
	done  chan struct{}
	err   error
}

// kindState is whether the hub may list a kind (other than secrets) in a
// vault: a vault may allow listing secrets but not certificates.
type kindState struct {
	notListable bool
	msg         string
	retryAt     time.Time // of the next listing while not listable
}

func newVault(h *Hub, canonical, label string, listers map[string]*kindLister) *vault {
	ctx, cancel := context.WithCancel(h.runCtx)
	v := &vault{
		h:         h,
		url:       canonical,
		label:     label,
		listers:   listers,
		kinds:     map[string]*kindState{},
		ctx:       ctx,
		cancel:    cancel,
		limiter:   rate.NewLimiter(rate.Limit(h.opts.ReadBudget), h.burst),
		kick:      make(chan struct{}, 1),
		wake:      make(chan struct{}, 1),
		swept:     make(chan struct{}),
		gen:       &generation{done: make(chan struct{})},
		objects:   map[string]*object{},
		idleSince: time.Now(),
		sweepEnd:  make(chan struct{}),
	}
	h.metrics.watchers.WithLabelValues(label).Set(0)
	for k := range listers {
		h.metrics.listable.WithLabelValues(label, k).Set(1)
	}
	return v
}

// objectLocked returns the object of a kind and name, created if needed.
func (v *vault) objectLocked(kind, name string) *object {
	key := objectKey(kind, name)
	o := v.objects[key]
	if o == nil {
		o = &object{key: key, kind: kind, name: name, listedUpdated: -1}
		v.objects[key] = o
	}
	return o
}

// endGenerationLocked ends the watches of the current generation with err.
func (v *vault) endGenerationLocked(err *Refusal) {
	v.gen.err = err
	close(v.gen.done)
	// Every watch of the generation is in its objects' indexes until it
	// ends; notifyLocked calls each one's function once.
	for _, o := range v.objects {
		for _, r := range o.watchers {
			if r.w.gen == v.gen {
				r.w.notifyLocked()
			}
		}
	}
	v.gen = &generation{done: make(chan struct{})}
}

// release ends a Watch call's hold on the vault.
func (v *vault) release() {
	v.mu.Lock()
	v.inflight--
	if v.inflight == 0 && v.watchers == 0 {
		v.idleSince = time.Now()
	}
	v.mu.Unlock()
}

// jitter returns d +-10%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// sweepLoop sweeps until the hub stops or the vault idles.
func (v *vault) sweepLoop() {
	defer v.h.wg.Done()
	for {
		wait, backoff := v.sweep()
		if v.stopIfIdle() {
			return
		}
		t := time.NewTimer(wait)
		kick := v.kick
		if backoff {
			kick = nil // a backoff is never cut short
		}
		select {
		case <-v.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-kick:
			t.Stop()
		}
	}
}

// stopIfIdle stops the vault when nobody watched it for IdleTimeout.
func (v *vault) stopIfIdle() bool {
	h := v.h
	h.mu.Lock()
	defer h.mu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.watchers > 0 || v.inflight > 0 || time.Since(v.idleSince) < h.opts.IdleTimeout {
		return false
	}
	if h.vaults[v.url] == v {
		delete(h.vaults, v.url)
	}
	v.stopped = true
	v.cancel()
	h.metrics.forget(v.label)
	h.log.Info("stopped sweeping an idle vault", "vault", v.url, "idle", time.Since(v.idleSince).Round(time.Second))
	return true
}

// sweep lists the vault once and the versions of the watched secrets whose
// hint changed. It returns the time until the next sweep, and whether that is a
// backoff.
func (v *vault) sweep() (time.Duration, bool) {
	h := v.h
	v.mu.Lock()
	v.sweeping = true
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		v.sweeping = false
		v.sweepSeq++
		close(v.sweepEnd)
		v.sweepEnd = make(chan struct{})
		v.mu.Unlock()
	}()

	start := time.Now()
	seen := map[string]int64{}
	listed := map[string]bool{} // the kinds listed by this sweep
	for _, kind := range Kinds {
		l := v.listers[kind]
		if l == nil || !v.sweepsKind(kind, start) {
			continue
		}
		err := v.listKind(l, seen)
		switch {
		case err == nil:
			listed[kind] = true
			v.kindListed(kind)
		case errors.Is(err, context.Canceled):
			return 0, false
		case kind != hubapi.KindSecret && refused(err):
			v.kindRefused(kind, err)
		case kind != hubapi.KindSecret:
			// Throttled or failing: this kind learns nothing from this sweep
			// and is listed again at the next one; the secrets, listed
			// first, are still refreshed.
			v.kindFailed(kind, err)
		default:
			return v.failed(err)
		}
	}

	type todo struct {
		o       *object
		updated int64
	}
	var refresh []todo
	now := time.Now()
	v.mu.Lock()
	v.lastSeen = seen
	for key, o := range v.objects {
		if len(o.watchers) == 0 && o.flight == nil && now.Sub(o.lastWatched) > h.opts.IdleTimeout {
			delete(v.objects, key)
			continue
		}
		if !listed[o.kind] {
			continue // not listed by this sweep: nothing learnt
		}
		u, ok := seen[key]
		switch {
		case !ok && (o.listed && !o.exists || o.listedAt.After(start)):
			// Still absent, or listed by a watch since this sweep began.
		case !ok:
			// Deleted (or not there yet): no newest version, nobody told.
			o.listed, o.exists, o.known, o.newest, o.settled, o.listedUpdated = true, false, nil, version{}, true, -1
		case !o.listed || !o.settled || u != o.listedUpdated:
			refresh = append(refresh, todo{o, u})
		}
	}
	v.mu.Unlock()

	for _, r := range refresh {
		if err := v.refresh(v.ctx, r.o, time.Time{}, r.updated, false); err != nil {
			if errors.Is(err, context.Canceled) {
				return 0, false
			}
			switch {
			case r.o.kind != hubapi.KindSecret && refused(err):
				v.kindRefused(r.o.kind, err)
				continue // its objects are polled now
			case notListable(err):
				continue // logged by refresh; the other objects are still swept
			case r.o.kind != hubapi.KindSecret:
				v.kindFailed(r.o.kind, err)
				continue // refreshed again at the next sweep
			}
			return v.failed(err)
		}
	}
	v.succeeded()
	return jitter(h.opts.SweepInterval), false
}

// count counts a Key Vault call.
func (v *vault) count(op string, err error) {
	switch {
	case err == nil:
		v.h.countCall(op, "200")
	case errors.Is(err, context.Canceled):
	default:
		if s := status(err); s != 0 {
			v.h.countCall(op, strconv.Itoa(s))
		} else {
			v.h.countCall(op, "error")
		}
	}
}

// status returns the HTTP status of a Key Vault error, 0 if none.
func status(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// retryAfter returns the server's advice in a Key Vault error, 0 if none.
func retryAfter(err error) time.Duration {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.RawResponse == nil {
		return 0
	}
	hd := re.RawResponse.Header
	for _, k := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if ms, err := strconv.ParseInt(hd.Get(k), 10, 64); err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond
		}
	}
	ra := hd.Get("Retry-After")
	if s, err := strconv.ParseInt(ra, 10, 64); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(ra); err == nil {
		return max(0, time.Until(t))
	}
	return 0
}

// refused reports whether Key Vault refused the hub's identity (401, 403):
// for a kind other than secrets, the kind is not listable in that vault.
func refused(err error) bool {
	s := status(err)
	return s == http.StatusUnauthorized || s == http.StatusForbidden
}

// notListable reports whether a listing error means the hub may not list.
func notListable(err error) bool {
	s := status(err)
	return s >= 400 && s < 500 && s != http.StatusTooManyRequests && s != http.StatusRequestTimeout
}

// failed records a failed sweep and returns the wait before the next one.
func (v *vault) failed(err error) (time.Duration, bool) {
	h := v.h
	if errors.Is(err, context.Canceled) {
		return 0, false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	first := v.status == statusUnknown
	defer func() {
		if first {
			close(v.swept)
		}
	}()
	if notListable(err) {
		h.metrics.sweeps.WithLabelValues(sweepNotListable).Inc()
		h.metrics.listable.WithLabelValues(v.label, hubapi.KindSecret).Set(0)
		wait := h.notListableRetry
		if v.status != statusNotListable {
			h.log.Warn("the hub may not list this vault: its watches are refused and the agents poll; retrying every "+wait.String(),
				"vault", v.url, "status", status(err), "err", shortErr(err))
			v.status = statusNotListable
			v.statusMsg = "Key Vault refused the hub's listing of " + v.url + " (HTTP " + strconv.Itoa(status(err)) +
				"): give the hub's identity the list permission on secrets (access policy) or the secrets/readMetadata data action (RBAC)"
			v.endGenerationLocked(&Refusal{Reason: hubapi.ReasonVaultNotListable, Message: v.statusMsg, RetryAfter: wait})
		}
		v.failures = 0
		v.retryAt = time.Now().Add(wait)
		return wait, true
	}
	result := sweepError
	if status(err) == http.StatusTooManyRequests {
		result = sweepThrottled
	}
	h.metrics.sweeps.WithLabelValues(result).Inc()
	v.failures++
	wait := h.backoffBase << min(v.failures-1, 20)
	wait = min(max(wait, retryAfter(err)), MaxBackoff)
	h.log.Warn("sweep failed: backing off", "vault", v.url, "status", status(err), "backoff", wait, "err", shortErr(err))
	if v.status != statusOK {
		v.status = statusFailing
		v.statusMsg = "the hub cannot list " + v.url + " now: " + shortErr(err)
	}
	v.retryAt = time.Now().Add(wait)
	return wait, true
}

// succeeded records a successful sweep.
func (v *vault) succeeded() {
	h := v.h
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.status == statusNotListable {
		h.log.Info("the hub may list this vault again", "vault", v.url)
	}
	if v.status == statusUnknown {
		close(v.swept)
	}
	v.status, v.statusMsg, v.failures = statusOK, "", 0
	h.metrics.sweeps.WithLabelValues(sweepOK).Inc()
	h.metrics.listable.WithLabelValues(v.label, hubapi.KindSecret).Set(1)
}

// shortErr is the first line of an error: the SDK's errors span many lines.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}

// debit takes n reads from the budget without waiting (the sweeps' pages).
func (v *vault) debit(n int) {
	now := v.h.clock.Now()
	for n > 0 {
		k := min(n, v.h.burst)
		v.limiter.ReserveN(now, k)
		n -= k
	}
}

// reserve reserves n reads and returns the reservations and when they may act.
func (v *vault) reserve(now time.Time, n int) ([]*rate.Reservation, time.Time) {
	var rs []*rate.Reservation
	at := now
	for n > 0 {
		k := min(n, v.h.burst)
		r := v.limiter.ReserveN(now, k)
		rs = append(rs, r)
		at = now.Add(r.DelayFrom(now))
		n -= k
	}
	return rs, at
}

// cancelReservations gives unspent reservations back, newest first.
func cancelReservations(rs []*rate.Reservation, now time.Time) {
	for i := len(rs) - 1; i >= 0; i-- {
		rs[i].CancelAt(now)
	}
}

// spend waits for n reads of the budget (the version listings of watches).
func (v *vault) spend(ctx context.Context, n int) error {
	c := v.h.clock
	rs, at := v.reserve(c.Now(), n)
	d := at.Sub(c.Now())
	if d <= 0 {
		return nil
	}
	ch, stop := c.After(d)
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		stop()
		cancelReservations(rs, c.Now())
		return ctx.Err()
	}
}

// version is one listed version of a secret.
type version struct {
	id      string
	created int64
	enabled bool
	// seq orders versions created in the same second, which Key Vault's
	// whole-second timestamps cannot: 0 for the versions of the object's first
	// listing, then 1, 2, ... for those that each later listing found first.
	// A version the hub discovered later was created later.
	seq uint32
	// x5t is a certificate version's thumbprint ("" for other kinds).
	x5t string
}

// after reports whether a was created after b: a later second, or the same
// second and discovered by a later listing.
func (a version) after(b version) bool {
	return a.created > b.created || (a.created == b.created && a.seq > b.seq)
}

// listing is the result of listing a secret's versions.
type listing struct {
	versions  []version
	date      time.Time // the server's Date of the first page (local time if none)
	truncated bool
	notFound  bool
}

// listVersions lists an object's versions, at most MaxVersions; paced waits
// for the budget before each page, otherwise it debits it.
func (v *vault) listVersions(ctx context.Context, kind, name string, paced bool) (listing, error) {
	var l listing
	kl := v.listers[kind]
	pager := kl.versions(name)
	for pager.More() && len(l.versions) < v.h.opts.MaxVersions {
		if paced {
			if err := v.spend(ctx, 1); err != nil {
				return l, err
			}
		} else {
			v.debit(1)
		}
		var raw *http.Response
		page, err := pager.NextPage(policy.WithCaptureResponse(ctx, &raw))
		v.count(kl.opVersions, err)
		if status(err) == http.StatusNotFound {
			l.notFound = true
			return l, nil
		}
		if err != nil {
			return l, err
		}
		if l.date.IsZero() {
			l.date = time.Now()
			if raw != nil {
				if d, err := http.ParseTime(raw.Header.Get("Date")); err == nil {
					l.date = d
				}
			}
		}
		for _, it := range page {
			ver := version{id: strings.ToLower(it.version), created: it.created, enabled: it.enabled, x5t: it.x5t}
			if ver.id == "" {
				continue
			}
			l.versions = append(l.versions, ver)
		}
	}
	if len(l.versions) >= v.h.opts.MaxVersions && pager.More() {
		l.truncated = true
	}
	if len(l.versions) > v.h.opts.MaxVersions {
		l.versions = l.versions[:v.h.opts.MaxVersions]
		l.truncated = true
	}
	return l, nil
}

// newestEnabled returns the newest enabled version by created; on a tie, prev
// if it is among the newest, else the greatest id. Its id is "" when none is
// enabled.
func newestEnabled(vs []version, prev string) version {
	var best version
	prevTied := false
	for _, x := range vs {
		if !x.enabled {
			continue
		}
		switch {
		case best.id == "" || x.after(best):
			best, prevTied = x, x.id == prev
		case !best.after(x):
			prevTied = prevTied || x.id == prev
			if x.id > best.id {
				best = x
			}
		}
	}
	if prevTied {
		best.id = prev
	}
	return best
}

// newer reports whether the object's newest enabled version was created after
// the held version: what makes a watch "changed". A disabled or deleted
// newest changes nothing, and neither does a certificate version with the
// thumbprint of the one held: the agent would write the same certificate.
func (o *object) newer(held version) bool {
	return o.newest.id != "" && o.newest.after(held) && !sameCertificate(o.newest, held)
}

// sameCertificate reports whether two certificate versions hold the same
// certificate (equal thumbprints).
func sameCertificate(a, b version) bool {
	return a.x5t != "" && a.x5t == b.x5t
}

// refresh lists an object's versions unless a listing that started at or after
// notBefore is running (then it waits for that one); concurrent callers share
// one listing. updated is the secret's updated hint the listing answers (-1:
// unknown). A paced listing waits for the budget (the watches'); the sweep's
// debits it.
func (v *vault) refresh(ctx context.Context, o *object, notBefore time.Time, updated int64, paced bool) error {
	for {
		v.mu.Lock()
		f := o.flight
		if f == nil {
			break
		}
		v.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !f.start.Before(notBefore) {
			return f.err
		}
	}
	f := &flight{start: time.Now(), done: make(chan struct{})}
	o.flight = f
	name, kind := o.name, o.kind
	v.mu.Unlock()

	// The listing runs on the vault's context: a caller that gives up does not
	// fail the others.
	l, err := v.listVersions(v.ctx, kind, name, paced)

	v.mu.Lock()
	defer v.mu.Unlock()
	o.flight = nil
	f.err = err
	close(f.done)
	if err != nil {
		if notListable(err) {
			v.h.log.Warn("the hub may not list the versions of an object", "vault", v.url, "kind", kind, "name", name, "status", status(err), "err", shortErr(err))
		}
		return err
	}
	v.applyLocked(o, l, updated, f.start)
	return nil
}

// applyLocked stores a listing and notifies the object's watchers when its
// newest enabled version changed.
func (v *vault) applyLocked(o *object, l listing, updated int64, started time.Time) {
	o.listed = true
	o.listedUpdated = updated
	o.listedAt = started
	o.settled = updated >= 0 && updated+2 < l.date.Unix()
	if l.notFound {
		o.exists, o.known, o.newest, o.settled = false, nil, version{}, true
		return
	}
	if l.truncated && !o.truncated {
		v.h.log.Warn("object has more versions than --max-versions: the hub judges it by the first ones in id order",
			"vault", v.url, "kind", o.kind, "name", o.name, "max_versions", v.h.opts.MaxVersions)
	}
	o.truncated = l.truncated
	o.exists = true
	known := l.versions
	found := false
	for i := range known {
		// Keep the strings that watches already share, and the rank of
		// discovery; versions new to this listing get the next rank.
		if k, ok := o.knows(known[i].id); ok {
			known[i].id, known[i].seq = k.id, k.seq
		} else if len(o.known) > 0 {
			known[i].seq, found = o.nextSeq, true
		}
	}
	if len(o.known) == 0 {
		o.nextSeq = 1
	} else if found {
		o.nextSeq++
	}
	newest := newestEnabled(known, o.newest.id)
	slices.SortFunc(known, func(a, b version) int { return strings.Compare(a.id, b.id) })
	o.known = slices.Clip(slices.CompactFunc(known, func(a, b version) bool { return a.id == b.id }))
	if k, ok := o.knows(newest.id); ok {
		newest.id = k.id
	}
	if newest.id == o.newest.id {
		o.newest = newest
		return
	}
	prev := o.newest
	o.newest = newest
	if newest.id == "" {
		v.h.log.Info("object has no enabled version: its watchers keep waiting", "vault", v.url, "kind", o.kind, "name", o.name, "previous", prev.id)
		return
	}
	if !newest.after(prev) {
		v.h.log.Info("the newest enabled version is an older one (the newest was disabled): its watchers keep waiting",
			"vault", v.url, "kind", o.kind, "name", o.name, "version", newest.id, "previous", prev.id)
		return
	}
	if sameCertificate(newest, prev) {
		// Watchers holding that thumbprint are not told (newer).
		v.h.log.Info("new certificate version with the same thumbprint: its watchers are not told",
			"vault", v.url, "name", o.name, "version", newest.id, "previous", prev.id)
	} else {
		v.h.log.Info("new version", "vault", v.url, "kind", o.kind, "name", o.name, "version", newest.id, "previous", prev.id, "watchers", len(o.watchers))
	}
	for _, r := range o.watchers {
		if r.w.state == stateWatching && o.newer(r.w.objs[r.i].held) {
			v.enqueueLocked(r.w)
		}
	}
}

// knows returns the listed version id, with the copy of its id that watches
// share.
func (o *object) knows(id string) (version, bool) {
	j, ok := slices.BinarySearchFunc(o.known, id, func(x version, id string) int { return strings.Compare(x.id, id) })
	if !ok {
		return version{}, false
	}
	return o.known[j], true
}
