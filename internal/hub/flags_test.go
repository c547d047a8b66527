package hub

import (
	"flag"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

func parseHubFlags(t *testing.T, args ...string) (*Flags, error) {
	t.Helper()
	fs := flag.NewFlagSet("kvinject-hub", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f Flags
	f.Bind(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return &f, f.Validate()
}

func TestFlagDefaults(t *testing.T) {
	f, err := parseHubFlags(t)
	if err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	want := Flags{
		BindAddress: ":8443", CertDir: DefaultCertDir, MetricsBindAddress: ":8080", HealthProbeBindAddress: ":8081", PprofBindAddress: "0",
		Identity: "workload", SweepInterval: 30 * time.Second, ReadBudget: 100, Replicas: 1, MaxWait: 5 * time.Minute,
		MaxConnectionAge: 30 * time.Minute, MaxVersions: 500, PodCacheTTL: time.Minute, WatchKinds: "secret", LogLevel: "info",
		IdentityKind: agentconfig.IdentityWorkload, Level: slog.LevelInfo,
		EventsPollInterval: 500 * time.Millisecond, EventsDeleteAfter: 10 * time.Second,
	}
	if !reflect.DeepEqual(*f, want) {
		t.Errorf("defaults\n%+v\nwant\n%+v", *f, want)
	}
	f, err = parseHubFlags(t, "--read-budget=100", "--replicas=4", "--pod-cache-ttl=0", "--metrics-bind-address=0", "--log-level=debug", "--identity=system")
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Kinds(); !slices.Equal(got, []string{"secret"}) {
		t.Errorf("default kinds %v, want secret", got)
	}
	if f.ReplicaBudget() != 25 || f.ServerPodCacheTTL() >= 0 || f.Level != slog.LevelDebug || f.IdentityKind != agentconfig.IdentitySystem {
		t.Errorf("budget %v, pod cache %v, level %v, identity %v", f.ReplicaBudget(), f.ServerPodCacheTTL(), f.Level, f.IdentityKind)
	}
}

func TestWatchKinds(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want []string
	}{
		{"--watch-kinds=secret", []string{"secret"}},
		{"--watch-kinds=key,secret", []string{"secret", "key"}},
		{"--watch-kinds=secret, certificate ,key", []string{"secret", "certificate", "key"}},
	} {
		f, err := parseHubFlags(t, tc.arg)
		if err != nil || !slices.Equal(f.Kinds(), tc.want) {
			t.Errorf("%s: kinds %v, %v; want %v", tc.arg, f.Kinds(), err, tc.want)
		}
	}
}

func TestFlagErrorsNameTheFlag(t *testing.T) {
	tests := []struct {
		arg  string
		want string
	}{
		{"--bind-address=localhost", `--bind-address "localhost": not host:port; use host:port, e.g. :8443`},
		{"--bind-address=:99999", `--bind-address ":99999": port "99999" is not a number from 0 to 65535`},
		{"--metrics-bind-address=x", `--metrics-bind-address "x": not host:port; use host:port, e.g. :8080, or 0 to disable metrics`},
		{"--pprof-bind-address=6060", `--pprof-bind-address "6060": not host:port; use host:port, e.g. 127.0.0.1:6060, or 0 to disable profiles`},
		{"--health-probe-bind-address=0", `--health-probe-bind-address "0"`},
		{"--cert-dir=", "--cert-dir is empty"},
		{"--identity=Workload", `--identity "Workload": use workload, managed or system`},
		{"--sweep-interval=500ms", "--sweep-interval 500ms: use a duration from 1s to 1h"},
		{"--sweep-interval=2h", "--sweep-interval 2h0m0s: use a duration from 1s to 1h"},
		{"--read-budget=0", "--read-budget 0: use a number of reads per second above 0 and at most 400"},
		{"--read-budget=NaN", "--read-budget NaN"},
		{"--read-budget=401", "--read-budget 401"},
		{"--replicas=-1", "--replicas -1: use the Deployment's replica count, 1 or more"},
		{"--max-wait=500ms", "--max-wait 500ms: use a duration from 1s to 1h"},
		{"--max-connection-age=0s", "--max-connection-age 0s: use a duration of 1s or more"},
		{"--max-versions=0", "--max-versions 0: use a number from 1 to 100000"},
		{"--pod-cache-ttl=-1s", "--pod-cache-ttl -1s: use a duration from 0 to 10m"},
		{"--pod-cache-ttl=1h", "--pod-cache-ttl 1h0m0s"},
		{"--restarter-service-account=kvinject-restarter", `--restarter-service-account: "kvinject-restarter" is not <namespace>/<serviceaccount>, e.g. kvinject-system/kvinject-restarter`},
		{"--restarter-service-account=Kvinject/x", `"Kvinject/x" is not <namespace>/<serviceaccount>`},
		{"--log-level=trace", `--log-level "trace": use debug, info, warn or error`},
		{"--events-queue=https://kvevents.blob.core.windows.net/q01", `--events-queue "https://kvevents.blob.core.windows.net/q01": host "kvevents.blob.core.windows.net" is not a Storage account's queue endpoint`},
		{"--events-queue=https://kvevents.queue.core.windows.net/q01?sig=x", "(a SAS token?)"},
		{"--events-poll-interval=10ms", "--events-poll-interval 10ms: use a duration from 100ms to 1m"},
		{"--events-delete-after=900ms", "--events-delete-after 900ms: use a duration from twice --events-poll-interval (1s) to 1h"},
		{"--watch-kinds=secret,cert", `--watch-kinds "secret,cert": unknown kind "cert": use secret, certificate, key; e.g. --watch-kinds=secret,certificate,key`},
		{"--watch-kinds=key,certificate", `--watch-kinds "key,certificate": add secret, e.g. --watch-kinds=secret,certificate,key`},
		{"--watch-kinds=", `--watch-kinds "": no kind`},
		{"--watch-kinds=key,key", `kind "key" is named twice`},
	}
	for _, tc := range tests {
		_, err := parseHubFlags(t, tc.arg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.arg, err, tc.want)
		}
	}
}

// TestEventsQueueFlag: --events-queue repeats, is normalized, and a queue
// given twice is refused.
func TestEventsQueueFlag(t *testing.T) {
	f, err := parseHubFlags(t, "--events-queue=https://KVEvents.queue.core.windows.net/kv-events/", "--events-queue=https://kvevents2.queue.core.windows.net/kv-events")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"https://kvevents.queue.core.windows.net/kv-events", "https://kvevents2.queue.core.windows.net/kv-events"}; !reflect.DeepEqual(f.EventsQueues, want) {
		t.Errorf("queues %q, want %q", f.EventsQueues, want)
	}
	_, err = parseHubFlags(t, "--events-queue=https://kvevents.queue.core.windows.net/kv-events", "--events-queue=https://KVEVENTS.queue.core.windows.net/kv-events")
	if err == nil || !strings.Contains(err.Error(), "given twice; give each queue once") {
		t.Errorf("a queue given twice: %v", err)
	}
}
