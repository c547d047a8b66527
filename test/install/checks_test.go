//go:build integration

package install

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// appsNamespace is where the tests' application pods are created.
const appsNamespace = "apps"

// checkPodSecurity checks that the webhook's namespace enforces Pod Security
// "restricted" and that a pod made from the Deployment's template is admitted
// there (server-side dry run, through every admission plugin), while the same
// pod made non-compliant is refused, so the admission means something.
func (c *cluster) checkPodSecurity(t *testing.T, in *install) {
	t.Helper()
	c.checkTemplateSecurity(t, in.namespace, in.deployment)
}

// checkTemplateSecurity does checkPodSecurity's checks for the pod template of
// Deployment d in namespace ns.
func (c *cluster) checkTemplateSecurity(t *testing.T, namespace string, d *appsv1.Deployment) {
	t.Helper()
	ns, err := c.kube.CoreV1().Namespaces().Get(context.Background(), namespace, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Fatalf("namespace %s enforces Pod Security %q, want restricted", namespace, got)
	}
	tmpl := d.Spec.Template
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pod-security-check", Namespace: namespace, Labels: tmpl.Labels, Annotations: tmpl.Annotations}, Spec: *tmpl.Spec.DeepCopy()}
	c.takeWarnings()
	if _, err := c.kube.CoreV1().Pods(namespace).Create(context.Background(), pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatalf("a pod from the template of Deployment %s is refused in %s: %v", d.Name, namespace, err)
	}
	if w := c.takeWarnings(); len(w) > 0 {
		t.Errorf("a pod from the template of Deployment %s draws warnings: %q", d.Name, w)
	}
	checkGoMemLimit(t, d)
	bad := pod.DeepCopy()
	bad.Spec.SecurityContext.RunAsNonRoot = nil
	bad.Spec.SecurityContext.RunAsUser = nil
	bad.Spec.Containers[0].SecurityContext.Capabilities = nil
	_, err = c.kube.CoreV1().Pods(namespace).Create(context.Background(), bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil || !strings.Contains(err.Error(), "violates PodSecurity \"restricted") {
		t.Fatalf("a non-compliant pod was not refused by Pod Security: %v", err)
	}
}

// checkGoMemLimit checks that each container of Deployment d (Go programs all)
// sets GOMEMLIMIT to 80-100 % of its memory limit: Go's collector then keeps
// the heap under the limit instead of letting it grow to twice what is live.
func checkGoMemLimit(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		var val string
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				val = e.Value
			}
		}
		limit := c.Resources.Limits.Memory()
		gml, err := resource.ParseQuantity(strings.TrimSuffix(val, "B")) // 230MiB -> 230Mi
		if limit.IsZero() || err != nil || gml.Value() >= limit.Value() || gml.Value() < limit.Value()*8/10 {
			t.Errorf("Deployment %s, container %s: GOMEMLIMIT %q against the memory limit %s; want it set, at 80-100 %% of the limit", d.Name, c.Name, val, limit)
		}
	}
}

