package emulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

// Content types of a certificate's secret, as Key Vault names them in the
// certificate policy's secret_props and on the secret.
const (
	ContentTypePKCS12 = "application/x-pkcs12"
	ContentTypePEM    = "application/x-pem-file"
)

// Permissions on certificates and keys. In a vault that uses Azure RBAC,
// PermCertificatesGet and PermKeysGet stand for the data actions
// certificates/read and keys/read, which also allow listing: RBAC has no
// list-only action for certificates and keys. PermCertificatesList and
// PermKeysList are the access policies' list permissions; an RBAC vault
// ignores them (its listings need the read actions).
const (
	PermCertificatesGet  Permission = "certificates/get"
	PermKeysGet          Permission = "keys/get"
	PermCertificatesList Permission = "certificates/list"
	PermKeysList         Permission = "keys/list"
)

// keyVersion is one version of a key: its public JWK only. Key Vault never
// releases private key material, and neither does the emulator hold any.
type keyVersion struct {
	version string
	jwk     map[string]any // kty, key_ops and the public parameters; kid is added when served
	enabled bool
	managed bool // the key backs a certificate
	created time.Time
	updated time.Time
}

type vaultKey struct {
	name     string
	versions []*keyVersion
}

// certVersion is one version of a certificate. Its secret and key versions
// have the same name and version.
type certVersion struct {
	version     string
	cer         []byte // the leaf certificate, DER
	contentType string
	exportable  bool
	keyType     string
	keySize     int
	curve       string
	subject     string
	enabled     bool
	notBefore   time.Time
	expires     time.Time
	created     time.Time
	updated     time.Time
}

type certificate struct {
	name     string
	versions []*certVersion
}

// CertificateOption sets a property of an imported certificate version.
type CertificateOption func(*certImport)

type certImport struct {
	contentType   string
	nonExportable bool
}

// WithPEMContentType stores the certificate's secret as PEM (application/x-pem-file:
// the PKCS#8 private key, then the certificates) instead of base64 PKCS#12.
func WithPEMContentType() CertificateOption {
	return func(c *certImport) { c.contentType = ContentTypePEM }
}

// WithNonExportableKey marks the certificate's key as not exportable: its secret then
// holds the certificates only, without the private key.
func WithNonExportableKey() CertificateOption {
	return func(c *certImport) { c.nonExportable = true }
}

// ImportCertificate adds a new version of a certificate, as az keyvault certificate
// import does, and returns its version. Like Key Vault, it also adds a version of the
// secret and of the key of the same name and version: the secret (managed, with a kid)
// holds the certificate with its private key, base64 PKCS#12 with an empty password by
// default, and the key holds the public key. chain holds the leaf (the certificate of
// priv) and its CA certificates, in the order the secret keeps them; tests use that
// order to check that readers sort the chain themselves. A vault that does not exist is
// created with default options.
func (e *Emulator) ImportCertificate(vaultName, name string, priv crypto.Signer, chain []*x509.Certificate, opts ...CertificateOption) (string, error) {
	if !secretNameRE.MatchString(name) {
		return "", fmt.Errorf("emulator: invalid certificate name %q (1-127 of [0-9a-zA-Z-])", name)
	}
	ci := certImport{contentType: ContentTypePKCS12}
	for _, o := range opts {
		o(&ci)
	}
	leaf, err := leafOf(priv, chain)
	if err != nil {
		return "", err
	}
	jwk, keyType, keySize, curve, err := publicJWK(priv.Public())
	if err != nil {
		return "", err
	}
	value, err := certificateSecret(priv, chain, ci)
	if err != nil {
		return "", err
	}
	if len(value) > maxSecretValue {
		return "", fmt.Errorf("emulator: certificate secret of %d bytes exceeds 25 KB", len(value))
	}
	if err := e.ensureVault(vaultName); err != nil {
		return "", err
	}
	now := time.Now().UTC().Truncate(time.Second)
	version := randomHex(16)
	cv := &certVersion{version: version, cer: bytes.Clone(leaf.Raw), contentType: ci.contentType, exportable: !ci.nonExportable,
		keyType: keyType, keySize: keySize, curve: curve, subject: leaf.Subject.String(), enabled: true,
		notBefore: leaf.NotBefore.UTC(), expires: leaf.NotAfter.UTC(), created: now, updated: now}
	sv := &secretVersion{version: version, value: value, contentType: ci.contentType, enabled: true, created: now, updated: now,
		notBefore: cv.notBefore, expires: cv.expires, certBacked: true}
	kv := &keyVersion{version: version, jwk: jwk, enabled: true, managed: true, created: now, updated: now}

	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return "", err
	}
	lname := strings.ToLower(name)
	c := v.certs[lname]
	if c == nil {
		c = &certificate{name: name}
		v.certs[lname] = c
	}
	c.versions = append(c.versions, cv)
	s := v.secrets[lname]
	if s == nil {
		s = &secret{name: name}
		v.secrets[lname] = s
	}
	s.versions = append(s.versions, sv)
	k := v.keys[lname]
	if k == nil {
		k = &vaultKey{name: name}
		v.keys[lname] = k
	}
	k.versions = append(k.versions, kv)
	e.publishLocked(v, EventCertificateNewVersionCreated, "Certificate", c.name, version, cv.notBefore, cv.expires)
	return version, nil
}

