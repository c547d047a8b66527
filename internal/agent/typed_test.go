package agent_test

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
	"encoding/hex"
	"encoding/pem"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// secretish records a value the agent must never print, for the leak check.
func (h *harness) secretish(values ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.values = append(h.values, values...)
}

// importCert imports a new certificate chain under name and records its
// private key and secret for the leak check. order lists the chain as the
// secret keeps it.
func (h *harness) importCert(name, keyType string, order func(emulator.TestChain) []*x509.Certificate, opts ...emulator.CertificateOption) (emulator.TestChain, string) {
	h.t.Helper()
	ch, err := emulator.NewTestChain(name+".contoso.example", keyType)
	if err != nil {
		h.t.Fatal(err)
	}
	if order == nil {
		order = emulator.TestChain.Chain
	}
	version, err := h.emu.ImportCertificate(h.vault, name, ch.LeafKey, order(ch), opts...)
	if err != nil {
		h.t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(ch.LeafKey)
	s, _ := h.emu.Secret(h.vault, name)
	h.secretish(base64.StdEncoding.EncodeToString(der)[40:100], s.Value)
	return ch, version
}

// entry parses one entry of the mapping.
func entry(t *testing.T, s string) agentconfig.Entry {
	t.Helper()
	e, err := agentconfig.ParseEntry(s)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func pemBlocks(t *testing.T, data []byte) []*pem.Block {
	t.Helper()
	var out []*pem.Block
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		out = append(out, b)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		t.Errorf("trailing data after the PEM blocks")
	}
	return out
}

// wantChainPEM checks that data holds exactly the given certificates, in order.
func wantChainPEM(t *testing.T, file string, data []byte, certs ...*x509.Certificate) {
	t.Helper()
	blocks := pemBlocks(t, data)
	if len(blocks) != len(certs) {
		t.Fatalf("%s: %d PEM blocks, want %d certificates", file, len(blocks), len(certs))
	}
	for i, b := range blocks {
		if b.Type != "CERTIFICATE" || !bytes.Equal(b.Bytes, certs[i].Raw) {
			t.Errorf("%s: block %d is %s, not certificate %q", file, i, b.Type, certs[i].Subject.CommonName)
		}
	}
}

// wantKeyPEM checks that data is the PKCS#8 "PRIVATE KEY" of key.
func wantKeyPEM(t *testing.T, file string, data []byte, key crypto.Signer) {
	t.Helper()
	blocks := pemBlocks(t, data)
	if len(blocks) != 1 || blocks[0].Type != "PRIVATE KEY" {
		t.Fatalf("%s: want one PRIVATE KEY block, got %d blocks", file, len(blocks))
	}
	k, err := x509.ParsePKCS8PrivateKey(blocks[0].Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if !k.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Errorf("%s: not the certificate's private key", file)
	}
}

// wantPublicKeyPEM checks that data is the PKIX "PUBLIC KEY" pub.
func wantPublicKeyPEM(t *testing.T, file string, data []byte, pub crypto.PublicKey) {
	t.Helper()
	blocks := pemBlocks(t, data)
	if len(blocks) != 1 || blocks[0].Type != "PUBLIC KEY" {
		t.Fatalf("%s: want one PUBLIC KEY block, got %d blocks", file, len(blocks))
	}
	got, err := x509.ParsePKIXPublicKey(blocks[0].Bytes)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
		t.Errorf("%s: not the key's public key", file)
	}
}

