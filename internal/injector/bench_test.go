package injector

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// benchPod is a realistic opted-in pod with n containers and m mapped secrets.
func benchPod(containers, secrets int) *corev1.Pod {
	var entries []string
	for i := range secrets {
		entries = append(entries, fmt.Sprintf("secret-%02d.txt=SECRET-%02d", i, i))
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", GenerateName: "orders-", Labels: map[string]string{mapping.LabelInject: "true", "app": "orders"},
			Annotations: map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: strings.Join(entries, ",")}},
		Spec: corev1.PodSpec{ServiceAccountName: "orders", Volumes: []corev1.Volume{{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}}},
	}
	for i := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
			Name: fmt.Sprintf("c%d", i), Image: "contoso.azurecr.io/orders:1.4.2",
			Ports:        []corev1.ContainerPort{{ContainerPort: int32(8080 + i)}},
			VolumeMounts: []corev1.VolumeMount{{Name: "kube-api-access-x", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
			Env:          []corev1.EnvVar{{Name: "ASPNETCORE_URLS", Value: "http://+:8080"}},
		})
	}
	return pod
}

var benchShapes = []struct{ containers, secrets int }{{1, 1}, {1, 10}, {1, 50}, {3, 1}, {3, 10}, {3, 50}, {10, 1}, {10, 10}, {10, 50}}

var benchSA = &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "orders", Annotations: map[string]string{
	mapping.AnnotationWIClientID: "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9", mapping.AnnotationWITenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47",
}}}

// BenchmarkResolveAndPatch measures the pure decision: mapping.Resolve + mutate.Patch.
func BenchmarkResolveAndPatch(b *testing.B) {
	var opts Options
	opts.Mutate.AgentImage = "agent:v1"
	opts.Mutate.NativeSidecars = true
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("containers=%d/secrets=%d", s.containers, s.secrets), func(b *testing.B) {
			pod := benchPod(s.containers, s.secrets)
			b.ReportAllocs()
			for b.Loop() {
				spec, _, err := mapping.Resolve(pod, nil, benchSA, opts.Defaults)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := mutate.Patch(pod, spec, opts.Mutate); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAdmissionReview measures the whole handling as served, without TLS:
// request JSON in, decode, look up (cached objects), resolve, patch, response JSON out.
func BenchmarkAdmissionReview(b *testing.B) {
	// controller-runtime's webhook logs through its global logger; without one it
	// prints a "log.SetLogger(...) was never called" stack into the results.
	ctrllog.SetLogger(logr.Discard())
	t := &testing.T{}
	srv := newTestServer(t, baseFlags, nil)
	srv.Handler.(*admissionWebhook).h.Reader = newBenchReader()
	for _, s := range benchShapes {
		b.Run(fmt.Sprintf("containers=%d/secrets=%d", s.containers, s.secrets), func(b *testing.B) {
			raw, _ := json.Marshal(benchPod(s.containers, s.secrets))
			body, _ := json.Marshal(admissionv1.AdmissionReview{
				TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
				Request: &admissionv1.AdmissionRequest{UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
					Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "apps",
					Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}},
			})
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				srv.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"patch"`)) {
					b.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
