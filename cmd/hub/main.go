// Command kvinject-hub is kvinject's version hub: rotating agents long-poll it
// (pkg/hubapi) instead of reading every secret from Key Vault at every
// interval. It lists the watched vaults' secret properties (and certificate and
// key properties, with --watch-kinds) once per sweep for all pods (package
// internal/hub/vaults), and tells each agent when one of its own objects has a
// new version (package internal/hub). It never reads a value: its Azure
// identity needs only list (for certificates and keys in RBAC vaults, their
// read actions: docs/hub.md).
//
//	kvinject-hub --identity=workload --cert-dir=/etc/kvinject-hub/tls --replicas=2
//
// The serving certificate (tls.crt, tls.key in --cert-dir) is reloaded when it
// changes. The Azure identity is configured by the same environment as the
// agent's (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE,
// AZURE_AUTHORITY_HOST; see internal/agent.ReadEnv), and its Key Vault clients
// are built by the agent's builder (internal/agent.NewClients). On SIGTERM the
// hub stops accepting connections and answers held watches with 503 and a
// short Retry-After, so that agents reconnect to another replica.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2"
	"github.com/go-logr/logr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/hub"
	"github.com/kvinject/kvinject/internal/hub/events"
	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // --help: the usage is printed
		}
		fmt.Fprintln(os.Stderr, "kvinject-hub:", err)
		os.Exit(exitCode(err))
	}
}

// usageError is a mistake on the command line: exit code 2.
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

// flags are kvinject-hub's command line: hub.Flags and the flags of the
// command itself.
type flags struct {
	hub.Flags
	// BindReusePort listens on --bind-address with SO_REUSEPORT (Linux).
	BindReusePort bool
}

// parseFlags parses and validates the command line.
func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	fs := flag.NewFlagSet("kvinject-hub", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f flags
	f.Bind(fs)
	fs.BoolVar(&f.BindReusePort, "bind-reuse-port", false, "listen on --bind-address with SO_REUSEPORT (Linux only), so that several hub processes on one host share the port and the kernel spreads new connections across them (as a Service spreads them across replicas; the benchmarks use it)")
	config.RegisterFlags(fs) // --kubeconfig; in a pod the in-cluster configuration is used
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()} // the flag package has printed it with the usage
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Sprintf("unexpected argument %q: kvinject-hub takes flags only", fs.Arg(0))}
	}
	if f.Version {
		return &f, nil
	}
	if err := f.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	if len(f.EventsQueues) > 0 && f.EventsLeaseNamespace == "" {
		f.EventsLeaseNamespace = os.Getenv("POD_NAMESPACE")
		if f.EventsLeaseNamespace == "" {
			return nil, usageError{"--events-queue needs the namespace of the events Lease: set --events-lease-namespace, or POD_NAMESPACE from the downward API as the installs do"}
		}
	}
	return &f, nil
}

// hubRetry are the Key Vault clients' retries: none, because package vaults
// backs off on its own (Retry-After honoured, exponential, capped), and an SDK
// retry of a throttled list would spend the vault's budget again.
var hubRetry = policy.RetryOptions{MaxRetries: -1, TryTimeout: 30 * time.Second}

