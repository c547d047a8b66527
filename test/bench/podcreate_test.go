//go:build integration

package bench

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/internal/testing/testenv"
)

// How a benchmark pod is admitted.
type admission int

const (
	// noWebhook: kvinject.dev/inject=false, so no webhook is called.
	noWebhook admission = iota
	// nullWebhook: a webhook that decodes the review and allows the pod
	// unchanged, the floor of what any webhook costs the API server.
	nullWebhook
	// kvinject: the opt-in label, so the real webhook injects the pod.
	kvinject
	// kvinjectNoAPIToken: kvinject, in a pod that does not mount the
	// Kubernetes API token (automountServiceAccountToken: false). The
	// ServiceAccount admission plugin, re-run after the webhook, then has
	// nothing to add to the injected agent, so the API server does not
	// re-invoke the webhook: what one webhook call per pod would cost.
	kvinjectNoAPIToken
	admissions // the number of kinds
)

var admissionNames = [admissions]string{"none", "null", "kvinject", "kvinject-no-api-token"}

// The null webhook's name and the label that selects it.
const (
	nullWebhookName  = "null.bench.kvinject.dev"
	nullWebhookLabel = "bench.kvinject.dev/null-webhook"
)

// pod is the benchmark pod (one container, three secrets) admitted as a says.
func (a admission) pod() *corev1.Pod {
	p := benchPod(1, 3, a == kvinject || a == kvinjectNoAPIToken)
	switch a {
	case nullWebhook:
		p.Labels[nullWebhookLabel] = "true"
	case kvinjectNoAPIToken:
		p.Spec.AutomountServiceAccountToken = new(false)
	}
	return p
}

var nullOnce sync.Once

