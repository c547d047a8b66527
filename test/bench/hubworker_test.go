//go:build integration

package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// BenchmarkHub's agents run in worker processes: this test binary started
// again (TestHubWorker) with the environment variable hubWorkerEnv naming a
// spec file. Several processes keep each one's file descriptors under the
// container's hard RLIMIT_NOFILE (20,000), which one process running every
// agent, with the emulator, could not. Each worker runs its agents with
// agent.Run and reports what they log, as events, on file descriptor 3; the
// parent ends a worker by closing its standard input.
const hubWorkerEnv = "KVINJECT_BENCH_HUB_WORKER"

// workerSpec is what one worker runs.
type workerSpec struct {
	Agents []workerAgent `json:"agents"`
	// NoHub removes --hub (the polling phase); Rotation, when not 0, replaces
	// the injected --rotation.
	NoHub    bool          `json:"noHub,omitempty"`
	Rotation time.Duration `json:"rotation,omitempty"`
	// Share gives the worker's agents one Key Vault and Azure AD transport
	// (see shareTransport); each agent keeps its own hub client.
	Share bool `json:"share,omitempty"`
}

// workerAgent is one simulated pod's agent.
type workerAgent struct {
	Index int `json:"index"`
	// Args are the injected container's arguments, Env its environment (with
	// the token files remapped).
	Args []string          `json:"args"`
	Env  map[string]string `json:"env"`
	Dir  string            `json:"dir"`
	// At is when the agent starts.
	At time.Time `json:"at"`
}

// Worker events, one line each: "<kind> <agent index> <unix ns> <detail>".
const (
	evReady    = 'R' // the first complete set was written
	evChanged  = 'C' // a new set was written; detail: the trigger (hub, poll, rotation, safety)
	evToPoll   = 'P' // "rotation source" switched to poll; detail: the reason
	evToHub    = 'H' // "rotation source" is the hub (at start, and back after P)
	evWarning  = 'W' // another warning or error; detail: the message
	evGaveUp   = 'E' // agent.Run returned an error; detail: the error
	evFinished = 'X' // agent.Run returned
)

// TestHubWorker is a BenchmarkHub worker process; skipped otherwise.
func TestHubWorker(t *testing.T) {
	path := os.Getenv(hubWorkerEnv)
	if path == "" {
		t.Skip("runs only as a BenchmarkHub worker process (" + hubWorkerEnv + ")")
	}
	if err := runHubWorker(path); err != nil {
		t.Fatal(err)
	}
}

func runHubWorker(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec workerSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	events := &eventWriter{w: bufio.NewWriter(os.NewFile(3, "events"))}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer cancel()
	go func() { // the parent closes standard input to stop the worker
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	var shared *http.Transport
	if spec.Share && len(spec.Agents) > 0 {
		a := spec.Agents[0]
		cfg, err := agentconfig.ParseArgs(a.Args, nil)
		if err != nil {
			return err
		}
		env := agent.ReadEnv(func(k string) string { return a.Env[k] })
		// The agent's own transport builder (the test CA and dial override
		// of the agents' environment), built once for the worker.
		c, err := agent.NewClients(cfg.VaultURL, cfg.Identity, env, policy.RetryOptions{}, slog.New(slog.DiscardHandler))
		if err != nil {
			return err
		}
		shared = c.Transport
	}
	var wg sync.WaitGroup
	for _, wa := range spec.Agents {
		cfg, err := agentconfig.ParseArgs(wa.Args, nil)
		if err != nil {
			return fmt.Errorf("agent %d: the injected arguments: %w", wa.Index, err)
		}
		cfg.Dir = wa.Dir
		if spec.NoHub {
			cfg.Hub = ""
		}
		if spec.Rotation > 0 {
			cfg.Rotation = spec.Rotation
		}
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return err
		}
		env := wa.Env
		opts := agent.Options{
			Getenv:      func(k string) string { return env[k] },
			Logger:      slog.New(eventHandler{ev: events, i: wa.Index}),
			InitTimeout: 10 * time.Minute,
		}
		if shared != nil && !shareTransport(&opts, shared) {
			return fmt.Errorf("sharing a transport needs agent.Options.Transport, which this tree lacks")
		}
		wg.Go(func() {
			select {
			case <-time.After(time.Until(wa.At)):
			case <-ctx.Done():
				events.send(evFinished, wa.Index, "")
				return
			}
			if err := agent.Run(ctx, cfg, opts); err != nil {
				events.send(evGaveUp, wa.Index, strings.ReplaceAll(err.Error(), "\n", " "))
			}
			events.send(evFinished, wa.Index, "")
		})
	}
	wg.Wait()
	return events.flush()
}

