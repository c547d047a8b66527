package mapping

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// TestTemplateKeysAreAnnotationKeys pins what the contract says of template
// files: Kubernetes accepts kvinject.dev/template.<file> up to
// agentconfig.MaxTemplateFileLen characters, and the mode's key up to 49.
func TestTemplateKeysAreAnnotationKeys(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{AnnotationTemplatePrefix + "appsettings.json", true},
		{AnnotationTemplatePrefix + ".env", true},
		{AnnotationTemplateModePrefix + ".env", true},
		{AnnotationTemplatePrefix + strings.Repeat("a", agentconfig.MaxTemplateFileLen), true},
		{AnnotationTemplatePrefix + strings.Repeat("a", agentconfig.MaxTemplateFileLen+1), false},
		{AnnotationTemplateModePrefix + strings.Repeat("a", 49), true},
		{AnnotationTemplateModePrefix + strings.Repeat("a", 50), false},
		{AnnotationTemplatePrefix + "trailing-", false},
	} {
		if errs := validation.IsQualifiedName(tc.key); (len(errs) == 0) != tc.ok {
			t.Errorf("IsQualifiedName(%q) = %v, want valid %v", tc.key, errs, tc.ok)
		}
	}
}

func TestResolveTemplates(t *testing.T) {
	pod := func(ann map[string]string, fsGroup bool) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Annotations: map[string]string{
				AnnotationVault: "myvault", AnnotationIdentity: "system",
				AnnotationSecrets: "db/password=DB-PASSWORD;nofile, host=HOST",
			}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		}
		if fsGroup {
			g := int64(2000)
			p.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: &g}
		}
		for k, v := range ann {
			p.Annotations[k] = v
		}
		return p
	}
	spec, warnings, err := Resolve(pod(map[string]string{
		AnnotationTemplatePrefix + "b.env":     `P={{ file "db/password" }}`,
		AnnotationTemplatePrefix + "a.json":    `{{ file "host" | jsonQuote }}`,
		AnnotationTemplateModePrefix + "b.env": "0440",
	}, true), nil, nil, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	want := []agentconfig.Template{{File: "a.json", Text: `{{ file "host" | jsonQuote }}`}, {File: "b.env", Mode: 0o440, Text: `P={{ file "db/password" }}`}}
	if d := cmp.Diff(want, spec.Templates); d != "" {
		t.Errorf("templates, sorted by file (-want +got):\n%s", d)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}

	_, warnings, err = Resolve(pod(map[string]string{
		AnnotationTemplatePrefix + "b.env":     `P={{ file "db/password" }}`,
		AnnotationTemplateModePrefix + "b.env": "0400",
	}, false), nil, nil, Defaults{})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"kvinject.dev/template-mode.b.env 0400: app containers cannot read the rendered file unless they share the agent's user (all run as one non-root runAsUser) or group (securityContext.fsGroup); use 0444, or set fsGroup and 0440"}, warnings); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}

	// A bad mapping: the templates are not checked against it (its own problem is reported).
	p := pod(map[string]string{AnnotationTemplatePrefix + "t": `{{ file "nope" }}`}, false)
	p.Annotations[AnnotationSecrets] = "a=A,a=B"
	_, _, err = Resolve(p, nil, nil, Defaults{})
	if err == nil || strings.Contains(err.Error(), "nope") || !strings.Contains(err.Error(), `file "a" is already used`) {
		t.Errorf("Resolve with a bad mapping: %v", err)
	}
}
