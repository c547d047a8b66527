package agent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// rotateHub keeps the set current with the version hub until ctx is done.
//
// The watched objects (secrets, certificates and keys at their latest
// version) are read when the hub reports them changed, with one long poll at
// a time (hubapi). While the hub is unusable (unreachable, refusing,
// answering nonsense) they are polled every HubFallbackStretch x --rotation
// instead, and the hub is tried again with a jittered exponential backoff;
// its first answer after that compares the versions held with the newest, so
// nothing changed meanwhile is missed. The objects the hub answers it does
// not watch (hubapi.WatchResponse.Poll: a kind not in its --watch-kinds, or
// one it may not list) move to the others, polled every --rotation, until
// their retry comes; every SafetyInterval the whole set is read again while
// the hub drives rotation.
//
// The hub watches an object from the version the agent holds, so an optional
// object that is absent is polled every --rotation with the others until it
// appears; the next watch request names it (see rebalance). One that
// disappears leaves the set when a read finds it gone (the hub reports
// neither deletions nor disabled secrets: the safety re-read, a poll, or a
// read the hub triggers) and is polled again from then on.
//
// A watch request names one vault, so an agent whose entries read several
// vaults (agentconfig.Entry.Vault) runs one such loop per vault, sharing the
// hub client; refresh serializes their reads and writes of the set.
//
// Only the loops' goroutines read Key Vault and write the set; each watch
// request runs in a goroutine of its own, which only talks to the hub and
// hands the answer back.
func (a *agent) rotateHub(ctx context.Context, watched, others []objectRef) {
	// One loop per vault: a watch request names one vault.
	vaults := []string{""}
	for _, r := range append(slices.Clone(watched), others...) {
		if !slices.Contains(vaults, r.vault) {
			vaults = append(vaults, r.vault)
		}
	}
	ofVault := func(refs []objectRef, v string) []objectRef {
		var out []objectRef
		for _, r := range refs {
			if r.vault == v {
				out = append(out, r)
			}
		}
		return out
	}
	hub, err := newHubClient(a.cfg.Hub, a.env, a.log)
	if err == nil {
		for _, v := range vaults {
			if n := len(watchObjects(a, ofVault(watched, v))); n > hubapi.MaxObjects {
				hub.close()
				err = &ConfigError{Msg: fmt.Sprintf("the pod maps %d objects of vault %s; a watch request names at most %d", n, cmp.Or(v, a.cfg.VaultURL), hubapi.MaxObjects)}
				break
			}
		}
	}
	var all []objectRef
	for _, r := range a.refs {
		if r.version == "" {
			all = append(all, r)
		}
	}
	if err != nil {
		// The hub cannot ever be used: poll as without a hub (a restart
		// action then cannot report, and says so at each new set).
		a.action = newActionRunner(a, nil)
		a.action.start(ctx)
		defer a.action.wait()
		log := a.log.With("source", sourcePoll, "trigger", triggerPoll)
		log.Error("rotation source", "reason", hubReasonConfig, "error", errText(err), "pollEvery", a.cfg.Rotation.String())
		a.pollLoop(ctx, all, a.cfg.Rotation, log)
		return
	}
	defer hub.close()
	a.action = newActionRunner(a, hub)
	a.action.start(ctx)
	defer a.action.wait()
	var wg sync.WaitGroup
	for _, v := range vaults {
		vw, vo, va := ofVault(watched, v), ofVault(others, v), ofVault(all, v)
		if len(vw)+len(vo) == 0 {
			continue // every object of the pod's vault is pinned
		}
		log := a.log
		if v != "" {
			log = log.With("watchVault", v)
		}
		wg.Go(func() { a.hubLoop(hub, cmp.Or(v, a.cfg.VaultURL), log, vw, vo, va).run(ctx) })
	}
	wg.Wait()
}

