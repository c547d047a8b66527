package agent_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// agentBinary builds cmd/agent once per test run.
func agentBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "kvinject-agent-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "kvinject-agent")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/kvinject/kvinject/cmd/agent").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// process is a running agent binary.
type process struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	stdout *syncBuffer
	done   chan struct{}
	err    error
}

// start runs the agent binary with exactly the environment the webhook (and
// azure-workload-identity) gives the container, plus the test-only options,
// and with the webhook's arguments plus --termination-log (a test must not
// write /dev/termination-log).
func (h *harness) start(bin string, args []string, extraEnv ...string) *process {
	h.t.Helper()
	var env []string
	for _, k := range []string{agentconfig.EnvClientID, agentconfig.EnvTenantID, agentconfig.EnvAuthorityHost, agentconfig.EnvTokenFile,
		agentconfig.EnvPodName, agentconfig.EnvPodNamespace, agentconfig.EnvServiceAccount, agentconfig.EnvTestCAFile, agentconfig.EnvTestResolve} {
		if v, ok := h.env[k]; ok {
			env = append(env, k+"="+v)
		}
	}
	// The mode, then --termination-log, so that it holds even when a later
	// argument is bad.
	return h.startEnv(bin, append([]string{args[0], "--termination-log=" + h.termLog}, args[1:]...), append(env, extraEnv...))
}

// wait waits for the process to exit and returns its exit code.
func (p *process) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("the agent did not exit within %s\nstderr:\n%s", timeout, p.stderr)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// checkJSONLogs checks that every line the agent wrote to stderr is a JSON
// log record.
func checkJSONLogs(t *testing.T, stderr string) {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec["msg"] == nil || rec["level"] == nil {
			t.Errorf("not a JSON log record: %s", sc.Text())
		}
	}
}

// runBinary runs the binary to completion and returns its exit code.
func (h *harness) runBinary(bin string, args []string, extraEnv ...string) (int, *process) {
	p := h.start(bin, args, extraEnv...)
	return p.wait(h.t, 20*time.Second), p
}

// TestBinaryWorkloadInitAndProbe runs the real binary as the webhook would:
// probe fails, init writes the set and exits 0, probe passes.
func TestBinaryWorkloadInitAndProbe(t *testing.T) {
	bin := agentBinary(t)
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	conn, _ := h.setSecret("DATABASE-CONNECTION-STRING")
	key, version := h.setSecret("API-KEY")
	h.setSecret("API-KEY")
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload,
		agentconfig.Entry{File: "connectionstring.txt", Name: "DATABASE-CONNECTION-STRING"},
		agentconfig.Entry{File: "apikey.txt", Name: "API-KEY", Version: version})
	probe := agentconfig.Config{Mode: agentconfig.ModeProbe, Dir: h.dir}.Args()

	code, p := h.runBinary(bin, probe)
	if code != 1 || !strings.Contains(p.stderr.String(), "no complete set yet") {
		t.Fatalf("probe before the first set: exit %d, stderr %q", code, p.stderr)
	}
	start := time.Now()
	code, p = h.runBinary(bin, cfg.Args())
	took := time.Since(start)
	if code != 0 {
		t.Fatalf("init exited %d\nstderr:\n%s", code, p.stderr)
	}
	if h.read("connectionstring.txt") != conn || h.read("apikey.txt") != key {
		t.Error("wrong values")
	}
	checkJSONLogs(t, p.stderr.String())
	for _, want := range []string{`"msg":"TEST OPTION IN USE`, `"pod":"` + testNamespace + "/" + testPod + `"`, `"msg":"wrote secrets"`} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("stderr lacks %s", want)
		}
	}
	if code, p = h.runBinary(bin, probe); code != 0 {
		t.Fatalf("probe after the first set: exit %d, stderr %q", code, p.stderr)
	}
	if got := h.termination(); got != "kvinject-agent: wrote 2 file(s) from vault "+h.vaultURL() {
		t.Errorf("termination log %q (the probe must not write it)", got)
	}
	t.Logf("process start to exit with 2 secrets: %s", took.Round(time.Millisecond))
}

// TestBinarySidecar rotates a secret and exits 0 on SIGTERM.
func TestBinarySidecar(t *testing.T) {
	bin := agentBinary(t)
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	v1, _ := h.setSecret("a")
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"})
	p := h.start(bin, cfg.Args())
	h.waitFor("the first set", 5*time.Second, func() bool { return h.fileIs("a", v1) })
	v2 := "VALUE-a2-" + randHex(8)
	h.setSecretValue("a", v2)
	h.waitFor("rotation", 5*time.Second, func() bool { return h.fileIs("a", v2) })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("sidecar exited %d on SIGTERM\nstderr:\n%s", code, p.stderr)
	}
	checkJSONLogs(t, p.stderr.String())
	if !strings.Contains(p.stderr.String(), `"msg":"stopped"`) {
		t.Errorf("no stop logged:\n%s", p.stderr)
	}
}

