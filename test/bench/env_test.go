//go:build integration

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// The namespace and the workload-identity ServiceAccount every benchmark pod uses.
const (
	benchNamespace = "bench"
	benchSA        = "orders"
	benchClientID  = "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
)

// cluster is the control plane, webhook and emulator shared by the integration
// benchmarks, with what they measure it by.
type cluster struct {
	*testenv.Env
	// kube is a client without client-side rate limiting.
	kube kubernetes.Interface
	// metricsURL is the webhook's Prometheus endpoint.
	metricsURL string
	// pids of the processes whose CPU time is attributed.
	webhookPID, apiserverPID, etcdPID int
}

var shared struct {
	once sync.Once
	c    *cluster
	err  error
}

// controlPlane starts (once) envtest with the real webhook binary and returns it.
func controlPlane(b *testing.B) *cluster {
	b.Helper()
	shared.once.Do(func() { shared.c, shared.err = startCluster() })
	if shared.err != nil {
		b.Fatal(shared.err)
	}
	return shared.c
}

func startCluster() (*cluster, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env, err := testenv.Start(ctx, testenv.Options{WebhookArgs: []string{
		"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(port), // the later flag wins
	}})
	if err != nil {
		return nil, err
	}
	onExit(env.Stop)
	c := &cluster{Env: env, metricsURL: "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"}
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS = -1 // no client-side rate limiting: the server is what is measured
	if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if err := env.EnsureNamespace(ctx, benchNamespace, nil, nil, map[string]map[string]string{benchSA: {
		mapping.AnnotationWIClientID: benchClientID, mapping.AnnotationWITenantID: env.Emulator.TenantID(),
	}}); err != nil {
		return nil, err
	}
	webhookBin := filepath.Join(env.BinDir, "webhook")
	if c.webhookPID, err = findProc(func(a []string) bool { return a[0] == webhookBin }); err != nil {
		return nil, fmt.Errorf("finding the webhook process: %w", err)
	}
	apiURL, err := url.Parse(env.Config.Host)
	if err != nil {
		return nil, err
	}
	if c.apiserverPID, err = findProc(func(a []string) bool {
		return strings.HasSuffix(a[0], "kube-apiserver") && hasArg(a, "--secure-port="+apiURL.Port())
	}); err != nil {
		return nil, fmt.Errorf("finding the kube-apiserver process: %w", err)
	}
	etcdURL := env.API.ControlPlane.Etcd.URL.String()
	if c.etcdPID, err = findProc(func(a []string) bool {
		return strings.HasSuffix(a[0], "etcd") && hasArg(a, "--listen-client-urls="+etcdURL)
	}); err != nil {
		return nil, fmt.Errorf("finding the etcd process: %w", err)
	}
	return c, nil
}

func hasArg(args []string, want string) bool {
	for _, a := range args {
		if a == want {
			return true
		}
	}
	return false
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// cpu is a snapshot of the CPU time of the measured processes.
type cpu struct{ webhook, apiserver, etcd time.Duration }

func (c *cluster) cpu() cpu {
	return cpu{procCPU(c.webhookPID), procCPU(c.apiserverPID), procCPU(c.etcdPID)}
}

// benchPod is a pod as a Deployment would create it: one or more app
// containers, the kvinject label (unless inject is false) and annotations for
// the given number of secrets.
func benchPod(containers, secrets int, inject bool) *corev1.Pod {
	var entries []string
	for i := range secrets {
		entries = append(entries, fmt.Sprintf("secret-%02d.txt=SECRET-%02d", i, i))
	}
	label := "false"
	if inject {
		label = mapping.LabelInjectValue
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, GenerateName: "orders-7d9c6b5f4-",
			Labels: map[string]string{"app": "orders", "pod-template-hash": "7d9c6b5f4", mapping.LabelInject: label},
			Annotations: map[string]string{mapping.AnnotationVault: "contoso-shop",
				mapping.AnnotationSecrets: strings.Join(entries, ",")}},
		Spec: corev1.PodSpec{ServiceAccountName: benchSA},
	}
	for i := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name: fmt.Sprintf("app-%d", i), Image: "contoso.azurecr.io/orders:1.4.2",
			Ports: []corev1.ContainerPort{{ContainerPort: int32(8080 + i)}},
			Env:   []corev1.EnvVar{{Name: "ASPNETCORE_URLS", Value: fmt.Sprintf("http://+:%d", 8080+i)}},
		})
	}
	return pod
}

// reviewFile writes the AdmissionReview the API server sends for a pod of the
// given shape and returns its path. The pod is the API server's own: created
// without the opt-in label (so the webhook is not called), it comes back
// defaulted and with the ServiceAccount token volume and tolerations the
// built-in admission plugins add; only the label and the fields set after
// admission are then changed back.
func (c *cluster) reviewFile(b *testing.B, containers, secrets int) string {
	b.Helper()
	ctx := context.Background()
	stored, err := c.kube.CoreV1().Pods(benchNamespace).Create(ctx, benchPod(containers, secrets, false), metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	pod := stored.DeepCopy()
	pod.Labels[mapping.LabelInject] = mapping.LabelInjectValue
	pod.UID, pod.ResourceVersion, pod.CreationTimestamp = "", "", metav1.Time{}
	pod.Status = corev1.PodStatus{}
	pod.APIVersion, pod.Kind = "v1", "Pod"
	raw, err := json.Marshal(pod)
	if err != nil {
		b.Fatal(err)
	}
	podsGVR := metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
	podGVK := metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("5f1d4c3b-2a19-4e8f-9d7c-6b5a4f3e2d1c"), Kind: podGVK, Resource: podsGVR,
			RequestKind: &podGVK, RequestResource: &podsGVR, Name: pod.Name, Namespace: benchNamespace,
			Operation: admissionv1.Create,
			UserInfo: authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:replicaset-controller",
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}},
			Object:  runtime.RawExtension{Raw: raw},
			Options: runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}`)},
			DryRun:  new(bool),
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "review.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		b.Fatal(err)
	}
	return file
}

// webhookURL is where the API server calls the webhook.
func (c *cluster) webhookURL() string {
	w := c.API.WebhookInstallOptions
	return "https://" + net.JoinHostPort(w.LocalServingHost, strconv.Itoa(w.LocalServingPort)) + "/mutate-v1-pod"
}

// caFile writes the CA of the webhook's serving certificate.
func (c *cluster) caFile(b *testing.B) string {
	b.Helper()
	file := filepath.Join(b.TempDir(), "webhook-ca.pem")
	if err := os.WriteFile(file, c.API.WebhookInstallOptions.LocalServingCAData, 0o600); err != nil {
		b.Fatal(err)
	}
	return file
}

// webhookMetrics returns the webhook's Prometheus metrics.
func (c *cluster) webhookMetrics(b *testing.B) string {
	b.Helper()
	resp, err := http.Get(c.metricsURL)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return string(body)
}

// apiserverMetrics returns the API server's Prometheus metrics.
func (c *cluster) apiserverMetrics(b *testing.B) string {
	b.Helper()
	body, err := c.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return string(body)
}

// deletePods removes the benchmark's pods so that etcd does not grow from one
// benchmark to the next (pods without a node are deleted at once).
func (c *cluster) deletePods(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.kube.CoreV1().Pods(benchNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		b.Logf("deleting the benchmark's pods: %v", err)
	}
}
