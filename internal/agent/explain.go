package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// MaxMessage is the size limit of a termination message; kubelet truncates
// longer ones.
const MaxMessage = 4096

// SecretError is a failed read of one secret (or certificate, or key), or a
// value that cannot become the entry's files (Err is then a *ContentError).
type SecretError struct {
	// Name and Version are the secret as the mapping names it; Version is
	// empty for the latest.
	Name, Version string
	// File is the (first) file the secret was for.
	File string
	// Vault is the vault URL.
	Vault string
	// Object is what was read: "secret" (also when empty), "certificate" or "key".
	Object string
	// List is set when listing the secret's versions failed (history entries).
	List bool
	// Err is the SDK's error.
	Err error
	// OtherVault is set when Vault is the entry's own (vault=), not the
	// pod's: logs then name it (the agent's logger names the pod's).
	OtherVault bool
}

// Error names the secret, the vault and the SDK's error.
func (e *SecretError) Error() string {
	return fmt.Sprintf("%s %s in %s: %v", e.object(), e.ref(), e.Vault, e.Err)
}

// object is e.Object, "secret" when empty.
func (e *SecretError) object() string { return orPlaceholder(e.Object, "secret") }

// what says what failed: "read secret "X"", "list the versions of secret "X"".
func (e *SecretError) what() string {
	if e.List {
		return "list the versions of " + e.object() + " " + e.ref()
	}
	return "read " + e.object() + " " + e.ref()
}

// Unwrap returns the SDK's error.
func (e *SecretError) Unwrap() error { return e.Err }

func (e *SecretError) ref() string {
	if e.Version != "" {
		return fmt.Sprintf("%q version %s", e.Name, e.Version)
	}
	return fmt.Sprintf("%q", e.Name)
}

// ConfigError is a problem with the agent's own configuration or
// environment; its message already says what to fix.
type ConfigError struct{ Msg string }

// Error returns the message.
func (e *ConfigError) Error() string { return e.Msg }

// GiveUpError is a transient error that outlasted the retry time bound.
type GiveUpError struct {
	After    time.Duration
	Attempts int
	Err      error
}

// Error says how long the agent tried and the last error.
func (e *GiveUpError) Error() string {
	return fmt.Sprintf("still failing after %s (%d attempts): %v", e.After, e.Attempts, e.Err)
}

// Unwrap returns the last error.
func (e *GiveUpError) Unwrap() error { return e.Err }

// Facts are what Explain knows about the agent's situation.
type Facts struct {
	// VaultURL is the vault, e.g. https://myvault.vault.azure.net/.
	VaultURL string
	// Identity is the identity kind.
	Identity agentconfig.IdentityKind
	// ClientID and TenantID are AZURE_CLIENT_ID and AZURE_TENANT_ID.
	ClientID, TenantID string
	// Namespace and ServiceAccount are the pod's.
	Namespace, ServiceAccount string
	// AuthorityHost is AZURE_AUTHORITY_HOST.
	AuthorityHost string
	// Issuer and Subject are the claims of the projected service account token
	// (workload identity), when readable.
	Issuer, Subject string
}

// FactsFrom collects Facts from the configuration and the environment. For
// workload identity it decodes (without verifying) the public claims of the
// projected token; the token itself is never kept.
func FactsFrom(cfg agentconfig.Config, env Env) Facts {
	f := Facts{
		VaultURL: cfg.VaultURL, Identity: cfg.Identity,
		ClientID: env.ClientID, TenantID: env.TenantID, AuthorityHost: env.AuthorityHost,
		Namespace: env.PodNamespace, ServiceAccount: env.ServiceAccount,
	}
	if cfg.Identity == agentconfig.IdentityWorkload {
		if c, ok := readTokenClaims(env.TokenFile); ok {
			f.Issuer, f.Subject = c.Issuer, c.Subject
		}
	}
	return f
}

// vaultName is the first label of the vault's host.
func (f Facts) vaultName() string { return VaultName(f.VaultURL) }

