package agentconfig

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// Cloud is an Azure cloud: where its vaults live and where its identities sign in.
type Cloud struct {
	// Name is the canonical name users write, e.g. AzurePublicCloud.
	Name string
	// VaultSuffix is the DNS suffix of its vaults, e.g. vault.azure.net.
	VaultSuffix string
	// AuthorityHost is the Azure AD endpoint, e.g. https://login.microsoftonline.com/.
	AuthorityHost string
}

// The supported clouds.
var (
	AzurePublicCloud       = Cloud{"AzurePublicCloud", "vault.azure.net", "https://login.microsoftonline.com/"}
	AzureUSGovernmentCloud = Cloud{"AzureUSGovernmentCloud", "vault.usgovcloudapi.net", "https://login.microsoftonline.us/"}
	AzureChinaCloud        = Cloud{"AzureChinaCloud", "vault.azure.cn", "https://login.chinacloudapi.cn/"}
)

var clouds = []Cloud{AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud}

// Clouds returns the supported clouds, the public one first.
func Clouds() []Cloud { return slices.Clone(clouds) }

// ParseCloud returns the cloud with the given name (case-insensitive); empty means public.
func ParseCloud(name string) (Cloud, error) {
	if name == "" {
		return AzurePublicCloud, nil
	}
	for _, c := range clouds {
		if strings.EqualFold(c.Name, name) {
			return c, nil
		}
	}
	return Cloud{}, fmt.Errorf("unknown cloud %q: use AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud", name)
}

// cloudOfHost returns the cloud whose vault suffix the host ends with.
func cloudOfHost(host string) (Cloud, bool) {
	for _, c := range clouds {
		if strings.HasSuffix(host, "."+c.VaultSuffix) {
			return c, true
		}
	}
	return Cloud{}, false
}

