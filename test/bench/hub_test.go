//go:build integration

package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// BenchmarkHub's phases (KVINJECT_BENCH_HUB_PHASES, in this order).
const (
	phaseSteady     = "steady"     // Key Vault transactions per minute with every agent watching; the hub's memory and CPU
	phaseWave       = "wave"       // one secret used by every agent rotated
	phaseKill       = "kill"       // a hub replica killed (SIGKILL), then a rotation
	phaseOutage     = "outage"     // every hub replica down for a while, back, then a rotation
	phaseUnlistable = "unlistable" // the hub's identity loses list, then gets it back, then a rotation
	phasePoll       = "poll"       // the same agents without --hub, polling: the comparison
)

var hubPhases = []string{phaseSteady, phaseWave, phaseKill, phaseOutage, phaseUnlistable, phasePoll}

// hubSize is the size, the timing and the phases of one BenchmarkHub run.
type hubSize struct {
	agents int
	// workers is the number of worker processes that run the agents,
	// replicas the number of hub processes (sharing one port).
	workers, replicas int
	// share gives each worker's agents one Key Vault and Azure AD transport.
	share bool
	// spread is the time over which the agents start, so that their first
	// sets stay under Key Vault's limit (they are not what is measured).
	spread time.Duration
	// sweep is the hub's --sweep-interval, budget its --read-budget.
	sweep  time.Duration
	budget int
	// rotation is the pods' --rotation: the stretched polling while the hub
	// is unusable is HubFallbackStretch times it.
	rotation time.Duration
	// hubSettle is waited after every agent watches, before hubWindow.
	hubSettle, hubWindow time.Duration
	// outage is how long every replica is down (phase outage); faultWindow
	// how long the polling is measured while the hub may not list (phase
	// unlistable); back bounds the agents' return to the hub after either.
	outage, faultWindow, back time.Duration
	// pollAgents agents (the first ones) poll every pollRotation in the
	// polling phase; the window starts pollSettle after their first sets.
	pollAgents             int
	pollRotation           time.Duration
	pollSettle, pollWindow time.Duration
	phases                 map[string]bool
}

// hubSizeFor returns the scenario's size: full (KVINJECT_BENCH_SCALE=full,
// KVINJECT_BENCH_HUB_* knobs, see BENCHMARKS.md section 10) or smoke.
func hubSizeFor(b *testing.B) hubSize {
	b.Helper()
	var sz hubSize
	if !full() {
		sz = hubSize{agents: 10, workers: 2, replicas: 2, spread: time.Second, sweep: 2 * time.Second, budget: 5,
			rotation: 3 * time.Second, hubSettle: time.Second, hubWindow: 4 * time.Second,
			outage: 6 * time.Second, faultWindow: 4 * time.Second, back: time.Minute,
			pollAgents: 10, pollRotation: 3 * time.Second, pollSettle: time.Second, pollWindow: 6 * time.Second}
		sz.share = canShareTransport()
		sz.phases = phaseSet(b, envString("KVINJECT_BENCH_HUB_PHASES", strings.Join(hubPhases, ",")))
		return sz
	}
	n := envInt("KVINJECT_BENCH_HUB_AGENTS", 2000)
	sz = hubSize{agents: n, sweep: 30 * time.Second, rotation: envDuration(b, "KVINJECT_BENCH_HUB_ROTATION", agentconfig.DefaultRotation),
		hubSettle: 30 * time.Second, hubWindow: envDuration(b, "KVINJECT_BENCH_HUB_WINDOW", 5*time.Minute),
		outage: envDuration(b, "KVINJECT_BENCH_HUB_OUTAGE", 5*time.Minute), faultWindow: 3 * time.Minute, back: 15 * time.Minute,
		pollRotation: agentconfig.DefaultRotation, pollSettle: time.Minute, pollWindow: 2 * agentconfig.DefaultRotation}
	sz.phases = phaseSet(b, envString("KVINJECT_BENCH_HUB_PHASES", "steady,wave,kill,poll"))
	sz.budget = envInt("KVINJECT_BENCH_HUB_BUDGET", 50)
	if n > 3000 {
		sz.budget = envInt("KVINJECT_BENCH_HUB_BUDGET", 100)
	}
	sz.share = canShareTransport() && os.Getenv("KVINJECT_BENCH_HUB_SHARE") != "0"
	// Each worker holds a hub connection per agent, and without sharing an
	// Azure AD and a Key Vault connection per agent too.
	perAgent := 1
	if !sz.share {
		perAgent = 3
	}
	sz.workers = envInt("KVINJECT_BENCH_HUB_WORKERS", max(2, ceilDiv(n*perAgent, 5000)))
	// A replica holds a connection per agent it serves; after a kill the
	// others hold them all.
	alive := func(r int) int {
		if sz.phases[phaseKill] {
			return r - 1
		}
		return r
	}
	r := 2
	for alive(r) < 1 || ceilDiv(n, alive(r)) > 15000 {
		r++
	}
	sz.replicas = envInt("KVINJECT_BENCH_HUB_REPLICAS", r)
	// The first sets at 300 reads/s, under Key Vault's 400; without sharing
	// at 150/s, so that the emulator's ends of the agents' connections (held
	// 90 s idle) stay under the descriptor limit.
	per := 10 * time.Millisecond
	if !sz.share {
		per = 20 * time.Millisecond
	}
	sz.spread = max(20*time.Second, time.Duration(n)*per)
	// Polling every 2m at 300 reads/s at most: 12,000 agents × 3 secrets.
	sz.pollAgents = envInt("KVINJECT_BENCH_HUB_POLL_AGENTS", min(n, 12000))
	if os.Getenv("KVINJECT_BENCH_HUB_POLL") == "0" {
		delete(sz.phases, phasePoll) // no polling phase: the hub alone, for a large N
	}
	return sz
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// phaseSet parses a comma-separated list of phases.
func phaseSet(b *testing.B, list string) map[string]bool {
	b.Helper()
	m := map[string]bool{}
	for _, p := range strings.Split(list, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !slices.Contains(hubPhases, p) {
			b.Fatalf("KVINJECT_BENCH_HUB_PHASES: unknown phase %q; use some of %s", p, strings.Join(hubPhases, ","))
		}
		m[p] = true
	}
	return m
}

func (sz hubSize) phaseList() string {
	var l []string
	for _, p := range hubPhases {
		if sz.phases[p] {
			l = append(l, p)
		}
	}
	return strings.Join(l, "+")
}

// envInt reads a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: use a positive duration, e.g. 5m", name, v)
	}
	return d
}

