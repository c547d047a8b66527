//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kvinject/kvinject/internal/hub/events"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// TestKeyVaultEventsThroughTheHub runs two real hub processes with Key Vault
// events (--events-queue, the unmodified SDK queue client) against the
// emulator's Storage queue, with a sweep of an hour, so that only an event can
// bring a new version in time. Agents watch both replicas; Event Grid's
// delivery repeats every event. A rotated secret reaches every agent within
// seconds, each agent reads it once, every replica heard the event (each peeks
// the queue), only the Lease holder deleted the message, the queue ends empty,
// and the hub's identity read no value.
func TestKeyVaultEventsThroughTheHub(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e, err := testenv.Start(ctx, testenv.Options{
		WebhookArgs: webhookFlags, BinDir: env.BinDir, Log: testWriter{t},
		Hub: true, HubEvents: true, HubReplicas: 2, HubSweepInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i := range e.HubReplicas() {
				t.Logf("--- hub replica %d log ---\n%s", i, e.HubReplicaLog(i))
			}
		}
		e.Stop()
	})

	const vault, clientID, ns = "events-vault", "e7e7e7e7-0000-4000-8000-000000000017", "events"
	tenant := e.Emulator.TenantID()
	if err := e.Emulator.AddVault(vault, emulator.VaultOptions{TenantID: tenant}); err != nil {
		t.Fatal(err)
	}
	v1 := e.Emulator.SetSecret(vault, "API-KEY", "events-api-key-1")
	if err := e.Emulator.Grant(vault, clientID, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	if err := e.GrantHub(vault); err != nil {
		t.Fatal(err)
	}
	// Every event is delivered twice, as Event Grid may.
	if err := e.Emulator.SubscribeEvents(vault, testenv.EventsAccount, testenv.EventsQueue, emulator.EventOptions{Faults: emulator.EventFaults{DuplicateRate: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := e.RegisterWorkloadIdentity(clientID, tenant, ns, "app"); err != nil {
		t.Fatal(err)
	}
	if err := e.EnsureNamespace(ctx, ns, nil, nil, map[string]map[string]string{
		"default": nil, "app": {mapping.AnnotationWIClientID: clientID, mapping.AnnotationWITenantID: tenant},
	}); err != nil {
		t.Fatal(err)
	}

	// Agents until both replicas hold watches (the kernel spreads the
	// connections; at most 8).
	var agents []*testenv.Agent
	watchers := func() [2]float64 {
		var w [2]float64
		for i := range 2 {
			text, err := e.HubReplicaMetrics(i)
			if err == nil {
				w[i] = testenv.MetricSum(text, "kvinject_hub_held_requests")
			}
		}
		return w
	}
	for n := 0; n < 8; n++ {
		pod := appPod(ns, fmt.Sprintf("orders-%d", n), map[string]string{
			mapping.AnnotationVault:    vault,
			mapping.AnnotationSecrets:  "apikey.txt=API-KEY",
			mapping.AnnotationRotation: "1h",
		})
		pod.Spec.ServiceAccountName = "app"
		pod.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: ptr(int64(2000))}
		if err := e.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		a, err := e.StartAgent(ctx, pod, mapping.AgentContainerName)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = a.Stop() })
		agents = append(agents, a)
		eventually(t, "agent "+pod.Name+" holds a watch", 20*time.Second, func() bool {
			w := watchers()
			return int(w[0]+w[1]) == len(agents)
		}, a.Output)
		if w := watchers(); w[0] > 0 && w[1] > 0 && len(agents) >= 2 {
			break
		}
	}
	if w := watchers(); w[0] == 0 || w[1] == 0 {
		t.Fatalf("after %d agents the watches are %v across the replicas; the test needs both", len(agents), w)
	}
	for _, a := range agents {
		waitForFile(t, a, "apikey.txt", "events-api-key-1", 5*time.Second)
	}
	readsBefore := e.Emulator.ValueReads(clientID)

	v2 := e.Emulator.SetSecret(vault, "API-KEY", "events-api-key-2")
	rotated := time.Now()
	for _, a := range agents {
		waitForFile(t, a, "apikey.txt", "events-api-key-2", 15*time.Second)
	}
	took := time.Since(rotated)
	t.Logf("the new version %s (was %s) reached %d agents on 2 replicas %s after its creation, with a sweep of 1h", v2, v1, len(agents), took.Round(time.Millisecond))
	if reads := e.Emulator.ValueReads(clientID) - readsBefore; reads != int64(len(agents)) {
		t.Errorf("the agents read %d values for one change seen by %d agents, with every event delivered twice; want one each", reads, len(agents))
	}
	for i, a := range agents {
		if !strings.Contains(a.Output(), `"trigger":"hub"`) {
			t.Errorf("agent %d: the new set was not triggered by the hub:\n%s", i, a.Output())
		}
	}

	// Every replica read the event (each peeks); only the Lease holder
	// deletes, and the queue ends empty after --events-delete-after.
	eventually(t, "the queue is emptied", 30*time.Second, func() bool {
		st, err := e.Emulator.QueueStats(testenv.EventsAccount, testenv.EventsQueue)
		return err == nil && st.Messages == 0
	}, func() string { return "" })
	deleters := 0
	for i := range 2 {
		text, err := e.HubReplicaMetrics(i)
		if err != nil {
			t.Fatal(err)
		}
		heard := testenv.MetricSum(text, "kvinject_hub_events_total", `result="listed"`) + testenv.MetricSum(text, "kvinject_hub_events_total", `result="known"`)
		if heard < 1 {
			t.Errorf("replica %d did not act on the event (listed or known: %v)", i, heard)
		}
		if testenv.MetricSum(text, "kvinject_hub_event_messages_total", `result="deleted"`) > 0 {
			deleters++
		}
		if r := testenv.MetricSum(text, "kvinject_hub_event_queue_readable"); r != 1 {
			t.Errorf("replica %d: kvinject_hub_event_queue_readable = %v, want 1", i, r)
		}
	}
	if deleters != 1 {
		t.Errorf("%d replicas deleted messages; want only the Lease holder", deleters)
	}
	kube, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		t.Fatal(err)
	}
	lease, err := kube.CoordinationV1().Leases(testenv.HubNamespace).Get(ctx, events.DefaultLeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the events Lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Error("the events Lease has no holder")
	}
	if n := e.Emulator.ValueReads(testenv.HubClientID); n != 0 {
		t.Errorf("the hub's identity read %d values; it may only list", n)
	}
	for i := range 2 {
		for _, v := range []string{"events-api-key-1", "events-api-key-2"} {
			if strings.Contains(e.HubReplicaLog(i), v) {
				t.Errorf("hub replica %d's log holds a secret value", i)
			}
		}
	}
}

// eventually polls cond until it holds, or fails with what and more().
func eventually(t *testing.T, what string, within time.Duration, cond func() bool, more func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s\n%s", what, within, more())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testWriter sends the environment's progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
