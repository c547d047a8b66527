package doctor_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/doctor"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

const (
	testIssuer  = "https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/"
	testSubject = "system:serviceaccount:shop:checkout"
	otherTenant = "0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b"
)

// fixture is one emulator shared by the cases of a test, and the agent's
// environment as the webhook sets it (plus the test-only settings that point
// the unmodified SDK at the emulator).
type fixture struct {
	t      *testing.T
	emu    *emulator.Emulator
	env    map[string]string
	values []string // every secret value set, for the leak check
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	emu, err := emulator.Start(emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, emu.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	// The managed-identity source of azidentity reads these from the process.
	t.Setenv("IDENTITY_ENDPOINT", emu.MSIEndpoint())
	t.Setenv("IDENTITY_HEADER", emu.IdentityHeader())
	return &fixture{t: t, emu: emu, env: map[string]string{
		agentconfig.EnvTestCAFile: ca,
		agentconfig.EnvTestResolve: fmt.Sprintf("login.microsoftonline.com=%[1]s,login.microsoftonline.us=%[1]s,*.vault.azure.net=%[1]s,*.vault.usgovcloudapi.net=%[1]s,refused.vault.azure.net=127.0.0.1:1",
			emu.Addr()),
		agentconfig.EnvAuthorityHost: "https://login.microsoftonline.com/",
		agentconfig.EnvPodNamespace:  "shop",
		agentconfig.EnvPodName:       "checkout-7d9f8b-x2x9q",
	}}
}

// c is the state of one case: a new vault, and the environment to run with.
type c struct {
	*fixture
	t     *testing.T
	vault string
	env   map[string]string
}

func (fx *fixture) newCase(t *testing.T, opts emulator.VaultOptions) *c {
	env := map[string]string{}
	for k, v := range fx.env {
		env[k] = v
	}
	k := &c{fixture: fx, t: t, vault: "kv-" + randHex(4), env: env}
	if err := fx.emu.AddVault(k.vault, opts); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *c) must(err error) {
	k.t.Helper()
	if err != nil {
		k.t.Fatal(err)
	}
}

// secret sets a secret with a distinctive value and returns its version.
func (k *c) secret(name string, opts ...emulator.SecretOption) string {
	v := "VALUE-" + name + "-" + randHex(12)
	k.values = append(k.values, v)
	return k.emu.SetSecret(k.vault, name, v, opts...)
}

// cert imports a certificate (a new test chain) and records its secret's
// value and private key for the leak check.
func (k *c) cert(name string) {
	k.t.Helper()
	ch, err := emulator.NewTestChain(name+".contoso.example", "RSA")
	k.must(err)
	_, err = k.emu.ImportCertificate(k.vault, name, ch.LeafKey, ch.Chain())
	k.must(err)
	der, err := x509.MarshalPKCS8PrivateKey(ch.LeafKey)
	k.must(err)
	s, _ := k.emu.Secret(k.vault, name)
	k.values = append(k.values, base64.StdEncoding.EncodeToString(der)[40:100], s.Value)
}

// key sets an EC key.
func (k *c) key(name string) {
	k.t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.must(err)
	_, err = k.emu.SetKey(k.vault, name, priv.Public())
	k.must(err)
}

// workload registers a workload identity federated with subject and gives
// the agent's environment a token for tokenSubject.
func (k *c) workload(subject, tokenSubject string) string {
	id := newClientID()
	k.must(k.emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: id, Issuer: testIssuer, Subject: subject}))
	tok := filepath.Join(k.t.TempDir(), "azure-identity-token")
	k.must(os.WriteFile(tok, []byte(jwt(testIssuer, tokenSubject, time.Now().Add(time.Hour))), 0o600))
	k.env[agentconfig.EnvClientID] = id
	k.env[agentconfig.EnvTenantID] = k.emu.TenantID()
	k.env[agentconfig.EnvTokenFile] = tok
	return id
}

// managed registers a user-assigned managed identity.
func (k *c) managed() string {
	id := newClientID()
	k.must(k.emu.AddManagedIdentity(id))
	k.env[agentconfig.EnvClientID] = id
	return id
}

func (k *c) grant(id string, perms ...emulator.Permission) {
	k.must(k.emu.Grant(k.vault, id, perms...))
}

