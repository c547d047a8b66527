package offline

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// repoFile reads a file of the repository, from this package's directory.
func repoFile(t *testing.T, path string) []byte {
	t.Helper()
	return mustRead(t, filepath.Join("..", "..", filepath.FromSlash(path)))
}

// TestExcludedNamespacesMatchInstalls checks that the namespaces the offline
// injector leaves alone by default are those that the installs' namespaceSelector
// excludes: the kustomize MutatingWebhookConfiguration, and the Helm chart's
// webhook.excludedNamespaces plus its release namespace.
func TestExcludedNamespacesMatchInstalls(t *testing.T) {
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(repoFile(t, "manifests/webhook/mutatingwebhookconfiguration.yaml"), &mwc); err != nil {
		t.Fatal(err)
	}
	if len(mwc.Webhooks) == 0 {
		t.Fatal("the MutatingWebhookConfiguration has no webhooks")
	}
	for _, wh := range mwc.Webhooks {
		var excluded []string
		if sel := wh.NamespaceSelector; sel != nil {
			for _, e := range sel.MatchExpressions {
				if e.Key == "kubernetes.io/metadata.name" && e.Operator == metav1.LabelSelectorOpNotIn {
					excluded = append(excluded, e.Values...)
				}
			}
		}
		slices.Sort(excluded)
		if want := DefaultExcludedNamespaces(); !slices.Equal(excluded, want) {
			t.Errorf("webhook %s: the namespaceSelector excludes %q, the offline injector %q (DefaultWebhookNamespace, DefaultOtherExcludedNamespaces)", wh.Name, excluded, want)
		}
		if svc := wh.ClientConfig.Service; svc == nil || svc.Namespace != DefaultWebhookNamespace {
			t.Errorf("webhook %s: its Service is not in %s (DefaultWebhookNamespace): %+v", wh.Name, DefaultWebhookNamespace, svc)
		}
	}

	var values struct {
		Webhook struct {
			ExcludedNamespaces []string `json:"excludedNamespaces"`
		} `json:"webhook"`
	}
	if err := yaml.Unmarshal(repoFile(t, "charts/kvinject/values.yaml"), &values); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(values.Webhook.ExcludedNamespaces, ","); got != DefaultOtherExcludedNamespaces {
		t.Errorf("the chart's webhook.excludedNamespaces is %q, DefaultOtherExcludedNamespaces %q", got, DefaultOtherExcludedNamespaces)
	}
	// ExcludedNamespaces adds the webhook's namespace to the others, as the chart
	// adds its release namespace.
	if tmpl := string(repoFile(t, "charts/kvinject/templates/mutatingwebhookconfiguration.yaml")); !strings.Contains(tmpl, "append .Values.webhook.excludedNamespaces .Release.Namespace") {
		t.Error("the chart's namespaceSelector no longer excludes webhook.excludedNamespaces plus the release namespace: update ExcludedNamespaces")
	}
}

func TestExcludedNamespaces(t *testing.T) {
	for _, tc := range []struct {
		webhook, others string
		want            []string
	}{
		{"kvinject-system", "kube-system", []string{"kube-system", "kvinject-system"}},
		{"platform", " kube-system , monitoring,,", []string{"kube-system", "monitoring", "platform"}},
		{"kube-system", "kube-system", []string{"kube-system"}},
		{"platform", "", []string{"platform"}},
	} {
		if got := ExcludedNamespaces(tc.webhook, tc.others); !slices.Equal(got, tc.want) {
			t.Errorf("ExcludedNamespaces(%q, %q) = %q, want %q", tc.webhook, tc.others, got, tc.want)
		}
	}
}
