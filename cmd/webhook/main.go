// Command webhook is kvinject's mutating admission webhook. It serves
// /mutate-v1-pod over TLS, reads Namespaces and ServiceAccounts through a cache,
// and exposes health, readiness and Prometheus metrics endpoints.
//
// The serving certificate comes from --cert-dir, reloaded when it changes. With
// --cert-mode=files something else writes it there (cert-manager through a Secret
// volume, envtest, a person). With --cert-mode=builtin the webhook creates its own
// CA and certificate, keeps them in a Secret, injects the CA into its
// MutatingWebhookConfiguration and renews them (see internal/certs).
//
// `kvinject-webhook inject -f <file|->` applies the same mutation to manifests
// and prints them, without a cluster (see internal/offline).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/kvinject/kvinject/internal/certs"
	"github.com/kvinject/kvinject/internal/injector"
	"github.com/kvinject/kvinject/internal/offline"
	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/internal/version/agentimage"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == offline.Command {
		os.Exit(offline.Main(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // --help: the usage is printed
		}
		fmt.Fprintln(os.Stderr, "kvinject-webhook:", err)
		os.Exit(exitCode(err))
	}
}

// usageError is a mistake on the command line: exit code 2, as for bad usage
// of the inject subcommand.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitCode is the exit code of a failed run: 2 for bad usage, else 1.
func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

// printVersion writes the version on the first line, then this build's
// default agent image.
func printVersion(w io.Writer) {
	fmt.Fprintln(w, version.Version)
	agent, err := agentimage.Default()
	if err != nil {
		fmt.Fprintln(w, "agent image:", err)
		return
	}
	fmt.Fprintln(w, "agent image:", agent.Describe())
}

func run(args []string) error {
	fs := flag.NewFlagSet("kvinject-webhook", flag.ContinueOnError)
	var (
		opts        injector.Options
		certOpts    certs.Options
		certDir     string
		host        string
		port        int
		metricsAddr string
		probeAddr   string
		showVersion bool
	)
	opts.BindFlags(fs)
	certOpts.BindFlags(fs)
	fs.StringVar(&certDir, "cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory holding tls.crt and tls.key, reloaded when they change (with --cert-mode=builtin the webhook writes them there)")
	fs.StringVar(&host, "host", "", "address the webhook server listens on (empty: all)")
	fs.IntVar(&port, "port", 9443, "port of the webhook server")
	fs.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables it)")
	fs.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	config.RegisterFlags(fs) // --kubeconfig; in a pod the in-cluster configuration is used
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		// The flag package has printed the error and the usage.
		return usageError{err.Error()}
	}
	// The server takes no arguments. A subcommand after a flag (kvinject-webhook
	// --agent-image=x inject -f d.yaml) ends the flags there: refuse it rather
	// than start the server.
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q (subcommands such as %s come first)", fs.Arg(0), offline.Command)}
	}
	if showVersion {
		printVersion(os.Stdout)
		return nil
	}
	if err := errors.Join(opts.Complete(), certOpts.Complete()); err != nil {
		return err
	}
	if opts.Mutate.HubURL != "" {
		// The hub serves a certificate of the webhook's CA: in builtin mode the
		// webhook's own certificate, which then names the hub's Service too.
		if opts.HubCAFile == "" {
			opts.HubCAFile = filepath.Join(certDir, certs.CAFile)
		}
		if u, err := url.Parse(opts.Mutate.HubURL); err == nil {
			certOpts.ExtraDNSNames = append(certOpts.ExtraDNSNames, u.Hostname())
		}
	}
	log := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(log)

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading the Kubernetes client configuration: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return err
	}
	// The webhook server is added to the manager below, by hand: in builtin mode it
	// must start only once its certificate exists.
	server := webhook.NewServer(webhook.Options{
		Host:    host,
		Port:    port,
		CertDir: certDir,
		TLSOpts: injector.TLSOptions(),
	})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject:         cacheByObject(certOpts),
		},
		WebhookServer: server,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}

	h := opts.NewHandler()
	// Namespaces and ServiceAccounts are read as metadata (see cacheByObject),
	// from the cache and, for one not cached yet, from the API server.
	h.Reader = injector.MetadataReader{Reader: mgr.GetClient()}
	h.APIReader = injector.MetadataReader{Reader: mgr.GetAPIReader()}
	h.Log = log.WithName("injector")
	h.Metrics = injector.NewMetrics(metrics.Registry)
	recoverPanic := true
	server.Register(injector.Path, &webhook.Admission{Handler: h, RecoverPanic: &recoverPanic})
	switch certOpts.Mode {
	case certs.ModeBuiltin:
		builtin, err := certs.SetupBuiltin(mgr, certOpts, certDir, log.WithName("certs"))
		if err != nil {
			return err
		}
		if err := mgr.Add(certs.StartWhenReady(server, builtin.Ready())); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("certificate", builtin.Checker()); err != nil {
			return err
		}
	default:
		if err := mgr.Add(server); err != nil {
			return err
		}
	}

	// Start the Namespace and ServiceAccount informers with the manager, not on the
	// first pod, and report ready only once they are synced: a cold cache in a large
	// cluster would otherwise make the first admissions wait on the API server.
	for _, obj := range []client.Object{injector.NamespaceMetadata(), injector.ServiceAccountMetadata()} {
		if _, err := mgr.GetCache().GetInformer(context.Background(), obj, cache.BlockUntilSynced(false)); err != nil {
			return fmt.Errorf("preparing the %s cache: %w", obj.GetObjectKind().GroupVersionKind().Kind, err)
		}
	}
	if err := mgr.AddReadyzCheck("caches", func(r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), 100*time.Millisecond)
		defer cancel()
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return errors.New("the Namespace and ServiceAccount caches are not synced yet")
		}
		return nil
	}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return err
	}
	log.Info("starting kvinject webhook", "version", version.Version, "agentImage", opts.Mutate.AgentImage, "agentImageFrom", opts.AgentImageOrigin(), "nativeSidecars", opts.Mutate.NativeSidecars, "certMode", certOpts.Mode, "hub", opts.Mutate.HubURL)
	return mgr.Start(ctrl.SetupSignalHandler())
}

// cacheByObject is the cache's configuration by object: the builtin
// certificate mode's, and the Namespaces and ServiceAccounts the handler reads,
// watched as metadata only (metav1.PartialObjectMetadata) and trimmed to the
// annotations it reads (injector.TrimMetadata): the cache keeps no more of an
// object than the decision reads, whatever else the cluster puts on it.
func cacheByObject(certOpts certs.Options) map[client.Object]cache.ByObject {
	byObject := map[client.Object]cache.ByObject{
		injector.NamespaceMetadata():      {Transform: injector.TrimNamespaceMetadata()},
		injector.ServiceAccountMetadata(): {Transform: injector.TrimServiceAccountMetadata()},
	}
	maps.Copy(byObject, certOpts.CacheByObject())
	return byObject
}
