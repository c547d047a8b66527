//go:build integration

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// BenchmarkWebhookMemory measures the webhook's memory against the size of the
// cluster: RSS (VmRSS) and the Go heap (from its Prometheus metrics) idle, then
// with N Namespaces and M ServiceAccounts in the cluster, once as the running
// webhook saw them arrive through its watches and once after a restart (a
// fresh list at size). The objects look like real ones: labels, a few
// annotations (some of them kvinject's or workload identity's) and a
// kubectl.kubernetes.io/last-applied-configuration annotation of about 1 KB.
//
// The size is N/M from KVINJECT_BENCH_MEMORY_SIZE (such as 2000/10000);
// unset, it is 10000/60000 at full scale and 20/100 otherwise. The webhook
// runs from KVINJECT_BENCH_BINDIR when set (a directory with prebuilt webhook
// and agent binaries, such as another commit's, for a before/after
// comparison), else it is built from this tree. The slope metrics are the
// growth per object between idle and at size, RSS and heap in use.
func BenchmarkWebhookMemory(b *testing.B) {
	nsCount, saCount := pick(10000, 20), pick(60000, 100)
	if v := os.Getenv("KVINJECT_BENCH_MEMORY_SIZE"); v != "" {
		n, m, ok := strings.Cut(v, "/")
		var err1, err2 error
		nsCount, err1 = strconv.Atoi(n)
		saCount, err2 = strconv.Atoi(m)
		if !ok || err1 != nil || err2 != nil || nsCount < 1 || saCount < nsCount {
			b.Fatalf("KVINJECT_BENCH_MEMORY_SIZE=%q: want N/M, Namespaces/ServiceAccounts, with M >= N >= 1", v)
		}
	}
	b.Run(fmt.Sprintf("namespaces=%d/serviceaccounts=%d", nsCount, saCount), func(b *testing.B) {
		for range b.N {
			memoryScenario(b, nsCount, saCount)
		}
	})
}

// memSample is the webhook's memory at one moment.
type memSample struct {
	rss, heapInuse, heapAlloc, nextGC float64 // bytes
	// rssFile is the part of rss that maps files (mostly the executable);
	// rssAnon the rest (the heap, stacks, the runtime's own).
	rssFile, rssAnon float64
}

func memoryScenario(b *testing.B, nsCount, saCount int) {
	port, err := freePort()
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	env, err := testenv.Start(ctx, testenv.Options{
		BinDir:      os.Getenv("KVINJECT_BENCH_BINDIR"),
		WebhookArgs: []string{"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(port)},
	})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer env.Stop()
	metricsURL := "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS = -1
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}

	idle := sampleWebhook(b, env, metricsURL)
	start := time.Now()
	createObjects(b, kube, nsCount, saCount)
	b.Logf("created %d Namespaces and %d ServiceAccounts in %s", nsCount, saCount, time.Since(start).Round(time.Second))
	waitCached(b, kube, saCount)
	running := sampleWebhook(b, env, metricsURL)

	if err := restartWebhook(env); err != nil {
		b.Fatal(err)
	}
	restarted := sampleWebhook(b, env, metricsURL)

	const mib = 1 << 20
	objects := float64(nsCount + saCount)
	b.ReportMetric(idle.rss/mib, "idle-rss-MiB")
	b.ReportMetric(idle.rssFile/mib, "idle-rss-file-MiB")
	b.ReportMetric(idle.rssAnon/mib, "idle-rss-anon-MiB")
	b.ReportMetric(idle.heapInuse/mib, "idle-heap-inuse-MiB")
	b.ReportMetric(idle.nextGC/mib, "idle-next-gc-MiB")
	b.ReportMetric(running.rss/mib, "size-rss-MiB")
	b.ReportMetric(running.heapInuse/mib, "size-heap-inuse-MiB")
	b.ReportMetric(running.nextGC/mib, "size-next-gc-MiB")
	b.ReportMetric(restarted.rss/mib, "restarted-rss-MiB")
	b.ReportMetric(restarted.rssAnon/mib, "restarted-rss-anon-MiB")
	b.ReportMetric(restarted.heapInuse/mib, "restarted-heap-inuse-MiB")
	b.ReportMetric(restarted.nextGC/mib, "restarted-next-gc-MiB")
	b.ReportMetric((restarted.rss-idle.rss)/objects, "rss-B/object")
	b.ReportMetric((restarted.heapInuse-idle.heapInuse)/objects, "heap-B/object")
}

