//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// nodeOptions configure startNode.
type nodeOptions struct {
	// Name is the Node's name.
	Name string
	// Kubelet is the kubelet binary.
	Kubelet string
	// Kubeconfig is the kubelet's credential for the API server.
	Kubeconfig []byte
	// Images are OCI image tarballs to import into containerd before the
	// kubelet starts.
	Images []string
	// SandboxImage is the pause image's reference (one of Images).
	SandboxImage string
	// Kube reads the Node object, to know when the kubelet registered.
	Kube kubernetes.Interface
	// Log receives progress lines.
	Log io.Writer
	// Register hands the node to the caller's teardown before startNode
	// creates anything or starts any process, so that the node can be
	// stopped (Stop, then Remove) even while it is starting. It returns false
	// when the teardown has already begun: startNode then does nothing.
	Register func(*node) bool
}

// node is a containerd and a kubelet started by this process, with all their
// state under one temporary directory.
//
// stopMu serialises start-up steps with side effects (creating the
// directory, starting a process) with Stop: once Stop has begun, nothing
// more starts, and each process is recorded as soon as it runs.
type node struct {
	name string
	// dir holds everything: configuration, state, logs. It is empty until
	// the node's start-up creates it.
	dir string
	// KubeletRoot is the kubelet's --root-dir, PodLogs its podLogsDir.
	KubeletRoot, PodLogs string
	// ContainerdRoot and ContainerdState are containerd's root and state.
	ContainerdRoot, ContainerdState string
	sock                            string
	log                             io.Writer

	containerd, kubelet *process
	// newHostDirs are the hostDirs that did not exist before.
	newHostDirs []string
	// sysctls holds the kernel settings the kubelet changes, to restore them.
	sysctls map[string]string
	// newCgroups are the cgroup folders containerd's containers go under
	// (<hierarchy>/k8s.io, after the namespace) that did not exist before.
	newCgroups []string
	stopMu     sync.Mutex
	stopped    bool
}

// containerLogsDir is where every kubelet puts symlinks to container logs; it
// is not configurable.
const containerLogsDir = "/var/log/containers"

// hostDirs are the folders outside the node's directory that the kubelet and
// containerd write to whatever their configuration says: the kubelet's
// container log symlinks, containerd's shim sockets (/run/containerd/s) and
// the kubelet's device-plugin socket (/var/lib/kubelet/device-plugins). The
// node removes those it created, when they hold nothing but empty folders,
// sockets and symlinks into the node's directory.
var hostDirs = []string{containerLogsDir, "/run/containerd", "/var/lib/kubelet"}

// kubeletSysctls are the kernel settings the kubelet sets at start-up
// (pkg/kubelet/cm setupKernelTunables) unless protectKernelDefaults makes it
// refuse to start instead; the node restores them when it stops.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// errNodeStopped is returned by start-up steps that Stop overtook.
var errNodeStopped = errors.New("the node is being stopped")

// startNode starts containerd, imports the images and starts the kubelet,
// waiting until the Node is registered and the kubelet healthy. It hands the
// node to opts.Register before it creates anything; on error, stopping and
// removing whatever it started is left to that teardown (Stop, then Remove).
func startNode(ctx context.Context, opts nodeOptions) (*node, error) {
	n := &node{name: opts.Name, log: opts.Log, sysctls: map[string]string{}}
	if !opts.Register(n) {
		return nil, errNodeStopped
	}
	if err := n.prepare(); err != nil {
		return nil, err
	}
	if err := n.startContainerd(ctx, opts.SandboxImage); err != nil {
		return nil, err
	}
	for _, img := range opts.Images {
		if out, err := n.ctr(ctx, "images", "import", img); err != nil {
			return nil, fmt.Errorf("importing %s into containerd: %w\n%s", filepath.Base(img), err, out)
		}
	}
	n.logf("containerd has the images %s", n.imageNames(ctx))
	if err := n.startKubelet(ctx, opts); err != nil {
		return nil, err
	}
	return n, nil
}