// leafOf returns the certificate of chain whose public key is priv's.
func leafOf(priv crypto.Signer, chain []*x509.Certificate) (*x509.Certificate, error) {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := priv.Public().(equaler)
	if !ok {
		return nil, fmt.Errorf("emulator: unsupported private key type %T", priv)
	}
	for _, c := range chain {
		if pub.Equal(c.PublicKey) {
			return c, nil
		}
	}
	return nil, errors.New("emulator: no certificate in the chain belongs to the private key")
}

// certificateSecret renders the value of a certificate's secret.
func certificateSecret(priv crypto.Signer, chain []*x509.Certificate, ci certImport) (string, error) {
	if ci.contentType == ContentTypePEM {
		var b bytes.Buffer
		if !ci.nonExportable {
			der, err := x509.MarshalPKCS8PrivateKey(priv)
			if err != nil {
				return "", fmt.Errorf("emulator: %w", err)
			}
			_ = pem.Encode(&b, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
		}
		for _, c := range chain {
			_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		return b.String(), nil
	}
	var (
		pfx []byte
		err error
	)
	if ci.nonExportable {
		pfx, err = pkcs12.LegacyDES.EncodeTrustStore(chain, "")
	} else {
		pfx, err = pkcs12.LegacyDES.Encode(priv, chain[0], chain[1:], "")
	}
	if err != nil {
		return "", fmt.Errorf("emulator: encoding PKCS#12: %w", err)
	}
	return base64.StdEncoding.EncodeToString(pfx), nil
}

// SetKey adds a new version of a key with the public key pub (*rsa.PublicKey or
// *ecdsa.PublicKey on P-256, P-384 or P-521), as if Key Vault had created or imported
// it, and returns the version. A nil pub makes a symmetric key (kty "oct-HSM"), whose
// material Key Vault never returns. A vault that does not exist is created with default
// options.
func (e *Emulator) SetKey(vaultName, name string, pub crypto.PublicKey) (string, error) {
	if !secretNameRE.MatchString(name) {
		return "", fmt.Errorf("emulator: invalid key name %q (1-127 of [0-9a-zA-Z-])", name)
	}
	jwk := map[string]any{"kty": "oct-HSM", "key_ops": []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"}}
	if pub != nil {
		var err error
		if jwk, _, _, _, err = publicJWK(pub); err != nil {
			return "", err
		}
	}
	if err := e.ensureVault(vaultName); err != nil {
		return "", err
	}
	now := time.Now().UTC().Truncate(time.Second)
	kv := &keyVersion{version: randomHex(16), jwk: jwk, enabled: true, created: now, updated: now}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return "", err
	}
	lname := strings.ToLower(name)
	k := v.keys[lname]
	if k == nil {
		k = &vaultKey{name: name}
		v.keys[lname] = k
	}
	k.versions = append(k.versions, kv)
	e.publishLocked(v, EventKeyNewVersionCreated, "Key", k.name, kv.version, time.Time{}, time.Time{})
	return kv.version, nil
}

// ensureVault creates a vault with default options if it does not exist.
func (e *Emulator) ensureVault(vaultName string) error {
	e.mu.RLock()
	_, exists := e.vaults[strings.ToLower(vaultName)]
	e.mu.RUnlock()
	if exists {
		return nil
	}
	return e.AddVault(vaultName, VaultOptions{})
}

// b64url is the JWK encoding of a byte string: base64url without padding.
func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// publicJWK returns the public JWK of pub, its key type, RSA size and curve.
func publicJWK(pub crypto.PublicKey) (jwk map[string]any, kty string, size int, curve string, err error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]any{
			"kty":     "RSA",
			"key_ops": []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"},
			"n":       b64url(k.N.Bytes()),
			"e":       b64url(big.NewInt(int64(k.E)).Bytes()),
		}, "RSA", k.N.BitLen(), "", nil
	case *ecdsa.PublicKey:
		var crv string
		switch k.Curve {
		case elliptic.P256():
			crv = "P-256"
		case elliptic.P384():
			crv = "P-384"
		case elliptic.P521():
			crv = "P-521"
		default:
			return nil, "", 0, "", fmt.Errorf("emulator: unsupported curve %s", k.Curve.Params().Name)
		}
		raw, err := k.Bytes() // 0x04 || X || Y, each padded to the curve's size
		if err != nil {
			return nil, "", 0, "", fmt.Errorf("emulator: %w", err)
		}
		n := (len(raw) - 1) / 2
		return map[string]any{
			"kty":     "EC",
			"key_ops": []string{"sign", "verify"},
			"crv":     crv,
			"x":       b64url(raw[1 : 1+n]),
			"y":       b64url(raw[1+n:]),
		}, "EC", 0, crv, nil
	}
	return nil, "", 0, "", fmt.Errorf("emulator: unsupported public key type %T", pub)
}

