package mapping

import (
	"strings"
	"testing"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

func TestVaultAllowed(t *testing.T) {
	allowed := []string{"team-a-*", "https://Shared.vault.azure.net/", "exact"}
	for url, want := range map[string]bool{
		"https://team-a-orders.vault.azure.net/": true,
		"https://team-a-orders.vault.azure.cn/":  true,
		"https://team-b-orders.vault.azure.net/": false,
		"https://shared.vault.azure.net/":        true,
		"https://shared.vault.azure.cn/":         false,
		"https://exact.vault.azure.net/":         true,
		"https://exactly.vault.azure.net/":       false,
	} {
		if got := vaultAllowed(url, allowed); got != want {
			t.Errorf("vaultAllowed(%s) = %v, want %v", url, got, want)
		}
	}
}

func TestIdentityAllowed(t *testing.T) {
	const a, b = "0d9f8e7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f", "5e8c2a1f-3b4d-4c6e-9f0a-1b2c3d4e5f60"
	tests := []struct {
		id      Identity
		allowed string
		want    bool
		wantErr string
	}{
		{Identity{Kind: agentconfig.IdentityWorkload, ClientID: a}, "workload", true, ""},
		{Identity{Kind: agentconfig.IdentityWorkload, ClientID: a}, "workload:" + b, false, ""},
		{Identity{Kind: agentconfig.IdentityWorkload, ClientID: a}, "workload:" + strings.ToUpper(a), true, ""},
		{Identity{Kind: agentconfig.IdentityManaged, ClientID: a}, "workload", false, ""},
		{Identity{Kind: agentconfig.IdentityManaged, ClientID: a}, "managed:*", true, ""},
		{Identity{Kind: agentconfig.IdentityManaged, ClientID: a}, "managed:" + b + ", managed:" + a, true, ""},
		{Identity{Kind: agentconfig.IdentitySystem}, "managed:*", false, ""},
		{Identity{Kind: agentconfig.IdentitySystem}, "system", true, ""},
		{Identity{Kind: agentconfig.IdentitySystem}, "managed", false, "write managed:<client-id> or managed:*"},
		{Identity{Kind: agentconfig.IdentitySystem}, "system:x", false, "system takes no client ID"},
		{Identity{Kind: agentconfig.IdentitySystem}, "workload:nope", false, "must be a GUID or *"},
		{Identity{Kind: agentconfig.IdentitySystem}, "pod", false, "use workload"},
	}
	for _, tt := range tests {
		got, err := identityAllowed(tt.id, splitList(tt.allowed))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("identityAllowed(%+v, %q) error %v, want %q", tt.id, tt.allowed, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("identityAllowed(%+v, %q) = %v, %v; want %v", tt.id, tt.allowed, got, err, tt.want)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	if err := (Policy{AllowedVaults: []string{"a-*", "https://x.vault.azure.net/"}, ManagedIdentityNamespaces: []string{"platform-*"}}).Validate(); err != nil {
		t.Error(err)
	}
	err := Policy{AllowedVaults: []string{"a b", "http://x/"}, ManagedIdentityNamespaces: []string{"[bad"}}.Validate()
	for _, want := range []string{`"a b"`, `"http://x/"`, `"[bad"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v lacks %s", err, want)
		}
	}
}
