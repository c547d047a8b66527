// Package agent is kvinject's fetcher agent: the container the webhook injects
// into opted-in pods. It gets an Azure AD token for the pod's identity
// (workload identity, a user-assigned or the system-assigned managed identity),
// reads the mapped Key Vault secrets, certificates and keys with the
// unmodified Azure SDK, renders them as the mapping's typed entries ask
// (render.go), writes them atomically into the pod's in-memory volume
// (package atomicdir) and, as a sidecar, keeps them current.
//
// Modes (the first argument):
//
//   - init: fetch every secret, write the set, exit 0; exit 1 with an
//     explanation in the termination log on failure.
//   - sidecar: the same, then keep the set current (see Rotation) and swap in
//     a new set when a version or value changed. It never exits because a
//     read failed; it exits 0 on SIGTERM or SIGINT.
//   - probe: exit 0 once a complete set is written (the startup probe).
//
// # Rotation
//
// Objects pinned to a version are never read again. Without --hub, the
// sidecar polls every other object every --rotation (with jitter).
//
// With --hub (the version hub, cmd/hub, which lists the vault's metadata for
// all pods; wire protocol in package hubapi), the objects at their latest
// version (secrets, plain and history entries alike, certificates and keys)
// are watched instead (hubloop.go):
// the agent holds one long poll at a time naming each with the version it
// holds, authenticated by the projected token of KVINJECT_HUB_TOKEN_FILE
// (read again for every request) over TLS that trusts only the roots of
// KVINJECT_HUB_CA. When the hub reports a change, the agent reads only the
// objects named, with its own identity, and swaps in the whole set; while
// Key Vault still returns the version held (replication lag) it reads again
// after a short backoff, a few times, before asking the hub again.
// Certificates and keys are watched too when the hub watches their kind
// (its --watch-kinds); the objects the hub answers it does not watch are
// polled every --rotation as without a hub. Every --safety-interval (default
// 24h, ±10%) the whole set is read again anyway.
//
// When the hub is unusable (unreachable, an untrusted certificate, a refusal,
// a timeout, an answer that is not the protocol's) the agent logs the switch
// of "rotation source" to "poll" with the reason, polls the watched secrets
// every HubFallbackStretch x --rotation (jittered), so that a hub outage does
// not bring back the load the hub removes, and tries the hub again with a
// jittered exponential backoff (1s to 5m, or the hub's Retry-After). Its
// first answer after that compares the versions held with the newest ones,
// so nothing that changed meanwhile is missed, and "rotation source" is
// logged as "hub" again. With a hub, every rotation log line carries
// "source" (hub or poll: the agent's rotation source) and "trigger" (hub,
// poll, rotation or safety: what made it read). An init agent never talks to
// the hub.
//
// With --on-change (the pod's kvinject.dev/on-change), the sidecar acts
// after each swap of a new set, never after the first (onchange.go): it calls
// the app on 127.0.0.1 (http) or reports the set to the hub for a rolling
// restart of the pod's owner (restart), in a goroutine of its own that the
// rotation never waits for, retrying with backoff; a newer set cancels
// pending retries and starts over for both.
//
// Transient failures (429, 5xx, connection errors, an unavailable token
// endpoint) before the first set are retried with exponential backoff for up
// to --init-timeout; permanent ones (401, 403, 404, a disabled secret, Azure AD
// refusing the identity) fail at once. Every failure is explained by Explain.
//
// An optional entry (agentconfig.Entry.Optional) whose object is absent (404,
// a disabled secret: see absent) writes no file instead of failing: the set
// is complete without it (possibly empty), the absence is logged and counted,
// and rotation reads the object again every --rotation (with a hub too,
// which can watch only versions held) until it appears; one that disappears
// later leaves the set. Other failures of optional entries fail as usual.
//
// An entry may read another vault than --vault (agentconfig.Entry.Vault,
// same cloud and identity): each vault gets its own Key Vault clients,
// sharing the credential and its token; the vaults are read at the same
// time and their files written as one set, and with a hub one watch loop
// runs per vault (a watch request names one vault).
//
// Secret values go only into the files: never into logs, errors or the
// termination log.
package agent

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Defaults of the agent's options.
const (
	// DefaultInitTimeout bounds the retries of transient failures before the first set.
	DefaultInitTimeout = 2 * time.Minute
	// DefaultConcurrency is the number of secrets read at the same time: 50
	// secrets go out in one wave (HTTP/2 servers, Key Vault's included, allow
	// 100 or more concurrent streams on one connection).
	DefaultConcurrency = 64
	// DefaultMinBackoff is the first delay after a failed attempt; it doubles
	// with each further failure.
	DefaultMinBackoff = time.Second
	// DefaultMaxBackoff bounds the delay between attempts before the first set.
	DefaultMaxBackoff = 30 * time.Second
	// DefaultRoundTimeout bounds one round of reads (all secrets).
	DefaultRoundTimeout = time.Minute
	// DefaultTerminationLog is where Kubernetes reads a container's termination message.
	DefaultTerminationLog = agentconfig.TerminationLog
)

