package mapping

import (
	"fmt"
	"regexp"
	"strings"
)

// IdentityKind is how the agent authenticates to Azure.
type IdentityKind string

// The identity kinds.
const (
	// IdentityWorkload uses a federated ServiceAccount token (azure-workload-identity).
	IdentityWorkload IdentityKind = "workload"
	// IdentityManaged uses a user-assigned managed identity, chosen by client ID.
	IdentityManaged IdentityKind = "managed"
	// IdentitySystem uses the node's system-assigned managed identity.
	IdentitySystem IdentityKind = "system"
)

// Identity is a resolved Azure identity.
type Identity struct {
	Kind IdentityKind
	// ClientID is the application (client) ID; empty for IdentitySystem.
	ClientID string
	// TenantID is the Azure AD tenant; required for IdentityWorkload.
	TenantID string
}

var (
	guidRE   = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)
	tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$`)
)

// identityChoice is a parsed identity annotation: a kind and, for managed, an optional client ID.
type identityChoice struct {
	kind     IdentityKind
	clientID string
}

// parseIdentity parses "workload", "managed", "managed:<client-id>" or "system".
func parseIdentity(s string) (identityChoice, error) {
	kind, id, hasID := strings.Cut(strings.TrimSpace(s), ":")
	switch IdentityKind(strings.ToLower(kind)) {
	case IdentityWorkload:
		if hasID {
			return identityChoice{}, fmt.Errorf("%q: workload identity takes its client ID from the ServiceAccount annotation %s, not from here", s, AnnotationWIClientID)
		}
		return identityChoice{kind: IdentityWorkload}, nil
	case IdentitySystem:
		if hasID {
			return identityChoice{}, fmt.Errorf("%q: a system-assigned identity has no client ID; use managed:<client-id> for a user-assigned one", s)
		}
		return identityChoice{kind: IdentitySystem}, nil
	case IdentityManaged:
		if hasID && !guidRE.MatchString(id) {
			return identityChoice{}, fmt.Errorf("%q: client ID %q must be a GUID like 00000000-0000-0000-0000-000000000000", s, id)
		}
		return identityChoice{kind: IdentityManaged, clientID: strings.ToLower(id)}, nil
	}
	return identityChoice{}, fmt.Errorf("%q: use workload, managed, managed:<client-id> or system", s)
}

// validateTenant checks a tenant ID: a GUID or a domain such as contoso.onmicrosoft.com.
func validateTenant(s string) error {
	if !tenantRE.MatchString(s) {
		return fmt.Errorf("%q is not a tenant ID: use the directory's GUID or its domain (letters, digits, '.', '-')", s)
	}
	return nil
}
