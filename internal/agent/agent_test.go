package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// TestSuccess fetches secrets by name and by version with workload identity
// and a user-assigned managed identity. (MSAL caches managed-identity tokens
// per process, the system-assigned one under a fixed key, so the
// system-assigned identity runs in its own process: TestBinarySystemIdentity.)
func TestSuccess(t *testing.T) {
	for _, kind := range []agentconfig.IdentityKind{agentconfig.IdentityWorkload, agentconfig.IdentityManaged} {
		t.Run(string(kind), func(t *testing.T) {
			h := newHarness(t, emulator.Options{})
			var id string
			switch kind {
			case agentconfig.IdentityWorkload:
				id, _ = h.workload()
			case agentconfig.IdentityManaged:
				id = h.managed()
			}
			if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
				t.Fatal(err)
			}
			conn, _ := h.setSecret("DATABASE-CONNECTION-STRING")
			oldKey, oldVersion := h.setSecret("API-KEY")
			h.setSecret("API-KEY") // a newer version that the pinned entry must not get
			pw, _ := h.setSecret("db-password")
			cfg := h.config(agentconfig.ModeInit, kind,
				agentconfig.Entry{File: "connectionstring.txt", Name: "DATABASE-CONNECTION-STRING"},
				agentconfig.Entry{File: "apikey.txt", Name: "API-KEY", Version: oldVersion},
				agentconfig.Entry{File: "db/password", Name: "db-password"},
				// Names are case-insensitive: the same secret again is read once.
				agentconfig.Entry{File: "db/password-again", Name: "DB-PASSWORD"},
			)
			if err := h.run(context.Background(), cfg, h.options()); err != nil {
				t.Fatalf("Run: %v\nlogs:\n%s", err, h.logs)
			}
			got := map[string]string{}
			for _, f := range []string{"connectionstring.txt", "apikey.txt", "db/password", "db/password-again"} {
				got[f] = h.read(f)
				fi, err := os.Stat(filepath.Join(h.dir, f))
				if err != nil || fi.Mode().Perm() != 0o440 {
					t.Errorf("%s: mode %v, %v; want 0440", f, fi.Mode(), err)
				}
			}
			want := map[string]string{"connectionstring.txt": conn, "apikey.txt": oldKey, "db/password": pw, "db/password-again": pw}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			if err := atomicdir.Check(h.dir); err != nil {
				t.Errorf("probe: %v", err)
			}
			if got, want := h.termination(), "kvinject-agent: wrote 4 file(s) from vault "+h.vaultURL(); got != want {
				t.Errorf("termination log %q, want %q", got, want)
			}
			st := h.emu.Stats()
			if st.TokenRequests != 1 || st.Challenges != 1 || st.Gets != 3 {
				t.Errorf("token requests %d, challenges %d, gets %d; want 1, 1, 3", st.TokenRequests, st.Challenges, st.Gets)
			}
		})
	}
}

// errorCase is a permanent failure and the exact termination message it
// produces. In want, {vault}, {client}, {tenant}, {other}, {oid} and {version}
// are replaced by the case's values.
type errorCase struct {
	name  string
	kind  agentconfig.IdentityKind
	setup func(h *harness, id string) (entry agentconfig.Entry, repl map[string]string)
	want  string
}

