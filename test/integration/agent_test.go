//go:build integration

package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// secretValues are every value the tests store, so that output can be scanned for them.
var secretValues []string

func setSecret(t *testing.T, vault, name, value string) string {
	t.Helper()
	secretValues = append(secretValues, value)
	return env.Emulator.SetSecret(vault, name, value)
}

// noSecretIn fails if any stored secret value appears in s.
func noSecretIn(t *testing.T, what, s string) {
	t.Helper()
	for _, v := range secretValues {
		if strings.Contains(s, v) {
			t.Errorf("%s contains a secret value", what)
		}
	}
}

// workloadNamespace creates a namespace whose ServiceAccount "app" is federated with
// a workload identity, and a vault with the given grants for that identity.
func workloadNamespace(t *testing.T, vault, clientID string, perms ...emulator.Permission) string {
	t.Helper()
	tenant := env.Emulator.TenantID()
	ns := newNamespace(t, nil, map[string]map[string]string{"app": {
		mapping.AnnotationWIClientID: clientID, mapping.AnnotationWITenantID: tenant,
	}})
	if err := env.Emulator.AddVault(vault, emulator.VaultOptions{TenantID: tenant}); err != nil {
		t.Fatal(err)
	}
	if len(perms) > 0 {
		if err := env.Emulator.Grant(vault, clientID, perms...); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.RegisterWorkloadIdentity(clientID, tenant, ns, "app"); err != nil {
		t.Fatal(err)
	}
	return ns
}

func waitForFile(t *testing.T, a *testenv.Agent, file, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(a.Dir, file)); err == nil && string(b) == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, err := os.ReadFile(filepath.Join(a.Dir, file))
	t.Fatalf("%s did not get the expected value within %s (has %d bytes, err %v); agent output:\n%s", file, within, len(b), err, a.Output())
}