// hubLoop returns the loop that keeps the objects of one vault current with
// the hub (the refs given are that vault's); log names the vault when it is
// not the pod's.
func (a *agent) hubLoop(hub *hubClient, vault string, log *slog.Logger, watched, others, all []objectRef) *hubLoop {
	var held []objectRef
	for _, r := range watched {
		if _, ok := a.held(r); ok {
			held = append(held, r)
		} else {
			others = append(others, r) // absent optional: polled until it appears
		}
	}
	watched = held
	rot, stretched := a.cfg.Rotation, HubFallbackStretch*a.cfg.Rotation
	return &hubLoop{
		a: a, hub: hub, vault: vault, lg: log, watched: watched, others: others, all: all,
		source: sourceHub, stretched: stretched, maxWait: defaultHubMaxWait,
		hubB:    backoff{min: a.opts.HubMinBackoff, max: a.opts.HubMaxBackoff},
		readB:   backoff{min: min(a.opts.MinBackoff, rot), max: rot},
		stuckB:  backoff{min: min(a.opts.MinBackoff, stretched), max: stretched},
		pollB:   backoff{min: min(a.opts.MinBackoff, stretched), max: stretched},
		othersB: backoff{min: min(a.opts.MinBackoff, rot), max: rot},
		safetyB: backoff{min: min(a.opts.MinBackoff, stretched), max: stretched},
	}
}

// hubLoop is the state of one of rotateHub's loops (one per vault).
type hubLoop struct {
	a   *agent
	hub *hubClient
	// vault is the vault of the loop's objects, which its watch requests name.
	vault string
	// lg is the loop's logger: the agent's, naming vault when it is not the pod's.
	lg                   *slog.Logger
	watched, others, all []objectRef
	// declined are the objects the hub does not watch (in others), with when
	// to name them to it again.
	declined map[objectRef]time.Time
	// idle is set while no watch request is sent because no object can be
	// watched: every watchable one is an absent optional object, polled in
	// others until it appears.
	idle                   bool
	source                 string // sourceHub or sourcePoll
	reason                 string // why the hub is unusable (sourcePoll)
	stretched              time.Duration
	maxWait                time.Duration // the hub's, from hubapi.MaxWaitHeader
	safetyReads            int
	hubB, readB, stuckB    backoff
	pollB, othersB         backoff
	safetyB                backoff
	pollAt, othersAt, safe alarm
}

// alarm is a timer that can be off; its channel is nil then.
type alarm struct {
	t *time.Timer
	c <-chan time.Time
}

func (al *alarm) set(d time.Duration) {
	al.stop()
	al.t = time.NewTimer(d)
	al.c = al.t.C
}

func (al *alarm) stop() {
	if al.t != nil {
		al.t.Stop()
		al.t, al.c = nil, nil
	}
}

func (l *hubLoop) run(ctx context.Context) {
	a := l.a
	l.lg.Info("rotation source", "source", sourceHub, "hub", a.cfg.Hub, "watched", len(l.watched), "polled", len(l.others),
		"rotation", a.cfg.Rotation.String(), "safetyInterval", a.opts.SafetyInterval.String())
	if len(l.others) > 0 {
		l.othersAt.set(jittered(a.cfg.Rotation))
	}
	l.safe.set(jittered(a.opts.SafetyInterval))
	var hubAt alarm
	defer func() {
		for _, al := range []*alarm{&hubAt, &l.pollAt, &l.othersAt, &l.safe} {
			al.stop()
		}
	}()
	results := make(chan watchResult, 1)
	inflight, watchNow := false, true
	for {
		if watchNow && !inflight {
			watchNow = false
			d := l.undecline()
			l.rebalance()
			l.idle = false
			switch {
			case len(l.watched) == 0 && d > 0:
				// Every object is polled: ask the hub when one may be watched.
				hubAt.set(d)
			case len(l.watched) == 0:
				// Every watchable object is absent: ask when one appears.
				l.idle = true
			default:
				inflight = true
				req, timeout := l.request(), hubTimeout(l.maxWait)
				go func() { results <- l.hub.watch(ctx, req, timeout) }()
			}
		}
		select {
		case <-ctx.Done():
			if inflight {
				<-results
			}
			return
		case r := <-results:
			inflight = false
			if ctx.Err() != nil {
				return
			}
			if d := l.answer(ctx, r); d > 0 {
				hubAt.set(d)
			} else {
				watchNow = true
			}
		case <-hubAt.c:
			hubAt.stop()
			watchNow = true
		case <-l.pollAt.c:
			l.pollAt.stop()
			l.poll(ctx)
		case <-l.othersAt.c:
			l.othersAt.stop()
			l.pollOthers(ctx)
			if l.idle && !inflight {
				watchNow = true // an absent optional object may have appeared
			}
		case <-l.safe.c:
			l.safe.stop()
			l.safety(ctx)
		}
	}
}