// CertificateVersion is a copy of one version of a certificate, for tests.
type CertificateVersion struct {
	Name, Version string
	// CER is the leaf certificate (DER), as GET certificate returns it.
	CER         []byte
	ContentType string
	Enabled     bool
}

// Certificate returns the current version of a certificate.
func (e *Emulator) Certificate(vaultName, name string) (CertificateVersion, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	v, ok := e.vaults[strings.ToLower(vaultName)]
	if !ok {
		return CertificateVersion{}, false
	}
	c, ok := v.certs[strings.ToLower(name)]
	if !ok {
		return CertificateVersion{}, false
	}
	cv := c.versions[len(c.versions)-1]
	return CertificateVersion{Name: c.name, Version: cv.version, CER: bytes.Clone(cv.cer), ContentType: cv.contentType, Enabled: cv.enabled}, true
}

// ---- Key Vault data plane: certificates and keys ----

func notFound(w http.ResponseWriter, code, what, nameOrID string) {
	writeJSON(w, http.StatusNotFound, kvError(code, fmt.Sprintf(
		"A %s with (name/id) %s was not found in this key vault. If you recently deleted this %s you may be able to recover it using the correct recovery command. For help resolving this issue, please see %s",
		what, nameOrID, what, linkNotFound), ""))
}