// VaultName is the vault's name, the first label of its URL's host, as az
// commands take it (--vault-name); a string that is no URL is returned as it is.
func VaultName(vaultURL string) string {
	u, err := url.Parse(vaultURL)
	if err != nil || u.Host == "" {
		return vaultURL
	}
	name, _, _ := strings.Cut(u.Hostname(), ".")
	return name
}

// Explain turns an error of the agent into the short, specific message it
// writes to its termination log (what `kubectl describe pod` shows): which
// secret and vault, the HTTP status and Key Vault or Azure AD error codes, and
// the fix. It is the only place that phrases failures for people. Messages
// never contain secret values: Key Vault and Azure AD do not put them into
// errors, and the agent never puts them into errors.
func Explain(err error, f Facts) string {
	if err == nil {
		return ""
	}
	var ce *ConfigError
	if errors.As(err, &ce) {
		return truncate("kvinject-agent: "+ce.Msg, MaxMessage)
	}
	if errors.Is(err, ErrStopped) {
		return truncate("kvinject-agent: "+err.Error(), MaxMessage)
	}
	what := "kvinject-agent: cannot read secrets from vault " + f.vaultName()
	var se *SecretError
	if errors.As(err, &se) {
		if se.Vault != "" {
			f.VaultURL = se.Vault // an entry's own vault: its fixes name it
		}
		what = fmt.Sprintf("kvinject-agent: cannot %s from vault %s", se.what(), f.vaultName())
	}
	var ge *GiveUpError
	if errors.As(err, &ge) {
		what += fmt.Sprintf(", still failing after %s (%d attempts)", ge.After.Round(time.Second), ge.Attempts)
		err = ge.Err // explain the last failure, not the retry bookkeeping again
	}
	why, fix := reason(err, f, se)
	msg := what + ": " + why
	if fix != "" {
		msg += ". Fix: " + fix
	}
	return truncate(msg, MaxMessage)
}

// Reason returns why err happened and how to fix it, as Explain phrases them
// but without Explain's head ("kvinject-agent: cannot read secret ... from
// vault ..."), for callers that name the secret and the vault themselves (the
// doctor). A *ConfigError's message is split at its ". Fix: ".
func Reason(err error, f Facts) (why, fix string) {
	if err == nil {
		return "", ""
	}
	var ce *ConfigError
	if errors.As(err, &ce) {
		why, fix, _ = strings.Cut(ce.Msg, ". Fix: ")
		return why, fix
	}
	var ge *GiveUpError
	if errors.As(err, &ge) {
		err = ge.Err
	}
	var se *SecretError
	if errors.As(err, &se) && se.Vault != "" {
		f.VaultURL = se.Vault
	}
	return reason(err, f, se)
}

// IsSecretNotFound reports whether err is Key Vault's answer that a secret,
// or the pinned version of one, does not exist (404 SecretNotFound).
func IsSecretNotFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound && re.ErrorCode == "SecretNotFound"
}

// IsSecretDisabled reports whether err is Key Vault's answer that a secret
// version is disabled (403 with inner error SecretDisabled).
func IsSecretDisabled(err error) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
		return false
	}
	for _, c := range parseKVError(re.RawResponse).Inner {
		if c == "SecretDisabled" {
			return true
		}
	}
	return false
}

// kvError is Key Vault's error body.
type kvError struct {
	Code, Message string
	Inner         []string
}

