package agent

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Content types of a certificate's secret.
const (
	contentTypePKCS12 = "application/x-pkcs12"
	contentTypePEM    = "application/x-pem-file"
)

// maxJSONKeys bounds the files one JSON secret becomes.
const maxJSONKeys = 256

// ContentError is an object that Key Vault returned but that cannot become
// the entry's files: a secret that is not a certificate's for format=pem, a
// value that is not base64, JSON keys that cannot be file names, a symmetric
// key for key:. It is permanent until someone changes the object or the
// mapping. Why and Fix never quote a value.
type ContentError struct {
	Why, Fix string
	// NoVersion is set when a history read found no enabled version: for an
	// optional entry, the object is absent (see absent).
	NoVersion bool
}

// Error returns why, and the fix when there is one.
func (e *ContentError) Error() string {
	if e.Fix == "" {
		return e.Why
	}
	return e.Why + ". Fix: " + e.Fix
}

// render returns the files of entry e from the value its read returned: with
// history one set per version under <file>/<i>, else one set at <file>. The
// error, a *SecretError wrapping a *ContentError, names the entry.
func render(e agentconfig.Entry, v objectValue, vault string) ([]atomicdir.File, error) {
	wrap := func(version string, err error) error {
		return &SecretError{Name: e.Name, Version: version, File: e.File, Vault: vault, Object: objectWord(e.Kind()), Err: err, OtherVault: e.Vault != ""}
	}
	if e.History == 0 {
		files, err := renderOne(e, e.File, v)
		if err != nil {
			return nil, wrap(e.Version, err)
		}
		return files, nil
	}
	var files []atomicdir.File
	for i, vv := range v.versions {
		fs, err := renderOne(e, e.VersionFile(i), vv)
		if err != nil {
			// Name the version that does not fit, newest first.
			return nil, wrap(vv.version, err)
		}
		files = append(files, fs...)
	}
	return files, nil
}

// renderOne renders one value at base.
func renderOne(e agentconfig.Entry, base string, v objectValue) ([]atomicdir.File, error) {
	mode := fs.FileMode(e.Mode)
	one := func(data []byte) []atomicdir.File {
		return []atomicdir.File{{Path: base, Data: data, Mode: mode}}
	}
	if e.Kind() != agentconfig.ObjectSecret {
		return one(v.value), nil // already PEM
	}
	format := e.Format
	if format == agentconfig.FormatAuto {
		// As the CSI driver's Azure provider: a certificate's secret as PEM, any
		// other secret as stored.
		format = ""
		if v.certBacked {
			format = agentconfig.FormatPEM
		}
	}
	switch format {
	case agentconfig.FormatPEM:
		p, err := certificatePEM(e, v)
		if err != nil {
			return nil, err
		}
		if !e.Split {
			return one(p.all), nil
		}
		if len(p.key) == 0 {
			return nil, noPrivateKey(e)
		}
		if len(p.certs) == 0 {
			return nil, &ContentError{Why: "the certificate's secret holds no certificate, so split has no " + base + agentconfig.SplitCertSuffix + " to write"}
		}
		return []atomicdir.File{
			{Path: base + agentconfig.SplitKeySuffix, Data: p.key, Mode: mode},
			{Path: base + agentconfig.SplitCertSuffix, Data: p.certs, Mode: mode},
		}, nil
	case agentconfig.FormatPFX:
		pfx, err := certificatePFX(e, v)
		if err != nil {
			return nil, err
		}
		return one(pfx), nil
	case agentconfig.FormatJSON:
		return jsonFiles(base, v.value, mode)
	}
	data, err := decode(e.Encoding, v.value)
	if err != nil {
		return nil, err
	}
	return one(data), nil
}

// decode decodes a value written with encoding.
func decode(enc agentconfig.Encoding, value []byte) ([]byte, error) {
	switch enc {
	case agentconfig.EncodingBase64:
		s := strings.TrimSpace(string(value))
		// Standard base64 first (what CSI's provider accepts), then without
		// padding and the URL alphabet. Newlines are ignored.
		var firstErr error
		for _, e := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			b, err := e.DecodeString(s)
			if err == nil {
				return b, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		var ce base64.CorruptInputError
		at := ""
		if errors.As(firstErr, &ce) {
			at = fmt.Sprintf(" (not base64 at byte %d of %d)", int64(ce)+1, len(s))
		}
		return nil, &ContentError{
			Why: "the value is not valid base64" + at + ", but the entry has encoding=base64",
			Fix: "store the value base64-encoded, or drop ;encoding=base64 to write it as it is",
		}
	case agentconfig.EncodingHex:
		s := strings.TrimSpace(string(value))
		// Find the fault without hex.DecodeString, whose error quotes the byte.
		for i := 0; i < len(s); i++ {
			if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return nil, hexError(fmt.Sprintf("a character that is not a hexadecimal digit at byte %d of %d", i+1, len(s)))
			}
		}
		if len(s)%2 != 0 {
			return nil, hexError(fmt.Sprintf("an odd number of digits (%d)", len(s)))
		}
		b := make([]byte, len(s)/2)
		for i := range b {
			b[i] = unhex(s[2*i])<<4 | unhex(s[2*i+1])
		}
		return b, nil
	}
	return value, nil
}