// Options are the agent's settings that the webhook does not write.
type Options struct {
	// Getenv reads the environment; nil means os.Getenv. (The Azure SDK reads
	// a few variables itself, such as IDENTITY_ENDPOINT for managed identity.)
	Getenv func(string) string
	// Logger receives the agent's structured logs; nil means JSON to Stderr.
	Logger *slog.Logger
	// Stderr is where Main writes logs and usage errors; nil means os.Stderr.
	Stderr io.Writer
	// TerminationLog is the file that receives the explanation of a failure;
	// empty means none. Main sets it from --termination-log.
	TerminationLog string
	// InitTimeout bounds retries of transient failures before the first set
	// (default DefaultInitTimeout).
	InitTimeout time.Duration
	// Concurrency is the number of secrets read at the same time (default
	// DefaultConcurrency); 1 reads them one after another.
	Concurrency int
	// MinBackoff and MaxBackoff bound the delays between failed attempts
	// (defaults DefaultMinBackoff and DefaultMaxBackoff; in sidecar mode the
	// polling interval bounds them too).
	MinBackoff, MaxBackoff time.Duration
	// RoundTimeout bounds one round of reads (default DefaultRoundTimeout).
	RoundTimeout time.Duration
	// SDKRetry configures the Azure SDK's own retries of each request; the zero
	// value keeps the SDK's defaults (3 retries), except that Key Vault's 429s
	// are left to the agent's backoff (see keyVaultRetryStatusCodes) unless
	// StatusCodes is set.
	SDKRetry policy.RetryOptions
	// SafetyInterval is the period (jittered by ±10%) of the full re-read of
	// the set while the hub drives rotation (default DefaultSafetyInterval).
	// Main sets it from --safety-interval.
	SafetyInterval time.Duration
	// HubMinBackoff and HubMaxBackoff bound the delays between attempts to
	// reach an unusable hub (defaults DefaultHubMinBackoff and
	// DefaultHubMaxBackoff). HubMinBackoff also spaces watch requests that the
	// hub answers at once without a change.
	HubMinBackoff, HubMaxBackoff time.Duration
	// OnChangeMinBackoff and OnChangeMaxBackoff bound the delays between
	// attempts of the action on change (defaults DefaultOnChangeMinBackoff
	// and DefaultOnChangeMaxBackoff).
	OnChangeMinBackoff, OnChangeMaxBackoff time.Duration
	// Transport, when set, is the HTTP transport of the credential and the Key
	// Vault clients instead of one built from the environment; Run does not
	// close its idle connections. For benchmarks that run many agents in one
	// process (build it with NewClients(...).Transport, the agent's own);
	// Main never sets it. The hub connection is always the agent's own.
	Transport *http.Transport
}

func (o *Options) defaults() {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewJSONHandler(o.Stderr, nil))
	}
	if o.InitTimeout <= 0 {
		o.InitTimeout = DefaultInitTimeout
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.RoundTimeout <= 0 {
		o.RoundTimeout = DefaultRoundTimeout
	}
	if o.SafetyInterval <= 0 {
		o.SafetyInterval = DefaultSafetyInterval
	}
	if o.HubMinBackoff <= 0 {
		o.HubMinBackoff = DefaultHubMinBackoff
	}
	if o.HubMaxBackoff <= 0 {
		o.HubMaxBackoff = DefaultHubMaxBackoff
	}
	o.HubMaxBackoff = max(o.HubMaxBackoff, o.HubMinBackoff)
	if o.OnChangeMinBackoff <= 0 {
		o.OnChangeMinBackoff = DefaultOnChangeMinBackoff
	}
	if o.OnChangeMaxBackoff <= 0 {
		o.OnChangeMaxBackoff = DefaultOnChangeMaxBackoff
	}
}

// ErrStopped is wrapped by the error of a run stopped (SIGTERM, SIGINT)
// before the first set was written.
var ErrStopped = errors.New("stopped before the first set was written")

// Failure is the error Run returns: Error is the explanation written to the
// termination log, Unwrap the underlying error.
type Failure struct {
	Message string
	Err     error
}

// Error returns the explanation.
func (f *Failure) Error() string { return f.Message }

// Unwrap returns the underlying error.
func (f *Failure) Unwrap() error { return f.Err }

