package emulator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

// listed is one item of a listing, whatever its kind.
type listed struct {
	name, version string
	created       time.Time
	x5t           []byte
}

// listAllCertificates lists every certificate (versions of name when not
// empty) with the unmodified SDK pagers, and counts the pages.
func listAllCertificates(ctx context.Context, c *azcertificates.Client, name string) ([]listed, int, error) {
	var out []listed
	pages := 0
	add := func(ps []*azcertificates.CertificateProperties) {
		for _, p := range ps {
			out = append(out, listed{p.ID.Name(), p.ID.Version(), *p.Attributes.Created, p.X509Thumbprint})
		}
	}
	if name == "" {
		for p := c.NewListCertificatePropertiesPager(nil); p.More(); pages++ {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, pages, err
			}
			add(page.Value)
		}
		return out, pages, nil
	}
	for p := c.NewListCertificatePropertiesVersionsPager(name, nil); p.More(); pages++ {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, pages, err
		}
		add(page.Value)
	}
	return out, pages, nil
}

// listAllKeys is listAllCertificates for keys.
func listAllKeys(ctx context.Context, c *azkeys.Client, name string) ([]listed, int, error) {
	var out []listed
	pages := 0
	add := func(ps []*azkeys.KeyProperties) {
		for _, p := range ps {
			out = append(out, listed{name: p.KID.Name(), version: p.KID.Version(), created: *p.Attributes.Created})
		}
	}
	if name == "" {
		for p := c.NewListKeyPropertiesPager(nil); p.More(); pages++ {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, pages, err
			}
			add(page.Value)
		}
		return out, pages, nil
	}
	for p := c.NewListKeyPropertiesVersionsPager(name, nil); p.More(); pages++ {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, pages, err
		}
		add(page.Value)
	}
	return out, pages, nil
}

// TestListCertificatesAndKeys lists certificates and keys with the SDK's
// pagers: properties only (the certificate's x5t), 25 per page with nextLink,
// versions in id order (not by date), whole-second dates, and never a value
// read for the lister.
func TestListCertificatesAndKeys(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	ch := testChain(t, "EC")
	var certVersions, keyVersions []string
	for i := range 30 {
		v, err := e.ImportCertificate("kv1", "c", ch.LeafKey, ch.Chain())
		if err != nil {
			t.Fatal(err)
		}
		certVersions = append(certVersions, v)
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if v, err = e.SetKey("kv1", fmt.Sprintf("k%02d", i), k.Public()); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			for range 29 {
				kv, err := e.SetKey("kv1", "k00", k.Public())
				if err != nil {
					t.Fatal(err)
				}
				keyVersions = append(keyVersions, kv)
			}
			keyVersions = append(keyVersions, v)
		}
	}
	if err := e.Grant("kv1", clientID, PermCertificatesList, PermKeysList); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	certs := certificatesClient(t, e.VaultURL("kv1"), cred, tr)
	keys := keysClient(t, e.VaultURL("kv1"), cred, tr)
	thumb := sha1.Sum(ch.Leaf.Raw)

	for _, tc := range []struct {
		name      string
		list      func() ([]listed, int, error)
		wantNames int
		versions  []string // the versions expected, any order; nil: a listing of names
		x5t       bool
	}{
		{"certificates", func() ([]listed, int, error) { return listAllCertificates(ctx, certs, "") }, 1, nil, true},
		{"certificate versions", func() ([]listed, int, error) { return listAllCertificates(ctx, certs, "c") }, 1, certVersions, true},
		{"keys (with the certificate's)", func() ([]listed, int, error) { return listAllKeys(ctx, keys, "") }, 31, nil, false},
		{"key versions", func() ([]listed, int, error) { return listAllKeys(ctx, keys, "k00") }, 1, keyVersions, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, pages, err := tc.list()
			if err != nil {
				t.Fatal(err)
			}
			names := map[string]bool{}
			var versions []string
			for _, l := range got {
				names[l.name] = true
				if l.created.Nanosecond() != 0 {
					t.Errorf("%s: created %v has a fraction of a second", l.name, l.created)
				}
				if tc.x5t && !slices.Equal(l.x5t, thumb[:]) {
					t.Errorf("%s: x5t %x, want the leaf's SHA-1 %x", l.name, l.x5t, thumb)
				}
				if tc.versions == nil && l.version != "" {
					t.Errorf("%s: a listing of names has version %q in its id", l.name, l.version)
				}
				versions = append(versions, l.version)
			}
			if len(names) != tc.wantNames {
				t.Errorf("%d names, want %d", len(names), tc.wantNames)
			}
			if tc.versions == nil {
				return
			}
			if want := (len(tc.versions) + 24) / 25; pages != want {
				t.Errorf("%d pages, want %d (25 per page)", pages, want)
			}
			if !slices.IsSorted(versions) {
				t.Errorf("versions not in id order: %v", versions)
			}
			if slices.Equal(versions, tc.versions) {
				t.Errorf("versions listed in creation order; Key Vault lists them by id")
			}
			slices.Sort(versions)
			want := slices.Sorted(slices.Values(tc.versions))
			if !slices.Equal(versions, want) {
				t.Errorf("versions %v, want %v", versions, want)
			}
		})
	}
	if n := e.ValueReads(clientID); n != 0 {
		t.Errorf("listings counted as %d value reads, want 0", n)
	}
	if n := e.ListRequests(clientID); n < 6 {
		t.Errorf("ListRequests = %d, want the pages (at least 6)", n)
	}
}

