package injector

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestServiceAccountName checks which ServiceAccount a pod runs as, also for
// a raw manifest that names it only in the deprecated spec.serviceAccount.
func TestServiceAccountName(t *testing.T) {
	for _, tc := range []struct {
		name               string
		saName, deprecated string
		want               string
	}{
		{name: "none", want: "default"},
		{name: "serviceAccountName", saName: "web", want: "web"},
		{name: "deprecated serviceAccount only", deprecated: "legacy", want: "legacy"},
		{name: "serviceAccountName wins", saName: "web", deprecated: "legacy", want: "web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: tc.saName, DeprecatedServiceAccount: tc.deprecated}}
			if got := ServiceAccountName(pod); got != tc.want {
				t.Errorf("ServiceAccountName = %q, want %q", got, tc.want)
			}
		})
	}
}
