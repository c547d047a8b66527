package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

const (
	testIssuer    = "https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/"
	testNamespace = "shop"
	testSA        = "checkout"
	testSubject   = "system:serviceaccount:" + testNamespace + ":" + testSA
	testPod       = "checkout-7d9f8b-x2x9q"
)

// syncBuffer is a goroutine-safe buffer for logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is one emulator, one secrets directory and the agent's environment,
// wired the way the webhook wires a pod. When the test ends it checks that no
// secret value appears in anything the agent logged or wrote besides the
// secret files.
type harness struct {
	t       *testing.T
	emu     *emulator.Emulator
	dir     string
	termLog string
	env     map[string]string
	logs    *syncBuffer
	vault   string

	mu     sync.Mutex
	values []string
	outs   []string // other outputs to scan (errors, process output)
}

func newHarness(t *testing.T, eopts emulator.Options) *harness {
	t.Helper()
	emu, err := emulator.Start(eopts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	tmp := t.TempDir()
	ca := filepath.Join(tmp, "ca.pem")
	if err := os.WriteFile(ca, emu.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := memDir(t)
	h := &harness{
		t: t, emu: emu, dir: dir, termLog: filepath.Join(tmp, "termination-log"),
		logs:  &syncBuffer{},
		vault: "kv-" + randHex(4),
		env: map[string]string{
			agentconfig.EnvTestCAFile: ca,
			agentconfig.EnvTestResolve: fmt.Sprintf("login.microsoftonline.com=%s,*.vault.azure.net=%s",
				emu.Addr(), emu.Addr()),
			agentconfig.EnvAuthorityHost:  "https://login.microsoftonline.com/",
			agentconfig.EnvPodName:        testPod,
			agentconfig.EnvPodNamespace:   testNamespace,
			agentconfig.EnvServiceAccount: testSA,
		},
	}
	if err := emu.AddVault(h.vault, emulator.VaultOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.checkNoLeaks)
	return h
}

// memDir returns a new directory on tmpfs (/dev/shm) when there is one, like
// the pod's in-memory emptyDir, else in the test's temporary directory. It is
// removed when the test ends.
func memDir(t *testing.T) string {
	t.Helper()
	if dir, err := os.MkdirTemp("/dev/shm", "kvinject-agent-test-"); err == nil {
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		return dir
	}
	return t.TempDir()
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newClientID() string {
	b := randHex(16)
	return b[:8] + "-" + b[8:12] + "-" + b[12:16] + "-" + b[16:20] + "-" + b[20:]
}

// vaultURL is the vault's real (public cloud) URL.
func (h *harness) vaultURL() string { return "https://" + h.vault + ".vault.azure.net/" }

// setSecret stores a distinctive value and remembers it for the leak check.
func (h *harness) setSecret(name string) (value, version string) {
	value = "VALUE-" + name + "-" + randHex(12)
	return value, h.setSecretValue(name, value)
}

func (h *harness) setSecretValue(name, value string) string {
	h.mu.Lock()
	h.values = append(h.values, value)
	h.mu.Unlock()
	return h.emu.SetSecret(h.vault, name, value)
}

// output records something the agent printed, for the leak check.
func (h *harness) output(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.outs = append(h.outs, s)
}

// checkNoLeaks scans the logs, the termination log and recorded outputs for
// every secret value.
func (h *harness) checkNoLeaks() {
	term, _ := os.ReadFile(h.termLog)
	h.mu.Lock()
	defer h.mu.Unlock()
	all := h.logs.String() + "\n" + string(term) + "\n" + strings.Join(h.outs, "\n")
	for _, v := range h.values {
		if strings.Contains(all, v) {
			h.t.Errorf("secret value %q appears in the agent's output", v)
		}
		// Also a prefix long enough to be unmistakable (a truncated leak).
		if len(v) > 24 && strings.Contains(all, v[len(v)-20:]) {
			h.t.Errorf("part of secret value %q appears in the agent's output", v)
		}
	}
}

// jwt is an unsigned service account token with the given claims.
func jwt(iss, sub, aud string, exp time.Time) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "RS256", "kid": "test"}) + "." + enc(map[string]any{
		"iss": iss, "sub": sub, "aud": []string{aud}, "exp": exp.Unix(),
		"iat": time.Now().Unix(), "nbf": time.Now().Add(-time.Minute).Unix(),
		"kubernetes.io": map[string]any{"namespace": testNamespace, "serviceaccount": map[string]string{"name": testSA}},
	}) + ".c2lnbmF0dXJl"
}

// tokenDir is a projected token volume, updated kubelet-style.
type tokenDir struct {
	t   *testing.T
	dir string
	n   int
}