func TestPermanentErrors(t *testing.T) {
	grant := func(h *harness, id string) {
		if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
			h.t.Fatal(err)
		}
	}
	entry := agentconfig.Entry{File: "apikey.txt", Name: "API-KEY"}
	cases := []errorCase{
		{
			name: "access policy", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				h.setSecret("API-KEY")
				return entry, nil
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity {client} may not get its secrets. Fix: grant the identity {client} 'get' on secrets with an access policy (az keyvault set-policy --name {vault} --spn {client} --secret-permissions get), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee {client} --scope $(az keyvault show --name {vault} --query id --output tsv))`,
		},
		{
			name: "rbac", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				if err := h.emu.AddVault(h.vault, emulator.VaultOptions{RBAC: true}); err != nil {
					h.t.Fatal(err)
				}
				h.setSecret("API-KEY")
				return entry, nil
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByRbac): the vault uses Azure RBAC and workload identity {client} has no role assignment that allows reading secrets (Microsoft.KeyVault/vaults/secrets/getSecret/action). Fix: assign the identity {client} the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee {client} --scope /subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-emulator/providers/microsoft.keyvault/vaults/{vault}); new role assignments take a few minutes to apply`,
		},
		{
			name: "firewall", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				grant(h, id)
				h.setSecret("API-KEY")
				if err := h.emu.SetFirewall(h.vault, true); err != nil {
					h.t.Fatal(err)
				}
				return entry, nil
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByFirewall): the vault's firewall does not admit the pod's address (127.0.0.1). Fix: allow the cluster's egress IP or the nodes' subnet in the vault's network rules (az keyvault network-rule add --name {vault} --ip-address 127.0.0.1, or --subnet <subnet resource id>), or reach the vault through a private endpoint`,
		},
		{
			name: "disabled", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				grant(h, id)
				h.setSecret("API-KEY")
				if err := h.emu.DisableSecret(h.vault, "API-KEY"); err != nil {
					h.t.Fatal(err)
				}
				return entry, nil
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): the secret's current version is disabled. Fix: enable it (az keyvault secret list-versions --vault-name {vault} --name API-KEY shows it; az keyvault secret set-attributes --vault-name {vault} --name API-KEY --version <version> --enabled true), set a new value, or pin an enabled version in kvinject.dev/secrets (<file>=API-KEY@<version>)`,
		},
		{
			name: "disabled pinned version", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				grant(h, id)
				_, v := h.setSecret("API-KEY")
				if err := h.emu.DisableSecret(h.vault, "API-KEY"); err != nil {
					h.t.Fatal(err)
				}
				h.setSecret("API-KEY")
				return agentconfig.Entry{File: "apikey.txt", Name: "API-KEY", Version: v}, map[string]string{"{version}": v}
			},
			want: `kvinject-agent: cannot read secret "API-KEY" version {version} from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): version {version} of the secret is disabled. Fix: enable it (az keyvault secret set-attributes --vault-name {vault} --name API-KEY --version {version} --enabled true), or pin another version in kvinject.dev/secrets`,
		},
		{
			name: "not found", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				grant(h, id)
				h.setSecret("OTHER")
				return entry, nil
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no secret named "API-KEY" (or it was deleted). Fix: check the name in kvinject.dev/secrets; list the vault's secrets with az keyvault secret list --vault-name {vault} --query "[].name"`,
		},
		{
			name: "version not found", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				grant(h, id)
				h.setSecret("API-KEY")
				return agentconfig.Entry{File: "apikey.txt", Name: "API-KEY", Version: "00000000000000000000000000000000"}, nil
			},
			want: `kvinject-agent: cannot read secret "API-KEY" version 00000000000000000000000000000000 from vault {vault}: HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no version 00000000000000000000000000000000 of secret "API-KEY". Fix: check the name and version in kvinject.dev/secrets; list the versions with az keyvault secret list-versions --vault-name {vault} --name API-KEY`,
		},
		{
			name: "vault in another tenant (workload)", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				other := newClientID()
				if err := h.emu.AddVault(h.vault, emulator.VaultOptions{TenantID: other}); err != nil {
					h.t.Fatal(err)
				}
				grant(h, id)
				h.setSecret("API-KEY")
				return entry, map[string]string{"{other}": other}
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: the vault belongs to tenant {other} (its 401 challenge says so), but workload identity {client} signs in to tenant {tenant} (AZURE_TENANT_ID). Fix: use a vault of tenant {tenant}, or an identity of tenant {other} with that tenant in the ServiceAccount's azure.workload.identity/tenant-id (or kvinject.dev/tenant-id)`,
		},
		{
			name: "vault in another tenant (managed)", kind: agentconfig.IdentityManaged,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				other := newClientID()
				if err := h.emu.AddVault(h.vault, emulator.VaultOptions{TenantID: other}); err != nil {
					h.t.Fatal(err)
				}
				grant(h, id)
				h.setSecret("API-KEY")
				return entry, map[string]string{"{other}": other}
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: HTTP 401 Unauthorized, Key Vault error Unauthorized: Key Vault rejected the access token (AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{other}/. Found: https://sts.windows.net/{tenant}/.); the vault belongs to tenant {other} but the identity's token is from tenant {tenant}. Fix: use a vault of tenant {tenant}, or an identity of tenant {other} (a managed identity gets tokens from its home tenant only)`,
		},
		{
			name: "no matching federated credential", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				// The identity trusts another ServiceAccount only.
				h.env[agentconfig.EnvClientID] = newClientID()
				if err := h.emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: h.env[agentconfig.EnvClientID], Issuer: testIssuer,
					Subject: "system:serviceaccount:" + testNamespace + ":other"}); err != nil {
					h.t.Fatal(err)
				}
				h.setSecret("API-KEY")
				return entry, map[string]string{"{client}": h.env[agentconfig.EnvClientID]}
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: Azure AD refused the token request of workload identity {client} (HTTP 401 Unauthorized invalid_client, AADSTS70021): no federated identity credential of the identity matches the pod's service account token (issuer ` + testIssuer + `, subject ` + testSubject + `, audience api://AzureADTokenExchange). Fix: create a federated credential with issuer ` + testIssuer + ` and subject ` + testSubject + ` on the identity {client} (az identity federated-credential create --name kvinject-shop-checkout --identity-name <identity name> --resource-group <resource group> --issuer ` + testIssuer + ` --subject ` + testSubject + ` --audiences api://AzureADTokenExchange)`,
		},
		{
			name: "unknown client id", kind: agentconfig.IdentityWorkload,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				h.env[agentconfig.EnvClientID] = newClientID()
				h.setSecret("API-KEY")
				return entry, map[string]string{"{client}": h.env[agentconfig.EnvClientID]}
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: Azure AD refused the token request of workload identity {client} (HTTP 400 Bad Request unauthorized_client, AADSTS700016): Azure AD knows no application with client ID {client} in tenant {tenant}. Fix: check the client ID (the ServiceAccount's azure.workload.identity/client-id) and the tenant ID (azure.workload.identity/tenant-id or kvinject.dev/tenant-id); az identity show --name <identity name> --resource-group <resource group> --query "{clientId:clientId,tenantId:tenantId}" shows both`,
		},
		{
			name: "managed identity not on the node", kind: agentconfig.IdentityManaged,
			setup: func(h *harness, id string) (agentconfig.Entry, map[string]string) {
				h.env[agentconfig.EnvClientID] = newClientID()
				h.setSecret("API-KEY")
				return entry, map[string]string{"{client}": h.env[agentconfig.EnvClientID]}
			},
			want: `kvinject-agent: cannot read secret "API-KEY" from vault {vault}: the managed-identity endpoint answered HTTP 400 Bad Request (Unable to load the proper Managed Identity.): managed identity {client} is not assigned to this node. Fix: assign the identity to the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set> --identities <resource id of the identity with client ID {client}>), or use workload identity`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, emulator.Options{})
			var id string
			if tc.kind == agentconfig.IdentityWorkload {
				id, _ = h.workload()
			} else {
				id = h.managed()
			}
			e, repl := tc.setup(h, id)
			want := tc.want
			for k, v := range map[string]string{"{vault}": h.vault, "{client}": id, "{tenant}": h.emu.TenantID()} {
				if _, ok := repl[k]; !ok {
					want = strings.ReplaceAll(want, k, v)
				}
			}
			for k, v := range repl {
				want = strings.ReplaceAll(want, k, v)
			}
			for _, mode := range []string{agentconfig.ModeInit, agentconfig.ModeSidecar} {
				opts := h.options()
				opts.InitTimeout = 20 * time.Second // permanent errors must not wait for it
				start := time.Now()
				err := h.run(context.Background(), h.config(mode, tc.kind, e), opts)
				elapsed := time.Since(start)
				var f *agent.Failure
				if !errors.As(err, &f) {
					t.Fatalf("%s: Run returned %v, want a *agent.Failure", mode, err)
				}
				if diff := cmp.Diff(want, f.Message); diff != "" {
					t.Errorf("%s: message (-want +got):\n%s\ngot: %s", mode, diff, f.Message)
				}
				if got := h.termination(); got != f.Message {
					t.Errorf("%s: termination log %q differs from the message", mode, got)
				}
				if strings.Contains(h.logs.String(), "retrying") {
					t.Errorf("%s: a permanent error was retried (%s)", mode, elapsed)
				}
				if _, err := os.Lstat(filepath.Join(h.dir, e.File)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s: %s exists after a failure", mode, e.File)
				}
				_ = os.Remove(h.termLog)
			}
		})
	}
}

