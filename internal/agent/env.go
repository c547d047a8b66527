package agent

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"strings"
)

// Environment variables the agent reads. The webhook sets the first seven;
// the two test-only ones are never set by the webhook.
const (
	// EnvClientID is the identity's client ID (workload and user-assigned managed identity).
	EnvClientID = "AZURE_CLIENT_ID"
	// EnvTenantID is the identity's tenant (workload identity).
	EnvTenantID = "AZURE_TENANT_ID"
	// EnvAuthorityHost is the cloud's Azure AD, e.g. https://login.microsoftonline.com/.
	EnvAuthorityHost = "AZURE_AUTHORITY_HOST"
	// EnvTokenFile is the projected service account token (workload identity).
	EnvTokenFile = "AZURE_FEDERATED_TOKEN_FILE"
	// EnvPodName is the pod's name (downward API), for audit logs.
	EnvPodName = "POD_NAME"
	// EnvPodNamespace is the pod's namespace (downward API), for audit logs and messages.
	EnvPodNamespace = "POD_NAMESPACE"
	// EnvServiceAccount is the pod's ServiceAccount (downward API), for messages.
	EnvServiceAccount = "KVINJECT_SERVICE_ACCOUNT"
	// EnvTestCAFile names a PEM file; when set, the agent trusts only those
	// roots. For tests against a local emulator only.
	EnvTestCAFile = "KVINJECT_TEST_CA_FILE"
	// EnvTestResolve overrides dialing, "host=ip:port,*.suffix=ip:port,...",
	// keeping the real host names for TLS and Key Vault's challenge. For tests
	// against a local emulator only.
	EnvTestResolve = "KVINJECT_TEST_RESOLVE"
)

// Env is what the agent reads from its environment.
type Env struct {
	ClientID       string
	TenantID       string
	AuthorityHost  string
	TokenFile      string
	PodName        string
	PodNamespace   string
	ServiceAccount string
	TestCAFile     string
	TestResolve    string
}

// ReadEnv reads the agent's environment through getenv (os.Getenv when nil).
func ReadEnv(getenv func(string) string) Env {
	if getenv == nil {
		getenv = os.Getenv
	}
	g := func(k string) string { return strings.TrimSpace(getenv(k)) }
	return Env{
		ClientID:       g(EnvClientID),
		TenantID:       g(EnvTenantID),
		AuthorityHost:  g(EnvAuthorityHost),
		TokenFile:      g(EnvTokenFile),
		PodName:        g(EnvPodName),
		PodNamespace:   g(EnvPodNamespace),
		ServiceAccount: g(EnvServiceAccount),
		TestCAFile:     g(EnvTestCAFile),
		TestResolve:    g(EnvTestResolve),
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
