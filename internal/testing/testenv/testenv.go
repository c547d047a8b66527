// Package testenv runs kvinject end to end on one machine: a real kube-apiserver and
// etcd (controller-runtime's envtest, binaries from KUBEBUILDER_ASSETS) with the
// project's own MutatingWebhookConfiguration from manifests/, the real webhook and
// agent binaries, and the Key Vault + Azure AD emulator. The integration tests and
// `make demo` both use it, so the demo shows exactly what the tests prove. It is
// test-only (hence internal/testing): no shipped binary links it.
//
// Everything listens on 127.0.0.1 and Stop ends everything Start started.
package testenv

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kvinject/kvinject/internal/testing/emulator"
)

// AgentImage is the agent image the test webhook injects (never pulled: the tests
// run the agent binary directly).
const AgentImage = "ghcr.io/kvinject/agent:test"

// Options configure Start.
type Options struct {
	// WebhookArgs are extra flags for the webhook (defaults, policy).
	WebhookArgs []string
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// EmulatorLogger receives the emulator's request log; nil discards it.
	EmulatorLogger *slog.Logger
	// EmulatorLatency is added to every Key Vault and Azure AD request.
	EmulatorLatency time.Duration
	// BinDir, when set, holds prebuilt webhook and agent binaries (see Build):
	// Start copies them instead of building, so a caller can keep the build
	// outside a time budget. Empty: Start builds them.
	BinDir string
	// Hub runs the version hub (see hubproc.go) and gives the webhook --hub-url.
	Hub bool
	// HubSweepInterval is the hub's --sweep-interval (default 2s).
	HubSweepInterval time.Duration
	// HubArgs are extra flags for the hub (after the environment's own: a
	// flag given here wins).
	HubArgs []string
	// HubReplicas is the number of hub processes (default 1). With more than
	// one, they all listen on the hub's one address with --bind-reuse-port
	// (the kernel spreads new connections across them, standing in for a
	// Service in front of a Deployment's replicas) and --replicas set to this
	// number; each has its own metrics and probe ports, process and log
	// (hub-<i>.log).
	HubReplicas int
	// HubEnv is extra environment for the hub processes, such as the
	// installs' GOMEMLIMIT.
	HubEnv []string
	// HubEvents gives the hub Key Vault events: the emulator's queue
	// EventsQueueURL, which the hub's identity may peek and process, is its
	// --events-queue, and the hub gets the install's events RBAC (the
	// Lease). Subscribe a vault with
	// Emulator.SubscribeEvents(vault, EventsAccount, EventsQueue, opts).
	HubEvents bool
}

// Env is a running control plane, webhook and emulator.
type Env struct {
	Root     string // repository root
	BinDir   string // built webhook and agent binaries
	API      *envtest.Environment
	Config   *rest.Config
	Client   client.Client
	Kube     kubernetes.Interface
	Emulator *emulator.Emulator
	// CAFile holds the emulator's CA, for the agent's test-only trust option.
	CAFile string

	opts       Options
	work       string
	kubeconfig string
	mu         sync.Mutex
	webhook    *exec.Cmd
	webhookLog *os.File
	probeAddr  string
	hub        *hubProc
}

