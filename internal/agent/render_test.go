package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/google/go-cmp/cmp"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

func TestOrderChain(t *testing.T) {
	ch, err := emulator.NewTestChain("a.example", "EC")
	if err != nil {
		t.Fatal(err)
	}
	stray, err := emulator.NewTestChain("b.example", "EC")
	if err != nil {
		t.Fatal(err)
	}
	names := func(cs []*x509.Certificate) string {
		var s []string
		for _, c := range cs {
			s = append(s, c.Subject.CommonName)
		}
		return strings.Join(s, ",")
	}
	want := "a.example,a.example Test Intermediate CA,a.example Test Root CA"
	for _, in := range [][]*x509.Certificate{
		{ch.Leaf, ch.Intermediate, ch.Root},
		{ch.Root, ch.Intermediate, ch.Leaf},
		{ch.Intermediate, ch.Root, ch.Leaf},
	} {
		if got := names(orderChain(ch.LeafKey, in)); got != want {
			t.Errorf("orderChain(%s) = %s, want %s", names(in), got, want)
		}
	}
	// Certificates outside the path follow in their order; without the key's
	// certificate, the first is the leaf.
	got := names(orderChain(ch.LeafKey, []*x509.Certificate{stray.Root, ch.Root, ch.Leaf, stray.Leaf, ch.Intermediate}))
	if want := want + ",b.example Test Root CA,b.example"; got != want {
		t.Errorf("with strays: %s, want %s", got, want)
	}
	if got := names(orderChain(stray.LeafKey, []*x509.Certificate{ch.Intermediate, ch.Root})); got != "a.example Test Intermediate CA,a.example Test Root CA" {
		t.Errorf("without the leaf: %s", got)
	}
}

func TestDecode(t *testing.T) {
	raw := []byte{0, 1, 2, 0xfb, 0xff}
	for _, tc := range []struct {
		enc   agentconfig.Encoding
		value string
		want  []byte
		err   string
	}{
		{"", "as is", []byte("as is"), ""},
		{agentconfig.EncodingBase64, base64.StdEncoding.EncodeToString(raw), raw, ""},
		{agentconfig.EncodingBase64, base64.RawStdEncoding.EncodeToString(raw) + "\n", raw, ""},
		{agentconfig.EncodingBase64, base64.URLEncoding.EncodeToString(raw), raw, ""},
		{agentconfig.EncodingBase64, "AAEC\n+/8=", raw, ""},
		{agentconfig.EncodingBase64, "A", nil, "not base64 at byte 1 of 1"},
		{agentconfig.EncodingHex, "0001\n02FBff", nil, "at byte 5 of 11"},
		{agentconfig.EncodingHex, " 000102FBff ", raw, ""},
		{agentconfig.EncodingHex, "abc", nil, "an odd number of digits (3)"},
	} {
		got, err := decode(tc.enc, []byte(tc.value))
		if tc.err != "" {
			var ce *ContentError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("decode(%s, %q) = %v, want a content error containing %q", tc.enc, tc.value, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != string(tc.want) {
			t.Errorf("decode(%s, %q) = %x, %v; want %x", tc.enc, tc.value, got, err, tc.want)
		}
	}
}

func TestJSONFiles(t *testing.T) {
	files, err := jsonFiles("cfg", []byte(`{"s":"text\n","n":1.5e3,"b":true,"z":null,"o":{"k": [1, "x"]}}`), 0o400)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range files {
		got[f.Path] = string(f.Data)
		if f.Mode != 0o400 {
			t.Errorf("%s: mode %v", f.Path, f.Mode)
		}
	}
	want := map[string]string{"cfg/s": "text\n", "cfg/n": "1.5e3", "cfg/b": "true", "cfg/z": "null", "cfg/o": `{"k":[1,"x"]}`}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("files (-want +got):\n%s", d)
	}
	for value, wantErr := range map[string]string{
		`null`:            "JSON null",
		`{}`:              "has no keys",
		`"str"`:           "a string rather than an object",
		`{"a/b":"x"}`:     `the JSON key "a/b" cannot be a file name: it contains '/'`,
		`{"":"x"}`:        `the JSON key "" cannot be a file name`,
		`{"a b":"x"}`:     "may only use letters",
		`{"a":"x"} trail`: "not valid JSON (syntax error at byte 11 of 15)",
	} {
		_, err := jsonFiles("cfg", []byte(value), 0)
		var ce *ContentError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("jsonFiles(%s) = %v, want a content error containing %q", value, err, wantErr)
		}
	}
	many := "{"
	for i := range maxJSONKeys + 1 {
		if i > 0 {
			many += ","
		}
		many += `"k` + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26)) + `":1`
	}
	if _, err := jsonFiles("cfg", []byte(many+"}"), 0); err == nil || !strings.Contains(err.Error(), "more than the limit of 256 files") {
		t.Errorf("too many keys: %v", err)
	}
}

