package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// maxIdleConnsPerHost is well above the fetch concurrency, so that HTTP/1.1
// fallbacks do not churn connections.
const maxIdleConnsPerHost = 64

// newTransport returns the one HTTP transport that the credential and the Key
// Vault client share: a clone of http.DefaultTransport that negotiates HTTP/2.
// The test-only environment variables replace its trusted roots and its
// dialing; both are logged loudly.
func newTransport(env Env, log *slog.Logger) (*http.Transport, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ForceAttemptHTTP2 = true
	t.MaxIdleConnsPerHost = maxIdleConnsPerHost
	if env.TestCAFile != "" {
		pem, err := os.ReadFile(env.TestCAFile)
		if err != nil {
			return nil, &ConfigError{Msg: fmt.Sprintf("%s: %v", agentconfig.EnvTestCAFile, err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &ConfigError{Msg: fmt.Sprintf("%s: %s holds no PEM certificate", agentconfig.EnvTestCAFile, env.TestCAFile)}
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		log.Warn("TEST OPTION IN USE: trusting only the certificates of "+agentconfig.EnvTestCAFile+"; never set this in production",
			"env", agentconfig.EnvTestCAFile, "file", env.TestCAFile)
	}
	if env.TestResolve != "" {
		rules, err := parseResolve(env.TestResolve)
		if err != nil {
			return nil, &ConfigError{Msg: fmt.Sprintf("%s: %v", agentconfig.EnvTestResolve, err)}
		}
		t.DialContext = rules.dialContext
		log.Warn("TEST OPTION IN USE: dialing overridden by "+agentconfig.EnvTestResolve+"; never set this in production",
			"env", agentconfig.EnvTestResolve, "rules", env.TestResolve)
	}
	return t, nil
}

// resolveRules maps host names (exact, or "*.suffix") to dial addresses.
type resolveRules struct {
	exact  map[string]string
	suffix [][2]string // {".suffix", addr}
}

// parseResolve parses "host=ip:port,*.suffix=ip:port,...".
func parseResolve(s string) (resolveRules, error) {
	r := resolveRules{exact: map[string]string{}}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		host, addr, ok := strings.Cut(item, "=")
		host = strings.ToLower(strings.TrimSpace(host))
		addr = strings.TrimSpace(addr)
		if !ok || host == "" {
			return r, fmt.Errorf("%q is not host=ip:port", item)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return r, fmt.Errorf("%q: %v", item, err)
		}
		if rest, wild := strings.CutPrefix(host, "*."); wild {
			r.suffix = append(r.suffix, [2]string{"." + rest, addr})
		} else {
			r.exact[host] = addr
		}
	}
	if len(r.exact) == 0 && len(r.suffix) == 0 {
		return r, fmt.Errorf("no rules in %q", s)
	}
	return r, nil
}

// dialContext dials addr, or the address a rule gives for its host.
func (r resolveRules) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	host, _, err := net.SplitHostPort(addr)
	if err == nil {
		if to, ok := r.lookup(host); ok {
			addr = to
		}
	}
	return d.DialContext(ctx, network, addr)
}

func (r resolveRules) lookup(host string) (string, bool) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if a, ok := r.exact[host]; ok {
		return a, true
	}
	for _, s := range r.suffix {
		if strings.HasSuffix(host, s[0]) {
			return s[1], true
		}
	}
	return "", false
}

// userAgentPolicy appends the agent and the pod to every request's
// User-Agent, for Key Vault's and Azure AD's audit logs. azcore's
// Telemetry.ApplicationID cannot carry it (24 characters, no spaces).
type userAgentPolicy struct{ suffix string }

// userAgent returns the User-Agent suffix of the agent in pod ("ns/name").
func userAgent(pod string) string { return productUserAgent("", pod) }

// productUserAgent is userAgent for another product than kvinject-agent
// (Env.Product); empty means kvinject-agent.
func productUserAgent(product, pod string) string {
	if product == "" {
		product = "kvinject-agent"
	}
	ua := product + "/" + version.Version
	if pod != "" {
		ua += " (pod " + pod + ")"
	}
	return ua
}

// Do implements policy.Policy.
func (p userAgentPolicy) Do(req *policy.Request) (*http.Response, error) {
	h := req.Raw().Header
	if ua := h.Get("User-Agent"); ua != "" {
		h.Set("User-Agent", ua+" "+p.suffix)
	} else {
		h.Set("User-Agent", p.suffix)
	}
	return req.Next()
}

// cloudFor returns the SDK's configuration of the cloud whose Azure AD is
// authority (AZURE_AUTHORITY_HOST, matched by agentconfig.CloudOfAuthority);
// empty means the public cloud. An authority of no known cloud keeps the
// public cloud's settings with that authority.
func cloudFor(authority string) cloud.Configuration {
	c := cloud.AzurePublic
	switch known, _ := agentconfig.CloudOfAuthority(authority); known {
	case agentconfig.AzureUSGovernmentCloud:
		c = cloud.AzureGovernment
	case agentconfig.AzureChinaCloud:
		c = cloud.AzureChina
	}
	if authority != "" {
		if !strings.HasSuffix(authority, "/") {
			authority += "/"
		}
		c.ActiveDirectoryAuthorityHost = authority
	}
	return c
}