// localFlags are the agent's own flags, which the webhook does not write.
type localFlags struct {
	terminationLog string
	logLevel       slog.Level
	initTimeout    time.Duration
	// safetyInterval is zero unless --safety-interval is given.
	safetyInterval safetyFlag
}

// safetyFlag is --safety-interval: zero (not given) means DefaultSafetyInterval.
type safetyFlag time.Duration

// String implements flag.Value.
func (f *safetyFlag) String() string {
	if f == nil || *f == 0 {
		return DefaultSafetyInterval.String()
	}
	return time.Duration(*f).String()
}

// Set implements flag.Value.
func (f *safetyFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("%q must be positive, such as 24h", s)
	}
	*f = safetyFlag(d)
	return nil
}

// Register implements agentconfig.LocalFlags.
func (l *localFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&l.terminationLog, "termination-log", DefaultTerminationLog, "file that receives the explanation of a failure (empty: none)")
	fs.TextVar(&l.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	fs.DurationVar(&l.initTimeout, "init-timeout", DefaultInitTimeout, "how long to retry transient failures before the first set is written")
	fs.Var(&l.safetyInterval, "safety-interval", "with --hub: how often to re-read every object anyway, jittered by ±10% (default 24h)")
}

// Check implements agentconfig.LocalFlags.
func (l *localFlags) Check() error {
	if l.initTimeout <= 0 {
		return fmt.Errorf("--init-timeout must be positive")
	}
	return nil
}

// parseArgs parses a command line: the mode, the webhook's flags (see
// agentconfig.Config) and the agent's own flags, all on one flag set
// (agentconfig.ParseArgs).
func parseArgs(args []string) (agentconfig.Config, localFlags, error) {
	local := localFlags{terminationLog: DefaultTerminationLog, initTimeout: DefaultInitTimeout}
	cfg, err := agentconfig.ParseArgs(args, &local)
	if agentconfig.IsFlagError(err) {
		// Parsing stops at the bad flag: still honour a later --termination-log.
		if v, ok := lastFlagValue(args[1:], "termination-log"); ok {
			local.terminationLog = v
		}
	}
	return cfg, local, err
}

// Flags returns the flag set of the agent's command line: the flags the webhook
// writes (agentconfig.Config.RegisterFlags) and the agent's own, with their
// usage. A command that accepts the agent's command line (the doctor) learns
// the agent's flags from it.
func Flags() *flag.FlagSet {
	fs := flag.NewFlagSet("kvinject-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		cfg   agentconfig.Config
		local localFlags
	)
	cfg.RegisterFlags(fs)
	local.Register(fs)
	return fs
}

// lastFlagValue returns the value of the last -name=v, --name=v, -name v or
// --name v in args.
func lastFlagValue(args []string, name string) (string, bool) {
	var v string
	found := false
	for i := 0; i < len(args); i++ {
		a := strings.TrimPrefix(strings.TrimPrefix(args[i], "-"), "-")
		if a == args[i] {
			continue
		}
		if val, ok := strings.CutPrefix(a, name+"="); ok {
			v, found = val, true
		} else if a == name && i+1 < len(args) {
			v, found = args[i+1], true
			i++
		}
	}
	return v, found
}

// Main runs the agent with a command line (mode first, then flags) and
// returns the process's exit code: 0 on success, 1 on failure, 2 on bad
// arguments. Besides the webhook's flags (agentconfig.Config) it accepts
// --termination-log (default /dev/termination-log), --log-level (default
// info), --init-timeout (default 2m) and --safety-interval (default 24h).
// Options set by these flags are overridden.
func Main(ctx context.Context, args []string, opts Options) int {
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	cfg, local, err := parseArgs(args)
	if err != nil {
		msg := fmt.Sprintf("kvinject-agent: bad arguments %q: %v. Fix: the webhook writes these arguments; make sure the webhook and the agent image are the same kvinject version (agent %s)",
			strings.Join(args, " "), err, version.Version)
		fmt.Fprintln(opts.Stderr, msg)
		if cfg.Mode != agentconfig.ModeProbe {
			writeTerminationLog(local.terminationLog, msg)
		}
		return 2
	}
	opts.TerminationLog = local.terminationLog
	opts.InitTimeout = local.initTimeout
	if local.safetyInterval > 0 {
		opts.SafetyInterval = time.Duration(local.safetyInterval)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(opts.Stderr, &slog.HandlerOptions{Level: local.logLevel}))
	}
	if err := Run(ctx, cfg, opts); err != nil {
		if cfg.Mode == agentconfig.ModeProbe {
			fmt.Fprintln(opts.Stderr, "kvinject-agent probe:", err)
		}
		return 1
	}
	return 0
}