// TestTypedEntries reads every typed kind end to end through the unmodified
// SDK: certificates' secrets as PEM (split or not) and PFX, public
// certificates, public keys, encoded values, JSON secrets and version history.
func TestTypedEntries(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet, emulator.PermList, emulator.PermCertificatesGet, emulator.PermKeysGet); err != nil {
		t.Fatal(err)
	}
	// PKCS#12 with the chain stored root first: the agent orders it.
	web, _ := h.importCert("web-cert", "RSA", func(c emulator.TestChain) []*x509.Certificate {
		return []*x509.Certificate{c.Root, c.Leaf, c.Intermediate}
	})
	pemCert, _ := h.importCert("pem-cert", "EC", nil, emulator.WithPEMContentType())
	pemSecret, _ := h.emu.Secret(h.vault, "pem-cert")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := h.emu.SetKey(h.vault, "signing-key", rsaKey.Public()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.emu.SetKey(h.vault, "ec-key", ecKey.Public()); err != nil {
		t.Fatal(err)
	}
	blob := []byte("\x00\x01binary\xff" + randHex(8))
	h.secretish(string(blob[3:]))
	h.setSecretValue("blob", base64.StdEncoding.EncodeToString(blob))
	h.setSecretValue("hexblob", strings.ToUpper(hex.EncodeToString(blob)))
	dbHost, dbPort := "db-"+randHex(8)+".internal", "5432"
	h.secretish(dbHost)
	h.setSecretValue("app-config", `{"DB_HOST":"`+dbHost+`","DB_PORT":`+dbPort+`,"flags":{"a":[1, 2]}}`)
	var pw []string
	for i := range 4 {
		v := "VALUE-db-pass-" + randHex(12)
		h.secretish(v)
		h.emu.SetSecret(h.vault, "db-pass", v, emulator.WithCreated(time.Now().Add(time.Duration(i-4)*time.Minute)))
		pw = append(pw, v)
		if i == 2 {
			if err := h.emu.DisableSecret(h.vault, "db-pass"); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.setSecretValue("one-version", "only-"+randHex(8))

	var entries []agentconfig.Entry
	for _, s := range []string{
		"tls=secret:web-cert;format=pem;split;mode=0400",
		"web.pem=secret:web-cert;format=pem",
		"web.pfx=secret:web-cert;format=pfx",
		"ca.crt=cert:web-cert",
		"pem.pem=secret:pem-cert;format=pem",
		"pemsplit=secret:pem-cert;format=pem;split",
		"signing.pub=key:signing-key",
		"ec.pub=key:ec-key;format=pem",
		"blob.bin=secret:blob;encoding=base64",
		"hex.bin=hexblob;encoding=hex",
		"cfg=secret:app-config;format=json",
		"db=secret:db-pass;history=3",
		"short=secret:one-version;history=5",
		"certs=secret:web-cert;format=pem;split;history=2",
		"cfgs=secret:app-config;format=json;history=1",
		"latest=db-pass",
	} {
		entries = append(entries, entry(t, s))
	}
	h.emu.ResetStats()
	if err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, entries...), h.options()); err != nil {
		t.Fatalf("Run: %v\nlogs:\n%s", err, h.logs)
	}
	read := func(f string) []byte { return []byte(h.read(f)) }

	wantKeyPEM(t, "tls.key", read("tls.key"), web.LeafKey)
	if !bytes.Equal(read("certs/0.key"), read("tls.key")) || !bytes.Equal(read("certs/0.crt"), read("tls.crt")) || h.read("cfgs/0/DB_HOST") != dbHost {
		t.Error("history with split or JSON: certs/0.key, certs/0.crt or cfgs/0/DB_HOST differs")
	}
	wantChainPEM(t, "tls.crt", read("tls.crt"), web.Leaf, web.Intermediate, web.Root)
	if all := read("web.pem"); !bytes.Equal(all, append(read("tls.key"), read("tls.crt")...)) {
		t.Error("web.pem is not the key, then the chain from the leaf to the root")
	}
	key, leaf, cas, err := pkcs12.DecodeChain(read("web.pfx"), "")
	if err != nil || len(cas) != 2 || !key.(*rsa.PrivateKey).PublicKey.Equal(web.LeafKey.Public()) || leaf == nil {
		t.Errorf("web.pfx: %v, %d CA certificates", err, len(cas))
	}
	wantChainPEM(t, "ca.crt", read("ca.crt"), web.Leaf)
	if got := h.read("pem.pem"); got != pemSecret.Value {
		t.Error("pem.pem: a PEM certificate's secret is not written as it is")
	}
	wantKeyPEM(t, "pemsplit.key", read("pemsplit.key"), pemCert.LeafKey)
	wantChainPEM(t, "pemsplit.crt", read("pemsplit.crt"), pemCert.Chain()...)
	wantPublicKeyPEM(t, "signing.pub", read("signing.pub"), rsaKey.Public())
	wantPublicKeyPEM(t, "ec.pub", read("ec.pub"), ecKey.Public())
	if !bytes.Equal(read("blob.bin"), blob) || !bytes.Equal(read("hex.bin"), blob) {
		t.Error("blob.bin or hex.bin: not the decoded value")
	}
	got := map[string]string{}
	for _, f := range []string{"cfg/DB_HOST", "cfg/DB_PORT", "cfg/flags", "db/0", "db/1", "db/2", "short/0", "latest"} {
		got[f] = h.read(f)
	}
	want := map[string]string{
		"cfg/DB_HOST": dbHost, "cfg/DB_PORT": dbPort, "cfg/flags": `{"a":[1,2]}`,
		// Newest first; the disabled version (pw[2]) is skipped.
		"db/0": pw[3], "db/1": pw[1], "db/2": pw[0],
		"short/0": got["short/0"], "latest": pw[3],
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("files (-want +got):\n%s", d)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "short/1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("short/1 exists for a secret with one version")
	}
	for f, mode := range map[string]os.FileMode{"tls.key": 0o400, "tls.crt": 0o400, "web.pem": 0o440, "cfg/DB_HOST": 0o440, "db/0": 0o440} {
		if fi, err := os.Stat(filepath.Join(h.dir, f)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, %v; want %04o", f, fi.Mode(), err, mode)
		}
	}
	// One token; each of the three clients pays one challenge; every object
	// is read once, whatever the number of entries that use it.
	st := h.emu.Stats()
	if st.TokenRequests != 1 || st.Challenges != 3 {
		t.Errorf("token requests %d, challenges %d; want 1 and 3", st.TokenRequests, st.Challenges)
	}
	// gets: web-cert, pem-cert (secrets), web-cert (certificate), 2 keys, blob,
	// hexblob, app-config, db-pass (latest), 3 db-pass versions, 1 one-version;
	// lists: db-pass, one-version; the web-cert and app-config histories
	// list and read their one version.
	if st.Gets != 15 || st.Lists != 4 {
		t.Errorf("gets %d, lists %d; want 15 and 4", st.Gets, st.Lists)
	}
	if !strings.Contains(h.logs.String(), `"db":"`+strings.Join([]string{
		h.emu.SecretVersions(h.vault, "db-pass")[3].Version, h.emu.SecretVersions(h.vault, "db-pass")[1].Version, h.emu.SecretVersions(h.vault, "db-pass")[0].Version}, ",")+`"`) {
		t.Errorf("the log of the written set lacks the history's versions:\n%s", h.logs)
	}
}