// prepare records the host state the node changes (the host folders and
// cgroups it creates, the kernel settings the kubelet sets) and creates the
// node's directory. It holds stopMu, so that Stop sees either none or all of
// it.
func (n *node) prepare() error {
	n.stopMu.Lock()
	defer n.stopMu.Unlock()
	if n.stopped {
		return errNodeStopped
	}
	var newHostDirs, newCgroups []string
	for _, d := range hostDirs {
		if _, err := os.Lstat(d); errors.Is(err, os.ErrNotExist) {
			newHostDirs = append(newHostDirs, d)
		}
	}
	for _, h := range cgroupHierarchies() {
		cg := filepath.Join(h, "k8s.io")
		if _, err := os.Stat(cg); errors.Is(err, os.ErrNotExist) {
			newCgroups = append(newCgroups, cg)
		}
	}
	sysctls := map[string]string{}
	for _, k := range kubeletSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", k))
		if err != nil {
			return fmt.Errorf("reading the kernel setting %s: %w", k, err)
		}
		sysctls[k] = strings.TrimSpace(string(b))
	}

	dir, err := os.MkdirTemp("", "kvinject-node-")
	if err != nil {
		return err
	}
	n.dir = dir
	n.KubeletRoot = filepath.Join(dir, "kubelet")
	n.PodLogs = filepath.Join(dir, "pod-logs")
	n.ContainerdRoot = filepath.Join(dir, "containerd", "root")
	n.ContainerdState = filepath.Join(dir, "containerd", "state")
	n.sock = filepath.Join(dir, "containerd.sock")
	n.newHostDirs, n.newCgroups, n.sysctls = newHostDirs, newCgroups, sysctls
	// Containers run as non-root users; let them traverse to their mounts.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{n.KubeletRoot, n.PodLogs, n.ContainerdRoot, n.ContainerdState, filepath.Join(dir, "cni", "net.d"), filepath.Join(dir, "cni", "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// cgroupHierarchies returns the mounted cgroup hierarchies: /sys/fs/cgroup
// alone with cgroup v2 (the unified hierarchy has cgroup.controllers at its
// root), else each cgroup v1 hierarchy mounted under it (with the hybrid
// layout's "unified" among them).
func cgroupHierarchies() []string {
	const root = "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return []string{root}
	}
	procs, _ := filepath.Glob(filepath.Join(root, "*", "cgroup.procs"))
	out := make([]string, 0, len(procs))
	for _, p := range procs {
		out = append(out, filepath.Dir(p))
	}
	return out
}

// startProcess starts a server of the node and records it in *slot at once,
// unless Stop has begun.
func (n *node) startProcess(slot **process, name, logPath, bin string, args ...string) (*process, error) {
	n.stopMu.Lock()
	defer n.stopMu.Unlock()
	if n.stopped {
		return nil, errNodeStopped
	}
	p, err := startProcess(name, logPath, bin, args...)
	if err != nil {
		return nil, err
	}
	*slot = p
	return p, nil
}

// containerdConfig is containerd's configuration: everything under the node's
// directory, CRI streaming on loopback, no TCP, metrics or debug listener, no
// CNI (the pods use the host's network), and the OOM score restriction this
// machine needs (it lacks CAP_SYS_RESOURCE).
func (n *node) containerdConfig(sandboxImage string) string {
	q := strconv.Quote
	return `version = 2
root = ` + q(n.ContainerdRoot) + `
state = ` + q(n.ContainerdState) + `
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = ` + q(n.sock) + `
  tcp_address = ""

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = ` + q(filepath.Join(n.dir, "containerd", "opt")) + `
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = ` + q(sandboxImage) + `
    restrict_oom_score_adj = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = ` + q(filepath.Join(n.dir, "cni", "bin")) + `
      conf_dir = ` + q(filepath.Join(n.dir, "cni", "net.d")) + `
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = ` + q(filepath.Join(n.ContainerdState, "runc")) + `
          SystemdCgroup = false
`
}

