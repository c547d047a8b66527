package emulator

import (
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultAudience is the audience of Kubernetes service-account tokens exchanged for
// Azure AD tokens (workload identity).
const DefaultAudience = "api://AzureADTokenExchange"

// WorkloadIdentity registers an application (or user-assigned identity) with one
// federated identity credential. Register the same ClientID again to add more federated
// credentials to it.
type WorkloadIdentity struct {
	ClientID string `json:"clientId"`
	// TenantID defaults to the emulator's tenant.
	TenantID string `json:"tenantId,omitempty"`
	// ObjectID of the service principal; random when empty.
	ObjectID string `json:"objectId,omitempty"`
	// Issuer, Subject and Audience must equal the assertion's iss, sub and aud (Audience
	// defaults to DefaultAudience). Matching is case-sensitive, as in Azure AD.
	Issuer   string `json:"issuer"`
	Subject  string `json:"subject"`
	Audience string `json:"audience,omitempty"`
}

type federatedCredential struct {
	issuer, subject, audience string
}

// principal is a service principal: an application with federated credentials and/or a
// managed identity.
type principal struct {
	clientID, objectID, tenantID string
	managed                      bool
	fics                         []federatedCredential
}

type accessToken struct {
	clientID, objectID, tenantID, resource string
	expires                                time.Time
}

// AddWorkloadIdentity registers an application with a federated identity credential.
func (e *Emulator) AddWorkloadIdentity(wi WorkloadIdentity) error {
	if wi.ClientID == "" || wi.Issuer == "" || wi.Subject == "" {
		return fmt.Errorf("emulator: workload identity needs a client ID, an issuer and a subject")
	}
	if wi.TenantID == "" {
		wi.TenantID = e.opts.TenantID
	}
	if !validTenant(wi.TenantID) {
		return fmt.Errorf("emulator: invalid tenant ID %q", wi.TenantID)
	}
	if wi.Audience == "" {
		wi.Audience = DefaultAudience
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.principalLocked(wi.ClientID, wi.TenantID, wi.ObjectID)
	p.fics = append(p.fics, federatedCredential{wi.Issuer, wi.Subject, wi.Audience})
	return nil
}

// AddManagedIdentity registers a user-assigned managed identity, in the emulator's tenant,
// for the managed-identity endpoint.
func (e *Emulator) AddManagedIdentity(clientID string) error {
	if clientID == "" {
		return fmt.Errorf("emulator: empty client ID")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.principalLocked(clientID, e.opts.TenantID, "").managed = true
	return nil
}

// SetSystemIdentity registers the system-assigned managed identity: the managed-identity
// endpoint issues tokens for it when a request names no identity. An empty client ID
// removes it.
func (e *Emulator) SetSystemIdentity(clientID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if clientID == "" {
		e.systemID = ""
		return nil
	}
	e.principalLocked(clientID, e.opts.TenantID, "").managed = true
	e.systemID = strings.ToLower(clientID)
	return nil
}

// ObjectID returns the object ID of a registered identity.
func (e *Emulator) ObjectID(clientID string) (string, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	p, ok := e.principals[strings.ToLower(clientID)]
	if !ok {
		return "", false
	}
	return p.objectID, true
}

func (e *Emulator) principalLocked(clientID, tenantID, objectID string) *principal {
	key := strings.ToLower(clientID)
	p, ok := e.principals[key]
	if !ok {
		if objectID == "" {
			objectID = newUUID()
		}
		p = &principal{clientID: clientID, objectID: objectID, tenantID: tenantID}
		e.principals[key] = p
	}
	if objectID != "" {
		p.objectID = objectID
	}
	p.tenantID = tenantID
	return p
}

// ExpireTokens makes every access token issued so far invalid; Key Vault answers 401
// to requests that carry one.
func (e *Emulator) ExpireTokens() {
	e.mu.Lock()
	defer e.mu.Unlock()
	past := time.Now().Add(-time.Second)
	for _, t := range e.tokens {
		t.expires = past
	}
}

// issueToken creates an access token. The caller holds no lock.
func (e *Emulator) issueToken(p *principal, resource string) (string, time.Time) {
	tok := randomToken()
	exp := time.Now().Add(e.opts.TokenLifetime)
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.tokens) >= 10000 {
		now := time.Now()
		for k, t := range e.tokens {
			if now.Sub(t.expires) > time.Minute {
				delete(e.tokens, k)
			}
		}
	}
	e.tokens[tok] = &accessToken{clientID: p.clientID, objectID: p.objectID, tenantID: p.tenantID,
		resource: resource, expires: exp}
	e.stats.tokensIssued.Add(1)
	return tok, exp
}

func randomToken() string {
	return "emu." + base64.RawURLEncoding.EncodeToString([]byte(randomHex(24)))
}

// knownTenantLocked reports whether a tenant exists: the default tenant and those of
// registered vaults and identities.
func (e *Emulator) knownTenantLocked(t string) bool {
	if strings.EqualFold(t, e.opts.TenantID) {
		return true
	}
	for _, v := range e.vaults {
		if strings.EqualFold(v.opts.TenantID, t) {
			return true
		}
	}
	for _, p := range e.principals {
		if strings.EqualFold(p.tenantID, t) {
			return true
		}
	}
	return false
}

// serveIdentity serves Azure AD on the login hosts and on the listener's own address,
// where it also serves the managed-identity endpoint.
func (e *Emulator) serveIdentity(w http.ResponseWriter, r *http.Request) {
	ri := infoFrom(r)
	path := r.URL.Path
	host := requestHost(r)
	if path == "/msi/token" && e.isSelfHost(host) {
		ri.op = OpMSI
		e.delay(r)
		e.serveMSI(w, r)
		return
	}
	if path == "/common/discovery/instance" {
		ri.op = OpOpenID
		e.delay(r)
		e.serveInstanceDiscovery(w, r)
		return
	}
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	switch {
	case len(parts) == 4 && parts[1] == "v2.0" && parts[2] == ".well-known" && parts[3] == "openid-configuration":
		ri.op = OpOpenID
		e.delay(r)
		e.serveOpenIDConfig(w, r, parts[0])
	case len(parts) == 4 && parts[1] == "oauth2" && parts[2] == "v2.0" && parts[3] == "token":
		ri.op = OpToken
		e.delay(r)
		e.serveToken(w, r, parts[0])
	default:
		ri.op = "unknown"
		e.aadError(w, r, http.StatusNotFound, "invalid_request", 90000,
			"The request path "+path+" is not served by the emulator.")
	}
}

func (e *Emulator) aadFaultBody(r *http.Request) func(int) any {
	return func(status int) any {
		if status == http.StatusTooManyRequests {
			return e.aadErrorBody(r, "temporarily_unavailable", 0, "Too many requests. Retry after the time in Retry-After.")
		}
		return e.aadErrorBody(r, "server_error", 90033, "AADSTS90033: A transient error has occurred. Please try again.")
	}
}

func (e *Emulator) serveOpenIDConfig(w http.ResponseWriter, r *http.Request, tenant string) {
	e.stats.discovery.Add(1)
	if e.applyFault(w, r, OpOpenID, "", e.aadFaultBody(r)) {
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		e.aadError(w, r, http.StatusMethodNotAllowed, "invalid_request", 0, "Method not allowed.")
		return
	}
	e.mu.RLock()
	known := e.knownTenantLocked(tenant) || wellKnownTenant(tenant)
	e.mu.RUnlock()
	if !known {
		e.aadError(w, r, http.StatusBadRequest, "invalid_tenant", 90002, tenantNotFound(tenant))
		return
	}
	base := "https://" + r.Host + "/" + tenant
	w.Header().Set("Cache-Control", "max-age=86400, private")
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              "https://" + r.Host + "/" + tenant + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                base + "/v2.0",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"end_session_endpoint":                  base + "/oauth2/v2.0/logout",
		"tenant_region_scope":                   "EU",
		"cloud_instance_name":                   "microsoftonline.com",
	})
}

