//go:build integration

// Package hardening puts the webhook under load and faults: 200 concurrent clients,
// a certificate swapped mid-load, graceful shutdown with requests in flight, and a
// slow or failing API server. It runs the handler in-process behind the same
// controller-runtime webhook server cmd/webhook uses, so goroutines and heap can be
// measured. Run with `make test-integration`.
package hardening

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/kvinject/kvinject/internal/injector"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// init sets the global logger as cmd/webhook does. Until it is set,
// controller-runtime's delegating logger keeps a promise for every WithValues (one
// per admission request), which would show up as heap growth that production,
// where SetLogger runs at start-up, does not have.
func init() { ctrllog.SetLogger(logr.Discard()) }

// reader serves Namespaces and ServiceAccounts from memory, optionally slowly,
// failing or held.
type reader struct {
	delay atomic.Int64 // nanoseconds
	fail  atomic.Bool
	// hold, when set, holds every Get until the channel is closed (or the
	// lookup's context ends).
	hold atomic.Pointer[chan struct{}]
	// namespaceGets counts the Namespace lookups begun: one per admission
	// request the handler decides on.
	namespaceGets atomic.Int64
}

func (r *reader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if _, ok := obj.(*corev1.Namespace); ok {
		r.namespaceGets.Add(1)
	}
	if h := r.hold.Load(); h != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-*h:
		}
	}
	if d := time.Duration(r.delay.Load()); d > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	if r.fail.Load() {
		return apierrors.NewServiceUnavailable("etcdserver: request timed out")
	}
	switch o := obj.(type) {
	case *corev1.Namespace:
		o.Name = key.Name
		return nil
	case *corev1.ServiceAccount:
		if key.Name == "orders" {
			o.Name, o.Namespace = key.Name, key.Namespace
			o.Annotations = map[string]string{mapping.AnnotationWIClientID: "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9", mapping.AnnotationWITenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47"}
			return nil
		}
	}
	return apierrors.NewNotFound(schema.GroupResource{Resource: "serviceaccounts"}, key.Name)
}

func (r *reader) List(context.Context, client.ObjectList, ...client.ListOption) error { return nil }

// server is a running webhook server with its certificate directory and trusted roots.
type server struct {
	addr    string
	certDir string
	roots   *x509.CertPool
	reader  *reader
	cancel  context.CancelFunc
	done    chan error
}

func startServer(t *testing.T, lookupTimeout time.Duration) *server {
	t.Helper()
	var opts injector.Options
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	opts.BindFlags(fs)
	if err := fs.Parse([]string{"--agent-image=agent:v1", "--lookup-timeout=" + lookupTimeout.String()}); err != nil {
		t.Fatal(err)
	}
	if err := opts.Complete(); err != nil {
		t.Fatal(err)
	}
	h := opts.NewHandler()
	s := &server{certDir: t.TempDir(), roots: x509.NewCertPool(), reader: &reader{}, done: make(chan error, 1)}
	h.Reader, h.Log = s.reader, logr.Discard()
	s.rotateCert(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s.addr = fmt.Sprintf("127.0.0.1:%d", port)
	srv := webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, CertDir: s.certDir, TLSOpts: injector.TLSOptions()})
	recoverPanic := true
	srv.Register(injector.Path, &webhook.Admission{Handler: h, RecoverPanic: &recoverPanic})
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- srv.Start(ctx) }()
	t.Cleanup(func() { s.stop(t) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
		if err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook server did not start: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) stop(t *testing.T) {
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("server: %v", err)
		}
	case <-time.After(70 * time.Second):
		t.Error("the server did not stop")
	}
}

// rotateCert writes a fresh CA-signed serving certificate into the cert dir the
// way a Secret update or cert-manager renewal lands (rename into place), adds the
// CA to the trusted roots and returns the certificate's serial.
func (s *server) rotateCert(t *testing.T) *big.Int {
	t.Helper()
	serial, err := s.issue(s.newCA(t))
	if err != nil {
		t.Fatal(err)
	}
	return serial
}

// certAuthority is a CA that the clients trust.
type certAuthority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// newCA creates a CA and adds it to the trusted roots. The roots are shared by
// every client and an x509.CertPool is not safe for concurrent use: call it
// while no client connects.
func (s *server) newCA(t *testing.T) certAuthority {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	caTmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	s.roots.AddCert(ca)
	return certAuthority{cert: ca, key: caKey}
}

// issue writes a fresh serving certificate signed by ca into the cert dir the
// way a Secret update or cert-manager renewal lands (rename into place) and
// returns its serial. It may run on any goroutine.
func (s *server) issue(ca certAuthority) (*big.Int, error) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafSerial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	leaf := &x509.Certificate{SerialNumber: leafSerial, Subject: pkix.Name{CommonName: "kvinject-webhook"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuing the serving certificate: %w", err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name string, block *pem.Block) error {
		tmp := filepath.Join(s.certDir, "."+name+".tmp")
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
		return os.Rename(tmp, filepath.Join(s.certDir, name))
	}
	// Key first: the watcher reloads on either file and needs a matching pair.
	if err := write("tls.key", &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}); err != nil {
		return nil, err
	}
	if err := write("tls.crt", &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
		return nil, err
	}
	return leafSerial, nil
}

