// Package certs provides the webhook's serving certificate in one of two modes:
//
//   - files: tls.crt and tls.key are read from --cert-dir and reloaded when they
//     change. Something else writes them: cert-manager (through a Secret volume),
//     envtest, or a person.
//   - builtin: the webhook takes care of its own certificates. The rotator of
//     github.com/open-policy-agent/cert-controller creates a CA and a serving
//     certificate for the webhook's Service, keeps them in a Secret of the
//     webhook's namespace, injects the CA into the MutatingWebhookConfiguration's
//     caBundle and renews both before they expire. Every replica runs the rotator
//     without leader election: writes to the Secret are optimistic (resourceVersion
//     conflicts), so concurrent replicas converge on the one certificate that won,
//     and each replica copies that Secret into --cert-dir, atomically, the moment
//     it changes, where the same file watcher as in files mode picks it up.
//
// In builtin mode the webhook server starts only once the certificate is on disk
// and its CA is in the caBundle, so a replica never reports ready (and never
// receives admissions) before the API server can trust it. Renewing the serving
// certificate keeps the CA, so the API server trusts the old and the new
// certificate alike and no admission fails while the replicas switch over.
package certs

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Certificate modes.
const (
	// ModeFiles reads the certificate from --cert-dir, written by someone else.
	ModeFiles = "files"
	// ModeBuiltin creates, stores, injects and renews the certificate itself.
	ModeBuiltin = "builtin"
)

// Defaults of the builtin mode's settings.
const (
	DefaultSecretName        = "kvinject-webhook-cert"
	DefaultWebhookConfigName = "kvinject"
	DefaultServiceName       = "kvinject-webhook"
	DefaultCAValidity        = 10 * 365 * 24 * time.Hour
	DefaultValidity          = 365 * 24 * time.Hour
	DefaultRenewBefore       = 90 * 24 * time.Hour
	DefaultCheckInterval     = time.Hour
)

// serviceAccountNamespaceFile holds the pod's namespace in every pod that mounts
// its ServiceAccount token, which the webhook's pod does.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Options configure the certificate mode, bound to command-line flags.
type Options struct {
	// Mode is ModeFiles or ModeBuiltin.
	Mode string
	// Namespace is the webhook's own namespace: where its Secret and Service are.
	Namespace string
	// SecretName is the Secret that holds the CA and the serving certificate.
	SecretName string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle is kept.
	WebhookConfigName string
	// ServiceName is the webhook's Service: the certificate is issued for
	// <ServiceName>.<Namespace>.svc, the name the API server verifies.
	ServiceName string
	// ExtraDNSNames are further names of the serving certificate: the version
	// hub's Service, which in builtin mode serves the webhook's certificate too.
	ExtraDNSNames []string
	// CAValidity and Validity are the lifetimes of a new CA and serving certificate.
	CAValidity, Validity time.Duration
	// RenewBefore is how long before its expiry a certificate is renewed.
	RenewBefore time.Duration
	// CheckInterval is how often the expiry is checked.
	CheckInterval time.Duration

	// namespaceFile is serviceAccountNamespaceFile, replaced in tests.
	namespaceFile string
}

// BindFlags defines the flags on fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Mode, "cert-mode", ModeFiles, "serving certificate: \"files\" (read from --cert-dir, written by cert-manager or another tool) or \"builtin\" (the webhook creates, stores, injects and renews it)")
	fs.StringVar(&o.Namespace, "namespace", "", "the webhook's own namespace, holding its Service and certificate Secret (default: $POD_NAMESPACE, else the pod's ServiceAccount namespace)")
	fs.StringVar(&o.SecretName, "cert-secret", DefaultSecretName, "builtin mode: Secret in --namespace that stores the CA and the serving certificate (must exist; may be empty)")
	fs.StringVar(&o.WebhookConfigName, "webhook-config-name", DefaultWebhookConfigName, "builtin mode: MutatingWebhookConfiguration whose caBundle is kept current")
	fs.StringVar(&o.ServiceName, "service-name", DefaultServiceName, "builtin mode: the webhook's Service; the certificate is for <service-name>.<namespace>.svc")
	fs.DurationVar(&o.CAValidity, "cert-ca-validity", DefaultCAValidity, "builtin mode: lifetime of a new CA")
	fs.DurationVar(&o.Validity, "cert-validity", DefaultValidity, "builtin mode: lifetime of a new serving certificate")
	fs.DurationVar(&o.RenewBefore, "cert-renew-before", DefaultRenewBefore, "builtin mode: renew the CA or the serving certificate this long before it expires")
	fs.DurationVar(&o.CheckInterval, "cert-check-interval", DefaultCheckInterval, "builtin mode: how often expiry is checked (changes to the Secret are seen at once)")
}

