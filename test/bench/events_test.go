//go:build integration

package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testenv"
)

// eventsSize is the size and timing of one BenchmarkHubEvents run.
type eventsSize struct {
	hub hubSize
	// rotations are measured with events, sweepRotations without (the
	// sweep alone), faultRotations with 30 % of the events dropped and the
	// rest delivered twice and up to faultDelay late, faultGap apart.
	rotations, sweepRotations, faultRotations int
	faultGap, faultDelay                      time.Duration
	// steadyWindow is the window of the steady state, with and without
	// events.
	steadyWindow time.Duration
}

// eventsSizesFor returns the runs: full (KVINJECT_BENCH_SCALE=full; agents
// from KVINJECT_BENCH_EVENTS_AGENTS, default 100 and 1000) or smoke.
func eventsSizesFor(b *testing.B) []eventsSize {
	b.Helper()
	if !full() {
		hs := hubSize{agents: 10, workers: 2, replicas: 2, spread: time.Second, sweep: 10 * time.Second, budget: 20,
			share: canShareTransport()}
		return []eventsSize{{hub: hs, rotations: 3, sweepRotations: 1, faultRotations: 4, faultGap: 300 * time.Millisecond,
			faultDelay: time.Second, steadyWindow: 5 * time.Second}}
	}
	var out []eventsSize
	for _, f := range strings.Split(envString("KVINJECT_BENCH_EVENTS_AGENTS", "100,1000"), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("KVINJECT_BENCH_EVENTS_AGENTS=%q: use a comma-separated list of agent counts", f)
		}
		hs := hubSize{agents: n, workers: 2, replicas: 2, spread: max(10*time.Second, time.Duration(n)*10*time.Millisecond),
			sweep: 30 * time.Second, budget: envInt("KVINJECT_BENCH_EVENTS_BUDGET", 200), share: canShareTransport()}
		out = append(out, eventsSize{hub: hs, rotations: envInt("KVINJECT_BENCH_EVENTS_ROTATIONS", 20), sweepRotations: 6,
			faultRotations: 10, faultGap: 500 * time.Millisecond, faultDelay: 3 * time.Second,
			steadyWindow: envDuration(b, "KVINJECT_BENCH_EVENTS_WINDOW", 2*time.Minute)})
	}
	return out
}

// BenchmarkHubEvents measures Key Vault events (docs/events.md) end to end:
// the real hub processes (2 replicas sharing one port, --events-queue on the
// emulator's Storage queue, the installs' 30 s sweep) and agents running the
// agent's real code in worker processes (as BenchmarkHub), against the
// emulator throttled at Key Vault's limit, whose Event Grid delivers each new
// version to the queue. With a read budget of half Key Vault's limit (200/s),
// a wave over N agents takes N/200 s.
//
// Phases: steady, Key Vault transactions per minute with events and, later,
// without them (the sweep alone); events, rotations of one secret every agent
// uses: the time from the version's creation to the last agent's file, p50
// and p99 over the rotations, and every agent's own time; sweep, the same
// without events; faults, rotations in quick succession with 30 % of the
// events dropped and the rest delivered twice and late (reordered): every
// agent must end on the newest version, never go back to an older one, and
// read no version twice.
func BenchmarkHubEvents(b *testing.B) {
	for _, es := range eventsSizesFor(b) {
		name := fmt.Sprintf("agents=%d/replicas=%d/sweep=%s/budget=%d/rotations=%d", es.hub.agents, es.hub.replicas, es.hub.sweep, es.hub.budget, es.rotations)
		b.Run(name, func(b *testing.B) {
			for range b.N {
				eventsScenario(b, es)
			}
		})
	}
}