// TestBinaryFailures checks exit codes and termination messages of the binary.
func TestBinaryFailures(t *testing.T) {
	bin := agentBinary(t)
	t.Run("access denied", func(t *testing.T) {
		h := newHarness(t, emulator.Options{})
		id, _ := h.workload()
		h.setSecret("API-KEY")
		code, p := h.runBinary(bin, h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "apikey.txt", Name: "API-KEY"}).Args())
		if code != 1 {
			t.Fatalf("exit %d, want 1\nstderr:\n%s", code, p.stderr)
		}
		want := fmt.Sprintf(`kvinject-agent: cannot read secret "API-KEY" from vault %[1]s: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity %[2]s may not get its secrets. Fix: grant the identity %[2]s 'get' on secrets with an access policy (az keyvault set-policy --name %[1]s --spn %[2]s --secret-permissions get), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee %[2]s --scope $(az keyvault show --name %[1]s --query id --output tsv))`, h.vault, id)
		if got := h.termination(); got != want {
			t.Errorf("termination log:\n got %s\nwant %s", got, want)
		}
		checkJSONLogs(t, p.stderr.String())
	})
	t.Run("system identity missing", func(t *testing.T) {
		h := newHarness(t, emulator.Options{})
		h.setSecret("API-KEY")
		code, p := h.runBinary(bin, h.config(agentconfig.ModeInit, agentconfig.IdentitySystem, agentconfig.Entry{File: "apikey.txt", Name: "API-KEY"}).Args(),
			"IDENTITY_ENDPOINT="+h.emu.MSIEndpoint(), "IDENTITY_HEADER="+h.emu.IdentityHeader())
		if code != 1 {
			t.Fatalf("exit %d, want 1\nstderr:\n%s", code, p.stderr)
		}
		want := fmt.Sprintf(`kvinject-agent: cannot read secret "API-KEY" from vault %s: the managed-identity endpoint answered HTTP 400 Bad Request (Unable to load the proper Managed Identity.): the node has no system-assigned managed identity. Fix: enable the system-assigned identity of the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set>), or use workload identity or a user-assigned identity (kvinject.dev/identity)`, h.vault)
		if got := h.termination(); got != want {
			t.Errorf("termination log:\n got %s\nwant %s", got, want)
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		h := newHarness(t, emulator.Options{})
		code, p := h.runBinary(bin, []string{"init", "--dir=" + h.dir, "--vault=https://" + h.vault + ".vault.azure.net/", "--identity=system", "--secret=..data=x"})
		if code != 2 {
			t.Fatalf("exit %d, want 2\nstderr:\n%s", code, p.stderr)
		}
		if got := h.termination(); !strings.HasPrefix(got, `kvinject-agent: bad arguments "init --termination-log=`) || !strings.Contains(got, "must not start with '..'") {
			t.Errorf("termination log %q", got)
		}
	})
}

// TestBinarySystemIdentity reads a secret with the system-assigned identity
// in its own process (MSAL caches managed-identity tokens per process).
func TestBinarySystemIdentity(t *testing.T) {
	bin := agentBinary(t)
	h := newHarness(t, emulator.Options{})
	id := newClientID()
	if err := h.emu.SetSystemIdentity(id); err != nil {
		t.Fatal(err)
	}
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	v, _ := h.setSecret("s")
	old, version := h.setSecret("pinned")
	h.setSecret("pinned")
	code, p := h.runBinary(bin, h.config(agentconfig.ModeInit, agentconfig.IdentitySystem,
		agentconfig.Entry{File: "s", Name: "s"}, agentconfig.Entry{File: "p/old", Name: "pinned", Version: version}).Args(),
		"IDENTITY_ENDPOINT="+h.emu.MSIEndpoint(), "IDENTITY_HEADER="+h.emu.IdentityHeader())
	if code != 0 {
		t.Fatalf("exit %d\nstderr:\n%s", code, p.stderr)
	}
	if h.read("s") != v || h.read("p/old") != old {
		t.Error("wrong values")
	}
	if st := h.emu.Stats(); st.TokenRequests != 1 || st.Challenges != 1 {
		t.Errorf("token requests %d, challenges %d; want 1, 1", st.TokenRequests, st.Challenges)
	}
}
