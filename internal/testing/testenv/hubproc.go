package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testcert"
)

// The version hub as the test environment runs it (Options.Hub): the hub binary
// on 127.0.0.1, reached by the agents under its Service name through their
// test-only dial override, with a serving certificate of a CA the webhook
// injects (--hub-ca-file), a Kubernetes user bound to exactly the install's
// hub ClusterRole, and a managed identity of its own in the emulator that is
// granted list only (GrantHub).
const (
	// HubHost is the hub Service's name, as in the installs.
	HubHost = "kvinject-hub.kvinject-system.svc"
	// HubUser is the Kubernetes user the hub runs as: its ServiceAccount's name.
	HubUser = "system:serviceaccount:kvinject-system:kvinject-hub"
	// HubClientID is the client ID of the hub's managed identity in the emulator.
	HubClientID = "0d7a6c41-6b1f-4f5e-9c8e-4b5d0f0a1b2c"
	// HubURL is the --hub-url the webhook is given.
	HubURL = "https://" + HubHost
)

// HubRBACFile is the install's RBAC of the hub, relative to the repository
// root: the hub of the tests gets exactly its ClusterRole.
const HubRBACFile = "manifests/components/hub/hub-rbac.yaml"

// HubEventsRBACFile is the install's RBAC of the hub with Key Vault events:
// the hub of the tests with Options.HubEvents gets exactly its Role.
const HubEventsRBACFile = "manifests/components/hub-events/events-rbac.yaml"

// The emulator's Storage queue of Key Vault events (Options.HubEvents).
const (
	EventsAccount = "kvinjectevents"
	EventsQueue   = "kvinject-events"
	// HubNamespace is the hub's namespace: its POD_NAMESPACE, where its
	// events Lease lives.
	HubNamespace = "kvinject-system"
)

// EventsQueueURL is the hub's --events-queue with Options.HubEvents.
var EventsQueueURL = emulator.QueueURL(EventsAccount, EventsQueue)

// installRole reads the role of this kind (Role or ClusterRole) in the
// install's RBAC file (relative to root): its name and rules.
func installRole(root, file, kind string) (string, []rbacv1.PolicyRule, error) {
	data, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		return "", nil, err
	}
	for _, doc := range strings.Split(string(data), "\n---") {
		var r struct {
			Kind     string              `json:"kind"`
			Metadata metav1.ObjectMeta   `json:"metadata"`
			Rules    []rbacv1.PolicyRule `json:"rules"`
		}
		if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
			return "", nil, fmt.Errorf("%s: %w", file, err)
		}
		if r.Kind == kind {
			return r.Metadata.Name, r.Rules, nil
		}
	}
	return "", nil, fmt.Errorf("%s holds no %s", file, kind)
}

// grantHubEvents gives the hub's user the install's events Role in
// HubNamespace, and its identity the role Storage Queue Data Message
// Processor (peek and process) on the emulator's events queue.
func (e *Env) grantHubEvents(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: HubNamespace}}
	if err := e.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", HubNamespace, err)
	}
	name, rules, err := installRole(e.Root, HubEventsRBACFile, "Role")
	if err != nil {
		return err
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: HubNamespace}, Rules: rules}
	if err := e.Client.Create(ctx, role); err != nil {
		return fmt.Errorf("hub events Role: %w", err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name, Namespace: HubNamespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: HubUser}},
	}
	if err := e.Client.Create(ctx, binding); err != nil {
		return fmt.Errorf("hub events RoleBinding: %w", err)
	}
	if err := e.Emulator.AddQueue(EventsAccount, EventsQueue); err != nil {
		return err
	}
	return e.Emulator.GrantQueue(EventsAccount, EventsQueue, HubClientID, emulator.PermQueuePeek, emulator.PermQueueProcess)
}

// hubProc is the hub: one or more replicas (Options.HubReplicas) on one
// address.
type hubProc struct {
	addr    string
	certDir string
	reps    []*hubReplica
}

// hubReplica is one hub process.
type hubReplica struct {
	probeAddr, metricsAddr string
	logPath                string
	cmd                    *exec.Cmd
	log                    *os.File
	done                   chan struct{}
}

// prepareHub writes the hub's certificate and reserves its ports, before the
// webhook starts (the webhook is given --hub-url and --hub-ca-file).
func (e *Env) prepareHub() error {
	dir := filepath.Join(e.work, "hub-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeHubCert(dir); err != nil {
		return fmt.Errorf("hub certificate: %w", err)
	}
	n := max(e.opts.HubReplicas, 1)
	ports := make([]string, 1+2*n)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	e.hub = &hubProc{addr: ports[0], certDir: dir}
	for i := range n {
		logPath := filepath.Join(e.work, "hub.log")
		if n > 1 {
			logPath = filepath.Join(e.work, "hub-"+strconv.Itoa(i)+".log")
		}
		e.hub.reps = append(e.hub.reps, &hubReplica{probeAddr: ports[1+2*i], metricsAddr: ports[2+2*i], logPath: logPath})
	}
	e.opts.WebhookArgs = append(e.opts.WebhookArgs, "--hub-url="+HubURL, "--hub-ca-file="+filepath.Join(dir, "ca.crt"))
	return nil
}