// TestTransientThenRecovered: throttling, server errors, dropped connections
// and an unavailable token endpoint before the first set are retried.
func TestTransientThenRecovered(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault emulator.Fault
		log   string // expected in the retry log
	}{
		{"throttled with Retry-After", emulator.Fault{Kind: emulator.FaultThrottle, RetryAfterSeconds: 1, Count: 1, Match: emulator.OpGet}, `"retryAfter":"1s"`},
		{"500", emulator.Fault{Kind: emulator.FaultStatus, Status: 500, Count: 2, Match: emulator.OpGet}, `"status":500`},
		{"503", emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Count: 3, Match: emulator.OpGet}, `"code":"ServiceUnavailable"`},
		{"connection reset", emulator.Fault{Kind: emulator.FaultReset, Count: 2, Match: emulator.OpGet}, `"msg":"attempt failed, retrying"`},
		{"token endpoint unavailable", emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Count: 2, Match: emulator.OpToken}, `"msg":"attempt failed, retrying"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, emulator.Options{})
			id, _ := h.workload()
			if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
				t.Fatal(err)
			}
			v1, _ := h.setSecret("a")
			v2, _ := h.setSecret("b")
			if err := h.emu.InjectFault(tc.fault); err != nil {
				t.Fatal(err)
			}
			cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b"})
			if err := h.run(context.Background(), cfg, h.options()); err != nil {
				t.Fatalf("Run: %v\nlogs:\n%s", err, h.logs)
			}
			if h.read("a") != v1 || h.read("b") != v2 {
				t.Error("wrong values")
			}
			if !strings.Contains(h.logs.String(), tc.log) {
				t.Errorf("logs lack %s:\n%s", tc.log, h.logs)
			}
			if st := h.emu.Stats(); st.Faults != int64(tc.fault.Count) {
				t.Errorf("%d faults applied, want %d", st.Faults, tc.fault.Count)
			}
		})
	}
}

// TestInitGivesUp: a transient failure that lasts longer than --init-timeout
// fails init with an explanation and exit code 1.
func TestInitGivesUp(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	h.setSecret("a")
	_ = h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpGet})
	opts := h.options()
	opts.InitTimeout = 300 * time.Millisecond
	start := time.Now()
	err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"}), opts)
	// The ceiling only proves that --init-timeout, not the 2m default, bounded it.
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond || elapsed > 20*time.Second {
		t.Errorf("gave up after %s, want about 300ms", elapsed)
	}
	var ge *agent.GiveUpError
	if !errors.As(err, &ge) || ge.Attempts < 2 {
		t.Fatalf("Run: %v, want a GiveUpError after several attempts", err)
	}
	want := fmt.Sprintf(`kvinject-agent: cannot read secret "a" from vault %s, still failing after 0s (%d attempts): HTTP 503 Service Unavailable, Key Vault error ServiceUnavailable: Key Vault is unavailable. Fix: this is usually temporary; check https://azure.status.microsoft/ and the vault's region, and recreate the pod if it persists`, h.vault, ge.Attempts)
	if got := h.termination(); got != want {
		t.Errorf("termination log:\n got %s\nwant %s", got, want)
	}
}