// Complete validates the options, naming the flag at fault, and in builtin mode
// finds the webhook's namespace when --namespace is not given.
func (o *Options) Complete() error {
	switch o.Mode {
	case ModeFiles:
		return nil
	case ModeBuiltin:
	default:
		return fmt.Errorf("--cert-mode %q: use %q or %q", o.Mode, ModeFiles, ModeBuiltin)
	}
	var errs []error
	if o.Namespace == "" {
		o.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if o.Namespace == "" {
		file := o.namespaceFile
		if file == "" {
			file = serviceAccountNamespaceFile
		}
		if b, err := os.ReadFile(file); err == nil {
			o.Namespace = strings.TrimSpace(string(b))
		}
	}
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is required with --cert-mode=builtin outside a pod (or set POD_NAMESPACE)"))
	}
	for _, f := range []struct{ flag, value string }{
		{"namespace", o.Namespace}, {"service-name", o.ServiceName},
	} {
		if f.value == "" {
			continue
		}
		if msgs := validation.IsDNS1123Label(f.value); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--%s %q: %s", f.flag, f.value, strings.Join(msgs, "; ")))
		}
	}
	if o.ServiceName == "" {
		errs = append(errs, errors.New("--service-name must not be empty with --cert-mode=builtin"))
	}
	for _, f := range []struct{ flag, value string }{
		{"cert-secret", o.SecretName}, {"webhook-config-name", o.WebhookConfigName},
	} {
		if msgs := validation.IsDNS1123Subdomain(f.value); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--%s %q: %s", f.flag, f.value, strings.Join(msgs, "; ")))
		}
	}
	for _, f := range []struct {
		flag  string
		value time.Duration
	}{
		{"cert-ca-validity", o.CAValidity}, {"cert-validity", o.Validity},
		{"cert-renew-before", o.RenewBefore}, {"cert-check-interval", o.CheckInterval},
	} {
		if f.value <= 0 {
			errs = append(errs, fmt.Errorf("--%s %s: must be positive", f.flag, f.value))
		}
	}
	if o.RenewBefore >= o.Validity {
		errs = append(errs, fmt.Errorf("--cert-renew-before %s must be shorter than --cert-validity %s, or every check would renew", o.RenewBefore, o.Validity))
	}
	if o.RenewBefore >= o.CAValidity {
		errs = append(errs, fmt.Errorf("--cert-renew-before %s must be shorter than --cert-ca-validity %s, or every check would replace the CA", o.RenewBefore, o.CAValidity))
	}
	if o.Validity > o.CAValidity {
		errs = append(errs, fmt.Errorf("--cert-validity %s must not be longer than --cert-ca-validity %s", o.Validity, o.CAValidity))
	}
	if o.CheckInterval > 0 && o.RenewBefore > 0 && o.CheckInterval >= o.RenewBefore {
		errs = append(errs, fmt.Errorf("--cert-check-interval %s must be shorter than --cert-renew-before %s, or a certificate could expire between two checks", o.CheckInterval, o.RenewBefore))
	}
	return errors.Join(errs...)
}

// DNSName is the name the API server verifies when it calls the webhook through
// its Service: <service>.<namespace>.svc.
func (o Options) DNSName() string {
	return o.ServiceName + "." + o.Namespace + ".svc"
}
