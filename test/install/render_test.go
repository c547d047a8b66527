//go:build integration

package install

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/kvinject/kvinject/internal/certs"
	"github.com/kvinject/kvinject/internal/injector"
)

// install is one rendering of kvinject's installation.
type install struct {
	// name says where it comes from, e.g. "kustomize manifests/install/builtin-certs".
	name string
	objs []*unstructured.Unstructured
	// namespace is the webhook's namespace.
	namespace  string
	deployment *appsv1.Deployment
	service    *corev1.Service
	webhook    *admissionv1.MutatingWebhookConfiguration
	// hub and hubService are the version hub's (docs/hub.md); nil without it.
	hub        *appsv1.Deployment
	hubService *corev1.Service
	// restarter and hubPeers are the restart controller's Deployment and the
	// headless Service through which it reads every hub replica
	// (docs/actions.md); nil without it.
	restarter *appsv1.Deployment
	hubPeers  *corev1.Service
}

// renderKustomize builds a kustomization folder of the repository or, with
// components (folders of the repository, "" ignored), an overlay written for
// the test that lists dir and them, like a user's own.
func renderKustomize(t *testing.T, dir string, components ...string) *install {
	t.Helper()
	build, name := filepath.Join(root, dir), dir
	if components = slices.DeleteFunc(slices.Clone(components), func(c string) bool { return c == "" }); len(components) > 0 {
		build, name = t.TempDir(), dir+" with "+strings.Join(components, ", ")
		rel := func(p string) string {
			r, err := filepath.Rel(build, filepath.Join(root, p))
			if err != nil {
				t.Fatal(err)
			}
			return r // kustomize refuses absolute paths
		}
		k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - " + rel(dir) + "\ncomponents:\n"
		for _, c := range components {
			k += "  - " + rel(c) + "\n"
		}
		if err := os.WriteFile(filepath.Join(build, "kustomization.yaml"), []byte(k), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	out := runTool(t, kustomizeBin, "build", build)
	t.Logf("kustomize build %s: %s", name, time.Since(start).Round(time.Millisecond))
	return parseInstall(t, "kustomize "+name, out)
}

// renderHelm renders the chart for a release in namespace with --set values.
func renderHelm(t *testing.T, release, namespace string, set ...string) *install {
	t.Helper()
	args := []string{"template", release, filepath.Join(root, "charts", "kvinject"), "--namespace", namespace}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	start := time.Now()
	out := runTool(t, helmBin, args...)
	t.Logf("helm template %s: %s", strings.Join(set, " "), time.Since(start).Round(time.Millisecond))
	return parseInstall(t, fmt.Sprintf("helm chart (release %s in %s, %s)", release, namespace, strings.Join(set, ",")), out)
}

func runTool(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func parseInstall(t *testing.T, name string, yamlDocs []byte) *install {
	t.Helper()
	in := &install{name: name, objs: decodeYAML(t, yamlDocs)}
	for _, u := range in.objs {
		// The webhook's and the hub's objects are told apart by their component.
		component := u.GetLabels()["app.kubernetes.io/component"]
		switch u.GetKind() {
		case "Deployment":
			d := &appsv1.Deployment{}
			fromUnstructured(t, u, d)
			switch component {
			case "webhook":
				in.deployment = d
				in.namespace = u.GetNamespace()
			case "hub":
				in.hub = d
			case "restarter":
				in.restarter = d
			default:
				t.Fatalf("%s: %s has the component label %q, want webhook, hub or restarter", name, describe(u), component)
			}
		case "Service":
			svc := &corev1.Service{}
			fromUnstructured(t, u, svc)
			switch component {
			case "webhook":
				in.service = svc
			case "hub":
				in.hubService = svc
			case "hub-peers":
				in.hubPeers = svc
			default:
				t.Fatalf("%s: %s has the component label %q, want webhook, hub or hub-peers", name, describe(u), component)
			}
		case "MutatingWebhookConfiguration":
			in.webhook = &admissionv1.MutatingWebhookConfiguration{}
			fromUnstructured(t, u, in.webhook)
		}
	}
	if in.deployment == nil || in.service == nil || in.webhook == nil {
		t.Fatalf("%s: rendered no Deployment, Service or MutatingWebhookConfiguration", name)
	}
	if (in.hub == nil) != (in.hubService == nil) {
		t.Fatalf("%s: the hub's Deployment and Service come together: rendered %v and %v", name, in.hub != nil, in.hubService != nil)
	}
	if (in.restarter == nil) != (in.hubPeers == nil) || (in.restarter != nil && in.hub == nil) {
		t.Fatalf("%s: the restarter comes with the hub and its peers' Service: rendered restarter %v, peers %v, hub %v", name, in.restarter != nil, in.hubPeers != nil, in.hub != nil)
	}
	return in
}

func decodeYAML(t *testing.T, docs []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(docs), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("decoding YAML: %v", err)
		}
		if len(u.Object) == 0 {
			continue
		}
		objs = append(objs, u)
	}
}

func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
		t.Fatalf("%s: %v", describe(u), err)
	}
}