func eventsScenario(b *testing.B, es eventsSize) {
	sz := es.hub
	r, kube := startHubRun(b, sz, func(o *testenv.Options) { o.HubEvents = true })
	sims := hubAgents(b, r.env, kube, sz.agents, sz.rotation)
	r.fleet = startHubFleet(b, sims, r.root, "hub", sz.spread, sz.workers, sz.share, fleetOptions{})
	defer func() { r.fleet.stop() }()
	r.fleet.waitReady(b, sz.spread+5*time.Minute)
	r.waitWatchers(sz.agents, 2*time.Minute+sz.sweep)
	b.ReportMetric(0, "ns/op")
	wave := float64(sz.agents) / float64(sz.budget)
	b.Logf("%d agents watch the hub (replicas %v); a wave at --read-budget=%d takes %.2fs", sz.agents, r.hubSnapshot().watchers, sz.budget, wave)

	subscribe := func(f emulator.EventFaults) {
		r.emu.UnsubscribeEvents(hubVault)
		if err := r.emu.SubscribeEvents(hubVault, testenv.EventsAccount, testenv.EventsQueue, emulator.EventOptions{Faults: f}); err != nil {
			b.Fatal(err)
		}
	}

	// Steady state with events: no version is created, so the queue is
	// empty and Key Vault sees the sweep alone.
	subscribe(emulator.EventFaults{})
	peeks := func() float64 { return r.hubMetric("kvinject_hub_event_queue_requests_total", `op="peek"`) }
	p0 := peeks()
	withEvents := measure(r.env, r.hubCPU, es.steadyWindow)
	peeksPerMin := (peeks() - p0) / withEvents.d.Minutes()

	// Rotations with events.
	var lasts, agentTimes []time.Duration
	for range es.rotations {
		last, each := r.rotateAll("SECRET-00", 3*sz.sweep+time.Duration(3*wave*float64(time.Second))+time.Minute)
		lasts, agentTimes = append(lasts, last), append(agentTimes, each...)
		// A random gap, longer than a peek interval: a fixed one would lock
		// each rotation to the same phase of the replicas' peeks.
		time.Sleep(time.Second + rand.N(2*time.Second))
	}
	notHub := r.fleet.count(func(a *hubAgent) bool { tr, _ := a.trigger.Load().(string); return tr != "hub" })
	// Where the time goes: from the queue to the version listing (the peek
	// interval), and from the change found to each notification (pacing).
	lagN, lagSum := r.hubMetric("kvinject_hub_event_lag_seconds_count"), r.hubMetric("kvinject_hub_event_lag_seconds_sum")
	paceN, paceSum := r.hubMetric("kvinject_hub_pacing_delay_seconds_count"), r.hubMetric("kvinject_hub_pacing_delay_seconds_sum")

	// The same without events: the sweep alone.
	r.emu.UnsubscribeEvents(hubVault)
	var sweepLasts []time.Duration
	for range es.sweepRotations {
		last, _ := r.rotateAll("SECRET-00", 3*sz.sweep+time.Duration(3*wave*float64(time.Second))+time.Minute)
		sweepLasts = append(sweepLasts, last)
		time.Sleep(time.Second + rand.N(2*time.Second))
	}
	sweepOnly := measure(r.env, r.hubCPU, es.steadyWindow)

	// Faults: dropped, repeated and late events, rotations in quick succession.
	subscribe(emulator.EventFaults{DropRate: 0.3, DuplicateRate: 1, MaxDelay: es.faultDelay})
	fr := r.faultRotations("SECRET-00", es, wave)

	p := func(d []time.Duration, q float64) float64 { return percentile(slices.Clone(d), q/100).Seconds() }
	b.ReportMetric(p(lasts, 50), "events-last-agent-p50-s")
	b.ReportMetric(p(lasts, 99), "events-last-agent-p99-s")
	b.ReportMetric(p(agentTimes, 50), "events-agent-p50-s")
	b.ReportMetric(p(agentTimes, 99), "events-agent-p99-s")
	b.ReportMetric(p(lasts, 99)-wave, "events-p99-minus-wave-s")
	b.ReportMetric(p(sweepLasts, 50), "sweep-last-agent-p50-s")
	b.ReportMetric(p(sweepLasts, 99), "sweep-last-agent-p99-s")
	b.ReportMetric(withEvents.perMin(withEvents.vaultReads+withEvents.throttled), "steady-events-kv/min")
	b.ReportMetric(sweepOnly.perMin(sweepOnly.vaultReads+sweepOnly.throttled), "steady-sweep-kv/min")
	b.ReportMetric(peeksPerMin, "queue-peeks/min")
	b.ReportMetric(float64(fr.stale), "faults-stale-agents")
	b.ReportMetric(float64(fr.backwards), "faults-backwards")
	b.ReportMetric(float64(fr.wasted), "faults-reads-without-change")
	b.ReportMetric(fr.converged.Seconds(), "faults-converged-s")
	b.Logf("events: %d rotations, last agent p50 %.2fs p99 %.2fs (the wave alone %.2fs), every agent's time p50 %.2fs p99 %.2fs (%d samples); %d agents' last set not triggered by the hub",
		len(lasts), p(lasts, 50), p(lasts, 99), wave, p(agentTimes, 50), p(agentTimes, 99), len(agentTimes), notHub)
	b.Logf("hub, during the rotations with events: %.0f events listed, mean %.0f ms from the queue to the version listing (the queue's insertion times have whole seconds: about 500 ms of that is rounding); %.0f notifications released, mean pacing delay %.0f ms",
		lagN, 1000*lagSum/max(1, lagN), paceN, 1000*paceSum/max(1, paceN))
	b.Logf("sweep alone (--sweep-interval=%s): %d rotations, last agent p50 %.2fs p99 %.2fs; %s",
		sz.sweep, len(sweepLasts), p(sweepLasts, 50), p(sweepLasts, 99), durations(sweepLasts))
	b.Logf("steady %s: with events %d Key Vault transactions (hub list pages %d, agent reads %d, 429s %d), without %d (list pages %d, agent reads %d, 429s %d); %.0f queue peeks/min by the replicas together",
		withEvents.d.Round(time.Second), withEvents.vaultReads+withEvents.throttled, withEvents.hubLists, withEvents.agentReads, withEvents.throttled,
		sweepOnly.vaultReads+sweepOnly.throttled, sweepOnly.hubLists, sweepOnly.agentReads, sweepOnly.throttled, peeksPerMin)
	b.Logf("faults (30%% dropped, the rest twice, up to %s late; %d rotations %s apart): every agent on the newest version %.1fs after the last rotation; %d stale, %d went back to an older version, %d reads without a change (agent reads %d, new sets %d); events by result %s",
		es.faultDelay, es.faultRotations, es.faultGap, fr.converged.Seconds(), fr.stale, fr.backwards, fr.wasted, fr.reads, fr.changes, r.eventResults())
	if withEvents.hubValueReads+sweepOnly.hubValueReads != 0 {
		b.Errorf("the hub read %d values", withEvents.hubValueReads+sweepOnly.hubValueReads)
	}
	if notHub > 0 || fr.stale > 0 || fr.backwards > 0 || fr.wasted > 0 || withEvents.throttled+sweepOnly.throttled > 0 {
		b.Errorf("%d agents not told by the hub, %d stale, %d backwards, %d reads without a change, %d 429s", notHub, fr.stale, fr.backwards, fr.wasted, withEvents.throttled+sweepOnly.throttled)
	}
}