// expectedRBAC is what the webhook's ServiceAccount may do, beyond what every
// ServiceAccount may: the rules of its mode, written out here rather than read
// from the rendering.
func expectedRBAC(in *install, builtin bool, secretName string) (cluster, namespaced []rbacRule) {
	for _, res := range []string{"namespaces", "serviceaccounts"} {
		for _, v := range []string{"get", "list", "watch"} {
			cluster = append(cluster, rbacRule{"", "", res, "", v})
		}
	}
	cluster = append(cluster, rbacRule{"", "secrets-store.csi.x-k8s.io", "secretproviderclasses", "", "get"})
	if builtin {
		for _, v := range []string{"get", "list", "watch"} {
			cluster = append(cluster, rbacRule{"", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", v})
			namespaced = append(namespaced, rbacRule{"", "", "secrets", "", v})
		}
		cluster = append(cluster, rbacRule{"", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", in.webhook.Name, "update"})
		namespaced = append(namespaced, rbacRule{"", "", "secrets", secretName, "update"})
	}
	return cluster, namespaced
}

// checkRBAC checks, with the ServiceAccount's own token, that it is granted
// exactly the expected rules (SelfSubjectRulesReview in its namespace and in
// another, minus what a ServiceAccount without bindings gets), and spot-checks
// allowed and refused requests (SelfSubjectAccessReview).
func (c *cluster) checkRBAC(t *testing.T, in *install, sa *rest.Config, builtin bool, secretName string) {
	t.Helper()
	ctx := context.Background()
	// A ServiceAccount without bindings: what every ServiceAccount may do.
	baseline := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: in.namespace, Name: "rbac-baseline"}}
	if err := c.client.Create(ctx, baseline); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	_, baseCfg := c.serviceAccountKubeconfig(t, in.namespace, "rbac-baseline")
	saKube := kubernetes.NewForConfigOrDie(sa)
	baseKube := kubernetes.NewForConfigOrDie(baseCfg)

	wantCluster, wantNamespaced := expectedRBAC(in, builtin, secretName)
	for _, ns := range []string{in.namespace, appsNamespace} {
		got, gotNonResource := rulesReview(t, saKube, ns)
		base, baseNonResource := rulesReview(t, baseKube, ns)
		extra := subtract(got, base)
		want := append([]rbacRule(nil), wantCluster...)
		if ns == in.namespace {
			want = append(want, wantNamespaced...)
		}
		sortRules(want)
		if diff := cmp.Diff(want, extra); diff != "" {
			t.Errorf("the webhook's permissions in namespace %s (-want +got):\n%s", ns, diff)
		}
		if diff := cmp.Diff(baseNonResource, gotNonResource); diff != "" {
			t.Errorf("the webhook's non-resource permissions (-every ServiceAccount's +the webhook's):\n%s", diff)
		}
	}

	type check struct {
		allowed bool
		attr    authorizationv1.ResourceAttributes
	}
	ra := func(ns, group, resource, name, verb string) authorizationv1.ResourceAttributes {
		return authorizationv1.ResourceAttributes{Namespace: ns, Group: group, Resource: resource, Name: name, Verb: verb}
	}
	checks := []check{
		{true, ra("", "", "namespaces", "", "list")},
		{true, ra("", "", "namespaces", "", "watch")},
		{true, ra(appsNamespace, "", "serviceaccounts", "app", "get")},
		{true, ra("", "", "serviceaccounts", "", "list")},
		{false, ra(appsNamespace, "", "serviceaccounts", "app", "update")},
		{false, ra(appsNamespace, "", "serviceaccounts", "app", "create")}, // incl. tokens
		{true, ra(appsNamespace, "secrets-store.csi.x-k8s.io", "secretproviderclasses", "app", "get")},
		{false, ra(appsNamespace, "secrets-store.csi.x-k8s.io", "secretproviderclasses", "", "list")},
		{false, ra(appsNamespace, "secrets-store.csi.x-k8s.io", "secretproviderclasses", "app", "update")},
		{false, ra(appsNamespace, "", "pods", "", "list")},
		{false, ra(appsNamespace, "", "pods", "", "create")},
		{false, ra(appsNamespace, "", "secrets", "", "get")},
		{false, ra("kube-system", "", "secrets", "", "list")},
		{false, ra("", "", "secrets", "", "list")},
		{false, ra(appsNamespace, "", "configmaps", "", "get")},
		{false, ra(in.namespace, "", "secrets", "", "create")},
		{false, ra(in.namespace, "", "secrets", secretName, "delete")},
		{false, ra(in.namespace, "", "secrets", secretName, "patch")},
		{false, ra(in.namespace, "", "secrets", "another", "update")},
		{false, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "another", "update")},
		{false, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", in.webhook.Name, "delete")},
		{false, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "create")},
		{false, ra("", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "list")},
		{false, ra(in.namespace, "coordination.k8s.io", "leases", "", "create")},
		{false, ra(in.namespace, "", "events", "", "create")},
		{false, ra("", "rbac.authorization.k8s.io", "clusterroles", "", "escalate")},
		{false, ra("", "", "users", "", "impersonate")},
	}
	if builtin {
		checks = append(checks,
			check{true, ra(in.namespace, "", "secrets", secretName, "get")},
			check{true, ra(in.namespace, "", "secrets", secretName, "update")},
			check{true, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", in.webhook.Name, "update")},
			check{true, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "watch")},
		)
	} else {
		checks = append(checks,
			check{false, ra(in.namespace, "", "secrets", secretName, "get")},
			check{false, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", in.webhook.Name, "update")},
		)
	}
	for _, ch := range checks {
		attr := ch.attr
		r, err := saKube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attr}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != ch.allowed {
			t.Errorf("the webhook may %s %s %s/%s (group %q, namespace %q): %v, want %v", attr.Verb, attr.Resource, attr.Namespace, attr.Name, attr.Group, attr.Namespace, r.Status.Allowed, ch.allowed)
		}
	}
}

// rulesReview returns the caller's resource rules in ns, expanded and sorted,
// and its non-resource rules.
func rulesReview(t *testing.T, kube kubernetes.Interface, ns string) ([]rbacRule, []string) {
	t.Helper()
	r, err := kube.AuthorizationV1().SelfSubjectRulesReviews().Create(context.Background(), &authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status.Incomplete {
		t.Fatalf("incomplete rules review in %s: %s", ns, r.Status.EvaluationError)
	}
	var out []rbacRule
	for _, rr := range r.Status.ResourceRules {
		names := rr.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range rr.APIGroups {
			for _, res := range rr.Resources {
				for _, n := range names {
					for _, v := range rr.Verbs {
						out = append(out, rbacRule{"", g, res, n, v})
					}
				}
			}
		}
	}
	sortRules(out)
	var nonResource []string
	for _, nr := range r.Status.NonResourceRules {
		nonResource = append(nonResource, fmt.Sprint(nr.Verbs, nr.NonResourceURLs))
	}
	sort.Strings(nonResource)
	return dedup(out), nonResource
}

func dedup(rs []rbacRule) []rbacRule {
	var out []rbacRule
	for i, r := range rs {
		if i == 0 || r != rs[i-1] {
			out = append(out, r)
		}
	}
	return out
}

func subtract(a, b []rbacRule) []rbacRule {
	drop := map[rbacRule]bool{}
	for _, r := range b {
		drop[r] = true
	}
	var out []rbacRule
	for _, r := range a {
		if !drop[r] {
			out = append(out, r)
		}
	}
	return out
}

// ensureNamespace creates a namespace with labels and ServiceAccounts (no
// controller-manager runs, so no namespace gets a "default" ServiceAccount).
func (c *cluster) ensureNamespace(t *testing.T, name string, labels map[string]string, serviceAccounts map[string]map[string]string) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := c.client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for sa, ann := range serviceAccounts {
		obj := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: name, Name: sa, Annotations: ann}}
		if err := c.client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
}

