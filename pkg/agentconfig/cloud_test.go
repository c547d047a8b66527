package agentconfig

import (
	"strings"
	"testing"
)

func TestCloudOf(t *testing.T) {
	for _, tc := range []struct {
		authority string
		want      Cloud
		known     bool
	}{
		{"", AzurePublicCloud, true},
		{"https://login.microsoftonline.com/", AzurePublicCloud, true},
		{"HTTPS://LOGIN.MICROSOFTONLINE.US", AzureUSGovernmentCloud, true},
		{"https://login.chinacloudapi.cn/", AzureChinaCloud, true},
		{"https://login.example.com/", Cloud{}, false},
	} {
		if got, known := CloudOfAuthority(tc.authority); got != tc.want || known != tc.known {
			t.Errorf("CloudOfAuthority(%q) = %s, %v; want %s, %v", tc.authority, got.Name, known, tc.want.Name, tc.known)
		}
	}
	for _, tc := range []struct {
		vault, url string
		want       Cloud
		known      bool
	}{
		{"https://MyVault.vault.usgovcloudapi.net", "https://myvault.vault.usgovcloudapi.net/", AzureUSGovernmentCloud, true},
		{"https://myvault.vault.azure.cn/", "https://myvault.vault.azure.cn/", AzureChinaCloud, true},
		{"https://myvault.vault.azure.net/", "https://myvault.vault.azure.net/", AzurePublicCloud, true},
		{"https://x.example.com/", "", Cloud{}, false},
		{"myvault", "", Cloud{}, false},
	} {
		if got, u, known := CloudOfVault(tc.vault); got != tc.want || u != tc.url || known != tc.known {
			t.Errorf("CloudOfVault(%q) = %s, %q, %v; want %s, %q, %v", tc.vault, got.Name, u, known, tc.want.Name, tc.url, tc.known)
		}
	}
}

func TestResolveEntryVault(t *testing.T) {
	const pod = "https://main.vault.azure.cn/"
	for _, tc := range []struct {
		v, want, wantErr string
	}{
		{"", "", ""},
		{"other", "https://other.vault.azure.cn/", ""},
		{"Other", "https://other.vault.azure.cn/", ""},
		{"main", "", ""},
		{"https://MAIN.vault.azure.cn:443", "", ""},
		{"https://other.vault.azure.cn/", "https://other.vault.azure.cn/", ""},
		{"https://other.vault.azure.net/", "", "vault https://other.vault.azure.net/ is in AzurePublicCloud, but the pod's vault is in AzureChinaCloud: the agent reads every vault of a pod with its one identity, in one cloud; read it from a pod of AzurePublicCloud"},
		{"https://other.example.com/", "", `vault "https://other.example.com/" is not a Key Vault URL such as https://othervault.vault.azure.cn/`},
		{"o", "", `"o" is not a valid vault name`},
	} {
		got, err := ResolveEntryVault(tc.v, AzureChinaCloud, pod)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ResolveEntryVault(%q) = %q, %v; want an error containing %q", tc.v, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ResolveEntryVault(%q) = %q, %v; want %q", tc.v, got, err, tc.want)
		}
	}
}
