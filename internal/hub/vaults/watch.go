package vaults

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// States of a watch.
const (
	stateWatching uint8 = iota // indexed, waiting for a change
	stateQueued                // indexed and in the vault's FIFO
	stateDone                  // released or closed: out of every index
)

// Watch is one agent's watch of objects of a vault. It ends after one batch
// (Changed), on Close, or when the hub ends it (Done).
type Watch struct {
	v        *vault
	gen      *generation
	ch       chan []hubapi.Object
	objs     []watchObj
	queuedAt int64  // pacing clock, Unix ns
	notify   func() // SetNotify's, guarded by v.mu; nil once called
	state    uint8  // guarded by v.mu
	// polled are the objects of the request that the hub does not watch
	// (guarded by v.mu); a watch with any ends at once (Changed has an empty
	// batch).
	polled []hubapi.Polled
}

// Polled returns the objects of the watch request that the hub does not
// watch, with why: the caller answers them (hubapi.WatchResponse.Poll) with
// the batch, and the agent polls them. A watch that has some ends at once
// with an empty batch: the agent asks again without them.
func (w *Watch) Polled() []hubapi.Polled {
	w.v.mu.Lock()
	defer w.v.mu.Unlock()
	return slices.Clone(w.polled)
}

// watchObj is one object of a watch.
type watchObj struct {
	o    *object
	name string  // as the agent named it (shares o.name when equal)
	held version // the version the agent holds (its id shares o.known's copy)
	pos  int32   // index of this watch's ref in o.watchers
}

// Changed receives exactly one batch, the changed objects with their newest
// version, after pacing; then the watch is over. It is never closed.
func (w *Watch) Changed() <-chan []hubapi.Object { return w.ch }

// Done is closed when the hub ends the watch without a batch: the vault became
// not listable, or the hub is stopping. Err says why; the caller should answer
// with that refusal (the agent then polls) and Close the watch.
func (w *Watch) Done() <-chan struct{} { return w.gen.done }

// Err is the refusal that ended the watch once Done is closed, nil before.
func (w *Watch) Err() error {
	select {
	case <-w.gen.done:
		return w.gen.err
	default:
		return nil
	}
}

// Pending reports whether a batch is waiting for its release: a caller that
// holds a long poll should not end it for its maximum wait then, or the agent
// would queue again at the end of the FIFO.
func (w *Watch) Pending() bool {
	w.v.mu.Lock()
	defer w.v.mu.Unlock()
	return w.state == stateQueued
}

// SetNotify registers f, called once when Changed has the batch or Done is
// closed, at once if that is already so. It lets a caller wait for many
// watches without a goroutine each. f runs on the hub's own goroutine with
// its lock held: it must return at once and must not call the watch's methods
// (it should start a goroutine that does). A second call replaces f.
func (w *Watch) SetNotify(f func()) {
	v := w.v
	v.mu.Lock()
	defer v.mu.Unlock()
	select {
	case <-w.gen.done:
		f()
		return
	default:
	}
	if len(w.ch) > 0 {
		f()
		return
	}
	w.notify = f
}

// notifyLocked calls the watch's SetNotify function, once.
func (w *Watch) notifyLocked() {
	if f := w.notify; f != nil {
		w.notify = nil
		f()
	}
}

// Close ends the watch (idempotent); a batch not yet released is dropped and
// its budget not spent.
func (w *Watch) Close() {
	v := w.v
	v.mu.Lock()
	defer v.mu.Unlock()
	w.notify = nil
	if w.state == stateDone {
		return
	}
	w.state = stateDone
	v.unindexLocked(w)
	if v.current == w {
		select {
		case v.wake <- struct{}{}:
		default:
		}
	}
}

