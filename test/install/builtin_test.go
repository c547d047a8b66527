//go:build integration

package install

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// builtinInstall is an applied install in built-in certificate mode.
type builtinInstall struct {
	c          *cluster
	in         *install
	kubeconfig string
	secret     types.NamespacedName
	agentImage string
}

// proveBuiltin applies in and proves it: objects, Pod Security, RBAC, then the
// webhook's replicas create one certificate, store it, inject its CA, serve it,
// and pods are injected through the API server; re-applying the install keeps
// the certificate.
func proveBuiltin(t *testing.T, c *cluster, in *install, agentImage string) *builtinInstall {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	c.apply(t, in.objs)
	t.Logf("%s: %d objects applied in %s", in.name, len(in.objs), time.Since(start).Round(time.Millisecond))

	b := &builtinInstall{c: c, in: in, agentImage: agentImage}
	b.secret = types.NamespacedName{Namespace: in.namespace, Name: flagValue(t, in, "cert-secret")}
	sa := in.deployment.Spec.Template.Spec.ServiceAccountName
	kubeconfig, saCfg := c.serviceAccountKubeconfig(t, in.namespace, sa)
	b.kubeconfig = kubeconfig

	t.Run("pod security", func(t *testing.T) { c.checkPodSecurity(t, in) })
	t.Run("rbac", func(t *testing.T) {
		c.ensureApps(t)
		c.checkRBAC(t, in, saCfg, true, b.secret.Name)
	})
	if t.Failed() {
		t.FailNow()
	}

	if s := b.getSecret(t); len(s.Data) != 0 {
		t.Fatalf("the installed Secret %s already holds data", b.secret)
	}
	if len(b.caBundle(t)) != 0 {
		t.Fatal("the installed webhook configuration already has a caBundle")
	}

	// All replicas start at once on the empty Secret and race to fill it.
	replicas := b.start(t)
	secret := b.getSecret(t)
	for _, k := range []string{"ca.crt", "tls.crt", "tls.key", "ca.key"} {
		if len(secret.Data[k]) == 0 {
			t.Fatalf("the webhook did not write %s into Secret %s", k, b.secret)
		}
	}
	if got := b.caBundle(t); !bytes.Equal(got, secret.Data["ca.crt"]) {
		t.Fatalf("caBundle is not the Secret's CA:\n%s", got)
	}
	b.checkReplicasServe(t, replicas, secret)

	t.Run("injection", func(t *testing.T) { c.checkInjection(t, in, agentImage) })

	t.Run("reapply keeps the certificate", func(t *testing.T) {
		c.apply(t, in.objs)
		after := b.getSecret(t)
		if !bytes.Equal(after.Data["tls.crt"], secret.Data["tls.crt"]) || !bytes.Equal(after.Data["ca.crt"], secret.Data["ca.crt"]) {
			t.Fatal("re-applying the install changed the certificate")
		}
		if !bytes.Equal(b.caBundle(t), secret.Data["ca.crt"]) {
			t.Fatal("re-applying the install removed or changed caBundle")
		}
		pod := appPod(appsNamespace, "", "app", "appvault")
		pod.GenerateName = "after-reapply-"
		if err := c.createInjected(ctx, pod, agentImage); err != nil {
			t.Fatal(err)
		}
	})
	return b
}

// start starts the Deployment's replicas with fresh in-memory certificate
// folders (the emptyDir), as the installed ServiceAccount.
func (b *builtinInstall) start(t *testing.T, extraArgs ...string) []*replica {
	t.Helper()
	n := 2
	if r := b.in.deployment.Spec.Replicas; r != nil {
		n = int(*r)
	}
	if n < 2 {
		t.Fatalf("%s: %d replicas, want 2 or more", b.in.name, n)
	}
	var dirs []string
	for i := 0; i < n; i++ {
		dirs = append(dirs, t.TempDir())
	}
	return b.c.startReplicas(t, b.in, b.kubeconfig, dirs, extraArgs...)
}

func (b *builtinInstall) getSecret(t *testing.T) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := b.c.client.Get(context.Background(), b.secret, s); err != nil {
		t.Fatalf("Secret %s: %v", b.secret, err)
	}
	return s
}

func (b *builtinInstall) caBundle(t *testing.T) []byte {
	t.Helper()
	mwc := &admissionv1.MutatingWebhookConfiguration{}
	if err := b.c.client.Get(context.Background(), types.NamespacedName{Name: b.in.webhook.Name}, mwc); err != nil {
		t.Fatal(err)
	}
	return mwc.Webhooks[0].ClientConfig.CABundle
}