// TestRotation: a changed secret is swapped in by the first poll that starts
// after the change, as a whole set; polls without changes do not rewrite the set.
func TestRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	a1, _ := h.setSecret("a")
	b1, _ := h.setSecret("b")
	pinned, pv := h.setSecret("p")
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload,
		agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "sub/b", Name: "b"}, agentconfig.Entry{File: "p", Name: "p", Version: pv})
	cfg.Rotation = 150 * time.Millisecond
	stop := h.runSidecar(cfg, h.options())
	h.waitFor("the first set", 5*time.Second, func() bool { return atomicdir.Check(h.dir) == nil })
	first := atomicdir.Current(h.dir)
	if h.read("a") != a1 || h.read("sub/b") != b1 || h.read("p") != pinned {
		t.Fatal("wrong first set")
	}
	// Several polls without a change keep the same set.
	h.waitFor("three polls without a change", 10*time.Second, func() bool { return len(h.polls(0)) >= 3 })
	if got := atomicdir.Current(h.dir); got != first {
		t.Errorf("an unchanged poll rewrote the set (%s -> %s)", first, got)
	}
	if n := strings.Count(h.logs.String(), logMsg(msgChanged)); n != 0 {
		t.Errorf("%d sets written without a change", n)
	}
	gets := h.emu.Stats().Gets

	a2 := "VALUE-a2-" + randHex(8)
	b2 := "VALUE-b2-" + randHex(8)
	h.setSecretValue("a", a2)
	h.setSecretValue("b", b2)
	h.setSecretValue("p", "VALUE-p-new-"+randHex(8)) // pinned: must not change
	mark := len(h.logs.String())
	h.waitFor("the new values", 10*time.Second, func() bool { return h.fileIs("a", a2) && h.fileIs("sub/b", b2) })
	// A poll that was under way at the change may have read the old values (or
	// one of them); the next one reads both new ones and writes them. So the
	// polls that ended after the change, up to the one that wrote both new
	// values, are at most two. The poll logs its change after the swap that
	// made the files visible: wait for that record.
	var (
		polls   []poll
		changed map[string]bool
		n       int
	)
	writtenBy := func() bool {
		polls, changed, n = h.polls(mark), map[string]bool{}, 0
		for _, p := range polls {
			n++
			for name := range p.changed {
				changed[name] = true
			}
			if changed["a"] && changed["b"] {
				return true
			}
		}
		return false
	}
	h.waitFor("the change in the logs", 5*time.Second, writtenBy)
	if !changed["a"] || !changed["b"] || n > 2 {
		t.Errorf("the change took %d polls to be written, want at most 2 (one under way, one after the change); polls: %+v", n, polls)
	}
	if h.read("p") != pinned {
		t.Error("the pinned file changed")
	}
	if err := stop(); err != nil {
		t.Fatalf("sidecar returned %v, want nil on shutdown", err)
	}
	if !strings.Contains(h.logs.String(), logMsg(msgChanged)) {
		t.Errorf("no change logged:\n%s", h.logs)
	}
	// Only the two latest-version secrets are polled.
	if st := h.emu.Stats(); (st.Gets-gets)%2 != 0 {
		t.Errorf("polls read %d secrets: not a multiple of the 2 polled secrets", st.Gets-gets)
	}
	t.Logf("change written by poll %d after it (interval %s)", n, cfg.Rotation)
}

