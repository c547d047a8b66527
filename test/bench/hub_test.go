//go:build integration

package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// hubSize is the size and the timing of one BenchmarkHub scenario.
type hubSize struct {
	agents int
	// spread is the time over which the agents start, so that their first
	// sets stay under Key Vault's limit (they are not what is measured).
	spread time.Duration
	// sweep is the hub's --sweep-interval, budget its --read-budget.
	sweep  time.Duration
	budget int
	// settle is waited after every agent watches (or polls) before a window.
	hubSettle, pollSettle time.Duration
	// hubWindow and pollWindow are the measured steady-state windows.
	hubWindow, pollWindow time.Duration
	// rotation is the polling agents' --rotation.
	rotation time.Duration
}

// hubSizeFor returns the scenario's size: full (KVINJECT_BENCH_SCALE=full,
// KVINJECT_BENCH_HUB_AGENTS agents, default 2,000) or smoke.
func hubSizeFor() hubSize {
	if !full() {
		return hubSize{agents: 10, spread: time.Second, sweep: 2 * time.Second, budget: 5,
			hubSettle: time.Second, pollSettle: time.Second,
			hubWindow: 4 * time.Second, pollWindow: 6 * time.Second, rotation: 3 * time.Second}
	}
	sz := hubSize{agents: envInt("KVINJECT_BENCH_HUB_AGENTS", 2000), budget: envInt("KVINJECT_BENCH_HUB_BUDGET", 50),
		sweep: 30 * time.Second, hubSettle: 30 * time.Second, pollSettle: time.Minute,
		hubWindow: 3 * time.Minute, pollWindow: 2 * agentconfig.DefaultRotation, rotation: agentconfig.DefaultRotation}
	// The first sets at 300 reads/s, under Key Vault's 400.
	sz.spread = max(20*time.Second, time.Duration(sz.agents)*10*time.Millisecond)
	if os.Getenv("KVINJECT_BENCH_HUB_POLL") == "0" {
		sz.pollWindow = 0 // no polling phase: the hub alone, for a large N
	}
	return sz
}

// envInt reads a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkHub measures the version hub (cmd/hub) with a fleet of rotating
// agents: N pods created through the real API server (the real webhook
// injects their rotating agents with --hub), each with a projected hub token
// minted by TokenRequest and bound to the pod, and N agents in this process
// running the agent's real watch and fetch code (agent.Run) over real HTTPS
// connections, one Key Vault and one hub connection each, against the real
// hub process and the emulator throttled at Key Vault's real limit (4,000
// reads per 10 s, 20 ms round trips). Every pod maps the same 3 secrets of
// one vault.
//
// Steady state: all Key Vault transactions per minute (the hub's list pages,
// the agents' reads, 429s) with the hub, and then with the same agents
// restarted without --hub, polling every 2m; the 24h safety re-read, which
// never falls in the window, is added amortized. Wave: one secret used by
// every agent is rotated; the time until every agent has written the new
// version, beside agents/--read-budget, 429s (must be 0) and agents left on
// the old version (must be 0). Memory: the hub process's RSS and Go heap
// with N watchers, per 10,000 watchers above its idle RSS.
func BenchmarkHub(b *testing.B) {
	sz := hubSizeFor()
	poll := sz.rotation.String()
	if sz.pollWindow == 0 {
		poll = "none"
	}
	name := fmt.Sprintf("agents=%d/secrets=3/sweep=%s/budget=%d/poll=%s", sz.agents, sz.sweep, sz.budget, poll)
	b.Run(name, func(b *testing.B) {
		for range b.N {
			hubScenario(b, sz)
		}
	})
}

// hubAgent is what the hub benchmark learns about one agent from its logs.
type hubAgent struct {
	ready     atomic.Int64 // UnixNano of the first complete set
	changed   atomic.Int64 // UnixNano of the last "secrets changed"
	changes   atomic.Int64 // "secrets changed" records
	fallbacks atomic.Int64 // "rotation source" switches to polling
	warnings  atomic.Int64 // warnings and errors
}

type hubLog struct{ a *hubAgent }

func (h hubLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h hubLog) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "wrote secrets":
		h.a.ready.CompareAndSwap(0, r.Time.UnixNano())
	case "secrets changed; wrote a new set":
		h.a.changed.Store(r.Time.UnixNano())
		h.a.changes.Add(1)
	}
	if r.Level >= slog.LevelWarn && !strings.HasPrefix(r.Message, "TEST OPTION") {
		h.a.warnings.Add(1)
		if r.Message == "rotation source" {
			h.a.fallbacks.Add(1)
		}
	}
	return nil
}

