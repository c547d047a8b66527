package agent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// rtt is the Key Vault and Azure AD round trip the benchmarks' emulator adds to
// every request: a pod in the vault's region.
const rtt = 20 * time.Millisecond

// benchSetup is an emulator with a vault of n secrets and a workload identity
// allowed to read them, and the agent configuration and options that read them
// all, the way the webhook wires a pod (in-process, logs discarded).
func benchSetup(b *testing.B, n int, mode string) (*emulator.Emulator, agentconfig.Config, agent.Options) {
	b.Helper()
	emu, err := emulator.Start(emulator.Options{Latency: rtt, ThrottleLimit: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = emu.Close() })
	tmp := b.TempDir()
	ca := filepath.Join(tmp, "ca.pem")
	token := filepath.Join(tmp, "azure-identity-token")
	clientID, vault := newClientID(), "kv-"+randHex(4)
	if err := os.WriteFile(ca, emu.CAPEM(), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(token, []byte(jwt(testIssuer, testSubject, emulator.DefaultAudience, time.Now().Add(time.Hour))), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		b.Fatal(err)
	}
	if err := emu.AddVault(vault, emulator.VaultOptions{}); err != nil {
		b.Fatal(err)
	}
	if err := emu.Grant(vault, clientID, emulator.PermGet); err != nil {
		b.Fatal(err)
	}
	var entries []agentconfig.Entry
	for i := range n {
		name := fmt.Sprintf("SECRET-%02d", i)
		emu.SetSecret(vault, name, "value-"+randHex(16))
		entries = append(entries, agentconfig.Entry{File: fmt.Sprintf("secret-%02d.txt", i), Name: name})
	}
	env := map[string]string{
		agentconfig.EnvTestCAFile:    ca,
		agentconfig.EnvTestResolve:   fmt.Sprintf("login.microsoftonline.com=%s,*.vault.azure.net=%s", emu.Addr(), emu.Addr()),
		agentconfig.EnvAuthorityHost: "https://login.microsoftonline.com/",
		agentconfig.EnvClientID:      clientID,
		agentconfig.EnvTenantID:      emu.TenantID(),
		agentconfig.EnvTokenFile:     token,
		agentconfig.EnvPodName:       testPod,
		agentconfig.EnvPodNamespace:  testNamespace,
	}
	dir, err := os.MkdirTemp("/dev/shm", "kvinject-agent-bench-")
	if err != nil {
		dir = b.TempDir()
	} else {
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	cfg := agentconfig.Config{Mode: mode, VaultURL: "https://" + vault + ".vault.azure.net/", Entries: entries,
		Dir: dir, FileMode: 0o440, Identity: agentconfig.IdentityWorkload}
	opts := agent.Options{
		Getenv: func(k string) string { return env[k] },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	return emu, cfg, opts
}

// BenchmarkFirstSet measures the agent from its start to the complete set
// written, in-process, with a 20 ms round trip to Key Vault and Azure AD and a
// cold client each time (challenge, token, then the secrets), for 1, 10 and 50
// secrets: the agent as it ships (concurrent, at most DefaultConcurrency reads
// at a time) and reading one secret after another (sequential, as the Secrets
// Store CSI driver's Azure provider does).
// Besides the time, it reports the time in round trips, the round trips spent
// getting the token (instance discovery, OpenID discovery and the token
// request, one after another), and the requests and connections per set.
func BenchmarkFirstSet(b *testing.B) {
	type fetch struct {
		name        string
		concurrency int
	}
	for _, n := range []int{1, 10, 50} {
		fetches := []fetch{{"concurrent", agent.DefaultConcurrency}, {"sequential", 1}}
		for _, f := range fetches {
			b.Run(fmt.Sprintf("secrets=%d/fetch=%s", n, f.name), func(b *testing.B) {
				emu, cfg, opts := benchSetup(b, n, agentconfig.ModeInit)
				opts.Concurrency = f.concurrency
				emu.ResetStats()
				start := time.Now()
				for b.Loop() {
					if err := agent.Run(context.Background(), cfg, opts); err != nil {
						b.Fatal(err)
					}
				}
				perSet := time.Since(start) / time.Duration(b.N)
				st := emu.Stats()
				per := func(v int64) float64 { return float64(v) / float64(b.N) }
				tokenRTTs := per(st.Discovery + st.InstanceDiscovery + st.TokenRequests)
				b.ReportMetric(float64(perSet)/float64(rtt), "round-trips")
				b.ReportMetric(tokenRTTs, "token-round-trips")
				b.ReportMetric(float64(perSet)/float64(rtt)-tokenRTTs, "round-trips-beyond-token")
				b.ReportMetric(per(st.Requests), "requests/set")
				b.ReportMetric(per(st.Connections), "connections/set")
			})
		}
	}
}

// BenchmarkRotation measures, for a sidecar agent polling 10 secrets, the time
// from a new version of a secret in Key Vault to the new set on disk. Each
// iteration changes a secret at a random moment of the polling cycle; the
// expected time is uniform over one interval (±10% jitter), plus one round of
// reads. The interval is short so that the benchmark runs in seconds: the
// times scale with it (the default is 2m, the minimum 30s).
func BenchmarkRotation(b *testing.B) {
	const interval = 2 * time.Second
	b.Run(fmt.Sprintf("secrets=10/interval=%s", interval), func(b *testing.B) {
		emu, cfg, opts := benchSetup(b, 10, agentconfig.ModeSidecar)
		cfg.Rotation = interval
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- agent.Run(ctx, cfg, opts) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				b.Error(err)
			}
		}()
		file := filepath.Join(cfg.Dir, cfg.Entries[0].File)
		vault := cfg.VaultURL[len("https://"):]
		vault = vault[:len(vault)-len(".vault.azure.net/")]
		waitFor := func(want string, within time.Duration) time.Time {
			deadline := time.Now().Add(within)
			for time.Now().Before(deadline) {
				if got, err := os.ReadFile(file); err == nil && string(got) == want {
					return time.Now()
				}
				time.Sleep(time.Millisecond)
			}
			b.Fatalf("%s did not get the new value within %s", file, within)
			return time.Time{}
		}
		first, _ := emu.Secret(vault, cfg.Entries[0].Name)
		waitFor(first.Value, 10*time.Second)
		var total, worst time.Duration
		b.ResetTimer()
		for i := range b.N {
			// A random phase of the polling cycle.
			time.Sleep(rand.N(interval))
			value := fmt.Sprintf("rotated-%d-%s", i, randHex(8))
			emu.SetSecret(vault, cfg.Entries[0].Name, value)
			changed := time.Now()
			d := waitFor(value, 2*interval+5*time.Second).Sub(changed)
			total += d
			worst = max(worst, d)
		}
		b.StopTimer()
		mean := total / time.Duration(b.N)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(ms(mean), "mean-ms")
		b.ReportMetric(ms(worst), "max-ms")
		b.ReportMetric(float64(mean)/float64(interval), "mean/interval")
		b.ReportMetric(float64(worst)/float64(interval), "max/interval")
	})
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
