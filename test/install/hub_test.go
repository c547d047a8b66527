//go:build integration

package install

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/hub"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// The version hub's installs (docs/hub.md): the kustomize installs *-hub and
// the chart with hub.enabled. Each is applied and proven like the install
// without the hub (the webhook's objects, Pod Security, RBAC, certificates,
// injection), then proveHub proves the hub's part.

// TestKustomizeBuiltinCertsHub installs manifests/install/builtin-certs-hub.
func TestKustomizeBuiltinCertsHub(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/install/builtin-certs-hub")
	proveBuiltin(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
	proveHub(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
}

// TestKustomizeCertManagerHub installs manifests/install/cert-manager-hub.
func TestKustomizeCertManagerHub(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/install/cert-manager-hub")
	proveCertManager(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
	proveHub(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
}

// TestKustomizeHubEvents installs manifests/examples/hub-events: the
// built-in certificate install with the hub, Key Vault events and the
// overlay docs/events.md shows.
func TestKustomizeHubEvents(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/examples/hub-events")
	proveBuiltin(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
	proveHub(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
}

// eventsValues enable Key Vault events in the chart, with the queue of
// manifests/examples/hub-events.
var eventsValues = []string{"hub.events.queues={" + eventsQueue + "}"}

// eventsQueue is the events queue of the installs in the tests.
const eventsQueue = "https://contosokvevents.queue.core.windows.net/kvinject-events"

// eventsLease is the Lease the hub replicas elect the deleter of read queue
// messages with.
const eventsLease = "kvinject-hub-events"

// hasEvents reports whether the install gives the hub Key Vault events.
func hasEvents(t *testing.T, in *install) bool {
	t.Helper()
	return hubFlags(t, in)["events-queue"] != ""
}

// TestHelmBuiltinCertsHub installs the chart with hub.enabled, as release
// "secrets" in another namespace (names "secrets-kvinject-...").
func TestHelmBuiltinCertsHub(t *testing.T) {
	c := startCluster(t)
	const ns = "platform-kvinject"
	c.ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, nil)
	in := renderHelm(t, "secrets", ns, hubValues...)
	proveBuiltin(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
	proveHub(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
}

// TestHelmCertManagerHub installs the chart with hub.enabled,
// certificates.mode=cert-manager and Key Vault events (hub.events.queues).
func TestHelmCertManagerHub(t *testing.T) {
	c := startCluster(t)
	const ns = "kvinject"
	c.ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, nil)
	in := renderHelm(t, "kvinject", ns, append(append([]string{"certificates.mode=cert-manager"}, hubValues...), eventsValues...)...)
	proveCertManager(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
	proveHub(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
}

// proveHub proves the hub's part of an applied install whose webhook replicas
// run: the rendering fits together, the hub's pods pass Pod Security, its
// ServiceAccount may do exactly what it needs, its certificate is trusted by
// agents under the --hub-url name, the agents of new pods are given the hub,
// and the hub binary, run as its pod template says with its ServiceAccount's
// token, gets ready, serves that certificate and authenticates and authorizes
// an agent's request on the real API server.
func proveHub(t *testing.T, c *cluster, in *install, agentImage string) {
	t.Helper()
	if in.hub == nil {
		t.Fatalf("%s: no hub rendered", in.name)
	}
	builtin := flagValueOr(in, "cert-mode", "files") == "builtin"
	hubURL := flagValue(t, in, "hub-url")
	t.Run("hub rendering", func(t *testing.T) { checkHubRendering(t, in, builtin) })
	t.Run("hub pod security", func(t *testing.T) { c.checkTemplateSecurity(t, in.namespace, in.hub) })
	t.Run("hub rbac", func(t *testing.T) { c.checkHubRBAC(t, in) })
	if t.Failed() {
		t.FailNow()
	}

	// What agents trust for the hub: the webhook's CA (--hub-ca-file's default,
	// ca.crt of the webhook's certificate folder).
	ca := c.webhookCA(t, in)
	host := mustURL(t, hubURL).Hostname()
	t.Run("hub certificate", func(t *testing.T) {
		s := c.secret(t, in.namespace, hubCertVolume(t, in).SecretName)
		if err := verifyPEMCert(s.Data["tls.crt"], ca, host); err != nil {
			t.Fatalf("the hub's certificate (Secret %s) is not trusted for %s with the webhook's CA: %v", s.Name, host, err)
		}
	})

	var pod *corev1.Pod
	t.Run("agents get the hub", func(t *testing.T) {
		pod = c.checkHubInjection(t, hubURL, ca, agentImage)
	})
	t.Run("hub runs", func(t *testing.T) {
		if pod == nil {
			t.Skip("no injected pod to watch from (see agents get the hub)")
		}
		c.runHub(t, in, ca, host, pod)
	})
}

// checkHubRendering checks, without a cluster, that the hub's objects fit
// together and with the webhook's.
func checkHubRendering(t *testing.T, in *install, builtin bool) {
	t.Helper()
	flags := hubFlags(t, in)
	ctr := hubContainer(t, in)

	// The webhook points agents at the hub's Service.
	u := mustURL(t, flagValue(t, in, "hub-url"))
	if want := in.hubService.Name + "." + in.hubService.Namespace + ".svc"; u.Hostname() != want || u.Port() != "" {
		t.Errorf("--hub-url=%s, want https://%s (the hub's Service, port 443)", u, want)
	}
	if in.hubService.Namespace != in.namespace || in.hub.Namespace != in.namespace {
		t.Errorf("the hub is in namespace %s (Service %s), the webhook in %s", in.hub.Namespace, in.hubService.Namespace, in.namespace)
	}
	var target *intstr.IntOrString
	for _, p := range in.hubService.Spec.Ports {
		if p.Port == 443 {
			target = &p.TargetPort
		}
	}
	if target == nil {
		t.Fatalf("the hub's Service has no port 443")
	}
	_, bindPort, _ := net.SplitHostPort(flags["bind-address"])
	if got := containerPort(t, ctr, *target); strconv.Itoa(got) != bindPort {
		t.Errorf("the hub's Service targets container port %d, the hub listens on --bind-address=%s", got, flags["bind-address"])
	}

	// Selectors: each Service, Deployment and PodDisruptionBudget selects its
	// own pods and not the other component's.
	hubPods, webhookPods := labels.Set(in.hub.Spec.Template.Labels), labels.Set(in.deployment.Spec.Template.Labels)
	selects := func(what string, sel *metav1.LabelSelector, own, other labels.Set) {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !s.Matches(own) || s.Matches(other) {
			t.Errorf("%s selects its own pods: %v, the other component's: %v", what, s.Matches(own), s.Matches(other))
		}
	}
	selects("the hub's Service", &metav1.LabelSelector{MatchLabels: in.hubService.Spec.Selector}, hubPods, webhookPods)
	selects("the webhook's Service", &metav1.LabelSelector{MatchLabels: in.service.Spec.Selector}, webhookPods, hubPods)
	selects("the hub's Deployment", in.hub.Spec.Selector, hubPods, webhookPods)
	selects("the webhook's Deployment", in.deployment.Spec.Selector, webhookPods, hubPods)
	var hubPDBs int
	for _, u := range in.find("PodDisruptionBudget") {
		pdb := &policyv1.PodDisruptionBudget{}
		fromUnstructured(t, u, pdb)
		s, _ := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if !s.Matches(hubPods) {
			continue
		}
		hubPDBs++
		selects("PodDisruptionBudget "+pdb.Name, pdb.Spec.Selector, hubPods, webhookPods)
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || pdb.Spec.MaxUnavailable != nil {
			t.Errorf("the hub's PodDisruptionBudget: minAvailable %v, maxUnavailable %v; want minAvailable 1", pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
		}
	}
	if hubPDBs != 1 {
		t.Errorf("%d PodDisruptionBudgets select the hub's pods, want 1", hubPDBs)
	}

	// Replicas: at least two, and --replicas says how many (the budget is divided
	// by it); a rollout never runs more than that.
	replicas := int32(1)
	if in.hub.Spec.Replicas != nil {
		replicas = *in.hub.Spec.Replicas
	}
	if replicas < 2 || flags["replicas"] != strconv.Itoa(int(replicas)) {
		t.Errorf("the hub has %d replicas and --replicas=%s: want 2 or more, equal", replicas, flags["replicas"])
	}
	if ru := in.hub.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 {
		t.Errorf("the hub's rollout may surge above --replicas: %+v", in.hub.Spec.Strategy)
	}

	// Probes on the health port.
	_, probePort, _ := net.SplitHostPort(flags["health-probe-bind-address"])
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"readiness", ctr.ReadinessProbe, "/readyz"}, {"liveness", ctr.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("the hub has no HTTP %s probe", p.what)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || strconv.Itoa(containerPort(t, ctr, p.probe.HTTPGet.Port)) != probePort {
			t.Errorf("the hub's %s probe: %s on port %v, want %s on --health-probe-bind-address's port %s", p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, probePort)
		}
	}

	// The certificate: a Secret's tls.crt and tls.key only, read-only, at --cert-dir.
	vol := hubCertVolume(t, in)
	var items []string
	for _, it := range vol.Items {
		items = append(items, it.Key+"->"+it.Path)
	}
	if want := []string{"tls.crt->tls.crt", "tls.key->tls.key"}; !slices.Equal(items, want) {
		t.Errorf("the hub's certificate volume holds %v, want exactly %v (never the CA's key)", items, want)
	}
	mounted := false
	for _, m := range ctr.VolumeMounts {
		if m.Name == "certs" {
			mounted = m.MountPath == flags["cert-dir"] && m.ReadOnly
		}
	}
	if !mounted {
		t.Errorf("the hub's certificate volume is not mounted read-only at --cert-dir=%s", flags["cert-dir"])
	}
	if builtin {
		if want := flagValue(t, in, "cert-secret"); vol.SecretName != want {
			t.Errorf("builtin mode: the hub mounts Secret %s, want the webhook's %s", vol.SecretName, want)
		}
	} else {
		checkHubCertificate(t, in, vol.SecretName)
	}

	// Its identity: workload identity by default, through its own ServiceAccount.
	if flags["identity"] != "workload" || in.hub.Spec.Template.Labels["azure.workload.identity/use"] != "true" {
		t.Errorf("the hub's identity: --identity=%s, pod label azure.workload.identity/use=%q; want workload, \"true\"",
			flags["identity"], in.hub.Spec.Template.Labels["azure.workload.identity/use"])
	}
	sa := in.hub.Spec.Template.Spec.ServiceAccountName
	if sa == "" || sa == in.deployment.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("the hub runs as ServiceAccount %q, want its own", sa)
	}
	found := false
	for _, u := range in.find("ServiceAccount") {
		found = found || (u.GetName() == sa && u.GetNamespace() == in.namespace)
	}
	if !found {
		t.Errorf("the hub's ServiceAccount %s is not rendered", sa)
	}
	env := map[string]*corev1.EnvVarSource{}
	for _, e := range ctr.Env {
		env[e.Name] = e.ValueFrom
	}
	if src := env["POD_NAMESPACE"]; src == nil || src.FieldRef == nil || src.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("the hub lacks POD_NAMESPACE from the downward API")
	}
	checkGoMemLimit(t, in.hub)
}

// checkHubCertificate checks the cert-manager mode's hub Certificate: it
// writes the hub's Secret, names the hub's Service, and comes from the
// webhook's issuer, whose CA the webhook mounts (ca.crt) to give agents.
func checkHubCertificate(t *testing.T, in *install, secretName string) {
	t.Helper()
	var hubCert, webhookCert *cmCertificate
	webhookSecret := certVolume(t, in).Secret.SecretName
	for _, u := range in.find("Certificate") {
		cert := &cmCertificate{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, cert); err != nil {
			t.Fatal(err)
		}
		switch cert.Spec.SecretName {
		case secretName:
			hubCert = cert
		case webhookSecret:
			webhookCert = cert
		}
	}
	if hubCert == nil || webhookCert == nil {
		t.Fatalf("no Certificate writes the hub's Secret %s (%v) or the webhook's %s (%v)", secretName, hubCert != nil, webhookSecret, webhookCert != nil)
	}
	svc := in.hubService.Name + "." + in.namespace + ".svc"
	if want := []string{svc, svc + ".cluster.local"}; !slices.Equal(hubCert.Spec.DNSNames, want) {
		t.Errorf("the hub's Certificate names %v, want %v", hubCert.Spec.DNSNames, want)
	}
	if diff := cmp.Diff(webhookCert.Spec.IssuerRef, hubCert.Spec.IssuerRef); diff != "" {
		t.Errorf("the hub's Certificate has another issuer than the webhook's (-webhook +hub):\n%s", diff)
	}
	if webhookCert.Spec.PrivateKey.Algorithm != hubCert.Spec.PrivateKey.Algorithm || slices.Equal(webhookCert.Spec.DNSNames, hubCert.Spec.DNSNames) {
		t.Errorf("the hub's Certificate: key %+v, names %v", hubCert.Spec.PrivateKey, hubCert.Spec.DNSNames)
	}
	hasCA := false
	for _, it := range certVolume(t, in).Secret.Items {
		hasCA = hasCA || (it.Key == "ca.crt" && it.Path == "ca.crt")
	}
	if !hasCA {
		t.Errorf("the webhook does not mount ca.crt, which it gives agents to trust for the hub")
	}
}

// hubContainer returns the hub's container.
func hubContainer(t *testing.T, in *install) *corev1.Container {
	t.Helper()
	cs := in.hub.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%s: the hub's Deployment has %d containers, want 1", in.name, len(cs))
	}
	return &cs[0]
}

// hubCertVolume returns the hub's certificate volume, a Secret.
func hubCertVolume(t *testing.T, in *install) *corev1.SecretVolumeSource {
	t.Helper()
	for _, v := range in.hub.Spec.Template.Spec.Volumes {
		if v.Name == "certs" {
			if v.Secret == nil {
				t.Fatalf("%s: the hub's volume \"certs\" is not a Secret", in.name)
			}
			return v.Secret
		}
	}
	t.Fatalf("%s: the hub has no volume \"certs\"", in.name)
	return nil
}

// hubFlags returns the hub's flags as kvinject-hub parses them (internal/hub's
// Flags, with their defaults for flags not given), after checking them as the
// hub does. An unknown flag or a value the hub refuses fails the test.
func hubFlags(t *testing.T, in *install) map[string]string {
	t.Helper()
	var f hub.Flags
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	f.Bind(fs)
	for _, a := range hubContainer(t, in).Args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			t.Fatalf("%s: hub argument %q is not --flag=value", in.name, a)
		}
		if fs.Lookup(name) == nil {
			t.Fatalf("%s: unknown hub flag --%s", in.name, name)
		}
		if err := fs.Set(name, value); err != nil {
			t.Fatalf("%s: --%s=%s: %v", in.name, name, value, err)
		}
	}
	if err := f.Validate(); err != nil {
		t.Fatalf("%s: the hub refuses its flags: %v", in.name, err)
	}
	flags := map[string]string{}
	fs.VisitAll(func(fl *flag.Flag) { flags[fl.Name] = fl.Value.String() })
	return flags
}

// containerPort resolves a port of ctr by number or name.
func containerPort(t *testing.T, ctr *corev1.Container, p intstr.IntOrString) int {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range ctr.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	t.Fatalf("container %s has no port named %q", ctr.Name, p.StrVal)
	return 0
}

// hubGrants are the hub's permissions beyond every ServiceAccount's: create
// TokenReviews, get pods. Nothing else.
var hubGrants = []rbacRule{
	{"", "", "pods", "", "get"},
	{"", "authentication.k8s.io", "tokenreviews", "", "create"},
}

// hubEventsGrants are what Key Vault events add, in the hub's namespace only:
// the Lease through which the replicas elect the deleter of read messages.
var hubEventsGrants = []rbacRule{
	{"", "coordination.k8s.io", "leases", "", "create"},
	{"", "coordination.k8s.io", "leases", eventsLease, "get"},
	{"", "coordination.k8s.io", "leases", eventsLease, "update"},
}

// checkHubRBAC checks the hub's ServiceAccount: with its own token, its rules
// (SelfSubjectRulesReview, minus a ServiceAccount without bindings) are
// exactly hubGrants, in its namespace and another; and SubjectAccessReviews
// asked by the administrator allow what the hub does and refuse, among others,
// listing and watching pods, reading Secrets and changing workloads.
func (c *cluster) checkHubRBAC(t *testing.T, in *install) {
	t.Helper()
	ctx := context.Background()
	ns, sa := in.namespace, in.hub.Spec.Template.Spec.ServiceAccountName
	c.ensureApps(t)
	baseline := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rbac-baseline"}}
	if err := c.client.Create(ctx, baseline); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	_, baseCfg := c.serviceAccountKubeconfig(t, ns, "rbac-baseline")
	_, hubCfg := c.serviceAccountKubeconfig(t, ns, sa)
	hubKube, baseKube := kubernetes.NewForConfigOrDie(hubCfg), kubernetes.NewForConfigOrDie(baseCfg)
	events := hasEvents(t, in)
	for _, reviewNS := range []string{ns, appsNamespace} {
		want := append([]rbacRule(nil), hubGrants...)
		if events && reviewNS == ns {
			want = append(want, hubEventsGrants...)
		}
		sortRules(want)
		got, gotNonResource := rulesReview(t, hubKube, reviewNS)
		base, baseNonResource := rulesReview(t, baseKube, reviewNS)
		if diff := cmp.Diff(want, subtract(got, base)); diff != "" {
			t.Errorf("the hub's permissions in namespace %s (-want +got):\n%s", reviewNS, diff)
		}
		if diff := cmp.Diff(baseNonResource, gotNonResource); diff != "" {
			t.Errorf("the hub's non-resource permissions (-every ServiceAccount's +the hub's):\n%s", diff)
		}
	}

	// The install binds the hub's ClusterRole to the hub's ServiceAccount only.
	for _, u := range in.find("ClusterRoleBinding") {
		b := &rbacv1.ClusterRoleBinding{}
		fromUnstructured(t, u, b)
		for _, s := range b.Subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa && (b.RoleRef.Kind != "ClusterRole" || len(b.Subjects) != 1) {
				t.Errorf("ClusterRoleBinding %s binds %s %s to %v", b.Name, b.RoleRef.Kind, b.RoleRef.Name, b.Subjects)
			}
		}
	}

	ra := func(ns, group, resource, sub, name, verb string) authorizationv1.ResourceAttributes {
		return authorizationv1.ResourceAttributes{Namespace: ns, Group: group, Resource: resource, Subresource: sub, Name: name, Verb: verb}
	}
	webhookSecret := flagValueOr(in, "cert-secret", "")
	checks := []struct {
		allowed bool
		attr    authorizationv1.ResourceAttributes
	}{
		{true, ra("", "authentication.k8s.io", "tokenreviews", "", "", "create")},
		{true, ra(appsNamespace, "", "pods", "", "app-1", "get")},
		{true, ra("kube-system", "", "pods", "", "coredns-1", "get")},
		{true, ra(ns, "", "pods", "", "", "get")},
		{false, ra(appsNamespace, "", "pods", "", "", "list")},
		{false, ra("", "", "pods", "", "", "list")},
		{false, ra(appsNamespace, "", "pods", "", "", "watch")},
		{false, ra(appsNamespace, "", "pods", "", "app-1", "patch")},
		{false, ra(appsNamespace, "", "pods", "", "app-1", "update")},
		{false, ra(appsNamespace, "", "pods", "", "app-1", "delete")},
		{false, ra(appsNamespace, "", "pods", "", "", "create")},
		{false, ra(appsNamespace, "", "pods", "eviction", "app-1", "create")},
		{false, ra(appsNamespace, "", "pods", "exec", "app-1", "create")},
		{false, ra(appsNamespace, "", "pods", "log", "app-1", "get")},
		{false, ra(appsNamespace, "", "pods", "status", "app-1", "get")},
		{false, ra(appsNamespace, "", "secrets", "", "db", "get")},
		{false, ra(ns, "", "secrets", "", "", "get")},
		{false, ra(ns, "", "secrets", "", webhookSecret, "get")},
		{false, ra("", "", "secrets", "", "", "list")},
		{false, ra(appsNamespace, "", "configmaps", "", "", "get")},
		{false, ra(appsNamespace, "", "serviceaccounts", "", "app", "get")},
		{false, ra(appsNamespace, "", "serviceaccounts", "token", "app", "create")},
		{false, ra(appsNamespace, "apps", "deployments", "", "app", "patch")},
		{false, ra(appsNamespace, "apps", "deployments", "", "app", "update")},
		{false, ra(appsNamespace, "apps", "deployments", "", "", "list")},
		{false, ra(ns, "apps", "deployments", "scale", in.hub.Name, "update")},
		{false, ra("", "", "nodes", "", "", "get")},
		{false, ra("", "", "namespaces", "", "", "list")},
		{events, ra(ns, "coordination.k8s.io", "leases", "", "", "create")},
		{events, ra(ns, "coordination.k8s.io", "leases", "", eventsLease, "get")},
		{events, ra(ns, "coordination.k8s.io", "leases", "", eventsLease, "update")},
		{false, ra(ns, "coordination.k8s.io", "leases", "", eventsLease, "delete")},
		{false, ra(ns, "coordination.k8s.io", "leases", "", eventsLease, "patch")},
		{false, ra(ns, "coordination.k8s.io", "leases", "", "kube-controller-manager", "update")},
		{false, ra(ns, "coordination.k8s.io", "leases", "", "", "list")},
		{false, ra(ns, "coordination.k8s.io", "leases", "", "", "watch")},
		{false, ra("kube-system", "coordination.k8s.io", "leases", "", "kube-controller-manager", "update")},
		{false, ra(appsNamespace, "coordination.k8s.io", "leases", "", "", "create")},
		{false, ra(ns, "", "events", "", "", "create")},
		{false, ra("", "authorization.k8s.io", "subjectaccessreviews", "", "", "create")},
		{false, ra("", "certificates.k8s.io", "certificatesigningrequests", "", "", "create")},
		{false, ra("", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", in.webhook.Name, "update")},
		{false, ra("", "rbac.authorization.k8s.io", "clusterroles", "", "", "escalate")},
		{false, ra("", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", "create")},
		{false, ra("", "", "users", "", "", "impersonate")},
		{false, ra("", "", "serviceaccounts", "", "", "impersonate")},
	}
	user := "system:serviceaccount:" + ns + ":" + sa
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	for _, ch := range checks {
		attr := ch.attr
		r, err := c.kube.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups, ResourceAttributes: &attr,
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != ch.allowed {
			what := attr.Resource
			if attr.Subresource != "" {
				what += "/" + attr.Subresource
			}
			t.Errorf("SubjectAccessReview: the hub may %s %s %s (group %q, namespace %q): %v, want %v", attr.Verb, what, attr.Name, attr.Group, attr.Namespace, r.Status.Allowed, ch.allowed)
		}
	}
}

// webhookCA returns the CA the webhook gives agents to trust for the hub:
// ca.crt of the webhook's Secret (built-in: the one it fills; cert-manager:
// the one its pods mount).
func (c *cluster) webhookCA(t *testing.T, in *install) []byte {
	t.Helper()
	name := flagValueOr(in, "cert-secret", "")
	if flagValueOr(in, "cert-mode", "files") != "builtin" {
		name = certVolume(t, in).Secret.SecretName
	}
	ca := c.secret(t, in.namespace, name).Data["ca.crt"]
	if len(ca) == 0 {
		t.Fatalf("Secret %s has no ca.crt", name)
	}
	return ca
}

func (c *cluster) secret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	s, err := c.kube.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Secret %s/%s: %v", ns, name, err)
	}
	return s
}

// verifyPEMCert verifies the first certificate of certPEM for dnsName with the
// roots of caPEM only, as an agent does.
func verifyPEMCert(certPEM, caPEM []byte, dnsName string) error {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return fmt.Errorf("tls.crt is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("ca.crt holds no PEM certificate")
	}
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: dnsName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" {
		t.Fatalf("%q is not an https URL: %v", s, err)
	}
	return u
}

// checkHubInjection creates opted-in pods through the API server: a rotating
// one's agent gets --hub=hubURL, the webhook's CA and the projected token of
// audience kvinject-hub; an init-only one (rotation off) gets none of them.
// It returns the rotating pod.
func (c *cluster) checkHubInjection(t *testing.T, hubURL string, ca []byte, agentImage string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	c.ensureApps(t)
	pod := appPod(appsNamespace, "", "app", "appvault")
	pod.GenerateName = "hub-watcher-"
	if err := c.createInjected(ctx, pod, agentImage); err != nil {
		t.Fatal(err)
	}
	agent := agentOf(pod)
	if !slices.Contains(agent.Args, "--"+agentconfig.FlagHub+"="+hubURL) {
		t.Errorf("the rotating agent's arguments lack --hub=%s: %q", hubURL, agent.Args)
	}
	env := map[string]string{}
	for _, e := range agent.Env {
		env[e.Name] = e.Value
	}
	if got := env[agentconfig.EnvHubCA]; strings.TrimSpace(got) != strings.TrimSpace(string(ca)) {
		t.Errorf("the agent's %s is not the webhook's CA:\n%s", agentconfig.EnvHubCA, got)
	}
	if got, want := env[agentconfig.EnvHubTokenFile], mutate.HubTokenDir+"/"+mutate.HubTokenFile; got != want {
		t.Errorf("the agent's %s = %q, want %q", agentconfig.EnvHubTokenFile, got, want)
	}
	audience := ""
	for _, v := range pod.Spec.Volumes {
		if v.Name == mutate.HubTokenVolumeName && v.Projected != nil && len(v.Projected.Sources) == 1 && v.Projected.Sources[0].ServiceAccountToken != nil {
			audience = v.Projected.Sources[0].ServiceAccountToken.Audience
		}
	}
	if audience != hubapi.Audience {
		t.Errorf("the pod's hub token volume has audience %q, want %q", audience, hubapi.Audience)
	}

	once := appPod(appsNamespace, "", "app", "appvault")
	once.GenerateName = "hub-init-only-"
	once.Annotations[mapping.AnnotationRotation] = "off"
	if err := c.createInjected(ctx, once, agentImage); err != nil {
		t.Fatal(err)
	}
	if a := agentOf(once); slices.ContainsFunc(a.Args, func(s string) bool { return strings.HasPrefix(s, "--"+agentconfig.FlagHub+"=") }) {
		t.Errorf("an init-only agent got the hub: %q", a.Args)
	}
	for _, v := range once.Spec.Volumes {
		if v.Name == mutate.HubTokenVolumeName {
			t.Errorf("an init-only pod got the hub token volume")
		}
	}
	return pod
}

// runHub runs kvinject-hub as the hub's pod template says (its arguments and
// environment, with the listeners moved to 127.0.0.1 and --cert-dir to a
// folder holding its certificate volume's items, as the kubelet writes them),
// authenticated with its ServiceAccount's token, with the environment the
// azure-workload-identity webhook gives its labelled pods. It checks that the
// hub gets ready, serves a certificate agents trust under the --hub-url name,
// and, on the real API server, refuses a request without a token or with a
// token of another audience, and reviews a token bound to pod (TokenReview),
// reads that pod (get) and refuses an object its agent does not read.
func (c *cluster) runHub(t *testing.T, in *install, ca []byte, host string, pod *corev1.Pod) {
	t.Helper()
	if hubBin == "" {
		t.Fatalf("kvinject-hub did not build: %s", hubBuildErr)
	}
	ctr := hubContainer(t, in)
	flags := hubFlags(t, in)
	certDir := t.TempDir()
	vol := hubCertVolume(t, in)
	s := c.secret(t, in.namespace, vol.SecretName)
	var files []atomicdir.File
	for _, it := range vol.Items {
		files = append(files, atomicdir.File{Path: it.Path, Data: s.Data[it.Key]})
	}
	if err := atomicdir.New(certDir, os.FileMode(*vol.DefaultMode)).Write(files); err != nil {
		t.Fatal(err)
	}
	addr, probe, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	var args []string
	for _, a := range ctr.Args {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		switch name {
		case "bind-address":
			a = "--bind-address=" + addr
		case "health-probe-bind-address":
			a = "--health-probe-bind-address=" + probe
		case "metrics-bind-address":
			a = "--metrics-bind-address=" + metricsAddr
		case "cert-dir":
			if value != flags["cert-dir"] {
				t.Fatalf("--cert-dir=%s", value)
			}
			a = "--cert-dir=" + certDir
		case "kubeconfig":
			t.Fatalf("%s: the hub's pod template sets --kubeconfig", in.name)
		}
		args = append(args, a)
	}
	kubeconfig, _ := c.serviceAccountKubeconfig(t, in.namespace, in.hub.Spec.Template.Spec.ServiceAccountName)
	args = append(args, "--kubeconfig="+kubeconfig)
	env := filteredEnviron()
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env = append(env, e.Name+"="+in.namespace)
		default:
			t.Fatalf("hub env %s: unsupported source", e.Name)
		}
	}
	// What the azure-workload-identity webhook injects into the labelled pod.
	// The hub makes no Key Vault request here: no agent watches a vault it
	// could list. With events it tries to read the queue and fails to sign in
	// (no Azure here), which it logs and retries; the sweep would go on.
	tokenFile := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(tokenFile, []byte("not-a-real-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	env = append(env, "AZURE_CLIENT_ID="+hubClientID, "AZURE_TENANT_ID=contoso.onmicrosoft.com",
		"AZURE_FEDERATED_TOKEN_FILE="+tokenFile, "AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/")

	logFile := filepath.Join(c.work, fmt.Sprintf("hub-%d.log", time.Now().UnixNano()))
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(hubBin, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	hubLog := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(os.Interrupt)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			t.Logf("--- hub log (%s) ---\n%s", strings.Join(args, " "), hubLog())
		}
	})

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("the hub exited before it was ready:\n%s", hubLog())
		default:
		}
		if code, _ := httpGet("http://" + probe + ctr.ReadinessProbe.HTTPGet.Path); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			_, body := httpGet("http://" + probe + ctr.ReadinessProbe.HTTPGet.Path + "?verbose")
			t.Fatalf("the hub is not ready within 60s: %s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := httpGet("http://" + probe + ctr.LivenessProbe.HTTPGet.Path); code != http.StatusOK {
		t.Fatalf("the hub's liveness %s answers %d: %s", ctr.LivenessProbe.HTTPGet.Path, code, body)
	}
	if hasEvents(t, in) {
		// With its ServiceAccount's rights, the hub takes the events Lease.
		var holder string
		for deadline := time.Now().Add(30 * time.Second); holder == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if l, err := c.kube.CoordinationV1().Leases(in.namespace).Get(context.Background(), eventsLease, metav1.GetOptions{}); err == nil && l.Spec.HolderIdentity != nil {
				holder = *l.Spec.HolderIdentity
			}
		}
		if holder == "" {
			t.Fatalf("the hub did not take the Lease %s/%s within 30s:\n%s", in.namespace, eventsLease, hubLog())
		}
		if !strings.Contains(hubLog(), "holding the events Lease") {
			t.Errorf("the hub holds the Lease (as %s) but did not log it:\n%s", holder, hubLog())
		}
	}

	// An agent's connection: only the webhook's CA, the --hub-url name.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	}
	agentClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext:     dial,
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12},
	}}
	watchURL := "https://" + host + hubapi.WatchPath
	watch := func(token string, req hubapi.WatchRequest) (int, *hubapi.Refusal, error) {
		body, _ := json.Marshal(req)
		r, _ := http.NewRequest(http.MethodPost, watchURL, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := agentClient.Do(r)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return resp.StatusCode, nil, nil
		}
		return resp.StatusCode, hubapi.ReadRefusal(resp), nil
	}
	vault := ""
	for _, a := range agentOf(pod).Args {
		if v, ok := strings.CutPrefix(a, "--"+agentconfig.FlagVault+"="); ok {
			vault = v
		}
	}
	notThePods := hubapi.WatchRequest{Vault: vault, Objects: []hubapi.Object{{Kind: hubapi.KindSecret, Name: "ANOTHER-PODS-SECRET", Version: strings.Repeat("0a", 16)}}}
	token := func(audiences ...string) string {
		exp := int64(600)
		tr, err := c.kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: audiences, ExpirationSeconds: &exp,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("a token bound to pod %s: %v", pod.Name, err)
		}
		return tr.Status.Token
	}
	for _, tc := range []struct {
		what, token string
		status      int
		reason      string
	}{
		{"no token", "", http.StatusUnauthorized, hubapi.ReasonUnauthenticated},
		{"a token for the API server", token(), http.StatusUnauthorized, hubapi.ReasonUnauthenticated},
		{"the pod's hub token, another pod's object", token(hubapi.Audience), http.StatusForbidden, hubapi.ReasonNotPodObject},
	} {
		code, ref, err := watch(tc.token, notThePods)
		if err != nil {
			t.Fatalf("%s: an agent's request to the hub: %v", tc.what, err)
		}
		if code != tc.status || ref == nil || ref.Reason != tc.reason {
			t.Errorf("%s: the hub answered %d %+v, want %d %s", tc.what, code, ref, tc.status, tc.reason)
		}
	}
}

