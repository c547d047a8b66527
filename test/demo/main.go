// Command demo is `make demo`: kvinject end to end on this machine, in about a
// minute once built (its time budget, --budget, starts after the build). It
// starts a real kube-apiserver and etcd with kvinject's webhook configuration,
// the webhook, and the Key Vault + Azure AD emulator; creates the classic
// scenario (a vault with DATABASE-CONNECTION-STRING and API-KEY, a
// ServiceAccount federated with a workload identity, a Deployment-style pod);
// shows what the webhook changed; runs the injected agent exactly as the pod
// spec says; rotates a secret; shows a failure and how it explains itself; and
// stops everything it started. Secret values are never printed.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

const (
	namespace    = "shop"
	vault        = "contoso-shop"
	ordersClient = "6f1d2c3b-4a59-4e8d-9c7b-a1b2c3d4e5f6"
	// reportsClient is an identity that exists but was never granted access to the vault.
	reportsClient = "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4"
)

func main() {
	start := time.Now()
	binDir := flag.String("bin-dir", "", "folder with prebuilt webhook and agent binaries (make demo builds them); empty: build them first, outside the budget")
	budget := flag.Duration("budget", 5*time.Minute, "how long the demo may run once everything is built")
	flag.Parse()
	// envtest logs through controller-runtime's global logger, which otherwise
	// warns (with a stack trace) that it was never set. Its lines are for
	// debugging envtest, not for the demo's reader; failures come back as errors.
	ctrllog.SetLogger(logr.Discard())
	// Ctrl-C or a closed output pipe must still stop what the demo started.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *binDir, *budget)
	// Only a signal cancels ctx: read it before stop(), which cancels it too.
	interrupted := ctx.Err() != nil
	stop()
	switch {
	case err != nil && interrupted:
		fmt.Fprintln(os.Stderr, "\ndemo interrupted; everything it started is stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo failed at %q: %v\nEverything the demo started is stopped.\n", current, err)
		os.Exit(1)
	}
	fmt.Printf("\nDone in %s. Everything the demo started is stopped.\n", time.Since(start).Round(100*time.Millisecond))
}

// current is the step the demo is at, for the failure message.
var current = "start"

func step(format string, args ...any) {
	current = fmt.Sprintf(format, args...)
	fmt.Printf("\n==> %s\n", current)
}