// TestListPermissions: listing certificates and keys needs their list
// permission in an access policy vault, and their read action in an RBAC
// vault (which has no list-only action for them); the refusal names it.
func TestListPermissions(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rbac     bool
		perms    []Permission
		wantCert int
		wantKey  int
		message  string
	}{
		{"policy: list", false, []Permission{PermCertificatesList, PermKeysList}, 200, 200, ""},
		{"policy: get only", false, []Permission{PermCertificatesGet, PermKeysGet}, 403, 403, "does not have certificates list permission"},
		{"policy: secrets list only", false, []Permission{PermList}, 403, 403, "does not have certificates list permission"},
		{"RBAC: read actions", true, []Permission{PermCertificatesGet, PermKeysGet}, 200, 200, ""},
		{"RBAC: list-only grants do not exist", true, []Permission{PermCertificatesList, PermKeysList, PermList}, 403, 403, "Microsoft.KeyVault/vaults/certificates/read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, Options{})
			tr := transport(t, e)
			clientID, cred := registerWorkload(t, e, tr)
			if err := e.AddVault("kv2", VaultOptions{RBAC: tc.rbac}); err != nil {
				t.Fatal(err)
			}
			ch := testChain(t, "EC")
			if _, err := e.ImportCertificate("kv2", "c", ch.LeafKey, ch.Chain()); err != nil {
				t.Fatal(err)
			}
			if err := e.Grant("kv2", clientID, tc.perms...); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			_, _, cerr := listAllCertificates(ctx, certificatesClient(t, e.VaultURL("kv2"), cred, tr), "c")
			_, _, kerr := listAllKeys(ctx, keysClient(t, e.VaultURL("kv2"), cred, tr), "")
			for _, x := range []struct {
				what string
				err  error
				want int
			}{{"certificates", cerr, tc.wantCert}, {"keys", kerr, tc.wantKey}} {
				status := http.StatusOK
				var re *azcore.ResponseError
				if errors.As(x.err, &re) {
					status = re.StatusCode
				} else if x.err != nil {
					t.Fatalf("%s: %v", x.what, x.err)
				}
				if status != x.want {
					t.Errorf("%s: status %d, want %d (%v)", x.what, status, x.want, x.err)
				}
			}
			if tc.message != "" && (cerr == nil || !strings.Contains(cerr.Error(), tc.message)) {
				t.Errorf("certificates refusal %v, want it to name %q", cerr, tc.message)
			}
			if n := e.ValueReads(clientID); n != 0 {
				t.Errorf("%d value reads, want 0", n)
			}
		})
	}
}
