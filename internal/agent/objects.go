package agent

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// newCertificatesClient returns a Key Vault certificates client with
// production settings: challenge resource verification stays on.
func newCertificatesClient(vaultURL string, cred azcore.TokenCredential, co azcore.ClientOptions) (*azcertificates.Client, error) {
	return azcertificates.NewClient(vaultURL, cred, &azcertificates.ClientOptions{ClientOptions: co})
}

// newKeysClient returns a Key Vault keys client with production settings:
// challenge resource verification stays on.
func newKeysClient(vaultURL string, cred azcore.TokenCredential, co azcore.ClientOptions) (*azkeys.Client, error) {
	return azkeys.NewClient(vaultURL, cred, &azkeys.ClientOptions{ClientOptions: co})
}

// objectWord names a kind of object in messages and errors.
func objectWord(t agentconfig.ObjectType) string {
	switch t {
	case agentconfig.ObjectCert:
		return "certificate"
	case agentconfig.ObjectKey:
		return "key"
	}
	return "secret"
}

// getCertificate reads a certificate's public certificate (the leaf) as PEM.
func (f *fetcher) getCertificate(ctx context.Context, r objectRef, e agentconfig.Entry) (objectValue, error) {
	resp, err := f.certs.GetCertificate(ctx, e.Name, r.version, nil)
	if err != nil {
		return objectValue{}, f.objectError(e, r.version, err)
	}
	if len(resp.CER) == 0 {
		return objectValue{}, f.objectError(e, r.version, &ContentError{
			Why: "Key Vault returned the certificate without its public certificate (cer); a certificate whose creation is still pending has none",
			Fix: fmt.Sprintf("wait for the certificate to be issued (az keyvault certificate pending show --vault-name %s --name %s)", VaultName(f.vault), e.Name),
		})
	}
	if _, err := x509.ParseCertificate(resp.CER); err != nil {
		return objectValue{}, f.objectError(e, r.version, &ContentError{Why: fmt.Sprintf("Key Vault returned a public certificate (cer) that does not parse (%v)", err)})
	}
	v := objectValue{value: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: resp.CER})}
	if resp.ID != nil {
		v.version = resp.ID.Version()
	}
	return v, nil
}

// getKey reads a key's public key as PEM (PKIX "PUBLIC KEY").
func (f *fetcher) getKey(ctx context.Context, r objectRef, e agentconfig.Entry) (objectValue, error) {
	resp, err := f.keys.GetKey(ctx, e.Name, r.version, nil)
	if err != nil {
		return objectValue{}, f.objectError(e, r.version, err)
	}
	if resp.Key == nil {
		return objectValue{}, f.objectError(e, r.version, fmt.Errorf("Key Vault returned no key"))
	}
	der, err := publicKeyDER(resp.Key)
	if err != nil {
		return objectValue{}, f.objectError(e, r.version, err)
	}
	v := objectValue{value: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})}
	if resp.Key.KID != nil {
		v.version = resp.Key.KID.Version()
	}
	return v, nil
}

