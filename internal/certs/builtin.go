package certs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/kvinject/kvinject/internal/atomicdir"
)

// File names in the Secret and in the certificate directory (those of a
// kubernetes.io/tls Secret, which controller-runtime's webhook server reads).
const (
	CertFile   = "tls.crt"
	KeyFile    = "tls.key"
	CAFile     = "ca.crt"
	fieldOwner = "kvinject-webhook"
)

// CacheByObject restricts the manager's cache, for the Secret informer of
// builtin mode, to the one Secret that holds the certificate. Merge it into
// cache.Options.ByObject.
func (o Options) CacheByObject() map[client.Object]cache.ByObject {
	if o.Mode != ModeBuiltin {
		return nil
	}
	return map[client.Object]cache.ByObject{
		&corev1.Secret{}: {
			Namespaces: map[string]cache.Config{o.Namespace: {}},
			Field:      fields.OneTermEqualSelector("metadata.name", o.SecretName),
		},
	}
}

// Builtin is the builtin certificate mode, set up on a manager.
type Builtin struct {
	opts    Options
	certDir string
	ready   chan struct{}
}

// SetupBuiltin adds to mgr the cert-controller rotator (create, store, inject and
// renew the certificate) and the copy of the Secret into certDir. The manager's
// cache must have been created with o.CacheByObject(). The webhook server must
// be started only once Ready is closed (see StartWhenReady).
func SetupBuiltin(mgr manager.Manager, o Options, certDir string, log logr.Logger) (*Builtin, error) {
	if o.Mode != ModeBuiltin {
		return nil, fmt.Errorf("certificate mode is %q, not %q", o.Mode, ModeBuiltin)
	}
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, fmt.Errorf("--cert-dir: %w", err)
	}
	b := &Builtin{opts: o, certDir: certDir, ready: make(chan struct{})}
	key := types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName}
	// The rotator only updates the Secret: say so at once, before anything starts,
	// rather than after its retries.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for attempt := 0; ; attempt++ {
		var secret corev1.Secret
		if err := mgr.GetAPIReader().Get(ctx, key, &secret); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("built-in certificates: Secret %s does not exist; the webhook fills it but does not create it: apply the whole install, which has it (empty), or fix --cert-secret or --namespace", key)
			}
			return nil, fmt.Errorf("built-in certificates: reading Secret %s: %w", key, err)
		}
		// The rotator renews a serving certificate only when it does not name
		// DNSName; one that lacks an extra name (the hub was enabled on an
		// existing install) is dropped here, so that the rotator issues a new
		// one from the same CA. The update is conditional on the Secret's
		// resourceVersion: of several replicas, one drops it.
		missing := missingNames(secret.Data[CertFile], o.ExtraDNSNames)
		if len(missing) == 0 {
			break
		}
		delete(secret.Data, CertFile)
		delete(secret.Data, KeyFile)
		err := mgr.GetClient().Update(ctx, &secret, client.FieldOwner(fieldOwner))
		if err == nil {
			log.Info("the serving certificate does not name every extra DNS name; dropped it so that a new one is issued from the same CA", "missing", missing)
			break
		}
		if !apierrors.IsConflict(err) || attempt >= 3 {
			return nil, fmt.Errorf("built-in certificates: replacing the serving certificate in Secret %s, which does not name %v: %w", key, missing, err)
		}
	}
	// The rotator reads the Secret and the MutatingWebhookConfiguration through a
	// cache of its own, writes with mgr's client, and closes IsReady once tls.crt
	// is in CertDir and the CA has been injected.
	r := &rotator.CertRotator{
		SecretKey:              key,
		CertDir:                certDir,
		CAName:                 "kvinject-ca",
		CAOrganization:         "kvinject",
		DNSName:                o.DNSName(),
		ExtraDNSNames:          o.ExtraDNSNames,
		IsReady:                b.ready,
		Webhooks:               []rotator.WebhookInfo{{Name: o.WebhookConfigName, Type: rotator.Mutating}},
		FieldOwner:             fieldOwner,
		RestartOnSecretRefresh: false,
		RequireLeaderElection:  false,
		CaCertDuration:         o.CAValidity,
		ServerCertDuration:     o.Validity,
		LookaheadInterval:      o.RenewBefore,
		RotationCheckFrequency: o.CheckInterval,
		CertName:               CertFile,
		KeyName:                KeyFile,
	}
	if err := rotator.AddRotator(mgr, r); err != nil {
		return nil, fmt.Errorf("setting up the certificate rotator: %w", err)
	}
	syncer := &secretSync{
		cache:  mgr.GetCache(),
		key:    key,
		writer: atomicdir.New(certDir, 0o600),
		log:    log.WithValues("secret", key.String(), "certDir", certDir),
	}
	if err := mgr.Add(syncer); err != nil {
		return nil, err
	}
	return b, nil
}