// checkReplicasServe checks that every replica serves the Secret's certificate,
// and that the API server's way of verifying it (caBundle, Service DNS name)
// accepts it.
func (b *builtinInstall) checkReplicasServe(t *testing.T, replicas []*replica, secret *corev1.Secret) {
	t.Helper()
	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatal("the Secret's tls.crt is not PEM")
	}
	for _, r := range replicas {
		eventually(t, 15*time.Second, r.name+" serves the Secret's certificate", func() error {
			cert, err := r.servedCert()
			if err != nil {
				return err
			}
			if !bytes.Equal(cert.Raw, block.Bytes) {
				return fmt.Errorf("serves %s, the Secret holds %s", fingerprint(cert.Raw), fingerprint(block.Bytes))
			}
			return r.verifyAsAPIServer(secret.Data["ca.crt"], b.in.serviceDNSName())
		})
	}
}

// flagValue returns the value of a webhook flag in the rendered pod template.
func flagValue(t *testing.T, in *install, name string) string {
	t.Helper()
	for _, a := range in.container(t).Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	t.Fatalf("%s: the webhook has no --%s", in.name, name)
	return ""
}

// TestKustomizeBuiltinCerts installs manifests/install/builtin-certs and proves
// it, then renews the certificate under load and uninstalls.
func TestKustomizeBuiltinCerts(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/install/builtin-certs")
	b := proveBuiltin(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
	t.Run("renewal under load", b.renewUnderLoad)
	t.Run("uninstall", func(t *testing.T) { uninstall(t, c, in) })
}

// TestHelmBuiltinCerts installs the chart with its default values in a
// namespace of another name, labelled as docs/install.md tells Helm users.
func TestHelmBuiltinCerts(t *testing.T) {
	c := startCluster(t)
	const ns = "platform-kvinject"
	c.ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, nil)
	in := renderHelm(t, "kvinject", ns)
	proveBuiltin(t, c, in, "ghcr.io/kvinject/agent:v0.1.0")
}

