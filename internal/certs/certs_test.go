package certs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"

	"github.com/kvinject/kvinject/internal/atomicdir"
)

func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	var o Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	o.namespaceFile = filepath.Join(t.TempDir(), "missing")
	return &o, o.Complete()
}

func TestCompleteDefaults(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	o, err := parse(t)
	if err != nil || o.Mode != ModeFiles {
		t.Fatalf("files mode by default: %+v, %v", o, err)
	}
	o, err = parse(t, "--cert-mode=builtin", "--namespace=kvinject-system")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := o.DNSName(), "kvinject-webhook.kvinject-system.svc"; got != want {
		t.Errorf("DNSName = %q, want %q", got, want)
	}
	if o.SecretName != DefaultSecretName || o.WebhookConfigName != DefaultWebhookConfigName {
		t.Errorf("defaults: %+v", o)
	}
}

func TestCompleteNamespace(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "from-env")
	o, err := parse(t, "--cert-mode=builtin")
	if err != nil || o.Namespace != "from-env" {
		t.Fatalf("namespace from POD_NAMESPACE: %q, %v", o.Namespace, err)
	}

	t.Setenv("POD_NAMESPACE", "")
	file := filepath.Join(t.TempDir(), "namespace")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o = &Options{Mode: ModeBuiltin, SecretName: "s", WebhookConfigName: "w", ServiceName: "svc",
		CAValidity: DefaultCAValidity, Validity: DefaultValidity, RenewBefore: DefaultRenewBefore, CheckInterval: DefaultCheckInterval,
		namespaceFile: file}
	if err := o.Complete(); err != nil || o.Namespace != "from-file" {
		t.Fatalf("namespace from the ServiceAccount file: %q, %v", o.Namespace, err)
	}

	if _, err := parse(t, "--cert-mode=builtin"); err == nil || !strings.Contains(err.Error(), "--namespace is required") {
		t.Fatalf("no namespace: %v", err)
	}
}

func TestCompleteRefusals(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cert-mode=vault"}, `--cert-mode "vault": use "files" or "builtin"`},
		{[]string{"--cert-mode=builtin", "--namespace=Bad_NS"}, `--namespace "Bad_NS"`},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--service-name="}, "--service-name must not be empty"},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--cert-secret=a/b"}, `--cert-secret "a/b"`},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--webhook-config-name="}, `--webhook-config-name ""`},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--cert-validity=24h", "--cert-renew-before=48h"}, "--cert-renew-before 48h0m0s must be shorter than --cert-validity 24h0m0s"},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--cert-ca-validity=24h", "--cert-validity=12h", "--cert-renew-before=1h", "--cert-check-interval=1m"}, ""},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--cert-ca-validity=24h"}, "must be shorter than --cert-ca-validity"},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--cert-check-interval=2400h"}, "--cert-check-interval 2400h0m0s must be shorter than --cert-renew-before"},
		{[]string{"--cert-mode=builtin", "--namespace=ns", "--cert-check-interval=0s"}, "--cert-check-interval 0s: must be positive"},
	} {
		_, err := parse(t, tc.args...)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: unexpected error %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: error %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
	// Files mode ignores the builtin settings.
	if _, err := parse(t, "--cert-check-interval=0s"); err != nil {
		t.Errorf("files mode validated builtin settings: %v", err)
	}
}

