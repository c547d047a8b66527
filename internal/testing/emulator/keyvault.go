package emulator

import (
	"encoding/base64"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Permission is a permission of an access policy. In a vault that uses Azure RBAC
// the same grants stand for role assignments: PermGet for the data action
// secrets/getSecret/action, PermList for secrets/readMetadata/action,
// PermCertificatesGet for certificates/read and PermKeysGet for keys/read.
type Permission string

// Secret permissions (certificates and keys: see PermCertificatesGet and PermKeysGet).
const (
	PermGet  Permission = "get"
	PermList Permission = "list"
)

// VaultOptions configure a vault.
type VaultOptions struct {
	// TenantID is the vault's tenant, named in its 401 challenge; defaults to the
	// emulator's tenant.
	TenantID string `json:"tenantId,omitempty"`
	// RBAC selects the Azure RBAC permission model instead of access policies; it changes
	// the 403 error only.
	RBAC bool `json:"rbac,omitempty"`
	// Cloud is CloudPublic (default), CloudUSGov or CloudChina. The vault answers only on
	// that cloud's host name.
	Cloud string `json:"cloud,omitempty"`
	// Location is used in messages (defaults to Options.Location).
	Location string `json:"location,omitempty"`
}

type secretVersion struct {
	version     string
	value       string
	contentType string
	tags        map[string]string
	enabled     bool
	created     time.Time
	updated     time.Time
	notBefore   time.Time
	expires     time.Time
	// certBacked marks the secret of a certificate: Key Vault manages it and
	// names the certificate's key (kid).
	certBacked bool
}

type secret struct {
	name     string           // as first created
	versions []*secretVersion // in creation order; the last is the current one
}

type vault struct {
	name     string // lower case
	opts     VaultOptions
	cloud    *cloudInfo
	secrets  map[string]*secret // by lower-case name
	certs    map[string]*certificate
	keys     map[string]*vaultKey
	grants   map[string]map[Permission]bool
	firewall bool
	reads    atomic.Int64
	throttle throttleState
}

type throttleConfig struct {
	limit  int
	window time.Duration
}

// throttleState is a sliding-window log of accepted reads.
type throttleState struct {
	mu    sync.Mutex
	ring  []time.Time
	head  int // oldest entry when full
	count int
}

// allow records a read at now if fewer than limit reads happened within window; otherwise
// it returns the time until the oldest read leaves the window.
func (t *throttleState) allow(now time.Time, cfg throttleConfig) (bool, time.Duration) {
	if cfg.limit < 0 {
		return true, 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.ring) != cfg.limit {
		t.ring, t.head, t.count = make([]time.Time, cfg.limit), 0, 0
	}
	if t.count == cfg.limit {
		oldest := t.ring[t.head]
		if wait := oldest.Add(cfg.window).Sub(now); wait > 0 {
			return false, wait
		}
		t.ring[t.head] = now
		t.head = (t.head + 1) % cfg.limit
		return true, 0
	}
	t.ring[(t.head+t.count)%cfg.limit] = now
	t.count++
	return true, 0
}

var (
	vaultNameRE  = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$`)
	secretNameRE = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
	versionRE    = regexp.MustCompile(`^[0-9a-fA-F]{32}$`)
)

const maxSecretValue = 25 * 1024

// AddVault creates a vault, or updates the options of an existing one (its secrets stay).
func (e *Emulator) AddVault(name string, opts VaultOptions) error {
	if !vaultNameRE.MatchString(name) || strings.Contains(name, "--") {
		return fmt.Errorf("emulator: invalid vault name %q (3-24 of [-A-Za-z0-9], starting with a letter)", name)
	}
	if opts.TenantID == "" {
		opts.TenantID = e.opts.TenantID
	}
	if !validTenant(opts.TenantID) {
		return fmt.Errorf("emulator: invalid tenant ID %q", opts.TenantID)
	}
	c, ok := cloudByName(opts.Cloud)
	if !ok {
		return fmt.Errorf("emulator: unknown cloud %q", opts.Cloud)
	}
	opts.Cloud = c.name
	if opts.Location == "" {
		opts.Location = e.opts.Location
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	key := strings.ToLower(name)
	if v, ok := e.vaults[key]; ok {
		v.opts, v.cloud = opts, c
		return nil
	}
	e.vaults[key] = &vault{name: key, opts: opts, cloud: c, secrets: map[string]*secret{},
		certs: map[string]*certificate{}, keys: map[string]*vaultKey{}, grants: map[string]map[Permission]bool{}}
	return nil
}

// Vaults returns the names of all vaults, sorted.
func (e *Emulator) Vaults() []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return slices.Sorted(maps.Keys(e.vaults))
}

// VaultURLOf returns the URL of an existing vault in its cloud, https://NAME.SUFFIX/.
func (e *Emulator) VaultURLOf(name string) (string, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	v, ok := e.vaults[strings.ToLower(name)]
	if !ok {
		return "", false
	}
	return "https://" + v.name + "." + v.cloud.vaultSuffix + "/", true
}

// RemoveVault deletes a vault and its secrets; its host name stops resolving.
func (e *Emulator) RemoveVault(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.vaults, strings.ToLower(name))
}

func (e *Emulator) vaultResolves(name string, c *cloudInfo) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	v, ok := e.vaults[name]
	return ok && v.cloud == c
}

func (e *Emulator) vaultLocked(name string) (*vault, error) {
	v, ok := e.vaults[strings.ToLower(name)]
	if !ok {
		return nil, fmt.Errorf("emulator: vault %q: %w", name, ErrNotFound)
	}
	return v, nil
}

// Grant gives an identity permissions on a vault (an access policy, or role
// assignments in an RBAC vault).
func (e *Emulator) Grant(vaultName, clientID string, perms ...Permission) error {
	for _, p := range perms {
		switch p {
		case PermGet, PermList, PermCertificatesGet, PermKeysGet, PermCertificatesList, PermKeysList:
		default:
			return fmt.Errorf("emulator: unknown permission %q", p)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return err
	}
	key := strings.ToLower(clientID)
	if v.grants[key] == nil {
		v.grants[key] = map[Permission]bool{}
	}
	for _, p := range perms {
		v.grants[key][p] = true
	}
	return nil
}

// Revoke takes permissions away from an identity on a vault (an access policy
// edited, or role assignments removed): its next requests that need them are
// refused with 403, as by Key Vault. Permissions it was not granted are
// ignored.
func (e *Emulator) Revoke(vaultName, clientID string, perms ...Permission) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return err
	}
	for _, p := range perms {
		delete(v.grants[strings.ToLower(clientID)], p)
	}
	return nil
}

// SetFirewall blocks (true) or allows (false) all data-plane access to a vault, as a
// network rule that does not admit the client would.
func (e *Emulator) SetFirewall(vaultName string, blocked bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return err
	}
	v.firewall = blocked
	return nil
}

// SecretOption sets a property of a new secret version.
type SecretOption func(*secretVersion)

// WithContentType sets the content type of the new version.
func WithContentType(ct string) SecretOption { return func(s *secretVersion) { s.contentType = ct } }

// WithTags sets the tags of the new version.
func WithTags(tags map[string]string) SecretOption {
	return func(s *secretVersion) { s.tags = maps.Clone(tags) }
}

// WithExpires sets the exp attribute of the new version (not enforced, like Key Vault).
func WithExpires(t time.Time) SecretOption { return func(s *secretVersion) { s.expires = t } }

// WithNotBefore sets the nbf attribute of the new version (not enforced, like Key Vault).
func WithNotBefore(t time.Time) SecretOption { return func(s *secretVersion) { s.notBefore = t } }

// WithCreated sets the created and updated attributes of the new version (Key Vault
// sets them to the time of the write, in seconds), so that tests can order versions
// without waiting.
func WithCreated(t time.Time) SecretOption {
	return func(s *secretVersion) {
		s.created, s.updated = t.UTC().Truncate(time.Second), t.UTC().Truncate(time.Second)
	}
}

// WithDisabled creates the new version disabled.
func WithDisabled() SecretOption { return func(s *secretVersion) { s.enabled = false } }

// SetSecret adds a new version of a secret, which becomes its current version, and
// returns the version ID (32 lower-case hex digits). A vault that does not exist is
// created with default options. It panics on an invalid vault or secret name or a value
// over 25 KB, which are programming errors in a test; the admin API reports them instead.
func (e *Emulator) SetSecret(vaultName, name, value string, opts ...SecretOption) string {
	v, err := e.setSecret(vaultName, name, value, opts...)
	if err != nil {
		panic(err)
	}
	return v
}

func (e *Emulator) setSecret(vaultName, name, value string, opts ...SecretOption) (string, error) {
	if !secretNameRE.MatchString(name) {
		return "", fmt.Errorf("emulator: invalid secret name %q (1-127 of [0-9a-zA-Z-])", name)
	}
	if len(value) > maxSecretValue {
		return "", fmt.Errorf("emulator: secret value of %d bytes exceeds 25 KB", len(value))
	}
	e.mu.RLock()
	_, exists := e.vaults[strings.ToLower(vaultName)]
	e.mu.RUnlock()
	if !exists {
		if err := e.AddVault(vaultName, VaultOptions{}); err != nil {
			return "", err
		}
	}
	now := time.Now().UTC().Truncate(time.Second)
	sv := &secretVersion{version: randomHex(16), value: value, enabled: true, created: now, updated: now}
	for _, o := range opts {
		o(sv)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return "", err
	}
	key := strings.ToLower(name)
	s := v.secrets[key]
	if s == nil {
		s = &secret{name: name}
		v.secrets[key] = s
	}
	s.versions = append(s.versions, sv)
	e.publishLocked(v, EventSecretNewVersionCreated, "Secret", s.name, sv.version, sv.notBefore, sv.expires)
	return sv.version, nil
}

// DisableSecret disables the current version of a secret.
func (e *Emulator) DisableSecret(vaultName, name string) error {
	return e.setEnabled(vaultName, name, false)
}

// EnableSecret enables the current version of a secret.
func (e *Emulator) EnableSecret(vaultName, name string) error {
	return e.setEnabled(vaultName, name, true)
}

func (e *Emulator) setEnabled(vaultName, name string, enabled bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, err := e.secretLocked(vaultName, name)
	if err != nil {
		return err
	}
	cur := s.versions[len(s.versions)-1]
	cur.enabled = enabled
	cur.updated = time.Now().UTC().Truncate(time.Second)
	return nil
}

// SecretUpdate changes the properties of an existing version of a secret without
// adding a version, as Key Vault's Update Secret (PATCH /secrets/{name}/{version})
// does: the version's updated attribute becomes now (whole seconds), and so does the
// secret's in a listing when the version is the current one. Nil fields stay as
// they are.
type SecretUpdate struct {
	// Version is the version to update; empty means the current one.
	Version string `json:"version,omitempty"`
	// Enabled enables or disables the version.
	Enabled *bool `json:"enabled,omitempty"`
	// ContentType replaces the content type.
	ContentType *string `json:"contentType,omitempty"`
	// Tags replace all tags; an empty, non-nil map removes them.
	Tags map[string]string `json:"tags"`
}

// UpdateSecret updates the properties of a version of a secret (see SecretUpdate).
func (e *Emulator) UpdateSecret(vaultName, name string, u SecretUpdate) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, err := e.secretLocked(vaultName, name)
	if err != nil {
		return err
	}
	sv := s.versions[len(s.versions)-1]
	if u.Version != "" {
		sv = nil
		for _, x := range s.versions {
			if strings.EqualFold(x.version, u.Version) {
				sv = x
			}
		}
		if sv == nil {
			return fmt.Errorf("emulator: secret %q in vault %q has no version %q: %w", name, vaultName, u.Version, ErrNotFound)
		}
	}
	if u.Enabled != nil {
		sv.enabled = *u.Enabled
	}
	if u.ContentType != nil {
		sv.contentType = *u.ContentType
	}
	if u.Tags != nil {
		sv.tags = maps.Clone(u.Tags)
	}
	sv.updated = time.Now().UTC().Truncate(time.Second)
	return nil
}

// DeleteSecret deletes a secret with all its versions.
func (e *Emulator) DeleteSecret(vaultName, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return err
	}
	if _, ok := v.secrets[strings.ToLower(name)]; !ok {
		return fmt.Errorf("emulator: secret %q in vault %q: %w", name, vaultName, ErrNotFound)
	}
	delete(v.secrets, strings.ToLower(name))
	return nil
}

func (e *Emulator) secretLocked(vaultName, name string) (*secret, error) {
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return nil, err
	}
	s, ok := v.secrets[strings.ToLower(name)]
	if !ok {
		return nil, fmt.Errorf("emulator: secret %q in vault %q: %w", name, vaultName, ErrNotFound)
	}
	return s, nil
}

// SecretVersion is a copy of one version of a secret, for tests.
type SecretVersion struct {
	Name        string
	Version     string
	Value       string
	ContentType string
	Tags        map[string]string
	Enabled     bool
	Created     time.Time
	Updated     time.Time
	NotBefore   time.Time // zero when unset
	Expires     time.Time // zero when unset
}

func (s *secret) export(sv *secretVersion) SecretVersion {
	return SecretVersion{Name: s.name, Version: sv.version, Value: sv.value, ContentType: sv.contentType,
		Tags: maps.Clone(sv.tags), Enabled: sv.enabled, Created: sv.created, Updated: sv.updated,
		NotBefore: sv.notBefore, Expires: sv.expires}
}

// Secret returns the current version of a secret.
func (e *Emulator) Secret(vaultName, name string) (SecretVersion, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	s, err := e.secretLocked(vaultName, name)
	if err != nil {
		return SecretVersion{}, false
	}
	return s.export(s.versions[len(s.versions)-1]), true
}

// SecretVersions returns all versions of a secret, oldest first.
func (e *Emulator) SecretVersions(vaultName, name string) []SecretVersion {
	e.mu.RLock()
	defer e.mu.RUnlock()
	s, err := e.secretLocked(vaultName, name)
	if err != nil {
		return nil
	}
	out := make([]SecretVersion, 0, len(s.versions))
	for _, sv := range s.versions {
		out = append(out, s.export(sv))
	}
	return out
}

// VaultReads is the number of secret reads (gets and list pages) a vault served since
// start or ResetStats, the ones that count against its throttle.
func (e *Emulator) VaultReads(vaultName string) int64 {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if v, ok := e.vaults[strings.ToLower(vaultName)]; ok {
		return v.reads.Load()
	}
	return 0
}

// SetThrottle changes the throttle of all vaults: limit reads per window (limit < 0
// disables throttling). Windows in progress start over.
func (e *Emulator) SetThrottle(limit int, window time.Duration) {
	if limit == 0 {
		limit = DefaultThrottleLimit
	}
	if window <= 0 {
		window = DefaultThrottleWindow
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.throttle = throttleConfig{limit: limit, window: window}
	for _, v := range e.vaults {
		v.throttle.mu.Lock()
		v.throttle.ring = nil
		v.throttle.mu.Unlock()
	}
}

// ---- Key Vault data plane ----

const (
	linkNotFound  = "https://go.microsoft.com/fwlink/?linkid=2125182"
	linkForbidden = "https://go.microsoft.com/fwlink/?linkid=2125287"
)

type kvErrorDetail struct {
	Code       string         `json:"code"`
	Message    string         `json:"message,omitempty"`
	InnerError *kvErrorDetail `json:"innererror,omitempty"`
}

// kvError is Key Vault's error body, {"error":{"code","message","innererror":{"code"}}}.
func kvError(code, message, inner string) map[string]any {
	d := kvErrorDetail{Code: code, Message: message}
	if inner != "" {
		d.InnerError = &kvErrorDetail{Code: inner}
	}
	return map[string]any{"error": d}
}

func kvFaultBody(status int) any {
	switch status {
	case http.StatusTooManyRequests:
		return kvError("Throttled", "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached", "")
	case http.StatusInternalServerError:
		return kvError("InternalServerError", "An unexpected error occurred while processing the request.", "")
	case http.StatusServiceUnavailable:
		return kvError("ServiceUnavailable", "The service is temporarily unavailable. Please retry later.", "")
	}
	return kvError(strings.ReplaceAll(http.StatusText(status), " ", ""), http.StatusText(status)+".", "")
}

type kvRequest struct {
	op         string // OpGet or OpList
	collection string // "secrets", "certificates" or "keys"
	perm       Permission
	list       string // "versions", or "secrets" for a list of the collection
	name       string
	version    string
}

// parseKVPath parses the path of a get or a list of secrets, certificates or keys.
func parseKVPath(p string) (kvRequest, bool) {
	p = strings.TrimPrefix(p, "/")
	parts := strings.Split(p, "/")
	if parts[0] == "certificates" || parts[0] == "keys" {
		perm, listPerm := PermCertificatesGet, PermCertificatesList
		if parts[0] == "keys" {
			perm, listPerm = PermKeysGet, PermKeysList
		}
		r := kvRequest{op: OpGet, collection: parts[0], perm: perm}
		switch {
		case len(parts) == 1 || len(parts) == 2 && parts[1] == "":
			return kvRequest{op: OpList, collection: parts[0], perm: listPerm, list: "secrets"}, true
		case len(parts) == 3 && parts[1] != "" && parts[2] == "versions", len(parts) == 4 && parts[1] != "" && parts[2] == "versions" && parts[3] == "":
			return kvRequest{op: OpList, collection: parts[0], perm: listPerm, list: "versions", name: parts[1]}, true
		case len(parts) == 2 && parts[1] != "", len(parts) == 3 && parts[1] != "" && parts[2] == "":
			r.name = parts[1]
			return r, true
		case len(parts) == 3 && parts[2] != "versions", len(parts) == 4 && parts[2] != "versions" && parts[3] == "":
			r.name, r.version = parts[1], parts[2]
			return r, true
		}
		return kvRequest{}, false
	}
	if parts[0] != "secrets" {
		return kvRequest{}, false
	}
	switch {
	case len(parts) == 1 || len(parts) == 2 && parts[1] == "":
		return kvRequest{op: OpList, collection: "secrets", perm: PermList, list: "secrets"}, true
	case len(parts) == 2 || len(parts) == 3 && parts[2] == "":
		return kvRequest{op: OpGet, collection: "secrets", perm: PermGet, name: parts[1]}, true
	case len(parts) == 3 && parts[2] == "versions", len(parts) == 4 && parts[2] == "versions" && parts[3] == "":
		return kvRequest{op: OpList, collection: "secrets", perm: PermList, list: "versions", name: parts[1]}, true
	case len(parts) == 3 || len(parts) == 4 && parts[3] == "":
		return kvRequest{op: OpGet, collection: "secrets", perm: PermGet, name: parts[1], version: parts[2]}, true
	}
	return kvRequest{}, false
}

func (e *Emulator) serveKeyVault(w http.ResponseWriter, r *http.Request, vaultName string, c *cloudInfo) {
	ri := infoFrom(r)
	ri.vault = vaultName
	e.delay(r)
	h := w.Header()
	h.Set("Cache-Control", "no-cache")
	h.Set("x-ms-request-id", newUUID())
	h.Set("x-ms-keyvault-service-version", "1.9.2.0")
	h.Set("x-ms-keyvault-network-info", "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;")
	h.Set("Strict-Transport-Security", "max-age=31536000;includeSubDomains")

	e.mu.RLock()
	v, ok := e.vaults[vaultName]
	var opts VaultOptions
	if ok {
		opts = v.opts
		ok = v.cloud == c
	}
	e.mu.RUnlock()
	if !ok {
		// Unreachable through DialContext, which fails the name lookup instead.
		writeJSON(w, http.StatusNotFound, kvError("VaultNotFound", "The vault "+vaultName+" does not exist.", ""))
		return
	}
	h.Set("x-ms-keyvault-region", opts.Location)

	req, ok := parseKVPath(r.URL.Path)
	if !ok {
		ri.op = "unknown"
		writeJSON(w, http.StatusNotFound, kvError("NotFound", "The requested resource was not found.", ""))
		return
	}
	ri.op = req.op
	if r.Method != http.MethodGet {
		writeJSON(w, http.StatusMethodNotAllowed, kvError("MethodNotAllowed",
			"The emulator serves only reads (GET); "+r.Method+" is not supported.", ""))
		return
	}
	q := r.URL.Query()
	if q.Get("api-version") == "" {
		writeJSON(w, http.StatusBadRequest, kvError("BadParameter", "The 'api-version' query parameter is missing.", ""))
		return
	}

	// Authentication: the 401 challenge.
	tok, msg := e.checkBearer(r, c, opts.TenantID)
	if msg != "" {
		e.stats.challenges.Add(1)
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://%s/%s", resource="%s"`,
			c.loginHost, opts.TenantID, c.resource))
		writeJSON(w, http.StatusUnauthorized, kvError("Unauthorized", msg, ""))
		return
	}
	ri.clientID = tok.clientID
	if cc := e.clientCounters(tok.clientID); req.op == OpGet {
		cc.valueReads.Add(1)
	} else {
		cc.lists.Add(1)
	}
	caller := fmt.Sprintf("appid=%s;oid=%s;iss=https://sts.windows.net/%s/", tok.clientID, tok.objectID, tok.tenantID)
	vaultDesc := vaultName + ";location=" + opts.Location

	e.mu.RLock()
	firewall := v.firewall
	e.mu.RUnlock()
	if firewall {
		writeJSON(w, http.StatusForbidden, kvError("Forbidden",
			"Client address is not authorized and caller is not a trusted service.\r\nClient address: 127.0.0.1\r\nCaller: "+caller+"\r\nVault: "+vaultDesc,
			"ForbiddenByFirewall"))
		return
	}
	if e.applyFault(w, r, req.op, vaultName, kvFaultBody) {
		return
	}

	e.mu.RLock()
	tc := e.throttle
	e.mu.RUnlock()
	if allowed, wait := v.throttle.allow(time.Now(), tc); !allowed {
		e.stats.throttled.Add(1)
		h.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
		writeJSON(w, http.StatusTooManyRequests, kvFaultBody(http.StatusTooManyRequests))
		return
	}
	v.reads.Add(1)
	if req.op == OpGet {
		e.stats.gets.Add(1)
	} else {
		e.stats.lists.Add(1)
	}

	// Authorization. RBAC has no list-only action for certificates and keys:
	// their read action allows listing them.
	if opts.RBAC {
		switch req.perm {
		case PermCertificatesList:
			req.perm = PermCertificatesGet
		case PermKeysList:
			req.perm = PermKeysGet
		}
	}
	e.mu.RLock()
	granted := v.grants[strings.ToLower(tok.clientID)][req.perm]
	e.mu.RUnlock()
	if !granted {
		if opts.RBAC {
			action := "Microsoft.KeyVault/vaults/secrets/getSecret/action"
			switch req.perm {
			case PermList:
				action = "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
			case PermCertificatesGet:
				action = "Microsoft.KeyVault/vaults/certificates/read"
			case PermKeysGet:
				action = "Microsoft.KeyVault/vaults/keys/read"
			}
			resource := "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-emulator/providers/microsoft.keyvault/vaults/" + vaultName
			if req.name != "" {
				resource += "/" + req.collection + "/" + req.name
			}
			writeJSON(w, http.StatusForbidden, kvError("Forbidden",
				"Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: "+caller+
					"\r\nAction: '"+action+"'\r\nResource: '"+resource+"'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: "+vaultDesc+"\r\n",
				"ForbiddenByRbac"))
			return
		}
		objects, perm, _ := strings.Cut(string(req.perm), "/")
		if perm == "" {
			objects, perm = "secrets", string(req.perm)
		}
		writeJSON(w, http.StatusForbidden, kvError("Forbidden", fmt.Sprintf(
			"The user, group or application '%s' does not have %s %s permission on key vault '%s'. For help resolving this issue, please see %s",
			caller, objects, perm, vaultDesc, linkForbidden), "AccessDenied"))
		return
	}

	if req.name != "" && !secretNameRE.MatchString(req.name) {
		writeJSON(w, http.StatusBadRequest, kvError("BadParameter", "The request URI contains an invalid name: "+req.name, ""))
		return
	}
	host := requestHost(r)
	switch {
	case req.op == OpList && req.collection != "secrets":
		e.serveObjectList(w, r, host, vaultName, req)
		return
	case req.collection == "certificates":
		e.serveGetCertificate(w, host, vaultName, req)
		return
	case req.collection == "keys":
		e.serveGetKey(w, host, vaultName, req)
		return
	case req.op == OpGet:
		e.serveGetSecret(w, host, vaultName, req)
		return
	}
	e.serveList(w, r, host, vaultName, req)
}