func run(args []string, stdout, stderr io.Writer) error {
	f, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if f.Version {
		fmt.Fprintln(stdout, version.Version)
		return nil
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: f.Level}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log) // client-go's leader election logs through klog

	env := agent.ReadEnv(nil)
	env.Product = "kvinject-hub" // in Key Vault's and Azure AD's audit logs
	if err := checkIdentityEnv(f.IdentityKind, env); err != nil {
		return err
	}
	newClient := func(vaultURL string) (*azsecrets.Client, error) {
		c, err := agent.NewClients(vaultURL, f.IdentityKind, env, hubRetry, log)
		if err != nil {
			return nil, err
		}
		return c.Secrets, nil
	}
	// Build one client now, so that a broken identity setup fails the start,
	// not the first watch. It makes no request.
	if _, err := newClient("https://kvinject-hub-check.vault.azure.net/"); err != nil {
		return fmt.Errorf("--identity=%s: %w", f.IdentityKind, err)
	}

	crt, key := filepath.Join(f.CertDir, "tls.crt"), filepath.Join(f.CertDir, "tls.key")
	cw, err := certwatcher.New(crt, key)
	if err != nil {
		return fmt.Errorf("--cert-dir %s: loading the serving certificate tls.crt and key tls.key: %w (mount the hub's TLS Secret there)", f.CertDir, err)
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading the Kubernetes client configuration (--kubeconfig, or in-cluster): %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	kc := &kindClients{build: func(vaultURL string) (*agent.Clients, error) {
		return agent.NewClients(vaultURL, f.IdentityKind, env, hubRetry, log)
	}}
	vh, err := vaults.New(vaults.Options{
		Client:        newClient,
		SweepInterval: f.SweepInterval,
		ReadBudget:    f.ReplicaBudget(),
		MaxVersions:   f.MaxVersions,
		Logger:        log.With("component", "vaults"),
		Registerer:    metrics.Registry,

		// --watch-kinds: certificates and keys too, if named.
		Kinds:             f.Kinds(),
		CertificateClient: kc.certificates,
		KeyClient:         kc.keys,
	})
	if err != nil {
		return err
	}
	srv, err := hub.NewServer(hub.Options{
		Kube:                    kube,
		Vaults:                  vh,
		MaxWait:                 f.MaxWait,
		MaxConnectionAge:        f.MaxConnectionAge,
		PodCacheTTL:             f.ServerPodCacheTTL(),
		Logger:                  log.With("component", "server"),
		RestarterServiceAccount: f.RestarterServiceAccount,
		Registerer:              metrics.Registry,
	})
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: f.MetricsBindAddress},
		HealthProbeBindAddress: f.HealthProbeBindAddress,
		PprofBindAddress:       f.PprofBindAddress,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	ln, err := listen(f.BindAddress, f.BindReusePort)
	if err != nil {
		return err
	}
	runnables := []manager.Runnable{
		cw,
		manager.RunnableFunc(vh.Run),
		manager.RunnableFunc(srv.WaitForAPI),
		manager.RunnableFunc(func(ctx context.Context) error {
			return srv.Serve(ctx, ln, hub.TLSConfig(cw.GetCertificate))
		}),
	}
	if len(f.EventsQueues) > 0 {
		ev, err := eventIntakes(f, env, kube, vh, log)
		if err != nil {
			return err
		}
		runnables = append(runnables, ev...)
	}
	for _, r := range runnables {
		if err := mgr.Add(r); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("hub", srv.Ready); err != nil {
		return err
	}
	log.Info("starting kvinject hub", "version", version.Version, "bindAddress", f.BindAddress, "identity", f.IdentityKind,
		"bindReusePort", f.BindReusePort, "sweepInterval", f.SweepInterval.String(), "readBudget", f.ReadBudget, "replicas", f.Replicas, "replicaBudget", f.ReplicaBudget(),
		"maxWait", f.MaxWait.String(), "maxConnectionAge", f.MaxConnectionAge.String(), "maxVersions", f.MaxVersions, "podCacheTTL", f.PodCacheTTL.String(),
		"eventsQueues", f.EventsQueues)
	return mgr.Start(ctrl.SetupSignalHandler())
}

