package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
)

// TestPerIdentityCounters checks that value reads and list requests are counted
// per identity, whatever the answer, and that ResetStats clears them.
func TestPerIdentityCounters(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	reader, readerCred := registerWorkload(t, e, tr)
	lister, listerCred := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", "v")
	if err := e.Grant("myvault", reader, PermGet); err != nil {
		t.Fatal(err)
	}
	if err := e.Grant("myvault", lister, PermList); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rc := secretsClient(t, e.VaultURL("myvault"), readerCred, tr, noRetry)
	lc := secretsClient(t, e.VaultURL("myvault"), listerCred, tr, noRetry)
	if _, err := rc.GetSecret(ctx, "s", "", nil); err != nil {
		t.Fatal(err)
	}
	// Denied gets count too: the lister tried to read a value.
	if _, err := lc.GetSecret(ctx, "s", "", nil); err == nil {
		t.Fatal("the lister read a value")
	}
	for range 2 {
		p := lc.NewListSecretPropertiesPager(nil)
		if _, err := p.NextPage(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		id           string
		reads, lists int64
	}{{reader, 1, 0}, {lister, 1, 2}, {"unknown-client", 0, 0}} {
		if got, gotL := e.ValueReads(tc.id), e.ListRequests(tc.id); got != tc.reads || gotL != tc.lists {
			t.Errorf("%s: ValueReads %d, ListRequests %d, want %d, %d", tc.id, got, gotL, tc.reads, tc.lists)
		}
	}
	resp, body := rawDo(t, tr, http.MethodGet, e.AuthorityHost()+"_emulator/stats", "", http.Header{AdminTokenHeader: {e.AdminToken()}}, nil)
	var st AdminStats
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("stats: %d %s %v", resp.StatusCode, body, err)
	}
	if st.ValueReads[reader] != 1 || st.ValueReads[lister] != 1 {
		t.Errorf("admin stats valueReads = %v", st.ValueReads)
	}
	e.ResetStats()
	if e.ValueReads(reader) != 0 || e.ListRequests(lister) != 0 {
		t.Error("ResetStats kept per-identity counters")
	}
}

// TestUpdateSecret checks that updating a version's properties changes its
// updated attribute, and the secret's in a listing, without a new version.
func TestUpdateSecret(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	old := time.Now().Add(-time.Hour)
	v1 := e.SetSecret("myvault", "s", "one", WithCreated(old.Add(-time.Minute)))
	v2 := e.SetSecret("myvault", "s", "two", WithCreated(old))

	if err := e.UpdateSecret("myvault", "s", SecretUpdate{Tags: map[string]string{"owner": "team"}}); err != nil {
		t.Fatal(err)
	}
	vs := e.SecretVersions("myvault", "s")
	if len(vs) != 2 {
		t.Fatalf("%d versions after a tag update, want 2", len(vs))
	}
	cur := vs[1]
	if cur.Version != v2 || cur.Tags["owner"] != "team" || !cur.Created.Equal(old.UTC().Truncate(time.Second)) ||
		!cur.Updated.After(cur.Created) || cur.Updated != cur.Updated.Truncate(time.Second) {
		t.Errorf("current version after a tag update: %+v", cur)
	}

	// An older version, by id; the current one stays as it is.
	if err := e.UpdateSecret("myvault", "s", SecretUpdate{Version: v1, Enabled: to.Ptr(false), ContentType: to.Ptr("text/plain")}); err != nil {
		t.Fatal(err)
	}
	vs = e.SecretVersions("myvault", "s")
	if vs[0].Enabled || vs[0].ContentType != "text/plain" || !vs[1].Enabled {
		t.Errorf("versions after disabling v1: %+v", vs)
	}
	if err := e.UpdateSecret("myvault", "s", SecretUpdate{Version: "0123456789abcdef0123456789abcdef"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown version: %v, want ErrNotFound", err)
	}
	if err := e.UpdateSecret("myvault", "nope", SecretUpdate{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown secret: %v, want ErrNotFound", err)
	}

	// Admin API: remove the tags of the current version.
	resp, body := rawDo(t, tr, http.MethodPatch, e.AuthorityHost()+"_emulator/vaults/myvault/secrets/s", "",
		http.Header{AdminTokenHeader: {e.AdminToken()}}, []byte(`{"tags":{}}`))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PATCH: %d %s", resp.StatusCode, body)
	}
	if s, _ := e.Secret("myvault", "s"); len(s.Tags) != 0 || s.Version != v2 {
		t.Errorf("after PATCH: %+v", s)
	}
}