// Start builds (or copies, see Options.BinDir) the binaries and starts the emulator, the control plane (with the
// ServiceAccount and Pod Security admission plugins) and the webhook.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is not set: run through `make test-integration` or `make demo`, which build kube-apiserver and etcd into a cache")
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "kvinject-env-")
	if err != nil {
		return nil, err
	}
	// The agent may run as another user (see StartAgent): it must reach its binary,
	// the CA file and its directories.
	if err := os.Chmod(work, 0o755); err != nil {
		return nil, err
	}
	e := &Env{Root: root, BinDir: filepath.Join(work, "bin"), opts: opts, work: work}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()

	if opts.BinDir != "" {
		if err := copyBinaries(opts.BinDir, e.BinDir); err != nil {
			return nil, err
		}
	} else {
		e.logf("building the webhook and agent binaries")
		if err := Build(ctx, root, e.BinDir); err != nil {
			return nil, err
		}
	}

	e.logf("starting the Key Vault + Azure AD emulator")
	logger := opts.EmulatorLogger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if e.Emulator, err = emulator.Start(emulator.Options{Logger: logger, Latency: opts.EmulatorLatency}); err != nil {
		return nil, fmt.Errorf("starting the emulator: %w", err)
	}
	e.CAFile = filepath.Join(work, "emulator-ca.pem")
	if err := os.WriteFile(e.CAFile, e.Emulator.CAPEM(), 0o644); err != nil {
		return nil, err
	}

	e.logf("starting kube-apiserver and etcd (envtest) with the webhook configuration from manifests/webhook")
	e.API = &envtest.Environment{
		WebhookInstallOptions: envtest.WebhookInstallOptions{Paths: []string{filepath.Join(root, "manifests", "webhook")}},
		// The CRDs of other projects that kvinject reads (SecretProviderClass).
		CRDDirectoryPaths:     []string{filepath.Join(root, "test", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	// envtest turns the ServiceAccount admission plugin off; a real cluster has it.
	e.API.ControlPlane.GetAPIServer().Configure().Set("disable-admission-plugins", "")
	if e.Config, err = e.API.Start(); err != nil {
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	if e.Client, err = client.New(e.Config, client.Options{}); err != nil {
		return nil, err
	}
	if e.Kube, err = kubernetes.NewForConfig(e.Config); err != nil {
		return nil, err
	}
	user, err := e.API.AddUser(envtest.User{Name: "kvinject-webhook", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	e.kubeconfig = filepath.Join(work, "webhook.kubeconfig")
	if err := os.WriteFile(e.kubeconfig, kc, 0o600); err != nil {
		return nil, err
	}
	if opts.Hub {
		if err := e.prepareHub(); err != nil {
			return nil, err
		}
	}
	if err := e.StartWebhook(ctx); err != nil {
		return nil, err
	}
	if opts.Hub {
		if err := e.startHub(ctx); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Binaries are the commands Start needs, as `go build` names them.
var Binaries = []string{"webhook", "agent", "hub"}

// Build compiles the webhook and agent (static, as in the images) from the
// repository at root into dir. On a cold build cache this takes minutes.
func Build(ctx context.Context, root, dir string) error {
	args := []string{"build", "-trimpath", "-o", dir + "/"}
	for _, b := range Binaries {
		args = append(args, "./cmd/"+b)
	}
	build := exec.CommandContext(ctx, "go", args...)
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(args[4:], " "), err, out)
	}
	return nil
}

// copyBinaries copies prebuilt binaries into the environment's own folder, which
// an agent running as another user can reach (see StartAgent).
func copyBinaries(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	for _, b := range Binaries {
		data, err := os.ReadFile(filepath.Join(from, b))
		if err != nil {
			return fmt.Errorf("prebuilt binaries: %w (build them with `make demo`, or leave Options.BinDir empty)", err)
		}
		if err := os.WriteFile(filepath.Join(to, b), data, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// StartWebhook starts the webhook binary on the port the webhook configuration
// points at and waits until it is ready.
func (e *Env) StartWebhook(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.webhook != nil {
		return nil
	}
	wio := e.API.WebhookInstallOptions
	probe, err := freePort()
	if err != nil {
		return err
	}
	e.probeAddr = "127.0.0.1:" + strconv.Itoa(probe)
	args := append([]string{
		"--kubeconfig=" + e.kubeconfig,
		"--cert-dir=" + wio.LocalServingCertDir,
		"--host=" + wio.LocalServingHost,
		"--port=" + strconv.Itoa(wio.LocalServingPort),
		"--metrics-bind-address=0",
		"--health-probe-bind-address=" + e.probeAddr,
		"--agent-image=" + AgentImage,
	}, e.opts.WebhookArgs...)
	logFile, err := os.OpenFile(filepath.Join(e.work, "webhook.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.BinDir, "webhook"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting the webhook: %w", err)
	}
	e.webhook, e.webhookLog = cmd, logFile
	e.logf("webhook listening on https://%s:%d%s", wio.LocalServingHost, wio.LocalServingPort, "/mutate-v1-pod")
	return e.waitReady(ctx, wio)
}

// waitReady waits for /readyz and for the TLS listener the API server calls.
func (e *Env) waitReady(ctx context.Context, wio envtest.WebhookInstallOptions) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := http.Get("http://" + e.probeAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				conn, err := tls.Dial("tcp", net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort)), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // readiness only
				if err == nil {
					conn.Close()
					return nil
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the webhook was not ready within 30s; its log:\n%s", e.WebhookLog())
}

// StopWebhook stops the webhook process (SIGTERM, then SIGKILL after 10s).
func (e *Env) StopWebhook() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.webhook == nil {
		return
	}
	_ = e.webhook.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = e.webhook.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = e.webhook.Process.Kill()
		<-done
	}
	e.webhookLog.Close()
	e.webhook = nil
}

// WebhookLog returns what the webhook has logged so far.
func (e *Env) WebhookLog() string {
	b, _ := os.ReadFile(filepath.Join(e.work, "webhook.log"))
	return string(b)
}

// Stop ends everything Start started and removes the working directory.
func (e *Env) Stop() {
	e.StopHub()
	e.StopWebhook()
	if e.API != nil && e.Config != nil {
		_ = e.API.Stop()
	}
	if e.Emulator != nil {
		_ = e.Emulator.Close()
	}
	_ = os.RemoveAll(e.work)
}

// TempDir returns a new directory inside the environment's working directory.
func (e *Env) TempDir(prefix string) (string, error) {
	return os.MkdirTemp(e.work, prefix)
}

// EnsureNamespace creates a namespace (with annotations and labels) and the
// ServiceAccounts given, each with its annotations.
func (e *Env) EnsureNamespace(ctx context.Context, name string, labels, annotations map[string]string, serviceAccounts map[string]map[string]string) error {
	ns := &corev1.Namespace{}
	ns.Name, ns.Labels, ns.Annotations = name, labels, annotations
	if err := e.Client.Create(ctx, ns); err != nil {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	for sa, ann := range serviceAccounts {
		obj := &corev1.ServiceAccount{}
		obj.Namespace, obj.Name, obj.Annotations = name, sa, ann
		if err := e.Client.Create(ctx, obj); err != nil {
			return fmt.Errorf("creating ServiceAccount %s/%s: %w", name, sa, err)
		}
	}
	return nil
}

// Issuer returns the API server's ServiceAccount token issuer.
func (e *Env) Issuer() string {
	return e.API.ControlPlane.APIServer.SecureServing.URL("https", "/").String()
}

func (e *Env) logf(format string, args ...any) {
	if e.opts.Log != nil {
		fmt.Fprintf(e.opts.Log, format+"\n", args...)
	}
}

// RepoRoot finds the module root from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/kvinject/kvinject") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the kvinject repository")
		}
		dir = parent
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