// hubMetric sums a metric over the hub replicas.
func (r *hubRun) hubMetric(name string, labels ...string) float64 {
	var v float64
	for i := range r.env.HubReplicas() {
		if text, err := r.env.HubReplicaMetrics(i); err == nil {
			v += testenv.MetricSum(text, name, labels...)
		}
	}
	return v
}

// eventResults are the hub's events by result, all replicas.
func (r *hubRun) eventResults() string {
	var parts []string
	for _, res := range []string{"listed", "known", "unwatched", "duplicate", "failed"} {
		parts = append(parts, fmt.Sprintf("%s %.0f", res, r.hubMetric("kvinject_hub_events_total", `result="`+res+`"`)))
	}
	return strings.Join(parts, ", ")
}

// rotateAll creates a new version of secret and waits until every agent has
// written it: the time to the last agent's set, and each agent's.
func (r *hubRun) rotateAll(secret string, timeout time.Duration) (time.Duration, []time.Duration) {
	f := r.fleet
	r.rotations++
	start := time.Now()
	r.emu.SetSecret(hubVault, secret, rotationValue(secret, r.rotations))
	if n := f.waitFor(timeout, func(a *hubAgent) bool { return a.changed.Load() > start.UnixNano() }); n < len(f.agents) {
		r.b.Fatalf("%d of %d agents wrote the new version of %s within %s", n, len(f.agents), secret, timeout)
	}
	each := make([]time.Duration, len(f.agents))
	var last time.Duration
	for i, a := range f.agents {
		each[i] = time.Duration(a.changed.Load() - start.UnixNano())
		last = max(last, each[i])
	}
	return last, each
}