// restartWebhook stops the webhook and starts it again, which lists every
// Namespace and ServiceAccount afresh; StartWebhook waits for its readyz.
func restartWebhook(env *testenv.Env) error {
	env.StopWebhook()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := env.StartWebhook(ctx); err != nil {
		return fmt.Errorf("restarting the webhook: %w", err)
	}
	return nil
}

// sampleWebhook lets the webhook settle for a few seconds and returns the
// smallest RSS and heap seen over five samples a second apart (two at smoke
// size) (the heap
// figures move with the garbage collector's cycle; the smallest is the
// closest to what stays).
func sampleWebhook(b *testing.B, env *testenv.Env, metricsURL string) memSample {
	b.Helper()
	bin := filepath.Join(env.BinDir, "webhook")
	pid, err := findProc(func(a []string) bool { return a[0] == bin })
	if err != nil {
		b.Fatalf("finding the webhook process: %v", err)
	}
	time.Sleep(pick(3*time.Second, time.Second))
	var best memSample
	for i := range pick(5, 2) {
		if i > 0 {
			time.Sleep(time.Second)
		}
		text, err := getText(metricsURL)
		if err != nil {
			b.Fatal(err)
		}
		s := memSample{
			rss:       float64(procStatusKB(pid, "VmRSS")) * 1024,
			rssFile:   float64(procStatusKB(pid, "RssFile")) * 1024,
			rssAnon:   float64(procStatusKB(pid, "RssAnon")) * 1024,
			heapInuse: testenv.MetricSum(text, "go_memstats_heap_inuse_bytes"),
			heapAlloc: testenv.MetricSum(text, "go_memstats_heap_alloc_bytes"),
			nextGC:    testenv.MetricSum(text, "go_memstats_next_gc_bytes"),
		}
		if i == 0 {
			best = s
			continue
		}
		best.rss, best.heapInuse = min(best.rss, s.rss), min(best.heapInuse, s.heapInuse)
		best.heapAlloc, best.nextGC = min(best.heapAlloc, s.heapAlloc), min(best.nextGC, s.nextGC)
		best.rssFile, best.rssAnon = min(best.rssFile, s.rssFile), min(best.rssAnon, s.rssAnon)
	}
	return best
}

func getText(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", fmt.Errorf("reading the webhook's metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading the webhook's metrics: %w", err)
	}
	return string(body), nil
}

// waitCached waits until the last Namespace and ServiceAccount created are
// old enough for the webhook's watches to have delivered them: the webhook
// serves no list, so this waits for the API server's watch cache to have them
// and then gives the webhook a few seconds.
func waitCached(b *testing.B, kube kubernetes.Interface, saCount int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		sas, err := kube.CoreV1().ServiceAccounts("").List(context.Background(), metav1.ListOptions{
			ResourceVersion: "0", LabelSelector: memLabel + "=true"})
		if err != nil {
			b.Fatal(err)
		}
		if len(sas.Items) >= saCount {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the API server's cache has %d of %d ServiceAccounts after 2 minutes", len(sas.Items), saCount)
		}
		time.Sleep(time.Second)
	}
	time.Sleep(pick(5*time.Second, time.Second))
}