func wellKnownTenant(t string) bool {
	switch strings.ToLower(t) {
	case "common", "organizations", "consumers":
		return true
	}
	return false
}

func tenantNotFound(t string) string {
	return fmt.Sprintf("AADSTS90002: Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", t)
}

// serveInstanceDiscovery answers MSAL's instance discovery for the emulated authorities.
func (e *Emulator) serveInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	e.stats.instanceDiscovery.Add(1)
	if e.applyFault(w, r, OpOpenID, "", e.aadFaultBody(r)) {
		return
	}
	ep, err := url.Parse(r.URL.Query().Get("authorization_endpoint"))
	if err != nil || ep.Scheme != "https" || !(isLoginHost(strings.ToLower(ep.Hostname())) || e.isSelfHost(strings.ToLower(ep.Host))) {
		e.aadError(w, r, http.StatusBadRequest, "invalid_instance", 50049, "AADSTS50049: Unknown or invalid instance.")
		return
	}
	parts := strings.Split(strings.TrimPrefix(ep.Path, "/"), "/")
	if len(parts) == 0 || parts[0] == "" {
		e.aadError(w, r, http.StatusBadRequest, "invalid_instance", 50049, "AADSTS50049: Unknown or invalid instance.")
		return
	}
	host := strings.ToLower(ep.Host)
	metadata := []map[string]any{
		{"preferred_network": "login.microsoftonline.com", "preferred_cache": "login.windows.net",
			"aliases": []string{"login.microsoftonline.com", "login.windows.net", "login.microsoft.com", "sts.windows.net"}},
		{"preferred_network": "login.partner.microsoftonline.cn", "preferred_cache": "login.partner.microsoftonline.cn",
			"aliases": []string{"login.partner.microsoftonline.cn", "login.chinacloudapi.cn"}},
		{"preferred_network": "login.microsoftonline.us", "preferred_cache": "login.microsoftonline.us",
			"aliases": []string{"login.microsoftonline.us", "login.usgovcloudapi.net"}},
	}
	if !isLoginHost(ep.Hostname()) {
		metadata = append(metadata, map[string]any{"preferred_network": host, "preferred_cache": host, "aliases": []string{host}})
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": "https://" + host + "/" + parts[0] + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata":                  metadata,
	})
}

