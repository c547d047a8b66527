package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

const (
	exClient = "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"
	exTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	exOther  = "0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b"
	exOID    = "9c8b7a6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"
	exIssuer = "https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/"
	exVault  = "https://myvault.vault.azure.net/"
)

// response builds an HTTP response with a JSON body for the request it answers.
func response(status int, method, rawURL string, body any, header map[string]string) *http.Response {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, rawURL, nil)
	resp := &http.Response{
		StatusCode: status, Status: fmt.Sprintf("%d %s", status, http.StatusText(status)),
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(b)),
		Request: req,
	}
	for k, v := range header {
		resp.Header.Set(k, v)
	}
	return resp
}

// kvErr is a Key Vault error as the SDK returns it.
func kvErr(status int, code, message, inner string, header map[string]string) error {
	e := map[string]any{"code": code, "message": message}
	if inner != "" {
		e["innererror"] = map[string]any{"code": inner}
	}
	return runtime.NewResponseError(response(status, http.MethodGet, exVault+"secrets/API-KEY/?api-version=2026-04-01", map[string]any{"error": e}, header))
}

// aadErr is an Azure AD error as azidentity returns it.
func aadErr(status int, code string, aadsts int, desc string) error {
	return &azidentity.AuthenticationFailedError{RawResponse: response(status, http.MethodPost,
		"https://login.microsoftonline.com/"+exTenant+"/oauth2/v2.0/token",
		map[string]any{"error": code, "error_description": desc + "\r\nTrace ID: 0\r\nCorrelation ID: 0\r\nTimestamp: 2026-11-23 15:04:05Z", "error_codes": []int{aadsts}}, nil)}
}

// msiErr is a managed-identity endpoint error as azidentity returns it.
func msiErr(status int, body any) error {
	return &azidentity.AuthenticationFailedError{RawResponse: response(status, http.MethodGet,
		"http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01", body, nil)}
}

func secretErr(version string, err error) error {
	return &SecretError{Name: "API-KEY", Version: version, File: "apikey.txt", Vault: exVault, Err: err}
}

const callerMsg = "appid=" + exClient + ";oid=" + exOID + ";iss=https://sts.windows.net/" + exTenant + "/"

