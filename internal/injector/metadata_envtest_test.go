//go:build integration

package injector

import (
	"context"
	"maps"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// TestMetadataReaderOnAPIServer reads Namespaces and ServiceAccounts through
// MetadataReader as cmd/webhook does, on a real API server: from a cache of
// trimmed metadata, and directly (the fallback for objects not cached yet).
// Run it with KUBEBUILDER_ASSETS set and -tags integration.
func TestMetadataReaderOnAPIServer(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set")
	}
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	direct, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	lastApplied := map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"big":"object"}`}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"team": "shop"},
		Annotations: map[string]string{mapping.AnnotationVault: "contoso"}}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop",
		Labels:      map[string]string{"azure.workload.identity/use": "true"},
		Annotations: map[string]string{mapping.AnnotationWIClientID: "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9", "owner": "me"}}}
	for k, v := range lastApplied {
		ns.Annotations[k], sa.Annotations[k] = v, v
	}
	for _, obj := range []client.Object{ns, sa} {
		if err := direct.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	c, err := cache.New(cfg, cache.Options{Scheme: scheme, ByObject: map[client.Object]cache.ByObject{
		NamespaceMetadata():      {Transform: TrimNamespaceMetadata()},
		ServiceAccountMetadata(): {Transform: TrimServiceAccountMetadata()},
	}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Start(ctx) }()
	for _, obj := range []client.Object{NamespaceMetadata(), ServiceAccountMetadata()} {
		if _, err := c.GetInformer(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	if !c.WaitForCacheSync(ctx) {
		t.Fatal("the cache did not sync")
	}

	cached := MetadataReader{Reader: c}
	gotNS := &corev1.Namespace{}
	if err := cached.Get(ctx, client.ObjectKey{Name: "shop"}, gotNS); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{mapping.AnnotationVault: "contoso"}; gotNS.Name != "shop" || gotNS.Labels != nil || !maps.Equal(gotNS.Annotations, want) {
		t.Errorf("cached Namespace %+v, want its name and annotations %v only", gotNS.ObjectMeta, want)
	}
	gotSA := &corev1.ServiceAccount{}
	if err := cached.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "orders"}, gotSA); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{mapping.AnnotationWIClientID: "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9"}; gotSA.Labels != nil || !maps.Equal(gotSA.Annotations, want) {
		t.Errorf("cached ServiceAccount %+v, want annotations %v only", gotSA.ObjectMeta, want)
	}

	// The fallback: a metadata-only GET from the API server.
	fallback := MetadataReader{Reader: direct}
	gotSA = &corev1.ServiceAccount{}
	if err := fallback.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "orders"}, gotSA); err != nil {
		t.Fatal(err)
	}
	if gotSA.Annotations[mapping.AnnotationWIClientID] == "" || gotSA.Name != "orders" {
		t.Errorf("ServiceAccount from the API server: %+v", gotSA.ObjectMeta)
	}
	if err := fallback.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "missing"}, &corev1.ServiceAccount{}); !apierrors.IsNotFound(err) {
		t.Errorf("a missing ServiceAccount from the API server: %v, want NotFound", err)
	}
}