// logMsg is how a log record with the message m begins in the JSON logs.
func logMsg(m string) string { return `"msg":"` + m + `"` }

// poll is the outcome of one successful poll, from the logs.
type poll struct {
	// changed holds the names of the objects whose change the poll wrote.
	changed map[string]bool
}

// polls returns the outcomes of the successful polls logged after the first
// from bytes of the logs, in order: "no change" (at debug level) or "secrets
// changed" with the objects it names.
func (h *harness) polls(from int) []poll {
	h.t.Helper()
	var out []poll
	for _, line := range strings.Split(h.logs.String()[from:], "\n") {
		switch {
		case strings.Contains(line, logMsg(msgNoChange)):
			out = append(out, poll{})
		case strings.Contains(line, logMsg(msgChanged)):
			var rec struct {
				Changed map[string]json.RawMessage `json:"changed"`
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				h.t.Fatalf("log record %s: %v", line, err)
			}
			p := poll{changed: map[string]bool{}}
			for name := range rec.Changed {
				p.changed[name] = true
			}
			out = append(out, p)
		}
	}
	return out
}

// TestFailingPollKeepsLastGoodSet: while Key Vault fails, the files stay; the
// change arrives once it recovers.
func TestFailingPollKeepsLastGoodSet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	a1, _ := h.setSecret("a")
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"})
	cfg.Rotation = 100 * time.Millisecond
	stop := h.runSidecar(cfg, h.options())
	h.waitFor("the first set", 5*time.Second, func() bool { return h.fileIs("a", a1) })

	_ = h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 500, Match: emulator.OpGet})
	a2 := "VALUE-a2-" + randHex(8)
	h.setSecretValue("a", a2)
	h.waitFor("a failed poll", 3*time.Second, func() bool {
		return strings.Count(h.logs.String(), `"msg":"poll failed; keeping the last good set"`) >= 3
	})
	if !h.fileIs("a", a1) {
		t.Fatal("a failed poll changed the file")
	}
	// Throttling with Retry-After is honoured.
	h.emu.ClearFaults()
	_ = h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultThrottle, RetryAfterSeconds: 1, Count: 1, Match: emulator.OpGet})
	h.waitFor("recovery", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	logs := h.logs.String()
	for _, want := range []string{`"status":500`, `"code":"InternalServerError"`, `"retryAfter":"1s"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

// TestGoneSecretKeepsLastValue: a secret disabled or deleted after the first
// set keeps its last value while the others still rotate.
func TestGoneSecretKeepsLastValue(t *testing.T) {
	for _, tc := range []struct {
		name    string
		remove  func(e *emulator.Emulator, vault, name string) error
		logCode string
	}{
		{"disabled", (*emulator.Emulator).DisableSecret, `"innerCode":"SecretDisabled"`},
		{"deleted", (*emulator.Emulator).DeleteSecret, `"code":"SecretNotFound"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, emulator.Options{})
			id, _ := h.workload()
			_ = h.emu.Grant(h.vault, id, emulator.PermGet)
			gone, _ := h.setSecret("gone")
			b1, _ := h.setSecret("b")
			cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, agentconfig.Entry{File: "gone", Name: "gone"}, agentconfig.Entry{File: "b", Name: "b"})
			cfg.Rotation = 100 * time.Millisecond
			stop := h.runSidecar(cfg, h.options())
			h.waitFor("the first set", 5*time.Second, func() bool { return h.fileIs("b", b1) })

			if err := tc.remove(h.emu, h.vault, "gone"); err != nil {
				t.Fatal(err)
			}
			b2 := "VALUE-b2-" + randHex(8)
			h.setSecretValue("b", b2)
			h.waitFor("b to rotate", 3*time.Second, func() bool { return h.fileIs("b", b2) })
			if !h.fileIs("gone", gone) {
				t.Error("the unavailable secret lost its last value")
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			logs := h.logs.String()
			for _, want := range []string{`"msg":"secret unavailable; keeping its last value"`, `"secret":"gone"`, `"vault":"` + h.vaultURL() + `"`, tc.logCode} {
				if !strings.Contains(logs, want) {
					t.Errorf("logs lack %s:\n%s", want, logs)
				}
			}
		})
	}
}