// installNullWebhook serves the null webhook over HTTPS on 127.0.0.1 and
// registers it with the API server for pods carrying nullWebhookLabel.
func (c *cluster) installNullWebhook(b *testing.B) {
	b.Helper()
	nullOnce.Do(func() {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var review admissionv1.AdmissionReview
			if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
				http.Error(w, "bad review", http.StatusBadRequest)
				return
			}
			review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
			review.Request = nil
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(review)
		}))
		srv.EnableHTTP2 = true
		srv.StartTLS()
		onExit(srv.Close)
		ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
		url := srv.URL + "/mutate"
		none, fail := admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.Fail
		cfg := &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "bench-null"},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name: nullWebhookName, AdmissionReviewVersions: []string{"v1"},
				ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: ca},
				Rules: []admissionregistrationv1.RuleWithOperations{{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}},
				ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{nullWebhookLabel: "true"}},
				SideEffects:    &none, FailurePolicy: &fail,
			}},
		}
		if _, err := c.kube.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(context.Background(), cfg, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	})
	// The API server picks the configuration up asynchronously.
	deadline := time.Now().Add(30 * time.Second)
	for {
		before := testenv.MetricSum(c.apiserverMetrics(b), "apiserver_admission_webhook_admission_duration_seconds_count", `name="`+nullWebhookName+`"`)
		if _, err := c.kube.CoreV1().Pods(benchNamespace).Create(context.Background(), nullWebhook.pod(), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if testenv.MetricSum(c.apiserverMetrics(b), "apiserver_admission_webhook_admission_duration_seconds_count", `name="`+nullWebhookName+`"`) > before {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("the API server does not call the null webhook")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// callStats are the webhook-call metrics of the API server and the webhook.
type callStats struct {
	decisions           float64             // kvinject's admission decisions
	handlerSum, handled float64             // kvinject's handler time (controller-runtime)
	callSum, calls      [admissions]float64 // per webhook: the API server's time per call
}

func (c *cluster) callStats(b *testing.B) callStats {
	b.Helper()
	wm, am := c.webhookMetrics(b), c.apiserverMetrics(b)
	s := callStats{
		decisions:  testenv.MetricSum(wm, "kvinject_admission_decisions_total"),
		handlerSum: testenv.MetricSum(wm, "controller_runtime_webhook_latency_seconds_sum", `webhook="/mutate-v1-pod"`),
		handled:    testenv.MetricSum(wm, "controller_runtime_webhook_latency_seconds_count", `webhook="/mutate-v1-pod"`),
	}
	for a, name := range map[admission]string{nullWebhook: nullWebhookName, kvinject: "pods.kvinject.dev"} {
		s.callSum[a] = testenv.MetricSum(am, "apiserver_admission_webhook_admission_duration_seconds_sum", `name="`+name+`"`, `type="admit"`)
		s.calls[a] = testenv.MetricSum(am, "apiserver_admission_webhook_admission_duration_seconds_count", `name="`+name+`"`, `type="admit"`)
	}
	return s
}

// BenchmarkPodCreate measures pod creation through the real API server (and
// etcd) in the same run four ways: with no webhook (kvinject.dev/inject=false,
// so the webhook configuration's object selector skips the pod), with a null
// webhook (allows every pod unchanged: what calling any webhook costs), with
// kvinject, and with kvinject in a pod that does not mount the Kubernetes API
// token (so the webhook is called once instead of twice). The pods are
// otherwise the same: one container, three secrets, a workload-identity
// ServiceAccount.
//
//   - sequential: one create at a time, the kinds taking turns so that noise
//     hits them alike; client-side latency percentiles, the latency added at
//     p50, kvinject's webhook calls per pod, the API server's time per
//     webhook call and kvinject's handler time per call.
//   - concurrent: blocks of back-to-back creates from several clients, the
//     kinds taking turns block by block; throughput and CPU time per pod of
//     the API server, etcd and the webhook.
func BenchmarkPodCreate(b *testing.B) {
	c := controlPlane(b)
	c.installNullWebhook(b)
	create := func(a admission) error {
		_, err := c.kube.CoreV1().Pods(benchNamespace).Create(context.Background(), a.pod(), metav1.CreateOptions{})
		return err
	}
	for i := range 40 { // warm every path: connections, caches
		if err := create(admission(i) % admissions); err != nil {
			b.Fatal(err)
		}
	}

	// kvinject's calls per pod, with and without the API token mounted.
	callsPerPod := func(a admission) float64 {
		const n = 20
		d0 := c.callStats(b).decisions
		for range n {
			if err := create(a); err != nil {
				b.Fatal(err)
			}
		}
		return (c.callStats(b).decisions - d0) / n
	}
	calls, callsNoToken := callsPerPod(kvinject), callsPerPod(kvinjectNoAPIToken)

	rounds := pick(500, 5)
	b.Run(fmt.Sprintf("sequential/rounds=%d", rounds), func(b *testing.B) {
		var p50, p99, callMS [admissions]float64
		var handlerMS float64
		for range b.N {
			var lat [admissions][]time.Duration
			s0 := c.callStats(b)
			for i := range rounds {
				for k := range admissions {
					a := (admission(i) + k) % admissions
					t0 := time.Now()
					if err := create(a); err != nil {
						b.Fatal(err)
					}
					lat[a] = append(lat[a], time.Since(t0))
				}
			}
			s1 := c.callStats(b)
			for a := range admissions {
				p50[a] += ms(percentile(lat[a], 0.5))
				p99[a] += ms(percentile(lat[a], 0.99))
			}
			for _, a := range []admission{nullWebhook, kvinject} { // kvinject: both kvinject kinds
				if n := s1.calls[a] - s0.calls[a]; n > 0 {
					callMS[a] += (s1.callSum[a] - s0.callSum[a]) / n * 1000
				}
			}
			handlerMS += (s1.handlerSum - s0.handlerSum) / (s1.handled - s0.handled) * 1000
		}
		n := float64(b.N)
		b.ReportMetric(0, "ns/op")
		for a, name := range admissionNames {
			b.ReportMetric(p50[a]/n, name+"-p50-ms")
			b.ReportMetric(p99[a]/n, name+"-p99-ms")
			if admission(a) != noWebhook {
				b.ReportMetric((p50[a]/p50[noWebhook]-1)*100, name+"-added-p50-%")
			}
		}
		b.ReportMetric(callMS[nullWebhook]/n, "null-apiserver-ms/call")
		b.ReportMetric(callMS[kvinject]/n, "kvinject-apiserver-ms/call")
		b.ReportMetric(calls, "kvinject-calls/pod")
		b.ReportMetric(callsNoToken, "kvinject-no-api-token-calls/pod")
		b.ReportMetric(handlerMS/n, "kvinject-handler-ms/call")
		c.deletePods(b)
	})

	workers, block := pick(16, 4), pick(10*time.Second, 300*time.Millisecond)
	b.Run(fmt.Sprintf("concurrent/c=%d/blocks=%dx%s", workers, 2*admissions, block), func(b *testing.B) {
		var pods [admissions]int64
		var elapsed [admissions]time.Duration
		var used [admissions]cpu
		for range b.N {
			for i := range 2 * admissions {
				a := admission(i % admissions)
				var n atomic.Int64
				var failed atomic.Pointer[error]
				c0, t0 := c.cpu(), time.Now()
				deadline := t0.Add(block)
				var wg sync.WaitGroup
				for range workers {
					wg.Go(func() {
						for time.Now().Before(deadline) {
							if err := create(a); err != nil {
								failed.CompareAndSwap(nil, &err)
								return
							}
							n.Add(1)
						}
					})
				}
				wg.Wait()
				if e := failed.Load(); e != nil {
					b.Fatal(*e)
				}
				c1 := c.cpu()
				pods[a] += n.Load()
				elapsed[a] += time.Since(t0)
				used[a].apiserver += c1.apiserver - c0.apiserver
				used[a].etcd += c1.etcd - c0.etcd
				used[a].webhook += c1.webhook - c0.webhook
			}
		}
		b.ReportMetric(0, "ns/op")
		for a, name := range admissionNames {
			per := func(d time.Duration) float64 { return ms(d) / float64(pods[a]) }
			b.ReportMetric(float64(pods[a])/elapsed[a].Seconds(), name+"-pods/s")
			b.ReportMetric(per(used[a].apiserver), name+"-apiserver-cpu-ms/pod")
			b.ReportMetric(per(used[a].etcd), name+"-etcd-cpu-ms/pod")
			if admission(a) == kvinject || admission(a) == kvinjectNoAPIToken {
				b.ReportMetric(per(used[a].webhook), name+"-webhook-cpu-ms/pod")
			}
		}
		c.deletePods(b)
	})
}