// find returns the rendered objects of a kind.
func (in *install) find(kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, u := range in.objs {
		if u.GetKind() == kind {
			out = append(out, u)
		}
	}
	return out
}

// container returns the webhook's container.
func (in *install) container(t *testing.T) *corev1.Container {
	t.Helper()
	cs := in.deployment.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%s: the Deployment has %d containers, want 1", in.name, len(cs))
	}
	return &cs[0]
}

// TestHelmLint runs `helm lint --strict` for both certificate modes, with and
// without the hub and the restart controller, and checks that
// values.schema.json refuses a wrong value, and the chart a bad combination,
// with a useful message.
func TestHelmLint(t *testing.T) {
	chart := filepath.Join(root, "charts", "kvinject")
	for _, set := range [][]string{nil, {"certificates.mode=cert-manager"}, {"certificates.mode=cert-manager", "certificates.certManager.issuerRef.name=corp-ca", "certificates.certManager.issuerRef.kind=ClusterIssuer"},
		hubValues, append([]string{"certificates.mode=cert-manager"}, hubValues...), {"hub.enabled=true", "hub.identity.kind=system"},
		append(append([]string(nil), hubValues...), eventsValues...),
		append(append([]string(nil), hubValues...), "restarter.enabled=true"),
		append(append([]string{"certificates.mode=cert-manager"}, hubValues...), "restarter.enabled=true")} {
		args := []string{"lint", "--strict", chart}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		runTool(t, helmBin, args...)
	}
	for _, tc := range []struct{ set, want string }{
		{"certificates.mode=vault", "/certificates/mode"},
		{"webhook.failurePolicy=Allow", "/webhook/failurePolicy"},
		{"defaults.cloud=AzureGermanCloud", "/defaults/cloud"},
		{"replicaCount=0", "/replicaCount"},
		{"unknownValue=1", "unknownValue"},
		{"hub.identity.kind=pod", "/hub/identity/kind"},
		{"hub.readBudget=0", "/hub/readBudget"},
		{"hub.readBudget=500", "/hub/readBudget"},
		{"hub.sweepInterval=often", "/hub/sweepInterval"},
		{"hub.watchKinds=certificate", "/hub/watchKinds"},
		{"hub.replicas=0", "/hub/replicas"},
		{"hub.events.queues={https://contosokvevents.blob.core.windows.net/kvinject-events}", "/hub/events/queues/0"},
		{"hub.events.queues={https://contosokvevents.queue.core.windows.net/kvinject-events?sig=x}", "/hub/events/queues/0"},
		{"restarter.debounce=soon", "/restarter/debounce"},
		{"restarter.cooldown=120", "/restarter/cooldown"},
		{"restarter.logLevel=trace", "/restarter/logLevel"},
		{"restarter.image.digest=latest", "/restarter/image/digest"},
		{"restarter.extraArgs={debounce=1s}", "/restarter/extraArgs/0"},
		{"restarter.replicas=2", "replicas"},
	} {
		cmd := exec.Command(helmBin, "lint", "--strict", chart, "--set", tc.set)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("helm lint --set %s: %v, output lacks %q:\n%s", tc.set, err, tc.want, out)
		}
	}
	cmd := exec.Command(helmBin, "template", "x", chart, "--set", "defaults.identity=managed")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "defaults.managedIdentityClientID") {
		t.Errorf("identity managed without a client ID: %v\n%s", err, out)
	}
	cmd = exec.Command(helmBin, "template", "x", chart, "--set", "restarter.enabled=true")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "restarter.enabled=true needs hub.enabled=true") {
		t.Errorf("the restarter without the hub: %v\n%s", err, out)
	}
	for _, kind := range []string{"workload", "managed"} {
		cmd := exec.Command(helmBin, "template", "x", chart, "--set", "hub.enabled=true", "--set", "hub.identity.kind="+kind)
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "hub.identity.clientID") {
			t.Errorf("the hub's identity %s without a client ID: %v\n%s", kind, err, out)
		}
	}
}