// lookupToken returns a copy of the access token the emulator issued as raw.
func (e *Emulator) lookupToken(raw string) (accessToken, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	t, ok := e.tokens[strings.TrimSpace(raw)]
	if !ok {
		return accessToken{}, false
	}
	return *t, true
}

// checkBearer validates the Authorization header; it returns the token, or the message
// of the 401 answer.
func (e *Emulator) checkBearer(r *http.Request, c *cloudInfo, tenant string) (accessToken, string) {
	auth := r.Header.Get("Authorization")
	raw, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || strings.TrimSpace(raw) == "" {
		return accessToken{}, "AKV10000: Request is missing a Bearer or PoP token."
	}
	tok, ok := e.lookupToken(raw)
	switch {
	case !ok:
		return tok, "[BearerReadAccessTokenFailed] Error validating token: 'S2S12005'."
	case !time.Now().Before(tok.expires):
		return tok, "[TokenExpired] Error validating token: 'S2S12086'."
	case strings.TrimSuffix(tok.resource, "/") != c.resource:
		return tok, fmt.Sprintf("AKV10022: Invalid audience. Expected %s, found: %s.", c.resource, tok.resource)
	case !strings.EqualFold(tok.tenantID, tenant):
		return tok, fmt.Sprintf("AKV10032: Invalid issuer. Expected one of https://sts.windows.net/%s/. Found: https://sts.windows.net/%s/.", tenant, tok.tenantID)
	}
	return tok, ""
}