// BenchmarkHub measures the version hub (cmd/hub) with a fleet of rotating
// agents: N pods created through the real API server (the real webhook
// injects their rotating agents with --hub), each with a projected hub token
// minted by TokenRequest and bound to the pod, and N agents running the
// agent's real watch and fetch code (agent.Run, in worker processes of this
// test binary) over real HTTPS connections, one hub connection each, against
// the real hub processes (replicas sharing one port, as behind a Service) and
// the emulator throttled at Key Vault's real limit (4,000 reads per 10 s, 20
// ms round trips). Every pod maps the same 3 secrets of one vault.
//
// Phases (KVINJECT_BENCH_HUB_PHASES): steady, all Key Vault transactions
// per minute with every agent watching (the hub's list pages, the agents'
// reads, 429s; the 24h safety re-read, which never falls in the window, is
// added amortized) and the hub's memory and CPU; wave, one secret used by
// every agent rotated: the time until every agent has written it, beside
// agents/--read-budget, 429s and agents left on the old version; kill, a
// replica killed with SIGKILL: the agents' move to the others, then a
// rotation every agent must get from the hub; outage, every replica stopped
// for a while: the agents' stretched polling and 429s meanwhile, their
// return, and a rotation; unlistable, the hub's identity loses list: the
// hub's metrics, the agents' fallback, their return once it is granted
// again, and a rotation; poll, the first agents restarted without --hub,
// polling every 2m: the comparison.
func BenchmarkHub(b *testing.B) {
	sz := hubSizeFor(b)
	name := fmt.Sprintf("agents=%d/secrets=3/replicas=%d/workers=%d/sweep=%s/budget=%d/phases=%s",
		sz.agents, sz.replicas, sz.workers, sz.sweep, sz.budget, sz.phaseList())
	b.Run(name, func(b *testing.B) {
		for range b.N {
			hubScenario(b, sz)
		}
	})
}

// simAgent is one simulated pod's agent: its injected container's arguments
// and environment (with the token files remapped).
type simAgent struct {
	args []string
	env  map[string]string
}

const hubVault = "contoso-shop"

// hubGoMemLimit is the hub's GOMEMLIMIT in the installs.
const hubGoMemLimit = "460MiB"

// hubRun is one run's environment and what its phases share.
type hubRun struct {
	b     *testing.B
	sz    hubSize
	env   *testenv.Env
	emu   *emulator.Emulator
	root  string
	fleet *hubFleet
	// rotations counts the secrets' new values, for unique ones.
	rotations int
	// hubPerMin is the steady state's Key Vault transactions per minute.
	hubPerMin float64
}

func hubScenario(b *testing.B, sz hubSize) {
	r, kube := startHubRun(b, sz, nil)
	env := r.env

	setupStart := time.Now()
	sims := hubAgents(b, env, kube, sz.agents, sz.rotation)
	b.Logf("%d pods created and their hub tokens minted in %s", sz.agents, time.Since(setupStart).Round(time.Millisecond))
	idle := r.hubSnapshot()

	// The agents watch the hub.
	startCPU := r.hubCPU()
	var fo fleetOptions
	if sz.rotation < mapping.MinRotation {
		fo.rotation = sz.rotation // smoke only: below what the annotation allows
	}
	r.fleet = startHubFleet(b, sims, r.root, "hub", sz.spread, sz.workers, sz.share, fo)
	defer func() { r.fleet.stop() }()
	readyIn := r.fleet.waitReady(b, sz.spread+5*time.Minute)
	b.Logf("hub phase: every agent wrote its set in %s", readyIn.Round(time.Millisecond))
	r.waitWatchers(sz.agents, 2*time.Minute+sz.sweep)
	watching := r.hubSnapshot()
	b.ReportMetric((watching.cpu-startCPU).Seconds()/float64(sz.agents)*10000, "hub-startup-cpu-s/10k-watchers")
	b.Logf("every agent watches: %s after the first start; hub CPU since the fleet started %s; watchers by replica %v",
		time.Since(setupStart).Round(time.Second), (watching.cpu - startCPU).Round(10*time.Millisecond), watching.watchers)

	if sz.phases[phaseSteady] {
		r.steady(idle)
	}
	if sz.phases[phaseWave] {
		r.wave("wave", "SECRET-00", false)
	}
	if sz.phases[phaseKill] {
		r.kill()
	}
	if sz.phases[phaseOutage] {
		r.outage()
	}
	if sz.phases[phaseUnlistable] {
		r.unlistable()
	}
	if n := r.fleet.count(func(a *hubAgent) bool { return a.finished.Load() }); n > 0 {
		b.Errorf("%d agents of the hub phase ended: %v", n, r.fleet.gaveUp())
	}
	b.Logf("agents' warnings other than rotation source switches: %v", r.fleet.otherWarnings())
	r.fleet.stop()

	if sz.phases[phasePoll] && sz.pollAgents > 0 {
		r.poll(sims[:min(sz.pollAgents, len(sims))])
	}
}