// TestTokenFileRotation: kubelet replaces the projected token; after Key
// Vault rejects the old access token, the agent gets a new one with the new
// service account token (the old one has expired by then).
func TestTokenFileRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, tok := h.workload()
	// The first service account token expires soon.
	tok.write(jwt(testIssuer, testSubject, emulator.DefaultAudience, time.Now().Add(1500*time.Millisecond)))
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	a1, _ := h.setSecret("a")
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"})
	cfg.Rotation = 100 * time.Millisecond
	stop := h.runSidecar(cfg, h.options())
	h.waitFor("the first set", 5*time.Second, func() bool { return h.fileIs("a", a1) })

	// kubelet rotates the token file; the old token expires; the access
	// token issued for it is revoked.
	tok.write(jwt(testIssuer, testSubject, emulator.DefaultAudience, time.Now().Add(time.Hour)))
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(2 * time.Second)))
	h.emu.ExpireTokens()
	a2 := "VALUE-a2-" + randHex(8)
	h.setSecretValue("a", a2)
	h.waitFor("the value read with the new token", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := h.emu.Stats(); st.TokenRequests != 2 {
		t.Errorf("%d token requests, want 2", st.TokenRequests)
	}
	if !strings.Contains(h.logs.String(), "renewed the credential") {
		t.Errorf("no credential renewal logged:\n%s", h.logs)
	}
}

