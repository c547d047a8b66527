package mutate

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestCheckLinux(t *testing.T) {
	term := func(exprs ...corev1.NodeSelectorRequirement) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: exprs}
	}
	os := func(op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorRequirement {
		return corev1.NodeSelectorRequirement{Key: corev1.LabelOSStable, Operator: op, Values: values}
	}
	required := func(terms ...corev1.NodeSelectorTerm) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms},
		}}
	}
	pool := corev1.NodeSelectorRequirement{Key: "agentpool", Operator: corev1.NodeSelectorOpIn, Values: []string{"win22"}}

	tests := []struct {
		name string
		spec corev1.PodSpec
		want string // "" admits; else the start of the refusal
	}{
		{"no constraint", corev1.PodSpec{}, ""},
		{"os linux", corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Linux}}, ""},
		{"os windows", corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Windows}}, `spec.os.name is "windows": `},
		{"selector linux", corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelOSStable: "linux"}}, ""},
		{"selector windows", corev1.PodSpec{NodeSelector: map[string]string{corev1.LabelOSStable: "windows"}}, `spec.nodeSelector["kubernetes.io/os"] is "windows": `},
		{"beta selector windows", corev1.PodSpec{NodeSelector: map[string]string{"beta.kubernetes.io/os": "windows"}}, `spec.nodeSelector["beta.kubernetes.io/os"] is "windows": `},
		{"other selector", corev1.PodSpec{NodeSelector: map[string]string{"agentpool": "win22"}}, ""},
		{"affinity In windows", corev1.PodSpec{Affinity: required(term(os(corev1.NodeSelectorOpIn, "windows")))},
			"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution admits no Linux node (term 0: kubernetes.io/os In [windows]): "},
		{"affinity NotIn linux", corev1.PodSpec{Affinity: required(term(pool, os(corev1.NodeSelectorOpNotIn, "linux")))},
			"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution admits no Linux node (term 0: kubernetes.io/os NotIn [linux]): "},
		{"affinity DoesNotExist", corev1.PodSpec{Affinity: required(term(os(corev1.NodeSelectorOpDoesNotExist)))},
			"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution admits no Linux node (term 0: kubernetes.io/os DoesNotExist): "},
		{"affinity every term windows", corev1.PodSpec{Affinity: required(term(os(corev1.NodeSelectorOpIn, "windows")), term(pool, os(corev1.NodeSelectorOpNotIn, "linux", "darwin")))},
			"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution admits no Linux node (term 0: kubernetes.io/os In [windows]; term 1: kubernetes.io/os NotIn [linux, darwin]): "},
		{"affinity one term admits linux", corev1.PodSpec{Affinity: required(term(os(corev1.NodeSelectorOpIn, "windows")), term(os(corev1.NodeSelectorOpIn, "linux")))}, ""},
		{"affinity In linux and windows", corev1.PodSpec{Affinity: required(term(os(corev1.NodeSelectorOpIn, "windows", "linux")))}, ""},
		{"affinity Exists", corev1.PodSpec{Affinity: required(term(os(corev1.NodeSelectorOpExists)))}, ""},
		{"affinity on other labels only", corev1.PodSpec{Affinity: required(term(pool))}, ""},
		{"preferred affinity only", corev1.PodSpec{Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{Weight: 1, Preference: term(os(corev1.NodeSelectorOpIn, "windows"))}},
		}}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckLinux(&corev1.Pod{Spec: tt.spec})
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("admitted; want a refusal starting %q", tt.want)
			case tt.want != "" && err.Error() != tt.want+NotLinuxReason:
				t.Fatalf("refusal:\n got %q\nwant %q", err, tt.want+NotLinuxReason)
			}
			if err != nil && !strings.Contains(err.Error(), "Secrets Store CSI driver") {
				t.Errorf("the refusal does not name the way for Windows nodes: %v", err)
			}
		})
	}
}
