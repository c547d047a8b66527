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
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// fleetAgent is what a rollout benchmark learns about one agent from its logs.
type fleetAgent struct {
	ready   atomic.Int64 // UnixNano of the first complete set; 0 before
	retries atomic.Int64 // the agent's own retries of the first set
	done    atomic.Bool  // Run returned
}

// fleetLog is an agent's log handler: it notes the first set and the retries
// and drops everything else.
type fleetLog struct{ a *fleetAgent }

func (h fleetLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h fleetLog) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "wrote secrets":
		h.a.ready.CompareAndSwap(0, r.Time.UnixNano())
	case "attempt failed, retrying":
		h.a.retries.Add(1)
	}
	return nil
}

func (h fleetLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h fleetLog) WithGroup(string) slog.Handler      { return h }

// sample is the emulator's counters at a moment of a rollout.
type sample struct {
	at time.Duration
	st emulator.Stats
}

// BenchmarkKeyVaultRollout simulates a rollout: a fleet of pods whose agents
// (in this process, each with its own identity, credential, Key Vault client
// and connections) start evenly within a few seconds, as sidecars with the
// default 2m rotation, against one vault that throttles at Key Vault's real
// limit (4,000 reads per 10 s, 429 with Retry-After) with 20 ms round trips.
//
// It reports the time until every agent has written its set, every request
// Key Vault saw (challenges, reads and 429s, retries included), the agents'
// own retries and how many gave up (must be 0), the most reads accepted and
// attempted in any 10 s window, and the rate of attempts (reads and 429s)
// from the first 429 until all are ready, beside the limit (it should settle
// under it). The log shows reads and 429s second by second. At full scale the
// fleet then keeps polling, and the steady-state read rate, measured over two
// rotation intervals, is reported beside the limit of 400 reads/s.
func BenchmarkKeyVaultRollout(b *testing.B) {
	pods, secrets := pick(2000, 20), 3
	spread := pick(3*time.Second, 200*time.Millisecond)
	for _, v := range []struct {
		retry  string
		sdk    policy.RetryOptions
		steady bool
	}{
		// As shipped: the Azure SDK retries 408 and 5xx (3 times); 429s go to
		// the agent's jittered backoff, which honours Retry-After and retries
		// only the secrets it does not have yet.
		{"agent", policy.RetryOptions{}, full()},
		// For comparison (start-up only): the SDK also retries 429s, 3 times,
		// waiting exactly Retry-After each time, as it does by default.
		{"sdk-429", policy.RetryOptions{StatusCodes: []int{408, 429, 500, 502, 503, 504}}, false},
	} {
		name := fmt.Sprintf("pods=%d/secrets=%d/spread=%s/retry=%s/steady=%v", pods, secrets, spread, v.retry, v.steady)
		b.Run(name, func(b *testing.B) {
			for range b.N {
				rollout(b, pods, secrets, spread, v.sdk, v.steady)
			}
		})
	}
}

// steadyFrom and steadyFor are the window in which the fleet's steady polling
// is measured, after the last agent became ready: two rotation intervals,
// starting after a minute (the first polls come 2m ± 10% after each start).
const (
	steadyFrom = time.Minute
	steadyFor  = 2 * agentconfig.DefaultRotation
)

