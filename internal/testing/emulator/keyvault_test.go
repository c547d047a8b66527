package emulator

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/google/go-cmp/cmp"
)

var hex32 = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestGetSecret(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	if err := e.AddVault("myvault", VaultOptions{}); err != nil {
		t.Fatal(err)
	}
	v1 := e.SetSecret("myvault", "db-password", "first")
	v2 := e.SetSecret("myvault", "db-password", "second", WithContentType("text/plain"), WithTags(map[string]string{"env": "test"}))
	e.SetSecret("myvault", "Mixed-Case", "mixed")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{v1, v2} {
		if !hex32.MatchString(v) {
			t.Fatalf("version %q is not 32 lower-case hex digits", v)
		}
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)

	type result struct {
		Value, Name, Version, ContentType string
		Tags                              map[string]*string
		Enabled                           bool
		RecoveryLevel                     string
		RecoverableDays                   int32
	}
	tests := []struct {
		name, secret, version string
		want                  result
	}{
		{"latest", "db-password", "", result{"second", "db-password", v2, "text/plain",
			map[string]*string{"env": to.Ptr("test")}, true, "Recoverable+Purgeable", 90}},
		{"by version", "db-password", v2, result{"second", "db-password", v2, "text/plain",
			map[string]*string{"env": to.Ptr("test")}, true, "Recoverable+Purgeable", 90}},
		{"older version", "db-password", v1, result{"first", "db-password", v1, "", nil, true, "Recoverable+Purgeable", 90}},
		{"name is case-insensitive", "DB-PASSWORD", "", result{"second", "db-password", v2, "text/plain",
			map[string]*string{"env": to.Ptr("test")}, true, "Recoverable+Purgeable", 90}},
		{"stored name is returned", "mixed-case", "", result{Value: "mixed", Name: "Mixed-Case", Enabled: true,
			RecoveryLevel: "Recoverable+Purgeable", RecoverableDays: 90}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := client.GetSecret(context.Background(), tc.secret, tc.version, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := result{Value: *resp.Value, Name: resp.ID.Name(), Version: resp.ID.Version(), Tags: resp.Tags,
				Enabled: *resp.Attributes.Enabled, RecoveryLevel: *resp.Attributes.RecoveryLevel,
				RecoverableDays: *resp.Attributes.RecoverableDays}
			if resp.ContentType != nil {
				got.ContentType = *resp.ContentType
			}
			if tc.want.Version == "" {
				tc.want.Version = got.Version
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("secret (-want +got):\n%s", diff)
			}
			if wantPrefix := "https://myvault.vault.azure.net/secrets/"; !strings.HasPrefix(string(*resp.ID), wantPrefix) {
				t.Errorf("ID %q does not start with %q", *resp.ID, wantPrefix)
			}
			if resp.Attributes.Created == nil || time.Since(*resp.Attributes.Created) > time.Minute {
				t.Errorf("created = %v", resp.Attributes.Created)
			}
		})
	}

	// Secret reads back what the Go API stored.
	cur, ok := e.Secret("myvault", "DB-password")
	if !ok || cur.Version != v2 || cur.Value != "second" || cur.ContentType != "text/plain" {
		t.Errorf("Secret() = %+v, %v", cur, ok)
	}
	if n := len(e.SecretVersions("myvault", "db-password")); n != 2 {
		t.Errorf("SecretVersions: %d versions, want 2", n)
	}
}

func TestGetSecretPaths(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	v := e.SetSecret("myvault", "s", "value")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	tok := vaultToken(t, cred, e.TenantID())
	base := e.VaultURL("myvault")
	tests := []struct {
		name, url string
		status    int
		code      string
	}{
		{"no slash", base + "secrets/s?api-version=7.4", 200, ""},
		{"trailing slash", base + "secrets/s/?api-version=7.4", 200, ""},
		{"version", base + "secrets/s/" + v + "?api-version=7.4", 200, ""},
		{"version upper case", base + "secrets/s/" + strings.ToUpper(v) + "?api-version=7.4", 200, ""},
		{"no api-version", base + "secrets/s", 400, "BadParameter"},
		{"bad version", base + "secrets/s/nothex?api-version=7.4", 404, "SecretNotFound"},
		{"invalid name", base + "secrets/a_b?api-version=7.4", 400, "BadParameter"},
	}
	_, port, _ := net.SplitHostPort(e.Addr())
	tests = append(tests, struct {
		name, url string
		status    int
		code      string
	}{"host with the emulator's port", "https://myvault.vault.azure.net:" + port + "/secrets/s?api-version=7.4", 200, ""})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawDo(t, tr, http.MethodGet, tc.url, tok, nil, nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.status == 200 {
				var s struct{ ID string }
				if err := json.Unmarshal(body, &s); err != nil || !strings.HasPrefix(s.ID, strings.Split(tc.url, "/secrets/")[0]+"/secrets/s/") {
					t.Errorf("id %q for %s", s.ID, tc.url)
				}
			}
			if tc.code != "" {
				if code, _, _ := kvErrorCodes(t, body); code != tc.code {
					t.Errorf("code %q, want %q", code, tc.code)
				}
			}
		})
	}
}