// eventIntakes returns the runnables of Key Vault events (--events-queue):
// the Lease whose holder deletes the handled messages, and one intake per
// queue, read with the hub's own identity.
func eventIntakes(f *flags, env agent.Env, kube kubernetes.Interface, vh *vaults.Hub, log *slog.Logger) ([]manager.Runnable, error) {
	lease, err := events.NewLease(kube, f.EventsLeaseNamespace, events.DefaultLeaseName, leaseIdentity(), log.With("component", "events"))
	if err != nil {
		return nil, err
	}
	az, err := agent.NewAzure(f.IdentityKind, env, policy.RetryOptions{}, log)
	if err != nil {
		return nil, fmt.Errorf("--identity=%s for --events-queue: %w", f.IdentityKind, err)
	}
	m, err := events.NewMetrics(metrics.Registry)
	if err != nil {
		return nil, err
	}
	out := []manager.Runnable{manager.RunnableFunc(lease.Run)}
	for _, q := range f.EventsQueues {
		qc, err := azqueue.NewQueueClient(q, az.Credential, &azqueue.ClientOptions{ClientOptions: az.Options})
		if err != nil {
			return nil, fmt.Errorf("--events-queue %s: %w", q, err)
		}
		in, err := events.NewIntake(events.IntakeOptions{
			Queue:        qc,
			Name:         q,
			Hints:        vh,
			Deleter:      lease.Held,
			PollInterval: f.EventsPollInterval,
			DeleteAfter:  f.EventsDeleteAfter,
			Logger:       log.With("component", "events"),
			Metrics:      m,
		})
		if err != nil {
			return nil, err
		}
		out = append(out, manager.RunnableFunc(in.Run))
	}
	return out, nil
}

// leaseIdentity names this replica in the events Lease: its pod's name
// (POD_NAME, else the host name, which is the pod's name in a pod) and a
// random suffix, so that a restarted container never takes over its
// predecessor's term.
func leaseIdentity() string {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return name + "_" + hex.EncodeToString(b[:])
}

// listen listens on the agents' address, with SO_REUSEPORT when reusePort
// (see reusePortControl).
func listen(addr string, reusePort bool) (net.Listener, error) {
	var lc net.ListenConfig
	if reusePort {
		lc.Control = reusePortControl
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		if reusePort {
			return nil, fmt.Errorf("--bind-address %s with --bind-reuse-port: %w", addr, err)
		}
		return nil, fmt.Errorf("--bind-address %s: %w", addr, err)
	}
	return ln, nil
}

// checkIdentityEnv checks that the environment configures the identity kind,
// with the hub's fix (the agent's messages speak of the webhook).
func checkIdentityEnv(kind agentconfig.IdentityKind, env agent.Env) error {
	var missing []string
	need := func(name, value string) {
		if value == "" {
			missing = append(missing, name)
		}
	}
	var fix string
	switch kind {
	case agentconfig.IdentityWorkload:
		need(agentconfig.EnvClientID, env.ClientID)
		need(agentconfig.EnvTenantID, env.TenantID)
		need(agentconfig.EnvTokenFile, env.TokenFile)
		fix = "label the hub's pod azure.workload.identity/use=true and annotate its ServiceAccount with azure.workload.identity/client-id (azure-workload-identity then sets them), or set them in the Deployment"
	case agentconfig.IdentityManaged:
		need(agentconfig.EnvClientID, env.ClientID)
		fix = "set " + agentconfig.EnvClientID + " to the user-assigned identity's client ID in the Deployment"
	}
	if len(missing) > 0 {
		return fmt.Errorf("--identity=%s needs %s in the hub's environment: %s", kind, strings.Join(missing, ", "), fix)
	}
	return nil
}

// kindClients builds the certificate and key clients of --watch-kinds the way
// the secrets client is built (agent.NewClients), one set per vault for both.
type kindClients struct {
	build func(vaultURL string) (*agent.Clients, error)
	mu    sync.Mutex
	built map[string]*agent.Clients
}

func (k *kindClients) get(vaultURL string) (*agent.Clients, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c := k.built[vaultURL]; c != nil {
		return c, nil
	}
	c, err := k.build(vaultURL)
	if err != nil {
		return nil, err
	}
	if k.built == nil {
		k.built = map[string]*agent.Clients{}
	}
	k.built[vaultURL] = c
	return c, nil
}

func (k *kindClients) certificates(vaultURL string) (*azcertificates.Client, error) {
	c, err := k.get(vaultURL)
	if err != nil {
		return nil, err
	}
	return c.Certificates, nil
}

func (k *kindClients) keys(vaultURL string) (*azkeys.Client, error) {
	c, err := k.get(vaultURL)
	if err != nil {
		return nil, err
	}
	return c.Keys, nil
}