// Workload identity of the tests' application ServiceAccount.
const (
	appClientID = "c0ffee00-1111-4222-8333-444455556666"
	appTenant   = "contoso.onmicrosoft.com"
)

// ensureApps creates the applications' namespace and ServiceAccounts: "app"
// federated for workload identity, "plain" without identity.
func (c *cluster) ensureApps(t *testing.T) {
	c.ensureNamespace(t, appsNamespace, nil, map[string]map[string]string{
		"app":   {mapping.AnnotationWIClientID: appClientID, mapping.AnnotationWITenantID: appTenant},
		"plain": nil,
	})
}

// appPod is an opted-in pod that reads one secret of vault "appvault" (or of the
// default vault, when vault is empty).
func appPod(ns, name, serviceAccount, vault string) *corev1.Pod {
	ann := map[string]string{mapping.AnnotationSecrets: "connectionstring.txt=DATABASE-CONNECTION-STRING"}
	if vault != "" {
		ann[mapping.AnnotationVault] = vault
	}
	f, tr := false, true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{mapping.LabelInject: "true"}, Annotations: ann},
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount,
			SecurityContext:    &corev1.PodSecurityContext{RunAsNonRoot: &tr, SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{Name: "app", Image: "contoso.azurecr.io/app:1",
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &f, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
		},
	}
}

