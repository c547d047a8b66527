package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestNoKubernetesDependencies keeps the agent free of Kubernetes: it never
// talks to the API, and the webhook-to-agent contract it shares with the
// webhook is package agentconfig, which has no Kubernetes in it. A k8s.io or
// sigs.k8s.io package in the agent's dependency graph means some import
// reached pkg/mapping, pkg/mutate or another Kubernetes-facing package again.
func TestNoKubernetesDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list the dependencies with")
	}
	out, err := exec.Command("go", "list", "-deps", "-test=false", "github.com/kvinject/kvinject/cmd/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	var bad []string
	for _, p := range deps {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/") {
			bad = append(bad, p)
		}
		// The hub's Storage queue client (Key Vault events) is built with
		// agent.NewAzure in cmd/hub; the agent reads Key Vault only.
		if strings.HasPrefix(p, "github.com/Azure/azure-sdk-for-go/sdk/storage/") {
			t.Errorf("cmd/agent depends on the Storage SDK package %s: build Storage clients outside internal/agent (see agent.NewAzure)", p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("cmd/agent depends on %d Kubernetes packages (see go mod why -m or go list -deps):\n  %s", len(bad), strings.Join(bad, "\n  "))
	}
	// The check must see the agent's real graph, not an empty one.
	for _, want := range []string{"github.com/kvinject/kvinject/internal/agent", "github.com/kvinject/kvinject/pkg/agentconfig"} {
		if !slices.Contains(deps, want) {
			t.Errorf("go list -deps does not list %s: the check is not looking at the agent", want)
		}
	}
}
