package agent

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Env is what the agent reads from its environment: the variables agentconfig
// names (Env*), which the webhook sets, and the two test-only ones it never sets.
type Env struct {
	ClientID       string
	TenantID       string
	AuthorityHost  string
	TokenFile      string
	PodName        string
	PodNamespace   string
	ServiceAccount string
	// HubTokenFile and HubCA are set with --hub: the projected token the
	// agent presents to the hub, and the PEM roots it trusts for the hub.
	HubTokenFile string
	HubCA        string
	TestCAFile   string
	TestResolve  string
	// Product names the program in the User-Agent of its Azure requests, for
	// Key Vault's and Azure AD's audit logs; empty means "kvinject-agent". Not
	// read from the environment: the version hub, which builds its clients
	// with NewClients, sets "kvinject-hub".
	Product string
}

// ReadEnv reads the agent's environment through getenv (os.Getenv when nil).
func ReadEnv(getenv func(string) string) Env {
	if getenv == nil {
		getenv = os.Getenv
	}
	g := func(k string) string { return strings.TrimSpace(getenv(k)) }
	return Env{
		ClientID:       g(agentconfig.EnvClientID),
		TenantID:       g(agentconfig.EnvTenantID),
		AuthorityHost:  g(agentconfig.EnvAuthorityHost),
		TokenFile:      g(agentconfig.EnvTokenFile),
		PodName:        g(agentconfig.EnvPodName),
		PodNamespace:   g(agentconfig.EnvPodNamespace),
		ServiceAccount: g(agentconfig.EnvServiceAccount),
		HubTokenFile:   g(agentconfig.EnvHubTokenFile),
		HubCA:          g(agentconfig.EnvHubCA),
		TestCAFile:     g(agentconfig.EnvTestCAFile),
		TestResolve:    g(agentconfig.EnvTestResolve),
	}
}

// Pod returns "<namespace>/<name>" with anything but DNS-label characters
// dropped, or "" when neither is known.
func (e Env) Pod() string {
	if e.PodNamespace == "" && e.PodName == "" {
		return ""
	}
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
				return r
			}
			return -1
		}, s)
	}
	return clean(e.PodNamespace) + "/" + clean(e.PodName)
}

// tokenClaims are the public claims of a projected service account token.
type tokenClaims struct {
	Issuer   string
	Subject  string
	Audience []string
}

// readTokenClaims decodes (without verifying) the payload of the JWT in file.
// The token itself is a credential: it is never logged or returned.
func readTokenClaims(file string) (tokenClaims, bool) {
	if file == "" {
		return tokenClaims{}, false
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return tokenClaims{}, false
	}
	parts := strings.Split(strings.TrimSpace(string(b)), ".")
	if len(parts) != 3 {
		return tokenClaims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return tokenClaims{}, false
	}
	var raw struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(payload, &raw) != nil {
		return tokenClaims{}, false
	}
	c := tokenClaims{Issuer: raw.Iss, Subject: raw.Sub}
	var one string
	if json.Unmarshal(raw.Aud, &one) == nil {
		c.Audience = []string{one}
	} else {
		_ = json.Unmarshal(raw.Aud, &c.Audience)
	}
	return c, true
}
