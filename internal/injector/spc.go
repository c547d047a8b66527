package injector

import (
	"context"
	"errors"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// SecretProviderClassGVK is the Secrets Store CSI driver's SecretProviderClass.
var SecretProviderClassGVK = schema.GroupVersionKind{Group: "secrets-store.csi.x-k8s.io", Version: "v1", Kind: "SecretProviderClass"}

// errNoSPCAPI is the denial when the cluster does not serve SecretProviderClasses.
var errNoSPCAPI = errors.New(mapping.AnnotationSecretProviderClass + ": this cluster does not serve secrets-store.csi.x-k8s.io/v1 SecretProviderClass (the Secrets Store CSI driver's CRD is not installed); write the kvinject.dev/vault and kvinject.dev/secrets annotations instead")

// readSecretProviderClass reads the class a pod names, from the API server (not
// from a cache: kvinject does not watch SecretProviderClasses). It returns nil
// when the class does not exist, and errNoSPCAPI when the API does not.
func (h *Handler) readSecretProviderClass(ctx context.Context, namespace, name string) (*mapping.SecretProviderClass, error) {
	r := h.APIReader
	if r == nil {
		r = h.Reader
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(SecretProviderClassGVK)
	err := r.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, u)
	switch {
	case isMissingAPI(err):
		return nil, errNoSPCAPI
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("reading SecretProviderClass %s/%s: %w", namespace, name, err)
	}
	spc, err := SecretProviderClassFrom(u.Object)
	if err != nil {
		return nil, fmt.Errorf("SecretProviderClass %s/%s: %w", namespace, name, err)
	}
	return &spc, nil
}

// isMissingAPI reports whether err says that the API server does not serve the
// kind (the client's REST mapper finds no resource for it).
func isMissingAPI(err error) bool {
	return err != nil && meta.IsNoMatchError(err)
}

// SecretProviderClassFrom extracts what kvinject reads of a SecretProviderClass
// object (as decoded from JSON or YAML).
func SecretProviderClassFrom(obj map[string]any) (mapping.SecretProviderClass, error) {
	var spc mapping.SecretProviderClass
	spc.Namespace, _, _ = unstructured.NestedString(obj, "metadata", "namespace")
	spc.Name, _, _ = unstructured.NestedString(obj, "metadata", "name")
	spec, _, err := unstructured.NestedMap(obj, "spec")
	if err != nil {
		return spc, fmt.Errorf("spec: %w", err)
	}
	for k, v := range spec {
		switch k {
		case "provider":
			s, ok := v.(string)
			if !ok {
				return spc, fmt.Errorf("spec.provider is not a string")
			}
			spc.Provider = s
		case "parameters":
			m, ok := v.(map[string]any)
			if !ok && v != nil {
				return spc, fmt.Errorf("spec.parameters is not a map of strings")
			}
			spc.Parameters = make(map[string]string, len(m))
			for pk, pv := range m {
				switch pv := pv.(type) {
				case string:
					spc.Parameters[pk] = pv
				case bool, int64, float64:
					spc.Parameters[pk] = fmt.Sprint(pv)
				default:
					return spc, fmt.Errorf("spec.parameters.%s is not a string", pk)
				}
			}
		case "secretObjects":
			l, _ := v.([]any)
			spc.SecretObjects = len(l)
		default:
			spc.OtherFields = append(spc.OtherFields, k)
		}
	}
	sort.Strings(spc.OtherFields)
	return spc, nil
}
