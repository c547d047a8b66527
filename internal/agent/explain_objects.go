package agent

import (
	"fmt"
	"net/http"
	"regexp"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// The explanations of Key Vault's answers about certificates and keys (typed
// entries cert: and key:), called from keyVaultReason; the phrasing follows
// the secrets' explanations in explain.go.

var (
	// objectPermRE finds the object kind an access-policy denial names.
	objectPermRE = regexp.MustCompile(`does not have (certificates|keys) (\w+) permission`)
	// objectActionRE finds a certificates or keys data action an RBAC denial names.
	objectActionRE = regexp.MustCompile(`Action: '(Microsoft\.KeyVault/vaults/(certificates|keys)/[^']+)'`)
)

// objectReason explains Key Vault's answers about certificates and keys:
// missing access-policy permissions or role assignments, and missing objects.
// ok is false for every other answer.
func objectReason(re *azcore.ResponseError, kv kvError, head, inner, code string, p principal, vault, vaultScope string, se *SecretError) (why, fix string, ok bool) {
	name, version := "<name>", ""
	if se != nil {
		name, version = se.Name, se.Version
	}
	switch {
	case re.StatusCode == http.StatusForbidden && (inner == "AccessDenied" || inner == "ForbiddenByPolicy"):
		m := objectPermRE.FindStringSubmatch(kv.Message)
		if m == nil {
			return "", "", false
		}
		objects, flag := m[1], "--certificate-permissions"
		if objects == "keys" {
			flag = "--key-permissions"
		}
		return head + ": the vault uses access policies and " + p.desc + " may not " + m[2] + " its " + objects,
			fmt.Sprintf("grant the identity %s '%s' on %s with an access policy (az keyvault set-policy --name %s %s %s %s), or the 'Key Vault Reader' role, which reads certificates and public keys but no secret values (az role assignment create --role 'Key Vault Reader' %s --scope %s)",
				p.id(), m[2], objects, vault, p.policyArg(), flag, m[2], p.assigneeArg(), vaultScope), true
	case re.StatusCode == http.StatusForbidden && inner == "ForbiddenByRbac":
		m := objectActionRE.FindStringSubmatch(kv.Message)
		if m == nil {
			return "", "", false
		}
		scope := vaultScope
		if r := resourceRE.FindStringSubmatch(kv.Message); r != nil {
			scope = r[1]
		}
		return head + ": the vault uses Azure RBAC and " + p.desc + " has no role assignment that allows reading " + m[2] + " (" + m[1] + ")",
			fmt.Sprintf("assign the identity %s the 'Key Vault Reader' role, which reads certificates and public keys but no secret values (az role assignment create --role 'Key Vault Reader' %s --scope %s); new role assignments take a few minutes to apply",
				p.id(), p.assigneeArg(), scope), true
	case re.StatusCode == http.StatusNotFound && (code == "CertificateNotFound" || code == "KeyNotFound"):
		object, kind, list := "certificate", "cert", "az keyvault certificate list"
		if code == "KeyNotFound" {
			object, kind, list = "key", "key", "az keyvault key list"
		}
		if version != "" {
			return head + fmt.Sprintf(": the vault has no version %s of %s %q", version, object, name),
				fmt.Sprintf("check the name and version in kvinject.dev/secrets; list the versions with %s-versions --vault-name %s --name %s", list, vault, name), true
		}
		return head + fmt.Sprintf(": the vault has no %s named %q (or it was deleted)", object, name),
			fmt.Sprintf("check the name in kvinject.dev/secrets (%s:<name> reads a %s; <file>=<name> reads a secret); list the vault's %ss with %s --vault-name %s --query \"[].name\"",
				kind, object, object, list, vault), true
	}
	return "", "", false
}