// parseKVError reads a Key Vault error body: {"error":{"code", "message", "innererror":{"code", "innererror":...}}}.
func parseKVError(resp *http.Response) kvError {
	var e kvError
	if resp == nil {
		return e
	}
	body, err := runtime.Payload(resp)
	if err != nil {
		return e
	}
	type inner struct {
		Code       string          `json:"code"`
		InnerError json.RawMessage `json:"innererror"`
	}
	var b struct {
		Error struct {
			Code       string          `json:"code"`
			Message    string          `json:"message"`
			InnerError json.RawMessage `json:"innererror"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &b) != nil {
		return e
	}
	e.Code, e.Message = b.Error.Code, b.Error.Message
	raw := b.Error.InnerError
	for len(raw) > 0 && len(e.Inner) < 5 {
		var in inner
		if json.Unmarshal(raw, &in) != nil || in.Code == "" {
			break
		}
		e.Inner = append(e.Inner, in.Code)
		raw = in.InnerError
	}
	return e
}

// aadError is Azure AD's OAuth error body, or a managed-identity endpoint's.
type aadError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	Codes       []int  `json:"error_codes"`
	// Message is the App Service managed-identity endpoint's field.
	Message string `json:"message"`
}

func parseAADError(resp *http.Response) aadError {
	var e aadError
	if resp == nil {
		return e
	}
	if body, err := runtime.Payload(resp); err == nil {
		_ = json.Unmarshal(body, &e)
	}
	return e
}

// status renders "HTTP 403 Forbidden".
func status(code int) string {
	return strings.TrimSpace(fmt.Sprintf("HTTP %d %s", code, http.StatusText(code)))
}

var (
	callerRE      = regexp.MustCompile(`appid=([0-9A-Za-z-]+);\s*oid=([0-9A-Za-z-]+)`)
	resourceRE    = regexp.MustCompile(`(?i)Resource: '(/subscriptions/[^']*?/vaults/[^'/]+)`)
	clientAddrRE  = regexp.MustCompile(`Client address: ([0-9A-Fa-f.:]+)`)
	foundIssuerRE = regexp.MustCompile(`Found: https://sts\.windows\.net/([^/]+)/`)
	challengeRE   = regexp.MustCompile(`authorization="?https://[^/"]+/([^/",\s]+)`)
	otherTenantRE = regexp.MustCompile(`tokens for tenant "([^"]+)"`)
	assertionRE   = regexp.MustCompile(`Assertion (Issuer|Subject|Audience): '([^']*)'`)
	hostRE        = regexp.MustCompile(`https://([^/\s"':]+)`)
	// policyPermRE finds the permission an access-policy denial names.
	policyPermRE = regexp.MustCompile(`does not have secrets (\w+) permission`)
	// rbacActionRE finds the data action an RBAC denial names.
	rbacActionRE = regexp.MustCompile(`Action: '(Microsoft\.KeyVault/vaults/secrets/[^']+)'`)
	// resourcePrincipalRE finds the resource of AADSTS500011: "The resource
	// principal named https://vault.usgovcloudapi.net was not found".
	resourcePrincipalRE = regexp.MustCompile(`resource principal named (\S+) was not found`)
)

// principal names the identity in commands: --spn/--assignee take a client
// ID; a system-assigned identity is known by its object ID only.
type principal struct {
	desc     string // "workload identity <id>"
	clientID string
	objectID string
}

func principalOf(f Facts, kvMessage string) principal {
	p := principal{clientID: f.ClientID}
	if m := callerRE.FindStringSubmatch(kvMessage); m != nil {
		if p.clientID == "" {
			p.clientID = m[1]
		}
		p.objectID = m[2]
	}
	switch f.Identity {
	case agentconfig.IdentityWorkload:
		p.desc = "workload identity " + p.clientID
	case agentconfig.IdentityManaged:
		p.desc = "managed identity " + p.clientID
	case agentconfig.IdentitySystem:
		p.desc = "the node's system-assigned managed identity"
		if p.objectID != "" {
			p.desc += " (object ID " + p.objectID + ")"
		}
		p.clientID = ""
	default:
		p.desc = "identity " + p.clientID
	}
	return p
}

// policyArg and assigneeArg are the az arguments naming the principal.
func (p principal) policyArg() string {
	if p.clientID == "" && p.objectID != "" {
		return "--object-id " + p.objectID
	}
	return "--spn " + orPlaceholder(p.clientID, "<client-id>")
}

func (p principal) assigneeArg() string {
	if p.clientID == "" && p.objectID != "" {
		return "--assignee-object-id " + p.objectID + " --assignee-principal-type ServicePrincipal"
	}
	return "--assignee " + orPlaceholder(p.clientID, "<client-id>")
}

func (p principal) id() string {
	return orPlaceholder(p.clientID, orPlaceholder(p.objectID, "<client-id>"))
}

func orPlaceholder(s, placeholder string) string {
	if s == "" {
		return placeholder
	}
	return s
}

// reason returns why err happened and how to fix it.
func reason(err error, f Facts, se *SecretError) (why, fix string) {
	vault := f.vaultName()
	var ce *ContentError
	if errors.As(err, &ce) {
		return ce.Why, ce.Fix
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return keyVaultReason(re, f, se)
	}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) {
		if f.Identity == agentconfig.IdentityManaged || f.Identity == agentconfig.IdentitySystem {
			return managedIdentityReason(afe, f)
		}
		return aadReason(afe, f)
	}
	msg := err.Error()
	if m := otherTenantRE.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("the vault belongs to tenant %s (its 401 challenge says so), but workload identity %s signs in to tenant %s (AZURE_TENANT_ID)",
				m[1], orPlaceholder(f.ClientID, "<client-id>"), orPlaceholder(f.TenantID, "<unset>")),
			fmt.Sprintf("use a vault of tenant %s, or an identity of tenant %s with that tenant in the ServiceAccount's azure.workload.identity/tenant-id (or kvinject.dev/tenant-id)",
				orPlaceholder(f.TenantID, "<identity tenant>"), m[1])
	}
	if strings.Contains(msg, "failed to authenticate a system assigned identity") {
		return "the node has no system-assigned managed identity (" + firstLine(afterColon(msg), 200) + ")",
			"enable the system-assigned identity of the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set>), or use workload identity or a user-assigned identity (kvinject.dev/identity)"
	}
	host := orPlaceholder(hostOf(err), "the server")
	switch {
	case isTLSVerification(err):
		return fmt.Sprintf("TLS verification of %s failed (%s)", host, errText(innermost(err))),
			fmt.Sprintf("a proxy or firewall may intercept TLS to %s; allow direct HTTPS from the pod to %s", host, host)
	case isNotFoundHost(err):
		if strings.Contains(host, ".vault.") {
			return fmt.Sprintf("the vault's host %s does not resolve", host),
				fmt.Sprintf("check the vault name in kvinject.dev/vault (az keyvault show --name %s); for a private endpoint, link the privatelink.vaultcore.azure.net DNS zone to the cluster's virtual network", vault)
		}
		return fmt.Sprintf("%s does not resolve", host), "check the cluster's DNS and its egress to " + host
	case strings.Contains(msg, "doesn't match the requested domain"):
		return "Key Vault's challenge names a resource that does not match the vault's host (" + firstLine(msg, 200) + ")",
			"use the vault's canonical URL https://<vault-name>.vault.azure.net/ (or the sovereign cloud's) in kvinject.dev/vault"
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("%s did not answer in time", host),
			fmt.Sprintf("check latency and egress from the pod to %s (network policies, proxies, firewalls, private endpoint); if Key Vault itself is slow or throttled, its metrics in the Azure portal show it", host)
	}
	var ue *url.Error
	if errors.As(err, &ue) || strings.Contains(msg, "dial tcp") || strings.Contains(msg, "connection") {
		return fmt.Sprintf("cannot connect to %s (%s)", host, errText(innermost(err))),
			fmt.Sprintf("allow egress from the pod to %s:443 in network policies, NSGs and firewalls", host)
	}
	return errText(err), ""
}