// TestSidecarStopsBeforeFirstSet: SIGTERM (a cancelled context) while still
// retrying ends the sidecar cleanly.
func TestSidecarStopsBeforeFirstSet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	h.setSecret("a")
	_ = h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpGet})
	stop := h.runSidecar(h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"}), h.options())
	h.waitFor("a retry", 3*time.Second, func() bool { return strings.Contains(h.logs.String(), "retrying") })
	if err := stop(); err != nil {
		t.Fatalf("sidecar stopped with %v, want nil", err)
	}
	if h.termination() != "" {
		t.Errorf("termination log %q after a clean stop", h.termination())
	}
}

// TestVolumeFull: the first set does not fit; the agent explains.
func TestVolumeFull(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	h.setSecret("a")
	// A regular file where the agent's link would go stands in for a write
	// error; the real ENOSPC path is covered by package atomicdir.
	if err := os.WriteFile(filepath.Join(h.dir, "a"), []byte("app data"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"}), h.options())
	if err == nil || !strings.HasPrefix(h.termination(), "kvinject-agent: cannot write the secrets: atomicdir: ") {
		t.Fatalf("Run: %v; termination log %q", err, h.termination())
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "a")); string(b) != "app data" {
		t.Error("the agent replaced a file it did not create")
	}
}

// TestFetchPattern: N secrets cost one token request and one 401 challenge,
// and concurrent reads beat sequential ones.
func TestFetchPattern(t *testing.T) {
	const n = 50
	const latency = 20 * time.Millisecond
	run := func(concurrency int) (time.Duration, emulator.Stats) {
		h := newHarness(t, emulator.Options{Latency: latency})
		id, _ := h.workload()
		_ = h.emu.Grant(h.vault, id, emulator.PermGet)
		var entries []agentconfig.Entry
		for i := range n {
			name := fmt.Sprintf("secret-%02d", i)
			h.setSecret(name)
			entries = append(entries, agentconfig.Entry{File: name + ".txt", Name: name})
		}
		opts := h.options()
		opts.Concurrency = concurrency
		start := time.Now()
		if err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, entries...), opts); err != nil {
			t.Fatal(err)
		}
		return time.Since(start), h.emu.Stats()
	}
	seqTime, _ := run(1)
	parTime, st := run(agent.DefaultConcurrency)
	if st.TokenRequests != 1 || st.Challenges != 1 || st.Gets != n {
		t.Errorf("token requests %d, challenges %d, gets %d; want 1, 1, %d", st.TokenRequests, st.Challenges, st.Gets, n)
	}
	if st.HTTP2Requests != st.Requests {
		t.Errorf("%d of %d requests over HTTP/2", st.HTTP2Requests, st.Requests)
	}
	// Timing is for the benchmarks (make bench); on a loaded machine it is noise here.
	t.Logf("%d secrets, %s per request: first full set in %s concurrently (%d connections, %d requests), %s sequentially",
		n, latency, parTime.Round(time.Millisecond), st.Connections, st.Requests, seqTime.Round(time.Millisecond))
}

// TestSharedTransport: agents given Options.Transport (the benchmarks' many
// agents in one process) read through it, so that they share its
// connections, and leave its idle connections open when they end.
func TestSharedTransport(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	want, _ := h.setSecret("API-KEY")
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "api.txt", Name: "API-KEY"})
	opts := h.options()
	c, err := agent.NewClients(h.vaultURL(), agentconfig.IdentityWorkload, agent.ReadEnv(opts.Getenv), policy.RetryOptions{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Transport.CloseIdleConnections)
	opts.Transport = c.Transport
	before := h.emu.Stats().Connections
	for i := range 3 {
		if err := h.run(context.Background(), cfg, opts); err != nil {
			t.Fatalf("run %d: %v\nlogs:\n%s", i, err, h.logs)
		}
		if got := h.read("api.txt"); got != want {
			t.Fatalf("run %d wrote %q", i, got)
		}
	}
	// Two connections for the three agents, one to Azure AD and one to Key
	// Vault (the transport pools by host name): each agent left them open for
	// the next. Three agents with their own transports open six.
	if got := h.emu.Stats().Connections - before; got != 2 {
		t.Errorf("%d connections for 3 agents sharing a transport, want 2", got)
	}
}