// writeObject answers a get of an object: body, or Key Vault's not-found error
// (code, e.g. KeyNotFound) naming the object as requested, with its version if any.
func writeObject(w http.ResponseWriter, body map[string]any, code, what string, req kvRequest) {
	switch {
	case body != nil:
		writeJSON(w, http.StatusOK, body)
	case req.version == "":
		notFound(w, code, what, req.name)
	default:
		notFound(w, code, what, req.name+"/"+req.version)
	}
}

// pickVersion returns the index of the requested version among n versions (the
// last one when version is empty), or -1.
func pickVersion(n int, version string, versionOf func(int) string) int {
	if version == "" {
		return n - 1
	}
	if !versionRE.MatchString(version) {
		return -1
	}
	for i := range n {
		if strings.EqualFold(versionOf(i), version) {
			return i
		}
	}
	return -1
}

func (e *Emulator) serveGetCertificate(w http.ResponseWriter, host, vaultName string, req kvRequest) {
	e.mu.RLock()
	var body map[string]any
	if c := e.vaults[vaultName].certs[strings.ToLower(req.name)]; c != nil {
		if i := pickVersion(len(c.versions), req.version, func(i int) string { return c.versions[i].version }); i >= 0 {
			body = certificateJSON(host, c.name, c.versions[i])
		}
	}
	e.mu.RUnlock()
	writeObject(w, body, "CertificateNotFound", "certificate", req)
}

// serveObjectList serves one page of /certificates, /certificates/{name}/versions,
// /keys or /keys/{name}/versions: properties only (certificates with their
// thumbprint x5t, keys with their kid), never a certificate, key or secret. As
// for secrets, versions come in the order of their ids, not by date, and dates
// have whole seconds.
func (e *Emulator) serveObjectList(w http.ResponseWriter, r *http.Request, host, vaultName string, req kvRequest) {
	lp, ok := parseListPage(w, r)
	if !ok {
		return
	}
	base := "https://" + host + "/" + req.collection + "/"
	var items []listItem
	e.mu.RLock()
	v := e.vaults[vaultName]
	found := req.list != "versions"
	if req.collection == "certificates" {
		for key, c := range v.certs {
			switch {
			case req.list != "versions":
				cv := c.versions[len(c.versions)-1]
				items = append(items, listItem{key, func() map[string]any { return certificateItemJSON(base+c.name, cv) }})
			case key == strings.ToLower(req.name):
				found = true
				for _, cv := range c.versions {
					items = append(items, listItem{cv.version, func() map[string]any { return certificateItemJSON(base+c.name+"/"+cv.version, cv) }})
				}
			}
		}
	} else {
		for key, k := range v.keys {
			switch {
			case req.list != "versions":
				kv := k.versions[len(k.versions)-1]
				items = append(items, listItem{key, func() map[string]any { return keyItemJSON(base+k.name, kv) }})
			case key == strings.ToLower(req.name):
				found = true
				for _, kv := range k.versions {
					items = append(items, listItem{kv.version, func() map[string]any { return keyItemJSON(base+k.name+"/"+kv.version, kv) }})
				}
			}
		}
	}
	var body map[string]any
	if found {
		body = listBody(r, host, listPath(req), lp, items)
	}
	e.mu.RUnlock()
	switch {
	case !found && req.collection == "certificates":
		notFound(w, "CertificateNotFound", "certificate", req.name)
	case !found:
		notFound(w, "KeyNotFound", "key", req.name)
	default:
		writeJSON(w, http.StatusOK, body)
	}
}

// certificateAttributes are a certificate version's attributes (whole seconds).
func certificateAttributes(cv *certVersion) map[string]any {
	return map[string]any{
		"enabled":         cv.enabled,
		"nbf":             cv.notBefore.Unix(),
		"exp":             cv.expires.Unix(),
		"created":         cv.created.Unix(),
		"updated":         cv.updated.Unix(),
		"recoveryLevel":   "Recoverable+Purgeable",
		"recoverableDays": 90,
	}
}