// serveToken is the client-credentials grant with a federated client assertion.
func (e *Emulator) serveToken(w http.ResponseWriter, r *http.Request, tenant string) {
	e.stats.tokenRequests.Add(1)
	ri := infoFrom(r)
	if e.applyFault(w, r, OpToken, "", e.aadFaultBody(r)) {
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		e.aadError(w, r, http.StatusMethodNotAllowed, "invalid_request", 900561,
			"AADSTS900561: The endpoint only accepts POST requests. Received a "+r.Method+" request.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		e.aadError(w, r, http.StatusBadRequest, "invalid_request", 900144, "AADSTS900144: The request body must contain the following parameter: 'grant_type'.")
		return
	}
	f := r.PostForm
	clientID := f.Get("client_id")
	ri.clientID = clientID
	missing := func(p string) {
		e.aadError(w, r, http.StatusBadRequest, "invalid_request", 900144,
			"AADSTS900144: The request body must contain the following parameter: '"+p+"'.")
	}
	switch {
	case f.Get("grant_type") == "":
		missing("grant_type")
		return
	case f.Get("grant_type") != "client_credentials":
		e.aadError(w, r, http.StatusBadRequest, "unsupported_grant_type", 70003,
			"AADSTS70003: The app requested an unsupported grant type '"+f.Get("grant_type")+"'.")
		return
	case clientID == "":
		missing("client_id")
		return
	case f.Get("scope") == "":
		missing("scope")
		return
	}
	resource := resourceFromScope(f.Get("scope"))
	if resource == "" {
		e.aadError(w, r, http.StatusBadRequest, "invalid_scope", 1002012,
			"AADSTS1002012: The provided value for scope "+f.Get("scope")+" is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).")
		return
	}

	e.mu.RLock()
	knownTenant := e.knownTenantLocked(tenant)
	p, ok := e.principals[strings.ToLower(clientID)]
	var pc principal
	if ok {
		pc = *p
		pc.fics = append([]federatedCredential(nil), p.fics...)
	}
	e.mu.RUnlock()
	if !knownTenant {
		e.aadError(w, r, http.StatusBadRequest, "invalid_request", 90002, tenantNotFound(tenant))
		return
	}
	if !ok || !strings.EqualFold(pc.tenantID, tenant) {
		e.aadError(w, r, http.StatusBadRequest, "unauthorized_client", 700016, fmt.Sprintf(
			"AADSTS700016: Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
			clientID, tenant))
		return
	}
	if f.Get("client_secret") != "" {
		e.aadError(w, r, http.StatusUnauthorized, "invalid_client", 7000215,
			"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+clientID+"'.")
		return
	}
	assertion := f.Get("client_assertion")
	if assertion == "" {
		e.aadError(w, r, http.StatusUnauthorized, "invalid_client", 7000218,
			"AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		e.aadError(w, r, http.StatusBadRequest, "invalid_request", 700010,
			"AADSTS700010: Invalid client_assertion_type. Expected 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.")
		return
	}
	claims, err := parseAssertion(assertion)
	if err != nil {
		e.aadError(w, r, http.StatusBadRequest, "invalid_request", 50027,
			"AADSTS50027: JWT token is invalid or malformed.")
		return
	}
	now := time.Now()
	if claims.Exp == 0 || now.Unix() >= claims.Exp || (claims.Nbf != 0 && now.Unix() < claims.Nbf) {
		const f = "2006-01-02T15:04:05.0000000Z"
		e.aadError(w, r, http.StatusUnauthorized, "invalid_client", 700024, fmt.Sprintf(
			"AADSTS700024: Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
			now.UTC().Format(f), time.Unix(claims.Nbf, 0).UTC().Format(f), time.Unix(claims.Exp, 0).UTC().Format(f)))
		return
	}
	if !matchFederated(pc.fics, claims) {
		e.aadError(w, r, http.StatusUnauthorized, "invalid_client", 70021, fmt.Sprintf(
			"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'. https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation",
			claims.Iss, claims.Sub, strings.Join(claims.Aud, ",")))
		return
	}
	tok, _ := e.issueToken(&pc, resource)
	w.Header().Set("Cache-Control", "no-store, no-cache")
	secs := int(e.opts.TokenLifetime.Seconds()) - 1
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   tok,
	})
}

