package emulator

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"software.sslmate.com/src/go-pkcs12"
)

func certificatesClient(t *testing.T, vaultURL string, cred azcore.TokenCredential, tr http.RoundTripper) *azcertificates.Client {
	t.Helper()
	c, err := azcertificates.NewClient(vaultURL, cred, &azcertificates.ClientOptions{ClientOptions: clientOptions(tr, noRetry)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func keysClient(t *testing.T, vaultURL string, cred azcore.TokenCredential, tr http.RoundTripper) *azkeys.Client {
	t.Helper()
	c, err := azkeys.NewClient(vaultURL, cred, &azkeys.ClientOptions{ClientOptions: clientOptions(tr, noRetry)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testChain(t *testing.T, keyType string) TestChain {
	t.Helper()
	c, err := NewTestChain("web.contoso.example", keyType)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGetCertificate reads an imported certificate, its secret and its key with the
// unmodified SDK, as Key Vault serves them: one version shared by all three, the
// secret managed and naming the key, the policy naming the secret's content type.
func TestGetCertificate(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	if err := e.Grant("myvault", clientID, PermGet, PermList, PermCertificatesGet, PermKeysGet); err == nil {
		t.Fatal("Grant on a missing vault succeeded")
	}
	ch := testChain(t, "RSA")
	// The secret keeps the order it was given: root first, to check readers sort.
	v1, err := e.ImportCertificate("myvault", "web-cert", ch.LeafKey, []*x509.Certificate{ch.Root, ch.Leaf, ch.Intermediate})
	if err != nil {
		t.Fatal(err)
	}
	ecChain := testChain(t, "EC")
	v2, err := e.ImportCertificate("myvault", "web-cert-pem", ecChain.LeafKey, ecChain.Chain(), WithPEMContentType())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Grant("myvault", clientID, PermGet, PermList, PermCertificatesGet, PermKeysGet); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	vaultURL := e.VaultURL("myvault")
	certs := certificatesClient(t, vaultURL, cred, tr)
	secrets := secretsClient(t, vaultURL, cred, tr, noRetry)
	keys := keysClient(t, vaultURL, cred, tr)

	for _, tc := range []struct {
		name, version, contentType string
		chain                      TestChain
	}{
		{"web-cert", v1, ContentTypePKCS12, ch},
		{"web-cert-pem", v2, ContentTypePEM, ecChain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, version := range []string{"", tc.version} {
				c, err := certs.GetCertificate(ctx, tc.name, version, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(c.CER, tc.chain.Leaf.Raw) {
					t.Error("cer is not the leaf certificate")
				}
				if c.ID.Name() != tc.name || c.ID.Version() != tc.version || c.KID.Version() != tc.version || c.SID.Version() != tc.version ||
					!strings.Contains(string(*c.KID), "/keys/") || !strings.Contains(string(*c.SID), "/secrets/") {
					t.Errorf("ids %s, %s, %s; want certificates/, keys/ and secrets/%s/%s", *c.ID, *c.KID, *c.SID, tc.name, tc.version)
				}
				if c.Policy == nil || c.Policy.SecretProperties == nil || *c.Policy.SecretProperties.ContentType != tc.contentType {
					t.Errorf("policy %+v: want secret_props.contentType %s", c.Policy, tc.contentType)
				}
				if c.Policy.KeyProperties == nil || !*c.Policy.KeyProperties.Exportable {
					t.Errorf("key_props %+v: want exportable", c.Policy.KeyProperties)
				}
				if c.Attributes == nil || !c.Attributes.Expires.Equal(tc.chain.Leaf.NotAfter) || len(c.X509Thumbprint) != 20 {
					t.Errorf("attributes %+v, thumbprint %x", c.Attributes, c.X509Thumbprint)
				}
			}

			s, err := secrets.GetSecret(ctx, tc.name, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if s.ID.Version() != tc.version || s.KID == nil || s.KID.Version() != tc.version || s.Managed == nil || !*s.Managed || *s.ContentType != tc.contentType {
				t.Errorf("secret id %v, kid %v, managed %v, content type %v", s.ID, s.KID, s.Managed, s.ContentType)
			}
			var certsInSecret []*x509.Certificate
			switch tc.contentType {
			case ContentTypePKCS12:
				pfx, err := base64.StdEncoding.DecodeString(*s.Value)
				if err != nil {
					t.Fatal(err)
				}
				key, first, rest, err := pkcs12.DecodeChain(pfx, "")
				if err != nil {
					t.Fatal(err)
				}
				if !samePublic(tc.chain.LeafKey.Public(), key.(*rsa.PrivateKey).Public()) {
					t.Error("the PKCS#12 key is not the leaf's")
				}
				certsInSecret = append([]*x509.Certificate{first}, rest...)
			case ContentTypePEM:
				rest := []byte(*s.Value)
				var types []string
				for {
					var b *pem.Block
					if b, rest = pem.Decode(rest); b == nil {
						break
					}
					types = append(types, b.Type)
					if b.Type == "CERTIFICATE" {
						c, _ := x509.ParseCertificate(b.Bytes)
						certsInSecret = append(certsInSecret, c)
					}
				}
				if strings.Join(types, ",") != "PRIVATE KEY,CERTIFICATE,CERTIFICATE,CERTIFICATE" {
					t.Errorf("PEM blocks %v", types)
				}
			}
			if len(certsInSecret) != 3 {
				t.Fatalf("%d certificates in the secret, want 3", len(certsInSecret))
			}

			k, err := keys.GetKey(ctx, tc.name, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if k.Key.KID.Version() != tc.version || k.Managed == nil || !*k.Managed || k.Key.D != nil {
				t.Errorf("key kid %v, managed %v, private part %v", k.Key.KID, k.Managed, k.Key.D != nil)
			}
			if got := jwkPublic(t, k.Key); !samePublic(got, tc.chain.LeafKey.Public()) {
				t.Error("the key's JWK is not the leaf's public key")
			}
		})
	}

	// The version list of a certificate's secret marks it managed.
	pager := secrets.NewListSecretPropertiesVersionsPager("web-cert", nil)
	page, err := pager.NextPage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Value) != 1 || page.Value[0].Managed == nil || !*page.Value[0].Managed {
		t.Errorf("versions %+v: want one managed version", page.Value)
	}
}

// samePublic reports whether two public keys are equal.
func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// jwkPublic rebuilds the public key of a JWK.
func jwkPublic(t *testing.T, k *azkeys.JSONWebKey) crypto.PublicKey {
	t.Helper()
	switch *k.Kty {
	case azkeys.KeyTypeRSA:
		return &rsa.PublicKey{N: new(big.Int).SetBytes(k.N), E: int(new(big.Int).SetBytes(k.E).Int64())}
	case azkeys.KeyTypeEC:
		curve := map[azkeys.CurveName]elliptic.Curve{azkeys.CurveNameP256: elliptic.P256(), azkeys.CurveNameP384: elliptic.P384(), azkeys.CurveNameP521: elliptic.P521()}[*k.Crv]
		raw := append(append([]byte{4}, k.X...), k.Y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
		if err != nil {
			t.Fatal(err)
		}
		return pub
	}
	t.Fatalf("key type %s", *k.Kty)
	return nil
}

func TestGetKey(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	vRSA1, err := e.SetKey("myvault", "signing", rsaKey.Public())
	if err != nil {
		t.Fatal(err)
	}
	vRSA2, _ := e.SetKey("myvault", "signing", p384.Public()) // a new version of another type
	vEC, _ := e.SetKey("myvault", "ec521", p521.Public())
	vOct, _ := e.SetKey("myvault", "wrapping", nil)
	if err := e.Grant("myvault", clientID, PermKeysGet); err != nil {
		t.Fatal(err)
	}
	keys := keysClient(t, e.VaultURL("myvault"), cred, tr)
	ctx := context.Background()
	for _, tc := range []struct {
		name, version, wantVersion string
		want                       crypto.PublicKey
	}{
		{"signing", "", vRSA2, p384.Public()},
		{"signing", vRSA1, vRSA1, rsaKey.Public()},
		{"ec521", "", vEC, p521.Public()},
	} {
		k, err := keys.GetKey(ctx, tc.name, tc.version, nil)
		if err != nil {
			t.Fatal(err)
		}
		if k.Key.KID.Name() != tc.name || k.Key.KID.Version() != tc.wantVersion || k.Managed != nil {
			t.Errorf("%s@%s: kid %s, managed %v", tc.name, tc.version, *k.Key.KID, k.Managed)
		}
		if !samePublic(jwkPublic(t, k.Key), tc.want) {
			t.Errorf("%s@%s: wrong public key", tc.name, tc.version)
		}
	}
	k, err := keys.GetKey(ctx, "wrapping", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *k.Key.Kty != azkeys.KeyTypeOctHSM || k.Key.K != nil || k.Key.KID.Version() != vOct {
		t.Errorf("symmetric key: kty %s, material %v, kid %s", *k.Key.Kty, k.Key.K != nil, *k.Key.KID)
	}
}

// TestCertificateAndKeyErrors checks the answers for missing objects and missing
// permissions, in both permission models.
func TestCertificateAndKeyErrors(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	ch := testChain(t, "EC")
	for _, vault := range []string{"policyvault", "rbacvault"} {
		if err := e.AddVault(vault, VaultOptions{RBAC: vault == "rbacvault"}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.ImportCertificate(vault, "web-cert", ch.LeafKey, ch.Chain()); err != nil {
			t.Fatal(err)
		}
	}
	// Secrets get only: certificates and keys are refused.
	for _, vault := range []string{"policyvault", "rbacvault"} {
		if err := e.Grant(vault, clientID, PermGet); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	wantErr := func(err error, status int, code, inner, msg string) {
		t.Helper()
		var re *azcore.ResponseError
		if !errors.As(err, &re) || re.StatusCode != status || re.ErrorCode != code {
			t.Fatalf("error %v, want %d %s", err, status, code)
		}
		var body struct {
			Error struct {
				Message    string
				InnerError struct{ Code string }
			}
		}
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(re.RawResponse.Body)
		_ = json.Unmarshal(b.Bytes(), &body)
		if body.Error.InnerError.Code != inner || !strings.Contains(body.Error.Message, msg) {
			t.Errorf("inner %q, message %q; want %q and %q", body.Error.InnerError.Code, body.Error.Message, inner, msg)
		}
	}
	_, err := certificatesClient(t, e.VaultURL("policyvault"), cred, tr).GetCertificate(ctx, "web-cert", "", nil)
	wantErr(err, 403, "Forbidden", "AccessDenied", "does not have certificates get permission on key vault 'policyvault")
	_, err = keysClient(t, e.VaultURL("policyvault"), cred, tr).GetKey(ctx, "web-cert", "", nil)
	wantErr(err, 403, "Forbidden", "AccessDenied", "does not have keys get permission")
	_, err = certificatesClient(t, e.VaultURL("rbacvault"), cred, tr).GetCertificate(ctx, "web-cert", "", nil)
	wantErr(err, 403, "Forbidden", "ForbiddenByRbac", "Action: 'Microsoft.KeyVault/vaults/certificates/read'")
	_, err = keysClient(t, e.VaultURL("rbacvault"), cred, tr).GetKey(ctx, "web-cert", "", nil)
	wantErr(err, 403, "Forbidden", "ForbiddenByRbac", "/vaults/rbacvault/keys/web-cert'")
	// The certificate's secret is a secret like any other.
	if _, err := secretsClient(t, e.VaultURL("rbacvault"), cred, tr, noRetry).GetSecret(ctx, "web-cert", "", nil); err != nil {
		t.Errorf("the certificate's secret: %v", err)
	}

	if err := e.Grant("policyvault", clientID, PermCertificatesGet, PermKeysGet); err != nil {
		t.Fatal(err)
	}
	certs := certificatesClient(t, e.VaultURL("policyvault"), cred, tr)
	keys := keysClient(t, e.VaultURL("policyvault"), cred, tr)
	_, err = certs.GetCertificate(ctx, "nope", "", nil)
	wantErr(err, 404, "CertificateNotFound", "", "A certificate with (name/id) nope was not found in this key vault")
	_, err = certs.GetCertificate(ctx, "web-cert", "0123456789abcdef0123456789abcdef", nil)
	wantErr(err, 404, "CertificateNotFound", "", "(name/id) web-cert/0123456789abcdef0123456789abcdef was not found")
	_, err = keys.GetKey(ctx, "nope", "", nil)
	wantErr(err, 404, "KeyNotFound", "", "A key with (name/id) nope was not found in this key vault")
	// A key of its own is not a certificate.
	if _, err := e.SetKey("policyvault", "only-a-key", ch.LeafKey.Public()); err != nil {
		t.Fatal(err)
	}
	_, err = certs.GetCertificate(ctx, "only-a-key", "", nil)
	wantErr(err, 404, "CertificateNotFound", "", "only-a-key")
}

func TestImportCertificateOptions(t *testing.T) {
	e := start(t, Options{})
	ch := testChain(t, "RSA")
	if _, err := e.ImportCertificate("kv1", "bad name", ch.LeafKey, ch.Chain()); err == nil {
		t.Error("an invalid name was accepted")
	}
	other := testChain(t, "RSA")
	if _, err := e.ImportCertificate("kv1", "c", other.LeafKey, ch.Chain()); err == nil || !strings.Contains(err.Error(), "no certificate in the chain belongs to the private key") {
		t.Errorf("a chain without the key's certificate: %v", err)
	}
	for _, tc := range []struct {
		name string
		opts []CertificateOption
	}{
		{"pfx", []CertificateOption{WithNonExportableKey()}},
		{"pem", []CertificateOption{WithNonExportableKey(), WithPEMContentType()}},
	} {
		if _, err := e.ImportCertificate("kv1", tc.name, ch.LeafKey, ch.Chain(), tc.opts...); err != nil {
			t.Fatal(err)
		}
		s, _ := e.Secret("kv1", tc.name)
		switch tc.name {
		case "pfx":
			pfx, _ := base64.StdEncoding.DecodeString(s.Value)
			if _, _, _, err := pkcs12.DecodeChain(pfx, ""); err == nil || !strings.Contains(err.Error(), "private key missing") {
				t.Errorf("a non-exportable PKCS#12 secret decodes with a key: %v", err)
			}
		case "pem":
			if strings.Contains(s.Value, "PRIVATE KEY") || strings.Count(s.Value, "BEGIN CERTIFICATE") != 3 {
				t.Errorf("a non-exportable PEM secret holds a private key, or not the chain")
			}
		}
	}
	if c, ok := e.Certificate("kv1", "pem"); !ok || c.ContentType != ContentTypePEM || !bytes.Equal(c.CER, ch.Leaf.Raw) {
		t.Errorf("Certificate = %+v, %v", c, ok)
	}
}

// TestAdminCertificatesAndKeys imports a certificate and a key through the admin API
// and a Config.
func TestAdminCertificatesAndKeys(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	ch := testChain(t, "EC")
	keyDER, _ := x509.MarshalPKCS8PrivateKey(ch.LeafKey)
	var bundle bytes.Buffer
	_ = pem.Encode(&bundle, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	for _, c := range ch.Chain() {
		_ = pem.Encode(&bundle, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(ch.LeafKey.Public())
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))

	admin := func(method, path string, body any) (int, map[string]string) {
		t.Helper()
		b, _ := json.Marshal(body)
		resp, out := rawDo(t, tr, method, "https://"+e.Addr()+"/_emulator"+path, "", http.Header{AdminTokenHeader: {e.AdminToken()}}, b)
		var m map[string]string
		_ = json.Unmarshal(out, &m)
		return resp.StatusCode, m
	}
	code, m := admin(http.MethodPut, "/vaults/kv1/certificates/web-cert", CertificateConfig{PEM: bundle.String(), ContentType: ContentTypePEM})
	if code != http.StatusOK || !hex32.MatchString(m["version"]) {
		t.Fatalf("import: %d %v", code, m)
	}
	if c, ok := e.Certificate("kv1", "web-cert"); !ok || c.Version != m["version"] || c.ContentType != ContentTypePEM {
		t.Errorf("imported %+v", c)
	}
	if code, m := admin(http.MethodPut, "/vaults/kv1/certificates/bad", CertificateConfig{PEM: pubPEM}); code != http.StatusBadRequest || !strings.Contains(m["error"], "needs a private key") {
		t.Errorf("import without a key: %d %v", code, m)
	}
	if code, m := admin(http.MethodPut, "/vaults/kv1/keys/signing", KeyConfig{PEM: pubPEM}); code != http.StatusOK || !hex32.MatchString(m["version"]) {
		t.Errorf("key: %d %v", code, m)
	}
	if code, m := admin(http.MethodPut, "/vaults/kv1/keys/sym", KeyConfig{}); code != http.StatusOK {
		t.Errorf("symmetric key: %d %v", code, m)
	}
	if err := e.Apply(Config{Vaults: []VaultConfig{{Name: "kv2",
		Certificates: []CertificateConfig{{Name: "c", PEM: bundle.String()}},
		Keys:         []KeyConfig{{Name: "k", PEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))}}}}}); err != nil {
		t.Fatal(err)
	}
	if c, ok := e.Certificate("kv2", "c"); !ok || c.ContentType != ContentTypePKCS12 {
		t.Errorf("Config certificate %+v, %v", c, ok)
	}
	if s, ok := e.Secret("kv2", "k"); ok {
		t.Errorf("a key made a secret %+v", s)
	}
}

// TestCertificateThroughAccessToken checks that certificate and key reads need a
// token like secret reads: the first request of a new client is challenged.
func TestCertificateThroughAccessToken(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	ch := testChain(t, "EC")
	if _, err := e.ImportCertificate("kv1", "c", ch.LeafKey, ch.Chain()); err != nil {
		t.Fatal(err)
	}
	if err := e.Grant("kv1", clientID, PermCertificatesGet); err != nil {
		t.Fatal(err)
	}
	resp, body := rawDo(t, tr, http.MethodGet, e.VaultURL("kv1")+"certificates/c?api-version=2025-07-01", "", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `resource="https://vault.azure.net"`) {
		t.Errorf("without a token: %d %s", resp.StatusCode, body)
	}
	tok := vaultToken(t, cred, e.TenantID())
	resp, body = rawDo(t, tr, http.MethodGet, e.VaultURL("kv1")+"certificates/c/?api-version=2025-07-01", tok, nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"cer":`) {
		t.Errorf("with a token: %d %s", resp.StatusCode, body)
	}
	// Get does not include list in the access policy model.
	resp, body = rawDo(t, tr, http.MethodGet, e.VaultURL("kv1")+"certificates/c/versions?api-version=2025-07-01", tok, nil, nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "certificates list permission") {
		t.Errorf("certificate versions without list: %d %s, want 403 naming certificates list", resp.StatusCode, body)
	}
}