// keyVaultReason explains an error answer of Key Vault.
func keyVaultReason(re *azcore.ResponseError, f Facts, se *SecretError) (why, fix string) {
	vault := f.vaultName()
	kv := parseKVError(re.RawResponse)
	code := orPlaceholder(kv.Code, re.ErrorCode)
	codes := "Key Vault error " + orPlaceholder(code, "(none)")
	if len(kv.Inner) > 0 {
		codes += " (inner error " + strings.Join(kv.Inner, "/") + ")"
	}
	head := status(re.StatusCode) + ", " + codes
	inner := ""
	if len(kv.Inner) > 0 {
		inner = kv.Inner[len(kv.Inner)-1]
	}
	name, version := "<secret>", ""
	if se != nil {
		name, version = se.Name, se.Version
	}
	p := principalOf(f, kv.Message)
	vaultScope := "$(az keyvault show --name " + vault + " --query id --output tsv)"
	if why, fix, ok := objectReason(re, kv, head, inner, code, p, vault, vaultScope, se); ok {
		return why, fix // certificates and keys: explain_objects.go
	}
	switch {
	case re.StatusCode == http.StatusForbidden && (inner == "AccessDenied" || inner == "ForbiddenByPolicy"):
		// The message names the missing permission: get, or list for listing versions.
		if m := policyPermRE.FindStringSubmatch(kv.Message); m != nil && strings.EqualFold(m[1], "list") {
			return head + ": the vault uses access policies and " + p.desc + " may not list its secrets",
				fmt.Sprintf("grant the identity %s 'get' and 'list' on secrets with an access policy (az keyvault set-policy --name %s %s --secret-permissions get list), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' %s --scope %s)",
					p.id(), vault, p.policyArg(), p.assigneeArg(), vaultScope)
		}
		return head + ": the vault uses access policies and " + p.desc + " may not get its secrets",
			fmt.Sprintf("grant the identity %s 'get' on secrets with an access policy (az keyvault set-policy --name %s %s --secret-permissions get), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' %s --scope %s)",
				p.id(), vault, p.policyArg(), p.assigneeArg(), vaultScope)
	case re.StatusCode == http.StatusForbidden && inner == "ForbiddenByRbac":
		scope := vaultScope
		if m := resourceRE.FindStringSubmatch(kv.Message); m != nil {
			scope = m[1]
		}
		what, action := "reading secrets", "Microsoft.KeyVault/vaults/secrets/getSecret/action"
		if m := rbacActionRE.FindStringSubmatch(kv.Message); m != nil && strings.HasSuffix(m[1], "/readMetadata/action") {
			what, action = "listing secrets", m[1]
		}
		return head + ": the vault uses Azure RBAC and " + p.desc + " has no role assignment that allows " + what + " (" + action + ")",
			fmt.Sprintf("assign the identity %s the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' %s --scope %s); new role assignments take a few minutes to apply",
				p.id(), p.assigneeArg(), scope)
	case re.StatusCode == http.StatusForbidden && inner == "ForbiddenByFirewall":
		addr, ipArg := "", "--ip-address <cluster egress IP>"
		if m := clientAddrRE.FindStringSubmatch(kv.Message); m != nil {
			addr, ipArg = " ("+m[1]+")", "--ip-address "+m[1]
		}
		return head + ": the vault's firewall does not admit the pod's address" + addr,
			fmt.Sprintf("allow the cluster's egress IP or the nodes' subnet in the vault's network rules (az keyvault network-rule add --name %s %s, or --subnet <subnet resource id>), or reach the vault through a private endpoint", vault, ipArg)
	case re.StatusCode == http.StatusForbidden && inner == "SecretDisabled":
		if version != "" {
			return head + ": version " + version + " of the secret is disabled",
				fmt.Sprintf("enable it (az keyvault secret set-attributes --vault-name %s --name %s --version %s --enabled true), or pin another version in kvinject.dev/secrets", vault, name, version)
		}
		return head + ": the secret's current version is disabled",
			fmt.Sprintf("enable it (az keyvault secret list-versions --vault-name %s --name %s shows it; az keyvault secret set-attributes --vault-name %s --name %s --version <version> --enabled true), set a new value, or pin an enabled version in kvinject.dev/secrets (<file>=%s@<version>)", vault, name, vault, name, name)
	case re.StatusCode == http.StatusNotFound && code == "SecretNotFound":
		if version != "" {
			return head + fmt.Sprintf(": the vault has no version %s of secret %q", version, name),
				fmt.Sprintf("check the name and version in kvinject.dev/secrets; list the versions with az keyvault secret list-versions --vault-name %s --name %s", vault, name)
		}
		return head + fmt.Sprintf(": the vault has no secret named %q (or it was deleted)", name),
			fmt.Sprintf("check the name in kvinject.dev/secrets; list the vault's secrets with az keyvault secret list --vault-name %s --query \"[].name\"", vault)
	case re.StatusCode == http.StatusUnauthorized:
		return unauthorizedReason(re, kv, head, f)
	case re.StatusCode == http.StatusTooManyRequests:
		return head + ": the vault is throttling reads (Key Vault allows 4,000 secret reads per 10 seconds per vault)",
			"spread pod start-ups, lengthen kvinject.dev/rotation, or spread the secrets over more vaults"
	case re.StatusCode >= 500:
		return head + ": Key Vault is unavailable", "this is usually temporary; check https://azure.status.microsoft/ and the vault's region, and recreate the pod if it persists"
	}
	why = head
	if kv.Message != "" {
		why += ": " + firstLine(kv.Message, 300)
	}
	return why, ""
}

