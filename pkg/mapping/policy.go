package mapping

import (
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Namespace annotations that cluster admins set to restrict what the namespace's pods
// may use. They are policy, not defaults: a pod cannot widen them, and they are
// checked on every admission, whatever the pod claims (kvinject.dev/status, or a
// container that looks like an agent). Only people who may edit the Namespace, not
// those who may create pods in it, should be able to change them.
const (
	// AnnotationAllowedVaults lists the vaults the namespace's pods may read: names,
	// globs such as "team-a-*", or vault URLs (which also pin the cloud).
	AnnotationAllowedVaults = Prefix + "allowed-vaults"
	// AnnotationAllowedIdentities lists the identities the namespace's pods may use:
	// "workload" (any ServiceAccount-federated identity), "workload:<client-id>",
	// "managed:<client-id>", "managed:*" and "system".
	AnnotationAllowedIdentities = Prefix + "allowed-identities"
)

// Policy is the webhook's cluster-wide ceiling, from its flags. Empty lists allow everything.
type Policy struct {
	// AllowedVaults applies to every namespace, as AnnotationAllowedVaults does to one.
	AllowedVaults []string
	// ManagedIdentityNamespaces are globs of the namespaces whose pods may use a
	// managed identity (managed or system). A managed identity is shared by every pod
	// on the node pool, so admins usually limit it to the namespaces it was made for.
	ManagedIdentityNamespaces []string
}

// Validate checks the policy's patterns, naming the flag at fault.
func (p Policy) Validate() error {
	var probs problems
	for _, v := range p.AllowedVaults {
		if err := validVaultPattern(v); err != nil {
			probs.add("--allowed-vaults", "%v", err)
		}
	}
	for _, n := range p.ManagedIdentityNamespaces {
		if _, err := path.Match(n, ""); err != nil || n == "" {
			probs.add("--managed-identity-namespaces", "%q is not a namespace name or glob", n)
		}
	}
	if len(probs) > 0 {
		return &agentconfig.InvalidError{Problems: probs}
	}
	return nil
}

// checkPolicy adds a problem for every rule of the webhook's policy or the
// namespace's annotations that the resolved spec breaks.
func checkPolicy(spec *Spec, namespace string, nsAnn map[string]string, pol Policy, probs *problems) {
	if spec.VaultURL != "" {
		// Every vault the agent reads: the pod's, then each entry's own
		// (vault=), named by the first entry that reads it.
		where := []string{AnnotationVault}
		vaults := []string{spec.VaultURL}
		for _, e := range spec.Entries {
			if e.Vault != "" && !slices.Contains(vaults, e.Vault) {
				vaults = append(vaults, e.Vault)
				where = append(where, fmt.Sprintf("%s: entry %q", AnnotationSecrets, e.String()))
			}
		}
		var allowed []string
		nsRaw, nsHas := nsAnn[AnnotationAllowedVaults]
		if nsHas {
			allowed = splitList(nsRaw)
			for _, v := range allowed {
				if err := validVaultPattern(v); err != nil {
					probs.add(fmt.Sprintf("namespace %q annotation %s", namespace, AnnotationAllowedVaults), "%v; ask a cluster admin to fix it", err)
					nsHas = false
				}
			}
		}
		for i, vault := range vaults {
			if len(pol.AllowedVaults) > 0 && !vaultAllowed(vault, pol.AllowedVaults) {
				probs.add(where[i], "vault %s is not allowed by the webhook's --allowed-vaults (%s); ask a cluster admin", vault, strings.Join(pol.AllowedVaults, ", "))
			}
			if nsHas && !vaultAllowed(vault, allowed) {
				probs.add(where[i], "vault %s is not allowed in namespace %q by its annotation %s (%s); ask a cluster admin", vault, namespace, AnnotationAllowedVaults, strings.Join(allowed, ", "))
			}
		}
	}
	id := spec.Identity
	if id.Kind == "" {
		return
	}
	if (id.Kind == agentconfig.IdentityManaged || id.Kind == agentconfig.IdentitySystem) && len(pol.ManagedIdentityNamespaces) > 0 && !matchAny(namespace, pol.ManagedIdentityNamespaces) {
		probs.add(AnnotationIdentity, "%s: the webhook's --managed-identity-namespaces (%s) does not allow managed identities in namespace %q; use workload identity, or ask a cluster admin", describeIdentity(id), strings.Join(pol.ManagedIdentityNamespaces, ", "), namespace)
	}
	if raw, ok := nsAnn[AnnotationAllowedIdentities]; ok {
		allowed := splitList(raw)
		ok, err := identityAllowed(id, allowed)
		switch {
		case err != nil:
			probs.add(fmt.Sprintf("namespace %q annotation %s", namespace, AnnotationAllowedIdentities), "%v; ask a cluster admin to fix it", err)
		case !ok:
			probs.add(AnnotationIdentity, "%s is not allowed in namespace %q by its annotation %s (%s); ask a cluster admin", describeIdentity(id), namespace, AnnotationAllowedIdentities, strings.Join(allowed, ", "))
		}
	}
}

func describeIdentity(id Identity) string {
	switch id.Kind {
	case agentconfig.IdentitySystem:
		return "the system-assigned identity"
	case agentconfig.IdentityWorkload:
		return "workload identity " + id.ClientID
	}
	return "managed identity " + id.ClientID
}

// identityAllowed matches an identity against an allow-list.
func identityAllowed(id Identity, allowed []string) (bool, error) {
	match := false
	for _, a := range allowed {
		kind, client, hasClient := strings.Cut(strings.ToLower(a), ":")
		switch agentconfig.IdentityKind(kind) {
		case agentconfig.IdentityWorkload, agentconfig.IdentityManaged:
			if hasClient && client != "*" && !agentconfig.IsGUID(client) {
				return false, fmt.Errorf("%q: the client ID must be a GUID or *", a)
			}
			if agentconfig.IdentityKind(kind) == agentconfig.IdentityManaged && !hasClient {
				return false, fmt.Errorf("%q: write managed:<client-id> or managed:*", a)
			}
			if id.Kind == agentconfig.IdentityKind(kind) && (!hasClient || client == "*" || client == id.ClientID) {
				match = true
			}
		case agentconfig.IdentitySystem:
			if hasClient {
				return false, fmt.Errorf("%q: system takes no client ID", a)
			}
			match = match || id.Kind == agentconfig.IdentitySystem
		default:
			return false, fmt.Errorf("%q: use workload, workload:<client-id>, managed:<client-id>, managed:* or system", a)
		}
	}
	return match, nil
}

// validVaultPattern checks one allowed-vaults entry: a vault name or glob, or a vault URL.
func validVaultPattern(p string) error {
	if strings.Contains(p, "/") {
		u, err := url.Parse(p)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("%q is neither a vault name, a glob such as team-a-*, nor an https vault URL", p)
		}
		return nil
	}
	if p == "" || strings.Trim(p, globChars) != "" {
		return fmt.Errorf("%q is neither a vault name, a glob such as team-a-*, nor an https vault URL", p)
	}
	return nil
}

// vaultAllowed matches a resolved vault URL ("https://name.suffix/") against names,
// globs and URLs.
func vaultAllowed(vaultURL string, allowed []string) bool {
	host := strings.TrimSuffix(strings.TrimPrefix(vaultURL, "https://"), "/")
	name, _, _ := strings.Cut(host, ".")
	for _, a := range allowed {
		a = strings.ToLower(a)
		if strings.Contains(a, "/") {
			if u, err := url.Parse(a); err == nil && strings.EqualFold(u.Hostname(), host) {
				return true
			}
			continue
		}
		if ok, _ := path.Match(a, name); ok {
			return true
		}
	}
	return false
}

func matchAny(s string, globs []string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

// splitList splits a comma- or newline-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' }) {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// globChars are the characters of a vault name pattern: a vault name's, and the
// glob's '*' and '?'.
const globChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-*?"