func TestPublicKeyDER(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	raw, _ := k.PublicKey.Bytes()
	n := (len(raw) - 1) / 2
	// Key Vault may send coordinates without leading zeros.
	x := raw[1 : 1+n]
	for len(x) > 1 && x[0] == 0 {
		x = x[1:]
	}
	der, err := publicKeyDER(&azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeECHSM), Crv: to.Ptr(azkeys.CurveNameP521), X: x, Y: raw[1+n:]})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil || !pub.(*ecdsa.PublicKey).Equal(&k.PublicKey) {
		t.Errorf("P-521: %v", err)
	}
	for _, tc := range []struct {
		k    azkeys.JSONWebKey
		want string
	}{
		{azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeEC), Crv: to.Ptr(azkeys.CurveNameP256K), X: []byte{1}, Y: []byte{2}}, `the curve "P-256K"`},
		{azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeEC), Crv: to.Ptr(azkeys.CurveNameP256), X: []byte{1}, Y: []byte{2}}, "not a point of P-256"},
		{azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeRSA)}, "without a usable modulus"},
		{azkeys.JSONWebKey{Kty: to.Ptr(azkeys.KeyTypeOct)}, "the key is symmetric (oct)"},
		{azkeys.JSONWebKey{}, `the key's type ""`},
	} {
		_, err := publicKeyDER(&tc.k)
		var ce *ContentError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("publicKeyDER(%+v) = %v, want %q", tc.k, err, tc.want)
		}
	}
}

// TestCertificatePEMErrors covers the content errors of certificate secrets
// that the emulator cannot produce.
func TestCertificatePEMErrors(t *testing.T) {
	e := agentconfig.Entry{File: "tls", Name: "web-cert", Format: agentconfig.FormatPEM}
	ch, _ := emulator.NewTestChain("a.example", "EC")
	modern, err := pkcs12.Modern2023.Encode(ch.LeafKey, ch.Leaf, []*x509.Certificate{ch.Root, ch.Intermediate}, "")
	if err != nil {
		t.Fatal(err)
	}
	// A PKCS#12 file from other tools (AES, SHA-256) converts too.
	p, err := certificatePEM(e, objectValue{value: []byte(base64.StdEncoding.EncodeToString(modern)), contentType: contentTypePKCS12, certBacked: true})
	if err != nil || strings.Count(string(p.certs), "BEGIN CERTIFICATE") != 3 {
		t.Errorf("Modern2023 PKCS#12: %v", err)
	}
	withPassword, _ := pkcs12.Modern2023.Encode(ch.LeafKey, ch.Leaf, nil, "secret")
	for _, tc := range []struct {
		v    objectValue
		want string
	}{
		{objectValue{value: []byte("%%%"), contentType: contentTypePKCS12, certBacked: true}, "its value is not base64"},
		{objectValue{value: []byte(base64.StdEncoding.EncodeToString(withPassword)), contentType: contentTypePKCS12, certBacked: true}, "not a PKCS#12 file with an empty password"},
		{objectValue{value: []byte("no pem here"), contentType: contentTypePEM, certBacked: true}, "holds no PEM block"},
		{objectValue{value: []byte("x"), contentType: "text/plain", certBacked: true}, "belongs to a certificate, but has an unknown content type (content type text/plain)"},
		{objectValue{value: []byte("x")}, "is not certificate-backed (content type none)"},
	} {
		_, err := certificatePEM(e, tc.v)
		var ce *ContentError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("certificatePEM(%s) = %v, want %q", tc.v.contentType, err, tc.want)
		}
	}
}