// unauthorizedReason explains a 401 from Key Vault after the token was sent.
func unauthorizedReason(re *azcore.ResponseError, kv kvError, head string, f Facts) (why, fix string) {
	vaultTenant := ""
	if re.RawResponse != nil {
		if m := challengeRE.FindStringSubmatch(re.RawResponse.Header.Get("WWW-Authenticate")); m != nil {
			vaultTenant = m[1]
		}
	}
	tokenTenant := f.TenantID
	if m := foundIssuerRE.FindStringSubmatch(kv.Message); m != nil {
		tokenTenant = m[1]
	}
	why = head + ": Key Vault rejected the access token"
	if kv.Message != "" {
		why += " (" + firstLine(kv.Message, 200) + ")"
	}
	if vaultTenant != "" && tokenTenant != "" && !strings.EqualFold(vaultTenant, tokenTenant) {
		why += fmt.Sprintf("; the vault belongs to tenant %s but the identity's token is from tenant %s", vaultTenant, tokenTenant)
		return why, fmt.Sprintf("use a vault of tenant %s, or an identity of tenant %s (a managed identity gets tokens from its home tenant only)", tokenTenant, vaultTenant)
	}
	return why, "check that the identity belongs to the vault's tenant" + suffixIf(vaultTenant != "", " ("+vaultTenant+")") + " and that the nodes' clocks are right; the agent gets a new token on its next attempt"
}