// certificateItemJSON is a certificate's item in a listing: id, x5t and
// attributes.
func certificateItemJSON(id string, cv *certVersion) map[string]any {
	thumb := sha1.Sum(cv.cer)
	return map[string]any{"id": id, "x5t": base64.RawURLEncoding.EncodeToString(thumb[:]), "attributes": certificateAttributes(cv)}
}

// keyAttributes are a key version's attributes (whole seconds).
func keyAttributes(kv *keyVersion) map[string]any {
	return map[string]any{
		"enabled":         kv.enabled,
		"created":         kv.created.Unix(),
		"updated":         kv.updated.Unix(),
		"recoveryLevel":   "Recoverable+Purgeable",
		"recoverableDays": 90,
		"exportable":      false,
	}
}

// keyItemJSON is a key's item in a listing: kid, attributes and managed.
func keyItemJSON(kid string, kv *keyVersion) map[string]any {
	m := map[string]any{"kid": kid, "attributes": keyAttributes(kv)}
	if kv.managed {
		m["managed"] = true
	}
	return m
}

// certificateJSON is Key Vault's certificate bundle.
func certificateJSON(host, name string, cv *certVersion) map[string]any {
	thumb := sha1.Sum(cv.cer)
	attrs := certificateAttributes(cv)
	keyProps := map[string]any{"exportable": cv.exportable, "kty": cv.keyType, "reuse_key": false}
	if cv.keySize > 0 {
		keyProps["key_size"] = cv.keySize
	}
	if cv.curve != "" {
		keyProps["crv"] = cv.curve
	}
	base := "https://" + host
	return map[string]any{
		"id":         base + "/certificates/" + name + "/" + cv.version,
		"kid":        base + "/keys/" + name + "/" + cv.version,
		"sid":        base + "/secrets/" + name + "/" + cv.version,
		"x5t":        base64.RawURLEncoding.EncodeToString(thumb[:]),
		"cer":        base64.StdEncoding.EncodeToString(cv.cer),
		"attributes": attrs,
		"policy": map[string]any{
			"id":           base + "/certificates/" + name + "/policy",
			"key_props":    keyProps,
			"secret_props": map[string]any{"contentType": cv.contentType},
			"x509_props":   map[string]any{"subject": cv.subject, "validity_months": max(1, int(cv.expires.Sub(cv.notBefore).Hours()/24/30))},
			"issuer":       map[string]any{"name": "Unknown"},
			"attributes":   map[string]any{"enabled": true, "created": cv.created.Unix(), "updated": cv.updated.Unix()},
		},
	}
}

func (e *Emulator) serveGetKey(w http.ResponseWriter, host, vaultName string, req kvRequest) {
	e.mu.RLock()
	var body map[string]any
	if k := e.vaults[vaultName].keys[strings.ToLower(req.name)]; k != nil {
		if i := pickVersion(len(k.versions), req.version, func(i int) string { return k.versions[i].version }); i >= 0 {
			body = keyJSON(host, k.name, k.versions[i])
		}
	}
	e.mu.RUnlock()
	writeObject(w, body, "KeyNotFound", "key", req)
}

// keyJSON is Key Vault's key bundle: the public JWK and the attributes.
func keyJSON(host, name string, kv *keyVersion) map[string]any {
	jwk := make(map[string]any, len(kv.jwk)+1)
	for k, v := range kv.jwk {
		jwk[k] = v
	}
	jwk["kid"] = "https://" + host + "/keys/" + name + "/" + kv.version
	body := map[string]any{"key": jwk, "attributes": keyAttributes(kv)}
	if kv.managed {
		body["managed"] = true
	}
	return body
}