// eventWriter writes events to the parent.
type eventWriter struct {
	mu  sync.Mutex
	w   *bufio.Writer
	err error
}

func (e *eventWriter) send(kind byte, i int, detail string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return
	}
	if _, e.err = fmt.Fprintf(e.w, "%c %d %d %s\n", kind, i, time.Now().UnixNano(), detail); e.err == nil {
		e.err = e.w.Flush()
	}
}

func (e *eventWriter) flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err != nil {
		return e.err
	}
	return e.w.Flush()
}

// eventHandler turns one agent's log records into events: the records the
// benchmark measures by, with the attributes the agent adds with With
// ("source", "trigger").
type eventHandler struct {
	ev    *eventWriter
	i     int
	attrs []slog.Attr
}

func (h eventHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h eventHandler) attr(r slog.Record, key string) string {
	v := ""
	for _, a := range h.attrs {
		if a.Key == key {
			v = a.Value.String()
		}
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
		}
		return true
	})
	return v
}

func (h eventHandler) Handle(_ context.Context, r slog.Record) error {
	switch {
	case r.Message == "wrote secrets":
		h.ev.send(evReady, h.i, "")
	case r.Message == "secrets changed; wrote a new set":
		h.ev.send(evChanged, h.i, h.attr(r, "trigger"))
	case r.Message == "rotation source" && h.attr(r, "source") == "poll":
		h.ev.send(evToPoll, h.i, h.attr(r, "reason"))
	case r.Message == "rotation source":
		h.ev.send(evToHub, h.i, "")
	case r.Level >= slog.LevelWarn && !strings.HasPrefix(r.Message, "TEST OPTION"):
		h.ev.send(evWarning, h.i, r.Message)
	}
	return nil
}

func (h eventHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

func (h eventHandler) WithGroup(string) slog.Handler { return h }

// hubAgent is what the parent learns about one agent from its events.
type hubAgent struct {
	ready     atomic.Int64 // UnixNano of the first complete set
	changed   atomic.Int64 // UnixNano of the last new set
	changes   atomic.Int64 // new sets written
	trigger   atomic.Value // string: the trigger of the last new set
	fallbacks atomic.Int64 // switches of the rotation source to poll
	polledAt  atomic.Int64 // UnixNano of the last switch to poll
	hubAt     atomic.Int64 // UnixNano of the last "rotation source" hub
	warnings  atomic.Int64 // other warnings and errors
	finished  atomic.Bool
}

// onHub reports whether the agent's rotation source is the hub.
func (a *hubAgent) onHub() bool { return a.hubAt.Load() > a.polledAt.Load() }

// hubFleet is the agents of one phase, in their worker processes.
type hubFleet struct {
	agents  []*hubAgent
	workers []*hubWorker
	readers sync.WaitGroup

	mu      sync.Mutex
	reasons map[string]int // switches to poll by reason
	errs    []string       // agents that gave up
	warns   map[string]int // other warnings by message
}

// hubWorker is one worker process.
type hubWorker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	log   string
}

// fleetOptions change the agents of a phase.
type fleetOptions struct {
	noHub    bool
	rotation time.Duration
}

// startHubFleet starts one agent per sim, evenly within spread, each in its
// own directory root/phase/i, in workers processes (agent i in worker
// i % workers).
func startHubFleet(b *testing.B, sims []simAgent, root, phase string, spread time.Duration, workers int, share bool, fo fleetOptions) *hubFleet {
	b.Helper()
	f := &hubFleet{agents: make([]*hubAgent, len(sims)), reasons: map[string]int{}, warns: map[string]int{}}
	for i := range f.agents {
		f.agents[i] = &hubAgent{}
	}
	workers = max(1, min(workers, len(sims)))
	specs := make([]workerSpec, workers)
	for k := range specs {
		specs[k] = workerSpec{NoHub: fo.noHub, Rotation: fo.rotation, Share: share}
	}
	// The specs are written before the first start time, so that the
	// workers' start-up does not skew it.
	start := time.Now().Add(2 * time.Second)
	for i, s := range sims {
		specs[i%workers].Agents = append(specs[i%workers].Agents, workerAgent{
			Index: i, Args: s.args, Env: s.env, Dir: filepath.Join(root, phase, strconv.Itoa(i)),
			At: start.Add(time.Duration(i) * spread / time.Duration(len(sims))),
		})
	}
	for k, spec := range specs {
		data, err := json.Marshal(spec)
		if err != nil {
			b.Fatal(err)
		}
		specFile := filepath.Join(root, fmt.Sprintf("%s-worker-%d.json", phase, k))
		if err := os.WriteFile(specFile, data, 0o600); err != nil {
			b.Fatal(err)
		}
		w, err := f.startWorker(specFile, filepath.Join(root, fmt.Sprintf("%s-worker-%d.log", phase, k)))
		if err != nil {
			f.stop()
			b.Fatal(err)
		}
		f.workers = append(f.workers, w)
	}
	return f
}

