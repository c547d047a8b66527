package hub

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/kvinject/kvinject/internal/hub/events"
	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Defaults of the Flags that have no default elsewhere.
const (
	DefaultBindAddress        = ":8443"
	DefaultCertDir            = "/etc/kvinject-hub/tls"
	DefaultMetricsBindAddress = ":8080"
	DefaultProbeBindAddress   = ":8081"
	DefaultSweepInterval      = 30 * time.Second
	// DefaultReadBudget is the Key Vault reads per second per vault that the
	// hub lets a change cost, across all replicas: a quarter of Key Vault's
	// 4,000 transactions per 10 s.
	DefaultReadBudget  = 100
	DefaultMaxVersions = 500
	// DefaultWatchKinds watches secrets only: watching certificates and keys
	// needs more than list-only access in RBAC vaults (see docs/hub.md).
	DefaultWatchKinds = "secret"
)

// keyVaultLimit is Key Vault's service limit in transactions per second per
// vault (4,000 per 10 s).
const keyVaultLimit = 400

// Flags are kvinject-hub's command line (without --kubeconfig, which
// controller-runtime's config package registers).
type Flags struct {
	BindAddress            string
	CertDir                string
	MetricsBindAddress     string
	HealthProbeBindAddress string
	PprofBindAddress       string
	Identity               string
	SweepInterval          time.Duration
	ReadBudget             float64
	Replicas               int
	MaxWait                time.Duration
	MaxConnectionAge       time.Duration
	MaxVersions            int
	PodCacheTTL            time.Duration
	WatchKinds             string
	LogLevel               string
	Version                bool

	// EventsQueues are the Storage queues Event Grid delivers the vaults'
	// events to (--events-queue, repeatable), normalized by Validate; none:
	// the sweep alone.
	EventsQueues         []string
	EventsPollInterval   time.Duration
	EventsDeleteAfter    time.Duration
	EventsLeaseNamespace string

	// RestarterServiceAccount is "<namespace>/<name>" of the restart
	// controller, the only identity the feed of swapped sets answers; empty:
	// no feed, and the agents' reports are refused.
	RestarterServiceAccount string

	// IdentityKind and Level are Identity and LogLevel parsed by Validate.
	IdentityKind agentconfig.IdentityKind
	Level        slog.Level
}