// TestBuiltinCertsHubEnabledLater enables the hub on a running built-in
// certificate install, as an upgrade does: the webhook's certificate, issued
// before without the hub's name, must name the hub once the webhook restarts
// with --hub-url, or agents could not verify the hub until the certificate's
// renewal, months later.
func TestBuiltinCertsHubEnabledLater(t *testing.T) {
	c := startCluster(t)
	before := renderKustomize(t, "manifests/install/builtin-certs")
	c.apply(t, before.objs)
	kubeconfig, _ := c.serviceAccountKubeconfig(t, before.namespace, before.deployment.Spec.Template.Spec.ServiceAccountName)
	secret := flagValue(t, before, "cert-secret")
	b := &builtinInstall{c: c, in: before, kubeconfig: kubeconfig, secret: types.NamespacedName{Namespace: before.namespace, Name: secret}}
	for _, r := range b.start(t) {
		r.stop()
	}
	old := c.secret(t, before.namespace, secret)

	after := renderKustomize(t, "manifests/install/builtin-certs-hub")
	c.apply(t, after.objs)
	b.in = after
	replicas := b.start(t)
	host := mustURL(t, flagValue(t, after, "hub-url")).Hostname()
	eventually(t, 20*time.Second, "the webhook's certificate names the hub", func() error {
		s := c.secret(t, after.namespace, secret)
		if err := verifyPEMCert(s.Data["tls.crt"], s.Data["ca.crt"], host); err != nil {
			return fmt.Errorf("the Secret's certificate: %w", err)
		}
		for _, r := range replicas {
			if err := r.verifyAsAPIServer(s.Data["ca.crt"], host); err != nil {
				return fmt.Errorf("%s serves a certificate without %s: %w", r.name, host, err)
			}
		}
		return nil
	})
	if s := c.secret(t, after.namespace, secret); !bytes.Equal(s.Data["ca.crt"], old.Data["ca.crt"]) {
		t.Error("adding the hub's name replaced the CA, which pods admitted before still trust")
	}
}