// Run runs the agent in cfg.Mode until it is done (init, probe) or ctx is
// cancelled (sidecar, which then returns nil). On failure it writes the
// explanation to opts.TerminationLog and returns a *Failure (probe mode
// returns atomicdir.Check's error and writes nothing).
func Run(ctx context.Context, cfg agentconfig.Config, opts Options) error {
	if cfg.Mode == agentconfig.ModeProbe {
		return atomicdir.Check(cfg.Dir)
	}
	opts.defaults()
	env := ReadEnv(opts.Getenv)
	a := &agent{cfg: cfg, opts: opts, env: env, log: opts.Logger.With("vault", cfg.VaultURL)}
	if p := env.Pod(); p != "" {
		a.log = a.log.With("pod", p)
	}
	err := a.run(ctx)
	if a.transport != nil && opts.Transport == nil {
		a.transport.CloseIdleConnections()
	}
	if err == nil {
		return nil
	}
	msg := Explain(err, FactsFrom(cfg, env))
	a.log.Error("failed", append(errAttrs(err), "message", msg)...)
	writeTerminationLog(opts.TerminationLog, msg)
	return &Failure{Message: msg, Err: err}
}

// writeTerminationLog writes msg (at most MaxMessage bytes) to path.
func writeTerminationLog(path, msg string) {
	if path == "" {
		return
	}
	_ = os.WriteFile(path, []byte(truncate(msg, MaxMessage)), 0o644)
}

// agent is one run of the agent.
type agent struct {
	cfg  agentconfig.Config
	opts Options
	env  Env
	log  *slog.Logger

	refs    []objectRef // distinct secrets, in mapping order
	entries map[objectRef]agentconfig.Entry
	fs      map[string]*fetcher // by objectRef.vault ("" is the pod's)
	writer  *atomicdir.Writer
	// templates are rendered into every set, after the entries.
	templates []*agentconfig.CompiledTemplate
	// transport is shared by the credential and the client, and survives
	// their renewal.
	transport *http.Transport
	// last is the set written last; an absent optional object has no value.
	last map[objectRef]objectValue
	// got holds the values read before the first set is complete.
	got map[objectRef]objectValue
	// action runs the action on change after each new set; nil without one.
	action *actionRunner

	// mu serializes refresh (reads and the swap of the set) between the
	// rotation loops (one per vault with a hub) and guards last meanwhile.
	mu sync.Mutex

	// optional holds the refs that every entry reading them marks optional:
	// while such an object is absent (see absent) its entries write no file.
	optional map[objectRef]bool
}

func (a *agent) run(ctx context.Context) error {
	start := time.Now()
	a.entries = map[objectRef]agentconfig.Entry{}
	a.optional = map[objectRef]bool{}
	for _, e := range a.cfg.Entries {
		r := refOf(e)
		if _, dup := a.entries[r]; !dup {
			a.entries[r] = e
			a.refs = append(a.refs, r)
			a.optional[r] = e.Optional
		}
		// An object that one entry requires is required.
		a.optional[r] = a.optional[r] && e.Optional
	}
	a.writer = atomicdir.New(a.cfg.Dir, os.FileMode(a.cfg.FileMode))
	ts, probs := agentconfig.CheckTemplates(a.cfg.Templates, a.cfg.Entries)
	if len(probs) > 0 {
		// ParseArgs checked them; a caller of Run with its own Config may not have.
		p := probs[0]
		return &ConfigError{Msg: fmt.Sprintf("template %q: %s. Fix: correct the pod's %s%s annotation, then recreate the pod", p.File, p.Msg, "kvinject.dev/template.", p.File)}
	}
	a.templates = ts
	// Optional entries whose objects are all absent make a set without files.
	a.writer.AllowEmpty = true
	a.log.Info("starting", "version", version.Version, "mode", a.cfg.Mode, "identity", string(a.cfg.Identity),
		"clientID", a.env.ClientID, "dir", a.cfg.Dir, "files", len(a.cfg.Entries), "templates", len(a.templates), "secrets", len(a.refs),
		"rotation", a.cfg.Rotation.String(), "vaults", len(a.cfg.Vaults()))
	if err := a.connect(); err != nil {
		return err
	}
	if err := a.first(ctx); err != nil {
		if ctx.Err() != nil && a.cfg.Mode == agentconfig.ModeSidecar {
			a.log.Info("stopped before the first set was written")
			return nil
		}
		return err
	}
	absentNames := a.absentNames(a.last)
	a.log.Info("wrote secrets", "files", a.fileCount(a.last), "versions", a.versions(a.last),
		"absent", len(absentNames), "elapsed", time.Since(start).String())
	if a.cfg.Mode == agentconfig.ModeInit {
		from := "vault " + a.cfg.VaultURL
		if vs := a.cfg.Vaults(); len(vs) > 1 {
			from = "vaults " + strings.Join(vs, ", ")
		}
		msg := fmt.Sprintf("kvinject-agent: wrote %d file(s) from %s", a.fileCount(a.last), from)
		if len(absentNames) > 0 {
			msg += fmt.Sprintf("; %d optional object(s) absent, their entries wrote no file: %s", len(absentNames), strings.Join(absentNames, ", "))
		}
		writeTerminationLog(a.opts.TerminationLog, msg)
		return nil
	}
	a.rotate(ctx)
	a.log.Info("stopped")
	return nil
}

