package emulator

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

const (
	testIssuer  = "https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/"
	testSubject = "system:serviceaccount:default:workload"
)

// start starts an emulator that is closed when the test ends.
func start(t *testing.T, opts Options) *Emulator {
	t.Helper()
	e, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

// transport returns a client transport for the emulator whose idle connections are
// closed when the test ends.
func transport(t *testing.T, e *Emulator) *http.Transport {
	tr := e.Transport()
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// unsignedJWT builds a JWT with the given claims and a dummy signature, like a
// Kubernetes service-account token as far as the emulator cares.
func unsignedJWT(t *testing.T, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "RS256", "kid": "test"}) + "." + enc(claims) + ".c2lnbmF0dXJl"
}

// saToken writes a service-account token file and returns its path.
func saToken(t *testing.T, iss, sub, aud string, exp time.Time) string {
	t.Helper()
	jwt := unsignedJWT(t, map[string]any{
		"iss": iss, "sub": sub, "aud": []string{aud},
		"exp": exp.Unix(), "iat": time.Now().Unix(), "nbf": time.Now().Add(-time.Minute).Unix(),
	})
	p := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(p, []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func clientOptions(tr http.RoundTripper, retry policy.RetryOptions) azcore.ClientOptions {
	return azcore.ClientOptions{Transport: &http.Client{Transport: tr}, Retry: retry}
}

type azidentityOpts = azidentity.WorkloadIdentityCredentialOptions

// cloudConfig maps an emulator cloud name to the SDK's configuration.
func cloudConfig(name string) cloud.Configuration {
	switch name {
	case CloudUSGov:
		return cloud.AzureGovernment
	case CloudChina:
		return cloud.AzureChina
	}
	return cloud.AzurePublic
}

// noRetry makes SDK clients fail on the first error.
var noRetry = policy.RetryOptions{MaxRetries: -1}

// fastRetry backs off for milliseconds; a Retry-After up to 2 s is honoured (the SDK
// does not retry at all when Retry-After exceeds MaxRetryDelay).
var fastRetry = policy.RetryOptions{MaxRetries: 3, RetryDelay: time.Millisecond, MaxRetryDelay: 2 * time.Second}

// registerWorkload registers a workload identity in the emulator's tenant and returns
// its client ID and a credential for it.
func registerWorkload(t *testing.T, e *Emulator, tr http.RoundTripper) (string, *azidentity.WorkloadIdentityCredential) {
	t.Helper()
	clientID := newUUID()
	if err := e.AddWorkloadIdentity(WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		t.Fatal(err)
	}
	return clientID, workloadCred(t, clientID, e.TenantID(), saToken(t, testIssuer, testSubject, DefaultAudience, time.Now().Add(time.Hour)), tr, nil)
}

func workloadCred(t *testing.T, clientID, tenant, tokenFile string, tr http.RoundTripper,
	edit func(*azidentity.WorkloadIdentityCredentialOptions)) *azidentity.WorkloadIdentityCredential {
	t.Helper()
	o := &azidentity.WorkloadIdentityCredentialOptions{
		ClientID: clientID, TenantID: tenant, TokenFilePath: tokenFile,
		ClientOptions: clientOptions(tr, noRetry),
	}
	if edit != nil {
		edit(o)
	}
	cred, err := azidentity.NewWorkloadIdentityCredential(o)
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

func secretsClient(t *testing.T, vaultURL string, cred azcore.TokenCredential, tr http.RoundTripper, retry policy.RetryOptions) *azsecrets.Client {
	t.Helper()
	c, err := azsecrets.NewClient(vaultURL, cred, &azsecrets.ClientOptions{ClientOptions: clientOptions(tr, retry)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// vaultToken gets a Key Vault access token for the public cloud.
func vaultToken(t *testing.T, cred azcore.TokenCredential, tenant string) string {
	t.Helper()
	tk, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{
		Scopes: []string{"https://vault.azure.net/.default"}, TenantID: tenant})
	if err != nil {
		t.Fatal(err)
	}
	return tk.Token
}

// rawDo sends a request through the emulator's transport.
func rawDo(t *testing.T, tr http.RoundTripper, method, url, bearer string, header http.Header, body []byte) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// kvErrorCodes extracts error.code and error.innererror.code from a Key Vault error body.
func kvErrorCodes(t *testing.T, body []byte) (code, inner, message string) {
	t.Helper()
	var b struct {
		Error struct {
			Code       string `json:"code"`
			Message    string `json:"message"`
			InnerError struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return b.Error.Code, b.Error.InnerError.Code, b.Error.Message
}