func hexError(what string) error {
	return &ContentError{
		Why: "the value is not valid hex (" + what + "), but the entry has encoding=hex",
		Fix: "store the value hex-encoded, or drop ;encoding=hex to write it as it is",
	}
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// pemParts is a certificate's secret as PEM: all of it, the private key
// alone and the certificates alone.
type pemParts struct {
	all, key, certs []byte
}

// notCertificate explains a secret that has no certificate to convert.
func notCertificate(e agentconfig.Entry, v objectValue) error {
	ct := v.contentType
	if ct == "" {
		ct = "none"
	}
	what := "is not certificate-backed"
	if v.certBacked {
		what = "belongs to a certificate, but has an unknown content type"
	}
	return &ContentError{
		Why: fmt.Sprintf("the secret %s (content type %s), so format=%s has no certificate to convert", what, ct, e.Format),
		Fix: fmt.Sprintf("write the plain form %s=%s to get its value as it is, or name the secret of a Key Vault certificate (content type %s or %s)", e.File, e.Name, contentTypePKCS12, contentTypePEM),
	}
}

// noPrivateKey explains a certificate's secret without its private key.
func noPrivateKey(e agentconfig.Entry) error {
	return &ContentError{
		Why: "the certificate's secret holds no private key (the certificate's key is not exportable)",
		Fix: fmt.Sprintf("write %s=cert:%s for the public certificate alone, or make the key exportable in the certificate's policy and create a new version", e.File, e.Name),
	}
}

// decodePFX decodes a PKCS#12 secret (base64, empty password).
func decodePFX(e agentconfig.Entry, v objectValue) ([]byte, error) {
	pfx, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(v.value)))
	if err != nil {
		return nil, &ContentError{Why: fmt.Sprintf("the certificate's secret has content type %s, but its value is not base64", contentTypePKCS12)}
	}
	return pfx, nil
}