// Bind defines the flags on fs with their defaults.
func (f *Flags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.BindAddress, "bind-address", DefaultBindAddress, "address of the agents' HTTPS watch endpoint (host:port)")
	fs.StringVar(&f.CertDir, "cert-dir", DefaultCertDir, "directory holding the serving certificate tls.crt and its key tls.key, reloaded when they change")
	fs.StringVar(&f.MetricsBindAddress, "metrics-bind-address", DefaultMetricsBindAddress, "address of the Prometheus metrics endpoint (0 disables it)")
	fs.StringVar(&f.HealthProbeBindAddress, "health-probe-bind-address", DefaultProbeBindAddress, "address of /healthz and /readyz")
	fs.StringVar(&f.PprofBindAddress, "pprof-bind-address", "0", "address of Go's /debug/pprof profiles, e.g. 127.0.0.1:6060 for a port-forward (0 disables them)")
	fs.StringVar(&f.Identity, "identity", string(agentconfig.IdentityWorkload), "the hub's Azure identity: workload, managed or system (the client ID, tenant and token file come from the AZURE_* environment, as for the agent)")
	fs.DurationVar(&f.SweepInterval, "sweep-interval", DefaultSweepInterval, "how often each watched vault's secrets are listed (jittered by 10%)")
	fs.Float64Var(&f.ReadBudget, "read-budget", DefaultReadBudget, "Key Vault reads per second per vault that the notifications of a change may cause, across all replicas (Key Vault allows 400)")
	fs.IntVar(&f.Replicas, "replicas", 1, "the number of hub replicas: each paces notifications at read-budget/replicas (set it to the Deployment's replicas)")
	fs.DurationVar(&f.MaxWait, "max-wait", DefaultMaxWait, "how long a watch is held without change before an empty answer (jittered by 10%, never beyond the agent's token expiry)")
	fs.DurationVar(&f.MaxConnectionAge, "max-connection-age", DefaultMaxConnectionAge, "age after which an agent's connection is closed after its next answer, so that agents rebalance across replicas (jittered by 20%)")
	fs.IntVar(&f.MaxVersions, "max-versions", DefaultMaxVersions, "at most this many versions of a secret are listed to find its newest")
	fs.DurationVar(&f.PodCacheTTL, "pod-cache-ttl", DefaultPodCacheTTL, "how long a pod lookup is reused (0: never); a deleted pod keeps its watch at most this long")
	fs.StringVar(&f.WatchKinds, "watch-kinds", DefaultWatchKinds, "the kinds of objects watched, comma-separated: secret (always), certificate, key; objects of other kinds are polled by their agents")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&f.Version, "version", false, "print the version and exit")
	fs.Var((*stringList)(&f.EventsQueues), "events-queue", "URL of a Storage queue that Event Grid delivers Key Vault events to, https://ACCOUNT.queue.core.windows.net/QUEUE, read with the hub's identity (role Storage Queue Data Message Processor); repeat it for several queues. New versions then reach the agents within seconds; the sweep stays as the backstop")
	fs.DurationVar(&f.EventsPollInterval, "events-poll-interval", events.DefaultPollInterval, "how often each replica peeks an events queue that was empty")
	fs.DurationVar(&f.EventsDeleteAfter, "events-delete-after", events.DefaultDeleteAfter, "how long after it first read a handled queue message the replica holding the events Lease deletes it (every replica peeks the front of the queue every --events-poll-interval, so each has read it by then)")
	fs.StringVar(&f.RestarterServiceAccount, "restarter-service-account", "", "<namespace>/<name> of the restart controller's ServiceAccount (kvinject-restarter), the only identity the feed of swapped sets answers; empty: pods with kvinject.dev/on-change: restart are not restarted and their agents' reports are refused")
	fs.StringVar(&f.EventsLeaseNamespace, "events-lease-namespace", "", "namespace of the Lease "+events.DefaultLeaseName+" whose holder deletes the queues' messages (default: $POD_NAMESPACE)")
}

