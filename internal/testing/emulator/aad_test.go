package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/go-cmp/cmp"
)

func TestWorkloadIdentityErrors(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID := newUUID()
	if err := e.AddWorkloadIdentity(WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		t.Fatal(err)
	}
	otherTenant := "aaaaaaaa-0000-0000-0000-000000000001"
	otherClient := newUUID()
	if err := e.AddWorkloadIdentity(WorkloadIdentity{ClientID: otherClient, TenantID: otherTenant, Issuer: testIssuer, Subject: testSubject}); err != nil {
		t.Fatal(err)
	}
	hour := time.Now().Add(time.Hour)
	tests := []struct {
		name, clientID, tenant string
		iss, sub, aud          string
		exp                    time.Time
		file                   string // raw token file content, overrides the claims
		status                 int
		errCode                string
		aadsts                 int
		desc                   string
	}{
		{name: "ok", clientID: clientID, iss: testIssuer, sub: testSubject, aud: DefaultAudience, exp: hour},
		{name: "wrong subject", clientID: clientID, iss: testIssuer, sub: "system:serviceaccount:default:other", aud: DefaultAudience, exp: hour,
			status: 401, errCode: "invalid_client", aadsts: 70021,
			desc: "AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '" + testIssuer +
				"'. Assertion Subject: 'system:serviceaccount:default:other'. Assertion Audience: 'api://AzureADTokenExchange'."},
		{name: "wrong issuer", clientID: clientID, iss: "https://other.example/", sub: testSubject, aud: DefaultAudience, exp: hour,
			status: 401, errCode: "invalid_client", aadsts: 70021, desc: "Assertion Issuer: 'https://other.example/'."},
		{name: "issuer case matters", clientID: clientID, iss: strings.ToUpper(testIssuer), sub: testSubject, aud: DefaultAudience, exp: hour,
			status: 401, errCode: "invalid_client", aadsts: 70021},
		{name: "wrong audience", clientID: clientID, iss: testIssuer, sub: testSubject, aud: "api://other", exp: hour,
			status: 401, errCode: "invalid_client", aadsts: 70021, desc: "Assertion Audience: 'api://other'."},
		{name: "expired assertion", clientID: clientID, iss: testIssuer, sub: testSubject, aud: DefaultAudience, exp: time.Now().Add(-time.Minute),
			status: 401, errCode: "invalid_client", aadsts: 700024, desc: "AADSTS700024: Client assertion is not within its valid time range."},
		{name: "unknown client", clientID: newUUID(), iss: testIssuer, sub: testSubject, aud: DefaultAudience, exp: hour,
			status: 400, errCode: "unauthorized_client", aadsts: 700016, desc: "was not found in the directory '" + DefaultTenantID + "'"},
		{name: "tenant mismatch", clientID: otherClient, iss: testIssuer, sub: testSubject, aud: DefaultAudience, exp: hour,
			status: 400, errCode: "unauthorized_client", aadsts: 700016, desc: "AADSTS700016: Application with identifier '" + otherClient + "'"},
		{name: "malformed assertion", clientID: clientID, file: "not-a-jwt",
			status: 400, errCode: "invalid_request", aadsts: 50027, desc: "AADSTS50027"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := saToken(t, tc.iss, tc.sub, tc.aud, tc.exp)
			if tc.file != "" {
				if err := os.WriteFile(file, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			tenant := tc.tenant
			if tenant == "" {
				tenant = e.TenantID()
			}
			cred := workloadCred(t, tc.clientID, tenant, file, tr, nil)
			_, tokErr := cred.GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{"https://vault.azure.net/.default"}})
			if tc.status == 0 {
				if tokErr != nil {
					t.Fatal(tokErr)
				}
				return
			}
			var afe *azidentity.AuthenticationFailedError
			if !errors.As(tokErr, &afe) || afe.RawResponse == nil {
				t.Fatalf("error %v (%T), want *azidentity.AuthenticationFailedError with a response", tokErr, tokErr)
			}
			body, err := runtime.Payload(afe.RawResponse)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
				Codes       []int  `json:"error_codes"`
				Trace       string `json:"trace_id"`
				Correlation string `json:"correlation_id"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if afe.RawResponse.StatusCode != tc.status || got.Error != tc.errCode || !cmp.Equal(got.Codes, []int{tc.aadsts}) {
				t.Errorf("got %d %q %v, want %d %q [%d]", afe.RawResponse.StatusCode, got.Error, got.Codes, tc.status, tc.errCode, tc.aadsts)
			}
			if !strings.Contains(got.Description, tc.desc) || !strings.Contains(got.Description, "\r\nTrace ID: "+got.Trace) {
				t.Errorf("description %q does not contain %q and the trace ID", got.Description, tc.desc)
			}
			if want := "AADSTS" + strconv.Itoa(tc.aadsts); !strings.Contains(tokErr.Error(), want) {
				t.Errorf("error text %q lacks %s", tokErr.Error(), want)
			}
		})
	}
}

func TestWorkloadIdentityThroughKeyVault(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, _ := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", "v")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	// A service account the federated credential does not name.
	cred := workloadCred(t, clientID, e.TenantID(), saToken(t, testIssuer, "system:serviceaccount:default:intruder", DefaultAudience, time.Now().Add(time.Hour)), tr, nil)
	_, err := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry).GetSecret(context.Background(), "s", "", nil)
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) || !strings.Contains(err.Error(), "AADSTS70021") {
		t.Fatalf("error %v, want AADSTS70021", err)
	}
}

func TestLoopbackAuthority(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID := newUUID()
	if err := e.AddWorkloadIdentity(WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		t.Fatal(err)
	}
	e.SetSecret("myvault", "s", "loop")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	file := saToken(t, testIssuer, testSubject, DefaultAudience, time.Now().Add(time.Hour))
	for _, disable := range []bool{true, false} {
		name := "instance discovery disabled"
		if !disable {
			name = "instance discovery answered by the emulator"
		}
		t.Run(name, func(t *testing.T) {
			e.ResetStats()
			cred := workloadCred(t, clientID, e.TenantID(), file, tr, func(o *azidentityOpts) {
				o.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: e.AuthorityHost()}
				o.DisableInstanceDiscovery = disable
			})
			resp, err := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry).GetSecret(context.Background(), "s", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if *resp.Value != "loop" {
				t.Errorf("value %q", *resp.Value)
			}
			// Instance discovery happens only when enabled (MSAL then asks twice: to
			// validate the authority and for its token cache).
			s := e.Stats()
			if s.Discovery != 1 || disable && s.InstanceDiscovery != 0 || !disable && s.InstanceDiscovery < 1 {
				t.Errorf("Discovery = %d, InstanceDiscovery = %d", s.Discovery, s.InstanceDiscovery)
			}
		})
	}
}

func TestOpenIDConfiguration(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	tests := []struct {
		url, issuer string
		status      int
	}{
		{"https://login.microsoftonline.com/" + DefaultTenantID + "/v2.0/.well-known/openid-configuration",
			"https://login.microsoftonline.com/" + DefaultTenantID + "/v2.0", 200},
		{e.AuthorityHost() + DefaultTenantID + "/v2.0/.well-known/openid-configuration",
			"https://" + e.Addr() + "/" + DefaultTenantID + "/v2.0", 200},
		{"https://login.microsoftonline.us/common/v2.0/.well-known/openid-configuration",
			"https://login.microsoftonline.us/common/v2.0", 200},
		{"https://login.microsoftonline.com/unknown-tenant/v2.0/.well-known/openid-configuration", "", 400},
	}
	for _, tc := range tests {
		resp, body := rawDo(t, tr, http.MethodGet, tc.url, "", nil, nil)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d: %s", tc.url, resp.StatusCode, body)
			continue
		}
		var doc map[string]any
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatal(err)
		}
		if tc.status != 200 {
			if doc["error"] != "invalid_tenant" {
				t.Errorf("%s: %s", tc.url, body)
			}
			continue
		}
		if doc["issuer"] != tc.issuer || doc["token_endpoint"] != strings.TrimSuffix(tc.issuer, "/v2.0")+"/oauth2/v2.0/token" {
			t.Errorf("%s: %s", tc.url, body)
		}
	}
}

// systemAssignedUsed records that a test used the system-assigned identity through MSAL.
var systemAssignedUsed atomic.Bool

func TestManagedIdentity(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	t.Setenv("IDENTITY_ENDPOINT", e.MSIEndpoint())
	t.Setenv("IDENTITY_HEADER", e.IdentityHeader())
	userAssigned, system, unknown := newUUID(), newUUID(), newUUID()
	if err := e.AddManagedIdentity(userAssigned); err != nil {
		t.Fatal(err)
	}
	if err := e.SetSystemIdentity(system); err != nil {
		t.Fatal(err)
	}
	e.SetSecret("myvault", "s", "managed")
	for _, id := range []string{userAssigned, system} {
		if err := e.Grant("myvault", id, PermGet); err != nil {
			t.Fatal(err)
		}
	}
	// MSAL caches managed-identity tokens process-wide by client ID: every case uses its
	// own identity, and the system-assigned one appears in this test only.
	tests := []struct {
		name   string
		id     azidentity.ManagedIDKind
		status int
	}{
		{"user-assigned", azidentity.ClientID(userAssigned), 0},
		{"system-assigned", nil, 0},
		{"unknown identity", azidentity.ClientID(unknown), 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.id == nil && systemAssignedUsed.Swap(true) {
				t.Skip("MSAL caches the system-assigned token process-wide: it works once per test binary run (-count=1)")
			}
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{
				ID: tc.id, ClientOptions: clientOptions(tr, noRetry)})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry).GetSecret(context.Background(), "s", "", nil)
			if tc.status == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if *resp.Value != "managed" {
					t.Errorf("value %q", *resp.Value)
				}
				return
			}
			var afe *azidentity.AuthenticationFailedError
			if !errors.As(err, &afe) || afe.RawResponse == nil || afe.RawResponse.StatusCode != tc.status {
				t.Fatalf("error %v, want AuthenticationFailedError %d", err, tc.status)
			}
			if !strings.Contains(err.Error(), "Unable to load the proper Managed Identity.") {
				t.Errorf("error %q", err)
			}
		})
	}

	// The raw protocol: header check and the answer's fields.
	q := url.Values{"api-version": {"2019-08-01"}, "resource": {"https://vault.azure.net"}, "client_id": {userAssigned}}
	u := e.MSIEndpoint() + "?" + q.Encode()
	resp, body := rawDo(t, tr, http.MethodGet, u, "", http.Header{"X-Identity-Header": {"wrong"}}, nil)
	if resp.StatusCode != 401 {
		t.Errorf("wrong header: %d %s", resp.StatusCode, body)
	}
	resp, body = rawDo(t, tr, http.MethodGet, u, "", http.Header{"X-Identity-Header": {e.IdentityHeader()}}, nil)
	var tok map[string]any
	if err := json.Unmarshal(body, &tok); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if tok["token_type"] != "Bearer" || tok["resource"] != "https://vault.azure.net" || tok["client_id"] != userAssigned {
		t.Errorf("answer %s", body)
	}
	if s, ok := tok["expires_on"].(string); !ok || len(s) < 10 {
		t.Errorf("expires_on %v is not a string of Unix seconds", tok["expires_on"])
	}
}

func TestTokenEndpointProtocolErrors(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID := newUUID()
	if err := e.AddWorkloadIdentity(WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
		t.Fatal(err)
	}
	tokenURL := "https://login.microsoftonline.com/" + e.TenantID() + "/oauth2/v2.0/token"
	base := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID},
		"scope": {"https://vault.azure.net/.default"}}
	tests := []struct {
		name   string
		edit   func(url.Values)
		status int
		aadsts int
	}{
		{"client secret", func(v url.Values) { v.Set("client_secret", "x") }, 401, 7000215},
		{"no credential", func(url.Values) {}, 401, 7000218},
		{"wrong grant", func(v url.Values) { v.Set("grant_type", "password") }, 400, 70003},
		{"scope without .default", func(v url.Values) { v.Set("scope", "https://vault.azure.net") }, 400, 1002012},
		{"no client_id", func(v url.Values) { v.Del("client_id") }, 400, 900144},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := url.Values{}
			for k, vv := range base {
				v[k] = vv
			}
			tc.edit(v)
			resp, body := rawDo(t, tr, http.MethodPost, tokenURL, "",
				http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, []byte(v.Encode()))
			var got struct {
				Codes []int `json:"error_codes"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || !cmp.Equal(got.Codes, []int{tc.aadsts}) {
				t.Errorf("%d %s, want %d AADSTS%d", resp.StatusCode, body, tc.status, tc.aadsts)
			}
		})
	}
}

func TestParseAssertion(t *testing.T) {
	jwt := unsignedJWT(t, map[string]any{"iss": "i", "sub": "s", "aud": "a", "exp": 1700000000.0, "nbf": 1690000000})
	got, err := parseAssertion(jwt)
	if err != nil {
		t.Fatal(err)
	}
	want := assertionClaims{Iss: "i", Sub: "s", Aud: []string{"a"}, Exp: 1700000000, Nbf: 1690000000}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "a.b", "a.!!!.c", "a." + "bm90IGpzb24" + ".c"} {
		if _, err := parseAssertion(bad); err == nil {
			t.Errorf("parseAssertion(%q) succeeded", bad)
		}
	}
}
