//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kvinject/kvinject/internal/images"
	"github.com/kvinject/kvinject/internal/testing/testenv"
)

// Image references. No registry serves them: they are imported into the
// node's containerd, and pods never pull.
const (
	agentImage   = "kvinject.local/agent:e2e"
	appImage     = "kvinject.local/e2e-app:e2e"
	sandboxImage = "kvinject.local/pause:e2e"
)

// nodeName is the Node the kubelet registers.
const nodeName = "kvinject-e2e"

// testCADir holds the emulator's CA in the test agent image.
const testCADir = "kvinject-test"

// env and theNode are for the tests: run sets them before m.Run. The teardown
// does not read them; it has its own copies, under a mutex.
var (
	env       *testenv.Env
	theNode   *node
	emulatorL lockedBuffer // the emulator's request log (never values or tokens)
)

func TestMain(m *testing.M) {
	flag.Parse()
	// envtest logs through controller-runtime, which otherwise complains
	// (with a stack trace) that no logger was set.
	ctrllog.SetLogger(logr.Discard())
	os.Exit(run(m))
}

// teardown stops what run started, once: at the end, or earlier on SIGINT or
// SIGTERM, or shortly before `go test -timeout` would kill the test binary,
// which would leave containerd, the kubelet and their mounts behind. What is
// to be stopped is registered under mu as soon as it exists (the node before
// it starts any process); once the teardown has begun (closed), registering
// fails.
var teardown struct {
	once sync.Once
	code int

	mu     sync.Mutex
	closed bool
	cancel context.CancelFunc // ends run's start-up
	env    *testenv.Env
	node   *node
}

// register runs set, which records something for the teardown, unless the
// teardown has begun; it reports whether it ran set.
func register(set func()) bool {
	teardown.mu.Lock()
	defer teardown.mu.Unlock()
	if teardown.closed {
		return false
	}
	set()
	return true
}

func stopAll() int {
	teardown.once.Do(func() {
		teardown.mu.Lock()
		teardown.closed = true
		cancel, e, n := teardown.cancel, teardown.env, teardown.node
		teardown.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		teardown.code = stopEverything(e, n)
	})
	return teardown.code
}

// stopEverything stops the node and removes its directory, unless something
// is still mounted under it (which fails the run), then the control plane.
func stopEverything(e *testenv.Env, n *node) int {
	code := 0
	if n != nil {
		if err := n.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: stopping the node: %v\n", err)
			code = 1
		}
		if err := n.CheckUnmounted(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v; left %s in place\n", err, n.dir)
			code = 1
		} else if os.Getenv("KVINJECT_E2E_KEEP") != "" {
			fmt.Fprintf(os.Stderr, "e2e: KVINJECT_E2E_KEEP is set: left %s in place\n", n.dir)
		} else if err := n.Remove(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			code = 1
		}
	}
	if e != nil {
		e.Stop()
	}
	return code
}

func run(m *testing.M) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "e2e: "+format+"\n", args...)
		return 1
	}
	if os.Geteuid() != 0 {
		return fail("these tests run containerd and a kubelet and need root; run them with `make e2e-kubelet` as root")
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	kubelet := filepath.Join(assets, "kubelet")
	if _, err := os.Stat(kubelet); assets == "" || err != nil {
		return fail("no kubelet in KUBEBUILDER_ASSETS (%q): run through `make e2e-kubelet`, which builds it into the cache", assets)
	}
	for _, tool := range []string{"containerd", "ctr", "runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fail("%s is not installed: `make e2e-kubelet` installs Debian's containerd and runc (hack/kubelet.sh)", tool)
		}
	}

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	register(func() { teardown.cancel = cancel })
	defer stopAll()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "e2e: %s: stopping the node and the control plane\n", sig)
		stopAll()
		os.Exit(1)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 2*time.Minute {
			time.AfterFunc(d-time.Minute, func() {
				fmt.Fprintf(os.Stderr, "e2e: the tests are about to reach -timeout %s: stopping the node and the control plane\n", d)
				stopAll()
				os.Exit(1)
			})
		}
	}

	var err error
	env, err = testenv.Start(ctx, testenv.Options{
		WebhookArgs:      []string{"--agent-image=" + agentImage},
		Hub:              true,
		HubSweepInterval: hubSweep,
		Log:              os.Stderr,
		EmulatorLogger:   slog.New(slog.NewJSONHandler(&emulatorL, nil)),
	})
	if err != nil {
		return fail("starting the control plane, webhook and emulator: %v", err)
	}
	if e := env; !register(func() { teardown.env = e }) {
		// The teardown began while it started.
		e.Stop()
		return 1
	}

	imgDir, err := env.TempDir("images-")
	if err != nil {
		return fail("%v", err)
	}
	tarballs, err := buildImages(ctx, imgDir)
	if err != nil {
		return fail("building the images: %v", err)
	}

	user, err := env.API.AddUser(envtest.User{Name: "system:node:" + nodeName, Groups: []string{"system:nodes", "system:masters"}}, nil)
	if err != nil {
		return fail("creating the kubelet's credential: %v", err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return fail("%v", err)
	}
	theNode, err = startNode(ctx, nodeOptions{
		Name: nodeName, Kubelet: kubelet, Kubeconfig: kubeconfig,
		Images: tarballs, SandboxImage: sandboxImage, Kube: env.Kube, Log: os.Stderr,
		Register: func(n *node) bool { return register(func() { teardown.node = n }) },
	})
	if err != nil {
		return fail("starting the node: %v", err)
	}
	fmt.Fprintf(os.Stderr, "e2e: control plane, webhook, emulator, images and node ready in %s\n", time.Since(start).Round(100*time.Millisecond))

	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- webhook log (tail) ---\n%s\n", lastLines(env.WebhookLog(), 30))
		fmt.Fprintf(os.Stderr, "--- kubelet log (tail) ---\n%s\n", tail(filepath.Join(theNode.dir, "kubelet.log"), 60))
		fmt.Fprintf(os.Stderr, "--- containerd log (tail) ---\n%s\n", tail(filepath.Join(theNode.dir, "containerd.log"), 30))
	}
	if stopAll() != 0 {
		code = 1
	}
	return code
}