// Watch verifies objs (each the version the agent holds) against the vault and
// registers a watch. It waits for the vault's first sweep (bounded by ctx).
// Errors are *Refusal. Objects whose held version is not the newest enabled
// are reported changed at once (still paced). When objs names objects the hub
// does not watch (a kind not in Options.Kinds, or one Key Vault does not let
// it list in this vault), nothing is watched: the Watch ends at once with an
// empty batch and those objects in Polled, so that the agent polls them and
// asks again without them.
func (h *Hub) Watch(ctx context.Context, vaultURL string, objs []hubapi.Object) (*Watch, error) {
	start := time.Now()
	canonical, label, r := normalizeVault(vaultURL)
	if r != nil {
		return nil, r
	}
	if r := validateObjects(objs); r != nil {
		return nil, r
	}
	// Objects of kinds the hub does not watch: answered at once, without
	// sweeping the vault for them.
	var polled []hubapi.Polled
	for _, o := range objs {
		if p, ok := h.notWatched(o); ok {
			polled = append(polled, p)
		}
	}
	if len(polled) > 0 {
		return h.polledWatch(&vault{h: h, gen: &generation{done: make(chan struct{})}}, polled), nil
	}
	v, r := h.acquire(ctx, canonical, label)
	if r != nil {
		return nil, r
	}
	defer v.release()

	// Register the names first, so that a first sweep lists their versions.
	v.mu.Lock()
	targets := make([]*object, len(objs))
	for i, ob := range objs {
		targets[i] = v.objectLocked(ob.Kind, ob.Name)
		targets[i].lastWatched = start
	}
	swept := v.swept
	v.mu.Unlock()

	select {
	case <-swept:
	case <-v.ctx.Done():
		return nil, &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub is shutting down", RetryAfter: 5 * time.Second}
	case <-ctx.Done():
		return nil, &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub has not listed " + canonical + " yet", RetryAfter: 5 * time.Second}
	}

	// List the versions of objects whose held version is unknown.
	for {
		v.mu.Lock()
		if r := v.refusalLocked(); r != nil {
			v.mu.Unlock()
			return nil, r
		}
		if w := v.pollWatchLocked(objs); w != nil {
			v.mu.Unlock()
			return w, nil
		}
		var stale *object
		var hint int64 = -1
		for i, o := range targets {
			if _, ok := o.knows(lowerVersion(objs[i].Version)); ok {
				continue
			}
			if !o.listed || o.listedAt.Before(start) {
				stale = o
				if u, ok := v.lastSeen[o.key]; ok {
					hint = u
				}
				break
			}
		}
		v.mu.Unlock()
		if stale == nil {
			break
		}
		if err := v.refresh(ctx, stale, start, hint, true); err != nil {
			if stale.kind != hubapi.KindSecret && refused(err) && ctx.Err() == nil {
				v.kindRefused(stale.kind, err)
				continue // its objects are polled now
			}
			return nil, v.listRefusal(ctx, err)
		}
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	if r := v.refusalLocked(); r != nil {
		return nil, r
	}
	if w := v.pollWatchLocked(objs); w != nil {
		return w, nil
	}
	w := &Watch{v: v, gen: v.gen, ch: make(chan []hubapi.Object, 1), objs: make([]watchObj, len(objs))}
	changed := false
	for i, ob := range objs {
		o := targets[i]
		if cur := v.objects[o.key]; cur != o {
			if cur != nil {
				// Forgotten and watched anew meanwhile: rare; let the agent come back.
				return nil, &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub's state of " + canonical + " changed meanwhile", RetryAfter: time.Second}
			}
			v.objects[o.key] = o
		}
		held, ok := o.knows(lowerVersion(ob.Version))
		if !ok || !o.exists {
			return nil, &Refusal{Reason: hubapi.ReasonUnknownVersion, Message: fmt.Sprintf(
				"version %s of %s %s is not a version the hub can see in %s: the hub watches only versions the agent read", ob.Version, ob.Kind, ob.Name, canonical)}
		}
		name := ob.Name
		if name == o.name {
			name = o.name
		}
		w.objs[i] = watchObj{o: o, name: name, held: held}
		changed = changed || o.newer(held)
	}
	for i := range w.objs {
		o := w.objs[i].o
		w.objs[i].pos = int32(len(o.watchers))
		o.watchers = append(o.watchers, ref{w: w, i: int32(i)})
		o.lastWatched = start
	}
	v.watchers++
	h.metrics.watchers.WithLabelValues(v.label).Inc()
	if changed {
		v.enqueueLocked(w)
	}
	return w, nil
}

// pollWatchLocked returns a watch that has already ended with an empty batch
// when objs names objects the hub does not watch (a kind not watched, or one
// Key Vault refuses it to list in this vault), nil otherwise.
func (v *vault) pollWatchLocked(objs []hubapi.Object) *Watch {
	var polled []hubapi.Polled
	for _, o := range objs {
		if p, ok := v.pollOfLocked(o); ok {
			polled = append(polled, p)
		}
	}
	if len(polled) == 0 {
		return nil
	}
	return v.h.polledWatch(v, polled)
}

// polledWatch returns a watch of v (a detached vault for kinds the hub does
// not watch) that has already ended with an empty batch and polled, counted.
func (h *Hub) polledWatch(v *vault, polled []hubapi.Polled) *Watch {
	for _, p := range polled {
		h.metrics.polled.WithLabelValues(p.Kind, p.Reason).Inc()
	}
	w := &Watch{v: v, gen: v.gen, ch: make(chan []hubapi.Object, 1), state: stateDone, polled: polled}
	w.ch <- []hubapi.Object{}
	return w
}

// lowerVersion is the key of a version id (Key Vault's are lower-case hex).
func lowerVersion(s string) string { return lowerName(s) }

// refusalLocked is the refusal of watches while the vault is not listable or
// has never been listed.
func (v *vault) refusalLocked() *Refusal {
	if v.stopped {
		return &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub is shutting down", RetryAfter: 5 * time.Second}
	}
	switch v.status {
	case statusNotListable:
		return &Refusal{Reason: hubapi.ReasonVaultNotListable, Message: v.statusMsg, RetryAfter: max(time.Second, time.Until(v.retryAt))}
	case statusFailing, statusUnknown:
		return &Refusal{Reason: hubapi.ReasonUnavailable, Message: v.statusMsg, RetryAfter: max(time.Second, time.Until(v.retryAt))}
	}
	return nil
}

// listRefusal is the refusal of a watch whose version listing failed.
func (v *vault) listRefusal(ctx context.Context, err error) *Refusal {
	switch {
	case ctx.Err() != nil:
		return &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub could not list the versions in time", RetryAfter: 5 * time.Second}
	case notListable(err):
		return &Refusal{Reason: hubapi.ReasonVaultNotListable, Message: fmt.Sprintf(
			"Key Vault refused the hub's listing of versions in %s (HTTP %d): give the hub's identity the list permission on secrets", v.url, status(err))}
	}
	return &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub cannot list versions in " + v.url + " now: " + shortErr(err),
		RetryAfter: max(5*time.Second, retryAfter(err))}
}