// log is the logger of a read for trigger.
func (l *hubLoop) log(trigger string) *slog.Logger {
	return l.lg.With("source", l.source, "trigger", trigger)
}

// hubKind is the hubapi kind of a ref.
func hubKind(r objectRef) string {
	switch r.kind {
	case agentconfig.ObjectCert:
		return hubapi.KindCertificate
	case agentconfig.ObjectKey:
		return hubapi.KindKey
	}
	return hubapi.KindSecret
}

// watchObjects are the objects of a watch request for refs, each once, with
// the version held.
func watchObjects(a *agent, refs []objectRef) []hubapi.Object {
	objs := make([]hubapi.Object, 0, len(refs))
	seen := make(map[string]bool, len(refs))
	for _, r := range refs {
		key := hubKind(r) + "/" + r.name
		if seen[key] {
			continue // a plain and a history entry of the same secret
		}
		seen[key] = true
		v, _ := a.held(r)
		objs = append(objs, hubapi.Object{Kind: hubKind(r), Name: a.entries[r].Name, Version: v.version})
	}
	return objs
}

// decline moves the watched refs of the objects the hub does not watch to the
// others (polled every --rotation) until the retry the hub gives.
func (l *hubLoop) decline(poll []hubapi.Polled) {
	if len(poll) == 0 {
		return
	}
	now := time.Now()
	var names []string
	for _, p := range poll {
		retry := time.Duration(p.RetryAfterSeconds) * time.Second
		// Not sooner than the next poll of the object, not later than an hour.
		retry = min(max(retry, l.a.cfg.Rotation), time.Hour)
		name := strings.ToLower(p.Name)
		l.watched = slices.DeleteFunc(l.watched, func(r objectRef) bool {
			if r.name != name || !strings.EqualFold(hubKind(r), p.Kind) {
				return false
			}
			if l.declined == nil {
				l.declined = map[objectRef]time.Time{}
			}
			l.declined[r] = now.Add(jittered(retry))
			l.others = append(l.others, r)
			return true
		})
		names = append(names, p.Kind+"/"+p.Name+" ("+p.Reason+": "+p.Message+")")
	}
	l.lg.Info("the hub does not watch these objects: polling them every rotation", "source", l.source,
		"objects", strings.Join(names, "; "), "pollEvery", l.a.cfg.Rotation.String(), "watched", len(l.watched))
	if l.othersAt.c == nil {
		l.othersAt.set(jittered(l.a.cfg.Rotation))
	}
}

// declineOtherKinds declines the watched certificates and keys for an hour,
// as if the hub had answered them to poll (why: the hub's refusal); false if
// none is watched.
func (l *hubLoop) declineOtherKinds(why string) bool {
	var poll []hubapi.Polled
	for _, r := range l.watched {
		if k := hubKind(r); k != hubapi.KindSecret {
			poll = append(poll, hubapi.Polled{Kind: k, Name: l.a.entries[r].Name, Reason: hubapi.PollKindNotWatched,
				Message: "the hub refused the request naming it (a hub that watches secrets only): " + why, RetryAfterSeconds: 3600})
		}
	}
	l.decline(poll)
	return len(poll) > 0
}

// undecline moves the declined refs whose retry came back to the watched
// ones; when none is watched then, it returns the time until the first retry
// (0 otherwise).
func (l *hubLoop) undecline() time.Duration {
	now := time.Now()
	var next time.Time
	for r, at := range l.declined {
		if now.Before(at) {
			if next.IsZero() || at.Before(next) {
				next = at
			}
			continue
		}
		delete(l.declined, r)
		l.others = slices.DeleteFunc(l.others, func(o objectRef) bool { return o == r })
		l.watched = append(l.watched, r)
	}
	if len(l.watched) > 0 || next.IsZero() {
		return 0
	}
	return next.Sub(now)
}