// CertificateConfig is a certificate to import (a VaultConfig's, or the admin API's):
// each import adds a version.
type CertificateConfig struct {
	Name string `json:"name"`
	// PEM holds the private key (PKCS#8, PKCS#1 or SEC 1) and the certificates: the
	// leaf (the key's) and its CA certificates, in the order the secret keeps them.
	PEM string `json:"pem"`
	// ContentType of the certificate's secret: application/x-pkcs12 (the default) or
	// application/x-pem-file.
	ContentType string `json:"contentType,omitempty"`
	// NonExportable leaves the private key out of the certificate's secret.
	NonExportable bool `json:"nonExportable,omitempty"`
}

func (c CertificateConfig) importInto(e *Emulator, vaultName, name string) (string, error) {
	var (
		priv  crypto.Signer
		chain []*x509.Certificate
	)
	rest := []byte(c.PEM)
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return "", fmt.Errorf("emulator: certificate %q: %w", name, err)
			}
			chain = append(chain, cert)
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			k, err := parsePrivateKey(b.Bytes)
			if err != nil {
				return "", fmt.Errorf("emulator: certificate %q: %w", name, err)
			}
			priv = k
		}
	}
	if priv == nil || len(chain) == 0 {
		return "", fmt.Errorf("emulator: certificate %q: pem needs a private key and at least one certificate", name)
	}
	var opts []CertificateOption
	switch c.ContentType {
	case "", ContentTypePKCS12:
	case ContentTypePEM:
		opts = append(opts, WithPEMContentType())
	default:
		return "", fmt.Errorf("emulator: certificate %q: content type %q is neither %s nor %s", name, c.ContentType, ContentTypePKCS12, ContentTypePEM)
	}
	if c.NonExportable {
		opts = append(opts, WithNonExportableKey())
	}
	return e.ImportCertificate(vaultName, name, priv, chain, opts...)
}

// KeyConfig is a key to add (a VaultConfig's, or the admin API's): each adds a version.
type KeyConfig struct {
	Name string `json:"name"`
	// PEM is the key's public key ("PUBLIC KEY") or a private key, of which only the
	// public part is kept; empty makes a symmetric key.
	PEM string `json:"pem,omitempty"`
}

func (k KeyConfig) importInto(e *Emulator, vaultName, name string) (string, error) {
	if strings.TrimSpace(k.PEM) == "" {
		return e.SetKey(vaultName, name, nil)
	}
	b, _ := pem.Decode([]byte(k.PEM))
	if b == nil {
		return "", fmt.Errorf("emulator: key %q: pem holds no PEM block", name)
	}
	var pub crypto.PublicKey
	if b.Type == "PUBLIC KEY" {
		p, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return "", fmt.Errorf("emulator: key %q: %w", name, err)
		}
		pub = p
	} else {
		priv, err := parsePrivateKey(b.Bytes)
		if err != nil {
			return "", fmt.Errorf("emulator: key %q: %w", name, err)
		}
		pub = priv.Public()
	}
	return e.SetKey(vaultName, name, pub)
}

// parsePrivateKey parses a PKCS#8, PKCS#1 or SEC 1 private key.
func parsePrivateKey(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("unsupported private key type %T", k)
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(der); err == nil {
		return k, nil
	}
	return nil, errors.New("the private key is neither PKCS#8, PKCS#1 nor SEC 1")
}

// CertificateVersions returns the versions of a certificate, oldest first.
func (e *Emulator) CertificateVersions(vaultName, name string) []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []string
	if v, ok := e.vaults[strings.ToLower(vaultName)]; ok {
		if c := v.certs[strings.ToLower(name)]; c != nil {
			for _, cv := range c.versions {
				out = append(out, cv.version)
			}
		}
	}
	return out
}

// KeyVersions returns the versions of a key, oldest first.
func (e *Emulator) KeyVersions(vaultName, name string) []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []string
	if v, ok := e.vaults[strings.ToLower(vaultName)]; ok {
		if k := v.keys[strings.ToLower(name)]; k != nil {
			for _, kv := range k.versions {
				out = append(out, kv.version)
			}
		}
	}
	return out
}
