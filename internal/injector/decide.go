package injector

import (
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// Decision is what the webhook does with one opted-in pod.
type Decision struct {
	// Result is ResultInjected, ResultUnchanged or ResultDenied.
	Result string
	// Patch holds the add operations that inject the pod (ResultInjected only).
	Patch []jsonpatch.Operation
	// Warnings are for the user whatever the result (unknown annotation keys,
	// likely mistakes).
	Warnings []string
	// Denial says why the pod is refused (ResultDenied only); its message is
	// what kubectl shows, naming every bad annotation.
	Denial error
}

// OptedIn reports whether pod carries the opt-in label; only such pods are
// decided on (and only they are sent to the webhook).
func OptedIn(pod *corev1.Pod) bool {
	return pod.Labels[mapping.LabelInject] == mapping.LabelInjectValue
}

// ServiceAccountName is the pod's ServiceAccount: spec.serviceAccountName, else
// the deprecated spec.serviceAccount (which the API server copies into
// serviceAccountName before admission, but a raw manifest may hold alone),
// else "default".
func ServiceAccountName(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName != "" {
		return pod.Spec.ServiceAccountName
	}
	if pod.Spec.DeprecatedServiceAccount != "" {
		return pod.Spec.DeprecatedServiceAccount
	}
	return "default"
}

// DecideWithClass is kvinject's decision for an opted-in pod, given its
// Namespace and ServiceAccount (nil when they do not exist), the
// SecretProviderClass it names in kvinject.dev/secret-provider-class (nil when
// it names none or the class does not exist, which is a denial), the cluster
// defaults and the mutation's configuration: mapping.ApplySecretProviderClass
// when the pod names a class, then mapping.Resolve, then mutate.Patch.
// pod.Namespace must be set, as policy depends on it. The class stands in for
// the pod's vault, identity and secrets annotations for the decision only: the
// patch does not copy them onto the pod.
//
// It is the one entry point both deciders share: the admission handler
// (Handler.Handle, after reading the objects from the API server) and the
// offline injector (package offline, after reading them from its input or
// flags) call it with the same defaults and configuration, so they cannot
// disagree.
func DecideWithClass(pod *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount, spc *mapping.SecretProviderClass, d mapping.Defaults, cfg mutate.Config) Decision {
	var warnings []string
	if name, ok := pod.Annotations[mapping.AnnotationSecretProviderClass]; ok {
		if spc == nil {
			return Decision{Result: ResultDenied, Denial: fmt.Errorf("%s: there is no SecretProviderClass %q in namespace %q: create it, or fix the name", mapping.AnnotationSecretProviderClass, name, pod.Namespace)}
		}
		var err error
		pod, sa, warnings, err = mapping.ApplySecretProviderClass(pod, sa, *spc)
		if err != nil {
			return Decision{Result: ResultDenied, Warnings: warnings, Denial: err}
		}
	}
	spec, more, err := mapping.Resolve(pod, ns, sa, d)
	warnings = append(warnings, more...)
	if err != nil {
		return Decision{Result: ResultDenied, Warnings: warnings, Denial: err}
	}
	ops, err := mutate.Patch(pod, spec, cfg)
	switch {
	case err != nil:
		return Decision{Result: ResultDenied, Warnings: warnings, Denial: err}
	case len(ops) == 0:
		return Decision{Result: ResultUnchanged, Warnings: warnings}
	}
	return Decision{Result: ResultInjected, Patch: ops, Warnings: warnings}
}
