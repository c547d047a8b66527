package agentconfig

import "testing"

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