// TestKustomizeAndHelmAgree checks that the chart, with default values and the
// release "kvinject" in kvinject-system, installs what the kustomize install
// does: the same objects, webhook configuration, RBAC rules, pod template and
// effective webhook flags (after the kubelet's $(VAR) expansion, with the
// webhook's defaults for flags one side leaves out). With the version hub
// (hub.enabled, the kustomize installs *-hub), the hub's objects, pod template
// and flags too; with Key Vault events (hub.events.queues, the overlay
// manifests/examples/hub-events), its Lease RBAC too; with the restart
// controller (restarter.enabled, the overlay manifests/examples/restarter),
// its RBAC, policy, peers' Service, pod template and flags, and the
// webhook's --restart-action=true.
func TestKustomizeAndHelmAgree(t *testing.T) {
	for _, mode := range []struct {
		kustomize, helmMode    string
		hub, events, restarter bool
	}{
		{"manifests/install/builtin-certs", "builtin", false, false, false},
		{"manifests/install/cert-manager", "cert-manager", false, false, false},
		{"manifests/install/builtin-certs-hub", "builtin", true, false, false},
		{"manifests/install/cert-manager-hub", "cert-manager", true, false, false},
		{"manifests/examples/hub-events", "builtin", true, true, false},
		{"manifests/examples/restarter", "builtin", true, false, true},
		// No overlay of the repository lists the restarter with cert-manager:
		// the test writes one.
		{"manifests/install/cert-manager-hub+manifests/components/restarter-cert-manager", "cert-manager", true, false, true},
	} {
		name := mode.helmMode
		if mode.hub {
			name += "+hub"
		}
		if mode.events {
			name += "+events"
		}
		if mode.restarter {
			name += "+restarter"
		}
		t.Run(name, func(t *testing.T) {
			dir, components, _ := strings.Cut(mode.kustomize, "+")
			k := renderKustomize(t, dir, strings.Split(components, "+")...)
			set := []string{"certificates.mode=" + mode.helmMode}
			if mode.hub {
				set = append(set, hubValues...)
			}
			if mode.events {
				set = append(set, eventsValues...)
			}
			if mode.restarter {
				set = append(set, "restarter.enabled=true")
			}
			h := renderHelm(t, "kvinject", "kvinject-system", set...)
			if (k.hub != nil) != mode.hub || (h.hub != nil) != mode.hub {
				t.Fatalf("the hub is rendered by kustomize: %v, by Helm: %v; want %v", k.hub != nil, h.hub != nil, mode.hub)
			}
			if (k.restarter != nil) != mode.restarter || (h.restarter != nil) != mode.restarter {
				t.Fatalf("the restarter is rendered by kustomize: %v, by Helm: %v; want %v", k.restarter != nil, h.restarter != nil, mode.restarter)
			}
			if mode.restarter {
				// Both give the webhook --restart-action=true (checked with the
				// rest of the restarter's rendering); the rest of its flags is
				// compared below as in the other modes.
				for _, in := range []*install{k, h} {
					checkRestarterRendering(t, in)
					in.deployment = withoutArg(t, in, "--restart-action=true")
				}
			}

			// The same objects, except the ConfigMap kustomize uses for the flags
			// and the Namespace (Helm installs into an existing one).
			names := func(in *install) []string {
				var out []string
				for _, u := range in.objs {
					if u.GetKind() == "ConfigMap" || u.GetKind() == "Namespace" {
						continue
					}
					out = append(out, describe(u))
				}
				sort.Strings(out)
				return out
			}
			if diff := cmp.Diff(names(k), names(h)); diff != "" {
				t.Errorf("objects differ (-kustomize +helm):\n%s", diff)
			}

			kw, hw := k.webhook, h.webhook
			if diff := cmp.Diff(kw.Webhooks, hw.Webhooks); diff != "" {
				t.Errorf("webhooks differ (-kustomize +helm):\n%s", diff)
			}
			if diff := cmp.Diff(kw.Annotations, hw.Annotations); diff != "" {
				t.Errorf("webhook configuration annotations differ (-kustomize +helm):\n%s", diff)
			}
			if k.webhook.Labels["admissions.enforcer/disabled"] != "true" || h.webhook.Labels["admissions.enforcer/disabled"] != "true" {
				t.Error("the webhook configuration lacks the label AKS's admissions enforcer respects")
			}

			if diff := cmp.Diff(rbacRules(t, k), rbacRules(t, h)); diff != "" {
				t.Errorf("RBAC differs (-kustomize +helm):\n%s", diff)
			}

			if diff := cmp.Diff(effectiveFlags(t, k), effectiveFlags(t, h)); diff != "" {
				t.Errorf("effective webhook flags differ (-kustomize +helm):\n%s", diff)
			}

			// The pod templates, but for labels, flags and the ConfigMap-based env.
			kp, hp := k.deployment.Spec.Template.DeepCopy(), h.deployment.Spec.Template.DeepCopy()
			for _, p := range []*corev1.PodTemplateSpec{kp, hp} {
				p.Labels = nil
				for i := range p.Spec.TopologySpreadConstraints {
					p.Spec.TopologySpreadConstraints[i].LabelSelector = nil
				}
				p.Spec.Containers[0].Args = nil
				p.Spec.Containers[0].Env = nil
			}
			if diff := cmp.Diff(kp, hp); diff != "" {
				t.Errorf("pod templates differ (-kustomize +helm):\n%s", diff)
			}
			kd, hd := k.deployment.Spec.DeepCopy(), h.deployment.Spec.DeepCopy()
			kd.Template, hd.Template, kd.Selector, hd.Selector = corev1.PodTemplateSpec{}, corev1.PodTemplateSpec{}, nil, nil
			if diff := cmp.Diff(kd, hd); diff != "" {
				t.Errorf("Deployment specs differ (-kustomize +helm):\n%s", diff)
			}
			if mode.hub {
				compareHubs(t, k, h)
			}
			if mode.restarter {
				compareRestarters(t, k, h)
			}
		})
	}
}