// certificatePEM converts a certificate's secret to PEM: for PKCS#12, the
// private key (PKCS#8) then the certificates from the leaf to the root, as
// the Secrets Store CSI driver's Azure provider writes them; PEM as it is.
func certificatePEM(e agentconfig.Entry, v objectValue) (pemParts, error) {
	switch strings.ToLower(v.contentType) {
	case contentTypePEM:
		var p pemParts
		p.all = v.value
		rest := v.value
		for {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			switch {
			case strings.HasSuffix(b.Type, "PRIVATE KEY"):
				p.key = append(p.key, pem.EncodeToMemory(b)...)
			case b.Type == "CERTIFICATE":
				p.certs = append(p.certs, pem.EncodeToMemory(b)...)
			}
		}
		if len(p.key) == 0 && len(p.certs) == 0 {
			return pemParts{}, &ContentError{Why: fmt.Sprintf("the certificate's secret has content type %s, but holds no PEM block", contentTypePEM)}
		}
		return p, nil
	case contentTypePKCS12:
		pfx, err := decodePFX(e, v)
		if err != nil {
			return pemParts{}, err
		}
		key, first, cas, err := pkcs12.DecodeChain(pfx, "")
		if err != nil {
			if strings.Contains(err.Error(), "private key missing") {
				return pemParts{}, noPrivateKey(e)
			}
			return pemParts{}, &ContentError{Why: fmt.Sprintf("the certificate's secret is not a PKCS#12 file with an empty password, as Key Vault writes them (%s)", firstLine(err.Error(), 200))}
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return pemParts{}, &ContentError{Why: fmt.Sprintf("the certificate's private key cannot be written as PKCS#8 (%v)", err)}
		}
		var p pemParts
		p.key = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
		for _, c := range orderChain(key, append([]*x509.Certificate{first}, cas...)) {
			p.certs = append(p.certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		p.all = append(append([]byte{}, p.key...), p.certs...)
		return p, nil
	}
	return pemParts{}, notCertificate(e, v)
}

// certificatePFX returns a certificate's secret as PKCS#12 bytes.
func certificatePFX(e agentconfig.Entry, v objectValue) ([]byte, error) {
	switch strings.ToLower(v.contentType) {
	case contentTypePKCS12:
		return decodePFX(e, v)
	case contentTypePEM:
		return nil, &ContentError{
			Why: fmt.Sprintf("the certificate's secret is PEM (%s), not PKCS#12, so format=pfx has nothing to copy", contentTypePEM),
			Fix: fmt.Sprintf("write %s=secret:%s;format=pem, or create the certificate with the content type %s", e.File, e.Name, contentTypePKCS12),
		}
	}
	return nil, notCertificate(e, v)
}

// orderChain orders certificates from the leaf (the certificate of key, else
// the first) to the root: each next one is the issuer of the previous one
// (its subject is the issuer's name and its key verifies the signature).
// Certificates outside that path follow in their original order.
func orderChain(key crypto.PrivateKey, certs []*x509.Certificate) []*x509.Certificate {
	leaf := 0
	if s, ok := key.(crypto.Signer); ok {
		if pub, ok := s.Public().(interface{ Equal(crypto.PublicKey) bool }); ok {
			for i, c := range certs {
				if pub.Equal(c.PublicKey) {
					leaf = i
					break
				}
			}
		}
	}
	used := make([]bool, len(certs))
	out := []*x509.Certificate{certs[leaf]}
	used[leaf] = true
	for cur := certs[leaf]; ; {
		next := -1
		for i, c := range certs {
			if !used[i] && bytes.Equal(cur.RawIssuer, c.RawSubject) && cur.CheckSignatureFrom(c) == nil {
				next = i
				break
			}
		}
		if next < 0 {
			break
		}
		used[next] = true
		cur = certs[next]
		out = append(out, cur)
	}
	for i, c := range certs {
		if !used[i] {
			out = append(out, c)
		}
	}
	return out
}

// jsonFiles writes one file per top-level key of a JSON object under dir:
// strings as they are, other values (numbers, booleans, null, objects,
// arrays) as their compact JSON text. Every key is checked
// as the mapping checks files before anything is written.
func jsonFiles(dir string, value []byte, mode fs.FileMode) ([]atomicdir.File, error) {
	fix := "store a JSON object whose top-level keys are file names (letters, digits, '.', '_', '-'), or write the plain form to get the value as it is"
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(value, &obj); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return nil, &ContentError{Why: fmt.Sprintf("the value is not valid JSON (syntax error at byte %d of %d), but the entry has format=json", se.Offset, len(value)), Fix: fix}
		case errors.As(err, &te):
			return nil, &ContentError{Why: fmt.Sprintf("the value is JSON, but a %s rather than an object, so format=json has no keys to write", te.Value), Fix: fix}
		}
		return nil, &ContentError{Why: "the value is not a JSON object, but the entry has format=json", Fix: fix}
	}
	if obj == nil {
		return nil, &ContentError{Why: "the value is JSON null rather than an object, so format=json has no keys to write", Fix: fix}
	}
	switch {
	case len(obj) == 0:
		return nil, &ContentError{Why: "the JSON object has no keys, so format=json has no file to write", Fix: fix}
	case len(obj) > maxJSONKeys:
		return nil, &ContentError{Why: fmt.Sprintf("the JSON object has %d keys, more than the limit of %d files", len(obj), maxJSONKeys), Fix: fix}
	}
	files := make([]atomicdir.File, 0, len(obj))
	for k, raw := range obj {
		p, err := agentconfig.JSONFile(dir, k)
		if err != nil {
			return nil, &ContentError{Why: truncate(err.Error(), 300), Fix: fix}
		}
		data := []byte(raw)
		var s string
		if len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &s) == nil {
			data = []byte(s)
		} else {
			var b bytes.Buffer
			if json.Compact(&b, raw) == nil {
				data = b.Bytes()
			}
		}
		files = append(files, atomicdir.File{Path: p, Data: data, Mode: mode})
	}
	return files, nil
}

// renderTemplates renders the templates from the entries' files (by path),
// all of them together bounded by agentconfig.MaxRenderedTotal. A failure is
// a *ConfigError naming the template, the place and what is missing, never
// a value: it stays until the secret or the template changes.
func renderTemplates(ts []*agentconfig.CompiledTemplate, files map[string][]byte) ([]atomicdir.File, error) {
	out := make([]atomicdir.File, 0, len(ts))
	left := agentconfig.MaxRenderedTotal
	lookup := func(p string) ([]byte, bool) {
		b, ok := files[p]
		return b, ok
	}
	for _, t := range ts {
		data, err := t.Render(lookup, left)
		if err != nil {
			return nil, &ConfigError{Msg: fmt.Sprintf("cannot render %v. Fix: %s", err, templateFix(t.File))}
		}
		left -= len(data)
		out = append(out, atomicdir.File{Path: t.File, Data: data, Mode: fs.FileMode(t.Mode)})
	}
	return out, nil
}

// templateFix is the fix of a template that fails at run time.
func templateFix(file string) string {
	return "store the value the template expects in Key Vault (the next rotation picks it up), or change the pod's kvinject.dev/template." + file + " annotation and recreate the pod"
}
