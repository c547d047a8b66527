//go:build integration

package install

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kvinject/kvinject/internal/atomicdir"
)

// certManagerVersion is the cert-manager whose CRDs validate the install's
// Issuers and Certificates. They come from its Go module (deploy/crds).
const certManagerVersion = "v1.21.2"

// certManagerCRDs returns cert-manager's Certificate and Issuer CRDs from the
// module cache (downloaded through the Go module proxy the first time).
func certManagerCRDs(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/cert-manager/cert-manager@"+certManagerVersion)
	cmd.Dir = t.TempDir() // outside the project's module
	cmd.Env = append(os.Environ(), "GOFLAGS=", "GO111MODULE=on")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download cert-manager %s: %v", certManagerVersion, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download: %v: %s", err, out)
	}
	var crds []*unstructured.Unstructured
	for _, f := range []string{"cert-manager.io_certificates.yaml", "cert-manager.io_issuers.yaml", "cert-manager.io_clusterissuers.yaml"} {
		b, err := os.ReadFile(filepath.Join(mod.Dir, "deploy", "crds", f))
		if err != nil {
			t.Fatal(err)
		}
		crds = append(crds, decodeYAML(t, b)...)
	}
	return crds
}

// cmCertificate and cmIssuer are the parts of cert-manager's resources the
// emulation reads.
type cmCertificate struct {
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		IsCA       bool     `json:"isCA"`
		CommonName string   `json:"commonName"`
		DNSNames   []string `json:"dnsNames"`
		SecretName string   `json:"secretName"`
		Duration   string   `json:"duration"`
		PrivateKey struct {
			Algorithm string `json:"algorithm"`
			Size      int    `json:"size"`
		} `json:"privateKey"`
		Usages    []string `json:"usages"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

type cmIssuer struct {
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca"`
	} `json:"spec"`
}

// issued is a certificate issued by the emulation.
type issued struct {
	cert                   *x509.Certificate
	key                    *ecdsa.PrivateKey
	certPEM, keyPEM, caPEM []byte
}

// certManager does what cert-manager's controller and cainjector do with the
// rendered install: it issues every Certificate with its Issuer (self-signed or
// CA) into the Certificate's Secret (tls.crt, tls.key, ca.crt), and copies the
// CA named by the cert-manager.io/inject-ca-from annotation into caBundle. It
// reads everything from the rendering, so a wrong name anywhere breaks the chain.
type certManager struct {
	c       *cluster
	in      *install
	certs   map[string]*cmCertificate
	issuers map[string]*cmIssuer
	secrets map[string]*issued // by Secret name
}

func newCertManager(t *testing.T, c *cluster, in *install) *certManager {
	t.Helper()
	m := &certManager{c: c, in: in, certs: map[string]*cmCertificate{}, issuers: map[string]*cmIssuer{}, secrets: map[string]*issued{}}
	for _, u := range in.find("Certificate") {
		cert := &cmCertificate{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, cert); err != nil {
			t.Fatal(err)
		}
		m.certs[cert.Name] = cert
	}
	for _, u := range in.find("Issuer") {
		iss := &cmIssuer{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, iss); err != nil {
			t.Fatal(err)
		}
		m.issuers[iss.Name] = iss
	}
	return m
}

// issueAll issues every Certificate, in dependency order.
func (m *certManager) issueAll(t *testing.T) {
	t.Helper()
	for round := 0; len(m.secrets) < len(m.certs); round++ {
		if round > len(m.certs) {
			t.Fatalf("cannot issue every Certificate: an Issuer or its CA Secret is missing (issued: %v)", keys(m.secrets))
		}
		for _, cert := range m.certs {
			if m.secrets[cert.Spec.SecretName] == nil {
				m.tryIssue(t, cert)
			}
		}
	}
}

func keys[V any](mp map[string]V) []string {
	var out []string
	for k := range mp {
		out = append(out, k)
	}
	return out
}

// tryIssue issues cert if its issuer is ready.
func (m *certManager) tryIssue(t *testing.T, cert *cmCertificate) bool {
	t.Helper()
	ref := cert.Spec.IssuerRef
	if ref.Kind != "Issuer" || (ref.Group != "" && ref.Group != "cert-manager.io") {
		t.Fatalf("Certificate %s: issuer %+v is not an Issuer of the install", cert.Name, ref)
	}
	iss := m.issuers[ref.Name]
	if iss == nil {
		t.Fatalf("Certificate %s: Issuer %s is not in the install", cert.Name, ref.Name)
	}
	var parent *issued
	switch {
	case iss.Spec.SelfSigned != nil:
	case iss.Spec.CA != nil:
		if parent = m.secrets[iss.Spec.CA.SecretName]; parent == nil {
			return false // its CA is not issued yet
		}
		if !parent.cert.IsCA {
			t.Fatalf("Issuer %s signs with Secret %s, which is not a CA", iss.Name, iss.Spec.CA.SecretName)
		}
	default:
		t.Fatalf("Issuer %s is neither selfSigned nor ca", iss.Name)
	}
	m.secrets[cert.Spec.SecretName] = m.issue(t, cert, parent)
	m.store(t, cert)
	return true
}