// selfSigned returns a PEM certificate and key for name.
func selfSigned(t *testing.T, name string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// TestSecretSyncFollowedByCertWatcher checks that what secretSync writes is what
// controller-runtime's certificate watcher (the webhook server's) serves, before
// and after a renewal, and that a broken Secret leaves the current files alone.
func TestSecretSyncFollowedByCertWatcher(t *testing.T) {
	dir := t.TempDir()
	s := &secretSync{writer: atomicdir.New(dir, 0o600), log: logr.Discard()}

	if err := s.write(map[string][]byte{}); err != nil {
		t.Fatalf("an empty Secret is not an error: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CertFile)); !os.IsNotExist(err) {
		t.Fatalf("an empty Secret wrote files: %v", err)
	}

	crt1, key1 := selfSigned(t, "one")
	if err := s.write(map[string][]byte{CertFile: crt1, KeyFile: key1, CAFile: crt1}); err != nil {
		t.Fatal(err)
	}
	cw, err := certwatcher.New(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cw.Start(ctx) }()
	defer func() { cancel(); <-done }()
	serving := func() []byte {
		c, err := cw.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil || c == nil {
			t.Fatalf("GetCertificate: %v", err)
		}
		return c.Certificate[0]
	}
	der := func(p []byte) []byte { b, _ := pem.Decode(p); return b.Bytes }
	if !bytes.Equal(serving(), der(crt1)) {
		t.Fatal("the watcher does not serve the first certificate")
	}
	if ca, _ := os.ReadFile(filepath.Join(dir, CAFile)); !bytes.Equal(ca, crt1) {
		t.Fatal("ca.crt not written")
	}

	crt2, key2 := selfSigned(t, "two")
	if err := s.write(map[string][]byte{CertFile: crt2, KeyFile: key1}); err == nil || !strings.Contains(err.Error(), "do not form a key pair") {
		t.Fatalf("a mismatched pair: %v", err)
	}
	if err := s.write(map[string][]byte{CertFile: crt2, KeyFile: key2}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second) // fsnotify, else the 10s poll
	for !bytes.Equal(serving(), der(crt2)) {
		if time.Now().After(deadline) {
			t.Fatal("the watcher did not pick up the renewed certificate")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := atomicdir.Check(dir); err != nil {
		t.Fatalf("directory layout: %v", err)
	}
}

// TestStartWhenReady checks that the wrapped runnable starts once ready is
// closed, whether before or while Start waits, and never when the context ends
// first.
func TestStartWhenReady(t *testing.T) {
	// Not ready until the context ends: Start returns without starting it. Start
	// returning is the barrier: had it started the runnable, started would be
	// closed by then.
	started := make(chan struct{})
	r := StartWhenReady(runnableFunc(func(ctx context.Context) error { close(started); <-ctx.Done(); return nil }), make(chan struct{}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
		t.Fatal("started before ready")
	default:
	}

	// Ready while Start waits: it starts, and runs until the context ends.
	ready := make(chan struct{})
	started = make(chan struct{})
	r = StartWhenReady(runnableFunc(func(ctx context.Context) error { close(started); <-ctx.Done(); return nil }), ready)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { done <- r.Start(ctx) }()
	close(ready)
	<-started
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Ready before Start: it starts at once.
	started = make(chan struct{})
	r = StartWhenReady(runnableFunc(func(ctx context.Context) error { close(started); return nil }), ready)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-started
}

type runnableFunc func(context.Context) error

func (f runnableFunc) Start(ctx context.Context) error { return f(ctx) }

func TestMissingNames(t *testing.T) {
	crt, _ := selfSigned(t, "kvinject-webhook.kvinject-system.svc")
	for _, tc := range []struct {
		name string
		crt  []byte
		want []string
		miss []string
	}{
		{"no extra names", crt, nil, nil},
		{"covered", crt, []string{"kvinject-webhook.kvinject-system.svc"}, nil},
		{"hub missing", crt, []string{"kvinject-webhook.kvinject-system.svc", "kvinject-hub.kvinject-system.svc"}, []string{"kvinject-hub.kvinject-system.svc"}},
		{"no certificate yet", nil, []string{"kvinject-hub.kvinject-system.svc"}, nil},
		{"certificate does not parse", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []string{"x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := missingNames(tc.crt, tc.want); !slices.Equal(got, tc.miss) {
				t.Fatalf("missingNames = %v, want %v", got, tc.miss)
			}
		})
	}
}
