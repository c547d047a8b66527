package bench

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// rtt is the round trip the emulator adds to every Key Vault and Azure AD
// request: a pod in its vault's region.
const rtt = 20 * time.Millisecond

// The issuer of the benchmark's ServiceAccount tokens.
const benchIssuer = "https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/"

// vaultFixture is an emulator with one vault of secrets, for agents.
type vaultFixture struct {
	emu     *emulator.Emulator
	vault   string
	entries []agentconfig.Entry
	caFile  string
	tmp     string
}

// newVault starts an emulator with the given options and a vault of n secrets.
func newVault(b *testing.B, opts emulator.Options, n int) *vaultFixture {
	b.Helper()
	emu, err := emulator.Start(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = emu.Close() })
	f := &vaultFixture{emu: emu, vault: "contoso-shop", tmp: b.TempDir()}
	f.caFile = filepath.Join(f.tmp, "ca.pem")
	if err := os.WriteFile(f.caFile, emu.CAPEM(), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := emu.AddVault(f.vault, emulator.VaultOptions{}); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("SECRET-%02d", i)
		emu.SetSecret(f.vault, name, fmt.Sprintf("value-%02d-%032d", i, i))
		f.entries = append(f.entries, agentconfig.Entry{File: fmt.Sprintf("secret-%02d.txt", i), Name: name})
	}
	return f
}

// identity registers workload identity number i (its own client ID and
// ServiceAccount), grants it the vault, writes its projected token and
// returns the agent's environment as the webhook sets it.
func (f *vaultFixture) identity(b *testing.B, i int) map[string]string {
	b.Helper()
	clientID := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	subject := fmt.Sprintf("system:serviceaccount:apps:sa-%d", i)
	if err := f.emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: clientID, Issuer: benchIssuer, Subject: subject}); err != nil {
		b.Fatal(err)
	}
	if err := f.emu.Grant(f.vault, clientID, emulator.PermGet); err != nil {
		b.Fatal(err)
	}
	token := filepath.Join(f.tmp, "token-"+strconv.Itoa(i))
	if err := os.WriteFile(token, []byte(serviceAccountToken(benchIssuer, subject)), 0o600); err != nil {
		b.Fatal(err)
	}
	addr := f.emu.Addr()
	return map[string]string{
		agentconfig.EnvClientID:      clientID,
		agentconfig.EnvTenantID:      f.emu.TenantID(),
		agentconfig.EnvAuthorityHost: "https://login.microsoftonline.com/",
		agentconfig.EnvTokenFile:     token,
		agentconfig.EnvPodName:       fmt.Sprintf("orders-%d", i),
		agentconfig.EnvPodNamespace:  "apps",
		agentconfig.EnvTestCAFile:    f.caFile,
		agentconfig.EnvTestResolve:   "login.microsoftonline.com=" + addr + ",*.vault.azure.net=" + addr,
	}
}

// config is the agent configuration the webhook would write, for dir.
func (f *vaultFixture) config(mode, dir string) agentconfig.Config {
	return agentconfig.Config{Mode: mode, VaultURL: "https://" + f.vault + ".vault.azure.net/", Entries: f.entries,
		Dir: dir, FileMode: 0o444, Identity: agentconfig.IdentityWorkload, Rotation: agentconfig.DefaultRotation}
}

// serviceAccountToken is an unsigned projected ServiceAccount token: the
// emulator checks its claims, not its signature.
func serviceAccountToken(iss, sub string) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now()
	return enc(map[string]string{"alg": "RS256", "kid": "bench"}) + "." + enc(map[string]any{
		"iss": iss, "sub": sub, "aud": []string{emulator.DefaultAudience},
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(),
	}) + ".c2lnbmF0dXJl"
}

// memDir returns a new directory on tmpfs, like the pod's in-memory volume.
func memDir(b *testing.B) string {
	b.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "kvinject-bench-")
	if err != nil {
		return b.TempDir()
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// agentCmd is the agent binary with the webhook's arguments and environment.
func agentCmd(bin string, cfg agentconfig.Config, env map[string]string) *exec.Cmd {
	cmd := exec.Command(bin, append(cfg.Args(), "--termination-log=")...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// BenchmarkAgentProcess measures the agent binary (built as `make build` does)
// from process start to the complete set written, with 20 ms round trips to
// Key Vault and Azure AD: init mode, which exits right after writing. It
// reports the time in round trips, the peak RSS of that run and the binary's
// size. The in-process comparison with reading one secret after another is
// internal/agent's BenchmarkFirstSet.
func BenchmarkAgentProcess(b *testing.B) {
	bin := binary(b, "cmd/agent")
	fi, err := os.Stat(bin)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("init/secrets=%d", n), func(b *testing.B) {
			f := newVault(b, emulator.Options{Latency: rtt, ThrottleLimit: -1}, n)
			env := f.identity(b, 1)
			dir := memDir(b)
			var peakKB int64
			b.ResetTimer()
			for b.Loop() {
				cmd := agentCmd(bin, f.config(agentconfig.ModeInit, dir), env)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("agent: %v\n%s", err, out)
				}
				peakKB = max(peakKB, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(rtt), "round-trips")
			b.ReportMetric(float64(peakKB)/1024, "peak-rss-MiB")
			b.ReportMetric(float64(fi.Size())/(1<<20), "binary-MiB")
		})
	}
}

// BenchmarkAgentSidecarMemory runs the agent binary as a sidecar with 50
// secrets, all of which change between polls, and reports its peak RSS (the
// webhook's default memory request is 24Mi, its limit 64Mi) and its CPU time
// per poll. The 1 s interval packs many polls into a short run.
func BenchmarkAgentSidecarMemory(b *testing.B) {
	bin := binary(b, "cmd/agent")
	polls := pick(30, 3)
	b.Run(fmt.Sprintf("secrets=50/polls=%d", polls), func(b *testing.B) {
		for range b.N {
			f := newVault(b, emulator.Options{Latency: rtt, ThrottleLimit: -1}, 50)
			dir := memDir(b)
			cfg := f.config(agentconfig.ModeSidecar, dir)
			cfg.Rotation = time.Second
			cmd := agentCmd(bin, cfg, f.identity(b, 1))
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			pid := cmd.Process.Pid
			deadline := time.Now().Add(10 * time.Second)
			for !fileExists(filepath.Join(dir, f.entries[len(f.entries)-1].File)) {
				if time.Now().After(deadline) {
					_ = cmd.Process.Kill()
					b.Fatal("the sidecar wrote no set within 10s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			cpu0 := procCPU(pid)
			for i := range polls {
				for _, e := range f.entries {
					f.emu.SetSecret(f.vault, e.Name, fmt.Sprintf("rotated-%d-%032d", i, i))
				}
				time.Sleep(cfg.Rotation)
			}
			cpu := procCPU(pid) - cpu0
			peakKB, rssKB := procStatusKB(pid, "VmHWM"), procStatusKB(pid, "VmRSS")
			_ = cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				b.Fatalf("the sidecar exited with %v", err)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(peakKB)/1024, "peak-rss-MiB")
			b.ReportMetric(float64(rssKB)/1024, "rss-MiB")
			b.ReportMetric(ms(cpu)/float64(polls), "cpu-ms/poll")
		}
	})
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