// clientOptions are the azcore options of both the credential and the client.
func clientOptions(t policy.Transporter, env Env, retry policy.RetryOptions) azcore.ClientOptions {
	return azcore.ClientOptions{
		Cloud:           cloudFor(env.AuthorityHost),
		Transport:       t,
		Retry:           retry,
		PerCallPolicies: []policy.Policy{userAgentPolicy{suffix: productUserAgent(env.Product, env.Pod())}},
	}
}

// newCredential returns the credential of the configured identity kind.
func newCredential(kind agentconfig.IdentityKind, env Env, co azcore.ClientOptions) (azcore.TokenCredential, error) {
	switch kind {
	case agentconfig.IdentityWorkload:
		var missing []string
		for _, v := range []struct{ name, value string }{
			{agentconfig.EnvClientID, env.ClientID}, {agentconfig.EnvTenantID, env.TenantID}, {agentconfig.EnvTokenFile, env.TokenFile},
		} {
			if v.value == "" {
				missing = append(missing, v.name)
			}
		}
		if len(missing) > 0 {
			return nil, &ConfigError{Msg: fmt.Sprintf("workload identity needs %s in the agent's environment, which the webhook sets from the ServiceAccount's azure.workload.identity/client-id and tenant annotations. Fix: annotate the ServiceAccount with azure.workload.identity/client-id (and the tenant), then recreate the pod",
				strings.Join(missing, ", "))}
		}
		if _, err := os.Stat(env.TokenFile); err != nil {
			return nil, &ConfigError{Msg: fmt.Sprintf("workload identity: the projected service account token %s cannot be read (%v). Fix: check that the pod mounts the kvinject-azure-token volume with audience api://AzureADTokenExchange, then recreate the pod",
				env.TokenFile, errText(err))}
		}
		return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: co,
			ClientID:      env.ClientID,
			TenantID:      env.TenantID,
			TokenFilePath: env.TokenFile,
		})
	case agentconfig.IdentityManaged:
		if env.ClientID == "" {
			return nil, &ConfigError{Msg: "a user-assigned managed identity needs AZURE_CLIENT_ID. Fix: set kvinject.dev/identity to managed:<client-id>, or configure the webhook's default managed identity, then recreate the pod"}
		}
		return azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
			ClientOptions: co,
			ID:            azidentity.ClientID(env.ClientID),
		})
	case agentconfig.IdentitySystem:
		return azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: co})
	}
	return nil, &ConfigError{Msg: fmt.Sprintf("unknown identity kind %q", kind)}
}

// Clients are a credential and the Key Vault clients (secrets, certificates,
// keys) of one identity and vault, built from the agent's environment as the
// agent builds them (newFetcher), sharing one transport.
type Clients struct {
	// Transport is shared by the credential and the clients; close its idle
	// connections when done.
	Transport *http.Transport
	// Credential is the identity's credential; concurrent token requests
	// share one.
	Credential azcore.TokenCredential
	// Secrets, Certificates and Keys are the Key Vault clients, with the
	// agent's production settings.
	Secrets      *azsecrets.Client
	Certificates *azcertificates.Client
	Keys         *azkeys.Client
	// Scope is the token scope of the vault's resource, e.g.
	// https://vault.azure.net/.default; empty for a host that is not a vault's.
	Scope string

	// f reads objects as the agent does (see Read).
	f *fetcher
}

// NewClients builds the credential of the identity kind from env, and the Key
// Vault clients of vaultURL, with the agent's transport (including the
// test-only settings of env, which log warns about), User-Agent, cloud and
// Key Vault client options: the same builder as the agent's (newFetcher).
// retry configures the SDK's retries (a zero TryTimeout means 30s; empty
// StatusCodes mean keyVaultRetryStatusCodes). Its errors are *ConfigError,
// whose messages say what to fix.
func NewClients(vaultURL string, kind agentconfig.IdentityKind, env Env, retry policy.RetryOptions, log *slog.Logger) (*Clients, error) {
	t, err := newTransport(env, log)
	if err != nil {
		return nil, err
	}
	f, err := newFetcher(vaultURL, kind, env, t, retry, DefaultConcurrency)
	if err != nil {
		t.CloseIdleConnections()
		return nil, err
	}
	return &Clients{Transport: t, Credential: f.cred, Secrets: f.secrets, Certificates: f.certs, Keys: f.keys, Scope: f.scope, f: f}, nil
}

