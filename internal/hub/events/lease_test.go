package events

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// fastLease is a Lease with short timings.
func fastLease(t *testing.T, kube *fake.Clientset, identity string) *Lease {
	t.Helper()
	l, err := NewLease(kube, "kvinject-system", DefaultLeaseName, identity, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.leaseDuration, l.renewDeadline, l.retryPeriod = 1500*time.Millisecond, time.Second, 200*time.Millisecond
	return l
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLease: exactly one of two replicas holds the Lease; the other takes it
// over when the holder loses it (cut off from the API server) and when the
// holder stops (released on cancel, so at once), and a replica that lost it
// keeps running and contends again.
func TestLease(t *testing.T) {
	kube := fake.NewClientset()
	// cutOff names a replica whose writes of the Lease fail, as if it lost
	// the API server.
	var cutOff atomic.Value
	cutOff.Store("")
	kube.PrependReactor("update", "leases", func(action k8stesting.Action) (bool, runtime.Object, error) {
		l := action.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if id := cutOff.Load().(string); id != "" && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == id {
			return true, nil, errors.New("the API server cannot be reached")
		}
		return false, nil, nil
	})
	a, b := fastLease(t, kube, "hub-a"), fastLease(t, kube, "hub-b")
	ctxA, stopA := context.WithCancel(t.Context())
	ctxB, stopB := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var errA, errB error
	done := map[string]chan struct{}{"hub-a": make(chan struct{}), "hub-b": make(chan struct{})}
	wg.Add(2)
	go func() { defer wg.Done(); defer close(done["hub-a"]); errA = a.Run(ctxA) }()
	go func() { defer wg.Done(); defer close(done["hub-b"]); errB = b.Run(ctxB) }()
	t.Cleanup(func() { stopA(); stopB(); wg.Wait() })

	waitFor(t, "one replica holds the Lease", 5*time.Second, func() bool { return a.Held() || b.Held() })
	holder, other := a, b
	if b.Held() {
		holder, other = b, a
	}
	// Both never hold it at once in steady state.
	for range 10 {
		if a.Held() && b.Held() {
			t.Fatal("both replicas hold the Lease")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The holder is cut off from the API server (its renewals fail): it
	// stops deleting without ending, and the other replica takes the Lease
	// once it expires.
	cutOff.Store(holder.identity)
	waitFor(t, "the cut-off holder notices it lost the Lease", 5*time.Second, func() bool { return !holder.Held() })
	waitFor(t, "the other replica takes the expired Lease", 5*time.Second, other.Held)
	cutOff.Store("")
	select {
	case <-done[holder.identity]:
		t.Fatal("Run of the replica that lost the Lease returned: it must contend again")
	case <-time.After(500 * time.Millisecond):
	}

	// The holder stops: it releases the Lease and the other takes it at once
	// (well before the lease duration would have expired).
	holder, other, stopHolder := a, b, stopA
	if b.Held() {
		holder, other, stopHolder = b, a, stopB
	}
	stopHolder()
	waitFor(t, "the holder lets go", 3*time.Second, func() bool { return !holder.Held() })
	waitFor(t, "the other replica takes over", 3*time.Second, other.Held)
	stopA()
	stopB()
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("Run returned %v, %v", errA, errB)
	}
}

// TestNewLeaseNeedsItsParts: the required parts are named.
func TestNewLeaseNeedsItsParts(t *testing.T) {
	for _, c := range []struct{ ns, name, id string }{{"", "l", "i"}, {"n", "", "i"}, {"n", "l", ""}} {
		if _, err := NewLease(fake.NewClientset(), c.ns, c.name, c.id, nil); err == nil {
			t.Errorf("NewLease(%q, %q, %q) = nil error", c.ns, c.name, c.id)
		}
	}
}
