package main

import (
	"path/filepath"
	"testing"
)

// TestRunRefusesArguments checks that the server does not start when arguments
// are left after the flags, such as a subcommand given after a flag.
func TestRunRefusesArguments(t *testing.T) {
	// A kubeconfig that does not exist: were the arguments ignored, run would
	// fail on it (or start a server) instead of refusing the command line.
	kubeconfig := "--kubeconfig=" + filepath.Join(t.TempDir(), "none")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agent-image=x", kubeconfig, "inject", "-f", "d.yaml"}, `unexpected argument "inject" (subcommands such as inject come first)`},
		{[]string{kubeconfig, "--agent-image=x", "serve"}, `unexpected argument "serve" (subcommands such as inject come first)`},
	} {
		err := run(tc.args)
		if err == nil || err.Error() != tc.want {
			t.Errorf("run(%q) = %v, want %s", tc.args, err, tc.want)
			continue
		}
		if code := exitCode(err); code != 2 {
			t.Errorf("run(%q): exit code %d, want 2", tc.args, code)
		}
	}
}

// TestExitCode checks that only command-line mistakes exit with 2.
func TestExitCode(t *testing.T) {
	err := run([]string{"--agent-image=x", "--kubeconfig=" + filepath.Join(t.TempDir(), "none")})
	if err == nil {
		t.Fatal("run with a missing kubeconfig succeeded")
	}
	if code := exitCode(err); code != 1 {
		t.Errorf("%v: exit code %d, want 1", err, code)
	}
}