// vaultNameRE is Key Vault's naming rule: 3-24 characters, letters, digits and
// single hyphens, starting with a letter and ending with a letter or digit.
var vaultNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$`)

// validVaultName reports whether s is a valid vault name.
func validVaultName(s string) bool {
	return vaultNameRE.MatchString(s) && !strings.Contains(s, "--")
}

// VaultURL resolves a vault name or URL in the given cloud to the canonical
// "https://<name>.<suffix>/" form. A URL must be https, on the cloud's vault
// domain, without user info, port (other than 443), path, query or fragment.
func VaultURL(v string, cloud Cloud) (string, error) {
	if !strings.Contains(v, "/") && !strings.Contains(v, ":") {
		if !validVaultName(v) {
			return "", fmt.Errorf("%q is not a valid vault name: 3-24 letters, digits and single hyphens, starting with a letter and ending with a letter or digit", v)
		}
		return "https://" + strings.ToLower(v) + "." + cloud.VaultSuffix + "/", nil
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("%q is neither a vault name nor a valid URL: %v", v, err)
	}
	switch {
	case u.Scheme != "https":
		return "", fmt.Errorf("vault URL %q must use https", v)
	case u.User != nil:
		return "", fmt.Errorf("vault URL %q must not contain user info", v)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", fmt.Errorf("vault URL %q must not have a query or fragment", v)
	case u.Path != "" && u.Path != "/":
		return "", fmt.Errorf("vault URL %q must not have a path: use https://<vault-name>.%s/", v, cloud.VaultSuffix)
	case u.Port() != "" && u.Port() != "443":
		return "", fmt.Errorf("vault URL %q must not name a port", v)
	}
	// Check before lowercasing: strings.ToLower folds some non-ASCII letters (the
	// Kelvin sign) into ASCII ones, which would turn a foreign host into a vault's.
	if !allBytes(u.Hostname(), func(c byte) bool { return isAlnum(c) || c == '.' || c == '-' }) {
		return "", fmt.Errorf("vault URL %q: the host must be <vault-name>.%s in ASCII letters, digits, '-' and '.'", v, cloud.VaultSuffix)
	}
	host := strings.ToLower(u.Hostname())
	name, suffix, _ := strings.Cut(host, ".")
	if suffix != cloud.VaultSuffix {
		if other, ok := cloudOfHost(host); ok && suffix == other.VaultSuffix {
			return "", fmt.Errorf("vault URL %q is in %s but the cloud is %s: set %s=%s", v, other.Name, cloud.Name, AnnotationCloud, other.Name)
		}
		return "", fmt.Errorf("vault URL %q is not a Key Vault of %s: the host must be <vault-name>.%s", v, cloud.Name, cloud.VaultSuffix)
	}
	if !validVaultName(name) {
		return "", fmt.Errorf("vault URL %q: %q is not a valid vault name", v, name)
	}
	return "https://" + host + "/", nil
}

// CloudOfVault returns the cloud whose vault domain the vault URL is on, and
// the URL in its canonical form; false when it is no cloud's vault URL (a vault
// name alone belongs to no cloud).
func CloudOfVault(vaultURL string) (Cloud, string, bool) {
	if !strings.Contains(vaultURL, "/") {
		return Cloud{}, "", false
	}
	for _, c := range clouds {
		if u, err := VaultURL(vaultURL, c); err == nil {
			return c, u, true
		}
	}
	return Cloud{}, "", false
}

// CloudOfAuthority returns the cloud whose Azure AD is the authority host (the
// agent's AZURE_AUTHORITY_HOST), ignoring case and a trailing '/'; an empty
// host is the public cloud's. False for any other host.
func CloudOfAuthority(host string) (Cloud, bool) {
	if host == "" {
		return AzurePublicCloud, true
	}
	for _, c := range clouds {
		if strings.EqualFold(strings.TrimSuffix(host, "/"), strings.TrimSuffix(c.AuthorityHost, "/")) {
			return c, true
		}
	}
	return Cloud{}, false
}

// parseEntryVault checks the value of an entry's vault= option: a vault name
// (returned in lower case) or the https URL of a vault in a known cloud
// (returned in canonical form). Which cloud a name is in is the pod's
// (ResolveEntryVault).
func parseEntryVault(v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("option vault needs a value, e.g. vault=othervault")
	}
	if !strings.Contains(v, "/") && !strings.Contains(v, ":") {
		if !validVaultName(v) {
			return "", fmt.Errorf("vault %q is not a valid vault name: 3-24 letters, digits and single hyphens, starting with a letter and ending with a letter or digit (or write its URL, https://<vault-name>.vault.azure.net/)", v)
		}
		return strings.ToLower(v), nil
	}
	if _, u, ok := CloudOfVault(v); ok {
		return u, nil
	}
	// Explain with the public cloud's rules; the URL is no cloud's anyway.
	if _, err := VaultURL(v, AzurePublicCloud); err != nil {
		return "", fmt.Errorf("vault: %v", err)
	}
	return "", fmt.Errorf("vault %q is not a Key Vault URL such as https://othervault.vault.azure.net/", v)
}

// ResolveEntryVault resolves the vault of an entry (Entry.Vault) for a pod
// whose vault is podVault (a canonical vault URL) in cloud: a name becomes
// the cloud's URL; a URL must be in the same cloud, because one agent reads
// every vault with one identity. It returns "" when the entry's vault is
// the pod's own, so that one vault is always written one way.
func ResolveEntryVault(v string, cloud Cloud, podVault string) (string, error) {
	if v == "" {
		return "", nil
	}
	u := v
	if !strings.Contains(v, "/") {
		var err error
		if u, err = VaultURL(v, cloud); err != nil {
			return "", err
		}
	} else if other, canon, ok := CloudOfVault(v); !ok {
		return "", fmt.Errorf("vault %q is not a Key Vault URL such as https://othervault.%s/", v, cloud.VaultSuffix)
	} else if other.Name != cloud.Name {
		return "", fmt.Errorf("vault %s is in %s, but the pod's vault is in %s: the agent reads every vault of a pod with its one identity, in one cloud; read it from a pod of %s", v, other.Name, cloud.Name, other.Name)
	} else {
		u = canon
	}
	if u == podVault {
		return "", nil
	}
	return u, nil
}