// agentOf returns the injected agent container, or nil.
func agentOf(pod *corev1.Pod) *corev1.Container {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == mapping.AgentContainerName {
				return &cs[i]
			}
		}
	}
	return nil
}

// createInjected creates an opted-in pod through the API and checks that the
// webhook injected the agent with image agentImage.
func (c *cluster) createInjected(ctx context.Context, pod *corev1.Pod, agentImage string) error {
	if err := c.client.Create(ctx, pod); err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	agent := agentOf(pod)
	switch {
	case pod.Annotations[mapping.AnnotationStatus] != "injected" || agent == nil:
		return fmt.Errorf("pod %s/%s was not injected (annotations %v)", pod.Namespace, pod.Name, pod.Annotations)
	case agent.Image != agentImage:
		return fmt.Errorf("pod %s/%s: agent image %q, want %q", pod.Namespace, pod.Name, agent.Image, agentImage)
	}
	return nil
}

// checkInjection creates pods through the API: an opted-in pod of the apps
// namespace is injected; opted-in pods of kube-system and of the webhook's own
// namespace are not sent to the webhook; and the API server never asked the
// proxy for anything but the webhook's Service.
func (c *cluster) checkInjection(t *testing.T, in *install, agentImage string) {
	t.Helper()
	ctx := context.Background()
	c.ensureApps(t)
	pod := appPod(appsNamespace, fmt.Sprintf("app-%s", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))), "app", "appvault")
	if err := c.createInjected(ctx, pod, agentImage); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, e := range agentOf(pod).Env {
		env[e.Name] = e.Value
	}
	if env["AZURE_CLIENT_ID"] != appClientID || env["AZURE_TENANT_ID"] != appTenant {
		t.Errorf("agent identity: client %q tenant %q, want the ServiceAccount's workload identity", env["AZURE_CLIENT_ID"], env["AZURE_TENANT_ID"])
	}

	// The check docs/install.md gives: a server-side dry run goes through the webhook
	// (sideEffects None allows it) and creates nothing.
	dry := appPod(appsNamespace, "kvinject-check", "plain", "myvault")
	dry.Annotations[mapping.AnnotationIdentity] = "system"
	if err := c.client.Create(ctx, dry, client.DryRunAll); err != nil {
		t.Fatalf("a server-side dry run: %v", err)
	}
	if dry.Annotations[mapping.AnnotationStatus] != "injected" {
		t.Errorf("a server-side dry run was not injected: %v", dry.Annotations)
	}

	c.ensureNamespace(t, "kube-system", nil, map[string]map[string]string{"kvinject-test": nil})
	for _, ns := range []struct{ name, sa string }{{"kube-system", "kvinject-test"}, {in.namespace, in.deployment.Spec.Template.Spec.ServiceAccountName}} {
		p := appPod(ns.name, "excluded-"+fmt.Sprint(len(t.Name())), ns.sa, "appvault")
		p.GenerateName, p.Name = "excluded-", ""
		if err := c.client.Create(ctx, p); err != nil {
			t.Fatalf("an opted-in pod in %s: %v", ns.name, err)
		}
		if agentOf(p) != nil || p.Annotations[mapping.AnnotationStatus] != "" {
			t.Errorf("an opted-in pod in excluded namespace %s was injected", ns.name)
		}
	}
	if r := c.proxy.takeRefused(); len(r) > 0 {
		t.Errorf("the API server asked the egress proxy for unexpected targets: %q", r)
	}
}