func (n *node) startContainerd(ctx context.Context, sandboxImage string) error {
	cfg := filepath.Join(n.dir, "containerd.toml")
	if err := os.WriteFile(cfg, []byte(n.containerdConfig(sandboxImage)), 0o644); err != nil {
		return err
	}
	p, err := n.startProcess(&n.containerd, "containerd", filepath.Join(n.dir, "containerd.log"), "containerd", "--config", cfg)
	if err != nil {
		return err
	}
	n.logf("containerd started (pid %d), socket %s", p.pid(), n.sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := n.ctr(ctx, "version")
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer within 30s (%v: %s); its log:\n%s", err, out, tail(p.logPath, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ctr runs containerd's CLI against this node's containerd, in the CRI
// namespace.
func (n *node) ctr(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, "ctr", append([]string{"--address", n.sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
}

func (n *node) imageNames(ctx context.Context) string {
	out, err := n.ctr(ctx, "images", "list", "--quiet")
	if err != nil {
		return "(unknown: " + err.Error() + ")"
	}
	var names []string
	for _, l := range strings.Fields(string(out)) {
		if !strings.HasPrefix(l, "sha256:") {
			names = append(names, l)
		}
	}
	return strings.Join(names, ", ")
}

// kubeletConfig is the KubeletConfiguration: the settings kubernetes-facts.md
// lists for this kind of machine (cgroup v1 with cgroupfs, no QoS cgroups, no
// node allocatable enforcement), servers on loopback only, no anonymous or
// read-only access, state and pod logs under the node's directory, eviction
// and image garbage collection effectively off (a nearly full disk must not
// evict the test's pods), no iptables changes.
func (n *node) kubeletConfig(port, healthzPort int) string {
	q := strconv.Quote
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: ` + strconv.Itoa(port) + `
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ` + strconv.Itoa(healthzPort) + `
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: ` + q("unix://"+n.sock) + `
podLogsDir: ` + q(n.PodLogs) + `
volumePluginDir: ` + q(filepath.Join(n.dir, "volume-plugins")) + `
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
resolvConf: /etc/resolv.conf
enableDebuggingHandlers: false
`
}

func (n *node) startKubelet(ctx context.Context, opts nodeOptions) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	healthz, err := freePort()
	if err != nil {
		return err
	}
	cfg := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(n.kubeletConfig(port, healthz)), 0o644); err != nil {
		return err
	}
	kc := filepath.Join(n.dir, "kubelet.kubeconfig")
	if err := os.WriteFile(kc, opts.Kubeconfig, 0o600); err != nil {
		return err
	}
	p, err := n.startProcess(&n.kubelet, "kubelet", filepath.Join(n.dir, "kubelet.log"), opts.Kubelet,
		"--config="+cfg,
		"--kubeconfig="+kc,
		"--root-dir="+n.KubeletRoot,
		"--cert-dir="+filepath.Join(n.dir, "kubelet-pki"),
		"--hostname-override="+n.name,
		"--v=2",
	)
	if err != nil {
		return err
	}
	n.logf("kubelet started (pid %d), node %s, healthz on 127.0.0.1:%d", p.pid(), n.name, healthz)

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(90 * time.Second)
	for {
		healthy := false
		if resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(healthz) + "/healthz"); err == nil {
			healthy = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
		if healthy {
			_, err := opts.Kube.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
			if err == nil {
				return nil
			}
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("reading Node %s: %w", n.name, err)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("the kubelet did not register node %s within 90s; its log:\n%s", n.name, tail(p.logPath, 60))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TaskPID returns the host PID of a running container's main process.
func (n *node) TaskPID(ctx context.Context, containerID string) (int, error) {
	out, err := n.ctr(ctx, "tasks", "list")
	if err != nil {
		return 0, fmt.Errorf("listing containerd tasks: %w: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == containerID {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("containerd has no task for container %s", containerID)
}

// Stop stops the kubelet, removes whatever containers are left, stops
// containerd (each by its PID), stops shims left behind, unmounts anything
// still mounted under the node's directory, removes the kubelet's container
// log symlinks and restores the kernel settings the kubelet changed. It keeps
// the directory (see Remove), so that it can be scanned. It returns what had
// to be cleaned up by force. Once it has begun, the node starts nothing more.
func (n *node) Stop() error {
	n.stopMu.Lock()
	defer n.stopMu.Unlock()
	if n.stopped {
		return nil
	}
	n.stopped = true
	if n.dir == "" {
		// Stopped before its start-up created anything (an empty socket
		// path would match every shim on the host).
		return nil
	}
	var problems []string
	if n.kubelet != nil {
		if err := n.kubelet.stop(20 * time.Second); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if n.containerd != nil && !n.containerd.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		problems = append(problems, n.removeContainers(ctx)...)
		cancel()
		if err := n.containerd.stop(20 * time.Second); err != nil {
			problems = append(problems, err.Error())
		}
	}
	for _, pid := range n.shimPIDs() {
		problems = append(problems, fmt.Sprintf("containerd shim %d outlived containerd; killed it", pid))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	mounts, err := n.Mounts()
	if err != nil {
		problems = append(problems, err.Error())
	}
	// Deepest first.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Point) > len(mounts[j].Point) })
	for _, m := range mounts {
		// The kubelet bind-mounts its root folder onto itself (to make it a
		// shared mount for mount propagation) and leaves it so when it stops.
		if m.Point != n.KubeletRoot {
			problems = append(problems, fmt.Sprintf("%s (%s) was still mounted; unmounted it", m.Point, m.FSType))
		}
		if err := syscall.Unmount(m.Point, 0); err != nil {
			if err := syscall.Unmount(m.Point, syscall.MNT_DETACH); err != nil {
				problems = append(problems, fmt.Sprintf("cannot unmount %s: %v", m.Point, err))
			}
		}
	}
	problems = append(problems, n.removeLogSymlinks()...)
	for _, cg := range n.newCgroups {
		// A cgroup folder goes with rmdir once it has no process and no child.
		if err := os.Remove(cg); err != nil && !errors.Is(err, os.ErrNotExist) {
			problems = append(problems, fmt.Sprintf("removing the cgroup %s: %v", cg, err))
		}
	}
	for _, d := range n.newHostDirs {
		problems = append(problems, n.removeCreatedTree(d)...)
	}
	for k, v := range n.sysctls {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			problems = append(problems, fmt.Sprintf("restoring the kernel setting %s: %v", k, err))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// removeContainers kills and deletes every task and container left in
// containerd (pod sandboxes of deleted pods wait for the kubelet's garbage
// collection, which the test does not wait for). Only containers that still
// had a running task are reported.
func (n *node) removeContainers(ctx context.Context) []string {
	var problems []string
	out, err := n.ctr(ctx, "tasks", "list")
	if err != nil {
		return []string{fmt.Sprintf("listing containerd tasks: %v: %s", err, out)}
	}
	for _, line := range strings.Split(string(out), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		if f[2] == "RUNNING" {
			problems = append(problems, fmt.Sprintf("container %s was still running after the kubelet stopped", f[0]))
		}
		// Killing a pod's sandbox task may end its other tasks first.
		if out, err := n.ctr(ctx, "tasks", "delete", "--force", f[0]); err != nil && !bytes.Contains(out, []byte("not found")) {
			problems = append(problems, fmt.Sprintf("deleting task %s: %v: %s", f[0], err, bytes.TrimSpace(out)))
		}
	}
	out, err = n.ctr(ctx, "containers", "list", "--quiet")
	if err != nil {
		return append(problems, fmt.Sprintf("listing containerd containers: %v: %s", err, out))
	}
	if ids := strings.Fields(string(out)); len(ids) > 0 {
		if out, err := n.ctr(ctx, append([]string{"containers", "delete"}, ids...)...); err != nil {
			problems = append(problems, fmt.Sprintf("deleting containers: %v: %s", err, bytes.TrimSpace(out)))
		}
	}
	return problems
}

// shimPIDs returns the PIDs of containerd shims serving this node's
// containerd (their command line names its socket).
func (n *node) shimPIDs() []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && strings.Contains(string(b), n.sock) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeLogSymlinks removes the kubelet's symlinks into this node's pod logs
// from /var/log/containers.
func (n *node) removeLogSymlinks() []string {
	var problems []string
	entries, err := os.ReadDir(containerLogsDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return []string{err.Error()}
	}
	for _, e := range entries {
		p := filepath.Join(containerLogsDir, e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, n.PodLogs+"/") {
			if err := os.Remove(p); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	return problems
}

// removeCreatedTree removes dir, which did not exist before the node
// started, with the empty folders, sockets and symlinks into the node's
// directory under it; it reports anything else and leaves it in place.
func (n *node) removeCreatedTree(dir string) []string {
	var problems []string
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []string{err.Error()}
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.IsDir():
			problems = append(problems, n.removeCreatedTree(p)...)
		case e.Type()&os.ModeSocket != 0:
			if err := os.Remove(p); err != nil {
				problems = append(problems, err.Error())
			}
		case e.Type()&os.ModeSymlink != 0:
			if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, n.dir+"/") {
				if err := os.Remove(p); err != nil {
					problems = append(problems, err.Error())
				}
				continue
			}
			problems = append(problems, fmt.Sprintf("%s was left behind", p))
		default:
			problems = append(problems, fmt.Sprintf("%s was left behind", p))
		}
	}
	if len(problems) == 0 {
		if err := os.Remove(dir); err != nil {
			problems = append(problems, err.Error())
		}
	}
	return problems
}

// Remove deletes the node's directory (after Stop), unless anything is still
// mounted under it: a recursive removal would descend into the mounts and
// delete what they show (a bind mount's host folder), so it then keeps the
// directory and returns an error.
func (n *node) Remove() error {
	if err := n.CheckUnmounted(); err != nil {
		return err
	}
	if n.dir == "" {
		return nil
	}
	if err := os.RemoveAll(n.dir); err != nil {
		return fmt.Errorf("removing %s: %w", n.dir, err)
	}
	return nil
}

// CheckUnmounted returns an error when something is still mounted under the
// node's directory, or when the mounts cannot be read.
func (n *node) CheckUnmounted() error {
	mounts, err := n.Mounts()
	if err != nil {
		return fmt.Errorf("cannot tell what is mounted under %s: %w", n.dir, err)
	}
	if len(mounts) > 0 {
		points := make([]string, len(mounts))
		for i, m := range mounts {
			points[i] = m.Point + " (" + m.FSType + ")"
		}
		return fmt.Errorf("still mounted under %s: %s", n.dir, strings.Join(points, ", "))
	}
	return nil
}

// mount is one line of /proc/self/mountinfo.
type mount struct {
	Point, FSType, Options, SuperOptions string
}

// readMounts parses a mountinfo file.
func readMounts(file string) ([]mount, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 6 || len(fields) < sep+4 {
			continue
		}
		out = append(out, mount{Point: unescapeMount(fields[4]), Options: fields[5], FSType: fields[sep+1], SuperOptions: fields[sep+3]})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Mounts returns the host's mounts under the node's directory.
func (n *node) Mounts() ([]mount, error) {
	if n.dir == "" {
		return nil, nil
	}
	all, err := readMounts("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []mount
	for _, m := range all {
		if m.Point == n.dir || strings.HasPrefix(m.Point, n.dir+"/") {
			out = append(out, m)
		}
	}
	return out, nil
}

// PodVolumeDir is where the kubelet puts a pod's volume of a plugin
// ("kubernetes.io~empty-dir", "kubernetes.io~projected").
func (n *node) PodVolumeDir(uid, plugin, volume string) string {
	return filepath.Join(n.KubeletRoot, "pods", uid, "volumes", plugin, volume)
}

// ContainerLogDir is the folder of one container's logs (0.log, 1.log, ...).
func (n *node) ContainerLogDir(namespace, pod, uid, container string) string {
	return filepath.Join(n.PodLogs, namespace+"_"+pod+"_"+uid, container)
}

func (n *node) logf(format string, args ...any) {
	if n.log != nil {
		fmt.Fprintf(n.log, "node: "+format+"\n", args...)
	}
}

// process is a server this test started, known by its PID.
type process struct {
	name, logPath string
	cmd           *exec.Cmd
	logFile       *os.File
	done          chan struct{}
	err           error
}

func startProcess(name, logPath, bin string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so that a terminal's ^C reaches this test, which
	// then stops it in order, rather than the server directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, logFile: logFile, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process (its PID only) and SIGKILL after grace.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = syscall.Kill(p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		_ = syscall.Kill(p.pid(), syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s (pid %d) did not stop within %s of SIGTERM; killed it", p.name, p.pid(), grace)
	}
}

// tail returns the last n lines of a file.
func tail(file string, n int) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