// Validate checks every flag, naming the flag at fault and the fix, and sets
// IdentityKind and Level.
func (f *Flags) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if err := checkAddress(f.BindAddress, false); err != nil {
		bad("--bind-address %q: %v; use host:port, e.g. :8443", f.BindAddress, err)
	}
	if err := checkAddress(f.MetricsBindAddress, true); err != nil {
		bad("--metrics-bind-address %q: %v; use host:port, e.g. :8080, or 0 to disable metrics", f.MetricsBindAddress, err)
	}
	if err := checkAddress(f.PprofBindAddress, true); err != nil {
		bad("--pprof-bind-address %q: %v; use host:port, e.g. 127.0.0.1:6060, or 0 to disable profiles", f.PprofBindAddress, err)
	}
	if err := checkAddress(f.HealthProbeBindAddress, false); err != nil {
		bad("--health-probe-bind-address %q: %v; use host:port, e.g. :8081", f.HealthProbeBindAddress, err)
	}
	if strings.TrimSpace(f.CertDir) == "" {
		bad("--cert-dir is empty: give the directory where tls.crt and tls.key are mounted")
	}
	kind, err := agentconfig.ParseIdentityKind(f.Identity)
	if err != nil {
		bad("--identity %q: use workload, managed or system", f.Identity)
	}
	f.IdentityKind = kind
	if f.SweepInterval < time.Second || f.SweepInterval > time.Hour {
		bad("--sweep-interval %s: use a duration from 1s to 1h, e.g. 30s (each sweep costs one Key Vault list call per 25 secrets of each watched vault)", f.SweepInterval)
	}
	if !(f.ReadBudget > 0) || f.ReadBudget > keyVaultLimit {
		bad("--read-budget %v: use a number of reads per second above 0 and at most %d (Key Vault's limit of 4,000 transactions per 10 s per vault), e.g. %d", f.ReadBudget, keyVaultLimit, DefaultReadBudget)
	}
	if f.RestarterServiceAccount != "" {
		if _, _, err := hubapi.ParseServiceAccount(f.RestarterServiceAccount); err != nil {
			bad("--restarter-service-account: %v", err)
		}
	}
	if f.Replicas < 1 {
		bad("--replicas %d: use the Deployment's replica count, 1 or more", f.Replicas)
	}
	if f.MaxWait < time.Second || f.MaxWait > time.Hour {
		bad("--max-wait %s: use a duration from 1s to 1h, e.g. 5m", f.MaxWait)
	}
	if f.MaxConnectionAge < time.Second {
		bad("--max-connection-age %s: use a duration of 1s or more, e.g. 30m", f.MaxConnectionAge)
	}
	if f.MaxVersions < 1 || f.MaxVersions > 100_000 {
		bad("--max-versions %d: use a number from 1 to 100000, e.g. %d", f.MaxVersions, DefaultMaxVersions)
	}
	if f.PodCacheTTL < 0 || f.PodCacheTTL > 10*time.Minute {
		bad("--pod-cache-ttl %s: use a duration from 0 to 10m, e.g. 1m", f.PodCacheTTL)
	}
	seen := map[string]bool{}
	for i, q := range f.EventsQueues {
		u, err := events.ParseQueueURL(q)
		switch {
		case err != nil:
			bad("--events-queue %q: %v", q, err)
		case seen[u]:
			bad("--events-queue %q: given twice; give each queue once", q)
		default:
			f.EventsQueues[i] = u
		}
		seen[u] = true
	}
	if f.EventsPollInterval < 100*time.Millisecond || f.EventsPollInterval > time.Minute {
		bad("--events-poll-interval %s: use a duration from 100ms to 1m, e.g. 500ms (each peek of an empty queue is one Storage transaction per replica)", f.EventsPollInterval)
	}
	if f.EventsDeleteAfter < 2*f.EventsPollInterval || f.EventsDeleteAfter > time.Hour {
		bad("--events-delete-after %s: use a duration from twice --events-poll-interval (%s) to 1h, e.g. 10s, so that every replica peeks a message before it is deleted", f.EventsDeleteAfter, 2*f.EventsPollInterval)
	}
	if kinds, err := vaults.ParseKinds(f.WatchKinds); err != nil {
		bad("--watch-kinds %q: %v; e.g. --watch-kinds=secret,certificate,key", f.WatchKinds, err)
	} else if kinds[0] != hubapi.KindSecret {
		bad("--watch-kinds %q: add secret, e.g. --watch-kinds=secret,%s (secrets are always watched)", f.WatchKinds, strings.Join(kinds, ","))
	}
	switch strings.ToLower(f.LogLevel) {
	case "debug":
		f.Level = slog.LevelDebug
	case "info":
		f.Level = slog.LevelInfo
	case "warn", "warning":
		f.Level = slog.LevelWarn
	case "error":
		f.Level = slog.LevelError
	default:
		bad("--log-level %q: use debug, info, warn or error", f.LogLevel)
	}
	return errors.Join(errs...)
}

// Kinds are the kinds of --watch-kinds, for vaults.Options.Kinds (after
// Validate).
func (f *Flags) Kinds() []string {
	kinds, _ := vaults.ParseKinds(f.WatchKinds)
	return kinds
}

// ReplicaBudget is the read budget of one replica: ReadBudget/Replicas.
func (f *Flags) ReplicaBudget() float64 { return f.ReadBudget / float64(f.Replicas) }

// ServerPodCacheTTL is PodCacheTTL as Options.PodCacheTTL takes it (0 on
// the command line means never cache).
func (f *Flags) ServerPodCacheTTL() time.Duration {
	if f.PodCacheTTL == 0 {
		return -1
	}
	return f.PodCacheTTL
}

// stringList is a repeatable flag: each use appends.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// checkAddress checks a host:port listen address ("0" allowed when
// disableable).
func checkAddress(addr string, disableable bool) error {
	if disableable && addr == "0" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}