func rollout(b *testing.B, pods, secrets int, spread time.Duration, sdkRetry policy.RetryOptions, steady bool) {
	f := newVault(b, emulator.Options{Latency: rtt}, secrets)
	root := memDir(b)
	envs := make([]map[string]string, pods)
	for i := range pods {
		envs[i] = f.identity(b, i)
	}
	fleet := make([]*fleetAgent, pods)
	errs := make([]error, pods)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var samples []sample // written by the sampler until it closes sampled
	f.emu.ResetStats()
	start := time.Now()
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			samples = append(samples, sample{time.Since(start), f.emu.Stats()})
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()

	var wg sync.WaitGroup
	for i := range pods {
		fleet[i] = &fleetAgent{}
		cfg := f.config(agentconfig.ModeSidecar, filepath.Join(root, strconv.Itoa(i)))
		if err := os.Mkdir(cfg.Dir, 0o755); err != nil { // the kubelet's emptyDir
			b.Fatal(err)
		}
		env := envs[i]
		opts := agent.Options{Getenv: func(k string) string { return env[k] }, Logger: slog.New(fleetLog{fleet[i]}), SDKRetry: sdkRetry}
		startAt := start.Add(time.Duration(i) * spread / time.Duration(pods))
		wg.Go(func() {
			time.Sleep(time.Until(startAt))
			errs[i] = agent.Run(ctx, cfg, opts)
			fleet[i].done.Store(true)
		})
	}

	// Wait for every agent's first set; the agents' own bound is InitTimeout.
	deadline := start.Add(spread + agent.DefaultInitTimeout + 30*time.Second)
	var allReady time.Time
	for allReady.IsZero() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		var stopped bool
		allReady, stopped = readyAt(fleet)
		if stopped {
			break
		}
	}
	readySt := f.emu.Stats()
	if !allReady.IsZero() && steady {
		time.Sleep(time.Until(allReady.Add(steadyFrom + steadyFor + time.Second)))
	}
	cancel()
	wg.Wait()
	<-sampled

	gaveUp, incomplete := 0, 0
	var retries int64
	for i, a := range fleet {
		retries += a.retries.Load()
		if errs[i] != nil {
			gaveUp++
			b.Logf("agent %d: %v", i, errs[i])
		}
		if atomicdir.Check(filepath.Join(root, strconv.Itoa(i))) != nil {
			incomplete++
		}
	}
	if gaveUp > 0 || incomplete > 0 || allReady.IsZero() {
		b.Fatalf("%d agents gave up, %d have no complete set", gaveUp, incomplete)
	}

	limit := float64(emulator.DefaultThrottleLimit)
	accepted := func(s emulator.Stats) int64 { return s.Gets }
	attempted := func(s emulator.Stats) int64 { return s.Gets + s.Throttled }
	firstThrottle := time.Duration(-1)
	for _, s := range samples {
		if s.st.Throttled > 0 {
			firstThrottle = s.at
			break
		}
	}
	readyIn := allReady.Sub(start)
	startup := samplesUntil(samples, readyIn+time.Second)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(readyIn.Seconds(), "all-ready-s")
	b.ReportMetric(float64(readySt.Challenges+readySt.Gets+readySt.Throttled), "kv-requests")
	b.ReportMetric(float64(readySt.Gets), "kv-reads")
	b.ReportMetric(float64(readySt.Throttled), "kv-429s")
	b.ReportMetric(float64(readySt.TokenRequests), "token-requests")
	b.ReportMetric(float64(readySt.Connections), "connections")
	b.ReportMetric(float64(retries), "agent-retries")
	b.ReportMetric(float64(gaveUp), "gave-up")
	b.ReportMetric(float64(maxWindow(startup, 10*time.Second, 0, accepted)), "max-reads/10s")
	b.ReportMetric(float64(maxWindow(startup, 10*time.Second, 0, attempted)), "max-attempts/10s")
	if firstThrottle >= 0 && readyIn > firstThrottle {
		// Attempts (reads and 429s) from the first 429 until the last agent
		// was ready: in the first 10 s window, and per second on average,
		// both beside the limit.
		b.ReportMetric(firstThrottle.Seconds(), "first-429-s")
		w0 := attempted(at(startup, firstThrottle))
		b.ReportMetric(float64(attempted(at(startup, firstThrottle+10*time.Second))-w0)/limit, "attempts-first-10s-after-429/limit")
		perSec := float64(attempted(readySt)-w0) / (readyIn - firstThrottle).Seconds()
		b.ReportMetric(perSec/(limit/emulator.DefaultThrottleWindow.Seconds()), "attempts-after-429/limit")
	}
	b.Logf("per second from the first start (token requests/reads/429s): %s", perSecond(startup))
	if steady {
		from, to := readyIn+steadyFrom, readyIn+steadyFrom+steadyFor
		win := samplesUntil(samples, to)
		reads := float64(at(win, to).Gets - at(win, from).Gets)
		rate := reads / (to - from).Seconds()
		b.ReportMetric(rate, "steady-reads/s")
		b.ReportMetric(rate*10/limit, "steady-reads/limit")
		b.ReportMetric(float64(maxWindow(win, 10*time.Second, from, accepted))/limit, "steady-peak-10s/limit")
		b.ReportMetric(float64(at(win, to).Throttled-at(win, from).Throttled), "steady-429s")
	}
}

// readyAt returns when the last agent wrote its first set, or zero while one
// has not; stopped reports that every agent has either written its set or
// stopped, so that waiting longer is pointless.
func readyAt(fleet []*fleetAgent) (last time.Time, stopped bool) {
	var latest int64
	stopped = true
	for _, a := range fleet {
		r := a.ready.Load()
		if r == 0 {
			latest = -1
			stopped = stopped && a.done.Load()
			continue
		}
		if latest >= 0 {
			latest = max(latest, r)
		}
	}
	if latest < 0 {
		return time.Time{}, stopped
	}
	return time.Unix(0, latest), true
}

// perSecond renders token requests, reads and 429s per second.
func perSecond(s []sample) string {
	var out []string
	var prev emulator.Stats
	next := time.Second
	for _, x := range s {
		if x.at >= next {
			out = append(out, fmt.Sprintf("%d/%d/%d", x.st.TokenRequests-prev.TokenRequests, x.st.Gets-prev.Gets, x.st.Throttled-prev.Throttled))
			prev, next = x.st, next+time.Second
		}
	}
	return strings.Join(out, " ")
}

// samplesUntil returns the samples taken up to t.
func samplesUntil(s []sample, t time.Duration) []sample {
	for i := range s {
		if s[i].at > t {
			return s[:i]
		}
	}
	return s
}

// at returns the counters of the last sample taken at or before t.
func at(s []sample, t time.Duration) emulator.Stats {
	var st emulator.Stats
	for _, x := range s {
		if x.at > t {
			break
		}
		st = x.st
	}
	return st
}

// maxWindow returns the largest increase of count over any window of length w
// that starts at or after from.
func maxWindow(s []sample, w, from time.Duration, count func(emulator.Stats) int64) int64 {
	var best int64
	j := 0
	for i := range s {
		if s[i].at < from {
			continue
		}
		j = max(j, i)
		for j < len(s)-1 && s[j+1].at <= s[i].at+w {
			j++
		}
		best = max(best, count(s[j].st)-count(s[i].st))
	}
	return best
}