func attributesJSON(sv *secretVersion) map[string]any {
	a := map[string]any{
		"enabled":         sv.enabled,
		"created":         sv.created.Unix(),
		"updated":         sv.updated.Unix(),
		"recoveryLevel":   "Recoverable+Purgeable",
		"recoverableDays": 90,
	}
	if !sv.notBefore.IsZero() {
		a["nbf"] = sv.notBefore.Unix()
	}
	if !sv.expires.IsZero() {
		a["exp"] = sv.expires.Unix()
	}
	return a
}

func propertiesJSON(id string, sv *secretVersion) map[string]any {
	m := map[string]any{"id": id, "attributes": attributesJSON(sv)}
	if sv.contentType != "" {
		m["contentType"] = sv.contentType
	}
	if len(sv.tags) > 0 {
		m["tags"] = sv.tags
	}
	if sv.certBacked {
		m["managed"] = true
	}
	return m
}

func secretNotFound(w http.ResponseWriter, nameOrID string) {
	notFound(w, "SecretNotFound", "secret", nameOrID)
}

func (e *Emulator) serveGetSecret(w http.ResponseWriter, host, vaultName string, req kvRequest) {
	e.mu.RLock()
	var sv *secretVersion
	var s *secret
	if v, ok := e.vaults[vaultName]; ok {
		s = v.secrets[strings.ToLower(req.name)]
	}
	if s != nil {
		if req.version == "" {
			sv = s.versions[len(s.versions)-1]
		} else if versionRE.MatchString(req.version) {
			for _, x := range s.versions {
				if strings.EqualFold(x.version, req.version) {
					sv = x
				}
			}
		}
	}
	var body map[string]any
	var enabled bool
	if sv != nil {
		enabled = sv.enabled
		body = propertiesJSON("https://"+host+"/secrets/"+s.name+"/"+sv.version, sv)
		body["value"] = sv.value
		if sv.certBacked {
			body["kid"] = "https://" + host + "/keys/" + s.name + "/" + sv.version
		}
	}
	e.mu.RUnlock()
	switch {
	case sv == nil && req.version == "":
		secretNotFound(w, req.name)
	case sv == nil:
		secretNotFound(w, req.name+"/"+req.version)
	case !enabled:
		writeJSON(w, http.StatusForbidden, kvError("Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"))
	default:
		writeJSON(w, http.StatusOK, body)
	}
}