// issue signs a new certificate for cert with a new key.
func (m *certManager) issue(t *testing.T, cert *cmCertificate, parent *issued) *issued {
	t.Helper()
	if cert.Spec.PrivateKey.Algorithm != "ECDSA" || cert.Spec.PrivateKey.Size != 256 {
		t.Fatalf("Certificate %s: private key %+v, the install uses ECDSA P-256", cert.Name, cert.Spec.PrivateKey)
	}
	duration, err := time.ParseDuration(cert.Spec.Duration)
	if err != nil {
		t.Fatalf("Certificate %s: duration: %v", cert.Name, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cert.Spec.CommonName},
		DNSNames:              cert.Spec.DNSNames,
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(duration),
		IsCA:                  cert.Spec.IsCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if cert.Spec.IsCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	for _, u := range cert.Spec.Usages {
		switch u {
		case "server auth":
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		case "digital signature":
		default:
			t.Fatalf("Certificate %s: usage %q not emulated", cert.Name, u)
		}
	}
	signer, signerCert := key, tmpl
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalECPrivateKey(key)
	is := &issued{cert: c, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})}
	if parent != nil {
		is.caPEM = parent.certPEM
	} else {
		is.caPEM = is.certPEM
	}
	return is
}

// store writes cert's Secret as cert-manager does.
func (m *certManager) store(t *testing.T, cert *cmCertificate) {
	t.Helper()
	is := m.secrets[cert.Spec.SecretName]
	ctx := context.Background()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: cert.Namespace, Name: cert.Spec.SecretName,
		Annotations: map[string]string{"cert-manager.io/certificate-name": cert.Name}}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": is.certPEM, "tls.key": is.keyPEM, "ca.crt": is.caPEM}}
	err := m.c.client.Create(ctx, s)
	if apierrors.IsAlreadyExists(err) {
		err = m.c.client.Update(ctx, s)
	}
	if err != nil {
		t.Fatalf("storing Secret %s: %v", cert.Spec.SecretName, err)
	}
}

// inject is cainjector: the CA of the Certificate named by the annotation goes
// into every webhook's caBundle.
func (m *certManager) inject(t *testing.T) []byte {
	t.Helper()
	ref := m.in.webhook.Annotations["cert-manager.io/inject-ca-from"]
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns != m.in.namespace {
		t.Fatalf("cert-manager.io/inject-ca-from %q does not name a Certificate of namespace %s", ref, m.in.namespace)
	}
	cert := m.certs[name]
	if cert == nil {
		t.Fatalf("cert-manager.io/inject-ca-from names Certificate %s, which is not in the install", name)
	}
	s := &corev1.Secret{}
	if err := m.c.client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: cert.Spec.SecretName}, s); err != nil {
		t.Fatal(err)
	}
	mwc := &admissionv1.MutatingWebhookConfiguration{}
	if err := m.c.client.Get(context.Background(), types.NamespacedName{Name: m.in.webhook.Name}, mwc); err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig.CABundle = s.Data["ca.crt"]
	}
	if err := m.c.client.Update(context.Background(), mwc, client.FieldOwner("cainjector")); err != nil {
		t.Fatal(err)
	}
	return s.Data["ca.crt"]
}

// servingCertificate returns the Certificate whose Secret the pods mount.
func (m *certManager) servingCertificate(t *testing.T) *cmCertificate {
	t.Helper()
	vol := certVolume(t, m.in)
	if vol.Secret == nil {
		t.Fatalf("%s: the certificate volume is not a Secret", m.in.name)
	}
	for _, c := range m.certs {
		if c.Spec.SecretName == vol.Secret.SecretName {
			return c
		}
	}
	t.Fatalf("%s: the pods mount Secret %s, which no Certificate writes", m.in.name, vol.Secret.SecretName)
	return nil
}

func certVolume(t *testing.T, in *install) *corev1.Volume {
	t.Helper()
	for i, v := range in.deployment.Spec.Template.Spec.Volumes {
		if v.Name == "certs" {
			return &in.deployment.Spec.Template.Spec.Volumes[i]
		}
	}
	t.Fatalf("%s: no volume \"certs\"", in.name)
	return nil
}

// kubeletSync writes the certificate volume's Secret into dir as the kubelet
// does for a Secret volume: the items, with the volume's mode, all at once.
func (m *certManager) kubeletSync(t *testing.T, dir string) {
	t.Helper()
	vol := certVolume(t, m.in).Secret
	s := &corev1.Secret{}
	if err := m.c.client.Get(context.Background(), types.NamespacedName{Namespace: m.in.namespace, Name: vol.SecretName}, s); err != nil {
		t.Fatal(err)
	}
	var files []atomicdir.File
	for _, item := range vol.Items {
		data, ok := s.Data[item.Key]
		if !ok {
			t.Fatalf("Secret %s has no key %s for the volume", vol.SecretName, item.Key)
		}
		files = append(files, atomicdir.File{Path: item.Path, Data: data})
	}
	mode := os.FileMode(0o644)
	if vol.DefaultMode != nil {
		mode = os.FileMode(*vol.DefaultMode)
	}
	if err := atomicdir.New(dir, mode).Write(files); err != nil {
		t.Fatal(err)
	}
}