// startHub gives the hub its user and RBAC, its identity in the emulator, and
// starts it.
func (e *Env) startHub(ctx context.Context) error {
	user, err := e.API.AddUser(envtest.User{Name: HubUser, Groups: []string{"system:serviceaccounts", "system:authenticated"}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(e.work, "hub.kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return err
	}
	name, rules, err := installRole(e.Root, HubRBACFile, "ClusterRole")
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
	if err := e.Client.Create(ctx, role); err != nil {
		return fmt.Errorf("hub ClusterRole: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kvinject-hub"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: HubUser}},
	}
	if err := e.Client.Create(ctx, binding); err != nil {
		return fmt.Errorf("hub ClusterRoleBinding: %w", err)
	}
	if err := e.Emulator.AddManagedIdentity(HubClientID); err != nil {
		return err
	}
	if e.opts.HubEvents {
		if err := e.grantHubEvents(ctx); err != nil {
			return err
		}
	}
	return e.StartHub(ctx)
}

// StartHub starts every hub replica that is not running (all of them at
// first, again after StopHub, or one that was stopped or killed) and waits
// until each is ready.
func (e *Env) StartHub(ctx context.Context) error {
	if e.hub == nil {
		return fmt.Errorf("the environment was started without Options.Hub")
	}
	for i := range e.hub.reps {
		if err := e.StartHubReplica(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// HubReplicas is the number of hub replicas (Options.HubReplicas; 0 without a
// hub).
func (e *Env) HubReplicas() int {
	if e.hub == nil {
		return 0
	}
	return len(e.hub.reps)
}

// HubAddr is the address every hub replica listens on (the agents reach it as
// HubHost through ResolveOverride).
func (e *Env) HubAddr() string {
	if e.hub == nil {
		return ""
	}
	return e.hub.addr
}

// replica returns hub replica i.
func (e *Env) replica(i int) (*hubReplica, error) {
	if e.hub == nil {
		return nil, fmt.Errorf("the environment was started without Options.Hub")
	}
	if i < 0 || i >= len(e.hub.reps) {
		return nil, fmt.Errorf("no hub replica %d: the environment runs %d", i, len(e.hub.reps))
	}
	return e.hub.reps[i], nil
}

// StartHubReplica starts hub replica i if it is not running and waits until
// it is ready. With more than one replica, each listens on the hub's one
// address with --bind-reuse-port and is given --replicas.
func (e *Env) StartHubReplica(ctx context.Context, i int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	h, err := e.replica(i)
	if err != nil {
		return err
	}
	if h.cmd != nil {
		return nil
	}
	sweep := e.opts.HubSweepInterval
	if sweep == 0 {
		sweep = 2 * time.Second
	}
	args := []string{
		"--kubeconfig=" + filepath.Join(e.work, "hub.kubeconfig"),
		"--cert-dir=" + e.hub.certDir,
		"--bind-address=" + e.hub.addr,
		"--metrics-bind-address=" + h.metricsAddr,
		"--health-probe-bind-address=" + h.probeAddr,
		"--identity=managed",
		"--sweep-interval=" + sweep.String(),
	}
	if n := len(e.hub.reps); n > 1 {
		args = append(args, "--bind-reuse-port", "--replicas="+strconv.Itoa(n))
	}
	if e.opts.HubEvents {
		args = append(args, "--events-queue="+EventsQueueURL)
	}
	args = append(args, e.opts.HubArgs...)
	logFile, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.BinDir, "hub"), args...)
	cmd.Env = []string{
		"AZURE_CLIENT_ID=" + HubClientID,
		"IDENTITY_ENDPOINT=" + e.Emulator.MSIEndpoint(),
		"IDENTITY_HEADER=" + e.Emulator.IdentityHeader(),
		"KVINJECT_TEST_CA_FILE=" + e.CAFile,
		"KVINJECT_TEST_RESOLVE=" + e.emulatorResolve(),
		"POD_NAMESPACE=" + HubNamespace,
		"PATH=" + os.Getenv("PATH"),
	}
	cmd.Env = append(cmd.Env, e.opts.HubEnv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("starting the hub: %w", err)
	}
	h.cmd, h.log, h.done = cmd, logFile, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(h.done)
	if len(e.hub.reps) > 1 {
		e.logf("hub replica %d (PID %d) listening on https://%s (as %s)", i, cmd.Process.Pid, e.hub.addr, HubURL)
	} else {
		e.logf("hub listening on https://%s (as %s)", e.hub.addr, HubURL)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		select {
		case <-h.done:
			return fmt.Errorf("the hub exited at start; its log:\n%s", readFile(h.logPath))
		default:
		}
		if resp, err := http.Get("http://" + h.probeAddr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the hub was not ready within 30s; its log:\n%s", readFile(h.logPath))
}

// StopHub stops every hub replica (SIGTERM, then SIGKILL after 10s).
func (e *Env) StopHub() {
	if e.hub == nil {
		return
	}
	for i := range e.hub.reps {
		e.StopHubReplica(i)
	}
}

// StopHubReplica stops hub replica i (SIGTERM, then SIGKILL after 10s): it
// answers its held watches with 503 and a short Retry-After.
func (e *Env) StopHubReplica(i int) {
	e.stopReplica(i, os.Interrupt)
}

// KillHubReplica kills hub replica i with SIGKILL, as a crashed or evicted
// pod: its connections are closed without an answer.
func (e *Env) KillHubReplica(i int) error {
	if _, err := e.replica(i); err != nil {
		return err
	}
	e.stopReplica(i, os.Kill)
	return nil
}

func (e *Env) stopReplica(i int, sig os.Signal) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h, err := e.replica(i)
	if err != nil || h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(sig)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.done
	}
	h.log.Close()
	h.cmd = nil
}

// HubPIDs are the process IDs of the hub replicas (0 for one not running).
func (e *Env) HubPIDs() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.hub == nil {
		return nil
	}
	pids := make([]int, len(e.hub.reps))
	for i, h := range e.hub.reps {
		if h.cmd != nil {
			pids[i] = h.cmd.Process.Pid
		}
	}
	return pids
}

// HubLog returns what the hub has logged so far: with several replicas, each
// replica's log after a header line.
func (e *Env) HubLog() string {
	if e.hub == nil {
		return ""
	}
	if len(e.hub.reps) == 1 {
		return readFile(e.hub.reps[0].logPath)
	}
	var b strings.Builder
	for i, h := range e.hub.reps {
		fmt.Fprintf(&b, "=== hub replica %d (%s)\n%s", i, filepath.Base(h.logPath), readFile(h.logPath))
	}
	return b.String()
}

// HubReplicaLog returns what hub replica i has logged so far.
func (e *Env) HubReplicaLog(i int) string {
	h, err := e.replica(i)
	if err != nil {
		return ""
	}
	return readFile(h.logPath)
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// HubMetrics returns the hub's Prometheus metrics text: with several
// replicas, the texts of those running one after the other, so that MetricSum
// adds them up (a replica that does not answer is left out; an error only when
// none answers).
func (e *Env) HubMetrics() (string, error) {
	if e.hub == nil {
		return "", fmt.Errorf("no hub")
	}
	var b strings.Builder
	var firstErr error
	answered := 0
	for i := range e.hub.reps {
		text, err := e.HubReplicaMetrics(i)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		answered++
		b.WriteString(text)
		if !strings.HasSuffix(text, "\n") {
			b.WriteString("\n")
		}
	}
	if answered == 0 {
		return "", firstErr
	}
	return b.String(), nil
}

// HubReplicaMetrics returns hub replica i's Prometheus metrics text.
func (e *Env) HubReplicaMetrics(i int) (string, error) {
	h, err := e.replica(i)
	if err != nil {
		return "", err
	}
	resp, err := http.Get("http://" + h.metricsAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// MetricSum sums the samples of the Prometheus metric name in a /metrics
// text whose labels contain every one of labels (e.g. `op="list_secrets"`).
func MetricSum(text, name string, labels ...string) float64 {
	var sum float64
	for line := range strings.Lines(text) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		lbls, value := "", strings.TrimSpace(rest)
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			lbls, value = rest[:end+1], strings.TrimSpace(rest[end+1:])
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(lbls, l)
		}
		if v, err := strconv.ParseFloat(value, 64); match && err == nil {
			sum += v
		}
	}
	return sum
}

// GrantHub gives the hub's identity the list permission (metadata only) on a vault.
func (e *Env) GrantHub(vault string) error {
	return e.Emulator.Grant(vault, HubClientID, emulator.PermList)
}

// writeHubCert writes a CA (ca.crt) and a serving certificate for HubHost and
// 127.0.0.1 signed by it (tls.crt, tls.key) into dir.
func writeHubCert(dir string) error {
	sc, err := testcert.New("kvinject-ca (testenv)", HubHost, HubHost+".cluster.local", "127.0.0.1")
	if err != nil {
		return err
	}
	for name, b := range map[string][]byte{"ca.crt": sc.CAPEM, "tls.crt": sc.CertPEM, "tls.key": sc.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// HubCAFile is the PEM file of the CA of the hub's serving certificate (the
// webhook's --hub-ca-file), for clients of the hub other than agents.
func (e *Env) HubCAFile() string {
	if e.hub == nil {
		return ""
	}
	return filepath.Join(e.hub.certDir, "ca.crt")
}