// TestAgentSidecarFromStoredPod runs the native-sidecar agent of a stored pod with
// workload identity: the files appear with the right names, modes and contents, a
// secret rotated in Key Vault reaches them, and SIGTERM stops the agent cleanly.
func TestAgentSidecarFromStoredPod(t *testing.T) {
	const clientID, vault = "a1b2c3d4-0000-4000-8000-000000000001", "sidecar-vault"
	ns := workloadNamespace(t, vault, clientID, emulator.PermGet)
	setSecret(t, vault, "DATABASE-CONNECTION-STRING", "Server=tcp:db;Password=integration-7f1c")
	setSecret(t, vault, "API-KEY", "integration-api-key-1")
	pinned := setSecret(t, vault, "DB-PASSWORD", "integration-db-password-old")
	setSecret(t, vault, "DB-PASSWORD", "integration-db-password-new")

	pod := appPod(ns, "orders", map[string]string{
		mapping.AnnotationVault:    vault,
		mapping.AnnotationSecrets:  "connectionstring.txt=DATABASE-CONNECTION-STRING, apikey.txt=API-KEY, db/password=DB-PASSWORD@" + pinned,
		mapping.AnnotationRotation: "30s",
	})
	pod.Spec.ServiceAccountName = "app"
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: ptr(int64(2000))}
	mustCreate(t, pod)

	a, err := env.StartAgent(context.Background(), pod, mapping.AgentContainerName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	waitForFile(t, a, "apikey.txt", "integration-api-key-1", 20*time.Second)
	for file, want := range map[string]string{
		"connectionstring.txt": "Server=tcp:db;Password=integration-7f1c",
		"apikey.txt":           "integration-api-key-1",
		"db/password":          "integration-db-password-old",
	} {
		p := filepath.Join(a.Dir, file)
		b, err := os.ReadFile(p)
		if err != nil || string(b) != want {
			t.Errorf("%s: %d bytes, %v; want the stored value", file, len(b), err)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o440 {
			t.Fatalf("%s: mode %v, %v; want 0440 (the pod has an fsGroup)", file, fi.Mode().Perm(), err)
		}
		// Group-readable files reach the app only through the fsGroup.
		if os.Geteuid() == 0 {
			if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 2000 {
				t.Errorf("%s: group %d, want the fsGroup 2000", file, gid)
			}
		}
	}
	if st := env.Emulator.Stats(); st.TokenRequests < 1 {
		t.Errorf("the agent did not sign in through the token endpoint: %+v", st)
	}

	// The startup probe the kubelet runs passes now, and failed on an empty volume.
	if err := env.RunProbe(pod, mapping.AgentContainerName, a.Dir); err != nil {
		t.Errorf("startup probe after the first set: %v", err)
	}
	if err := env.RunProbe(pod, mapping.AgentContainerName, t.TempDir()); err == nil {
		t.Error("startup probe passed on an empty volume")
	}

	setSecret(t, vault, "API-KEY", "integration-api-key-2")
	waitForFile(t, a, "apikey.txt", "integration-api-key-2", 45*time.Second)
	if b, _ := os.ReadFile(filepath.Join(a.Dir, "db/password")); string(b) != "integration-db-password-old" {
		t.Error("a pinned version changed on rotation")
	}

	if err := a.Stop(); err != nil {
		t.Errorf("after SIGTERM the agent exited with %v, want 0", err)
	}
	noSecretIn(t, "the agent's output", a.Output())
}

// TestAgentInitWithManagedIdentity runs an init-container agent (rotation off) with a
// user-assigned managed identity: it writes the set and exits 0.
func TestAgentInitWithManagedIdentity(t *testing.T) {
	const clientID, vault = "a1b2c3d4-0000-4000-8000-000000000002", "init-vault"
	ns := newNamespace(t, nil, nil)
	if err := env.Emulator.AddManagedIdentity(clientID); err != nil {
		t.Fatal(err)
	}
	if err := env.Emulator.AddVault(vault, emulator.VaultOptions{TenantID: env.Emulator.TenantID()}); err != nil {
		t.Fatal(err)
	}
	if err := env.Emulator.Grant(vault, clientID, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	setSecret(t, vault, "REPORT-TOKEN", "integration-report-token")
	pod := appPod(ns, "report", map[string]string{
		mapping.AnnotationVault:    vault,
		mapping.AnnotationSecrets:  "token=REPORT-TOKEN",
		mapping.AnnotationRotation: "off",
		mapping.AnnotationIdentity: "managed:" + clientID,
	})
	mustCreate(t, pod)
	a, err := env.StartAgent(context.Background(), pod, mapping.AgentContainerName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	if err := a.Wait(30 * time.Second); err != nil {
		t.Fatalf("init agent: %v\n%s", err, a.Output())
	}
	b, err := os.ReadFile(filepath.Join(a.Dir, "token"))
	if err != nil || string(b) != "integration-report-token" {
		t.Errorf("token: %d bytes, %v", len(b), err)
	}
	if fi, err := os.Stat(filepath.Join(a.Dir, "token")); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("token mode %v, %v; want 0444 (no fsGroup)", fi.Mode().Perm(), err)
	}
	noSecretIn(t, "the agent's output", a.Output())
}

// TestAgentFailureExplainsItself: an identity without access fails the init agent
// with a termination message that names the secret, the vault, the status and the fix.
func TestAgentFailureExplainsItself(t *testing.T) {
	const clientID, vault = "a1b2c3d4-0000-4000-8000-000000000003", "denied-vault"
	ns := workloadNamespace(t, vault, clientID) // no grant
	setSecret(t, vault, "API-KEY", "integration-never-read")
	pod := appPod(ns, "denied", map[string]string{
		mapping.AnnotationVault:    vault,
		mapping.AnnotationSecrets:  "apikey.txt=API-KEY",
		mapping.AnnotationRotation: "off",
	})
	pod.Spec.ServiceAccountName = "app"
	mustCreate(t, pod)
	a, err := env.StartAgent(context.Background(), pod, mapping.AgentContainerName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	if err := a.Wait(60 * time.Second); err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Fatalf("agent exit: %v, want exit status 1", err)
	}
	msg := a.TerminationMessage()
	for _, want := range []string{`"API-KEY"`, vault, "403", "AccessDenied", clientID, "Key Vault Secrets User"} {
		if !strings.Contains(msg, want) {
			t.Errorf("termination message lacks %q:\n%s", want, msg)
		}
	}
	if len(msg) > 4096 {
		t.Errorf("termination message is %d bytes; the kubelet keeps 4096", len(msg))
	}
	if _, err := os.Stat(filepath.Join(a.Dir, "apikey.txt")); !os.IsNotExist(err) {
		t.Errorf("a file was written despite the failure: %v", err)
	}
	noSecretIn(t, "the termination message", msg)
	noSecretIn(t, "the agent's output", a.Output())
}

func ptr[T any](v T) *T { return &v }