// startHubRun starts the environment of a hub benchmark: the API server,
// the webhook, sz.replicas hub processes (with --read-budget and the
// installs' GOMEMLIMIT; edit changes the options further), the emulator
// throttled at Key Vault's limit with the vault hubVault holding 3 secrets,
// the hub's list-only grant, and the agents' workload identity and
// namespace. It returns the run and a client without rate limits.
func startHubRun(b *testing.B, sz hubSize, edit func(*testenv.Options)) (*hubRun, kubernetes.Interface) {
	checkNoFile(b, sz)
	envCtx, cancelEnv := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancelEnv()
	opts := testenv.Options{
		Hub: true, HubSweepInterval: sz.sweep, EmulatorLatency: rtt, HubReplicas: sz.replicas,
		HubArgs: []string{"--read-budget=" + strconv.Itoa(sz.budget)},
		// As the installs set it (manifests/components/hub/deployment.yaml).
		HubEnv: []string{"GOMEMLIMIT=" + hubGoMemLimit},
	}
	if edit != nil {
		edit(&opts)
	}
	env, err := testenv.Start(envCtx, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(env.Stop)
	emu := env.Emulator
	emu.SetThrottle(emulator.DefaultThrottleLimit, emulator.DefaultThrottleWindow)
	if err := emu.AddVault(hubVault, emulator.VaultOptions{}); err != nil {
		b.Fatal(err)
	}
	for i := range 3 {
		emu.SetSecret(hubVault, fmt.Sprintf("SECRET-%02d", i), fmt.Sprintf("value-%02d-v1", i))
	}
	tenant := emu.TenantID()
	if err := emu.Grant(hubVault, benchClientID, emulator.PermGet); err != nil {
		b.Fatal(err)
	}
	if err := env.GrantHub(hubVault); err != nil {
		b.Fatal(err)
	}
	if err := env.RegisterWorkloadIdentity(benchClientID, tenant, benchNamespace, benchSA); err != nil {
		b.Fatal(err)
	}
	if err := env.EnsureNamespace(envCtx, benchNamespace, nil, nil, map[string]map[string]string{benchSA: {
		mapping.AnnotationWIClientID: benchClientID, mapping.AnnotationWITenantID: tenant,
	}}); err != nil {
		b.Fatal(err)
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS = -1
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	r := &hubRun{b: b, sz: sz, env: env, emu: emu, root: memDir(b)}
	b.Logf("hub: %d replicas (PIDs %v) on %s, GOMEMLIMIT=%s; %d agents in %d worker processes; Key Vault and Azure AD transport shared per worker: %v",
		sz.replicas, env.HubPIDs(), env.HubAddr(), hubGoMemLimit, sz.agents, sz.workers, sz.share)

	return r, kube
}

// hubState is a snapshot of the hub replicas.
type hubState struct {
	rss      []int64 // VmRSS in kB, by replica
	fds      []int
	cpu      time.Duration // all replicas
	metrics  []string      // by replica
	watchers []int
}

func (r *hubRun) hubSnapshot() hubState {
	var s hubState
	for i, pid := range r.env.HubPIDs() {
		text, _ := r.env.HubReplicaMetrics(i)
		s.metrics = append(s.metrics, text)
		s.watchers = append(s.watchers, int(testenv.MetricSum(text, "kvinject_hub_watchers")))
		s.rss = append(s.rss, procStatusKB(pid, "VmRSS"))
		s.fds = append(s.fds, procFDs(pid))
		s.cpu += procCPU(pid)
	}
	return s
}

func (r *hubRun) hubCPU() time.Duration {
	var d time.Duration
	for _, pid := range r.env.HubPIDs() {
		d += procCPU(pid)
	}
	return d
}

// procFDs counts a process's open file descriptors.
func procFDs(pid int) int {
	if pid == 0 {
		return 0
	}
	ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return len(ents)
}

// watchers is kvinject_hub_watchers summed over the replicas that answer.
func (r *hubRun) watchers() int {
	text, _ := r.env.HubMetrics()
	return int(testenv.MetricSum(text, "kvinject_hub_watchers"))
}

// waitWatchers waits until the replicas hold n watches, and fails if they
// do not within timeout.
func (r *hubRun) waitWatchers(n int, timeout time.Duration) {
	r.b.Helper()
	if got, _ := r.awaitWatchers(n, timeout); got < n {
		r.b.Fatalf("%d of %d agents watch the hub after %s; hub log tail:\n%s", got, n, timeout, tail(r.env.HubLog(), 3000))
	}
}

// awaitWatchers waits at most timeout until the replicas hold n watches, and
// returns how many they hold and when they reached n (or gave up).
func (r *hubRun) awaitWatchers(n int, timeout time.Duration) (int, time.Time) {
	deadline := time.Now().Add(timeout)
	for {
		got := r.watchers()
		if got >= n || time.Now().After(deadline) {
			return got, time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkOnHub waits until every agent's rotation source is the hub again
// after a wave (an agent that read the new version by its stretched poll
// first is still answered by the hub, at its paced turn), and fails if one's
// is not.
func (r *hubRun) checkOnHub(label string) {
	sz := r.sz
	timeout := 2*sz.sweep + time.Duration(float64(sz.agents)/float64(sz.budget)*float64(time.Second)) + 30*time.Second
	if n := r.fleet.waitFor(timeout, (*hubAgent).onHub); n < sz.agents {
		r.b.Errorf("%s: %d agents' rotation source is not the hub %s after the wave", label, sz.agents-n, timeout)
	}
}

// steady measures the steady state with every agent watching: Key Vault
// transactions per minute, and the hub's memory and CPU.
func (r *hubRun) steady(idle hubState) {
	b, sz := r.b, r.sz
	time.Sleep(sz.hubSettle)
	fallbacks := func() int64 { return r.fleet.sum(func(a *hubAgent) int64 { return a.fallbacks.Load() }) }
	startup := fallbacks()
	startupReasons := r.fleet.pollReasons()
	pre := r.hubSnapshot()
	win := measure(r.env, r.hubCPU, sz.hubWindow)
	st := r.hubSnapshot()
	n := float64(sz.agents)
	safetyPerMin := n * 3 / agent.DefaultSafetyInterval.Minutes()
	hubPerMin := win.perMin(win.vaultReads+win.throttled) + safetyPerMin
	r.hubPerMin = hubPerMin
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(hubPerMin, "hub-kv/min")
	b.ReportMetric(win.perMin(win.hubLists), "hub-sweep-lists/min")
	b.ReportMetric(win.perMin(win.agentReads), "hub-agent-reads/min")
	b.ReportMetric(win.perMin(win.throttled), "hub-429/min")
	b.ReportMetric(safetyPerMin, "hub-safety-amortized/min")
	b.ReportMetric(float64(win.hubValueReads), "hub-value-reads")
	var rss, idleRSS int64
	var heap, idleHeap, stacks, goroutines float64
	for i := range st.rss {
		rss += st.rss[i]
		idleRSS += idle.rss[i]
		heap += testenv.MetricSum(st.metrics[i], "go_memstats_heap_inuse_bytes")
		idleHeap += testenv.MetricSum(idle.metrics[i], "go_memstats_heap_inuse_bytes")
		stacks += testenv.MetricSum(st.metrics[i], "go_memstats_stack_inuse_bytes")
		goroutines += testenv.MetricSum(st.metrics[i], "go_goroutines")
	}
	b.ReportMetric(float64(rss)/1024, "hub-rss-MiB")
	b.ReportMetric(float64(rss-idleRSS)/1024/n*10000, "hub-rss-MiB/10k-watchers")
	b.ReportMetric(heap/(1<<20), "hub-heap-MiB")
	b.ReportMetric((heap-idleHeap)/(1<<20)/n*10000, "hub-heap-MiB/10k-watchers")
	b.ReportMetric(stacks/(1<<20)/n*10000, "hub-stacks-MiB/10k-watchers")
	b.ReportMetric(goroutines/n, "hub-goroutines/watcher")
	b.ReportMetric(win.hubCPU.Seconds()/win.d.Minutes()/n*10000, "hub-cpu-s/min/10k-watchers")
	var workerRSS int64
	var workerFDs int
	for _, pid := range r.fleet.pids() {
		workerRSS += procStatusKB(pid, "VmRSS")
		workerFDs += procFDs(pid)
	}
	b.Logf("steady window %s: vault reads %d (hub list pages %d, agent reads %d), 429s %d, hub value reads %d, hub CPU %s",
		win.d.Round(time.Second), win.vaultReads, win.hubLists, win.agentReads, win.throttled, win.hubValueReads, win.hubCPU)
	b.Logf("hub replicas: watchers %v; RSS idle %v kB, now %v kB; heap in use %.1f MiB (idle %.1f); stacks %.1f MiB; goroutines %.0f; open descriptors %v",
		st.watchers, idle.rss, st.rss, heap/(1<<20), idleHeap/(1<<20), stacks/(1<<20), goroutines, st.fds)
	// What the hub served in the window: watch requests answered (a watch
	// renewed after --max-wait is one "unchanged"), token reviews and pod
	// lookups that went to the API server.
	delta := func(name string, labels ...string) float64 {
		var d float64
		for i := range st.metrics {
			d += testenv.MetricSum(st.metrics[i], name, labels...) - testenv.MetricSum(pre.metrics[i], name, labels...)
		}
		return d
	}
	b.Logf("hub requests in the window: watch answers %.0f (unchanged %.0f, changed %.0f, refused %.0f), TokenReviews %.0f (from the cache %.0f), pod GETs %.0f (from the cache %.0f)",
		delta("kvinject_hub_watch_requests_total"), delta("kvinject_hub_watch_requests_total", `result="unchanged"`),
		delta("kvinject_hub_watch_requests_total", `result="changed"`), delta("kvinject_hub_watch_requests_total", `result="refused"`),
		delta("kvinject_hub_tokenreviews_total", `cached="false"`), delta("kvinject_hub_tokenreviews_total", `cached="true"`),
		delta("kvinject_hub_pod_lookups_total", `cached="false"`), delta("kvinject_hub_pod_lookups_total", `cached="true"`))
	b.Logf("workers: RSS %d MiB for %d agents (%.1f KB per agent), open descriptors %d; the benchmark process (emulator, API clients): %d descriptors",
		workerRSS/1024, sz.agents, float64(workerRSS)/n, workerFDs, procFDs(os.Getpid()))
	if win.hubValueReads > 0 {
		b.Errorf("the hub read %d values", win.hubValueReads)
	}
	// At the start, a watch the hub cannot admit yet (its TokenReview or pod
	// lookup timed out at a loaded API server: Unavailable) makes the agent
	// poll until its retry; reported, not an error. In the window, none.
	b.ReportMetric(float64(startup), "startup-switches-to-poll")
	b.Logf("switches of agents to polling before the window (start-up): %d, by reason %v", startup, startupReasons)
	if f := fallbacks() - startup; f > 0 {
		b.Errorf("%d switches of agents to polling in the steady window: %v", f, r.fleet.pollReasons())
	}
}

// waveResult is one rotation as the agents saw it.
type waveResult struct {
	first, last time.Duration // after the rotation
	done, stale int
	throttled   int64
	notHub      int // agents whose new set was not triggered by the hub
}

// replicaWave is one hub replica's part of a wave, from its metrics: when it
// found the change (its version listing) and when it released its last
// notification (an agent that read the new version by its own poll first
// may need none).
type replicaWave struct {
	watchers          int
	notified, listed  float64 // the counters before the wave
	last              float64 // the notifications counter at the last sample
	detected, settled time.Time
	released          int // notifications released in the wave
}

// watchReplicas samples the replicas' metrics every 250 ms until stop is
// closed, and returns each one's part of the wave.
func (r *hubRun) watchReplicas(stop <-chan struct{}) func() []replicaWave {
	reps := make([]replicaWave, r.env.HubReplicas())
	listed := func(text string) float64 {
		return testenv.MetricSum(text, "kvinject_hub_keyvault_requests_total", `op="list_versions"`)
	}
	for i := range reps {
		text, err := r.env.HubReplicaMetrics(i)
		if err != nil {
			continue
		}
		notified := testenv.MetricSum(text, "kvinject_hub_notifications_total")
		reps[i] = replicaWave{watchers: int(testenv.MetricSum(text, "kvinject_hub_watchers")),
			notified: notified, last: notified, listed: listed(text)}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for i := range reps {
				rw := &reps[i]
				if rw.watchers == 0 {
					continue
				}
				text, err := r.env.HubReplicaMetrics(i)
				if err != nil {
					continue
				}
				now := time.Now()
				if rw.detected.IsZero() && listed(text) > rw.listed {
					rw.detected = now
				}
				if v := testenv.MetricSum(text, "kvinject_hub_notifications_total"); v > rw.last {
					rw.last, rw.settled, rw.released = v, now, int(v-rw.notified)
				}
			}
		}
	}()
	return func() []replicaWave { <-done; return reps }
}

// wave rotates secret (used by every agent) and waits until every agent has
// written its new value. Each replica paces its notifications at
// --read-budget / --replicas from the sweep that found the change, so its
// part takes its watchers / that rate after its own detection (the replicas
// sweep independently, up to one interval apart). After a fault
// (afterFault), an agent whose rotation source was still poll may read the
// new version by its stretched poll before the hub's notification: that is
// reported, not an error.
func (r *hubRun) wave(label, secret string, afterFault bool) waveResult {
	b, sz, f := r.b, r.sz, r.fleet
	base := make([]int64, len(f.agents))
	for i, a := range f.agents {
		base[i] = a.changes.Load()
	}
	r.rotations++
	newValue := fmt.Sprintf("%s-rotation-%d", strings.ToLower(secret), r.rotations)
	stopMon := make(chan struct{})
	replicas := r.watchReplicas(stopMon)
	before := r.emu.Stats()
	start := time.Now()
	r.emu.SetSecret(hubVault, secret, newValue)
	n := float64(sz.agents)
	rate := float64(sz.budget) / float64(sz.replicas) // per replica
	f.waitFor(3*sz.sweep+6*time.Duration(n/float64(sz.budget)*float64(time.Second))+time.Minute,
		func(a *hubAgent) bool { return a.changes.Load() > 0 && a.changed.Load() > start.UnixNano() })
	time.Sleep(500 * time.Millisecond) // a last sample of the replicas
	close(stopMon)
	reps := replicas()
	after := r.emu.Stats()
	var res waveResult
	for i, a := range f.agents {
		if a.changes.Load() == base[i] {
			continue
		}
		res.done++
		t := time.Duration(a.changed.Load() - start.UnixNano())
		if res.first == 0 || t < res.first {
			res.first = t
		}
		res.last = max(res.last, t)
		if tr, _ := a.trigger.Load().(string); tr != "hub" {
			res.notHub++
		}
	}
	file := strings.ToLower(secret) + ".txt"
	for i := range f.agents {
		got, err := os.ReadFile(filepath.Join(r.root, "hub", strconv.Itoa(i), file))
		if err != nil || string(got) != newValue { // compared, never printed
			res.stale++
		}
	}
	res.throttled = after.Throttled - before.Throttled
	// Each replica's pacing against its watchers / its rate; the worst.
	var worst float64
	var parts []string
	for i, rw := range reps {
		if rw.watchers == 0 {
			continue
		}
		ideal := float64(rw.released) / rate
		if rw.detected.IsZero() || rw.settled.IsZero() {
			parts = append(parts, fmt.Sprintf("replica %d: %d watchers, found it %v, notified %d", i, rw.watchers, !rw.detected.IsZero(), rw.released))
			worst = max(worst, 99)
			continue
		}
		paced := rw.settled.Sub(rw.detected).Seconds()
		worst = max(worst, paced/ideal)
		parts = append(parts, fmt.Sprintf("replica %d: %d watchers, found it %.1fs after the rotation, released %d notifications in the %.1fs after (notifications/rate %.1fs: %.3f×)",
			i, rw.watchers, rw.detected.Sub(start).Seconds(), rw.released, paced, ideal, paced/ideal))
	}
	ideal := n / float64(sz.budget)
	b.ReportMetric(res.last.Seconds(), label+"-s")
	b.ReportMetric(res.first.Seconds(), label+"-first-s")
	b.ReportMetric((res.last-res.first).Seconds()/ideal, label+"-spread/(agents/budget)")
	b.ReportMetric(worst, label+"-paced/(notifications/rate)")
	b.ReportMetric(float64(res.throttled), label+"-429s")
	b.ReportMetric(float64(res.stale), label+"-stale-agents")
	b.ReportMetric(float64(res.notHub), label+"-not-by-hub")
	metrics, _ := r.env.HubMetrics()
	b.Logf("%s: %s rotated; %d of %d agents wrote it, first %.1fs, last %.1fs after the rotation (last-first %.1fs; agents/budget %.1fs at %d reads/s); %d stale; %d 429s; %d not triggered by the hub; hub notifications so far %v, pacing delay sum %.1fs; %s",
		label, secret, res.done, len(f.agents), res.first.Seconds(), res.last.Seconds(), (res.last - res.first).Seconds(), ideal, sz.budget, res.stale, res.throttled, res.notHub,
		testenv.MetricSum(metrics, "kvinject_hub_notifications_total"), testenv.MetricSum(metrics, "kvinject_hub_pacing_delay_seconds_sum"), strings.Join(parts, "; "))
	if res.stale > 0 || res.throttled > 0 || (res.notHub > 0 && !afterFault) {
		b.Errorf("%s: %d agents on the old version, %d 429s, %d agents not told by the hub", label, res.stale, res.throttled, res.notHub)
	}
	return res
}

// kill kills hub replica 0 with SIGKILL: its agents move to the others;
// then a rotation that every agent must get from the hub.
func (r *hubRun) kill() {
	b, sz, f := r.b, r.sz, r.fleet
	if sz.replicas < 2 {
		b.Errorf("kill: needs 2 or more hub replicas (KVINJECT_BENCH_HUB_REPLICAS)")
		return
	}
	st := r.hubSnapshot()
	pid := r.env.HubPIDs()[0]
	before := r.counters()
	killAt := time.Now()
	if err := r.env.KillHubReplica(0); err != nil {
		b.Fatal(err)
	}
	// The agents of the killed replica see their connection closed, poll,
	// and reconnect (after 1 s, jittered) to the replicas still running; a
	// watch is held there until it is answered, so the agents' rotation
	// source is the hub again at the next answer (the wave below).
	got, at := r.awaitWatchers(sz.agents, sz.back)
	backIn := at.Sub(killAt)
	after := r.counters()
	moved := f.count(func(a *hubAgent) bool { return a.polledAt.Load() >= killAt.UnixNano() })
	b.ReportMetric(float64(moved), "kill-agents-moved")
	b.ReportMetric(backIn.Seconds(), "kill-all-back-s")
	b.ReportMetric(float64(after.throttled-before.throttled), "kill-429s")
	b.Logf("kill: replica 0 (PID %d, %d watchers) killed with SIGKILL; %d agents switched to polling (switches so far by reason %v); the other replicas hold %d of %d watches %s after the kill; agent reads meanwhile %d, 429s %d",
		pid, st.watchers[0], moved, f.pollReasons(), got, sz.agents, backIn.Round(100*time.Millisecond),
		after.agentReads-before.agentReads, after.throttled-before.throttled)
	if got < sz.agents {
		b.Errorf("kill: %d agents did not reconnect within %s", sz.agents-got, sz.back)
	}
	// The survivors each pace at --read-budget / --replicas, as before the
	// kill, with more watchers each.
	r.wave("kill-wave", "SECRET-01", true)
	r.checkOnHub("kill")
	if err := r.env.StartHubReplica(context.Background(), 0); err != nil {
		b.Fatal(err)
	}
}

// counters are the emulator's counters of interest.
type counters struct {
	agentReads, throttled, hubLists int64
}

func (r *hubRun) counters() counters {
	return counters{agentReads: r.emu.ValueReads(benchClientID), throttled: r.emu.Stats().Throttled, hubLists: r.emu.ListRequests(testenv.HubClientID)}
}

// readsPerMinute samples the agents' reads and the 429s every minute for d
// and returns each minute's counts.
func (r *hubRun) readsPerMinute(d time.Duration) (reads, throttled []int64) {
	step := min(time.Minute, d)
	prev := r.counters()
	for end := time.Now().Add(d); time.Now().Before(end); {
		time.Sleep(min(step, time.Until(end)))
		c := r.counters()
		reads = append(reads, c.agentReads-prev.agentReads)
		throttled = append(throttled, c.throttled-prev.throttled)
		prev = c
	}
	return reads, throttled
}

func sum64(v []int64) int64 {
	var s int64
	for _, x := range v {
		s += x
	}
	return s
}

// outage stops every hub replica for sz.outage: the agents poll at the
// stretched interval meanwhile; then the hub is back, the agents return to
// it, and a rotation reaches every agent through the hub.
func (r *hubRun) outage() {
	b, sz, f := r.b, r.sz, r.fleet
	stopAt := time.Now()
	r.env.StopHub()
	reads, throttled := r.readsPerMinute(sz.outage)
	switched := f.count(func(a *hubAgent) bool { return a.polledAt.Load() >= stopAt.UnixNano() })
	startAt := time.Now()
	if err := r.env.StartHub(context.Background()); err != nil {
		b.Fatal(err)
	}
	got, at := r.awaitWatchers(sz.agents, sz.back)
	backIn := at.Sub(startAt)
	outMin := startAt.Sub(stopAt).Minutes()
	stretched := time.Duration(agent.HubFallbackStretch) * sz.rotation
	b.ReportMetric(float64(sum64(reads))/outMin, "outage-agent-reads/min")
	b.ReportMetric(float64(sum64(throttled)), "outage-429s")
	b.ReportMetric(float64(switched), "outage-agents-polling")
	b.ReportMetric(backIn.Seconds(), "outage-all-back-s")
	b.Logf("outage: every replica stopped (SIGTERM) for %s; %d of %d agents switched to polling every %s (%d × --rotation=%s; switches so far by reason %v); agent reads per minute %v (polling every --rotation without a hub: %.0f/min; at the stretched interval: %.0f/min); 429s per minute %v; hub started again: the replicas hold %d of %d watches after %s",
		sz.outage, switched, len(f.agents), stretched, agent.HubFallbackStretch, sz.rotation, f.pollReasons(), reads,
		float64(sz.agents)*3/sz.rotation.Minutes(), float64(sz.agents)*3/stretched.Minutes(), throttled, got, sz.agents, backIn.Round(time.Second))
	if sum64(throttled) > 0 || got < sz.agents {
		b.Errorf("outage: %d 429s; %d agents did not come back to the hub within %s", sum64(throttled), sz.agents-got, sz.back)
	}
	r.wave("outage-wave", "SECRET-02", true)
	r.checkOnHub("outage")
}

// unlistable revokes the hub identity's list permission: the hub refuses
// the watches (VaultNotListable) and the agents poll; then it is granted
// again, the agents return, and a rotation reaches them through the hub.
func (r *hubRun) unlistable() {
	b, sz, f := r.b, r.sz, r.fleet
	before := r.hubSnapshot()
	revokeAt := time.Now()
	if err := r.emu.Revoke(hubVault, testenv.HubClientID, emulator.PermList); err != nil {
		b.Fatal(err)
	}
	refused := func(a *hubAgent) bool { return a.polledAt.Load() >= revokeAt.UnixNano() }
	switched := f.waitFor(3*sz.sweep+time.Minute, refused)
	switchedIn := time.Since(revokeAt)
	reads, throttled := r.readsPerMinute(sz.faultWindow)
	st := r.hubSnapshot()
	var listable []float64
	var refusals, notListableSweeps float64
	for i := range st.metrics {
		listable = append(listable, testenv.MetricSum(st.metrics[i], "kvinject_hub_vault_listable"))
		refusals += testenv.MetricSum(st.metrics[i], "kvinject_hub_refusals_total", `reason="VaultNotListable"`) -
			testenv.MetricSum(before.metrics[i], "kvinject_hub_refusals_total", `reason="VaultNotListable"`)
		notListableSweeps += testenv.MetricSum(st.metrics[i], "kvinject_hub_sweeps_total", `result="not_listable"`)
	}
	reasons := f.pollReasons()
	hubLog := r.env.HubLog()
	logged := strings.Count(hubLog, "the hub may not list this vault")
	b.ReportMetric(float64(switched), "unlistable-agents-polling")
	b.ReportMetric(refusals, "unlistable-refusals")
	b.ReportMetric(float64(sum64(reads))/sz.faultWindow.Minutes(), "unlistable-agent-reads/min")
	b.ReportMetric(float64(sum64(throttled)), "unlistable-429s")
	b.Logf("unlistable: list revoked; %d of %d agents switched to polling within %s; kvinject_hub_vault_listable by replica %v; refusals VaultNotListable %.0f; sweeps not_listable %.0f; \"may not list\" logged %d times; agents' switches by reason %v; then for %s agent reads per minute %v, 429s per minute %v",
		switched, len(f.agents), switchedIn.Round(time.Second), listable, refusals, notListableSweeps, logged, reasons, sz.faultWindow, reads, throttled)
	if switched < len(f.agents) || sum64(throttled) > 0 || refusals == 0 || slices.Contains(listable, 1) {
		b.Errorf("unlistable: %d of %d agents polled, %d 429s, %.0f refusals, listable %v", switched, len(f.agents), sum64(throttled), refusals, listable)
	}
	grantAt := time.Now()
	if err := r.env.GrantHub(hubVault); err != nil {
		b.Fatal(err)
	}
	if !full() {
		// The hub retries a refused listing every 5 minutes: too long for the
		// smoke run, which ends here.
		b.Logf("unlistable: list granted again; the return (within the hub's 5-minute retry) is measured at full scale only")
		return
	}
	got, at := r.awaitWatchers(sz.agents, sz.back)
	backIn := at.Sub(grantAt)
	b.ReportMetric(backIn.Seconds(), "unlistable-all-back-s")
	b.Logf("unlistable: list granted again; the replicas hold %d of %d watches after %s", got, sz.agents, backIn.Round(time.Second))
	if got < sz.agents {
		b.Errorf("unlistable: %d agents did not come back to the hub within %s", sz.agents-got, sz.back)
		return
	}
	r.wave("unlistable-wave", "SECRET-00", true)
	r.checkOnHub("unlistable")
}

// poll restarts the first sz.pollAgents agents without --hub, polling every
// pollRotation, with the hub stopped (so that its sweeps are not counted),
// and measures their Key Vault transactions per minute.
func (r *hubRun) poll(sims []simAgent) {
	b, sz := r.b, r.sz
	r.env.StopHub()
	// As the hub phase's start: 300 first-set reads per second (150 without
	// a shared transport).
	spread := time.Duration(float64(sz.spread) * float64(len(sims)) / float64(sz.agents))
	if full() {
		spread = max(spread, 20*time.Second)
	}
	f := startHubFleet(b, sims, r.root, "poll", spread, sz.workers, sz.share, fleetOptions{noHub: true, rotation: sz.pollRotation})
	defer f.stop()
	ready := f.waitReady(b, spread+5*time.Minute)
	b.Logf("poll phase: %d agents wrote their set in %s", len(sims), ready.Round(time.Millisecond))
	time.Sleep(sz.pollSettle)
	win := measure(r.env, r.hubCPU, sz.pollWindow)
	m := float64(len(sims))
	perMin := win.perMin(win.vaultReads + win.throttled)
	b.ReportMetric(m, "poll-agents")
	b.ReportMetric(perMin, "poll-kv/min")
	b.ReportMetric(perMin/m*float64(sz.agents), "poll-kv/min-at-N")
	b.ReportMetric(win.perMin(win.throttled), "poll-429/min")
	if r.hubPerMin > 0 {
		// Against polling by all N agents, scaled from the ones measured.
		b.ReportMetric(100*r.hubPerMin/(perMin/m*float64(sz.agents)), "hub/poll-%")
	}
	b.Logf("poll window %s with %d agents polling every %s: vault reads %d (agent reads %d), 429s %d; %.0f/min, %.1f per agent per minute; at %d agents %.0f/min (%.0f reads/s, Key Vault allows 400)",
		win.d.Round(time.Second), len(sims), sz.pollRotation, win.vaultReads, win.agentReads, win.throttled, perMin, perMin/m, sz.agents, perMin/m*float64(sz.agents), perMin/m*float64(sz.agents)/60)
	f.stop()
	if n := len(f.gaveUp()); n > 0 {
		b.Errorf("%d agents of the poll phase failed", n)
	}
}

// checkNoFile raises this process's file-descriptor limit to its hard limit
// and fails when a process of the run would need more than that: a worker
// holds a hub connection per agent (and, without a shared transport, an
// Azure AD and a Key Vault one too), a hub replica one per agent it serves
// (after a kill, the others serve them all).
func checkNoFile(b *testing.B, sz hubSize) {
	b.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		b.Fatal(err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			b.Logf("raising RLIMIT_NOFILE: %v", err)
		}
	}
	perAgent := 3
	if sz.share {
		perAgent = 1
	}
	worker := uint64(ceilDiv(sz.agents, sz.workers)*perAgent + 500)
	alive := sz.replicas
	if sz.phases[phaseKill] && alive > 1 {
		alive--
	}
	replica := uint64(ceilDiv(sz.agents, alive) + 500)
	if worker > l.Cur || replica > l.Cur {
		b.Fatalf("RLIMIT_NOFILE is %d (hard %d): a worker of %d agents needs about %d descriptors and a hub replica of %d about %d. Fix: more KVINJECT_BENCH_HUB_WORKERS or KVINJECT_BENCH_HUB_REPLICAS, or a higher hard limit",
			l.Cur, l.Max, ceilDiv(sz.agents, sz.workers), worker, ceilDiv(sz.agents, alive), replica)
	}
}

// window is the counters' increase over a measured window.
type window struct {
	d                                   time.Duration
	vaultReads, throttled               int64
	hubLists, hubValueReads, agentReads int64
	hubCPU                              time.Duration
}

func (w window) perMin(v int64) float64 {
	if w.d <= 0 {
		return 0
	}
	return float64(v) / w.d.Minutes()
}

// measure waits d and returns what the counters counted meanwhile; hubCPU
// is the CPU time of the hub replicas.
func measure(env *testenv.Env, hubCPU func() time.Duration, d time.Duration) window {
	emu := env.Emulator
	snap := func() window {
		return window{vaultReads: emu.VaultReads(hubVault), throttled: emu.Stats().Throttled,
			hubLists: emu.ListRequests(testenv.HubClientID), hubValueReads: emu.ValueReads(testenv.HubClientID),
			agentReads: emu.ValueReads(benchClientID), hubCPU: hubCPU()}
	}
	a := snap()
	start := time.Now()
	time.Sleep(d)
	z := snap()
	return window{d: time.Since(start), vaultReads: z.vaultReads - a.vaultReads, throttled: z.throttled - a.throttled,
		hubLists: z.hubLists - a.hubLists, hubValueReads: z.hubValueReads - a.hubValueReads,
		agentReads: z.agentReads - a.agentReads, hubCPU: z.hubCPU - a.hubCPU}
}

// hubAgents creates n pods through the API server (the webhook injects their
// rotating agents with --hub), mints each pod's hub token (TokenRequest,
// audience kvinject-hub, bound to the pod) and one Azure AD exchange token for
// the ServiceAccount, and returns each agent's arguments and environment. A
// rotation other than the default is the pods' kvinject.dev/rotation (when
// the annotation allows it).
func hubAgents(b *testing.B, env *testenv.Env, kube kubernetes.Interface, n int, rotation time.Duration) []simAgent {
	b.Helper()
	ctx := context.Background()
	dir := b.TempDir()
	azToken := filepath.Join(dir, "azure-identity-token")
	tr, err := kube.CoreV1().ServiceAccounts(benchNamespace).CreateToken(ctx, benchSA, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{mutate.TokenAudience}, ExpirationSeconds: ptrTo(int64(3 * 3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(azToken, []byte(tr.Status.Token), 0o600); err != nil {
		b.Fatal(err)
	}
	sims := make([]simAgent, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			sims[i], errs[i] = hubAgent1(ctx, env, kube, dir, azToken, i, rotation)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return sims
}

func hubAgent1(ctx context.Context, env *testenv.Env, kube kubernetes.Interface, dir, azToken string, i int, rotation time.Duration) (simAgent, error) {
	pod := benchPod(1, 3, true)
	if rotation != agentconfig.DefaultRotation && rotation >= mapping.MinRotation {
		pod.Annotations[mapping.AnnotationRotation] = rotation.String()
	}
	pod, err := kube.CoreV1().Pods(benchNamespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return simAgent{}, err
	}
	c, err := testenv.AgentContainer(pod, mutate.AgentContainerName)
	if err != nil {
		return simAgent{}, err
	}
	cfg, err := agentconfig.ParseArgs(c.Args, nil)
	if err != nil {
		return simAgent{}, fmt.Errorf("the injected agent's arguments: %w", err)
	}
	if cfg.Mode != agentconfig.ModeSidecar || cfg.Hub == "" {
		return simAgent{}, fmt.Errorf("the webhook injected no rotating agent with --hub: %q", c.Args)
	}
	if rotation >= mapping.MinRotation && cfg.Rotation != rotation {
		return simAgent{}, fmt.Errorf("the injected agent polls every %s, want %s: %q", cfg.Rotation, rotation, c.Args)
	}
	// The kubelet's projected hub token, for longer than the pod asks
	// (600 s): the kubelet would renew it; these files are written once.
	tr, err := kube.CoreV1().ServiceAccounts(benchNamespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{hubapi.Audience}, ExpirationSeconds: ptrTo(int64(3 * 3600)),
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return simAgent{}, fmt.Errorf("minting the hub token: %w", err)
	}
	hubToken := filepath.Join(dir, "hub-token-"+strconv.Itoa(i))
	if err := os.WriteFile(hubToken, []byte(tr.Status.Token), 0o600); err != nil {
		return simAgent{}, err
	}
	e := map[string]string{}
	for _, ev := range c.Env {
		v := ev.Value
		if ev.ValueFrom != nil && ev.ValueFrom.FieldRef != nil {
			switch ev.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = pod.Name
			case "metadata.namespace":
				v = pod.Namespace
			case "spec.serviceAccountName":
				v = pod.Spec.ServiceAccountName
			}
		}
		e[ev.Name] = v
	}
	if e[agentconfig.EnvHubCA] == "" {
		return simAgent{}, fmt.Errorf("the injected agent has no %s", agentconfig.EnvHubCA)
	}
	e[agentconfig.EnvTokenFile] = azToken
	e[agentconfig.EnvHubTokenFile] = hubToken
	e[agentconfig.EnvTestCAFile] = env.CAFile
	e[agentconfig.EnvTestResolve] = env.ResolveOverride()
	return simAgent{args: c.Args, env: e}, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func ptrTo[T any](v T) *T { return &v }