// withoutArg returns a copy of the webhook's Deployment without arg, which
// it must give exactly once.
func withoutArg(t *testing.T, in *install, arg string) *appsv1.Deployment {
	t.Helper()
	d := in.deployment.DeepCopy()
	args := d.Spec.Template.Spec.Containers[0].Args
	i := slices.Index(args, arg)
	if i < 0 || slices.Index(args[i+1:], arg) >= 0 {
		t.Fatalf("%s: the webhook's arguments %q hold %s %d times, want once", in.name, args, arg, strings.Count(strings.Join(args, " ")+" ", arg+" "))
	}
	d.Spec.Template.Spec.Containers[0].Args = slices.Delete(slices.Clone(args), i, i+1)
	return d
}

// hubValues enable the hub in the chart, with the workload identity the
// kustomize install leaves to an overlay.
var hubValues = []string{"hub.enabled=true", "hub.identity.clientID=" + hubClientID}

// hubClientID is the client ID of the hub's Azure identity in the tests.
const hubClientID = "0b0b0b0b-1111-4222-8333-444455556666"

// compareHubs checks that the chart's hub is the kustomize install's: its
// pod template (labels aside, but for the workload identity one), its flags,
// its Deployment's and Service's specs (selectors aside).
func compareHubs(t *testing.T, k, h *install) {
	t.Helper()
	const wiLabel = "azure.workload.identity/use"
	kp, hp := k.hub.Spec.Template.DeepCopy(), h.hub.Spec.Template.DeepCopy()
	if kp.Labels[wiLabel] != "true" || hp.Labels[wiLabel] != "true" {
		t.Errorf("the hub's pods lack the label %s=true (kustomize %q, Helm %q)", wiLabel, kp.Labels[wiLabel], hp.Labels[wiLabel])
	}
	if diff := cmp.Diff(hubFlags(t, k), hubFlags(t, h)); diff != "" {
		t.Errorf("the hub's flags differ (-kustomize +helm):\n%s", diff)
	}
	for _, p := range []*corev1.PodTemplateSpec{kp, hp} {
		p.Labels = nil
		for i := range p.Spec.TopologySpreadConstraints {
			p.Spec.TopologySpreadConstraints[i].LabelSelector = nil
		}
		p.Spec.Containers[0].Args = nil
	}
	if diff := cmp.Diff(kp, hp); diff != "" {
		t.Errorf("the hub's pod templates differ (-kustomize +helm):\n%s", diff)
	}
	kd, hd := k.hub.Spec.DeepCopy(), h.hub.Spec.DeepCopy()
	kd.Template, hd.Template, kd.Selector, hd.Selector = corev1.PodTemplateSpec{}, corev1.PodTemplateSpec{}, nil, nil
	if diff := cmp.Diff(kd, hd); diff != "" {
		t.Errorf("the hub's Deployment specs differ (-kustomize +helm):\n%s", diff)
	}
	ks, hs := k.hubService.Spec.DeepCopy(), h.hubService.Spec.DeepCopy()
	ks.Selector, hs.Selector = nil, nil
	if diff := cmp.Diff(ks, hs); diff != "" {
		t.Errorf("the hub's Service specs differ (-kustomize +helm):\n%s", diff)
	}
}