// proveCertManager applies in (cert-manager mode) on a cluster with
// cert-manager's CRDs and proves it: objects, Pod Security, RBAC (no Secret,
// no webhook configuration), then with the certificates cert-manager would
// issue the webhook is trusted and injects pods; a renewal of the serving
// certificate under load fails no admission.
func proveCertManager(t *testing.T, c *cluster, in *install, agentImage string) {
	t.Helper()
	start := time.Now()
	c.installCRDs(t, certManagerCRDs(t))
	t.Logf("cert-manager %s CRDs installed in %s", certManagerVersion, time.Since(start).Round(time.Millisecond))
	c.apply(t, in.objs)
	if flagValueOr(in, "cert-mode", "files") != "files" {
		t.Fatalf("%s: the webhook is not in files mode", in.name)
	}
	kubeconfig, saCfg := c.serviceAccountKubeconfig(t, in.namespace, in.deployment.Spec.Template.Spec.ServiceAccountName)
	m := newCertManager(t, c, in)
	serving := m.servingCertificate(t)
	t.Run("pod security", func(t *testing.T) { c.checkPodSecurity(t, in) })
	t.Run("rbac", func(t *testing.T) {
		c.ensureApps(t)
		c.checkRBAC(t, in, saCfg, false, serving.Spec.SecretName)
	})
	if t.Failed() {
		t.FailNow()
	}

	m.issueAll(t)
	caBundle := m.inject(t)
	var dirs []string
	for i := 0; i < int(*in.deployment.Spec.Replicas); i++ {
		dir := t.TempDir()
		m.kubeletSync(t, dir)
		dirs = append(dirs, dir)
	}
	replicas := c.startReplicas(t, in, kubeconfig, dirs)
	for _, r := range replicas {
		if err := r.verifyAsAPIServer(caBundle, in.serviceDNSName()); err != nil {
			t.Fatalf("%s is not trusted as the API server verifies it: %v", r.name, err)
		}
	}
	t.Run("injection", func(t *testing.T) { c.checkInjection(t, in, agentImage) })

	t.Run("renewal under load", func(t *testing.T) {
		ctx := context.Background()
		load := &loadResult{}
		var handshakes []string
		var mu sync.Mutex
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				pod := appPod(appsNamespace, "", "app", "appvault")
				pod.GenerateName = "cm-load-"
				load.add(c.createInjected(ctx, pod, agentImage))
			}
		}()
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				for _, r := range replicas {
					if err := r.verifyAsAPIServer(caBundle, in.serviceDNSName()); err != nil {
						mu.Lock()
						handshakes = append(handshakes, r.name+": "+err.Error())
						mu.Unlock()
					}
				}
			}
		}()
		for round := 0; round < 2; round++ {
			time.Sleep(time.Second)
			// cert-manager renews: a new key, the same CA; the kubelet updates the volumes.
			m.secrets[serving.Spec.SecretName] = m.issue(t, serving, m.secrets[m.issuers[serving.Spec.IssuerRef.Name].Spec.CA.SecretName])
			m.store(t, serving)
			for _, dir := range dirs {
				m.kubeletSync(t, dir)
			}
			want := m.secrets[serving.Spec.SecretName].cert.Raw
			for _, r := range replicas {
				// fsnotify, else controller-runtime's 10s poll.
				eventually(t, 15*time.Second, r.name+" serves the renewed certificate", func() error {
					cert, err := r.servedCert()
					if err != nil {
						return err
					}
					if !bytes.Equal(cert.Raw, want) {
						return fmt.Errorf("serves %s", fingerprint(cert.Raw))
					}
					return nil
				})
			}
		}
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		t.Logf("%d pods created during 2 renewals", load.created)
		if len(load.failures) > 0 {
			t.Errorf("%d pod creations failed during renewals, first: %s", len(load.failures), load.failures[0])
		}
		if len(handshakes) > 0 {
			t.Errorf("%d handshakes failed during renewals, first: %s", len(handshakes), handshakes[0])
		}
	})
}

// flagValueOr returns a webhook flag's value, or def when it is not set.
func flagValueOr(in *install, name, def string) string {
	for _, a := range in.deployment.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return def
}

// TestKustomizeCertManager installs manifests/install/cert-manager and proves it.
func TestKustomizeCertManager(t *testing.T) {
	c := startCluster(t)
	proveCertManager(t, c, renderKustomize(t, "manifests/install/cert-manager"), "ghcr.io/kvinject/agent:v0.1.0")
}

// TestHelmCertManager installs the chart with certificates.mode=cert-manager, as
// release "secrets" (object names then start with "secrets-kvinject"), and
// proves it.
func TestHelmCertManager(t *testing.T) {
	c := startCluster(t)
	const ns = "kvinject"
	c.ensureNamespace(t, ns, map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}, nil)
	proveCertManager(t, c, renderHelm(t, "secrets", ns, "certificates.mode=cert-manager"), "ghcr.io/kvinject/agent:v0.1.0")
}
