package injector

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/kvinject/kvinject/pkg/mapping"
)

func TestWorkloadIdentityPrefix(t *testing.T) {
	for _, key := range []string{mapping.AnnotationWIClientID, mapping.AnnotationWITenantID} {
		if !strings.HasPrefix(key, workloadIdentityPrefix) {
			t.Errorf("%s does not start with %s, which the ServiceAccount cache keeps", key, workloadIdentityPrefix)
		}
	}
}

func TestTrimMetadata(t *testing.T) {
	in := &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "orders", Namespace: "shop", ResourceVersion: "42", UID: "u", Generation: 3,
			Labels: map[string]string{"azure.workload.identity/use": "true", "app": "orders"},
			Annotations: map[string]string{
				mapping.AnnotationWIClientID:                       "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9",
				mapping.AnnotationWITenantID:                       "72f988bf-86f1-41af-91ab-2d7cd011db47",
				mapping.AnnotationVault:                            "contoso",
				"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 2000),
				"meta.helm.sh/release-name":                        "orders",
			},
			OwnerReferences: []metav1.OwnerReference{{Name: "o"}},
			Finalizers:      []string{"f"},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
	}
	out, err := TrimServiceAccountMetadata()(in)
	if err != nil {
		t.Fatal(err)
	}
	want := &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop", ResourceVersion: "42", Annotations: map[string]string{
			mapping.AnnotationWIClientID: "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9",
			mapping.AnnotationWITenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47",
			mapping.AnnotationVault:      "contoso",
		}},
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("trimmed to %+v, want %+v", out, want)
	}

	ns := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Annotations: map[string]string{mapping.AnnotationWIClientID: "x", "contoso.com/owner": "y"}}}
	out, err = TrimNamespaceMetadata()(ns)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.(*metav1.PartialObjectMetadata); got.Annotations != nil || got.Name != "shop" || got.Kind != "Namespace" {
		t.Errorf("Namespace trimmed to %+v, want its name, its kind and no annotations", got)
	}

	tombstone := toolscache.DeletedFinalStateUnknown{Key: "shop/orders", Obj: in}
	if out, err := TrimServiceAccountMetadata()(tombstone); err != nil || !reflect.DeepEqual(out, tombstone) {
		t.Errorf("a tombstone became %v, %v; want it unchanged", out, err)
	}
	if _, err := TrimNamespaceMetadata()(in); err == nil {
		t.Error("the Namespace transform took a ServiceAccount")
	}
}

func TestMetadataReader(t *testing.T) {
	ctx := context.Background()
	full := fake.NewClientBuilder().WithObjects(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Annotations: map[string]string{mapping.AnnotationVault: "contoso"}}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop",
			Annotations: map[string]string{mapping.AnnotationWIClientID: "id"}}, AutomountServiceAccountToken: new(bool)},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "shop"}, Data: map[string]string{"k": "v"}},
	).Build()
	r := MetadataReader{Reader: full}

	ns := &corev1.Namespace{}
	if err := r.Get(ctx, client.ObjectKey{Name: "shop"}, ns); err != nil {
		t.Fatal(err)
	}
	if ns.Name != "shop" || ns.Annotations[mapping.AnnotationVault] != "contoso" {
		t.Errorf("Namespace read as %+v", ns)
	}
	sa := &corev1.ServiceAccount{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "orders"}, sa); err != nil {
		t.Fatal(err)
	}
	if sa.Name != "orders" || sa.Annotations[mapping.AnnotationWIClientID] != "id" || sa.AutomountServiceAccountToken != nil {
		t.Errorf("ServiceAccount read as %+v, want its metadata only", sa)
	}
	if err := r.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "missing"}, &corev1.ServiceAccount{}); !apierrors.IsNotFound(err) {
		t.Errorf("a missing ServiceAccount: %v, want NotFound", err)
	}
	cm := &corev1.ConfigMap{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "c"}, cm); err != nil || cm.Data["k"] != "v" {
		t.Errorf("a ConfigMap (not served from metadata) read as %+v, %v", cm, err)
	}
}

// trimmingReader serves PartialObjectMetadata as the webhook's cache does: read
// from Reader, then trimmed by the informer's transform.
type trimmingReader struct{ client.Reader }

func (r trimmingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if err := r.Reader.Get(ctx, key, obj, opts...); err != nil {
		return err
	}
	p, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return nil
	}
	trim := TrimNamespaceMetadata()
	if p.Kind == "ServiceAccount" {
		trim = TrimServiceAccountMetadata()
	}
	out, err := trim(p)
	if err != nil {
		return err
	}
	*p = *out.(*metav1.PartialObjectMetadata)
	return nil
}

// TestGoldenFromTrimmedMetadata answers every golden case twice, reading the
// Namespace and ServiceAccount whole (as TestGolden does) and as the webhook
// does (MetadataReader over the trimmed metadata of its cache), and wants the
// same answer: the cache keeps everything the decision reads.
func TestGoldenFromTrimmedMetadata(t *testing.T) {
	entries, err := os.ReadDir(goldenDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		dir := filepath.Join(goldenDir, e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			body := mustRead(t, filepath.Join(dir, "request.json"))
			flags, clusterFile := caseSetup(dir)
			objs := loadObjects(t, clusterFile)
			whole := newTestServer(t, flags, objs).review(t, body)
			srv := newTestServer(t, flags, objs)
			h := srv.Handler.(*admissionWebhook).h
			h.Reader = MetadataReader{Reader: trimmingReader{h.Reader}}
			trimmed := srv.review(t, body)
			if !reflect.DeepEqual(whole, trimmed) {
				t.Errorf("answers differ:\nwhole objects:    %+v\ntrimmed metadata: %+v", whole, trimmed)
			}
		})
	}
}