// TestPlatformDefaults installs manifests/examples/platform (built-in
// certificates plus the defaults component) and checks that the defaults reach
// the pods: the vault, the managed identity and the agent image.
func TestPlatformDefaults(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/examples/platform")
	const agentImage = "contosoregistry.azurecr.io/kvinject/agent:v0.1.0"
	if got := in.container(t).Image; got != "contosoregistry.azurecr.io/kvinject/webhook:v0.1.0" {
		t.Errorf("webhook image %q", got)
	}
	proveBuiltin(t, c, in, agentImage)

	// A pod that names no vault, of a ServiceAccount without workload identity.
	pod := appPod(appsNamespace, "platform-defaults", "plain", "")
	if err := c.createInjected(context.Background(), pod, agentImage); err != nil {
		t.Fatal(err)
	}
	agent := agentOf(pod)
	args := strings.Join(agent.Args, " ")
	for _, want := range []string{"--vault=https://contoso-platform.vault.azure.net/", "--identity=managed"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
	env := map[string]string{}
	for _, e := range agent.Env {
		env[e.Name] = e.Value
	}
	if env["AZURE_CLIENT_ID"] != "2c3d5a8e-6f1b-4e0a-9d7c-3b2a1f0e9d8c" || env["AZURE_TENANT_ID"] != "72f988bf-86f1-41af-91ab-2d7cd011db47" {
		t.Errorf("agent identity env: %v", env)
	}
}

// renewUnderLoad restarts the replicas with a short certificate lifetime, so
// that they renew the serving certificate every few seconds, while pods are
// created without pause. No creation may fail, the CA must stay, and each
// replica must end up serving the latest certificate.
func (b *builtinInstall) renewUnderLoad(t *testing.T) {
	ctx := context.Background()
	before := b.getSecret(t)
	// Renew when less than 8761h59m56s is left: the current 1-year certificate at
	// once, each new 8762h certificate 4 seconds after it is issued.
	replicas := b.start(t, "--cert-validity=8762h", "--cert-renew-before=8761h59m56s", "--cert-check-interval=1s")

	var (
		mu        sync.Mutex
		seen      = map[string]bool{}
		order     []string
		served    = map[string]map[string]bool{} // replica -> certificates served
		handshake []string                       // failed handshakes
	)
	caBundle := b.caBundle(t)
	// observe records the Secret's certificate and, for each replica, connects
	// as a new API server connection would: trusting caBundle only, verifying the
	// Service's name. Existing connections keep their session; new ones see the
	// certificate of the moment.
	observe := func() {
		s := &corev1.Secret{}
		if err := b.c.client.Get(ctx, b.secret, s); err == nil {
			if block, _ := pem.Decode(s.Data["tls.crt"]); block != nil {
				mu.Lock()
				if fp := fingerprint(block.Bytes); !seen[fp] {
					seen[fp] = true
					order = append(order, fp)
				}
				mu.Unlock()
			}
		}
		for _, r := range replicas {
			err := r.verifyAsAPIServer(caBundle, b.in.serviceDNSName())
			cert, cerr := r.servedCert()
			mu.Lock()
			if err != nil {
				handshake = append(handshake, r.name+": "+err.Error())
			}
			if cerr == nil {
				if served[r.name] == nil {
					served[r.name] = map[string]bool{}
				}
				served[r.name][fingerprint(cert.Raw)] = true
			}
			mu.Unlock()
		}
	}
	load := &loadResult{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the load: one pod after another
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pod := appPod(appsNamespace, fmt.Sprintf("load-%d", i), "app", "appvault")
			pod.GenerateName, pod.Name = "load-", ""
			load.add(b.c.createInjected(ctx, pod, b.agentImage))
		}
	}()
	go func() { // the observer
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				observe()
			}
		}
	}()
	time.Sleep(14 * time.Second)
	close(stop)
	wg.Wait()

	t.Logf("%d pods created during renewals; certificates seen in the Secret: %v; served by the replicas: %v", load.created, order, served)
	if len(load.failures) > 0 {
		t.Errorf("%d pod creations failed during renewals, first: %s", len(load.failures), load.failures[0])
	}
	if load.created < 50 {
		t.Errorf("only %d pods were created in 14s", load.created)
	}
	if len(order) < 3 {
		t.Errorf("the serving certificate was renewed %d times in 14s, want at least 2", len(order)-1)
	}
	if len(handshake) > 0 {
		t.Errorf("%d TLS handshakes verified as the API server does failed during renewals, first: %s", len(handshake), handshake[0])
	}
	for _, r := range replicas {
		if len(served[r.name]) < 2 {
			t.Errorf("%s served %d certificates during renewals, want several", r.name, len(served[r.name]))
		}
	}
	after := b.getSecret(t)
	if !bytes.Equal(after.Data["ca.crt"], before.Data["ca.crt"]) || !bytes.Equal(b.caBundle(t), before.Data["ca.crt"]) {
		t.Error("renewing the serving certificate changed the CA")
	}
	// Renewals go on: check against the Secret as it is when compared.
	for _, r := range replicas {
		eventually(t, 20*time.Second, r.name+" serves the current certificate", func() error {
			s := &corev1.Secret{}
			if err := b.c.client.Get(ctx, b.secret, s); err != nil {
				return err
			}
			block, _ := pem.Decode(s.Data["tls.crt"])
			cert, err := r.servedCert()
			if err != nil {
				return err
			}
			if !bytes.Equal(cert.Raw, block.Bytes) {
				return fmt.Errorf("serves %s, the Secret holds %s", fingerprint(cert.Raw), fingerprint(block.Bytes))
			}
			return nil
		})
	}
}

// uninstall deletes every object of the install, as `kubectl delete -k` or
// `helm uninstall` do, and checks that opted-in pods are no longer sent to a
// webhook (failurePolicy Fail would refuse them otherwise).
func uninstall(t *testing.T, c *cluster, in *install) {
	ctx := context.Background()
	objs := append([]*unstructured.Unstructured(nil), in.objs...)
	sortByKind(objs)
	c.deleteAll(t, objs)
	mwc := &admissionv1.MutatingWebhookConfiguration{}
	if err := c.client.Get(ctx, types.NamespacedName{Name: in.webhook.Name}, mwc); !apierrors.IsNotFound(err) {
		t.Fatalf("the webhook configuration is still there: %v", err)
	}
	pod := appPod(appsNamespace, "after-uninstall", "app", "appvault")
	if err := c.client.Create(ctx, pod); err != nil {
		t.Fatalf("an opted-in pod after uninstalling: %v", err)
	}
	if pod.Annotations[mapping.AnnotationStatus] != "" {
		t.Error("a pod was injected after uninstalling")
	}
}

