package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestNoTestOnlyDependencies keeps the hub free of the test-only packages
// under internal/testing (the Key Vault emulator, the envtest runner): they
// must never reach a cluster.
func TestNoTestOnlyDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list the dependencies with")
	}
	const pkg = "github.com/kvinject/kvinject/cmd/hub"
	out, err := exec.Command("go", "list", "-deps", "-test=false", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	deps := strings.Fields(string(out))
	// The check must see the hub's real graph, not an empty one.
	for _, want := range []string{pkg, "github.com/kvinject/kvinject/internal/hub", "github.com/kvinject/kvinject/internal/hub/vaults"} {
		if !slices.Contains(deps, want) {
			t.Fatalf("go list -deps does not list %s: the check is not looking at the hub", want)
		}
	}
	for _, p := range deps {
		if strings.HasPrefix(p, "github.com/kvinject/kvinject/internal/testing/") {
			t.Errorf("cmd/hub depends on the test-only package %s", p)
		}
	}
}