// fileCount counts the files of a set: the templates, and the entries that
// write files (not ;nofile) whose objects are present (an absent optional
// entry writes none).
func (a *agent) fileCount(values map[objectRef]objectValue) int {
	n := len(a.templates)
	for _, e := range a.cfg.Entries {
		if _, present := values[refOf(e)]; !e.NoFile && present {
			n++
		}
	}
	return n
}

// connect builds the transport (once), the credential and the Key Vault
// clients (newFetcher).
func (a *agent) connect() error {
	if a.transport == nil && a.opts.Transport != nil {
		a.transport = a.opts.Transport
	}
	if a.transport == nil {
		t, err := newTransport(a.env, a.log)
		if err != nil {
			return err
		}
		a.transport = t
	}
	co, cred, err := newIdentity(a.cfg.Identity, a.env, a.transport, a.opts.SDKRetry)
	if err != nil {
		return err
	}
	// One fetcher per vault (the pod's is ""), sharing the credential.
	fs := map[string]*fetcher{}
	vaults := []string{""}
	for _, r := range a.refs {
		if !slices.Contains(vaults, r.vault) {
			vaults = append(vaults, r.vault)
		}
	}
	for _, v := range vaults {
		f, err := vaultFetcher(cmp.Or(v, a.cfg.VaultURL), co, cred, a.opts.Concurrency)
		if err != nil {
			return err
		}
		if old := a.fs[v]; old != nil {
			// Versions read by history entries stay valid with a new credential.
			f.history = old.history
		}
		fs[v] = f
	}
	a.fs = fs
	return nil
}

// round reads refs once, bounded by RoundTimeout.
func (a *agent) round(ctx context.Context, refs []objectRef) fetchResult {
	ctx, cancel := context.WithTimeout(ctx, a.opts.RoundTimeout)
	defer cancel()
	byVault := map[string][]objectRef{}
	for _, r := range refs {
		byVault[r.vault] = append(byVault[r.vault], r)
	}
	if len(byVault) <= 1 {
		for v, rs := range byVault {
			return a.fs[v].fetch(ctx, rs, a.entries)
		}
		return a.fs[""].fetch(ctx, nil, a.entries)
	}
	// Each vault's fetcher reads its objects, all vaults at the same time.
	res := fetchResult{values: make(map[objectRef]objectValue, len(refs)), errs: map[objectRef]error{}}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for v, rs := range byVault {
		wg.Go(func() {
			one := a.fs[v].fetch(ctx, rs, a.entries)
			mu.Lock()
			defer mu.Unlock()
			maps.Copy(res.values, one.values)
			maps.Copy(res.errs, one.errs)
		})
	}
	wg.Wait()
	return res
}

// firstErr returns the error of the first failed ref in mapping order.
func (a *agent) firstErr(errs map[objectRef]error) error {
	for _, r := range a.refs {
		if err, ok := errs[r]; ok {
			return err
		}
	}
	return nil
}

// first fetches and writes the first complete set, retrying transient
// failures for up to InitTimeout.
func (a *agent) first(ctx context.Context) error {
	start := time.Now()
	deadline := start.Add(a.opts.InitTimeout)
	b := backoff{min: a.opts.MinBackoff, max: a.opts.MaxBackoff}
	for attempt := 1; ; attempt++ {
		err := a.firstAttempt(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ErrStopped, errText(err))
		}
		if !transient(err) {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return &GiveUpError{After: time.Since(start), Attempts: attempt, Err: err}
		}
		d := min(b.next(err), left)
		a.log.Warn("attempt failed, retrying", append(errAttrs(err), "attempt", attempt, "retryIn", d.String())...)
		if !sleep(ctx, d) {
			return fmt.Errorf("%w (%v)", ErrStopped, errText(err))
		}
	}
}

