package agentconfig

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseEntries(t *testing.T) {
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	tests := []struct {
		in      string
		want    []Entry
		wantErr string
	}{
		{in: "a.txt=A", want: []Entry{{File: "a.txt", Name: "A"}}},
		{in: " a.txt = A , b=B@" + strings.ToUpper(v) + "\n\n c/d=C,", want: []Entry{{File: "a.txt", Name: "A"}, {File: "b", Name: "B", Version: v}, {File: "c/d", Name: "C"}}},
		{in: "API-KEY", want: []Entry{{File: "API-KEY", Name: "API-KEY"}}},
		{in: "API-KEY@" + v, want: []Entry{{File: "API-KEY", Name: "API-KEY", Version: v}}},
		{in: "", wantErr: "no entries"},
		{in: "a=B_C", wantErr: `secret name "B_C" must be 1-127 letters`},
		{in: "a=" + strings.Repeat("X", 128), wantErr: "must be 1-127"},
		{in: "a=B@123", wantErr: `version "123" must be 32 hexadecimal`},
		{in: "a=B@", wantErr: `version "" must be 32 hexadecimal`},
		{in: "=B", wantErr: "file name is empty"},
		{in: "a=", wantErr: `secret name ""`},
		{in: "/a=B", wantErr: "without a leading '/'"},
		{in: "../a=B", wantErr: "must not start with '..'"},
		{in: "..data=B", wantErr: "must not start with '..'"},
		{in: "a/../../b=B", wantErr: "'.' or '..' segments"},
		{in: "a/./b=B", wantErr: "'.' or '..' segments"},
		{in: "db/..b=B", wantErr: "no path segment may start with '..'"},
		{in: "db/...=B", wantErr: "no path segment may start with '..'"},
		{in: "db/.hidden=B", want: []Entry{{File: "db/.hidden", Name: "B"}}},
		{in: "a//b=B", wantErr: "empty path segment"},
		{in: "a/=B", wantErr: "empty path segment"},
		{in: "a b=B", wantErr: "may only use letters"},
		{in: "a\x00=B", wantErr: "may only use letters"},
		{in: "é=B", wantErr: "may only use letters"},
		{in: strings.Repeat("a", 254) + "=B", wantErr: "longer than 253"},
		{in: "a=B,a=C", wantErr: `file "a" is already used by entry "a=B"`},
		{in: "a=B,a/b=C", wantErr: `file "a" cannot also be the directory of "a/b"`},
		{in: "a=certificate:B", wantErr: `unknown kind "certificate"`},
		{in: "a=B;format=yaml", wantErr: `format "yaml"`},
		{in: "x=B_1, y=C@z", wantErr: `secret name "B_1"`},
	}
	for _, tt := range tests {
		got, err := ParseEntries(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseEntries(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseEntries(%q): %v", tt.in, err)
			continue
		}
		if d := cmp.Diff(tt.want, got); d != "" {
			t.Errorf("ParseEntries(%q) (-want +got):\n%s", tt.in, d)
		}
	}
}

func TestParseEntriesReportsEveryProblem(t *testing.T) {
	_, err := ParseEntries("a=B_1, ../c=D, e=F@1")
	for _, want := range []string{`"B_1"`, `"../c"`, `version "1"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestEntryStringRoundTrip(t *testing.T) {
	for _, in := range []string{"a=B", "db/password=DB-PASSWORD@4387e9f3d6e14c459867679a90fd0f79"} {
		e, err := ParseEntry(in)
		if err != nil || e.String() != in {
			t.Errorf("ParseEntry(%q).String() = %q, %v", in, e.String(), err)
		}
	}
}

func TestVaultURL(t *testing.T) {
	tests := []struct {
		in      string
		cloud   Cloud
		want    string
		wantErr string
	}{
		{in: "myvault", cloud: AzurePublicCloud, want: "https://myvault.vault.azure.net/"},
		{in: "My-Vault-01", cloud: AzureChinaCloud, want: "https://my-vault-01.vault.azure.cn/"},
		{in: "abc", cloud: AzureUSGovernmentCloud, want: "https://abc.vault.usgovcloudapi.net/"},
		{in: "https://MyVault.vault.azure.net", cloud: AzurePublicCloud, want: "https://myvault.vault.azure.net/"},
		{in: "https://myvault.vault.azure.net:443/", cloud: AzurePublicCloud, want: "https://myvault.vault.azure.net/"},
		{in: "ab", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: strings.Repeat("a", 25), cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "1vault", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "vault-", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "my--vault", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "http://myvault.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "must use https"},
		{in: "https://u:p@myvault.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "user info"},
		{in: "https://myvault.vault.azure.net/?x=1", cloud: AzurePublicCloud, wantErr: "query"},
		{in: "https://myvault.vault.azure.net/?", cloud: AzurePublicCloud, wantErr: "query"},
		{in: "https://myvault.vault.azure.net/#frag", cloud: AzurePublicCloud, wantErr: "fragment"},
		{in: "https://myvault.vault.azure.net/secrets", cloud: AzurePublicCloud, wantErr: "must not have a path"},
		{in: "https://myvault.vault.azure.net:8443/", cloud: AzurePublicCloud, wantErr: "port"},
		{in: "https://evil.com/", cloud: AzurePublicCloud, wantErr: "not a Key Vault of AzurePublicCloud"},
		{in: "https://myvault.vault.azure.net.evil.com/", cloud: AzurePublicCloud, wantErr: "not a Key Vault"},
		{in: "https://a.b.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "not a Key Vault"},
		{in: "https://127.0.0.1/", cloud: AzurePublicCloud, wantErr: "not a Key Vault"},
		{in: "https://myvault.vault.usgovcloudapi.net/", cloud: AzurePublicCloud, wantErr: "set kvinject.dev/cloud=AzureUSGovernmentCloud"},
		{in: "https://x_y.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "in ASCII letters, digits"},
		{in: "https://%zz", cloud: AzurePublicCloud, wantErr: "neither a vault name nor a valid URL"},
		{in: "https://\u212aeyvault.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "in ASCII letters"},
	}
	for _, tt := range tests {
		got, err := VaultURL(tt.in, tt.cloud)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("VaultURL(%q) = %q, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("VaultURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}
