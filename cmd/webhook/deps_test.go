package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestNoTestOnlyDependencies keeps the shipped binaries free of the test-only
// packages under internal/testing (the Key Vault emulator and the envtest
// runner): they must never reach a cluster.
func TestNoTestOnlyDependencies(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list the dependencies with")
	}
	for _, bin := range []string{"cmd/webhook", "cmd/agent"} {
		pkg := "github.com/kvinject/kvinject/" + bin
		out, err := exec.Command("go", "list", "-deps", "-test=false", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, pkg) {
			t.Fatalf("go list -deps %s does not list the package itself: the check is not looking at it", pkg)
		}
		for _, p := range deps {
			if strings.HasPrefix(p, "github.com/kvinject/kvinject/internal/testing/") {
				t.Errorf("%s depends on the test-only package %s", bin, p)
			}
		}
	}
}
