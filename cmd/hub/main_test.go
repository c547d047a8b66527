package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// TestCommandLine checks that mistakes on the command line are bad usage
// (exit code 2) with a message naming the flag and the fix.
func TestCommandLine(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "-no-such-flag"},
		{[]string{"serve"}, `unexpected argument "serve"`},
		{[]string{"--identity=azure"}, `--identity "azure": use workload, managed or system`},
		{[]string{"--read-budget=1000"}, "--read-budget 1000: use a number of reads per second above 0 and at most 400"},
		{[]string{"--replicas=0"}, "--replicas 0: use the Deployment's replica count"},
		{[]string{"--max-wait=0s"}, "--max-wait 0s: use a duration from 1s to 1h"},
		{[]string{"--bind-address=8443"}, `--bind-address "8443": not host:port`},
		{[]string{"--log-level=verbose"}, `--log-level "verbose": use debug, info, warn or error`},
		{[]string{"--sweep-interval=10ms", "--max-versions=0"}, "--sweep-interval 10ms"},
		{[]string{"--sweep-interval=10ms", "--max-versions=0"}, "--max-versions 0"},
		{[]string{"--events-queue=https://kvevents.queue.core.windows.net/q01?sv=1"}, "(a SAS token?)"},
		{[]string{"--events-queue=https://kvevents.queue.core.windows.net/q01"}, "--events-queue needs the namespace of the events Lease: set --events-lease-namespace, or POD_NAMESPACE"},
	}
	t.Setenv("POD_NAMESPACE", "")
	for _, tc := range tests {
		err := run(tc.args, io.Discard, io.Discard)
		if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v (exit code %d), want a usage error containing %q", tc.args, err, exitCode(err), tc.want)
		}
	}
	if err := run([]string{"--help"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v, want flag.ErrHelp", err)
	}
}

// TestVersion checks --version.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"--version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if out.String() != version.Version+"\n" {
		t.Errorf("--version printed %q", out.String())
	}
}

// TestStartFailures checks that a start without what the hub needs fails
// (exit code 1) saying what to fix, before serving anything.
func TestStartFailures(t *testing.T) {
	t.Setenv(agentconfig.EnvClientID, "")
	t.Setenv(agentconfig.EnvTenantID, "")
	t.Setenv(agentconfig.EnvTokenFile, "")
	err := run([]string{"--identity=workload"}, io.Discard, io.Discard)
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "--identity=workload needs AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE") {
		t.Errorf("workload identity without its environment: %v", err)
	}
	dir := t.TempDir()
	err = run([]string{"--identity=system", "--cert-dir=" + dir, "--kubeconfig=" + filepath.Join(dir, "none")}, io.Discard, io.Discard)
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "--cert-dir "+dir) {
		t.Errorf("no certificate: %v", err)
	}
}

func TestCheckIdentityEnv(t *testing.T) {
	full := agent.Env{ClientID: "c", TenantID: "t", TokenFile: "/f"}
	tests := []struct {
		kind agentconfig.IdentityKind
		env  agent.Env
		want string
	}{
		{agentconfig.IdentityWorkload, full, ""},
		{agentconfig.IdentityWorkload, agent.Env{ClientID: "c"}, "needs AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE in the hub's environment: label the hub's pod azure.workload.identity/use=true"},
		{agentconfig.IdentityManaged, agent.Env{}, "needs AZURE_CLIENT_ID"},
		{agentconfig.IdentityManaged, agent.Env{ClientID: "c"}, ""},
		{agentconfig.IdentitySystem, agent.Env{}, ""},
	}
	for _, tc := range tests {
		err := checkIdentityEnv(tc.kind, tc.env)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %+v: %v, want %q", tc.kind, tc.env, err, tc.want)
		}
	}
}
