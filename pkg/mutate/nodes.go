package mutate

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// NotLinuxReason ends the refusal of a pod that can only run on nodes other than
// Linux ones: the agent image and the in-memory volume are Linux-only.
const NotLinuxReason = "kvinject's agent runs on Linux nodes only; for Windows nodes, use the Secrets Store CSI driver with the Azure Key Vault provider"

// osLabels are the node labels that carry the operating system: the kubelet sets
// both (the beta one is deprecated but still set and still used in selectors).
var osLabels = []string{corev1.LabelOSStable, "beta.kubernetes.io/os"}

// CheckLinux refuses a pod that the scheduler can only place on nodes other than
// Linux ones, in each way a pod can say so: spec.os.name, a node selector on the
// operating-system label, or a required node affinity none of whose terms admits
// a Linux node. Every form gets the same reason. A pod that may land on Linux or
// Windows nodes is not refused: like any pod, it is the cluster's node pools and
// taints that decide.
func CheckLinux(pod *corev1.Pod) error {
	if pod.Spec.OS != nil && pod.Spec.OS.Name != corev1.Linux {
		return fmt.Errorf("spec.os.name is %q: %s", pod.Spec.OS.Name, NotLinuxReason)
	}
	for _, label := range osLabels {
		if v, ok := pod.Spec.NodeSelector[label]; ok && v != string(corev1.Linux) {
			return fmt.Errorf("spec.nodeSelector[%q] is %q: %s", label, v, NotLinuxReason)
		}
	}
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		var why []string
		for i, term := range terms {
			expr, ok := excludesLinux(term)
			if !ok {
				return nil // this term admits Linux nodes
			}
			why = append(why, fmt.Sprintf("term %d: %s", i, expr))
		}
		if len(why) > 0 {
			return fmt.Errorf("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution admits no Linux node (%s): %s", strings.Join(why, "; "), NotLinuxReason)
		}
	}
	return nil
}

// excludesLinux reports whether a node selector term rules out every Linux node,
// and the expression that does it. Expressions of a term are ANDed; a Linux node
// carries the label with the value "linux".
func excludesLinux(term corev1.NodeSelectorTerm) (string, bool) {
	for _, e := range term.MatchExpressions {
		if !slices.Contains(osLabels, e.Key) {
			continue
		}
		var admits bool
		switch e.Operator {
		case corev1.NodeSelectorOpIn:
			admits = slices.Contains(e.Values, string(corev1.Linux))
		case corev1.NodeSelectorOpNotIn:
			admits = !slices.Contains(e.Values, string(corev1.Linux))
		case corev1.NodeSelectorOpExists:
			admits = true
		default: // DoesNotExist, and Gt/Lt, which "linux" (not an integer) never satisfies
			admits = false
		}
		if !admits {
			if len(e.Values) == 0 {
				return fmt.Sprintf("%s %s", e.Key, e.Operator), true
			}
			return fmt.Sprintf("%s %s [%s]", e.Key, e.Operator, strings.Join(e.Values, ", ")), true
		}
	}
	return "", false
}