// rbacRule is one permission, for comparisons.
type rbacRule struct{ Namespace, Group, Resource, Name, Verb string }

// rbacRules expands the rendered Roles and ClusterRoles into single permissions.
func rbacRules(t *testing.T, in *install) []rbacRule {
	t.Helper()
	var out []rbacRule
	for _, kind := range []string{"ClusterRole", "Role"} {
		for _, u := range in.find(kind) {
			var rules []rbacv1.PolicyRule
			if kind == "Role" {
				r := &rbacv1.Role{}
				fromUnstructured(t, u, r)
				rules = r.Rules
			} else {
				r := &rbacv1.ClusterRole{}
				fromUnstructured(t, u, r)
				rules = r.Rules
			}
			out = append(out, expandRules(u.GetNamespace(), rules)...)
		}
	}
	sortRules(out)
	return out
}

func expandRules(ns string, rules []rbacv1.PolicyRule) []rbacRule {
	var out []rbacRule
	for _, r := range rules {
		names := r.ResourceNames
		if len(names) == 0 {
			names = []string{""}
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, n := range names {
					for _, v := range r.Verbs {
						out = append(out, rbacRule{ns, g, res, n, v})
					}
				}
			}
		}
	}
	return out
}

func sortRules(rs []rbacRule) {
	sort.Slice(rs, func(i, j int) bool { return fmt.Sprint(rs[i]) < fmt.Sprint(rs[j]) })
}

// effectiveFlags returns the webhook's flag values as the kubelet would start
// it (configMapKeyRef values from the rendered ConfigMaps), with the webhook's
// own default for each injector and certificate flag not given. An unknown
// flag fails the test.
func effectiveFlags(t *testing.T, in *install) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range in.container(t).Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env[e.Name] = in.namespace
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			found := false
			for _, u := range in.find("ConfigMap") {
				if u.GetName() == ref.Name {
					v, ok, _ := unstructured.NestedString(u.Object, "data", ref.Key)
					if !ok {
						t.Fatalf("%s: ConfigMap %s has no key %s", in.name, ref.Name, ref.Key)
					}
					env[e.Name], found = v, true
				}
			}
			if !found {
				t.Fatalf("%s: env %s refers to ConfigMap %s, which is not rendered", in.name, e.Name, ref.Name)
			}
		default:
			t.Fatalf("%s: env %s: unsupported source", in.name, e.Name)
		}
	}
	// The injector's and the certificates' flags, parsed as the webhook parses
	// them (so that "87600h" and "87600h0m0s" compare equal), with their defaults.
	var io injector.Options
	var co certs.Options
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	io.BindFlags(fs)
	co.BindFlags(fs)
	mainFlags := map[string]bool{"cert-dir": true, "port": true, "host": true, "metrics-bind-address": true, "health-probe-bind-address": true, "zap-log-level": true}
	flags := map[string]string{}
	for _, a := range in.container(t).Args {
		name, value, ok := strings.Cut(strings.TrimPrefix(expandVars(a, env), "--"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			t.Fatalf("%s: webhook argument %q is not --flag=value", in.name, a)
		}
		switch {
		case mainFlags[name]:
			flags[name] = value
		case fs.Lookup(name) != nil:
			if err := fs.Set(name, value); err != nil {
				t.Fatalf("%s: --%s=%s: %v", in.name, name, value, err)
			}
		default:
			t.Fatalf("%s: unknown webhook flag --%s", in.name, name)
		}
	}
	fs.VisitAll(func(f *flag.Flag) { flags[f.Name] = f.Value.String() })
	return flags
}

// expandVars expands $(VAR) references like the kubelet does for a container's
// command and args: $(VAR) of a defined variable becomes its value, $$ becomes $,
// and anything else is left as written.
func expandVars(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteByte('$')
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func TestExpandVars(t *testing.T) {
	env := map[string]string{"A": "x", "EMPTY": ""}
	for in, want := range map[string]string{
		"--a=$(A)": "--a=x", "--e=$(EMPTY)": "--e=", "--u=$(UNSET)": "--u=$(UNSET)", "$$(A)": "$(A)", "a$": "a$", "$(A": "$(A",
	} {
		if got := expandVars(in, env); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}
