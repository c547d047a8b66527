package doctor

import (
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/pkg/mapping"
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
		identity mapping.IdentityKind
		clientID string
		auth     string
		entries  int
	}{
		{
			name:  "workload identity from the environment",
			args:  []string{"--vault=myvault", "--secrets=a=A, b=B"},
			env:   map[string]string{"AZURE_FEDERATED_TOKEN_FILE": "/t", "AZURE_CLIENT_ID": id, "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"},
			vault: "https://myvault.vault.azure.net/", identity: mapping.IdentityWorkload, clientID: id, auth: "https://login.microsoftonline.com/", entries: 2,
		},
		{
			name:  "managed identity from AZURE_CLIENT_ID; a vault name in the authority's cloud",
			args:  []string{"--vault=myvault", "--secret=A"},
			env:   map[string]string{"AZURE_CLIENT_ID": id, "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us/"},
			vault: "https://myvault.vault.usgovcloudapi.net/", identity: mapping.IdentityManaged, clientID: id, auth: "https://login.microsoftonline.us/", entries: 1,
		},
		{
			name:  "managed:<client-id> overrides the environment",
			args:  []string{"--vault=myvault", "--secret=A", "--identity=managed:" + id},
			env:   map[string]string{"AZURE_CLIENT_ID": "other"},
			vault: "https://myvault.vault.azure.net/", identity: mapping.IdentityManaged, clientID: id, entries: 1,
		},
		{
			name:  "--cloud sets the authority when the environment has none",
			args:  []string{"--vault=myvault", "--secret=A", "--identity=system", "--cloud=AzureChinaCloud"},
			vault: "https://myvault.vault.azure.cn/", identity: mapping.IdentitySystem, auth: "https://login.chinacloudapi.cn/", entries: 1,
		},
		{
			name:  "a vault URL keeps its cloud, for the cloud check",
			args:  []string{"--vault=https://myvault.vault.usgovcloudapi.net/", "--secret=A", "--identity=system"},
			vault: "https://myvault.vault.usgovcloudapi.net/", identity: mapping.IdentitySystem, entries: 1,
		},
		{
			name:  "flags override the environment",
			args:  []string{"init", "--dir=/x", "--vault=myvault", "--secret=A", "--client-id=" + id, "--token-file=/tok", "--authority-host=https://login.microsoftonline.com/"},
			env:   map[string]string{"AZURE_CLIENT_ID": "other"},
			vault: "https://myvault.vault.azure.net/", identity: mapping.IdentityWorkload, clientID: id, auth: "https://login.microsoftonline.com/", entries: 1,
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
