package main

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/internal/certs"
)

// TestCacheByObject checks that Namespaces and ServiceAccounts are cached as
// trimmed metadata, and that the builtin certificate mode keeps its Secret
// cache.
func TestCacheByObject(t *testing.T) {
	for _, mode := range []string{"", certs.ModeBuiltin} {
		byObject := cacheByObject(certs.Options{Mode: mode, Namespace: "kvinject-system", SecretName: "kvinject-webhook-tls"})
		kinds := map[string]bool{}
		for obj, cfg := range byObject {
			switch o := obj.(type) {
			case *metav1.PartialObjectMetadata:
				kinds[o.Kind] = true
				if cfg.Transform == nil {
					t.Errorf("mode %q: %s metadata is cached without a transform", mode, o.Kind)
				}
			case *corev1.Secret:
				kinds["Secret"] = true
			default:
				t.Errorf("mode %q: unexpected cache entry for %T", mode, obj)
			}
		}
		want := map[string]bool{"Namespace": true, "ServiceAccount": true}
		if mode == certs.ModeBuiltin {
			want["Secret"] = true
		}
		if len(kinds) != len(want) || !kinds["Namespace"] || !kinds["ServiceAccount"] || kinds["Secret"] != want["Secret"] {
			t.Errorf("mode %q: cached kinds %v, want %v", mode, kinds, want)
		}
	}
}