// enqueueLocked queues a changed watch for release.
func (v *vault) enqueueLocked(w *Watch) {
	w.state = stateQueued
	w.queuedAt = v.h.clock.Now().UnixNano()
	v.queue = append(v.queue, w)
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

// unindexLocked removes a watch from its objects' indexes.
func (v *vault) unindexLocked(w *Watch) {
	for i := range w.objs {
		wo := &w.objs[i]
		o := wo.o
		last := len(o.watchers) - 1
		if int(wo.pos) != last {
			moved := o.watchers[last]
			o.watchers[wo.pos] = moved
			moved.w.objs[moved.i].pos = wo.pos
		}
		o.watchers[last] = ref{}
		o.watchers = o.watchers[:last]
		o.lastWatched = time.Now()
		if cap(o.watchers) > 64 && len(o.watchers) < cap(o.watchers)/4 {
			o.watchers = append([]ref(nil), o.watchers...)
		}
	}
	v.watchers--
	v.h.metrics.watchers.WithLabelValues(v.label).Dec()
	if v.watchers == 0 && v.inflight == 0 {
		v.idleSince = time.Now()
	}
}

// batchLocked returns the watch's objects whose newest enabled version differs
// from the one held, each once, with that version.
func (w *Watch) batchLocked() []hubapi.Object {
	var out []hubapi.Object
	for i, wo := range w.objs {
		o := wo.o
		if !o.newer(wo.held) {
			continue
		}
		dup := false
		for _, prev := range w.objs[:i] {
			if prev.o == o && prev.name == wo.name {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, hubapi.Object{Kind: o.kind, Name: wo.name, Version: o.newest.id})
		}
	}
	return out
}

// pace releases changed watches, FIFO, within the vault's budget.
func (v *vault) pace() {
	defer v.h.wg.Done()
	c := v.h.clock
	for {
		w, batch := v.next()
		if w == nil {
			return
		}
		now := c.Now()
		rs, at := v.reserve(now, len(batch))
		for w.pendingAndWaiting(at) {
			ch, stop := c.After(at.Sub(c.Now()))
			select {
			case <-ch:
			case <-v.wake:
				stop()
			case <-v.ctx.Done():
				stop()
				cancelReservations(rs, c.Now())
				return
			}
		}
		v.mu.Lock()
		v.current = nil
		if w.state != stateQueued {
			cancelReservations(rs, c.Now())
			v.mu.Unlock()
			continue
		}
		w.state = stateDone
		v.unindexLocked(w)
		released := c.Now()
		// Sent under the lock (w.ch is buffered for the one batch, so this
		// never blocks): Pending turns false only once Changed has the batch.
		w.ch <- batch
		w.notifyLocked()
		v.mu.Unlock()
		v.h.metrics.notifications.Inc()
		v.h.metrics.pacingDelay.Observe(max(0, released.Sub(time.Unix(0, w.queuedAt)).Seconds()))
		if hook := v.h.onRelease; hook != nil {
			hook(w, batch, released)
		}
	}
}

// pendingAndWaiting reports whether w is still queued and at is in the future.
func (w *Watch) pendingAndWaiting(at time.Time) bool {
	v := w.v
	v.mu.Lock()
	defer v.mu.Unlock()
	return w.state == stateQueued && v.h.clock.Now().Before(at)
}

// next returns the next queued watch with its batch; nil when the vault stops.
func (v *vault) next() (*Watch, []hubapi.Object) {
	for {
		v.mu.Lock()
		for v.qhead < len(v.queue) {
			w := v.queue[v.qhead]
			v.queue[v.qhead] = nil
			v.qhead++
			if w.state != stateQueued {
				continue
			}
			batch := w.batchLocked()
			if len(batch) == 0 {
				// Changed back (the new version was disabled): keep watching.
				w.state = stateWatching
				continue
			}
			v.current = w
			v.compactLocked()
			v.mu.Unlock()
			return w, batch
		}
		v.queue, v.qhead = v.queue[:0], 0
		v.mu.Unlock()
		select {
		case <-v.wake:
		case <-v.ctx.Done():
			return nil, nil
		}
	}
}

// compactLocked drops the released head of the queue when it is large.
func (v *vault) compactLocked() {
	if v.qhead >= 1024 && v.qhead >= len(v.queue)/2 {
		n := copy(v.queue, v.queue[v.qhead:])
		clear(v.queue[n:])
		v.queue, v.qhead = v.queue[:n], 0
	}
}