// run builds the binaries if none were given, then runs the demo within its
// budget. The budget starts after the build: a cold build cache needs minutes.
func run(ctx context.Context, binDir string, budget time.Duration) error {
	if binDir == "" {
		step("Building the webhook, agent and hub (not part of the %s budget; a cold build cache takes a few minutes)", budget)
		root, err := testenv.RepoRoot()
		if err != nil {
			return err
		}
		dir, err := os.MkdirTemp("", "kvinject-demo-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		began := time.Now()
		if err := testenv.Build(ctx, root, dir); err != nil {
			return err
		}
		fmt.Printf("    built in %s\n", time.Since(began).Round(100*time.Millisecond))
		binDir = dir
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	err := demo(ctx, binDir)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("the demo ran out of its %s budget (the build is not counted; --budget raises it): %w", budget, err)
	}
	return err
}

func demo(ctx context.Context, binDir string) error {
	step("Starting a local control plane, the kvinject webhook and the Key Vault + Azure AD emulator")
	env, err := testenv.Start(ctx, testenv.Options{Log: prefixWriter("    "), BinDir: binDir, Hub: true, HubSweepInterval: hubSweep, HubEvents: true})
	if err != nil {
		return err
	}
	defer env.Stop()
	emu := env.Emulator
	tenant := emu.TenantID()

	step("Key Vault %q: two secrets; workload identity %s federated with ServiceAccount %s/orders", vault, ordersClient, namespace)
	if err := emu.AddVault(vault, emulator.VaultOptions{TenantID: tenant}); err != nil {
		return err
	}
	v1 := emu.SetSecret(vault, "DATABASE-CONNECTION-STRING", "Server=tcp:contoso-shop.database.windows.net,1433;Database=orders;User ID=orders;Password=demo-only-9f3k2;")
	apiV1 := emu.SetSecret(vault, "API-KEY", "demo-api-key-0001")
	fmt.Printf("    DATABASE-CONNECTION-STRING version %s\n    API-KEY                    version %s\n", v1, apiV1)
	if err := emu.Grant(vault, ordersClient, emulator.PermGet); err != nil {
		return err
	}
	// The version hub's own identity may list the vault (metadata), never read a value.
	if err := env.GrantHub(vault); err != nil {
		return err
	}
	fmt.Printf("    the version hub's identity %s may only list the vault (metadata, no values)\n", testenv.HubClientID)
	// Event Grid delivers the vault's events to a Storage queue that the hub
	// reads (docs/events.md).
	if err := emu.SubscribeEvents(vault, testenv.EventsAccount, testenv.EventsQueue, emulator.EventOptions{}); err != nil {
		return err
	}
	fmt.Printf("    Event Grid delivers the vault's events to the queue %s, which the hub's identity may read\n", testenv.EventsQueueURL)
	for _, sa := range []struct{ name, client string }{{"orders", ordersClient}, {"reports", reportsClient}} {
		if err := env.RegisterWorkloadIdentity(sa.client, tenant, namespace, sa.name); err != nil {
			return err
		}
	}
	if err := env.EnsureNamespace(ctx, namespace, nil, nil, map[string]map[string]string{
		"default": nil,
		"orders":  {mapping.AnnotationWIClientID: ordersClient, mapping.AnnotationWITenantID: tenant},
		"reports": {mapping.AnnotationWIClientID: reportsClient, mapping.AnnotationWITenantID: tenant},
	}); err != nil {
		return err
	}

	annotations := map[string]string{
		mapping.AnnotationVault:    vault,
		mapping.AnnotationSecrets:  "connectionstring.txt=DATABASE-CONNECTION-STRING, apikey.txt=API-KEY",
		mapping.AnnotationRotation: "30s",
	}
	step("The app team's whole change: one label and a few annotations on the pod template")
	fmt.Printf("    labels:\n      %s: %q\n    annotations:\n", mapping.LabelInject, mapping.LabelInjectValue)
	for _, k := range sortedKeys(annotations) {
		fmt.Printf("      %s: %q\n", k, annotations[k])
	}
	pod := appPod("orders-7d9c6b5f4-", "orders", annotations)
	if err := env.Client.Create(ctx, pod); err != nil {
		return fmt.Errorf("creating the pod: %w", err)
	}
	fmt.Printf("    created pod %s/%s\n", pod.Namespace, pod.Name)

	step("What the webhook added (as stored by the API server)")
	if err := showInjection(pod); err != nil {
		return err
	}

	step("Running the injected agent exactly as the pod spec says (only host paths remapped)")
	agent, err := env.StartAgent(ctx, pod, mapping.AgentContainerName)
	if err != nil {
		return err
	}
	defer agent.Stop()
	began := time.Now()
	if err := waitFor(ctx, 20*time.Second, func() bool { return exists(filepath.Join(agent.Dir, "..data")) }); err != nil {
		return fmt.Errorf("waiting for the first set of files: %w; agent output:\n%s", err, agent.Output())
	}
	fmt.Printf("    first complete set written %s after the agent started; the app's files under %s:\n", time.Since(began).Round(time.Millisecond), mapping.DefaultMountPath)
	before, err := listFiles(agent.Dir)
	if err != nil {
		return err
	}

	step("Rotating API-KEY in Key Vault: its event reaches the version hub through the queue, the hub lists API-KEY's versions (metadata) and tells the agent, which reads API-KEY alone with its own identity and swaps the whole set atomically")
	// Let the agent hold its watch for a while, so the counts below show the
	// steady state too.
	time.Sleep(steady)
	apiV2 := emu.SetSecret(vault, "API-KEY", "demo-api-key-0002")
	fmt.Printf("    new API-KEY version %s\n", apiV2)
	rotated := time.Now()
	if err := waitFor(ctx, 50*time.Second, func() bool {
		after, _ := hashes(agent.Dir)
		return after["apikey.txt"] != before["apikey.txt"] && after["apikey.txt"] != ""
	}); err != nil {
		return fmt.Errorf("waiting for the new API-KEY version on disk: %w; agent output:\n%s", err, agent.Output())
	}
	fmt.Printf("    new value on disk %s after the change, through the event (the hub's sweep every %s is the backstop; polling every 30s would have taken up to 33s):\n", time.Since(rotated).Round(100*time.Millisecond), hubSweep)
	if _, err := listFiles(agent.Dir); err != nil {
		return err
	}
	if !strings.Contains(agent.Output(), `"trigger":"hub"`) {
		return fmt.Errorf("the new set was not triggered by the hub; agent output:\n%s", agent.Output())
	}
	window := time.Since(began)
	lists, hubValues := emu.ListRequests(testenv.HubClientID), emu.ValueReads(testenv.HubClientID)
	agentReads := emu.ValueReads(ordersClient)
	fmt.Printf("    Key Vault calls in these %s: the hub %d list pages (%d values read), the agent %d reads (2 for its first set, 1 for the change)\n",
		window.Round(time.Second), lists, hubValues, agentReads)
	text, err := env.HubMetrics()
	if err != nil {
		return fmt.Errorf("reading the hub's metrics: %w", err)
	}
	if listed := testenv.MetricSum(text, "kvinject_hub_events_total", `result="listed"`); listed < 1 {
		return fmt.Errorf("the hub acted on no event (kvinject_hub_events_total listed = %v); its log:\n%s", listed, env.HubLog())
	}
	fmt.Printf("    the hub read the event from the queue and listed API-KEY's versions once (kvinject_hub_events_total{result=\"listed\"} = %.0f)\n",
		testenv.MetricSum(text, "kvinject_hub_events_total", `result="listed"`))
	sweepPages := testenv.MetricSum(text, "kvinject_hub_keyvault_requests_total", `op="list_secrets"`)
	fmt.Printf("    per hour without changes: the hub's sweeps list %.0f pages per vault (one page per 25 secrets every %s; %.0f in these %s), the same for 1 pod or 10,000;\n",
		time.Hour.Seconds()/hubSweep.Seconds(), hubSweep, sweepPages, window.Round(time.Second))
	fmt.Printf("    polling every 30s reads 2 secrets x 120 = 240 times per pod: %d for 1,000 pods. A change costs one read per pod that uses it either way.\n", 240*1000)
	if err := agent.Stop(); err != nil {
		return fmt.Errorf("agent did not stop cleanly: %w", err)
	}

	step("A mistake, caught at admission: what kubectl shows for a bad annotation")
	bad := appPod("orders-typo-", "orders", map[string]string{mapping.AnnotationVault: vault, mapping.AnnotationSecrets: "../connectionstring.txt=DATABASE-CONNECTION-STRING", mapping.AnnotationRotation: "10s"})
	if err := env.Client.Create(ctx, bad); err == nil {
		return errors.New("a pod with bad annotations was admitted")
	} else {
		fmt.Printf("    Error from server (Forbidden): %v\n", err)
	}

	step("A failure at run time: ServiceAccount %s/reports has an identity with no access to the vault", namespace)
	denied := appPod("reports-5c8d7b6a9-", "reports", map[string]string{mapping.AnnotationVault: vault, mapping.AnnotationSecrets: "apikey.txt=API-KEY", mapping.AnnotationRotation: "off"})
	if err := env.Client.Create(ctx, denied); err != nil {
		return err
	}
	failing, err := env.StartAgent(ctx, denied, mapping.AgentContainerName)
	if err != nil {
		return err
	}
	defer failing.Stop()
	exitErr := failing.Wait(60 * time.Second)
	if exitErr == nil {
		return errors.New("the agent without access succeeded")
	}
	fmt.Printf("    kubectl describe pod %s shows for init container %s:\n", denied.Name, mapping.AgentContainerName)
	fmt.Printf("      State:      Terminated\n      Reason:     Error\n      Exit Code:  %s\n      Message:\n", strings.TrimPrefix(exitErr.Error(), "exit status "))
	for _, l := range strings.Split(strings.TrimSpace(failing.TerminationMessage()), "\n") {
		fmt.Printf("        %s\n", l)
	}
	st := emu.Stats()
	fmt.Printf("\n    Key Vault emulator served %d requests (%d secret reads, %d token requests, %d challenges) over %d connections.\n", st.Requests, st.Gets, st.TokenRequests, st.Challenges, st.Connections)
	return nil
}

// hubSweep is the demo hub's --sweep-interval: the installs' default. With
// Key Vault events a change does not wait for it.
const hubSweep = 30 * time.Second

// steady is how long the agent holds its watch before the rotation, so that
// the counts show the steady state too.
const steady = 10 * time.Second

func appPod(generateName, sa string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, GenerateName: generateName, Annotations: annotations,
			Labels: map[string]string{"app": strings.Split(generateName, "-")[0], mapping.LabelInject: mapping.LabelInjectValue},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			SecurityContext:    &corev1.PodSecurityContext{FSGroup: ptr(int64(2000))},
			Containers:         []corev1.Container{{Name: "app", Image: "contoso.azurecr.io/orders:1.4.2"}},
		},
	}
}