// createObjects creates nsCount Namespaces and saCount ServiceAccounts spread
// over them (the first of each namespace is its "default"), 16 at a time.
func createObjects(b *testing.B, kube kubernetes.Interface, nsCount, saCount int) {
	b.Helper()
	ctx := context.Background()
	parallel(b, nsCount, func(i int) error {
		_, err := kube.CoreV1().Namespaces().Create(ctx, memNamespace(i), metav1.CreateOptions{})
		return err
	})
	parallel(b, saCount, func(j int) error {
		ns, k := j%nsCount, j/nsCount
		_, err := kube.CoreV1().ServiceAccounts(memNamespaceName(ns)).Create(ctx, memServiceAccount(ns, k), metav1.CreateOptions{})
		return err
	})
}

// parallel runs fn(0..n-1) on 16 goroutines and fails b on the first error.
func parallel(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var (
		wg    sync.WaitGroup
		next  = make(chan int)
		errMu sync.Mutex
		first error
	)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// memLabel marks the objects this benchmark creates.
const memLabel = "bench.kvinject.dev/memory"

var memTeams = []string{"payments", "orders", "search", "identity", "platform", "data", "ml", "web"}

func memNamespaceName(i int) string { return fmt.Sprintf("team-%s-%05d", memTeams[i%len(memTeams)], i) }

// memNamespace is a Namespace as a GitOps tool would apply it: labels, an
// owner annotation, kvinject's defaults on every fifth and kubectl's
// last-applied-configuration.
func memNamespace(i int) *corev1.Namespace {
	team := memTeams[i%len(memTeams)]
	ns := &corev1.Namespace{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: memNamespaceName(i),
			Labels: map[string]string{"team": team, "environment": "production", "cost-center": fmt.Sprintf("cc-%04d", i%500),
				"app.kubernetes.io/managed-by": "argocd", "argocd.argoproj.io/instance": "tenants-" + team,
				"pod-security.kubernetes.io/enforce": "baseline", memLabel: "true"},
			Annotations: map[string]string{"contoso.com/owner": team + "-oncall@contoso.com",
				"contoso.com/slack": "#" + team + "-alerts", "scheduler.alpha.kubernetes.io/node-selector": "pool=" + team},
		},
	}
	if i%5 == 0 {
		ns.Annotations[mapping.AnnotationVault] = "kv-" + team + "-prod"
		ns.Annotations[mapping.Prefix+"allowed-vaults"] = "kv-" + team + "-prod,kv-shared-prod"
	}
	lastApplied(&ns.ObjectMeta, ns, 1200)
	return ns
}

// memServiceAccount is the k-th ServiceAccount of namespace i: "default" for
// k == 0, else a workload's, half of them with workload identity.
func memServiceAccount(i, k int) *corev1.ServiceAccount {
	name := "default"
	if k > 0 {
		name = fmt.Sprintf("workload-%03d", k)
	}
	sa := &corev1.ServiceAccount{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: memNamespaceName(i),
			Labels: map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": memTeams[i%len(memTeams)],
				"app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": name + "-1.4.2", memLabel: "true"},
			Annotations: map[string]string{"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": memNamespaceName(i)},
		},
	}
	if k > 0 && k%2 == 1 {
		sa.Labels["azure.workload.identity/use"] = "true"
		sa.Annotations[mapping.AnnotationWIClientID] = fmt.Sprintf("3f2a1b0c-9d8e-4f7a-b6c5-%012d", i*100+k)
		sa.Annotations[mapping.AnnotationWITenantID] = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	}
	lastApplied(&sa.ObjectMeta, sa, 1000)
	return sa
}

// lastApplied sets kubectl's last-applied-configuration annotation to obj's
// JSON, after padding obj with a description annotation (half of what its JSON
// lacks of size bytes), as objects applied with long descriptions carry.
func lastApplied(meta *metav1.ObjectMeta, obj any, size int) {
	raw, _ := json.Marshal(obj)
	if pad := size - len(raw) - 40; pad > 0 {
		meta.Annotations["contoso.com/description"] = strings.Repeat("x", pad/2)
		raw, _ = json.Marshal(obj)
	}
	meta.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = string(raw) + "\n"
}