// listPage is the page a list request asks for: its size (maxresults) and
// first item ($skiptoken).
type listPage struct {
	maxResults, skip int
}

// parseListPage reads maxresults and $skiptoken; false when it answered 400.
func parseListPage(w http.ResponseWriter, r *http.Request) (listPage, bool) {
	q := r.URL.Query()
	lp := listPage{maxResults: 25}
	if s := q.Get("maxresults"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 25 {
			writeJSON(w, http.StatusBadRequest, kvError("BadParameter",
				"Invalid value for parameter maxresults: "+s+". The value must be between 1 and 25.", ""))
			return lp, false
		}
		lp.maxResults = n
	}
	if tok := q.Get("$skiptoken"); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		n, err2 := strconv.Atoi(strings.TrimPrefix(string(b), "offset:"))
		if err != nil || err2 != nil || n < 0 {
			writeJSON(w, http.StatusBadRequest, kvError("BadParameter", "The $skiptoken parameter is invalid.", ""))
			return lp, false
		}
		lp.skip = n
	}
	return lp, true
}

// listItem is one item of a listing: its sort key (the name, or the version
// id: Key Vault lists in id order, not by date) and its properties, rendered
// only when on the page.
type listItem struct {
	key    string
	render func() map[string]any
}

// listBody sorts items by key and returns the page of lp, with a nextLink to
// path on host when more follow. Call it with e.mu read-locked when render
// reads the vault.
func listBody(r *http.Request, host, path string, lp listPage, items []listItem) map[string]any {
	slices.SortFunc(items, func(a, b listItem) int { return strings.Compare(a.key, b.key) })
	page := []map[string]any{}
	for i := lp.skip; i < len(items) && len(page) < lp.maxResults; i++ {
		page = append(page, items[i].render())
	}
	var next any
	if end := lp.skip + len(page); end < len(items) {
		nq := "api-version=" + url.QueryEscape(r.URL.Query().Get("api-version")) +
			"&$skiptoken=" + base64.RawURLEncoding.EncodeToString([]byte("offset:"+strconv.Itoa(end))) +
			"&maxresults=" + strconv.Itoa(lp.maxResults)
		next = "https://" + host + path + "?" + nq
	}
	return map[string]any{"value": page, "nextLink": next}
}

