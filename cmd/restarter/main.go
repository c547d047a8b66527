// Command kvinject-restarter is kvinject's restart controller: it reads the
// version hub's feed of swapped sets and rolls the Deployments, StatefulSets
// and DaemonSets whose pod template carries kvinject.dev/on-change: restart
// (package internal/restarter). It has no listener besides health and
// metrics, holds no Azure identity, and has rights only in the namespaces that
// bind its ClusterRole (docs/actions.md).
//
//	kvinject-restarter --hub-url=https://kvinject-hub.kvinject-system.svc \
//	  --hub-peers=kvinject-hub-peers.kvinject-system.svc:8443 --hub-ca-file=/etc/kvinject-hub/ca.crt
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/kvinject/kvinject/internal/restarter"
	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "kvinject-restarter:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// flags are the command line.
type flags struct {
	HubURL, HubPeers, HubCAFile, TokenFile string
	ServiceAccount                         string
	Debounce, Cooldown                     time.Duration
	MetricsBindAddress, HealthBindAddress  string
	LeaderElection                         bool
	LeaderElectionNamespace                string
	LogLevel                               string
	Version                                bool
	level                                  slog.Level
}

// DefaultTokenFile is where the installs project the controller's token of
// audience hubapi.Audience.
const DefaultTokenFile = "/var/run/secrets/kvinject/hub-token/token"

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	fs := flag.NewFlagSet("kvinject-restarter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f flags
	fs.StringVar(&f.HubURL, "hub-url", "", "the version hub's URL, https://<service>.<namespace>.svc[:<port>] (required); its host is the name checked in the hub's certificate")
	fs.StringVar(&f.HubPeers, "hub-peers", "", "<DNS name>:<port> of a headless Service whose addresses are every hub replica, and the hub pods' port (each replica keeps its own feed), e.g. kvinject-hub-peers.kvinject-system.svc:8443; empty: only --hub-url")
	fs.StringVar(&f.HubCAFile, "hub-ca-file", "", "PEM CA bundle, the only roots trusted for the hub (required)")
	fs.StringVar(&f.TokenFile, "hub-token-file", DefaultTokenFile, "projected ServiceAccount token of audience "+hubapi.Audience+", presented to the hub (read again for every request)")
	fs.StringVar(&f.ServiceAccount, "service-account", "", "<namespace>/<name> of this controller's ServiceAccount, for the fix it logs when a namespace has not opted in (default: $POD_NAMESPACE/kvinject-restarter)")
	fs.DurationVar(&f.Debounce, "debounce", restarter.DefaultDebounce, "how long reports of one workload's pods are collected before one restart")
	fs.DurationVar(&f.Cooldown, "cooldown", restarter.DefaultCooldown, "the least time between two restarts of one workload")
	fs.StringVar(&f.MetricsBindAddress, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables it)")
	fs.StringVar(&f.HealthBindAddress, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	fs.BoolVar(&f.LeaderElection, "leader-elect", true, "run only while holding the Lease kvinject-restarter, so that two replicas (e.g. during a rollout) never both restart")
	fs.StringVar(&f.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the Lease (default: $POD_NAMESPACE)")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&f.Version, "version", false, "print the version and exit")
	config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return nil, usageError{fmt.Sprintf("unexpected argument %q: kvinject-restarter takes flags only", fs.Arg(0))}
	}
	if f.Version {
		return &f, nil
	}
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if !strings.HasPrefix(f.HubURL, "https://") {
		bad("--hub-url %q: give the hub's https URL, e.g. https://kvinject-hub.kvinject-system.svc", f.HubURL)
	}
	if f.HubCAFile == "" {
		bad("--hub-ca-file is empty: give the PEM CA bundle of the hub's certificate")
	}
	if f.Debounce < time.Second || f.Debounce > 10*time.Minute {
		bad("--debounce %s: use a duration from 1s to 10m", f.Debounce)
	}
	if f.Cooldown < 0 || f.Cooldown > 24*time.Hour {
		bad("--cooldown %s: use a duration from 0 to 24h", f.Cooldown)
	}
	if err := f.level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		bad("--log-level %q: use debug, info, warn or error", f.LogLevel)
	}
	ns := os.Getenv("POD_NAMESPACE")
	if f.ServiceAccount == "" && ns != "" {
		f.ServiceAccount = ns + "/kvinject-restarter"
	}
	if f.ServiceAccount != "" {
		if _, _, err := hubapi.ParseServiceAccount(f.ServiceAccount); err != nil {
			bad("--service-account: %v", err)
		}
	}
	if f.LeaderElection && f.LeaderElectionNamespace == "" {
		f.LeaderElectionNamespace = ns
		if ns == "" {
			bad("--leader-elect needs the Lease's namespace: set --leader-election-namespace, or POD_NAMESPACE from the downward API as the installs do (or --leader-elect=false with one replica)")
		}
	}
	if len(errs) > 0 {
		return nil, usageError{strings.Join(errs, "; ")}
	}
	return &f, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	f, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if f.Version {
		fmt.Fprintln(stdout, version.Version)
		return nil
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: f.level}))
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))
	klog.SetSlogLogger(log)

	pem, err := os.ReadFile(f.HubCAFile)
	if err != nil {
		return fmt.Errorf("--hub-ca-file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("--hub-ca-file %s holds no PEM certificate", f.HubCAFile)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("loading the Kubernetes client configuration (--kubeconfig, or in-cluster): %w", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating the Kubernetes client: %w", err)
	}
	m := restarter.NewMetrics()
	if err := m.Register(metrics.Registry); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics:                 metricsserver.Options{BindAddress: f.MetricsBindAddress},
		HealthProbeBindAddress:  f.HealthBindAddress,
		LeaderElection:          f.LeaderElection,
		LeaderElectionID:        "kvinject-restarter",
		LeaderElectionNamespace: f.LeaderElectionNamespace,
		// Release the Lease on SIGTERM so that a rollout's new replica takes
		// over at once.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer bc.Shutdown()
	c := restarter.New(restarter.Options{
		Kube:           kube,
		Recorder:       bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kvinject-restarter"}),
		Debounce:       f.Debounce,
		Cooldown:       f.Cooldown,
		ServiceAccount: f.ServiceAccount,
		Logger:         log.With("component", "restarter"),
		Metrics:        m,
	})
	// A leader-elected runnable: it runs only while this replica holds the Lease.
	if err := mgr.Add(leaderRunnable(func(ctx context.Context) error {
		defer c.Wait()
		defer c.Stop()
		return restarter.Feeds(ctx, restarter.FeedOptions{
			HubURL:    f.HubURL,
			Peers:     f.HubPeers,
			RootCAs:   roots,
			TokenFile: f.TokenFile,
			Handle:    func(ctx context.Context, ch hubapi.Change) { c.Handle(ctx, ch) },
			Logger:    log.With("component", "feed"),
			Metrics:   m,
		})
	})); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	log.Info("starting kvinject restarter", "version", version.Version, "hubURL", f.HubURL, "hubPeers", f.HubPeers,
		"debounce", f.Debounce.String(), "cooldown", f.Cooldown.String(), "leaderElection", f.LeaderElection)
	return mgr.Start(ctrl.SetupSignalHandler())
}

// leaderRunnable runs fn only on the leader.
type leaderRunnable func(context.Context) error

func (r leaderRunnable) Start(ctx context.Context) error { return r(ctx) }
func (leaderRunnable) NeedLeaderElection() bool          { return true }

var _ manager.LeaderElectionRunnable = leaderRunnable(nil)