// rebalance moves the optional objects that appeared (read by the poll of
// the others) to the watched ones, unless the hub declined them, and the
// watched ones that a read found gone to the others, polled every --rotation
// until they appear again: a watch request names only versions held.
func (l *hubLoop) rebalance() {
	a := l.a
	var appeared, vanished []objectRef
	l.others = slices.DeleteFunc(l.others, func(r objectRef) bool {
		_, held := a.held(r)
		_, declined := l.declined[r]
		if a.optional[r] && held && !declined && watchable(r) {
			appeared = append(appeared, r)
			return true
		}
		return false
	})
	l.watched = slices.DeleteFunc(l.watched, func(r objectRef) bool {
		if _, held := a.held(r); !held {
			vanished = append(vanished, r)
			return true
		}
		return false
	})
	l.watched = append(l.watched, appeared...)
	l.others = append(l.others, vanished...)
	if len(appeared) > 0 {
		l.lg.Info("optional objects appeared: the hub watches them now", "source", l.source, "objects", l.refNames(appeared), "watched", len(l.watched))
	}
	if len(vanished) > 0 {
		l.lg.Info("optional objects gone: polling them every rotation until they appear", "source", l.source, "objects", l.refNames(vanished),
			"pollEvery", a.cfg.Rotation.String(), "watched", len(l.watched))
		if l.othersAt.c == nil {
			l.othersAt.set(jittered(a.cfg.Rotation))
		}
	}
}

// request is the next watch request: the versions held now.
func (l *hubLoop) request() hubapi.WatchRequest {
	return hubapi.WatchRequest{Vault: l.vault, Objects: watchObjects(l.a, l.watched)}
}

// answer handles a watch request's outcome and returns the delay before the
// next one (0: at once).
func (l *hubLoop) answer(ctx context.Context, r watchResult) time.Duration {
	if r.err != nil && r.err.reason == hubapi.ReasonBadRequest && l.declineOtherKinds(r.err.msg) {
		// A hub older than certificate and key watches refuses their kind:
		// poll those, and ask again at once for the secrets.
		return 0
	}
	if r.err != nil {
		d := l.hubB.next(nil)
		if ra := r.err.retryAfter; ra > d {
			d = ra + rand.N(min(ra, retryAfterSpread)+1)
		}
		l.toPoll(r.err, d)
		return d
	}
	l.hubB.reset()
	if r.maxWait > 0 {
		l.maxWait = r.maxWait
	}
	l.toHub()
	l.decline(r.poll)
	refs := l.notified(r.changed)
	if len(refs) == 0 {
		if len(r.changed) > 0 {
			l.log(triggerHub).Debug("the hub reported versions already held", "changed", objectList(r.changed))
		}
		// Ask again at once, but not more often than every HubMinBackoff: a
		// hub that answers at once without news must not make a hot loop.
		return l.a.opts.HubMinBackoff - r.took
	}
	return l.readNotified(ctx, refs)
}

// objectList names objects for logs.
func objectList(objs []hubapi.Object) string {
	s := make([]string, len(objs))
	for i, o := range objs {
		s[i] = o.String()
	}
	return strings.Join(s, ",")
}

// refNames names refs for logs.
func (l *hubLoop) refNames(refs []objectRef) string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = l.a.entries[r].Name
	}
	return strings.Join(s, ",")
}

// notified returns the watched refs of the changed objects whose version is
// not the one held.
func (l *hubLoop) notified(changed []hubapi.Object) []objectRef {
	var refs []objectRef
	for _, o := range changed {
		name := strings.ToLower(o.Name)
		for _, r := range l.watched {
			if r.name == name && strings.EqualFold(hubKind(r), o.Kind) && !strings.EqualFold(l.a.heldVersion(r), o.Version) && !slices.Contains(refs, r) {
				refs = append(refs, r)
			}
		}
	}
	return refs
}

