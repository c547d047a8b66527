package emulator

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
)

// TestRevoke: a revoked permission is refused with 403 at the next request,
// the others stay, and granting it again restores it.
func TestRevoke(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	if err := e.AddVault("myvault", VaultOptions{}); err != nil {
		t.Fatal(err)
	}
	e.SetSecret("myvault", "s", "v")
	if err := e.Grant("myvault", clientID, PermGet, PermList); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	ctx := context.Background()
	list := func() error {
		_, err := client.NewListSecretPropertiesPager(nil).NextPage(ctx)
		return err
	}
	if err := list(); err != nil {
		t.Fatalf("list before the revocation: %v", err)
	}
	if err := e.Revoke("myvault", clientID, PermList, PermCertificatesGet); err != nil {
		t.Fatal(err)
	}
	var re *azcore.ResponseError
	if err := list(); !errors.As(err, &re) || re.StatusCode != http.StatusForbidden {
		t.Fatalf("list after the revocation: %v, want 403", err)
	}
	if _, err := client.GetSecret(ctx, "s", "", nil); err != nil {
		t.Errorf("get, still granted: %v", err)
	}
	if err := e.Grant("myvault", clientID, PermList); err != nil {
		t.Fatal(err)
	}
	if err := list(); err != nil {
		t.Errorf("list granted again: %v", err)
	}
	if err := e.Revoke("nosuchvault", clientID, PermList); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revoke on a missing vault: %v, want ErrNotFound", err)
	}
}