// showInjection prints the agent container and the volumes and mounts kvinject added.
func showInjection(pod *corev1.Pod) error {
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kvinject-") {
			b, _ := yaml.Marshal(v)
			fmt.Printf("    + volume:\n%s", indent(string(b), "        "))
		}
	}
	for _, c := range pod.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == mutate.VolumeName {
				fmt.Printf("    + container %q mounts %s read-only at %s\n", c.Name, m.Name, m.MountPath)
			}
		}
	}
	agent, err := testenv.AgentContainer(pod, mapping.AgentContainerName)
	if err != nil {
		return err
	}
	shown := agent.DeepCopy()
	shown.VolumeMounts = nil
	for _, m := range agent.VolumeMounts {
		if strings.HasPrefix(m.Name, "kvinject-") {
			shown.VolumeMounts = append(shown.VolumeMounts, m)
		}
	}
	b, _ := yaml.Marshal(shown)
	fmt.Printf("    + initContainers[0] (a native sidecar: restartPolicy Always, gated by its startupProbe):\n%s", indent(string(b), "        "))
	fmt.Printf("    + annotation %s: %s\n", mapping.AnnotationStatus, pod.Annotations[mapping.AnnotationStatus])
	return nil
}

// listFiles prints the visible files with their modes, sizes and a short hash; never values.
func listFiles(dir string) (map[string]string, error) {
	h, err := hashes(dir)
	if err != nil {
		return nil, err
	}
	for _, name := range sortedKeys(h) {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		fmt.Printf("      %-22s %04o  %4d bytes  value masked (sha256 %s…)\n", name, fi.Mode().Perm(), fi.Size(), h[name][:12])
	}
	return h, nil
}

// hashes returns the sha256 of every visible file (not the ..data machinery).
func hashes(dir string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if strings.HasPrefix(rel, "..") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil //nolint:nilerr // a directory link; its files are listed through ..data
		}
		sum := sha256.Sum256(b)
		out[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	return out, err
}

// waitFor polls ok until it holds. It fails with "not within d" when d passes,
// and with the context's error when the demo's budget runs out or it is
// interrupted.
func waitFor(ctx context.Context, d time.Duration, ok func() bool) error {
	limit := time.NewTimer(d)
	defer limit.Stop()
	for !ok() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-limit.C:
			return fmt.Errorf("not within %s", d)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix) + "\n"
}

func ptr[T any](v T) *T { return &v }

type prefixWriter string

func (p prefixWriter) Write(b []byte) (int, error) {
	fmt.Print(indent(string(b), string(p)))
	return len(b), nil
}
