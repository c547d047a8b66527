package doctor

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// TestParseArgs checks how the command line and the agent's environment
// combine into what is checked.
func TestParseArgs(t *testing.T) {
	const id = "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		vault    string
		identity agentconfig.IdentityKind
		clientID string
		auth     string
		entries  int
	}{
		{
			name:  "workload identity from the environment",
			args:  []string{"--vault=myvault", "--secrets=a=A, b=B"},
			env:   map[string]string{"AZURE_FEDERATED_TOKEN_FILE": "/t", "AZURE_CLIENT_ID": id, "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"},
			vault: "https://myvault.vault.azure.net/", identity: agentconfig.IdentityWorkload, clientID: id, auth: "https://login.microsoftonline.com/", entries: 2,
		},
		{
			name:  "managed identity from AZURE_CLIENT_ID; a vault name in the authority's cloud",
			args:  []string{"--vault=myvault", "--secret=A"},
			env:   map[string]string{"AZURE_CLIENT_ID": id, "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/"},
			vault: "https://myvault.vault.usgovcloudapi.net/", identity: agentconfig.IdentityManaged, clientID: id, auth: "https://login.microsoftonline.us/", entries: 1,
		},
		{
			name:  "managed:<client-id> overrides the environment",
			args:  []string{"--vault=myvault", "--secret=A", "--identity=managed:" + id},
			env:   map[string]string{"AZURE_CLIENT_ID": "other"},
			vault: "https://myvault.vault.azure.net/", identity: agentconfig.IdentityManaged, clientID: id, entries: 1,
		},
		{
			name:  "--cloud sets the authority when the environment has none",
			args:  []string{"--vault=myvault", "--secret=A", "--identity=system", "--cloud=AzureChinaCloud"},
			vault: "https://myvault.vault.azure.cn/", identity: agentconfig.IdentitySystem, auth: "https://login.chinacloudapi.cn/", entries: 1,
		},
		{
			name:  "a vault URL keeps its cloud, for the cloud check",
			args:  []string{"--vault=https://myvault.vault.usgovcloudapi.net/", "--secret=A", "--identity=system"},
			vault: "https://myvault.vault.usgovcloudapi.net/", identity: agentconfig.IdentitySystem, entries: 1,
		},
		{
			name:  "flags override the environment",
			args:  []string{"init", "--dir=/x", "--vault=myvault", "--secret=A", "--client-id=" + id, "--token-file=/tok", "--authority-host=https://login.microsoftonline.com/"},
			env:   map[string]string{"AZURE_CLIENT_ID": "other"},
			vault: "https://myvault.vault.azure.net/", identity: agentconfig.IdentityWorkload, clientID: id, auth: "https://login.microsoftonline.com/", entries: 1,
		},
		{
			name: "an injected agent's command line with templates: the ;nofile entries are checked, the templates accepted",
			args: []string{"sidecar", "--dir=/x", "--vault=https://myvault.vault.azure.net/", "--identity=system", "--file-mode=0444", "--rotation=2m0s",
				"--secret=db/host=DB-HOST", "--secret=db/password=DB-PASSWORD;nofile",
				"--template=appsettings.json;mode=0440={\"Password\": {{ file \"db/password\" | jsonQuote }}}\n"},
			vault: "https://myvault.vault.azure.net/", identity: agentconfig.IdentitySystem, entries: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := parseArgs(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			got := []any{cfg.VaultURL, cfg.Identity, cfg.Env.ClientID, cfg.Env.AuthorityHost, len(cfg.Entries)}
			want := []any{tc.vault, tc.identity, tc.clientID, tc.auth, tc.entries}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestAcceptsAgentFlags: every flag of the agent's command line (the
// webhook's and the agent's own) is accepted, so that doctor can be put in
// front of any agent command line.
func TestAcceptsAgentFlags(t *testing.T) {
	base := []string{"--vault=myvault", "--secret=a=A", "--identity=system"}
	own := map[string]bool{agentconfig.FlagVault: true, agentconfig.FlagIdentity: true, agentconfig.FlagSecret: true, agentconfig.FlagTemplate: true}
	n := 0
	agent.Flags().VisitAll(func(f *flag.Flag) {
		n++
		if own[f.Name] {
			return // the doctor's own, which accept what the agent's do and more
		}
		args := append(slices.Clone(base), "--"+f.Name+"="+f.DefValue)
		if _, _, err := parseArgs(args, func(string) string { return "" }, io.Discard); err != nil {
			t.Errorf("parseArgs(%q): %v", args, err)
		}
	})
	if n < 9 {
		t.Errorf("agent.Flags() has %d flags, want the webhook's 6 and the agent's 3", n)
	}
}

// TestIdentityFlag: --identity takes the identity grammar of the annotation
// (agentconfig.ParseIdentity).
func TestIdentityFlag(t *testing.T) {
	const id = "2F1E5B7C-9A3D-4E8F-B6C1-0D2A4E6F8A1B"
	for _, tc := range []struct {
		identity string
		kind     agentconfig.IdentityKind
		clientID string
		err      string
	}{
		{identity: "workload", kind: agentconfig.IdentityWorkload},
		{identity: " System ", kind: agentconfig.IdentitySystem},
		{identity: "managed:" + id, kind: agentconfig.IdentityManaged, clientID: strings.ToLower(id)},
		{identity: "managed:x", err: `--identity "managed:x": client ID "x" must be a GUID like 00000000-0000-0000-0000-000000000000`},
		{identity: "system:" + id, err: `--identity "system:` + id + `": only managed takes a client ID (managed:<client-id>)`},
		{identity: "pod", err: `--identity "pod": use workload, managed, managed:<client-id> or system`},
	} {
		cfg, _, err := parseArgs([]string{"--vault=myvault", "--secret=a=A", "--identity=" + tc.identity}, func(string) string { return "" }, io.Discard)
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("--identity=%s: %v, want %s", tc.identity, err, tc.err)
			}
		case err != nil:
			t.Errorf("--identity=%s: %v", tc.identity, err)
		case cfg.Identity != tc.kind || cfg.Env.ClientID != tc.clientID:
			t.Errorf("--identity=%s: %s %q, want %s %q", tc.identity, cfg.Identity, cfg.Env.ClientID, tc.kind, tc.clientID)
		}
	}
}

func TestClosest(t *testing.T) {
	names := []string{"DATABASE-CONNECTION-STRING", "api-key", "API-KEY-OLD", "UNRELATED", "db"}
	for _, tc := range []struct {
		want string
		out  []string
	}{
		{"DATABASE-CONNECTIONSTRING", []string{"DATABASE-CONNECTION-STRING"}},
		{"API-KEY", []string{"api-key", "API-KEY-OLD"}},
		{"APIKEY", []string{"api-key"}},
		{"SOMETHING", nil},
		{"d", []string{"db"}},
	} {
		if got := closest(tc.want, names); !cmp.Equal(got, tc.out) {
			t.Errorf("closest(%q) = %q, want %q", tc.want, got, tc.out)
		}
	}
}
