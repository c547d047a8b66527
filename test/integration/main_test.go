//go:build integration

// Package integration runs kvinject on a real kube-apiserver and etcd with the
// project's own MutatingWebhookConfiguration, the real webhook binary, the real
// agent binary and the Key Vault + Azure AD emulator. Run with `make test-integration`.
package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/testing/testenv"
)

// env is shared by every test in the package: starting a control plane costs seconds.
var env *testenv.Env

// webhookFlags must match the golden tests' baseFlags, so stored pods can be
// compared with the golden answers.
var webhookFlags = []string{
	"--agent-image=ghcr.io/kvinject/agent:v0.1.0",
	"--managed-identity-client-id=5e8c2a1f-3b4d-4c6e-9f0a-1b2c3d4e5f60",
}

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	var err error
	env, err = testenv.Start(ctx, testenv.Options{WebhookArgs: webhookFlags, Log: os.Stderr})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: starting the environment:", err)
		os.Exit(1)
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- webhook log ---\n%s\n", env.WebhookLog())
	}
	env.Stop()
	os.Exit(code)
}