func (k *c) vaultURL() string { return "https://" + k.vault + ".vault.azure.net/" }

// run runs the doctor as the binary does and returns its exit code and output.
func (k *c) run(args ...string) (int, string) {
	k.t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := doctor.Main(ctx, args, doctor.Options{
		Getenv: func(key string) string { return k.env[key] },
		Stdout: &stdout, Stderr: &stderr,
		SDKRetry: &policy.RetryOptions{MaxRetries: -1, TryTimeout: 10 * time.Second},
	})
	out := stdout.String() + stderr.String()
	for _, v := range k.values {
		if strings.Contains(out, v) || strings.Contains(out, v[len(v)-12:]) {
			k.t.Errorf("secret value %q appears in the doctor's output", v)
		}
	}
	return code, out
}

func TestDoctor(t *testing.T) {
	fx := newFixture(t)
	for _, tc := range []struct {
		name string
		// setup prepares the emulator and returns the command line.
		setup func(k *c) []string
		code  int
		// want are lines or parts of lines the output must contain.
		want    []string
		notWant []string
	}{
		{
			name: "all good, mapping as annotated",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("DATABASE-CONNECTION-STRING", emulator.WithContentType("text/plain"), emulator.WithExpires(time.Now().Add(90*24*time.Hour)))
				k.secret("API-KEY")
				return []string{"--vault", k.vault, "--secrets", "connectionstring.txt=DATABASE-CONNECTION-STRING,\napikey.txt=API-KEY, again.txt=api-key"}
			},
			code: 0,
			want: []string{
				"identity: workload identity ",
				"[ok]   identity: workload identity",
				"(issuer " + testIssuer + ", subject " + testSubject + ")",
				"[ok]   cloud: the vault and Azure AD (https://login.microsoftonline.com/) are both in AzurePublicCloud",
				"[ok]   token: Azure AD issued a token for https://vault.azure.net, valid for 1h0m0s",
				`[ok]   secret "DATABASE-CONNECTION-STRING" (connectionstring.txt): version `,
				"bytes, content type text/plain, enabled, expires ",
				`[ok]   secret "API-KEY" (apikey.txt, again.txt): version `,
				"All 5 checks passed.",
			},
		},
		{
			name: "the agent's own command line with doctor in front",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("API-KEY")
				// As the webhook writes it (agentconfig.Config.Args), with the agent's own flags.
				cfg := agentconfig.Config{Mode: agentconfig.ModeSidecar, Dir: "/var/run/kvinject/secrets", VaultURL: k.vaultURL(),
					Identity: agentconfig.IdentityWorkload, FileMode: 0o440, Rotation: 2 * time.Minute,
					Entries: []agentconfig.Entry{{File: "apikey.txt", Name: "API-KEY"}}}
				return append(cfg.Args(), "--termination-log=/dev/termination-log", "--log-level=debug", "--init-timeout=2m")
			},
			code: 0,
			want: []string{`[ok]   secret "API-KEY" (apikey.txt)`, "All 4 checks passed."},
		},
		{
			name: "the agent's command line with an action on change",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("API-KEY")
				cfg := agentconfig.Config{Mode: agentconfig.ModeSidecar, Dir: "/var/run/kvinject/secrets", VaultURL: k.vaultURL(),
					Identity: agentconfig.IdentityWorkload, FileMode: 0o440, Rotation: 2 * time.Minute, Hub: "https://kvinject-hub.kvinject-system.svc",
					OnChange: agentconfig.OnChange{Kind: agentconfig.OnChangeRestart},
					Entries:  []agentconfig.Entry{{File: "apikey.txt", Name: "API-KEY"}}}
				return cfg.Args()
			},
			code: 0,
			want: []string{"[ok]   on-change: restart: the agent reports each new set to the hub https://kvinject-hub.kvinject-system.svc", "All 5 checks passed."},
		},
		{
			name: "an action on change that cannot work",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("API-KEY")
				return []string{"--vault", k.vault, "--secret", "apikey.txt=API-KEY", "--on-change=restart"}
			},
			code: 1,
			want: []string{"[FAIL] on-change: restart needs the version hub, but the agent has no --hub", "fix: install the hub", "1 of 5 checks failed."},
		},
		{
			name: "templates render from the secrets read, as the agent renders them",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("DB-PASSWORD")
				k.values = append(k.values, "VALUE-port-5432x")
				k.emu.SetSecret(k.vault, "APP-CONFIG", `{"port":"VALUE-port-5432x"}`)
				return []string{"--vault", k.vault, "--secrets", "db/password=DB-PASSWORD;nofile, cfg=secret:APP-CONFIG;format=json;nofile",
					`--template=app.json;mode=0400={"password": {{ secret "db-password" | jsonQuote }}, "port": {{ file "cfg/port" }}}`}
			},
			code: 0,
			want: []string{`[ok]   secret "DB-PASSWORD" (db/password)`, "[ok]   template app.json: renders 84 bytes", "All 6 checks passed."},
		},
		{
			name: "a template that the secrets cannot fill",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.values = append(k.values, "VALUE-host-db1x")
				k.emu.SetSecret(k.vault, "APP-CONFIG", `{"host":"VALUE-host-db1x"}`)
				return []string{"--vault", k.vault, "--secret", "cfg=secret:APP-CONFIG;format=json",
					"--template=app.env=HOST={{ file \"cfg/host\" }}\nPORT={{ file \"cfg/port\" }}\n"}
			},
			code: 1,
			want: []string{
				`[FAIL] templates: cannot render template "app.env": line 2, column 9: file "cfg/port": entry "cfg=secret:APP-CONFIG;format=json" has no file "cfg/port": the JSON object has no key "port"`,
				"fix: store the value the template expects in Key Vault",
				"1 of 5 checks failed.",
			},
		},
		{
			name: "a template that reads no entry of the mapping is bad usage",
			setup: func(k *c) []string {
				return []string{"--vault", k.vault, "--identity=system", "--secret", "a=A", `--template=t={{ file "b" }}`}
			},
			code: 2,
			want: []string{`--template t: line 1, column 4: no entry of kvinject.dev/secrets writes the file "b"`},
		},
		{
			name: "an entry of another vault is not checked against this one",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("API-KEY")
				return []string{"--vault", k.vault, "--secrets", "apikey.txt=API-KEY, shared.txt=API-KEY;vault=https://shared-kv.vault.azure.net/"}
			},
			code: 0,
			want: []string{
				`[ok]   secret "API-KEY" (apikey.txt): version `,
				`[skip] secret "API-KEY" (shared.txt): not checked: the entry reads vault https://shared-kv.vault.azure.net/; run the doctor with that vault for it`,
			},
		},
		{
			name: "no federated credential for the pod's ServiceAccount",
			setup: func(k *c) []string {
				k.workload("system:serviceaccount:shop:other", testSubject)
				k.secret("API-KEY")
				return []string{"--vault", k.vault, "--secret", "apikey.txt=API-KEY"}
			},
			code: 1,
			want: []string{
				"[FAIL] token: Azure AD refused the token request of workload identity ",
				"AADSTS70021): no federated identity credential of the identity matches the pod's service account token (issuer " + testIssuer + ", subject " + testSubject,
				"fix: create a federated credential with issuer " + testIssuer + " and subject " + testSubject + " on the identity ",
				"az identity federated-credential create --name kvinject-shop-checkout",
				`[skip] secret "API-KEY" (apikey.txt): not checked: no token`,
				"1 of 4 checks failed.",
			},
		},
		{
			name: "unknown client ID",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.env[agentconfig.EnvClientID] = newClientID()
				return []string{"--vault", k.vault, "--secret", "API-KEY"}
			},
			code: 1,
			want: []string{"[FAIL] token: ", "AADSTS700016): Azure AD knows no application with client ID", "fix: check the client ID (the ServiceAccount's azure.workload.identity/client-id)"},
		},
		{
			name: "unknown tenant",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.env[agentconfig.EnvTenantID] = otherTenant
				return []string{"--vault", k.vault, "--secret", "API-KEY"}
			},
			code: 1,
			want: []string{"[FAIL] token: ", "AADSTS90002): tenant " + otherTenant + " does not exist in this cloud", "fix: check the tenant ID"},
		},
		{
			name: "the token file is missing",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.env[agentconfig.EnvTokenFile] = "/nonexistent/azure-identity-token"
				return []string{"--vault", k.vault, "--secret", "API-KEY"}
			},
			code: 1,
			want: []string{
				"[FAIL] identity: workload identity: the projected service account token /nonexistent/azure-identity-token cannot be read",
				"fix: check that the pod mounts the kvinject-azure-token volume",
				`[skip] secret "API-KEY" (API-KEY): not checked: the identity is not configured`,
			},
		},
		{
			name: "access policy without get, told once",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.secret("A")
				k.secret("B")
				return []string{"--vault", k.vault, "--secrets", "a=A,b=B", "--identity", "workload"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "A" (a): HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity `,
				"--secret-permissions get), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee ",
				`[FAIL] secret "B" (b): HTTP 403`,
				`fix: as for secret "A" (a) above`,
				"2 of 5 checks failed.",
			},
		},
		{
			name: "RBAC without a role assignment",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				"(inner error ForbiddenByRbac): the vault uses Azure RBAC and workload identity ",
				"has no role assignment that allows reading secrets (Microsoft.KeyVault/vaults/secrets/getSecret/action)",
				"fix: assign the identity ",
				"az role assignment create --role 'Key Vault Secrets User' --assignee ",
				"--scope /subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-emulator/providers/microsoft.keyvault/vaults/",
			},
		},
		{
			name: "firewall",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("A")
				k.must(k.emu.SetFirewall(k.vault, true))
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				"(inner error ForbiddenByFirewall): the vault's firewall does not admit the pod's address (127.0.0.1)",
				"fix: allow the cluster's egress IP or the nodes' subnet in the vault's network rules (az keyvault network-rule add --name ",
				" --ip-address 127.0.0.1, or --subnet <subnet resource id>)",
			},
		},
		{
			name: "disabled secret, with list: names the enabled versions",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet, emulator.PermList)
				old := k.secret("A")
				k.secret("A", emulator.WithDisabled())
				return []string{"--vault", k.vault, "--secret", "a=A", "--secret", "b=A@" + old}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "A" (a): HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): the secret's current version is disabled`,
				"az keyvault secret set-attributes --vault-name ",
				"; its newest enabled version is ",
				" (to pin it: a=A@",
				`[ok]   secret "A" version `,
			},
		},
		{
			name: "not found, with list: suggests the close names",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet, emulator.PermList)
				k.secret("DATABASE-CONNECTION-STRING")
				k.secret("UNRELATED")
				return []string{"--vault", k.vault, "--secret", "db=DATABASE-CONNECTIONSTRING"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "DATABASE-CONNECTIONSTRING" (db): HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no secret named "DATABASE-CONNECTIONSTRING" (or it was deleted)`,
				`az keyvault secret list --vault-name `,
				`; the vault has "DATABASE-CONNECTION-STRING": did you mean it?`,
			},
			notWant: []string{`"UNRELATED"`},
		},
		{
			name: "pinned version not found, without list: no hint",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A@0123456789abcdef0123456789abcdef"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "A" version 0123456789abcdef0123456789abcdef (a): HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no version 0123456789abcdef0123456789abcdef of secret "A"`,
				"list the versions with az keyvault secret list-versions --vault-name ",
			},
			notWant: []string{"enabled version"},
		},
		{
			name: "--list without the list permission",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A", "--list"}
			},
			code: 1,
			want: []string{
				`[ok]   secret "A" (a)`,
				`[FAIL] list versions of "A": HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity `,
				"may not list its secrets",
				"--secret-permissions get list)",
			},
		},
		{
			name: "--list with the list permission",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet, emulator.PermList)
				k.secret("A")
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A", "--list"}
			},
			code: 0,
			want: []string{`[ok]   list versions of "A": 2 versions`, "All 5 checks passed."},
		},
		{
			name: "vault of another tenant (workload identity)",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "A" (a): the vault belongs to tenant ` + otherTenant + ` (its 401 challenge says so), but workload identity `,
				"fix: use a vault of tenant ",
			},
		},
		{
			name: "vault of another tenant (managed identity)",
			setup: func(k *c) []string {
				id := k.managed()
				k.grant(id, emulator.PermGet)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				"[ok]   token: ",
				`[FAIL] secret "A" (a): HTTP 401 Unauthorized, Key Vault error Unauthorized: Key Vault rejected the access token`,
				"; the vault belongs to tenant " + otherTenant + " but the identity's token is from tenant ",
				"(a managed identity gets tokens from its home tenant only)",
			},
		},
		{
			name: "vault of another cloud",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				return []string{"--vault", "https://" + k.vault + ".vault.usgovcloudapi.net/", "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				"vault:    https://kv-",
				".vault.usgovcloudapi.net/ (AzureUSGovernmentCloud)",
				"[FAIL] cloud: the vault is in AzureUSGovernmentCloud but the identity signs in to Azure AD of AzurePublicCloud (https://login.microsoftonline.com/)",
				"fix: set kvinject.dev/cloud=AzureUSGovernmentCloud on the pod or its namespace (the webhook then sets AZURE_AUTHORITY_HOST=https://login.microsoftonline.us/), or use a vault of AzurePublicCloud",
				`[skip] secret "A" (a): not checked: the vault and the identity are in different clouds`,
			},
		},
		{
			name: "the vault cannot be reached",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				return []string{"--vault", "refused", "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "A" (a): cannot connect to refused.vault.azure.net`,
				"fix: allow egress from the pod to refused.vault.azure.net:443 in network policies, NSGs and firewalls",
			},
		},
		{
			name: "throttled",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("A")
				k.must(k.emu.InjectFault(emulator.Fault{Kind: emulator.FaultThrottle, Match: emulator.OpGet, Vault: k.vault}))
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "A" (a): HTTP 429 Too Many Requests, Key Vault error Throttled: the vault is throttling reads`,
				"fix: spread pod start-ups, lengthen kvinject.dev/rotation, or spread the secrets over more vaults",
			},
		},
		{
			name: "Key Vault unavailable",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("A")
				k.must(k.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpGet, Vault: k.vault}))
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{`[FAIL] secret "A" (a): HTTP 503 Service Unavailable, Key Vault error ServiceUnavailable: Key Vault is unavailable`},
		},
		{
			name: "Azure AD unavailable",
			setup: func(k *c) []string {
				k.workload(testSubject, testSubject)
				k.must(k.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpToken}))
				return []string{"--vault", k.vault, "--secret", "a=A"}
			},
			code: 1,
			want: []string{"[FAIL] token: Azure AD refused the token request of workload identity ", ": Azure AD is unavailable or throttling"},
		},
		{
			name: "managed identity not assigned to the node",
			setup: func(k *c) []string {
				return []string{"--vault", k.vault, "--secret", "a=A", "--identity", "managed:" + newClientID()}
			},
			code: 1,
			want: []string{
				"identity: user-assigned managed identity ",
				"[FAIL] token: the managed-identity endpoint answered HTTP 400 Bad Request (Unable to load the proper Managed Identity.): managed identity ",
				"is not assigned to this node",
				"fix: assign the identity to the node pool's scale set (az vmss identity assign",
			},
		},
		{
			name: "managed identity, all good, expired secret is a warning",
			setup: func(k *c) []string {
				id := k.managed()
				k.grant(id, emulator.PermGet)
				k.secret("A", emulator.WithExpires(time.Now().Add(-time.Hour)))
				k.secret("B", emulator.WithExpires(time.Now().Add(24*time.Hour)))
				k.secret("C", emulator.WithNotBefore(time.Now().Add(time.Hour)))
				return []string{"--vault", k.vault, "--secret", "a=A", "--secret", "b=B", "--secret", "c=C"}
			},
			code: 0,
			want: []string{
				`[warn] secret "A" (a): version `,
				", expired ",
				"fix: Key Vault still serves an expired secret, but it is due for rotation",
				`[warn] secret "B" (b): version `,
				"fix: it expires soon",
				`[warn] secret "C" (c): version `,
				", not valid before ",
				"All 6 checks passed.",
			},
		},
		{
			name: "certificate and key entries need certificates get and keys get, not secrets get",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermCertificatesGet, emulator.PermKeysGet)
				k.cert("web-cert")
				k.key("signing-key")
				return []string{"--vault", k.vault, "--secret", "tls.crt=cert:web-cert", "--secret", "sig.pem=key:signing-key"}
			},
			code: 0,
			want: []string{
				`[ok]   certificate "web-cert" (tls.crt): version `,
				`[ok]   key "signing-key" (sig.pem): version `,
				"All 5 checks passed.",
			},
			notWant: []string{"secret \"web-cert\"", "secret \"signing-key\""},
		},
		{
			name: "certificate entry without certificates get",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet, emulator.PermKeysGet)
				k.cert("web-cert")
				return []string{"--vault", k.vault, "--secret", "tls.crt=cert:web-cert"}
			},
			code: 1,
			want: []string{
				`[FAIL] certificate "web-cert" (tls.crt): HTTP 403 Forbidden`,
				"may not get its certificates",
				"--certificate-permissions get",
			},
		},
		{
			name: "certificate-backed secret as pem and pfx",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.cert("web-cert")
				return []string{"--vault", k.vault, "--secret", "web=secret:web-cert;format=pem;split", "--secret", "web.pfx=secret:web-cert;format=pfx", "--secret", "auto.pem=secret:web-cert;format=auto"}
			},
			code: 0,
			want: []string{`[ok]   secret "web-cert" (web, web.pfx, auto.pem): version `, "content type application/x-pkcs12", "All 4 checks passed."},
		},
		{
			name: "history with the list permission",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet, emulator.PermList)
				k.secret("db-pass")
				k.secret("db-pass", emulator.WithDisabled())
				k.secret("db-pass")
				return []string{"--vault", k.vault, "--secret", "db=secret:db-pass;history=3"}
			},
			code: 0,
			want: []string{`[ok]   secret "db-pass" history 3 (db): 2 versions (`, ", newest first), ", "All 4 checks passed."},
		},
		{
			name: "history without the list permission",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("db-pass")
				return []string{"--vault", k.vault, "--secret", "db=secret:db-pass;history=3"}
			},
			code: 1,
			want: []string{
				`[FAIL] secret "db-pass" history 3 (db): HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity `,
				"may not list its secrets",
				"--secret-permissions get list)",
				"1 of 4 checks failed.",
			},
		},
		{
			name: "format=pem on a secret that is not certificate-backed",
			setup: func(k *c) []string {
				id := k.workload(testSubject, testSubject)
				k.grant(id, emulator.PermGet)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A", "--secret", "a.pem=A;format=pem", "--secret", "a.bin=A;encoding=hex"}
			},
			code: 1,
			want: []string{
				`[ok]   secret "A" (a, a.pem, a.bin): version `,
				"[FAIL] entry a.pem=A;format=pem: the secret is not certificate-backed (content type none), so format=pem has no certificate to convert",
				"fix: write the plain form a.pem=A to get its value as it is",
				"[FAIL] entry a.bin=A;encoding=hex: the value is not valid hex (a character that is not a hexadecimal digit at byte 1 of ",
				"2 of 6 checks failed.",
			},
		},
		{
			name: "system-assigned identity",
			setup: func(k *c) []string {
				id := newClientID()
				k.must(k.emu.SetSystemIdentity(id))
				k.grant(id, emulator.PermGet)
				k.secret("A")
				return []string{"--vault", k.vault, "--secret", "a=A", "--identity=system"}
			},
			code: 0,
			want: []string{"identity: the node's system-assigned managed identity", `[ok]   secret "A" (a)`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := emulator.VaultOptions{}
			switch {
			case strings.Contains(tc.name, "RBAC"):
				opts.RBAC = true
			case strings.Contains(tc.name, "another tenant"):
				opts.TenantID = otherTenant
			}
			k := fx.newCase(t, opts)
			t.Cleanup(k.emu.ClearFaults)
			args := tc.setup(k)
			code, out := k.run(args...)
			if code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q", w)
				}
			}
			if t.Failed() || testing.Verbose() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestUsage checks that a bad command line exits 2 and says what is wrong.
func TestUsage(t *testing.T) {
	env := map[string]string{}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "no vault", args: []string{"--secret=a=A", "--identity=system"}, want: "--vault is required"},
		{name: "bad vault name", args: []string{"--vault=x", "--secret=a=A", "--identity=system"}, want: `--vault: "x" is not a valid vault name`},
		{name: "vault URL of no cloud", args: []string{"--vault=https://x.example.com/", "--secret=a=A", "--identity=system"}, want: "is not a Key Vault of AzurePublicCloud"},
		{name: "no secrets", args: []string{"--vault=myvault", "--identity=system"}, want: "no secrets: give --secret"},
		{name: "bad entry", args: []string{"--vault=myvault", "--secret=../a=A"}, want: `invalid value "../a=A" for flag -secret`},
		{name: "bad mapping", args: []string{"--vault=myvault", "--secrets=a=A,a=B"}, want: "invalid value"},
		{name: "no identity", args: []string{"--vault=myvault", "--secret=a=A"}, want: "--identity is required: neither AZURE_FEDERATED_TOKEN_FILE nor AZURE_CLIENT_ID is set"},
		{name: "bad identity", args: []string{"--vault=myvault", "--secret=a=A", "--identity=pod"}, want: `--identity "pod": use workload, managed, managed:<client-id> or system`},
		{name: "client ID on workload", args: []string{"--vault=myvault", "--secret=a=A", "--identity=workload:x"}, want: "only managed takes a client ID"},
		{name: "bad cloud", args: []string{"--vault=myvault", "--secret=a=A", "--identity=system", "--cloud=Mars"}, want: `--cloud: unknown cloud "Mars"`},
		{name: "unknown flag", args: []string{"--vault=myvault", "--secret=a=A", "--vaults=x"}, want: "flag provided but not defined: -vaults"},
		{name: "stray argument", args: []string{"--vault=myvault", "--secret=a=A", "--identity=system", "extra"}, want: `unexpected argument "extra"`},
		{name: "bad timeout", args: []string{"--vault=myvault", "--secret=a=A", "--identity=system", "--timeout=0s"}, want: "--timeout 0s: must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			e := env
			if tc.env != nil {
				e = tc.env
			}
			code := doctor.Main(context.Background(), tc.args, doctor.Options{Getenv: func(k string) string { return e[k] }, Stdout: &stdout, Stderr: &stderr})
			if code != 2 {
				t.Errorf("exit code %d, want 2; stdout:\n%s", code, stdout.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr.String())
			}
			if stdout.Len() > 0 {
				t.Errorf("bad usage printed a checklist:\n%s", stdout.String())
			}
		})
	}
	var stderr bytes.Buffer
	if code := doctor.Main(context.Background(), []string{"--help"}, doctor.Options{Stdout: &stderr, Stderr: &stderr}); code != 0 || !strings.Contains(stderr.String(), "Usage: kvinject-agent doctor") {
		t.Errorf("--help: exit %d, output:\n%s", code, stderr.String())
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newClientID() string {
	b := randHex(16)
	return b[:8] + "-" + b[8:12] + "-" + b[12:16] + "-" + b[16:20] + "-" + b[20:]
}

// jwt is an unsigned service account token with the given claims.
func jwt(iss, sub string, exp time.Time) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "RS256", "kid": "test"}) + "." + enc(map[string]any{
		"iss": iss, "sub": sub, "aud": []string{emulator.DefaultAudience}, "exp": exp.Unix(),
		"iat": time.Now().Unix(), "nbf": time.Now().Add(-time.Minute).Unix(),
	}) + ".c2lnbmF0dXJl"
}

// TestRunNilStderr checks that Run, called without Main, defaults Stderr:
// the agent's client construction warns about the test-only settings there.
func TestRunNilStderr(t *testing.T) {
	fx := newFixture(t)
	k := fx.newCase(t, emulator.VaultOptions{})
	id := k.managed()
	k.grant(id, emulator.PermGet)
	k.secret("A")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := doctor.Run(ctx, doctor.Config{
		VaultURL: k.vaultURL(),
		Identity: agentconfig.IdentityManaged,
		Env:      agent.ReadEnv(func(key string) string { return k.env[key] }),
		Entries:  []agentconfig.Entry{{File: "a", Name: "A"}},
	}, doctor.Options{SDKRetry: &policy.RetryOptions{MaxRetries: -1, TryTimeout: 10 * time.Second}})
	if n := r.Failed(); n != 0 {
		var b bytes.Buffer
		r.Print(&b)
		t.Errorf("%d checks failed:\n%s", n, b.String())
	}
}