func suffixIf(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

// aadReason explains Azure AD refusing a workload identity's token request.
func aadReason(afe *azidentity.AuthenticationFailedError, f Facts) (why, fix string) {
	id := orPlaceholder(f.ClientID, "<client-id>")
	if afe.RawResponse == nil {
		host := hostOf(afe)
		if host == "" {
			host = "login.microsoftonline.com"
			if u, err := url.Parse(f.AuthorityHost); err == nil && u.Host != "" {
				host = u.Hostname()
			}
		}
		why = "cannot get a token from Azure AD at " + host
		if d := strings.Trim(errText(afe), ": "); d != "" {
			why += " (" + d + ")"
		}
		return why, fmt.Sprintf("allow egress from the pod to %s:443 in network policies, NSGs and firewalls", host)
	}
	a := parseAADError(afe.RawResponse)
	code := 0
	if len(a.Codes) > 0 {
		code = a.Codes[0]
	}
	head := fmt.Sprintf("Azure AD refused the token request of workload identity %s (%s", id, status(afe.RawResponse.StatusCode))
	if a.Error != "" {
		head += " " + a.Error
	}
	if code != 0 {
		head += fmt.Sprintf(", AADSTS%d", code)
	}
	head += ")"
	subject := "system:serviceaccount:" + orPlaceholder(f.Namespace, "<namespace>") + ":" + orPlaceholder(f.ServiceAccount, "<service account>")
	switch code {
	case 70021:
		seen := map[string]string{}
		for _, m := range assertionRE.FindAllStringSubmatch(a.Description, -1) {
			seen[m[1]] = m[2]
		}
		issuer := orPlaceholder(f.Issuer, orPlaceholder(seen["Issuer"], "<cluster OIDC issuer: az aks show --query oidcIssuerProfile.issuerUrl>"))
		tokSub := orPlaceholder(f.Subject, seen["Subject"])
		why = head + ": no federated identity credential of the identity matches the pod's service account token (issuer " + issuer
		if tokSub != "" {
			why += ", subject " + tokSub
		}
		why += ", audience " + orPlaceholder(seen["Audience"], "api://AzureADTokenExchange") + ")"
		return why, fmt.Sprintf("create a federated credential with issuer %s and subject %s on the identity %s (az identity federated-credential create --name kvinject-%s-%s --identity-name <identity name> --resource-group <resource group> --issuer %s --subject %s --audiences api://AzureADTokenExchange)",
			issuer, subject, id, orPlaceholder(f.Namespace, "ns"), orPlaceholder(f.ServiceAccount, "sa"), issuer, subject)
	case 500011:
		resource := "the vault's resource"
		if m := resourcePrincipalRE.FindStringSubmatch(a.Description); m != nil {
			resource = m[1]
		}
		return head + ": Azure AD of this cloud does not know " + resource + ", so the vault and the identity are in different Azure clouds",
			"sign in to the vault's cloud: set kvinject.dev/cloud to the vault's cloud (AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud), which sets AZURE_AUTHORITY_HOST, or use a vault of the identity's cloud"
	case 700016:
		return head + ": Azure AD knows no application with client ID " + id + " in tenant " + orPlaceholder(f.TenantID, "<tenant>"),
			"check the client ID (the ServiceAccount's azure.workload.identity/client-id) and the tenant ID (azure.workload.identity/tenant-id or kvinject.dev/tenant-id); az identity show --name <identity name> --resource-group <resource group> --query \"{clientId:clientId,tenantId:tenantId}\" shows both"
	case 90002:
		return head + ": tenant " + orPlaceholder(f.TenantID, "<tenant>") + " does not exist in this cloud",
			"check the tenant ID (azure.workload.identity/tenant-id or kvinject.dev/tenant-id) and the cloud (kvinject.dev/cloud)"
	case 700024:
		return head + ": the service account token is expired or not yet valid",
			"check the nodes' clocks and that kubelet refreshes the projected token (kvinject-azure-token volume)"
	case 50027:
		return head + ": the service account token is not a valid JWT",
			"check the projected token volume kvinject-azure-token (audience api://AzureADTokenExchange)"
	}
	if transientStatus(afe.RawResponse.StatusCode) {
		return head + ": Azure AD is unavailable or throttling", "this is usually temporary; the pod retries when it restarts"
	}
	why = head
	if d := firstLine(a.Description, 300); d != "" {
		why += ": " + d
	}
	return why, ""
}

// managedIdentityReason explains the managed-identity endpoint refusing a token.
func managedIdentityReason(afe *azidentity.AuthenticationFailedError, f Facts) (why, fix string) {
	if afe.RawResponse == nil {
		return "the managed-identity endpoint (IMDS) did not answer (" + errText(afe) + ")",
			"check that the pod can reach 169.254.169.254:80 (network policies, hostNetwork restrictions), or use workload identity"
	}
	a := parseAADError(afe.RawResponse)
	detail := orPlaceholder(firstLine(a.Message, 200), firstLine(orPlaceholder(a.Description, a.Error), 200))
	head := "the managed-identity endpoint answered " + status(afe.RawResponse.StatusCode)
	if detail != "" {
		head += " (" + detail + ")"
	}
	switch {
	case transientStatus(afe.RawResponse.StatusCode):
		return head, "this is usually temporary; the pod retries when it restarts"
	case f.Identity == agentconfig.IdentitySystem:
		return head + ": the node has no system-assigned managed identity",
			"enable the system-assigned identity of the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set>), or use workload identity or a user-assigned identity (kvinject.dev/identity)"
	}
	id := orPlaceholder(f.ClientID, "<client-id>")
	return head + ": managed identity " + id + " is not assigned to this node",
		fmt.Sprintf("assign the identity to the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set> --identities <resource id of the identity with client ID %s>), or use workload identity", id)
}

// hostOf returns the host an error is about, if it names one.
func hostOf(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			return u.Hostname()
		}
	}
	if m := hostRE.FindStringSubmatch(err.Error()); m != nil {
		return m[1]
	}
	return ""
}

// innermost unwraps err to its last wrapped error.
func innermost(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

// afterColon returns the text after the first ": ", or s.
func afterColon(s string) string {
	if _, rest, ok := strings.Cut(s, ": "); ok {
		return rest
	}
	return s
}