func (s *server) client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 1,
	}}
}

// kind of request: injected, denied or skipped, with the answer it must get.
var requests = []struct {
	name    string
	ann     map[string]string
	labeled bool
	allowed bool
	patched bool
}{
	{"inject", map[string]string{mapping.AnnotationVault: "myvault", mapping.AnnotationSecrets: "a.txt=A, b.txt=B@4387e9f3d6e14c459867679a90fd0f79"}, true, true, true},
	{"deny", map[string]string{mapping.AnnotationVault: "my_vault", mapping.AnnotationSecrets: "../a=A"}, true, false, false},
	{"skip", nil, false, true, false},
}

func reviewBody(t testing.TB, i int, kind int) []byte {
	r := requests[kind]
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-%d", i), Namespace: "apps", Annotations: r.ann, Labels: map[string]string{}},
		Spec:       corev1.PodSpec{ServiceAccountName: "orders", Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}
	if r.labeled {
		pod.Labels[mapping.LabelInject] = "true"
	}
	raw, _ := json.Marshal(pod)
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: "apps", Operation: admissionv1.Create,
			Object: runtimeRaw(raw)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends one review and checks the answer; it returns an error for anything unexpected.
func post(c *http.Client, addr string, body []byte, kind int) error {
	resp, err := c.Post("https://"+addr+injector.Path, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		return fmt.Errorf("HTTP %d: not an AdmissionReview answer: %v", resp.StatusCode, err)
	}
	want := requests[kind]
	if out.Response.Allowed != want.allowed || (len(out.Response.Patch) > 0) != want.patched {
		return fmt.Errorf("%s: allowed=%v patch=%d bytes, want allowed=%v patched=%v (%v)", want.name, out.Response.Allowed, len(out.Response.Patch), want.allowed, want.patched, out.Response.Result)
	}
	return nil
}

// heapInUse returns the live heap after two collections.
func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestLoadWithCertificateRotation: 200 concurrent clients for a bounded run, with
// the serving certificate replaced in the middle: no request fails, new
// connections get the new certificate, and afterwards goroutines and heap are back
// where they were.
func TestLoadWithCertificateRotation(t *testing.T) {
	s := startServer(t, 2*time.Second)
	const clients, perClient = 200, 60
	bodies := make([][]byte, len(requests))
	for k := range requests {
		bodies[k] = reviewBody(t, k, k)
	}
	// Warm up, then take the baseline.
	warm := s.client()
	for k := range requests {
		if err := post(warm, s.addr, bodies[k], k); err != nil {
			t.Fatal(err)
		}
	}
	warm.CloseIdleConnections()
	baseGoroutines, baseHeap := runtime.NumGoroutine(), heapInUse()

	var (
		wg      sync.WaitGroup
		failed  atomic.Int64
		sent    atomic.Int64
		firstMu sync.Mutex
		first   error
	)
	start := time.Now()
	// The certificate is replaced once half of the requests have been sent, so
	// that the run goes on with it whatever the machine's speed. Its CA is
	// trusted before the run: the clients share the roots, which must not
	// change while they connect.
	const total = clients * perClient
	half := make(chan struct{})
	nextCA := s.newCA(t)
	type rotation struct {
		serial *big.Int
		err    error
	}
	rotated := make(chan rotation, 1)
	go func() {
		<-half
		serial, err := s.issue(nextCA)
		rotated <- rotation{serial, err}
	}()
	httpClients := make([]*http.Client, clients)
	for i := range clients {
		httpClients[i] = s.client()
		wg.Add(1)
		go func(c *http.Client) {
			defer wg.Done()
			for j := range perClient {
				k := (i + j) % len(requests)
				if sent.Add(1) == total/2 {
					close(half)
				}
				if err := post(c, s.addr, bodies[k], k); err != nil {
					failed.Add(1)
					firstMu.Lock()
					if first == nil {
						first = err
					}
					firstMu.Unlock()
				}
				if j%20 == 19 {
					c.CloseIdleConnections() // new TLS handshakes during the run
				}
			}
		}(httpClients[i])
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed under load; first: %v", n, sent.Load(), first)
	}
	t.Logf("%d requests from %d clients in %s (%.0f/s), certificate rotated during the run", sent.Load(), clients, elapsed.Round(time.Millisecond), float64(sent.Load())/elapsed.Seconds())

	// The new certificate is served to new connections (the watcher may take a poll).
	r := <-rotated
	if r.err != nil {
		t.Fatalf("rotating the certificate: %v", r.err)
	}
	newSerial := r.serial
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"})
		if err == nil {
			got := conn.ConnectionState().PeerCertificates[0].SerialNumber
			conn.Close()
			if got.Cmp(newSerial) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was not served within 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Drop the clients (they live in this process too) before measuring the server.
	for _, c := range httpClients {
		c.CloseIdleConnections()
	}
	httpClients = nil
	// Let the server notice closed connections, then compare.
	deadline = time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseGoroutines+5 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > baseGoroutines+5 {
		t.Errorf("goroutines grew from %d to %d after the run", baseGoroutines, g)
	}
	const slack = 8 << 20
	if h := heapInUse(); h > baseHeap+slack {
		t.Errorf("live heap grew from %d to %d bytes after the run", baseHeap, h)
	}
}

// TestGracefulShutdownFinishesInFlightRequests: requests already being handled when
// the server is told to stop get their answers.
func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	// The requests wait in their lookups until the shutdown is under way; the
	// lookup timeout only has to outlast that on a slow machine.
	s := startServer(t, 30*time.Second)
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release) // before the server stops, should the test end early
	s.reader.hold.Store(&hold)
	body := reviewBody(t, 0, 0)
	const inFlight = 20
	errs := make(chan error, inFlight)
	for range inFlight {
		go func() { errs <- post(s.client(), s.addr, body, 0) }()
	}
	// Every request is inside the handler: its Namespace lookup has begun, and is held.
	deadline := time.Now().Add(30 * time.Second)
	for n := s.reader.namespaceGets.Load(); n < inFlight; n = s.reader.namespaceGets.Load() {
		select {
		case err := <-errs:
			t.Fatalf("a request ended before the shutdown: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d requests reached the handler within 30s", n, inFlight)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := make(chan struct{})
	go func() { s.stop(t); close(stopped) }()
	// The shutdown is under way once the listener is closed; only then do the
	// held requests go on.
	deadline = time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the server still accepted connections 10s after it was told to stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
	release()
	for range inFlight {
		if err := <-errs; err != nil {
			t.Errorf("an in-flight request was dropped at shutdown: %v", err)
		}
	}
	<-stopped
	if _, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: s.roots, ServerName: "127.0.0.1"}); err == nil {
		t.Error("the server still accepts connections after shutdown")
	}
}