// publicKeyDER encodes the public part of a JWK as PKIX. Key Vault releases
// the public parameters of RSA and EC keys only; a symmetric key has none.
func publicKeyDER(k *azkeys.JSONWebKey) ([]byte, error) {
	kty := ""
	if k.Kty != nil {
		kty = string(*k.Kty)
	}
	var pub any
	switch azkeys.KeyType(kty) {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		e := new(big.Int).SetBytes(k.E)
		if len(k.N) == 0 || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return nil, &ContentError{Why: fmt.Sprintf("Key Vault returned an %s key without a usable modulus and exponent", kty)}
		}
		pub = &rsa.PublicKey{N: new(big.Int).SetBytes(k.N), E: int(e.Int64())}
	case azkeys.KeyTypeEC, azkeys.KeyTypeECHSM:
		crv := ""
		if k.Crv != nil {
			crv = string(*k.Crv)
		}
		var curve elliptic.Curve
		switch azkeys.CurveName(crv) {
		case azkeys.CurveNameP256:
			curve = elliptic.P256()
		case azkeys.CurveNameP384:
			curve = elliptic.P384()
		case azkeys.CurveNameP521:
			curve = elliptic.P521()
		default:
			return nil, &ContentError{
				Why: fmt.Sprintf("the key is on the curve %q, which has no PKIX public key encoding the agent supports", crv),
				Fix: "map a key on P-256, P-384 or P-521, or an RSA key",
			}
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(k.X) > size || len(k.Y) > size {
			return nil, &ContentError{Why: fmt.Sprintf("Key Vault returned an EC key whose coordinates do not fit %s", crv)}
		}
		raw := make([]byte, 1+2*size)
		raw[0] = 4
		copy(raw[1+size-len(k.X):1+size], k.X)
		copy(raw[1+2*size-len(k.Y):], k.Y)
		p, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
		if err != nil {
			return nil, &ContentError{Why: fmt.Sprintf("Key Vault returned an EC key that is not a point of %s (%v)", crv, err)}
		}
		pub = p
	case azkeys.KeyTypeOct, azkeys.KeyTypeOctHSM:
		return nil, &ContentError{
			Why: fmt.Sprintf("the key is symmetric (%s): it has no public key, and Key Vault never releases its material", kty),
			Fix: "map an RSA or EC key with key:<name>, or keep using the symmetric key through Key Vault's wrap and unwrap operations",
		}
	default:
		return nil, &ContentError{Why: fmt.Sprintf("the key's type %q has no public key the agent knows how to write", kty), Fix: "map an RSA or EC key"}
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, &ContentError{Why: fmt.Sprintf("cannot encode the public key (%v)", err)}
	}
	return der, nil
}

// historyVersion is one listed version of a secret.
type historyVersion struct {
	version string
	created time.Time
	updated time.Time
}

// getHistory lists the versions of a secret and reads the newest r.history
// enabled ones (by creation, then update time), newest first. Versions read
// before are not read again: a version's value never changes.
func (f *fetcher) getHistory(ctx context.Context, r objectRef, e agentconfig.Entry) (objectValue, error) {
	listErr := func(err error) error {
		return &SecretError{Name: e.Name, File: e.File, Vault: f.vault, Object: "secret", List: true, Err: err, OtherVault: e.Vault != ""}
	}
	var listed []historyVersion
	pager := f.secrets.NewListSecretPropertiesVersionsPager(e.Name, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return objectValue{}, listErr(err)
		}
		for _, p := range page.Value {
			if p == nil || p.ID == nil || p.Attributes == nil || (p.Attributes.Enabled != nil && !*p.Attributes.Enabled) {
				continue
			}
			hv := historyVersion{version: strings.ToLower(p.ID.Version())}
			if p.Attributes.Created != nil {
				hv.created = *p.Attributes.Created
			}
			if p.Attributes.Updated != nil {
				hv.updated = *p.Attributes.Updated
			}
			listed = append(listed, hv)
		}
	}
	if len(listed) == 0 {
		return objectValue{}, listErr(&ContentError{
			Why:       "the secret has no enabled version",
			NoVersion: true,
			Fix:       fmt.Sprintf("enable a version (az keyvault secret list-versions --vault-name %s --name %s shows them) or set a new value", VaultName(f.vault), e.Name),
		})
	}
	slices.SortStableFunc(listed, func(a, b historyVersion) int {
		return cmp.Or(b.created.Compare(a.created), b.updated.Compare(a.updated), strings.Compare(b.version, a.version))
	})
	listed = listed[:min(len(listed), r.history)]

	f.historyMu.Lock()
	known := f.history[r]
	f.historyMu.Unlock()
	out := objectValue{versions: make([]objectValue, len(listed))}
	errs := make([]error, len(listed))
	var wg sync.WaitGroup
	for i, hv := range listed {
		if v, ok := known[hv.version]; ok {
			out.versions[i] = v
			continue
		}
		wg.Go(func() { out.versions[i], errs[i] = f.getSecret(ctx, hv.version, e) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return objectValue{}, err
		}
	}
	out.version = out.versions[0].version
	cache := make(map[string]objectValue, len(out.versions))
	for _, v := range out.versions {
		cache[strings.ToLower(v.version)] = v
	}
	f.historyMu.Lock()
	if f.history == nil {
		f.history = map[objectRef]map[string]objectValue{}
	}
	f.history[r] = cache
	f.historyMu.Unlock()
	return out, nil
}
