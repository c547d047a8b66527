package events

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Lease timings: client-go's usual ones.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// DefaultLeaseName is the name of the Lease whose holder deletes the queues'
// messages.
const DefaultLeaseName = "kvinject-hub-events"

// Lease elects the one replica that deletes the queues' messages (Deleter)
// through a coordination.k8s.io Lease. Unlike a controller's leader election
// it never ends the process: a replica that loses the Lease only stops
// deleting and contends again, and every replica keeps reading the queues
// meanwhile. While two replicas both believe they hold it (a lease about to
// expire), both delete: harmless, since each deletes only messages every
// replica has had DeleteAfter to read, and a message deleted twice is
// MessageNotFound.
type Lease struct {
	kube      kubernetes.Interface
	namespace string
	name      string
	identity  string
	log       *slog.Logger
	held      atomic.Bool

	// leaseDuration, renewDeadline and retryPeriod are client-go's timings
	// (tests shorten them).
	leaseDuration, renewDeadline, retryPeriod time.Duration
}

// NewLease returns the Lease namespace/name contended for as identity (the
// pod's name, made unique); Run contends.
func NewLease(kube kubernetes.Interface, namespace, name, identity string, log *slog.Logger) (*Lease, error) {
	if kube == nil || namespace == "" || name == "" || identity == "" {
		return nil, errors.New("events.NewLease: a Kubernetes client, the Lease's namespace and name, and an identity are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Lease{kube: kube, namespace: namespace, name: name, identity: identity, log: log.With("lease", namespace+"/"+name),
		leaseDuration: leaseDuration, renewDeadline: renewDeadline, retryPeriod: retryPeriod}, nil
}

// Held reports whether this replica holds the Lease: IntakeOptions.Deleter.
func (l *Lease) Held() bool { return l.held.Load() }

// Run contends for the Lease until ctx ends, and releases it then, so that
// another replica takes over at once.
func (l *Lease) Run(ctx context.Context) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, l.namespace, l.name,
		l.kube.CoreV1(), l.kube.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: l.identity})
	if err != nil {
		return err
	}
	cfg := leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   l.leaseDuration,
		RenewDeadline:   l.renewDeadline,
		RetryPeriod:     l.retryPeriod,
		ReleaseOnCancel: true,
		Name:            l.name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				l.held.Store(true)
				l.log.Info("holding the events Lease: this replica deletes the read queue messages")
			},
			OnStoppedLeading: func() {
				if l.held.Swap(false) {
					l.log.Info("no longer holding the events Lease: another replica deletes the read queue messages")
				}
			},
		},
	}
	for ctx.Err() == nil {
		el, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			return err
		}
		el.Run(ctx) // returns when the Lease is lost, or ctx ends
		if ctx.Err() == nil {
			select { // contend again after a short, jittered pause
			case <-ctx.Done():
			case <-time.After(l.retryPeriod/2 + rand.N(l.retryPeriod)):
			}
		}
	}
	return nil
}
