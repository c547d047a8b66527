package injector

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// What the handler reads of a Namespace and a ServiceAccount is metadata, and
// of that only annotations: a Namespace's kvinject.dev/ annotations (its
// defaults for the pod's annotations and its policy, package mapping) and a
// ServiceAccount's azure.workload.identity/ ones (the workload identity's
// client and tenant IDs). Whether the object exists matters too: its name
// stays. Labels are not read (the namespace selector of the webhook
// configuration is the API server's business).
var (
	// NamespaceAnnotationPrefixes are the annotation prefixes kept of a Namespace.
	NamespaceAnnotationPrefixes = []string{mapping.Prefix}
	// ServiceAccountAnnotationPrefixes are the annotation prefixes kept of a ServiceAccount.
	ServiceAccountAnnotationPrefixes = []string{workloadIdentityPrefix, mapping.Prefix}
)

// workloadIdentityPrefix is the prefix of mapping.AnnotationWIClientID and
// mapping.AnnotationWITenantID.
const workloadIdentityPrefix = "azure.workload.identity/"

// The kinds served from metadata, and their TypeMeta, which the transform shares
// among every cached object.
var (
	namespaceGVK      = corev1.SchemeGroupVersion.WithKind("Namespace")
	serviceAccountGVK = corev1.SchemeGroupVersion.WithKind("ServiceAccount")
	namespaceType     = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}
	serviceAccountTyp = metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}
)

// NamespaceMetadata returns an empty metav1.PartialObjectMetadata of kind
// Namespace: what the webhook watches, caches and reads of Namespaces.
func NamespaceMetadata() *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{TypeMeta: namespaceType}
}

// ServiceAccountMetadata returns an empty metav1.PartialObjectMetadata of kind
// ServiceAccount: what the webhook watches, caches and reads of ServiceAccounts.
func ServiceAccountMetadata() *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{TypeMeta: serviceAccountTyp}
}

// MetadataReader is a client.Reader that reads Namespaces and ServiceAccounts
// as metadata only: a Get of a *corev1.Namespace or *corev1.ServiceAccount asks
// Reader for a metav1.PartialObjectMetadata of that kind and returns an object
// with that metadata and nothing else (which is all the handler reads). Over a
// controller-runtime cache it is served by metadata-only informers; over a
// client that talks to the API server, by a metadata-only GET. Every other Get
// and every List goes to Reader unchanged.
type MetadataReader struct {
	Reader client.Reader
}

var _ client.Reader = MetadataReader{}

// Get implements client.Reader.
func (r MetadataReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	var (
		gvk  schema.GroupVersionKind
		meta *metav1.ObjectMeta
	)
	switch o := obj.(type) {
	case *corev1.Namespace:
		gvk, meta = namespaceGVK, &o.ObjectMeta
	case *corev1.ServiceAccount:
		gvk, meta = serviceAccountGVK, &o.ObjectMeta
	default:
		return r.Reader.Get(ctx, key, obj, opts...)
	}
	partial := &metav1.PartialObjectMetadata{}
	partial.SetGroupVersionKind(gvk)
	if err := r.Reader.Get(ctx, key, partial, opts...); err != nil {
		return err
	}
	*meta = partial.ObjectMeta
	return nil
}

// List implements client.Reader; it is Reader's.
func (r MetadataReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return r.Reader.List(ctx, list, opts...)
}

// TrimNamespaceMetadata is the cache transform of the Namespace metadata
// informer: see TrimMetadata and NamespaceAnnotationPrefixes.
func TrimNamespaceMetadata() toolscache.TransformFunc {
	return TrimMetadata(namespaceType, NamespaceAnnotationPrefixes)
}

// TrimServiceAccountMetadata is the cache transform of the ServiceAccount
// metadata informer: see TrimMetadata and ServiceAccountAnnotationPrefixes.
func TrimServiceAccountMetadata() toolscache.TransformFunc {
	return TrimMetadata(serviceAccountTyp, ServiceAccountAnnotationPrefixes)
}

// TrimMetadata returns a cache transform that replaces a
// *metav1.PartialObjectMetadata by a new one holding only its name, namespace,
// resource version and the annotations whose keys start with one of prefixes
// (nil when none does), with typeMeta, shared by every object, as its type:
// no labels, managed fields, owner references, finalizers or
// kubectl.kubernetes.io/last-applied-configuration stay in memory. Other
// objects (such as the tombstones of deleted objects) pass unchanged.
func TrimMetadata(typeMeta metav1.TypeMeta, prefixes []string) toolscache.TransformFunc {
	return func(in any) (any, error) {
		obj, ok := in.(*metav1.PartialObjectMetadata)
		if !ok {
			return in, nil
		}
		if obj.Kind != "" && obj.Kind != typeMeta.Kind {
			return nil, fmt.Errorf("trimming the metadata of a %s: this transform is for %s", obj.Kind, typeMeta.Kind)
		}
		out := &metav1.PartialObjectMetadata{TypeMeta: typeMeta, ObjectMeta: metav1.ObjectMeta{
			Name: obj.Name, Namespace: obj.Namespace, ResourceVersion: obj.ResourceVersion,
		}}
		for k, v := range obj.Annotations {
			if !hasAnyPrefix(k, prefixes) {
				continue
			}
			if out.Annotations == nil {
				out.Annotations = make(map[string]string, 2)
			}
			out.Annotations[k] = v
		}
		return out, nil
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