// startWorker starts this test binary as a worker of specFile.
func (f *hubFleet) startWorker(specFile, logFile string) (*hubWorker, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	out, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHubWorker$", "-test.v", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), hubWorkerEnv+"="+specFile)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{w}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting a worker: %w", err)
	}
	w.Close()
	hw := &hubWorker{cmd: cmd, stdin: stdin, done: make(chan struct{}), log: logFile}
	go func() { _ = cmd.Wait(); out.Close(); close(hw.done) }()
	f.readers.Go(func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			f.event(sc.Text())
		}
	})
	return hw, nil
}

// event records one worker event.
func (f *hubFleet) event(line string) {
	parts := strings.SplitN(line, " ", 4)
	if len(parts) < 3 || len(parts[0]) != 1 {
		return
	}
	i, err1 := strconv.Atoi(parts[1])
	t, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || i < 0 || i >= len(f.agents) {
		return
	}
	detail := ""
	if len(parts) == 4 {
		detail = parts[3]
	}
	a := f.agents[i]
	switch parts[0][0] {
	case evReady:
		a.ready.CompareAndSwap(0, t)
	case evChanged:
		a.trigger.Store(detail)
		a.changed.Store(t)
		a.changes.Add(1)
	case evToPoll:
		a.polledAt.Store(t)
		a.fallbacks.Add(1)
		a.warnings.Add(1)
		f.mu.Lock()
		f.reasons[detail]++
		f.mu.Unlock()
	case evToHub:
		a.hubAt.Store(t)
	case evWarning:
		a.warnings.Add(1)
		f.mu.Lock()
		f.warns[detail]++
		f.mu.Unlock()
	case evGaveUp:
		f.mu.Lock()
		f.errs = append(f.errs, fmt.Sprintf("agent %d: %s", i, detail))
		f.mu.Unlock()
	case evFinished:
		a.finished.Store(true)
	}
}

// waitReady waits until every agent wrote its first set and returns how long
// that took from now.
func (f *hubFleet) waitReady(b *testing.B, timeout time.Duration) time.Duration {
	b.Helper()
	start := time.Now()
	for {
		ready := f.count(func(a *hubAgent) bool { return a.ready.Load() != 0 })
		if ready == len(f.agents) {
			return time.Since(start)
		}
		if time.Since(start) > timeout || f.exited() {
			b.Fatalf("%d of %d agents wrote their set within %s; agents that gave up: %v; worker log tail:\n%s",
				ready, len(f.agents), time.Since(start).Round(time.Second), f.gaveUp(), f.logTail(3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor waits until cond holds for every agent, at most timeout, and
// returns the number of agents for which it holds.
func (f *hubFleet) waitFor(timeout time.Duration, cond func(*hubAgent) bool) int {
	deadline := time.Now().Add(timeout)
	for {
		n := f.count(cond)
		if n == len(f.agents) || time.Now().After(deadline) || f.exited() {
			return n
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exited reports whether a worker process has ended.
func (f *hubFleet) exited() bool {
	for _, w := range f.workers {
		select {
		case <-w.done:
			return true
		default:
		}
	}
	return false
}

// stop ends the workers (standard input closed, SIGKILL after a minute) and
// waits for their last events.
func (f *hubFleet) stop() {
	for _, w := range f.workers {
		_ = w.stdin.Close()
	}
	for _, w := range f.workers {
		select {
		case <-w.done:
		case <-time.After(time.Minute):
			_ = w.cmd.Process.Kill()
			<-w.done
		}
	}
	f.readers.Wait()
	f.workers = nil
}

// pids are the workers' process IDs.
func (f *hubFleet) pids() []int {
	var p []int
	for _, w := range f.workers {
		p = append(p, w.cmd.Process.Pid)
	}
	return p
}

// gaveUp returns what the agents that gave up said.
func (f *hubFleet) gaveUp() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.errs...)
}

// pollReasons returns the switches to poll so far, by reason.
func (f *hubFleet) pollReasons() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.reasons)
}

// otherWarnings returns the other warnings so far, by message.
func (f *hubFleet) otherWarnings() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.warns)
}

func (f *hubFleet) count(cond func(*hubAgent) bool) int {
	n := 0
	for _, a := range f.agents {
		if cond(a) {
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

// logTail returns the end of the first worker's output.
func (f *hubFleet) logTail(n int) string {
	if len(f.workers) == 0 {
		return ""
	}
	b, _ := os.ReadFile(f.workers[0].log)
	return tail(string(b), n)
}