// listPath is the path of a listing: /secrets, or /secrets/{name}/versions
// (and the same for certificates and keys).
func listPath(req kvRequest) string {
	if req.list == "versions" {
		return "/" + req.collection + "/" + req.name + "/versions"
	}
	return "/" + req.collection
}

// serveList serves one page of /secrets or /secrets/{name}/versions. Versions are listed
// in the order of their IDs, as Key Vault does, not by date.
func (e *Emulator) serveList(w http.ResponseWriter, r *http.Request, host, vaultName string, req kvRequest) {
	lp, ok := parseListPage(w, r)
	if !ok {
		return
	}
	var items []listItem
	// Under the lock: UpdateSecret changes versions in place. Only the page's
	// items are rendered.
	e.mu.RLock()
	v := e.vaults[vaultName]
	if req.list == "versions" {
		s := v.secrets[strings.ToLower(req.name)]
		if s == nil {
			e.mu.RUnlock()
			secretNotFound(w, req.name)
			return
		}
		for _, sv := range s.versions {
			items = append(items, listItem{sv.version, func() map[string]any {
				return propertiesJSON("https://"+host+"/secrets/"+s.name+"/"+sv.version, sv)
			}})
		}
	} else {
		for _, s := range v.secrets {
			items = append(items, listItem{strings.ToLower(s.name), func() map[string]any {
				return propertiesJSON("https://"+host+"/secrets/"+s.name, s.versions[len(s.versions)-1])
			}})
		}
	}
	body := listBody(r, host, listPath(req), lp, items)
	e.mu.RUnlock()
	writeJSON(w, http.StatusOK, body)
}