// firstAttempt reads the secrets that earlier attempts did not get and, once
// every one has a value, writes the set. Values read by a failed attempt are
// kept (in memory only), so that a retry after throttling reads only what is
// missing.
func (a *agent) firstAttempt(ctx context.Context) error {
	if a.got == nil {
		a.got = make(map[objectRef]objectValue, len(a.refs))
	}
	var missing []objectRef
	for _, r := range a.refs {
		if _, ok := a.got[r]; !ok {
			missing = append(missing, r)
		}
	}
	res := a.round(ctx, missing)
	for r, v := range res.values {
		a.got[r] = v
	}
	absentNow := 0
	for _, r := range missing {
		if err, ok := res.errs[r]; ok && a.optional[r] && absent(err) {
			delete(res.errs, r)
			absentNow++
			e := a.entries[r]
			a.log.Warn("optional object absent; its entries write no file until it appears", append(errAttrs(err), "object", objectWord(e.Kind()), "file", e.File)...)
		}
	}
	if err := a.firstErr(res.errs); err != nil {
		if n := len(res.errs); n > 1 {
			a.log.Debug("several secrets failed", "failed", n)
		}
		a.resetOnUnauthorized(err)
		return err
	}
	if len(a.got)+absentNow < len(a.refs) {
		return fmt.Errorf("internal error: %d of %d secrets read without an error", len(a.got)+absentNow, len(a.refs))
	}
	if err := a.write(a.got); err != nil {
		return err
	}
	a.last, a.got = a.got, nil
	return nil
}

// write writes a complete set: the files of every entry, rendered from the
// values of their objects, and the templates, rendered from those files,
// swapped in together. An entry whose object cannot become its files (a
// *ContentError) or a template that cannot be rendered fails the whole set.
func (a *agent) write(values map[objectRef]objectValue) error {
	files := make([]atomicdir.File, 0, len(a.cfg.Entries)+len(a.templates))
	var rendered map[string][]byte // every entry's files, ;nofile ones too, for templates
	if len(a.templates) > 0 {
		rendered = map[string][]byte{}
	}
	for _, e := range a.cfg.Entries {
		v, ok := values[refOf(e)]
		if !ok && a.optional[refOf(e)] {
			continue // absent: the entry writes no file
		}
		if !ok {
			return fmt.Errorf("internal error: no value for %s", e.File)
		}
		fs, err := render(e, v, a.cfg.VaultOf(e))
		if err != nil {
			return err
		}
		for _, f := range fs {
			if rendered != nil {
				rendered[f.Path] = f.Data
			}
		}
		if !e.NoFile {
			files = append(files, fs...)
		}
	}
	tfiles, err := renderTemplates(a.templates, rendered)
	if err != nil {
		return err
	}
	files = append(files, tfiles...)
	if err := a.writer.Write(files); err != nil {
		if errors.Is(err, atomicdir.ErrVolumeFull) {
			return &ConfigError{Msg: fmt.Sprintf("the secrets volume is full: %v. Fix: raise the webhook's volume size limit, or map fewer or smaller secrets", err)}
		}
		return &ConfigError{Msg: fmt.Sprintf("cannot write the secrets: %v", err)}
	}
	return nil
}

// rotate keeps the set current until ctx is done: with a hub, rotateHub;
// without, it polls every object that is not pinned to a version.
func (a *agent) rotate(ctx context.Context) {
	// Pinned versions never change; only the latest ones are polled.
	var polled, watched, others []objectRef
	for _, r := range a.refs {
		if r.version != "" {
			continue
		}
		polled = append(polled, r)
		if watchable(r) {
			watched = append(watched, r)
		} else {
			others = append(others, r)
		}
	}
	if len(polled) == 0 {
		a.log.Info("every object is pinned to a version; nothing to poll")
		<-ctx.Done()
		return
	}
	if a.cfg.Hub == "" {
		a.action = newActionRunner(a, nil)
		a.action.start(ctx)
		defer a.action.wait()
		a.pollLoop(ctx, polled, a.cfg.Rotation, a.log)
		return
	}
	a.rotateHub(ctx, watched, others)
}

// watchable reports whether the hub may watch r: a secret (plain or
// history), a certificate or a key at its latest version. The hub answers
// which kinds it does watch (hubloop.go).
func watchable(r objectRef) bool {
	switch r.kind {
	case "", agentconfig.ObjectSecret, agentconfig.ObjectCert, agentconfig.ObjectKey:
		return r.version == ""
	}
	return false
}

// pollLoop polls refs every interval (with jitter) until ctx is done,
// swapping in changed sets, and logs to log.
func (a *agent) pollLoop(ctx context.Context, polled []objectRef, interval time.Duration, log *slog.Logger) {
	b := backoff{min: min(a.opts.MinBackoff, interval), max: interval}
	delay := jittered(interval)
	for {
		if !sleep(ctx, delay) {
			return
		}
		_, err := a.refresh(ctx, polled, log)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			delay = b.next(err)
			log.Warn("poll failed; keeping the last good set", append(errAttrs(err), "retryIn", delay.String())...)
			continue
		}
		b.reset()
		delay = jittered(interval)
	}
}