// rotationValue is the value of a secret's rotation n; rotationOf reads n
// back (the benchmark's own values, never printed).
func rotationValue(secret string, n int) string {
	return fmt.Sprintf("%s-rotation-%d", strings.ToLower(secret), n)
}

func rotationOf(value string) int {
	i := strings.LastIndex(value, "-rotation-")
	if i < 0 {
		return 0
	}
	n, _ := strconv.Atoi(value[i+len("-rotation-"):])
	return n
}

// faultResult is what the faults phase found.
type faultResult struct {
	stale, backwards int
	reads, changes   int64
	wasted           int64
	converged        time.Duration
}

// faultRotations rotates secret es.faultRotations times, es.faultGap apart,
// while the events are faulty, watching every agent's file: no agent may go
// back to an older rotation, and each must end on the last one within two
// sweeps and the wave. A read that writes no new set is wasted.
func (r *hubRun) faultRotations(secret string, es eventsSize, wave float64) faultResult {
	f := r.fleet
	file := strings.ToLower(secret) + ".txt"
	seen := make([]int, len(f.agents))
	var res faultResult
	var mu sync.Mutex
	sample := func() (onLast int, last int) {
		mu.Lock()
		defer mu.Unlock()
		last = r.rotations
		for i := range f.agents {
			v, err := os.ReadFile(filepath.Join(r.root, "hub", strconv.Itoa(i), file))
			if err != nil {
				continue
			}
			n := rotationOf(string(v))
			if n < seen[i] {
				res.backwards++
			}
			seen[i] = max(seen[i], n)
			if n == last {
				onLast++
			}
		}
		return onLast, last
	}
	sample()
	reads0 := r.emu.ValueReads(benchClientID)
	changes0 := f.sum(func(a *hubAgent) int64 { return a.changes.Load() })
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
				sample()
			}
		}
	}()
	for range es.faultRotations {
		mu.Lock()
		r.rotations++
		n := r.rotations
		mu.Unlock()
		r.emu.SetSecret(hubVault, secret, rotationValue(secret, n))
		time.Sleep(es.faultGap)
	}
	lastAt := time.Now()
	deadline := lastAt.Add(2*es.hub.sweep + es.faultDelay + time.Duration(3*wave*float64(time.Second)) + 30*time.Second)
	for {
		onLast, _ := sample()
		if onLast == len(f.agents) {
			res.converged = time.Since(lastAt)
			break
		}
		if time.Now().After(deadline) {
			res.stale = len(f.agents) - onLast
			res.converged = time.Since(lastAt)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Late duplicates may still arrive: give them the delay, then count.
	time.Sleep(es.faultDelay + 2*time.Second)
	close(stop)
	<-done
	sample()
	res.reads = r.emu.ValueReads(benchClientID) - reads0
	res.changes = f.sum(func(a *hubAgent) int64 { return a.changes.Load() }) - changes0
	res.wasted = max(0, res.reads-res.changes)
	return res
}

// durations prints durations in seconds.
func durations(d []time.Duration) string {
	var parts []string
	for _, x := range d {
		parts = append(parts, fmt.Sprintf("%.1fs", x.Seconds()))
	}
	return "[" + strings.Join(parts, " ") + "]"
}
