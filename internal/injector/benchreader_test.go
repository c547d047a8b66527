package injector

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// benchReader serves the Namespace and ServiceAccount from memory the way the
// webhook's informer cache does (a map lookup and a deep copy), so benchmarks
// measure kvinject rather than the fake client's serialisation round trips.
type benchReader struct{ sa *corev1.ServiceAccount }

func newBenchReader() *benchReader { return &benchReader{sa: benchSA} }

func (r *benchReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	switch o := obj.(type) {
	case *corev1.Namespace:
		o.Name = key.Name
		return nil
	case *corev1.ServiceAccount:
		if key.Name == r.sa.Name && key.Namespace == r.sa.Namespace {
			r.sa.DeepCopyInto(o)
			return nil
		}
	}
	return apierrors.NewNotFound(corev1.Resource("serviceaccounts"), key.Name)
}

func (r *benchReader) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return nil
}