func TestListVersionsPaging(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	var want []string
	for range 30 {
		want = append(want, e.SetSecret("myvault", "rotated", "v"))
	}
	e.SetSecret("myvault", "other", "x")
	if err := e.Grant("myvault", clientID, PermList); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)

	// The SDK follows nextLink (25 per page).
	var got []string
	pages := 0
	pager := client.NewListSecretPropertiesVersionsPager("rotated", nil)
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, p := range page.Value {
			if p.ID.Name() != "rotated" || p.Attributes == nil || !*p.Attributes.Enabled {
				t.Errorf("unexpected item %+v", p)
			}
			got = append(got, p.ID.Version())
		}
	}
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("versions (-want +got):\n%s", diff)
	}
	if pages != 2 {
		t.Errorf("%d pages, want 2", pages)
	}
	if s := e.Stats(); s.Lists != 2 || e.VaultReads("myvault") != 2 {
		t.Errorf("Lists = %d, VaultReads = %d, want 2 and 2", s.Lists, e.VaultReads("myvault"))
	}

	// Raw: maxresults, nextLink, no values, range check.
	tok := vaultToken(t, cred, e.TenantID())
	next := e.VaultURL("myvault") + "secrets/rotated/versions?api-version=2026-04-01&maxresults=7"
	var ids []string
	for next != "" {
		resp, body := rawDo(t, tr, http.MethodGet, next, tok, nil, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var page struct {
			Value    []map[string]any `json:"value"`
			NextLink *string          `json:"nextLink"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		if len(page.Value) > 7 {
			t.Fatalf("page of %d items with maxresults=7", len(page.Value))
		}
		for _, it := range page.Value {
			if _, ok := it["value"]; ok {
				t.Fatal("list returned a secret value")
			}
			ids = append(ids, it["id"].(string))
		}
		next = ""
		if page.NextLink != nil {
			next = *page.NextLink
			u, err := url.Parse(next)
			if err != nil {
				t.Fatal(err)
			}
			if u.Host != "myvault.vault.azure.net" || u.Query().Get("api-version") != "2026-04-01" || u.Query().Get("$skiptoken") == "" {
				t.Fatalf("nextLink %q", next)
			}
		}
	}
	if len(ids) != 30 {
		t.Errorf("raw paging listed %d versions, want 30", len(ids))
	}

	resp, body := rawDo(t, tr, http.MethodGet, e.VaultURL("myvault")+"secrets/rotated/versions?api-version=7.4&maxresults=26", tok, nil, nil)
	if code, _, _ := kvErrorCodes(t, body); resp.StatusCode != 400 || code != "BadParameter" {
		t.Errorf("maxresults=26: %d %s", resp.StatusCode, body)
	}

	// Listing secrets.
	lp := client.NewListSecretPropertiesPager(nil)
	var names []string
	for lp.More() {
		page, err := lp.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range page.Value {
			names = append(names, p.ID.Name())
		}
	}
	if diff := cmp.Diff([]string{"other", "rotated"}, names); diff != "" {
		t.Errorf("secrets (-want +got):\n%s", diff)
	}
}

func TestKeyVaultErrors(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	oid, _ := e.ObjectID(clientID)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.AddVault("policyvault", VaultOptions{}))
	must(e.AddVault("rbacvault", VaultOptions{RBAC: true}))
	must(e.AddVault("fwvault", VaultOptions{}))
	must(e.AddVault("faultvault", VaultOptions{}))
	e.SetSecret("policyvault", "s", "v")
	e.SetSecret("policyvault", "disabled", "v")
	must(e.DisableSecret("policyvault", "disabled"))
	e.SetSecret("policyvault", "deleted", "v")
	must(e.DeleteSecret("policyvault", "deleted"))
	e.SetSecret("rbacvault", "s", "v")
	e.SetSecret("fwvault", "s", "v")
	e.SetSecret("faultvault", "s", "v")
	must(e.SetFirewall("fwvault", true))
	for _, v := range []string{"policyvault", "fwvault", "faultvault"} {
		must(e.Grant(v, clientID, PermGet))
	}
	noGet := "nogetvault"
	must(e.AddVault(noGet, VaultOptions{}))
	e.SetSecret(noGet, "s", "v")
	must(e.Grant(noGet, clientID, PermList))

	caller := "appid=" + clientID + ";oid=" + oid + ";iss=https://sts.windows.net/" + e.TenantID() + "/"
	tests := []struct {
		name, vault, secret, version string
		list                         bool
		fault                        *Fault
		status                       int
		code, inner, msg             string
		header                       string // a response header that must be set
	}{
		{name: "not found", vault: "policyvault", secret: "missing", status: 404, code: "SecretNotFound",
			msg: "A secret with (name/id) missing was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"},
		{name: "unknown version", vault: "policyvault", secret: "s", version: strings.Repeat("ab", 16), status: 404,
			code: "SecretNotFound", msg: "(name/id) s/" + strings.Repeat("ab", 16) + " was not found"},
		{name: "deleted", vault: "policyvault", secret: "deleted", status: 404, code: "SecretNotFound"},
		{name: "disabled", vault: "policyvault", secret: "disabled", status: 403, code: "Forbidden", inner: "SecretDisabled",
			msg: "Operation get is not allowed on a disabled secret."},
		{name: "access policy get", vault: noGet, secret: "s", status: 403, code: "Forbidden", inner: "AccessDenied",
			msg: "The user, group or application '" + caller + "' does not have secrets get permission on key vault 'nogetvault;location=westeurope'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"},
		{name: "access policy list", vault: "policyvault", secret: "s", list: true, status: 403, code: "Forbidden",
			inner: "AccessDenied", msg: "does not have secrets list permission on key vault 'policyvault;location=westeurope'"},
		{name: "access policy before not found", vault: noGet, secret: "missing", status: 403, code: "Forbidden", inner: "AccessDenied"},
		{name: "rbac get", vault: "rbacvault", secret: "s", status: 403, code: "Forbidden", inner: "ForbiddenByRbac",
			msg: "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'"},
		{name: "rbac list", vault: "rbacvault", secret: "s", list: true, status: 403, code: "Forbidden", inner: "ForbiddenByRbac",
			msg: "Action: 'Microsoft.KeyVault/vaults/secrets/readMetadata/action'"},
		{name: "firewall", vault: "fwvault", secret: "s", status: 403, code: "Forbidden", inner: "ForbiddenByFirewall",
			msg: "Client address is not authorized and caller is not a trusted service."},
		{name: "fault 500", vault: "faultvault", secret: "s", fault: &Fault{Kind: FaultStatus, Count: 1, Match: OpGet},
			status: 500, code: "InternalServerError"},
		{name: "fault 503", vault: "faultvault", secret: "s", fault: &Fault{Kind: FaultStatus, Status: 503, Count: 1},
			status: 503, code: "ServiceUnavailable"},
		{name: "fault throttle", vault: "faultvault", secret: "s", fault: &Fault{Kind: FaultThrottle, RetryAfterSeconds: 7, Count: 1, Vault: "faultvault"},
			status: 429, code: "Throttled", header: "Retry-After"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fault != nil {
				must(e.InjectFault(*tc.fault))
				t.Cleanup(e.ClearFaults)
			}
			client := secretsClient(t, e.VaultURL(tc.vault), cred, tr, noRetry)
			var err error
			if tc.list {
				_, err = client.NewListSecretPropertiesVersionsPager(tc.secret, nil).NextPage(context.Background())
			} else {
				_, err = client.GetSecret(context.Background(), tc.secret, tc.version, nil)
			}
			var re *azcore.ResponseError
			if !errors.As(err, &re) {
				t.Fatalf("error %v (%T), want *azcore.ResponseError", err, err)
			}
			if re.StatusCode != tc.status || re.ErrorCode != tc.code {
				t.Errorf("status %d code %q, want %d %q", re.StatusCode, re.ErrorCode, tc.status, tc.code)
			}
			body, err := runtime.Payload(re.RawResponse)
			if err != nil {
				t.Fatal(err)
			}
			code, inner, msg := kvErrorCodes(t, body)
			if code != tc.code || inner != tc.inner {
				t.Errorf("body codes %q/%q, want %q/%q", code, inner, tc.code, tc.inner)
			}
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("message %q does not contain %q", msg, tc.msg)
			}
			if tc.header != "" && re.RawResponse.Header.Get(tc.header) == "" {
				t.Errorf("no %s header", tc.header)
			}
		})
	}
	if got := e.Stats().Faults; got != 3 {
		t.Errorf("Faults = %d, want 3", got)
	}
}

func TestExpiredAndForeignTokens(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", "v")
	if err := e.AddVault("othertenant", VaultOptions{TenantID: "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"}); err != nil {
		t.Fatal(err)
	}
	e.SetSecret("othertenant", "s", "v")
	for _, v := range []string{"myvault", "othertenant"} {
		if err := e.Grant(v, clientID, PermGet); err != nil {
			t.Fatal(err)
		}
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
	tok := vaultToken(t, cred, e.TenantID())

	// A token from another tenant: the challenge tenant is the vault's.
	resp, body := rawDo(t, tr, http.MethodGet, e.VaultURL("othertenant")+"secrets/s?api-version=7.4", tok, nil, nil)
	if _, _, msg := kvErrorCodes(t, body); resp.StatusCode != 401 || !strings.HasPrefix(msg, "AKV10032: Invalid issuer.") {
		t.Errorf("foreign token: %d %s", resp.StatusCode, body)
	}
	if h := resp.Header.Get("WWW-Authenticate"); h != `Bearer authorization="https://login.microsoftonline.com/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", resource="https://vault.azure.net"` {
		t.Errorf("challenge %q", h)
	}
	// Through the SDK the credential refuses the other tenant before asking Azure AD.
	other := secretsClient(t, e.VaultURL("othertenant"), cred, tr, noRetry)
	if _, err := other.GetSecret(context.Background(), "s", "", nil); err == nil || !strings.Contains(err.Error(), "AdditionallyAllowedTenants") {
		t.Errorf("other tenant: %v", err)
	}

	// Expired tokens: the client's cached token is refused.
	e.ExpireTokens()
	_, err := client.GetSecret(context.Background(), "s", "", nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 401 || re.ErrorCode != "Unauthorized" {
		t.Fatalf("after ExpireTokens: %v", err)
	}
	if b, _ := runtime.Payload(re.RawResponse); !strings.Contains(string(b), "TokenExpired") {
		t.Errorf("body %s", b)
	}
	// A new credential gets a fresh token.
	cred2 := workloadCred(t, clientID, e.TenantID(), saToken(t, testIssuer, testSubject, DefaultAudience, time.Now().Add(time.Hour)), tr, nil)
	if _, err := secretsClient(t, e.VaultURL("myvault"), cred2, tr, noRetry).GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownVaultFailsLikeDNS(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	_, cred := registerWorkload(t, e, tr)
	client := secretsClient(t, e.VaultURL("nosuchvault"), cred, tr, noRetry)
	_, err := client.GetSecret(context.Background(), "s", "", nil)
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound || dnsErr.Name != "nosuchvault.vault.azure.net" {
		t.Fatalf("error %v, want a DNS not-found error", err)
	}
	// A public-cloud vault does not answer on the US Gov suffix.
	e.SetSecret("pubvault", "s", "v")
	if _, err := e.DialContext(context.Background(), "tcp", "pubvault.vault.usgovcloudapi.net:443"); !errors.As(err, &dnsErr) {
		t.Errorf("wrong cloud: %v", err)
	}
	c, err := e.DialContext(context.Background(), "tcp", "pubvault.vault.azure.net:443")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestOtherClouds(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	tests := []struct {
		cloud, vaultURL, login string
	}{
		{CloudUSGov, "https://govvault.vault.usgovcloudapi.net/", "login.microsoftonline.us"},
		{CloudChina, "https://cnvault.vault.azure.cn/", "login.chinacloudapi.cn"},
	}
	for _, tc := range tests {
		t.Run(tc.cloud, func(t *testing.T) {
			name := strings.SplitN(strings.TrimPrefix(tc.vaultURL, "https://"), ".", 2)[0]
			if err := e.AddVault(name, VaultOptions{Cloud: tc.cloud}); err != nil {
				t.Fatal(err)
			}
			e.SetSecret(name, "s", "cloudy")
			clientID := newUUID()
			if err := e.AddWorkloadIdentity(WorkloadIdentity{ClientID: clientID, Issuer: testIssuer, Subject: testSubject}); err != nil {
				t.Fatal(err)
			}
			if err := e.Grant(name, clientID, PermGet); err != nil {
				t.Fatal(err)
			}
			cloudCfg := cloudConfig(tc.cloud)
			cred := workloadCred(t, clientID, e.TenantID(), saToken(t, testIssuer, testSubject, DefaultAudience, time.Now().Add(time.Hour)), tr,
				func(o *azidentityOpts) { o.ClientOptions.Cloud = cloudCfg })
			opts := clientOptions(tr, noRetry)
			opts.Cloud = cloudCfg
			client, err := azsecrets.NewClient(tc.vaultURL, cred, &azsecrets.ClientOptions{ClientOptions: opts})
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.GetSecret(context.Background(), "s", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if *resp.Value != "cloudy" || !strings.HasPrefix(string(*resp.ID), tc.vaultURL) {
				t.Errorf("got %q %q", *resp.Value, *resp.ID)
			}
			// The challenge names the cloud's login host and resource.
			r, _ := rawDo(t, tr, http.MethodGet, tc.vaultURL+"secrets/s?api-version=7.4", "", nil, nil)
			if h := r.Header.Get("WWW-Authenticate"); !strings.Contains(h, "https://"+tc.login+"/") {
				t.Errorf("challenge %q", h)
			}
		})
	}
}

func TestThrottleWindow(t *testing.T) {
	var ts throttleState
	cfg := throttleConfig{limit: 3, window: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at   time.Duration
		ok   bool
		wait time.Duration
	}{
		{0, true, 0},
		{time.Second, true, 0},
		{2 * time.Second, true, 0},
		{3 * time.Second, false, 7 * time.Second},
		{10 * time.Second, true, 0},                               // the read at 0 left the window
		{10500 * time.Millisecond, false, 500 * time.Millisecond}, // the read at 1s is still in
		{11 * time.Second, true, 0},
	}
	for i, s := range steps {
		ok, wait := ts.allow(t0.Add(s.at), cfg)
		if ok != s.ok || wait != s.wait {
			t.Errorf("step %d at %v: allow = %v, %v; want %v, %v", i, s.at, ok, wait, s.ok, s.wait)
		}
	}
	if ok, _ := (&throttleState{}).allow(t0, throttleConfig{limit: -1}); !ok {
		t.Error("a negative limit must disable throttling")
	}
}

func TestThrottling(t *testing.T) {
	e := start(t, Options{ThrottleLimit: 3, ThrottleWindow: time.Second})
	tr := transport(t, e)
	clientID, cred := registerWorkload(t, e, tr)
	e.SetSecret("myvault", "s", "v")
	if err := e.Grant("myvault", clientID, PermGet); err != nil {
		t.Fatal(err)
	}
	client := secretsClient(t, e.VaultURL("myvault"), cred, tr, noRetry)
	for i := range 3 {
		if _, err := client.GetSecret(context.Background(), "s", "", nil); err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
	}
	_, err := client.GetSecret(context.Background(), "s", "", nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 429 || re.ErrorCode != "Throttled" {
		t.Fatalf("4th get: %v", err)
	}
	if ra := re.RawResponse.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1", ra)
	}
	// With retries, the SDK waits for Retry-After and succeeds.
	retrying := secretsClient(t, e.VaultURL("myvault"), cred, tr, fastRetry)
	start := time.Now()
	if _, err := retrying.GetSecret(context.Background(), "s", "", nil); err != nil {
		t.Fatalf("after Retry-After: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("recovery took %v", d)
	}
	s := e.Stats()
	if s.Throttled < 1 || s.Gets < 4 || e.VaultReads("myvault") != s.Gets {
		t.Errorf("stats %+v, vault reads %d", s, e.VaultReads("myvault"))
	}
}