// Azure is an identity's credential and the client options to build other
// Azure clients with (the hub's Storage queue client), as the agent builds
// its own: the same transport (test-only settings included), cloud,
// User-Agent and credential. The package itself uses only Key Vault clients,
// so that the agent's binary carries no other Azure SDK.
type Azure struct {
	// Transport is shared by the credential and the clients built with
	// Options; close its idle connections when done.
	Transport *http.Transport
	// Credential is the identity's credential; concurrent token requests
	// share one.
	Credential azcore.TokenCredential
	// Options are the azcore options of the clients.
	Options azcore.ClientOptions
}

// NewAzure builds the credential of the identity kind from env with the
// agent's transport and options; retry configures the SDK's retries of the
// clients built with Options (a zero TryTimeout means 30s). Its errors are
// *ConfigError, whose messages say what to fix.
func NewAzure(kind agentconfig.IdentityKind, env Env, retry policy.RetryOptions, log *slog.Logger) (*Azure, error) {
	t, err := newTransport(env, log)
	if err != nil {
		return nil, err
	}
	co, cred, err := newIdentity(kind, env, t, retry)
	if err != nil {
		t.CloseIdleConnections()
		return nil, err
	}
	return &Azure{Transport: t, Credential: cred, Options: co}, nil
}

// newIdentity returns the client options over t (retry with a zero
// TryTimeout means 30s) and the identity's credential, serialized: the one
// place that builds them, for newFetcher and NewAzure. Its errors are
// *ConfigError.
func newIdentity(kind agentconfig.IdentityKind, env Env, t *http.Transport, retry policy.RetryOptions) (azcore.ClientOptions, *serialCredential, error) {
	if retry.TryTimeout == 0 {
		retry.TryTimeout = 30 * time.Second
	}
	co := clientOptions(&http.Client{Transport: t}, env, retry)
	cred, err := newCredential(kind, env, co)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return co, nil, err
		}
		return co, nil, &ConfigError{Msg: fmt.Sprintf("cannot set up the %s identity: %v", kind, err)}
	}
	return co, &serialCredential{cred: cred}, nil
}

// newFetcher builds the credential of the identity kind from env and the Key
// Vault clients of vaultURL over t: the one place that builds them, for the
// agent (connect) and the doctor (NewClients). Each client gets
// keyVaultOptions, with its own lane's authorized signal. retry configures
// the SDK's retries (a zero TryTimeout means 30s). Its errors are
// *ConfigError.
func newFetcher(vaultURL string, kind agentconfig.IdentityKind, env Env, t *http.Transport, retry policy.RetryOptions, concurrency int) (*fetcher, error) {
	co, scred, err := newIdentity(kind, env, t, retry)
	if err != nil {
		return nil, err
	}
	return vaultFetcher(vaultURL, co, scred, concurrency)
}

// vaultFetcher builds the Key Vault clients of vaultURL with the options and
// credential of newIdentity: the agent's fetchers of several vaults share
// one credential (one token: the scope is the cloud's, not the vault's) and
// each answers its own vault's challenge. Its errors are *ConfigError.
func vaultFetcher(vaultURL string, co azcore.ClientOptions, scred *serialCredential, concurrency int) (*fetcher, error) {
	var err error
	f := &fetcher{cred: scred, scope: vaultScope(vaultURL), vault: vaultURL, concurrency: concurrency}
	var sigs [numLanes]*authorizedSignal
	for i := range sigs {
		sigs[i] = newAuthorizedSignal()
		f.lanes[i].authorized = sigs[i].ch
	}
	if f.secrets, err = newSecretsClient(vaultURL, scred, keyVaultOptions(co, sigs[laneSecrets])); err == nil {
		if f.certs, err = newCertificatesClient(vaultURL, scred, keyVaultOptions(co, sigs[laneCertificates])); err == nil {
			f.keys, err = newKeysClient(vaultURL, scred, keyVaultOptions(co, sigs[laneKeys]))
		}
	}
	if err != nil {
		return nil, &ConfigError{Msg: fmt.Sprintf("cannot set up the Key Vault client for %s: %v", vaultURL, err)}
	}
	return f, nil
}

// newSecretsClient returns a Key Vault client with production settings:
// challenge resource verification stays on.
func newSecretsClient(vaultURL string, cred azcore.TokenCredential, co azcore.ClientOptions) (*azsecrets.Client, error) {
	return azsecrets.NewClient(vaultURL, cred, &azsecrets.ClientOptions{ClientOptions: co})
}

// errText is err's message on one line.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return firstLine(err.Error(), 300)
}

// firstLine returns the first line of s, at most max bytes (cut at a rune boundary).
func firstLine(s string, max int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return truncate(s, max)
}

// truncate cuts s to at most max bytes at a rune boundary, marking the cut.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	const mark = "..."
	cut := max - len(mark)
	for cut > 0 && cut < len(s) && s[cut]&0xC0 == 0x80 {
		cut--
	}
	return s[:cut] + mark
}