// TestSlowOrFailingAPIServer: lookups that hang are cut at --lookup-timeout and
// failing lookups are refused clearly; the API server is never left waiting past
// the webhook's own timeout.
func TestSlowOrFailingAPIServer(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := startServer(t, timeout)
	c := s.client()
	body := reviewBody(t, 0, 0)
	check := func(what, wantMsg string) {
		t.Helper()
		start := time.Now()
		resp, err := c.Post("https://"+s.addr+injector.Path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out admissionv1.AdmissionReview
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
			t.Fatalf("%s: no AdmissionReview answer: %v", what, err)
		}
		took := time.Since(start)
		if out.Response.Allowed || out.Response.Result == nil || !strings.Contains(out.Response.Result.Message, wantMsg) {
			t.Errorf("%s: allowed=%v result=%v, want a refusal mentioning %q", what, out.Response.Allowed, out.Response.Result, wantMsg)
		}
		if took > timeout+time.Second {
			t.Errorf("%s: answered after %s, want about the lookup timeout %s", what, took, timeout)
		}
	}
	s.reader.delay.Store(int64(10 * time.Second))
	check("API server hanging", `reading namespace "apps": context deadline exceeded`)
	s.reader.delay.Store(0)
	s.reader.fail.Store(true)
	check("API server failing", `reading namespace "apps": etcdserver: request timed out`)
	s.reader.fail.Store(false)
	if err := post(c, s.addr, body, 0); err != nil {
		t.Errorf("after the API server recovered: %v", err)
	}
}

func runtimeRaw(b []byte) k8sruntime.RawExtension { return k8sruntime.RawExtension{Raw: b} }

// TestTLSPolicy: TLS 1.0/1.1, weak cipher suites and HTTP/2 are refused; TLS 1.2
// with an AEAD suite and TLS 1.3 are accepted.
func TestTLSPolicy(t *testing.T) {
	s := startServer(t, time.Second)
	dial := func(cfg *tls.Config) (*tls.Conn, error) {
		cfg.RootCAs, cfg.ServerName = s.roots, "127.0.0.1"
		return tls.Dial("tcp", s.addr, cfg)
	}
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		if c, err := dial(&tls.Config{MinVersion: v, MaxVersion: v}); err == nil {
			c.Close()
			t.Errorf("%s was accepted", tls.VersionName(v))
		}
	}
	weak := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	if c, err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: weak}); err == nil {
		c.Close()
		t.Errorf("a CBC or non-forward-secret suite was accepted: %s", tls.CipherSuiteName(c.ConnectionState().CipherSuite))
	}
	c, err := dial(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
	if err != nil {
		t.Fatalf("TLS 1.2 with ECDHE-ECDSA-AES128-GCM: %v", err)
	}
	c.Close()
	c, err = dial(&tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS 1.3: %v", err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Errorf("HTTP/2 was negotiated")
	}
	c.Close()
}