// refreshed is what a refresh found besides its error.
type refreshed struct {
	// moved counts the refs read at a version other than the one held.
	moved int
	// held are the refs read at the version already held.
	held []objectRef
}

// refresh reads refs once and writes a new set if any changed, logging to
// log. A required ref that is gone (deleted, disabled) keeps its last value;
// an optional one that is absent (see absent) loses it, so that its files
// leave the set, and one that appears gets its files; any other failure
// writes nothing and is returned.
func (a *agent) refresh(ctx context.Context, refs []objectRef, log *slog.Logger) (refreshed, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out refreshed
	res := a.round(ctx, refs)
	next := make(map[objectRef]objectValue, len(a.last))
	for r, v := range a.last {
		next[r] = v
	}
	var hard error
	for _, r := range refs {
		if v, ok := res.values[r]; ok {
			next[r] = v
			continue
		}
		err, failed := res.errs[r]
		if !failed {
			continue // not tried: the round stopped at an earlier failure
		}
		if a.optional[r] && absent(err) {
			e := a.entries[r]
			attrs := append(errAttrs(err), "object", objectWord(e.Kind()), "file", e.File)
			if _, had := a.last[r]; had {
				delete(next, r)
				log.Warn("optional object gone; removing its files from the set", append(attrs, "removedVersion", a.last[r].versionDesc())...)
			} else {
				log.Debug("optional object still absent", attrs...)
			}
			continue
		}
		if gone(err) {
			e := a.entries[r]
			log.Warn("secret unavailable; keeping its last value", append(errAttrs(err), "secret", e.Name, "file", e.File, "keptVersion", a.last[r].versionDesc())...)
			continue
		}
		if hard == nil {
			hard = err
		}
	}
	if hard != nil {
		a.resetOnUnauthorized(hard)
		return out, hard
	}
	var changed []any
	for _, r := range refs {
		old, had := a.last[r]
		cur, has := next[r]
		if _, read := res.values[r]; read {
			if had && strings.EqualFold(old.version, cur.version) {
				out.held = append(out.held, r)
			} else {
				out.moved++
			}
		}
		if had != has || !old.same(cur) {
			e := a.entries[r]
			changed = append(changed, slog.Group(e.Name, "from", presentDesc(old, had), "to", presentDesc(cur, has)))
		}
	}
	if len(changed) == 0 {
		log.Debug("no change")
		return out, nil
	}
	if err := a.write(next); err != nil {
		return out, err
	}
	old := a.last
	a.last = next
	log.Info("secrets changed; wrote a new set", slog.Group("changed", changed...), "absent", len(a.absentNames(next)))
	a.action.notify(a.changedObjects(refs, old, next))
	return out, nil
}

// held returns the value of r in the set written last; false for an absent
// optional object.
func (a *agent) held(r objectRef) (objectValue, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.last[r]
	return v, ok
}

// heldVersion is the version of r in the set written last ("" when absent).
func (a *agent) heldVersion(r objectRef) string {
	v, _ := a.held(r)
	return v.version
}

// presentDesc is a value's version for logs, or "absent" for an optional
// object without one.
func presentDesc(v objectValue, present bool) string {
	if !present {
		return "absent"
	}
	return v.versionDesc()
}

// absentNames names the optional objects without a value in values, in
// mapping order, as kind/name (for logs and the termination log).
func (a *agent) absentNames(values map[objectRef]objectValue) []string {
	var names []string
	for _, r := range a.refs {
		if _, ok := values[r]; !ok && a.optional[r] {
			e := a.entries[r]
			// A plain and a history entry of one secret are one object.
			if n := objectWord(e.Kind()) + "/" + e.Name; !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	return names
}

// absent reports whether err says that an object does not exist now: it
// was never created or was deleted (404), the secret is disabled (403 with
// the inner code SecretDisabled), or a history entry's secret has no enabled
// version. Only optional entries treat it as absence; other 401s and 403s
// (identity, permissions, firewall) and values that do not fit the entry
// are mistakes that fail as for any entry.
func absent(err error) bool {
	var ce *ContentError
	return gone(err) || (errors.As(err, &ce) && ce.NoVersion)
}

// gone reports whether err says that a secret, certificate or key was
// deleted, or a secret disabled.
func gone(err error) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return false
	}
	if re.StatusCode == 404 && (re.ErrorCode == "SecretNotFound" || re.ErrorCode == "CertificateNotFound" || re.ErrorCode == "KeyNotFound") {
		return true
	}
	if re.StatusCode == 403 {
		kv := parseKVError(re.RawResponse)
		for _, c := range kv.Inner {
			if c == "SecretDisabled" {
				return true
			}
		}
	}
	return false
}