// Ready is closed once the serving certificate is in the certificate directory
// and its CA is in the webhook configuration's caBundle.
func (b *Builtin) Ready() <-chan struct{} { return b.ready }

// Checker is a readiness check that passes once Ready is closed.
func (b *Builtin) Checker() healthz.Checker {
	return func(*http.Request) error {
		select {
		case <-b.ready:
			return nil
		default:
			return fmt.Errorf("waiting for the serving certificate in Secret %s/%s and its CA in MutatingWebhookConfiguration %s",
				b.opts.Namespace, b.opts.SecretName, b.opts.WebhookConfigName)
		}
	}
}

// StartWhenReady returns a runnable that starts r once ready is closed (or
// returns when the manager stops first). It never needs leader election.
func StartWhenReady(r manager.Runnable, ready <-chan struct{}) manager.Runnable {
	return &startWhenReady{r: r, ready: ready}
}

type startWhenReady struct {
	r     manager.Runnable
	ready <-chan struct{}
}

func (s *startWhenReady) Start(ctx context.Context) error {
	select {
	case <-s.ready:
		return s.r.Start(ctx)
	case <-ctx.Done():
		return nil
	}
}

func (s *startWhenReady) NeedLeaderElection() bool { return false }

// secretSync copies the certificate Secret into the certificate directory
// whenever it changes, all files at once (atomicdir: the ..data symlink swap
// kubelet uses for Secret volumes, which controller-runtime's file watcher
// follows). It does in-process what a Secret volume would do, without the
// kubelet's sync delay, so a new replica is ready within seconds and every
// replica serves a renewed certificate as soon as it is stored.
type secretSync struct {
	cache  cache.Cache
	key    types.NamespacedName
	writer *atomicdir.Writer
	log    logr.Logger

	mu   sync.Mutex
	last []byte // the certificate and key last written
}

func (s *secretSync) NeedLeaderElection() bool { return false }

func (s *secretSync) Start(ctx context.Context) error {
	inf, err := s.cache.GetInformer(ctx, &corev1.Secret{})
	if err != nil {
		return fmt.Errorf("watching Secret %s: %w", s.key, err)
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    s.onSecret,
		UpdateFunc: func(_, obj any) { s.onSecret(obj) },
	})
	if err != nil {
		return fmt.Errorf("watching Secret %s: %w", s.key, err)
	}
	<-ctx.Done()
	return inf.RemoveEventHandler(reg)
}

func (s *secretSync) onSecret(obj any) {
	secret, ok := obj.(*corev1.Secret)
	if !ok || secret.Namespace != s.key.Namespace || secret.Name != s.key.Name {
		return
	}
	if err := s.write(secret.Data); err != nil {
		s.log.Error(err, "not using the certificate in the Secret")
	}
}

// write writes the Secret's certificate, key and CA if they are new and form a
// valid pair. An empty Secret (not yet filled by the rotator) is not an error.
func (s *secretSync) write(data map[string][]byte) error {
	crt, key, ca := data[CertFile], data[KeyFile], data[CAFile]
	if len(crt) == 0 && len(key) == 0 {
		return nil
	}
	pair, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return fmt.Errorf("%s and %s do not form a key pair: %w", CertFile, KeyFile, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("parsing %s: %w", CertFile, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	current := append(append(bytes.Clone(crt), 0), key...)
	if bytes.Equal(current, s.last) {
		return nil
	}
	files := []atomicdir.File{{Path: CertFile, Data: crt}, {Path: KeyFile, Data: key}}
	if len(ca) > 0 {
		files = append(files, atomicdir.File{Path: CAFile, Data: ca})
	}
	if err := s.writer.Write(files); err != nil {
		return fmt.Errorf("writing the certificate into %s: %w", s.writer.Dir(), err)
	}
	s.last = current
	sum := sha256.Sum256(leaf.Raw)
	s.log.Info("serving certificate written", "sha256", hex.EncodeToString(sum[:]), "notAfter", leaf.NotAfter)
	return nil
}

// missingNames returns the names of want that the PEM certificate crt does not
// cover; none when there is no certificate (the rotator will issue one).
func missingNames(crt []byte, want []string) []string {
	blk, _ := pem.Decode(crt)
	if blk == nil || len(want) == 0 {
		return nil
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil // the rotator replaces a certificate that does not parse
	}
	var missing []string
	for _, n := range want {
		if cert.VerifyHostname(n) != nil {
			missing = append(missing, n)
		}
	}
	return missing
}
