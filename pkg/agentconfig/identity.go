package agentconfig

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

// ParseIdentityKind parses the agent's --identity: exactly workload, managed or
// system (the client ID and tenant are in the environment).
func ParseIdentityKind(s string) (IdentityKind, error) {
	switch k := IdentityKind(s); k {
	case IdentityWorkload, IdentityManaged, IdentitySystem:
		return k, nil
	}
	return "", fmt.Errorf("%q: use workload, managed or system", s)
}

var guidRE = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)

// IsGUID reports whether s is a GUID such as a client ID,
// 00000000-0000-0000-0000-000000000000 (either case).
func IsGUID(s string) bool { return guidRE.MatchString(s) }

// ParseIdentity parses an identity as users write it (kvinject.dev/identity,
// the webhook's --default-identity, the doctor's --identity): "workload",
// "managed", "managed:<client-id>" or "system", the kind in any case, around
// spaces. It returns the kind and the client ID in lower case (empty unless
// written). Its errors are *IdentityError.
func ParseIdentity(s string) (IdentityKind, string, error) {
	kind, id, hasID := strings.Cut(strings.TrimSpace(s), ":")
	k := IdentityKind(strings.ToLower(kind))
	switch k {
	case IdentityWorkload, IdentitySystem:
		if hasID {
			return "", "", &IdentityError{Value: s, Kind: k, ClientID: id}
		}
		return k, "", nil
	case IdentityManaged:
		if hasID && !IsGUID(id) {
			return "", "", &IdentityError{Value: s, Kind: k, ClientID: id}
		}
		return k, strings.ToLower(id), nil
	}
	return "", "", &IdentityError{Value: s}
}

// IdentityError is a value that ParseIdentity refuses. Callers that know where
// the client ID belongs may say so instead of Error's generic message.
type IdentityError struct {
	// Value is the value as written.
	Value string
	// Kind is the kind written before ':', "" when it is none of the kinds.
	Kind IdentityKind
	// ClientID is what follows ':': not allowed for workload and system, not a
	// GUID for managed.
	ClientID string
}

// Error says what is wrong with the value.
func (e *IdentityError) Error() string {
	switch e.Kind {
	case "":
		return fmt.Sprintf("%q: use workload, managed, managed:<client-id> or system", e.Value)
	case IdentityManaged:
		return fmt.Sprintf("%q: client ID %q must be a GUID like 00000000-0000-0000-0000-000000000000", e.Value, e.ClientID)
	}
	return fmt.Sprintf("%q: only managed takes a client ID (managed:<client-id>)", e.Value)
}