func TestExplain(t *testing.T) {
	workload := Facts{VaultURL: exVault, Identity: agentconfig.IdentityWorkload, ClientID: exClient, TenantID: exTenant,
		Namespace: "shop", ServiceAccount: "checkout", Issuer: exIssuer, Subject: "system:serviceaccount:shop:checkout"}
	managed := Facts{VaultURL: exVault, Identity: agentconfig.IdentityManaged, ClientID: exClient, Namespace: "shop", ServiceAccount: "checkout"}
	system := Facts{VaultURL: exVault, Identity: agentconfig.IdentitySystem, Namespace: "shop", ServiceAccount: "checkout"}
	const rbacMsg = "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: " + callerMsg +
		"\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\nResource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-app/providers/microsoft.keyvault/vaults/myvault/secrets/api-key'\r\nAssignment: (not found)\r\nVault: myvault;location=westeurope\r\n"
	const policyMsg = "The user, group or application '" + callerMsg + "' does not have secrets get permission on key vault 'myvault;location=westeurope'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"

	for _, tc := range []struct {
		name  string
		err   error
		facts Facts
		want  string
	}{
		{
			name:  "access policy",
			err:   secretErr("", kvErr(403, "Forbidden", policyMsg, "AccessDenied", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b may not get its secrets. Fix: grant the identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b 'get' on secrets with an access policy (az keyvault set-policy --name myvault --spn 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b --secret-permissions get), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b --scope $(az keyvault show --name myvault --query id --output tsv))`,
		},
		{
			name:  "forbidden by policy, system identity",
			err:   secretErr("", kvErr(403, "Forbidden", policyMsg, "ForbiddenByPolicy", nil)),
			facts: system,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByPolicy): the vault uses access policies and the node's system-assigned managed identity (object ID 9c8b7a6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d) may not get its secrets. Fix: grant the identity 9c8b7a6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d 'get' on secrets with an access policy (az keyvault set-policy --name myvault --object-id 9c8b7a6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d --secret-permissions get), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee-object-id 9c8b7a6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d --assignee-principal-type ServicePrincipal --scope $(az keyvault show --name myvault --query id --output tsv))`,
		},
		{
			name:  "rbac",
			err:   secretErr("", kvErr(403, "Forbidden", rbacMsg, "ForbiddenByRbac", nil)),
			facts: managed,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByRbac): the vault uses Azure RBAC and managed identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b has no role assignment that allows reading secrets (Microsoft.KeyVault/vaults/secrets/getSecret/action). Fix: assign the identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b --scope /subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-app/providers/microsoft.keyvault/vaults/myvault); new role assignments take a few minutes to apply`,
		},
		{
			name:  "access policy without list",
			err:   secretErr("", kvErr(403, "Forbidden", strings.Replace(policyMsg, "secrets get permission", "secrets list permission", 1), "AccessDenied", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b may not list its secrets. Fix: grant the identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b 'get' and 'list' on secrets with an access policy (az keyvault set-policy --name myvault --spn 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b --secret-permissions get list), or the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b --scope $(az keyvault show --name myvault --query id --output tsv))`,
		},
		{
			name:  "rbac without readMetadata",
			err:   secretErr("", kvErr(403, "Forbidden", strings.Replace(rbacMsg, "getSecret/action", "readMetadata/action", 1), "ForbiddenByRbac", nil)),
			facts: managed,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByRbac): the vault uses Azure RBAC and managed identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b has no role assignment that allows listing secrets (Microsoft.KeyVault/vaults/secrets/readMetadata/action). Fix: assign the identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b the 'Key Vault Secrets User' role (az role assignment create --role 'Key Vault Secrets User' --assignee 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b --scope /subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg-app/providers/microsoft.keyvault/vaults/myvault); new role assignments take a few minutes to apply`,
		},
		{
			name:  "firewall",
			err:   secretErr("", kvErr(403, "Forbidden", "Client address is not authorized and caller is not a trusted service.\r\nClient address: 20.50.1.7\r\nCaller: "+callerMsg+"\r\nVault: myvault;location=westeurope", "ForbiddenByFirewall", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByFirewall): the vault's firewall does not admit the pod's address (20.50.1.7). Fix: allow the cluster's egress IP or the nodes' subnet in the vault's network rules (az keyvault network-rule add --name myvault --ip-address 20.50.1.7, or --subnet <subnet resource id>), or reach the vault through a private endpoint`,
		},
		{
			name:  "disabled latest",
			err:   secretErr("", kvErr(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): the secret's current version is disabled. Fix: enable it (az keyvault secret list-versions --vault-name myvault --name API-KEY shows it; az keyvault secret set-attributes --vault-name myvault --name API-KEY --version <version> --enabled true), set a new value, or pin an enabled version in kvinject.dev/secrets (<file>=API-KEY@<version>)`,
		},
		{
			name:  "disabled pinned",
			err:   secretErr("4387e9f3d6e14c459867679a90fd0f79", kvErr(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" version 4387e9f3d6e14c459867679a90fd0f79 from vault myvault: HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): version 4387e9f3d6e14c459867679a90fd0f79 of the secret is disabled. Fix: enable it (az keyvault secret set-attributes --vault-name myvault --name API-KEY --version 4387e9f3d6e14c459867679a90fd0f79 --enabled true), or pin another version in kvinject.dev/secrets`,
		},
		{
			name:  "not found",
			err:   secretErr("", kvErr(404, "SecretNotFound", "A secret with (name/id) API-KEY was not found in this key vault.", "", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no secret named "API-KEY" (or it was deleted). Fix: check the name in kvinject.dev/secrets; list the vault's secrets with az keyvault secret list --vault-name myvault --query "[].name"`,
		},
		{
			name:  "version not found",
			err:   secretErr("4387e9f3d6e14c459867679a90fd0f79", kvErr(404, "SecretNotFound", "A secret with (name/id) API-KEY/4387e9f3d6e14c459867679a90fd0f79 was not found in this key vault.", "", nil)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" version 4387e9f3d6e14c459867679a90fd0f79 from vault myvault: HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no version 4387e9f3d6e14c459867679a90fd0f79 of secret "API-KEY". Fix: check the name and version in kvinject.dev/secrets; list the versions with az keyvault secret list-versions --vault-name myvault --name API-KEY`,
		},
		{
			name: "401 tenant mismatch",
			err: secretErr("", kvErr(401, "Unauthorized", "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/"+exOther+"/. Found: https://sts.windows.net/"+exTenant+"/.", "",
				map[string]string{"WWW-Authenticate": `Bearer authorization="https://login.microsoftonline.com/` + exOther + `", resource="https://vault.azure.net"`})),
			facts: managed,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 401 Unauthorized, Key Vault error Unauthorized: Key Vault rejected the access token (AKV10032: Invalid issuer. Expected one of https://sts.windows.net/0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b/. Found: https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/.); the vault belongs to tenant 0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b but the identity's token is from tenant 72f988bf-86f1-41af-91ab-2d7cd011db47. Fix: use a vault of tenant 72f988bf-86f1-41af-91ab-2d7cd011db47, or an identity of tenant 0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b (a managed identity gets tokens from its home tenant only)`,
		},
		{
			name: "401 other",
			err: secretErr("", kvErr(401, "Unauthorized", "[TokenExpired] Error validating token: 'S2S12086'.", "",
				map[string]string{"WWW-Authenticate": `Bearer authorization="https://login.microsoftonline.com/` + exTenant + `", resource="https://vault.azure.net"`})),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: HTTP 401 Unauthorized, Key Vault error Unauthorized: Key Vault rejected the access token ([TokenExpired] Error validating token: 'S2S12086'.). Fix: check that the identity belongs to the vault's tenant (72f988bf-86f1-41af-91ab-2d7cd011db47) and that the nodes' clocks are right; the agent gets a new token on its next attempt`,
		},
		{
			name:  "workload identity in another tenant than the vault",
			err:   secretErr("", fmt.Errorf(`WorkloadIdentityCredential isn't configured to acquire tokens for tenant %q. To enable acquiring tokens for this tenant add it to the AdditionallyAllowedTenants on the credential options, or add "*" to allow acquiring tokens for any tenant`, exOther)),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: the vault belongs to tenant 0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b (its 401 challenge says so), but workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b signs in to tenant 72f988bf-86f1-41af-91ab-2d7cd011db47 (AZURE_TENANT_ID). Fix: use a vault of tenant 72f988bf-86f1-41af-91ab-2d7cd011db47, or an identity of tenant 0e3a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b with that tenant in the ServiceAccount's azure.workload.identity/tenant-id (or kvinject.dev/tenant-id)`,
		},
		{
			name: "no matching federated credential",
			err: secretErr("", aadErr(401, "invalid_client", 70021,
				"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: '"+exIssuer+"'. Assertion Subject: 'system:serviceaccount:shop:checkout'. Assertion Audience: 'api://AzureADTokenExchange'.")),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 401 Unauthorized invalid_client, AADSTS70021): no federated identity credential of the identity matches the pod's service account token (issuer https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/, subject system:serviceaccount:shop:checkout, audience api://AzureADTokenExchange). Fix: create a federated credential with issuer https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/ and subject system:serviceaccount:shop:checkout on the identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (az identity federated-credential create --name kvinject-shop-checkout --identity-name <identity name> --resource-group <resource group> --issuer https://oidc.prod-aks.azure.com/11111111-2222-3333-4444-555555555555/ --subject system:serviceaccount:shop:checkout --audiences api://AzureADTokenExchange)`,
		},
		{
			name: "federated credential, issuer only from the error",
			err: aadErr(401, "invalid_client", 70021,
				"AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: 'https://issuer.example/'. Assertion Subject: 'system:serviceaccount:shop:checkout'. Assertion Audience: 'api://AzureADTokenExchange'."),
			facts: Facts{VaultURL: exVault, Identity: agentconfig.IdentityWorkload, ClientID: exClient, TenantID: exTenant, Namespace: "shop", ServiceAccount: "checkout"},
			want:  `kvinject-agent: cannot read secrets from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 401 Unauthorized invalid_client, AADSTS70021): no federated identity credential of the identity matches the pod's service account token (issuer https://issuer.example/, subject system:serviceaccount:shop:checkout, audience api://AzureADTokenExchange). Fix: create a federated credential with issuer https://issuer.example/ and subject system:serviceaccount:shop:checkout on the identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (az identity federated-credential create --name kvinject-shop-checkout --identity-name <identity name> --resource-group <resource group> --issuer https://issuer.example/ --subject system:serviceaccount:shop:checkout --audiences api://AzureADTokenExchange)`,
		},
		{
			name: "unknown client id",
			err: secretErr("", aadErr(400, "unauthorized_client", 700016,
				"AADSTS700016: Application with identifier '"+exClient+"' was not found in the directory '"+exTenant+"'.")),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 400 Bad Request unauthorized_client, AADSTS700016): Azure AD knows no application with client ID 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b in tenant 72f988bf-86f1-41af-91ab-2d7cd011db47. Fix: check the client ID (the ServiceAccount's azure.workload.identity/client-id) and the tenant ID (azure.workload.identity/tenant-id or kvinject.dev/tenant-id); az identity show --name <identity name> --resource-group <resource group> --query "{clientId:clientId,tenantId:tenantId}" shows both`,
		},
		{
			name:  "unknown tenant",
			err:   aadErr(400, "invalid_request", 90002, "AADSTS90002: Tenant '"+exTenant+"' not found."),
			facts: workload,
			want:  `kvinject-agent: cannot read secrets from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 400 Bad Request invalid_request, AADSTS90002): tenant 72f988bf-86f1-41af-91ab-2d7cd011db47 does not exist in this cloud. Fix: check the tenant ID (azure.workload.identity/tenant-id or kvinject.dev/tenant-id) and the cloud (kvinject.dev/cloud)`,
		},
		{
			name: "vault of another cloud",
			err: aadErr(400, "invalid_resource", 500011,
				"AADSTS500011: The resource principal named https://vault.usgovcloudapi.net was not found in the tenant named Contoso. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."),
			facts: workload,
			want:  `kvinject-agent: cannot read secrets from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 400 Bad Request invalid_resource, AADSTS500011): Azure AD of this cloud does not know https://vault.usgovcloudapi.net, so the vault and the identity are in different Azure clouds. Fix: sign in to the vault's cloud: set kvinject.dev/cloud to the vault's cloud (AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud), which sets AZURE_AUTHORITY_HOST, or use a vault of the identity's cloud`,
		},
		{
			name:  "expired assertion",
			err:   aadErr(401, "invalid_client", 700024, "AADSTS700024: Client assertion is not within its valid time range."),
			facts: workload,
			want:  `kvinject-agent: cannot read secrets from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 401 Unauthorized invalid_client, AADSTS700024): the service account token is expired or not yet valid. Fix: check the nodes' clocks and that kubelet refreshes the projected token (kvinject-azure-token volume)`,
		},
		{
			name:  "other AAD error",
			err:   aadErr(400, "invalid_request", 90014, "AADSTS90014: The required field 'x' is missing."),
			facts: workload,
			want:  `kvinject-agent: cannot read secrets from vault myvault: Azure AD refused the token request of workload identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b (HTTP 400 Bad Request invalid_request, AADSTS90014): AADSTS90014: The required field 'x' is missing.`,
		},
		{
			name:  "user-assigned managed identity not on the node (IMDS)",
			err:   secretErr("", msiErr(400, map[string]string{"error": "invalid_request", "error_description": "Identity not found"})),
			facts: managed,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: the managed-identity endpoint answered HTTP 400 Bad Request (Identity not found): managed identity 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b is not assigned to this node. Fix: assign the identity to the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set> --identities <resource id of the identity with client ID 2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b>), or use workload identity`,
		},
		{
			name:  "no system-assigned identity",
			err:   msiErr(400, map[string]any{"statusCode": 400, "message": "Unable to load the proper Managed Identity."}),
			facts: system,
			want:  `kvinject-agent: cannot read secrets from vault myvault: the managed-identity endpoint answered HTTP 400 Bad Request (Unable to load the proper Managed Identity.): the node has no system-assigned managed identity. Fix: enable the system-assigned identity of the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set>), or use workload identity or a user-assigned identity (kvinject.dev/identity)`,
		},
		{
			name:  "no system-assigned identity (IMDS)",
			err:   errors.New(`ManagedIdentityCredential: failed to authenticate a system assigned identity. The endpoint responded with {"error":"invalid_request","error_description":"Identity not found"}`),
			facts: system,
			want:  `kvinject-agent: cannot read secrets from vault myvault: the node has no system-assigned managed identity (failed to authenticate a system assigned identity. The endpoint responded with {"error":"invalid_request","error_description":"Identity not found"}). Fix: enable the system-assigned identity of the node pool's scale set (az vmss identity assign --resource-group <node resource group> --name <scale set>), or use workload identity or a user-assigned identity (kvinject.dev/identity)`,
		},
		{
			name: "throttled, given up",
			err: &GiveUpError{After: 2*time.Minute + 300*time.Millisecond, Attempts: 9, Err: secretErr("", kvErr(429, "Throttled",
				"Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached", "", map[string]string{"Retry-After": "5"}))},
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault, still failing after 2m0s (9 attempts): HTTP 429 Too Many Requests, Key Vault error Throttled: the vault is throttling reads (Key Vault allows 4,000 secret reads per 10 seconds per vault). Fix: spread pod start-ups, lengthen kvinject.dev/rotation, or spread the secrets over more vaults`,
		},
		{
			name:  "unavailable, given up",
			err:   &GiveUpError{After: 2 * time.Minute, Attempts: 12, Err: secretErr("", kvErr(503, "ServiceUnavailable", "The service is temporarily unavailable. Please retry later.", "", nil))},
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault, still failing after 2m0s (12 attempts): HTTP 503 Service Unavailable, Key Vault error ServiceUnavailable: Key Vault is unavailable. Fix: this is usually temporary; check https://azure.status.microsoft/ and the vault's region, and recreate the pod if it persists`,
		},
		{
			name: "TLS verification",
			err: secretErr("", &url.Error{Op: "Get", URL: exVault + "secrets/API-KEY/?api-version=2026-04-01",
				Err: &x509.UnknownAuthorityError{}}),
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault: TLS verification of myvault.vault.azure.net failed (x509: certificate signed by unknown authority). Fix: a proxy or firewall may intercept TLS to myvault.vault.azure.net; allow direct HTTPS from the pod to myvault.vault.azure.net`,
		},
		{
			name: "vault does not resolve",
			err: &GiveUpError{After: time.Second, Attempts: 1, Err: secretErr("", &url.Error{Op: "Get", URL: exVault + "secrets/API-KEY/",
				Err: &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "myvault.vault.azure.net", IsNotFound: true}}})},
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault, still failing after 1s (1 attempts): the vault's host myvault.vault.azure.net does not resolve. Fix: check the vault name in kvinject.dev/vault (az keyvault show --name myvault); for a private endpoint, link the privatelink.vaultcore.azure.net DNS zone to the cluster's virtual network`,
		},
		{
			name: "connection refused",
			err: &GiveUpError{After: 2 * time.Minute, Attempts: 10, Err: secretErr("", &url.Error{Op: "Get", URL: exVault + "secrets/API-KEY/",
				Err: &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}})},
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault, still failing after 2m0s (10 attempts): cannot connect to myvault.vault.azure.net (connection refused). Fix: allow egress from the pod to myvault.vault.azure.net:443 in network policies, NSGs and firewalls`,
		},
		{
			name:  "token endpoint unreachable",
			err:   &GiveUpError{After: 2 * time.Minute, Attempts: 10, Err: secretErr("", &azidentity.AuthenticationFailedError{})},
			facts: workload,
			want:  `kvinject-agent: cannot read secret "API-KEY" from vault myvault, still failing after 2m0s (10 attempts): cannot get a token from Azure AD at login.microsoftonline.com. Fix: allow egress from the pod to login.microsoftonline.com:443 in network policies, NSGs and firewalls`,
		},
		{
			name:  "configuration",
			err:   &ConfigError{Msg: "workload identity needs AZURE_FEDERATED_TOKEN_FILE"},
			facts: workload,
			want:  `kvinject-agent: workload identity needs AZURE_FEDERATED_TOKEN_FILE`,
		},
		{
			name:  "stopped",
			err:   fmt.Errorf("%w (%v)", ErrStopped, context.Canceled),
			facts: workload,
			want:  `kvinject-agent: stopped before the first set was written (context canceled)`,
		},
		{
			name:  "unknown",
			err:   errors.New("something odd\nwith a second line"),
			facts: workload,
			want:  `kvinject-agent: cannot read secrets from vault myvault: something odd`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Explain(tc.err, tc.facts)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Explain (-want +got):\n%s\ngot: %s", diff, got)
			}
			if len(got) > MaxMessage {
				t.Errorf("message is %d bytes, over %d", len(got), MaxMessage)
			}
		})
	}
}

func TestExplainTruncates(t *testing.T) {
	long := strings.Repeat("é", 5000)
	got := Explain(&ConfigError{Msg: long}, Facts{})
	if len(got) > MaxMessage || !strings.HasSuffix(got, "...") {
		t.Fatalf("message of %d bytes, suffix %q", len(got), got[len(got)-5:])
	}
	if !strings.HasPrefix(got, "kvinject-agent: éé") || !utf8Valid(got) {
		t.Fatal("truncation broke the text")
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// TestReason checks that Reason says what Explain says, without its head.
func TestReason(t *testing.T) {
	facts := Facts{VaultURL: exVault, Identity: agentconfig.IdentityWorkload, ClientID: exClient, TenantID: exTenant}
	notFound := secretErr("", kvErr(404, "SecretNotFound", "A secret with (name/id) API-KEY was not found in this key vault.", "", nil))
	disabled := secretErr("", kvErr(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled", nil))
	for _, tc := range []struct {
		name               string
		err                error
		why, fix           string
		notFound, disabled bool
	}{
		{name: "nil"},
		{
			name: "config error is split at its fix",
			err:  &ConfigError{Msg: "workload identity needs AZURE_CLIENT_ID in the agent's environment. Fix: annotate the ServiceAccount"},
			why:  "workload identity needs AZURE_CLIENT_ID in the agent's environment",
			fix:  "annotate the ServiceAccount",
		},
		{
			name:     "not found",
			err:      notFound,
			why:      `HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no secret named "API-KEY" (or it was deleted)`,
			fix:      `check the name in kvinject.dev/secrets; list the vault's secrets with az keyvault secret list --vault-name myvault --query "[].name"`,
			notFound: true,
		},
		{
			name:     "disabled, after retries",
			err:      &GiveUpError{After: time.Minute, Attempts: 3, Err: disabled},
			why:      "HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): the secret's current version is disabled",
			fix:      "enable it (az keyvault secret list-versions --vault-name myvault --name API-KEY shows it; az keyvault secret set-attributes --vault-name myvault --name API-KEY --version <version> --enabled true), set a new value, or pin an enabled version in kvinject.dev/secrets (<file>=API-KEY@<version>)",
			disabled: true,
		},
		{
			name: "other 403",
			err:  secretErr("", kvErr(403, "Forbidden", "Caller is not authorized", "ForbiddenByFirewall", nil)),
			why:  "HTTP 403 Forbidden, Key Vault error Forbidden (inner error ForbiddenByFirewall): the vault's firewall does not admit the pod's address",
			fix:  "allow the cluster's egress IP or the nodes' subnet in the vault's network rules (az keyvault network-rule add --name myvault --ip-address <cluster egress IP>, or --subnet <subnet resource id>), or reach the vault through a private endpoint",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			why, fix := Reason(tc.err, facts)
			if why != tc.why || fix != tc.fix {
				t.Errorf("Reason:\n got why %q\n     fix %q\nwant why %q\n     fix %q", why, fix, tc.why, tc.fix)
			}
			if tc.err != nil && !strings.Contains(Explain(tc.err, facts), why) {
				t.Errorf("Explain does not say %q: %s", why, Explain(tc.err, facts))
			}
			if got := IsSecretNotFound(tc.err); got != tc.notFound {
				t.Errorf("IsSecretNotFound = %v, want %v", got, tc.notFound)
			}
			if got := IsSecretDisabled(tc.err); got != tc.disabled {
				t.Errorf("IsSecretDisabled = %v, want %v", got, tc.disabled)
			}
		})
	}
}