// resourceFromScope returns the resource of the first ".default" scope.
func resourceFromScope(scope string) string {
	for _, s := range strings.Fields(scope) {
		if res, ok := strings.CutSuffix(s, "/.default"); ok && res != "" {
			return res
		}
	}
	return ""
}

type assertionClaims struct {
	Iss string
	Sub string
	Aud []string
	Exp int64
	Nbf int64
}

// parseAssertion decodes a JWT's payload. The signature is not verified.
func parseAssertion(jwt string) (assertionClaims, error) {
	parts := strings.Split(strings.TrimSpace(jwt), ".")
	if len(parts) != 3 {
		return assertionClaims{}, fmt.Errorf("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return assertionClaims{}, err
	}
	var raw struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp json.Number     `json:"exp"`
		Nbf json.Number     `json:"nbf"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return assertionClaims{}, err
	}
	c := assertionClaims{Iss: raw.Iss, Sub: raw.Sub}
	if len(raw.Aud) > 0 {
		var one string
		if json.Unmarshal(raw.Aud, &one) == nil {
			c.Aud = []string{one}
		} else if err := json.Unmarshal(raw.Aud, &c.Aud); err != nil {
			return assertionClaims{}, err
		}
	}
	if raw.Exp != "" {
		f, err := raw.Exp.Float64()
		if err != nil {
			return assertionClaims{}, err
		}
		c.Exp = int64(f)
	}
	if raw.Nbf != "" {
		f, err := raw.Nbf.Float64()
		if err != nil {
			return assertionClaims{}, err
		}
		c.Nbf = int64(f)
	}
	return c, nil
}

func matchFederated(fics []federatedCredential, c assertionClaims) bool {
	for _, f := range fics {
		if f.issuer != c.Iss || f.subject != c.Sub {
			continue
		}
		for _, a := range c.Aud {
			if a == f.audience {
				return true
			}
		}
	}
	return false
}

// serveMSI is the App Service managed-identity endpoint (api-version 2019-08-01).
func (e *Emulator) serveMSI(w http.ResponseWriter, r *http.Request) {
	e.stats.tokenRequests.Add(1)
	ri := infoFrom(r)
	msiErr := func(status int, msg string) {
		writeJSON(w, status, map[string]any{"statusCode": status, "message": msg, "correlationId": newUUID()})
	}
	if e.applyFault(w, r, OpMSI, "", func(status int) any {
		return map[string]any{"statusCode": status, "message": http.StatusText(status), "correlationId": newUUID()}
	}) {
		return
	}
	if r.Method != http.MethodGet {
		msiErr(http.StatusMethodNotAllowed, "Method not allowed.")
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Identity-Header")), []byte(e.opts.IdentityHeader)) != 1 {
		msiErr(http.StatusUnauthorized, "The X-IDENTITY-HEADER header is missing or invalid.")
		return
	}
	q := r.URL.Query()
	if q.Get("api-version") != "2019-08-01" {
		msiErr(http.StatusBadRequest, "The api-version parameter is missing or not supported. Supported: 2019-08-01.")
		return
	}
	resource := strings.TrimSuffix(q.Get("resource"), "/.default")
	if resource == "" {
		msiErr(http.StatusBadRequest, "The resource parameter is required.")
		return
	}
	clientID, objectID := q.Get("client_id"), q.Get("object_id")
	ri.clientID = clientID
	e.mu.RLock()
	var p *principal
	switch {
	case clientID != "":
		p = e.principals[strings.ToLower(clientID)]
	case objectID != "":
		for _, c := range e.principals {
			if strings.EqualFold(c.objectID, objectID) {
				p = c
			}
		}
	case q.Get("mi_res_id") != "":
		// Resource IDs are not modelled.
	case e.systemID != "":
		p = e.principals[e.systemID]
	}
	var pc principal
	if p != nil && p.managed {
		pc = *p
	}
	e.mu.RUnlock()
	if pc.clientID == "" {
		msiErr(http.StatusBadRequest, "Unable to load the proper Managed Identity.")
		return
	}
	ri.clientID = pc.clientID
	tok, exp := e.issueToken(&pc, resource)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"expires_on":   strconv.FormatInt(exp.Unix(), 10),
		"resource":     q.Get("resource"),
		"token_type":   "Bearer",
		"client_id":    pc.clientID,
	})
}

// aadErrorBody is Azure AD's OAuth error body.
func (e *Emulator) aadErrorBody(r *http.Request, code string, aadsts int, desc string) map[string]any {
	now := time.Now().UTC()
	trace, corr := newUUID(), newUUID()
	ts := now.Format("2006-01-02 15:04:05Z")
	body := map[string]any{
		"error":             code,
		"error_description": desc + "\r\nTrace ID: " + trace + "\r\nCorrelation ID: " + corr + "\r\nTimestamp: " + ts,
		"timestamp":         ts,
		"trace_id":          trace,
		"correlation_id":    corr,
	}
	if aadsts != 0 {
		body["error_codes"] = []int{aadsts}
		body["error_uri"] = "https://" + r.Host + "/error?code=" + strconv.Itoa(aadsts)
	}
	return body
}

func (e *Emulator) aadError(w http.ResponseWriter, r *http.Request, status int, code string, aadsts int, desc string) {
	writeJSON(w, status, e.aadErrorBody(r, code, aadsts, desc))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