// buildImages builds the three images into dir and returns their tarballs:
//   - the agent: exactly the image `make images` builds (internal/images,
//     Agent) from the agent binary testenv built, plus one test-only layer
//     with the emulator's CA and the agent's two test-only settings
//     (KVINJECT_TEST_CA_FILE: trust only that CA; KVINJECT_TEST_RESOLVE: dial
//     the emulator for the real Azure host names). TLS stays fully verified;
//     the webhook sets neither;
//   - the test app (test/e2e/app) and the pod sandbox (test/e2e/pause), on
//     the same base.
func buildImages(ctx context.Context, dir string) ([]string, error) {
	platform := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	epoch := time.Unix(0, 0)
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", dir+"/", "./test/e2e/app", "./test/e2e/pause")
	build.Dir, build.Env = env.Root, append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}

	agentBin, err := os.ReadFile(filepath.Join(env.BinDir, "agent"))
	if err != nil {
		return nil, err
	}
	agent, err := images.Build(images.Agent.Spec(agentBin, platform, "e2e", "https://github.com/kvinject/kvinject", epoch))
	if err != nil {
		return nil, err
	}
	caFile := "/" + testCADir + "/emulator-ca.pem"
	agent, err = images.Extend(agent,
		[]images.File{
			{Path: testCADir, Mode: fs.ModeDir | 0o755},
			{Path: strings.TrimPrefix(caFile, "/"), Mode: 0o644, Data: env.Emulator.CAPEM()},
		},
		[]string{"KVINJECT_TEST_CA_FILE=" + caFile, "KVINJECT_TEST_RESOLVE=" + env.ResolveOverride()},
		epoch, "kvinject test/e2e: the Key Vault emulator's CA and the agent's test-only settings")
	if err != nil {
		return nil, err
	}

	type image struct {
		ref string
		img v1.Image
	}
	all := []image{{agentImage, agent}}
	for _, p := range []struct{ ref, bin, path, title string }{
		{appImage, "app", "/kvinject-e2e-app", "kvinject-e2e-app"},
		{sandboxImage, "pause", "/pause", "kvinject-e2e-pause"},
	} {
		bin, err := os.ReadFile(filepath.Join(dir, p.bin))
		if err != nil {
			return nil, err
		}
		img, err := images.Build(images.Spec{
			Binary: bin, BinaryPath: p.path, OS: platform.OS, Arch: platform.Architecture,
			Title: p.title, Version: "e2e", SourceDateEpoch: epoch,
		})
		if err != nil {
			return nil, err
		}
		all = append(all, image{p.ref, img})
	}
	var files []string
	for _, im := range all {
		file := filepath.Join(dir, strings.NewReplacer("/", "_", ":", "_").Replace(im.ref)+".tar")
		if _, err := images.WriteArchiveFile(file, im.ref, []v1.Image{im.img}); err != nil {
			return nil, err
		}
		files = append(files, file)
	}
	return files, nil
}

// lockedBuffer is an io.Writer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