// resetOnUnauthorized replaces the credential and client after Key Vault
// rejected a token, so that the next attempt gets a fresh token (and re-reads
// the projected token file) instead of resending the cached one.
func (a *agent) resetOnUnauthorized(err error) {
	var (
		re  *azcore.ResponseError
		afe *azidentity.AuthenticationFailedError
	)
	switch {
	case errors.As(err, &re) && re.StatusCode == http.StatusUnauthorized:
		if cerr := a.connect(); cerr != nil {
			a.log.Warn("cannot renew the credential", "error", errText(cerr))
			return
		}
		a.log.Info("Key Vault rejected the token; renewed the credential")
		if a.cfg.Identity != agentconfig.IdentityWorkload {
			// MSAL caches managed-identity tokens per process, so a new credential
			// would get the rejected token back; a token request with claims
			// skips that cache and stores the fresh token for the next requests.
			ctx, cancel := context.WithTimeout(context.Background(), a.opts.RoundTimeout)
			defer cancel()
			claims := fmt.Sprintf(`{"access_token":{"nbf":{"essential":true,"value":"%d"}}}`, time.Now().Unix())
			if _, terr := a.fs[""].cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{a.fs[""].scope}, Claims: claims}); terr != nil {
				a.log.Warn("cannot get a new managed-identity token", errAttrs(terr)...)
			}
		}
	case a.cfg.Identity == agentconfig.IdentityWorkload && errors.As(err, &afe) && afe.RawResponse != nil &&
		afe.RawResponse.StatusCode >= 400 && afe.RawResponse.StatusCode < 500 && afe.RawResponse.StatusCode != http.StatusTooManyRequests:
		// Azure AD refused the ServiceAccount token. azidentity keeps the file's
		// contents for 10 minutes; a new credential reads the (perhaps fixed or
		// rotated) file again on the next attempt.
		if cerr := a.connect(); cerr != nil {
			a.log.Warn("cannot renew the credential", "error", errText(cerr))
			return
		}
		a.log.Info("Azure AD refused the ServiceAccount token; will read the token file again")
	}
}

// versions returns file -> object version (history: the versions, newest
// first), for logs.
func (a *agent) versions(values map[objectRef]objectValue) map[string]string {
	m := make(map[string]string, len(a.cfg.Entries))
	for _, e := range a.cfg.Entries {
		v, ok := values[refOf(e)]
		m[e.File] = presentDesc(v, ok)
	}
	return m
}

// errAttrs describes err for logs: codes and the first line of the message,
// never response bodies beyond that (and never secret values, which errors do
// not contain).
func errAttrs(err error) []any {
	attrs := []any{}
	var se *SecretError
	if errors.As(err, &se) {
		attrs = append(attrs, "secret", se.Name)
		if se.Version != "" {
			attrs = append(attrs, "secretVersion", se.Version)
		}
		if se.OtherVault {
			attrs = append(attrs, "secretVault", se.Vault)
		}
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		kv := parseKVError(re.RawResponse)
		attrs = append(attrs, "status", re.StatusCode, "code", orPlaceholder(kv.Code, re.ErrorCode))
		if len(kv.Inner) > 0 {
			attrs = append(attrs, "innerCode", strings.Join(kv.Inner, "/"))
		}
		if kv.Message != "" {
			attrs = append(attrs, "error", firstLine(kv.Message, 300))
		}
		if ra := retryAfter(err); ra > 0 {
			attrs = append(attrs, "retryAfter", ra.String())
		}
		return attrs
	}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) {
		if resp := afe.RawResponse; resp != nil {
			aad := parseAADError(resp)
			attrs = append(attrs, "status", resp.StatusCode)
			if resp.Request != nil {
				attrs = append(attrs, "host", resp.Request.URL.Host)
			}
			if aad.Error != "" {
				attrs = append(attrs, "code", aad.Error)
			}
			if len(aad.Codes) > 0 {
				attrs = append(attrs, "aadsts", fmt.Sprintf("AADSTS%d", aad.Codes[0]))
			}
			if d := orPlaceholder(aad.Description, aad.Message); d != "" {
				attrs = append(attrs, "error", firstLine(d, 300))
			}
			return attrs
		}
		// Not err: its text names the vault first, and this failed on the way to Azure AD.
		if h := hostOf(afe); h != "" {
			attrs = append(attrs, "host", h)
		}
	}
	return append(attrs, "error", strings.Join(strings.Fields(errText(err)), " "))
}
