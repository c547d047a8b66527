package mapping

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Identity is a resolved Azure identity.
type Identity struct {
	Kind agentconfig.IdentityKind
	// ClientID is the application (client) ID; empty for IdentitySystem.
	ClientID string
	// TenantID is the Azure AD tenant; required for IdentityWorkload.
	TenantID string
}

var tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$`)

// identityChoice is a parsed identity annotation: a kind and, for managed, an optional client ID.
type identityChoice struct {
	kind     agentconfig.IdentityKind
	clientID string
}

// parseIdentity parses "workload", "managed", "managed:<client-id>" or "system"
// (agentconfig.ParseIdentity), saying where the client ID of the other kinds comes from.
func parseIdentity(s string) (identityChoice, error) {
	kind, clientID, err := agentconfig.ParseIdentity(s)
	var ie *agentconfig.IdentityError
	if errors.As(err, &ie) {
		switch ie.Kind {
		case agentconfig.IdentityWorkload:
			return identityChoice{}, fmt.Errorf("%q: workload identity takes its client ID from the ServiceAccount annotation %s, not from here", s, AnnotationWIClientID)
		case agentconfig.IdentitySystem:
			return identityChoice{}, fmt.Errorf("%q: a system-assigned identity has no client ID; use managed:<client-id> for a user-assigned one", s)
		}
	}
	if err != nil {
		return identityChoice{}, err
	}
	return identityChoice{kind: kind, clientID: clientID}, nil
}

// validateTenant checks a tenant ID: a GUID or a domain such as contoso.onmicrosoft.com.
func validateTenant(s string) error {
	if !tenantRE.MatchString(s) {
		return fmt.Errorf("%q is not a tenant ID: use the directory's GUID or its domain (letters, digits, '.', '-')", s)
	}
	return nil
}
