package offline

import (
	"sort"
	"strings"
)

// The namespaces whose pods the cluster never sends to the webhook, so that it
// cannot block its own pods or the cluster's. They are the namespaceSelector of
// the MutatingWebhookConfiguration: in the kustomize install
// (manifests/webhook/mutatingwebhookconfiguration.yaml) kube-system and
// kvinject-system; in the Helm chart webhook.excludedNamespaces (by default
// kube-system) and the release namespace. TestExcludedNamespacesMatchInstalls
// keeps these defaults in step with both.
const (
	// DefaultWebhookNamespace is the webhook's own namespace in the kustomize
	// install and in docs/install.md's Helm install.
	DefaultWebhookNamespace = "kvinject-system"
	// DefaultOtherExcludedNamespaces are the excluded namespaces besides the
	// webhook's own, comma-separated: the chart's webhook.excludedNamespaces.
	DefaultOtherExcludedNamespaces = "kube-system"
)

// ExcludedNamespaces returns the namespaces that a webhook installed in
// webhookNamespace never receives pods of, as its install excludes them: the
// comma-separated others, and webhookNamespace itself (as the chart appends the
// release namespace), sorted, without duplicates or empty names.
func ExcludedNamespaces(webhookNamespace, others string) []string {
	set := map[string]bool{}
	for _, ns := range append(strings.Split(others, ","), webhookNamespace) {
		if ns = strings.TrimSpace(ns); ns != "" {
			set[ns] = true
		}
	}
	out := make([]string, 0, len(set))
	for ns := range set {
		out = append(out, ns)
	}
	sort.Strings(out)
	return out
}

// DefaultExcludedNamespaces are the excluded namespaces of the default
// installs: ExcludedNamespaces(DefaultWebhookNamespace, DefaultOtherExcludedNamespaces).
func DefaultExcludedNamespaces() []string {
	return ExcludedNamespaces(DefaultWebhookNamespace, DefaultOtherExcludedNamespaces)
}