// TestTypedRotation: a sidecar notices new versions of certificates, keys,
// JSON secrets and history secrets, and swaps every file in together; a poll
// reads only history versions it has not seen.
func TestTypedRotation(t *testing.T) {
	requests := &syncBuffer{}
	h := newHarness(t, emulator.Options{Logger: slog.New(slog.NewTextHandler(requests, nil))})
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet, emulator.PermList, emulator.PermCertificatesGet, emulator.PermKeysGet); err != nil {
		t.Fatal(err)
	}
	h.importCert("web-cert", "EC", nil)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := h.emu.SetKey(h.vault, "signing-key", k1.Public()); err != nil {
		t.Fatal(err)
	}
	h.setSecretValue("app-config", `{"A":"a1-`+randHex(6)+`"}`)
	p1 := "VALUE-db-pass-" + randHex(12)
	h.secretish(p1)
	h.emu.SetSecret(h.vault, "db-pass", p1, emulator.WithCreated(time.Now().Add(-time.Minute)))
	entries := []agentconfig.Entry{
		entry(t, "tls=secret:web-cert;format=pem;split"),
		entry(t, "ca.crt=cert:web-cert"),
		entry(t, "signing.pub=key:signing-key"),
		entry(t, "cfg=secret:app-config;format=json"),
		entry(t, "db=secret:db-pass;history=2"),
	}
	stop := h.runSidecar(h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, entries...), h.options())
	h.waitFor("the first set", 10*time.Second, func() bool { return h.fileIs("db/0", p1) })
	first := h.read("tls.crt")

	// Unchanged objects: polls write nothing.
	h.waitFor("three polls without a change", 10*time.Second, func() bool { return len(h.polls(0)) >= 3 })
	if n := strings.Count(h.logs.String(), logMsg(msgChanged)); n != 0 {
		t.Errorf("%d sets written without a change", n)
	}

	web2, _ := h.importCert("web-cert", "RSA", nil)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	if _, err := h.emu.SetKey(h.vault, "signing-key", k2.Public()); err != nil {
		t.Fatal(err)
	}
	newA := "a2-" + randHex(6)
	h.secretish(newA)
	h.setSecretValue("app-config", `{"A":"`+newA+`","B":"b"}`)
	p2, _ := h.setSecret("db-pass")
	h.waitFor("the new set", 10*time.Second, func() bool {
		return h.fileIs("db/0", p2) && h.fileIs("db/1", p1) && h.fileIs("cfg/B", "b") && h.fileIs("cfg/A", newA) && h.read("tls.crt") != first
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	wantKeyPEM(t, "tls.key", []byte(h.read("tls.key")), web2.LeafKey)
	wantChainPEM(t, "tls.crt", []byte(h.read("tls.crt")), web2.Chain()...)
	wantChainPEM(t, "ca.crt", []byte(h.read("ca.crt")), web2.Leaf)
	wantPublicKeyPEM(t, "signing.pub", []byte(h.read("signing.pub")), k2.Public())

	// Each db-pass version was read once: the first at start, the new one
	// after it appeared; later polls only list.
	for _, v := range h.emu.SecretVersions(h.vault, "db-pass") {
		if n := strings.Count(requests.String(), "path=/secrets/db-pass/"+v.Version+" status=200"); n != 1 {
			t.Errorf("version %s of db-pass was read %d times, want once", v.Version, n)
		}
	}
	if n := strings.Count(requests.String(), "path=/secrets/db-pass/versions status=200"); n < 3 {
		t.Errorf("the versions of db-pass were listed %d times, want one per poll", n)
	}
}

// TestTypedErrors: every typed failure stops the agent at once with an
// explanation that names the entry and the fix, and never a value.
func TestTypedErrors(t *testing.T) {
	grantAll := func(h *harness, id string) {
		if err := h.emu.Grant(h.vault, id, emulator.PermGet, emulator.PermList, emulator.PermCertificatesGet, emulator.PermKeysGet); err != nil {
			h.t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		rbac  bool
		setup func(h *harness, id string) string // returns the entry
		want  string
	}{
		{
			name: "format=pem on a plain secret",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecret("db-pass")
				return "tls.pem=secret:db-pass;format=pem"
			},
			want: `kvinject-agent: cannot read secret "db-pass" from vault {vault}: the secret is not certificate-backed (content type none), so format=pem has no certificate to convert. Fix: write the plain form tls.pem=db-pass to get its value as it is, or name the secret of a Key Vault certificate (content type application/x-pkcs12 or application/x-pem-file)`,
		},
		{
			name: "format=pfx on a PEM certificate",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.importCert("web-cert", "EC", nil, emulator.WithPEMContentType())
				return "web.pfx=secret:web-cert;format=pfx"
			},
			want: `kvinject-agent: cannot read secret "web-cert" from vault {vault}: the certificate's secret is PEM (application/x-pem-file), not PKCS#12, so format=pfx has nothing to copy. Fix: write web.pfx=secret:web-cert;format=pem, or create the certificate with the content type application/x-pkcs12`,
		},
		{
			name: "split without an exportable key",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.importCert("web-cert", "RSA", nil, emulator.WithNonExportableKey())
				return "tls=secret:web-cert;format=pem;split"
			},
			want: `kvinject-agent: cannot read secret "web-cert" from vault {vault}: the certificate's secret holds no private key (the certificate's key is not exportable). Fix: write tls=cert:web-cert for the public certificate alone, or make the key exportable in the certificate's policy and create a new version`,
		},
		{
			name: "split of a PEM certificate without an exportable key",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.importCert("web-cert", "RSA", nil, emulator.WithNonExportableKey(), emulator.WithPEMContentType())
				return "tls=secret:web-cert;format=pem;split"
			},
			want: `kvinject-agent: cannot read secret "web-cert" from vault {vault}: the certificate's secret holds no private key (the certificate's key is not exportable). Fix: write tls=cert:web-cert for the public certificate alone, or make the key exportable in the certificate's policy and create a new version`,
		},
		{
			name: "not base64",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecretValue("blob", "not*base64-"+randHex(12))
				return "blob.bin=secret:blob;encoding=base64"
			},
			want: `kvinject-agent: cannot read secret "blob" from vault {vault}: the value is not valid base64 (not base64 at byte 4 of 35), but the entry has encoding=base64. Fix: store the value base64-encoded, or drop ;encoding=base64 to write it as it is`,
		},
		{
			name: "not hex",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecretValue("blob", "00ff"+randHex(10)+"zz")
				return "blob.bin=secret:blob;encoding=hex"
			},
			want: `kvinject-agent: cannot read secret "blob" from vault {vault}: the value is not valid hex (a character that is not a hexadecimal digit at byte 25 of 26), but the entry has encoding=hex. Fix: store the value hex-encoded, or drop ;encoding=hex to write it as it is`,
		},
		{
			name: "not a JSON object",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecretValue("app-config", `["`+randHex(12)+`"]`)
				return "cfg=secret:app-config;format=json"
			},
			want: `kvinject-agent: cannot read secret "app-config" from vault {vault}: the value is JSON, but a array rather than an object, so format=json has no keys to write. Fix: store a JSON object whose top-level keys are file names (letters, digits, '.', '_', '-'), or write the plain form to get the value as it is`,
		},
		{
			name: "not JSON",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecretValue("app-config", `{"a":!`+randHex(12))
				return "cfg=secret:app-config;format=json"
			},
			want: `kvinject-agent: cannot read secret "app-config" from vault {vault}: the value is not valid JSON (syntax error at byte 6 of 30), but the entry has format=json. Fix: store a JSON object whose top-level keys are file names (letters, digits, '.', '_', '-'), or write the plain form to get the value as it is`,
		},
		{
			name: "a JSON key that cannot be a file",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecretValue("app-config", `{"ok":"x","..data":"`+randHex(12)+`"}`)
				return "cfg=secret:app-config;format=json"
			},
			want: `kvinject-agent: cannot read secret "app-config" from vault {vault}: the JSON key "..data" cannot be a file name: file "cfg/..data": no path segment may start with '..' (reserved for the atomic writer). Fix: store a JSON object whose top-level keys are file names (letters, digits, '.', '_', '-'), or write the plain form to get the value as it is`,
		},
		{
			name: "a symmetric key",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				if _, err := h.emu.SetKey(h.vault, "wrapping", nil); err != nil {
					h.t.Fatal(err)
				}
				return "wrap.pub=key:wrapping"
			},
			want: `kvinject-agent: cannot read key "wrapping" from vault {vault}: the key is symmetric (oct-HSM): it has no public key, and Key Vault never releases its material. Fix: map an RSA or EC key with key:<name>, or keep using the symmetric key through Key Vault's wrap and unwrap operations`,
		},
		{
			name: "certificate not found",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecret("web-cert") // a secret, not a certificate
				return "ca.crt=cert:web-cert"
			},
			want: `kvinject-agent: cannot read certificate "web-cert" from vault {vault}: HTTP 404 Not Found, Key Vault error CertificateNotFound: the vault has no certificate named "web-cert" (or it was deleted). Fix: check the name in kvinject.dev/secrets (cert:<name> reads a certificate; <file>=<name> reads a secret); list the vault's certificates with az keyvault certificate list --vault-name {vault} --query "[].name"`,
		},
		{
			name: "key version not found",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				return "k.pub=key:signing-key@0123456789abcdef0123456789abcdef"
			},
			want: `kvinject-agent: cannot read key "signing-key" version 0123456789abcdef0123456789abcdef from vault {vault}: HTTP 404 Not Found, Key Vault error KeyNotFound: the vault has no version 0123456789abcdef0123456789abcdef of key "signing-key". Fix: check the name and version in kvinject.dev/secrets; list the versions with az keyvault key list-versions --vault-name {vault} --name signing-key`,
		},
		{
			name: "no certificate permission (access policy)",
			setup: func(h *harness, id string) string {
				if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
					h.t.Fatal(err)
				}
				h.importCert("web-cert", "EC", nil)
				return "ca.crt=cert:web-cert"
			},
			want: `kvinject-agent: cannot read certificate "web-cert" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity {client} may not get its certificates. Fix: grant the identity {client} 'get' on certificates with an access policy (az keyvault set-policy --name {vault} --spn {client} --certificate-permissions get), or the 'Key Vault Reader' role, which reads certificates and public keys but no secret values (az role assignment create --role 'Key Vault Reader' --assignee {client} --scope $(az keyvault show --name {vault} --query id --output tsv))`,
		},
		{
			name: "no key permission (RBAC)", rbac: true,
			setup: func(h *harness, id string) string {
				if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
					h.t.Fatal(err)
				}
				k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				if _, err := h.emu.SetKey(h.vault, "signing-key", k.Public()); err != nil {
					h.t.Fatal(err)
				}
				return "k.pub=key:signing-key"
			},
			want: `kvinject-agent: cannot read key "signing-key" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByRbac): the vault uses Azure RBAC and workload identity {client} has no role assignment that allows reading keys (Microsoft.KeyVault/vaults/keys/read). Fix: assign the identity {client} the 'Key Vault Reader' role, which reads certificates and public keys but no secret values (az role assignment create --role 'Key Vault Reader' --assignee {client} --scope /subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-emulator/providers/microsoft.keyvault/vaults/{vault}); new role assignments take a few minutes to apply`,
		},
		{
			name: "history without list permission (access policy)",
			setup: func(h *harness, id string) string {
				if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
					h.t.Fatal(err)
				}
				h.setSecret("db-pass")
				return "db=secret:db-pass;history=3"
			},
			want: `kvinject-agent: cannot list the versions of secret "db-pass" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity {client} may not list its secrets. Fix: grant the identity {client} 'get' and 'list' on secrets with an access policy (az keyvault set-policy --name {vault} --spn {client} --secret-permissions get list), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee {client} --scope $(az keyvault show --name {vault} --query id --output tsv))`,
		},
		{
			name: "history without list permission (RBAC)", rbac: true,
			setup: func(h *harness, id string) string {
				if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
					h.t.Fatal(err)
				}
				h.setSecret("db-pass")
				return "db=secret:db-pass;history=3"
			},
			want: `kvinject-agent: cannot list the versions of secret "db-pass" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByRbac): the vault uses Azure RBAC and workload identity {client} has no role assignment that allows listing secrets (Microsoft.KeyVault/vaults/secrets/readMetadata/action). Fix: assign the identity {client} the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee {client} --scope /subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-emulator/providers/microsoft.keyvault/vaults/{vault}); new role assignments take a few minutes to apply`,
		},
		{
			name: "history of a secret without enabled versions",
			setup: func(h *harness, id string) string {
				grantAll(h, id)
				h.setSecret("db-pass")
				if err := h.emu.DisableSecret(h.vault, "db-pass"); err != nil {
					h.t.Fatal(err)
				}
				return "db=secret:db-pass;history=3"
			},
			want: `kvinject-agent: cannot list the versions of secret "db-pass" from vault {vault}: the secret has no enabled version. Fix: enable a version (az keyvault secret list-versions --vault-name {vault} --name db-pass shows them) or set a new value`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, emulator.Options{})
			if tc.rbac {
				if err := h.emu.AddVault(h.vault, emulator.VaultOptions{RBAC: true}); err != nil {
					t.Fatal(err)
				}
			}
			id, _ := h.workload()
			e := entry(t, tc.setup(h, id))
			want := strings.NewReplacer("{vault}", h.vault, "{client}", id).Replace(tc.want)
			for _, mode := range []string{agentconfig.ModeInit, agentconfig.ModeSidecar} {
				opts := h.options()
				opts.InitTimeout = 20 * time.Second // permanent errors must not wait for it
				err := h.run(context.Background(), h.config(mode, agentconfig.IdentityWorkload, e), opts)
				var f *agent.Failure
				if !errors.As(err, &f) {
					t.Fatalf("%s: Run returned %v, want a *agent.Failure", mode, err)
				}
				if diff := cmp.Diff(want, f.Message); diff != "" {
					t.Errorf("%s: message (-want +got):\n%s\ngot: %s", mode, diff, f.Message)
				}
				if strings.Contains(h.logs.String(), "retrying") {
					t.Errorf("%s: a permanent error was retried", mode)
				}
				if _, err := os.Lstat(filepath.Join(h.dir, atomicdir.DataLink)); err == nil {
					t.Errorf("%s: a set was written after a failure", mode)
				}
				_ = os.Remove(h.termLog)
			}
		})
	}
}

// TestTypedOneTokenRequest: the certificates and keys clients start once the
// first client holds the token, so an identity that Azure AD refuses costs
// the token requests of one client per attempt, not of each client.
func TestTypedOneTokenRequest(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	h.workload()
	h.env[agentconfig.EnvClientID] = newClientID() // unknown to Azure AD: AADSTS700016
	h.setSecret("db-pass")
	h.importCert("web-cert", "EC", nil)
	run := func(entries ...string) emulator.Stats {
		t.Helper()
		var es []agentconfig.Entry
		for _, s := range entries {
			es = append(es, entry(t, s))
		}
		h.emu.ResetStats()
		err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, es...), h.options())
		if err == nil || !strings.Contains(err.Error(), "AADSTS700016") {
			t.Fatalf("Run: %v, want Azure AD's refusal", err)
		}
		return h.emu.Stats()
	}
	one := run("db=db-pass")
	three := run("db=db-pass", "ca.crt=cert:web-cert", "k.pub=key:web-cert")
	if three.TokenRequests != one.TokenRequests || three.Challenges != 1 {
		t.Errorf("three clients: token requests %d, challenges %d; want %d (as one client) and 1", three.TokenRequests, three.Challenges, one.TokenRequests)
	}
}