// readNotified reads the objects the hub reported changed and swaps in the
// new set. While Key Vault still returns the version held (its replicas
// lag), it reads those again after MinBackoff, twice that and so on,
// hubLagRetries times. It returns the delay before the next watch request:
// 0 once something new was written; a growing one (at most the stretched
// interval) when Key Vault did not serve the reported change, so that a hub
// and a vault that disagree never make a loop.
func (l *hubLoop) readNotified(ctx context.Context, refs []objectRef) time.Duration {
	log := l.log(triggerHub)
	pending := refs
	var (
		progress bool
		stuck    []objectRef
	)
	for attempt := 0; ; attempt++ {
		res, err := l.a.refresh(ctx, pending, log)
		if ctx.Err() != nil {
			return 0
		}
		if err != nil {
			d := l.readB.next(err)
			log.Warn("read failed; keeping the last good set", append(errAttrs(err), "retryIn", d.String())...)
			return d
		}
		progress = progress || res.moved > 0
		stuck = res.held
		if len(stuck) == 0 || attempt == hubLagRetries {
			break
		}
		d := jittered(l.a.opts.MinBackoff << attempt)
		log.Debug("Key Vault still serves the version held; reading again", "secrets", l.refNames(stuck), "attempt", attempt+1, "retryIn", d.String())
		if !sleep(ctx, d) {
			return 0
		}
		pending = stuck
	}
	l.readB.reset()
	if len(stuck) == 0 && progress {
		l.stuckB.reset()
		return 0
	}
	d := l.stuckB.next(nil)
	if len(stuck) > 0 {
		log.Warn("Key Vault still serves the version held of a secret the hub reported changed; asking the hub again later",
			"secrets", l.refNames(stuck), "reads", hubLagRetries+1, "retryIn", d.String())
	} else {
		log.Info("nothing new to read for the hub's report; asking the hub again later", "retryIn", d.String())
	}
	return d
}

// toPoll records a failed watch request: the first after a success (or one
// for another reason) is logged as the switch of the rotation source to
// polling at the stretched interval; the next hub attempt is in retryIn.
func (l *hubLoop) toPoll(err *hubError, retryIn time.Duration) {
	if l.source == sourcePoll && l.reason == err.reason {
		l.lg.Debug("the hub is still unusable", "source", sourcePoll, "reason", err.reason, "error", err.msg, "hubRetryIn", retryIn.String())
		return
	}
	wasHub := l.source == sourceHub
	l.source, l.reason = sourcePoll, err.reason
	attrs := []any{"source", sourcePoll, "reason", err.reason}
	if err.status != 0 {
		attrs = append(attrs, "status", err.status)
	}
	attrs = append(attrs, "error", err.msg, "pollEvery", l.stretched.String(), "hubRetryIn", retryIn.String())
	l.lg.Warn("rotation source", attrs...)
	if wasHub {
		// Not at once: the agents of a whole cluster lose the hub together.
		l.pollAt.set(spreadFirst(l.stretched))
	}
}

// toHub records a watch answer: after failures, the switch back to the hub.
func (l *hubLoop) toHub() {
	if l.source == sourceHub {
		return
	}
	l.source, l.reason = sourceHub, ""
	l.pollAt.stop()
	l.pollB.reset()
	l.lg.Info("rotation source", "source", sourceHub, "hub", l.a.cfg.Hub)
}

// poll reads the watched objects while the hub is unusable.
func (l *hubLoop) poll(ctx context.Context) {
	if l.source != sourcePoll {
		return
	}
	l.pollAt.set(l.pollOnce(ctx, l.watched, triggerPoll, &l.pollB, l.stretched))
}

// pollOthers reads the objects the hub does not watch.
func (l *hubLoop) pollOthers(ctx context.Context) {
	if len(l.others) == 0 {
		return // all watched again (decline sets the alarm when needed)
	}
	l.othersAt.set(l.pollOnce(ctx, l.others, triggerRotation, &l.othersB, l.a.cfg.Rotation))
}

// safety re-reads the whole set while the hub drives rotation (while it does
// not, the stretched poll reads the watched objects anyway).
func (l *hubLoop) safety(ctx context.Context) {
	if l.source != sourceHub {
		l.log(triggerSafety).Debug("safety re-read skipped: the watched objects are polled")
		l.safe.set(jittered(l.a.opts.SafetyInterval))
		return
	}
	l.safetyReads++
	l.log(triggerSafety).Info("safety re-read", "count", l.safetyReads, "objects", len(l.all))
	l.safe.set(l.pollOnce(ctx, l.all, triggerSafety, &l.safetyB, l.a.opts.SafetyInterval))
}

// pollOnce reads refs once and returns the delay before the next poll:
// jittered interval, or b's next delay after a failure.
func (l *hubLoop) pollOnce(ctx context.Context, refs []objectRef, trigger string, b *backoff, interval time.Duration) time.Duration {
	log := l.log(trigger)
	if _, err := l.a.refresh(ctx, refs, log); err != nil {
		d := b.next(err)
		if ctx.Err() == nil {
			log.Warn("poll failed; keeping the last good set", append(errAttrs(err), "retryIn", d.String())...)
		}
		return d
	}
	b.reset()
	return jittered(interval)
}