// path is what AZURE_FEDERATED_TOKEN_FILE points at.
func (d *tokenDir) path() string { return filepath.Join(d.dir, "azure-identity-token") }

// write swaps in a new token the way kubelet does: a new hidden directory, a
// ..data symlink renamed over the old one.
func (d *tokenDir) write(token string) {
	d.t.Helper()
	d.n++
	ts := fmt.Sprintf("..token_%d", d.n)
	if err := os.Mkdir(filepath.Join(d.dir, ts), 0o755); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, ts, "azure-identity-token"), []byte(token), 0o644); err != nil {
		d.t.Fatal(err)
	}
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		d.t.Fatal(err)
	}
	if _, err := os.Lstat(d.path()); errors.Is(err, fs.ErrNotExist) {
		if err := os.Symlink("..data/azure-identity-token", d.path()); err != nil {
			d.t.Fatal(err)
		}
	}
	if d.n > 1 {
		_ = os.RemoveAll(filepath.Join(d.dir, fmt.Sprintf("..token_%d", d.n-1)))
	}
}

// workload registers a workload identity for the test's ServiceAccount and
// sets the environment the webhook and azure-workload-identity set.
func (h *harness) workload() (clientID string, tok *tokenDir) {
	h.t.Helper()
	clientID = newClientID()
	if err := h.emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		h.t.Fatal(err)
	}
	tok = &tokenDir{t: h.t, dir: h.t.TempDir()}
	tok.write(jwt(testIssuer, testSubject, emulator.DefaultAudience, time.Now().Add(time.Hour)))
	h.env[agentconfig.EnvClientID] = clientID
	h.env[agentconfig.EnvTenantID] = h.emu.TenantID()
	h.env[agentconfig.EnvTokenFile] = tok.path()
	return clientID, tok
}

// managed registers a user-assigned managed identity and points azidentity's
// App Service source at the emulator (process environment: not parallel).
func (h *harness) managed() string {
	h.t.Helper()
	clientID := newClientID()
	if err := h.emu.AddManagedIdentity(clientID); err != nil {
		h.t.Fatal(err)
	}
	h.msiEnv()
	h.env[agentconfig.EnvClientID] = clientID
	return clientID
}

func (h *harness) msiEnv() {
	h.t.Setenv("IDENTITY_ENDPOINT", h.emu.MSIEndpoint())
	h.t.Setenv("IDENTITY_HEADER", h.emu.IdentityHeader())
}

// config is the agent configuration the webhook would write.
func (h *harness) config(mode string, id agentconfig.IdentityKind, entries ...agentconfig.Entry) agentconfig.Config {
	c := agentconfig.Config{Mode: mode, VaultURL: h.vaultURL(), Entries: entries, Dir: h.dir,
		FileMode: 0o440, Identity: id}
	if mode == agentconfig.ModeSidecar {
		c.Rotation = 200 * time.Millisecond
	}
	return c
}

// options are fast, test-sized agent options.
func (h *harness) options() agent.Options {
	return agent.Options{
		Getenv:         func(k string) string { return h.env[k] },
		Logger:         slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TerminationLog: h.termLog,
		InitTimeout:    3 * time.Second,
		MinBackoff:     20 * time.Millisecond,
		MaxBackoff:     200 * time.Millisecond,
		SDKRetry:       policy.RetryOptions{MaxRetries: -1},
	}
}

// run runs the agent in-process and records its error for the leak check.
func (h *harness) run(ctx context.Context, cfg agentconfig.Config, opts agent.Options) error {
	err := agent.Run(ctx, cfg, opts)
	if err != nil {
		h.output(err.Error())
		h.output(fmt.Sprintf("%+v", err))
	}
	return err
}

// runSidecar starts the agent as a sidecar and returns a stop function that
// cancels it and returns its error.
func (h *harness) runSidecar(cfg agentconfig.Config, opts agent.Options) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.run(ctx, cfg, opts) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("the sidecar did not stop within 10s")
			}
		})
		return err
	}
	h.t.Cleanup(func() { _ = stop() })
	return stop
}

// termination returns the termination log.
func (h *harness) termination() string {
	b, _ := os.ReadFile(h.termLog)
	return string(b)
}

// read returns the content of a visible file.
func (h *harness) read(file string) string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.dir, file))
	if err != nil {
		h.t.Fatalf("reading %s: %v", file, err)
	}
	return string(b)
}

// waitFor polls cond until it holds or the timeout passes.
func (h *harness) waitFor(what string, timeout time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out after %s waiting for %s\nlogs:\n%s", timeout, what, h.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fileIs reports whether a visible file currently holds want.
func (h *harness) fileIs(file, want string) bool {
	b, err := os.ReadFile(filepath.Join(h.dir, file))
	return err == nil && string(b) == want
}