func (h hubLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h hubLog) WithGroup(string) slog.Handler      { return h }

// hubFleet is the agents of one phase.
type hubFleet struct {
	agents []*hubAgent
	errs   []error
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// simAgent is one simulated pod's agent: its configuration (the injected
// container's arguments) and environment (the container's, with the token
// files remapped).
type simAgent struct {
	cfg agentconfig.Config
	env map[string]string
}

const hubVault = "contoso-shop"

func hubScenario(b *testing.B, sz hubSize) {
	raiseNoFile(b, sz.agents)
	ctx := context.Background()
	envCtx, cancelEnv := context.WithTimeout(ctx, 5*time.Minute)
	defer cancelEnv()
	env, err := testenv.Start(envCtx, testenv.Options{
		Hub: true, HubSweepInterval: sz.sweep, EmulatorLatency: rtt,
		HubArgs: []string{"--read-budget=" + strconv.Itoa(sz.budget)},
	})
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
	hubPID, err := findProc(func(a []string) bool { return a[0] == filepath.Join(env.BinDir, "hub") })
	if err != nil {
		b.Fatalf("finding the hub process: %v", err)
	}

	setupStart := time.Now()
	sims := hubAgents(b, env, kube, sz.agents)
	b.Logf("%d pods created and their hub tokens minted in %s", sz.agents, time.Since(setupStart).Round(time.Millisecond))
	idleRSS := procStatusKB(hubPID, "VmRSS")
	idleMetrics, _ := env.HubMetrics()

	// Phase 1: the agents watch the hub.
	root := memDir(b)
	fleet := startHubFleet(b, sims, root, "hub", sz.spread, nil)
	defer fleet.stop()
	readyIn := fleet.waitReady(b, sz.spread+5*time.Minute)
	b.Logf("hub phase: every agent wrote its set in %s", readyIn.Round(time.Millisecond))
	watchDeadline := time.Now().Add(2*time.Minute + sz.sweep)
	for {
		text, _ := env.HubMetrics()
		if int(testenv.MetricSum(text, "kvinject_hub_watchers")) >= sz.agents {
			break
		}
		if time.Now().After(watchDeadline) {
			b.Fatalf("%d of %d agents watch the hub after 2m; hub log tail:\n%s", int(testenv.MetricSum(text, "kvinject_hub_watchers")), sz.agents, tail(env.HubLog(), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(sz.hubSettle)
	hubWin := measure(env, hubPID, sz.hubWindow)
	rss := procStatusKB(hubPID, "VmRSS")
	hubMetrics, _ := env.HubMetrics()

	// Wave: one secret used by every agent is rotated.
	for _, a := range fleet.agents {
		a.changes.Store(0)
	}
	before := emu.Stats()
	waveStart := time.Now()
	newValue := "value-00-v2"
	emu.SetSecret(hubVault, "SECRET-00", newValue)
	waveDeadline := waveStart.Add(3*sz.sweep + 3*time.Duration(sz.agents/sz.budget)*time.Second + time.Minute)
	var first, last int64
	var fallbacks int64
	for time.Now().Before(waveDeadline) {
		done := 0
		first, last = 0, 0
		for _, a := range fleet.agents {
			if a.changes.Load() > 0 {
				done++
				t := a.changed.Load()
				if first == 0 || t < first {
					first = t
				}
				last = max(last, t)
			}
		}
		if done == len(fleet.agents) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := emu.Stats()
	stale := 0
	for i := range fleet.agents {
		got, err := os.ReadFile(filepath.Join(root, "hub", strconv.Itoa(i), "secret-00.txt"))
		if err != nil || string(got) != newValue { // compared, never printed
			stale++
		}
	}
	waveMetrics, _ := env.HubMetrics()
	fallbacks = fleet.sum(func(a *hubAgent) int64 { return a.fallbacks.Load() })
	warnings := fleet.sum(func(a *hubAgent) int64 { return a.warnings.Load() })
	fleet.stop()
	if fleet.gaveUp() > 0 {
		b.Fatalf("%d agents of the hub phase failed", fleet.gaveUp())
	}

	// Phase 2: the same agents poll every rotation interval, without a hub
	// (stopped, so that its sweeps are not counted).
	env.StopHub()
	var pollWin window
	if sz.pollWindow > 0 {
		pollFleet := startHubFleet(b, sims, root, "poll", sz.spread, func(c *agentconfig.Config) {
			c.Hub, c.Rotation = "", sz.rotation
		})
		defer pollFleet.stop()
		pollReady := pollFleet.waitReady(b, sz.spread+5*time.Minute)
		b.Logf("poll phase: every agent wrote its set in %s", pollReady.Round(time.Millisecond))
		time.Sleep(sz.pollSettle)
		pollWin = measure(env, hubPID, sz.pollWindow)
		pollFleet.stop()
		if pollFleet.gaveUp() > 0 {
			b.Fatalf("%d agents of the poll phase failed", pollFleet.gaveUp())
		}
	}

	// Key Vault transactions per minute: the vault's reads (gets and list
	// pages that passed throttling) and its 429s.
	n := float64(sz.agents)
	safetyPerMin := n * 3 / (agent.DefaultSafetyInterval.Minutes())
	hubPerMin := hubWin.perMin(hubWin.vaultReads+hubWin.throttled) + safetyPerMin
	pollPerMin := pollWin.perMin(pollWin.vaultReads + pollWin.throttled)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(hubPerMin, "hub-kv/min")
	b.ReportMetric(hubWin.perMin(hubWin.hubLists), "hub-sweep-lists/min")
	b.ReportMetric(hubWin.perMin(hubWin.agentReads), "hub-agent-reads/min")
	b.ReportMetric(safetyPerMin, "hub-safety-amortized/min")
	if sz.pollWindow > 0 {
		b.ReportMetric(pollPerMin, "poll-kv/min")
		b.ReportMetric(pollWin.perMin(pollWin.throttled), "poll-429/min")
		b.ReportMetric(100*hubPerMin/pollPerMin, "hub/poll-%")
	}
	b.ReportMetric(float64(hubWin.hubValueReads+pollWin.hubValueReads), "hub-value-reads")
	waveS := time.Duration(last - waveStart.UnixNano()).Seconds()
	b.ReportMetric(waveS, "wave-s")
	b.ReportMetric(time.Duration(first-waveStart.UnixNano()).Seconds(), "wave-first-s")
	paced := time.Duration(last - first).Seconds()
	b.ReportMetric(paced/(n/float64(sz.budget)), "wave-spread/(agents/budget)")
	b.ReportMetric(float64(after.Throttled-before.Throttled), "wave-429s")
	b.ReportMetric(float64(stale), "wave-stale-agents")
	b.ReportMetric(float64(fallbacks), "hub-fallbacks")
	b.ReportMetric(float64(rss)/1024, "hub-rss-MiB")
	b.ReportMetric(float64(rss-idleRSS)/1024/n*10000, "hub-rss-MiB/10k-watchers")
	heap := testenv.MetricSum(hubMetrics, "go_memstats_heap_inuse_bytes")
	idleHeap := testenv.MetricSum(idleMetrics, "go_memstats_heap_inuse_bytes")
	b.ReportMetric(heap/(1<<20), "hub-heap-MiB")
	b.ReportMetric((heap-idleHeap)/(1<<20)/n*10000, "hub-heap-MiB/10k-watchers")
	b.ReportMetric(hubWin.hubCPU.Seconds()/hubWin.d.Minutes(), "hub-cpu-s/min")
	b.Logf("hub window %s: vault reads %d (hub list pages %d, agent reads %d), 429s %d, hub CPU %s; idle RSS %d kB, with %d watchers %d kB; goroutines %v",
		hubWin.d, hubWin.vaultReads, hubWin.hubLists, hubWin.agentReads, hubWin.throttled, hubWin.hubCPU, idleRSS, sz.agents, rss, testenv.MetricSum(hubMetrics, "go_goroutines"))
	b.Logf("poll window %s: vault reads %d (agent reads %d), 429s %d", pollWin.d, pollWin.vaultReads, pollWin.agentReads, pollWin.throttled)
	b.Logf("wave: first agent %.1fs, last %.1fs after the rotation; %d stale; notifications %v, pacing delay sum %.1fs; agents' warnings %d",
		time.Duration(first-waveStart.UnixNano()).Seconds(), waveS, stale, testenv.MetricSum(waveMetrics, "kvinject_hub_notifications_total"),
		testenv.MetricSum(waveMetrics, "kvinject_hub_pacing_delay_seconds_sum"), warnings)
	if stale > 0 || after.Throttled != before.Throttled || fallbacks > 0 || hubWin.hubValueReads+pollWin.hubValueReads > 0 {
		b.Errorf("wave: %d agents on the old version, %d 429s; %d agents fell back to polling; the hub read %d values",
			stale, after.Throttled-before.Throttled, fallbacks, hubWin.hubValueReads+pollWin.hubValueReads)
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

// measure waits d and returns what the counters counted meanwhile.
func measure(env *testenv.Env, hubPID int, d time.Duration) window {
	emu := env.Emulator
	snap := func() window {
		return window{vaultReads: emu.VaultReads(hubVault), throttled: emu.Stats().Throttled,
			hubLists: emu.ListRequests(testenv.HubClientID), hubValueReads: emu.ValueReads(testenv.HubClientID),
			agentReads: emu.ValueReads(benchClientID), hubCPU: procCPU(hubPID)}
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
// the ServiceAccount, and returns each agent's configuration and environment.
func hubAgents(b *testing.B, env *testenv.Env, kube kubernetes.Interface, n int) []simAgent {
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
			sims[i], errs[i] = hubAgent1(ctx, env, kube, dir, azToken, i)
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

func hubAgent1(ctx context.Context, env *testenv.Env, kube kubernetes.Interface, dir, azToken string, i int) (simAgent, error) {
	pod, err := kube.CoreV1().Pods(benchNamespace).Create(ctx, benchPod(1, 3, true), metav1.CreateOptions{})
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
	return simAgent{cfg: cfg, env: e}, nil
}

// startHubFleet starts one in-process agent per sim, evenly within spread,
// each in its own directory root/phase/i; edit changes their configuration.
func startHubFleet(b *testing.B, sims []simAgent, root, phase string, spread time.Duration, edit func(*agentconfig.Config)) *hubFleet {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &hubFleet{agents: make([]*hubAgent, len(sims)), errs: make([]error, len(sims)), cancel: cancel}
	start := time.Now()
	for i, s := range sims {
		cfg := s.cfg
		cfg.Entries = append([]agentconfig.Entry(nil), s.cfg.Entries...)
		cfg.Dir = filepath.Join(root, phase, strconv.Itoa(i))
		if edit != nil {
			edit(&cfg)
		}
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			b.Fatal(err)
		}
		a := &hubAgent{}
		f.agents[i] = a
		env := s.env
		opts := agent.Options{Getenv: func(k string) string { return env[k] }, Logger: slog.New(hubLog{a}), InitTimeout: 10 * time.Minute}
		at := start.Add(time.Duration(i) * spread / time.Duration(len(sims)))
		f.wg.Go(func() {
			time.Sleep(time.Until(at))
			if ctx.Err() == nil {
				f.errs[i] = agent.Run(ctx, cfg, opts)
			}
		})
	}
	return f
}

// waitReady waits until every agent wrote its first set and returns how long
// that took from now.
func (f *hubFleet) waitReady(b *testing.B, timeout time.Duration) time.Duration {
	b.Helper()
	start := time.Now()
	for {
		ready := 0
		for _, a := range f.agents {
			if a.ready.Load() != 0 {
				ready++
			}
		}
		if ready == len(f.agents) {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			b.Fatalf("%d of %d agents wrote their set within %s", ready, len(f.agents), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *hubFleet) stop() {
	f.cancel()
	f.wg.Wait()
}

func (f *hubFleet) gaveUp() int {
	n := 0
	for _, err := range f.errs {
		if err != nil {
			n++
		}
	}
	return n
}

func (f *hubFleet) sum(v func(*hubAgent) int64) int64 {
	var s int64
	for _, a := range f.agents {
		s += v(a)
	}
	return s
}

// raiseNoFile raises the process's file-descriptor limit as far as it may
// and fails when it is below what n agents need: while it reads, each holds an
// Azure AD, a Key Vault and a hub connection, and the emulator serves the
// other ends of the first two in this process (the hub process inherits the
// limit and holds one per agent).
func raiseNoFile(b *testing.B, n int) {
	b.Helper()
	need := uint64(5*n + 1000)
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		b.Fatal(err)
	}
	// Beyond the hard limit needs CAP_SYS_RESOURCE (root outside a container).
	if l.Max < need {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: need, Max: need}); err == nil {
			return
		}
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			b.Logf("raising RLIMIT_NOFILE: %v", err)
		}
	}
	if l.Cur < need {
		b.Fatalf("RLIMIT_NOFILE is %d (hard %d): %d agents need about %d. Fix: raise the hard limit (ulimit -Hn, or the container's nofile limit), or lower KVINJECT_BENCH_HUB_AGENTS to %d",
			l.Cur, l.Max, n, need, (l.Cur-1000)/5)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func ptrTo[T any](v T) *T { return &v }