// TestHelmLifecycle runs helm itself against the API server: `helm install`
// (whose NOTES are checked), the webhook fills its certificate, `helm upgrade`
// with other values keeps the certificate and the caBundle (Helm's three-way
// merge leaves fields it never set), and `helm uninstall` removes the install.
func TestHelmLifecycle(t *testing.T) {
	c := startCluster(t)
	const ns = "kvinject-system"
	c.ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, nil)
	kubeconfig := c.adminKubeconfig(t)
	chart := filepath.Join(root, "charts", "kvinject")
	helm := func(args ...string) string {
		start := time.Now()
		out := string(runTool(t, helmBin, append(args, "--kubeconfig", kubeconfig)...))
		t.Logf("helm %s: %s", args[0], time.Since(start).Round(time.Millisecond))
		return out
	}

	notes := helm("install", "kvinject", chart, "--namespace", ns)
	for _, want := range []string{
		"kubectl -n kvinject-system rollout status deployment/kvinject-webhook",
		"kubectl get mutatingwebhookconfiguration kvinject",
		"kvinject.dev/inject: \"true\"",
		"kvinject.dev/vault: <your-vault>",
		"kvinject.dev/secrets: connectionstring.txt=DATABASE-CONNECTION-STRING",
		"Pods in kube-system, kvinject-system are never injected.",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("the install's NOTES lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "kubectl label namespace") {
		t.Errorf("the NOTES ask to label a namespace that enforces Pod Security already:\n%s", notes)
	}

	in := renderHelm(t, "kvinject", ns)
	kc, _ := c.serviceAccountKubeconfig(t, ns, in.deployment.Spec.Template.Spec.ServiceAccountName)
	b := &builtinInstall{c: c, in: in, kubeconfig: kc, agentImage: "ghcr.io/kvinject/agent:v0.1.0",
		secret: types.NamespacedName{Namespace: ns, Name: flagValue(t, in, "cert-secret")}}
	replicas := b.start(t)
	before := b.getSecret(t)
	b.checkReplicasServe(t, replicas, before)

	helm("upgrade", "kvinject", chart, "--namespace", ns, "--set", "replicaCount=3", "--set", "defaults.vault=teamvault")
	after := b.getSecret(t)
	if !bytes.Equal(after.Data["tls.crt"], before.Data["tls.crt"]) || !bytes.Equal(after.Data["ca.key"], before.Data["ca.key"]) {
		t.Error("helm upgrade changed or emptied the certificate Secret")
	}
	if !bytes.Equal(b.caBundle(t), before.Data["ca.crt"]) {
		t.Error("helm upgrade removed or changed caBundle")
	}
	dep, err := c.kube.AppsV1().Deployments(ns).Get(context.Background(), in.deployment.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *dep.Spec.Replicas != 3 || !strings.Contains(strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " "), "--default-vault=teamvault") {
		t.Errorf("helm upgrade did not apply the new values: replicas %d, args %q", *dep.Spec.Replicas, dep.Spec.Template.Spec.Containers[0].Args)
	}
	c.ensureApps(t)
	pod := appPod(appsNamespace, "after-upgrade", "app", "appvault")
	if err := c.createInjected(context.Background(), pod, b.agentImage); err != nil {
		t.Fatal(err)
	}

	helm("uninstall", "kvinject", "--namespace", ns)
	mwc := &admissionv1.MutatingWebhookConfiguration{}
	if err := c.client.Get(context.Background(), types.NamespacedName{Name: in.webhook.Name}, mwc); !apierrors.IsNotFound(err) {
		t.Errorf("the webhook configuration is still there after helm uninstall: %v", err)
	}
	if err := c.client.Get(context.Background(), b.secret, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("the certificate Secret is still there after helm uninstall: %v", err)
	}
	pod = appPod(appsNamespace, "after-uninstall", "app", "appvault")
	if err := c.client.Create(context.Background(), pod); err != nil {
		t.Fatalf("an opted-in pod after helm uninstall: %v", err)
	}
	if agentOf(pod) != nil {
		t.Error("a pod was injected after helm uninstall")
	}
}

// TestBuiltinCertsMissingSecret checks that the webhook stops at once with an
// explanation when the Secret it should fill does not exist.
func TestBuiltinCertsMissingSecret(t *testing.T) {
	c := startCluster(t)
	in := renderKustomize(t, "manifests/install/builtin-certs")
	var objs []*unstructured.Unstructured
	for _, u := range in.objs {
		if u.GetKind() != "Secret" {
			objs = append(objs, u)
		}
	}
	c.apply(t, objs)
	kubeconfig, _ := c.serviceAccountKubeconfig(t, in.namespace, in.deployment.Spec.Template.Spec.ServiceAccountName)
	args, env, _ := c.podSpecArgs(t, in, t.TempDir())
	cmd := exec.Command(webhookBin, append(args, "--kubeconfig="+kubeconfig)...)
	cmd.Env = append(filteredEnviron(), env...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("the webhook did not stop within 30s without its Secret:\n%s", out)
	}
	want := "Secret kvinject-system/kvinject-webhook-cert does not exist; the webhook fills it but does not create it"
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("the webhook without its Secret: %v, output lacks %q:\n%s", err, want, out)
	}
}
