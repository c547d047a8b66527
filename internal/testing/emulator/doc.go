// Package emulator is a local, in-memory emulator of Azure Key Vault (secrets, and reads
// of certificates and keys) and the parts of Azure AD (Microsoft Entra ID) that a Key
// Vault client needs: OpenID discovery, the client-credentials token endpoint with
// federated (workload identity) assertions, and an App Service style managed-identity
// endpoint.
//
// It is test-only (hence internal/testing): the tests, `make demo`, the benchmarks and
// the standalone cmd/kvemulator use it; no shipped binary links it.
//
// It speaks the real REST protocols over HTTPS, so the unmodified Azure SDK for Go
// (azidentity, azsecrets, azcertificates and azkeys) works against it with production settings: challenge
// resource verification on and instance discovery on.
//
// # How clients reach it
//
// The emulator serves one TLS listener on 127.0.0.1 and routes every request by its Host
// header. Its serving certificate is signed by a CA generated in memory at start-up and
// names 127.0.0.1, localhost, *.vault.azure.net, *.vault.usgovcloudapi.net,
// *.vault.azure.cn and the Azure AD hosts of the three clouds. A client keeps the real URLs
// (https://myvault.vault.azure.net/, https://login.microsoftonline.com/) and only
// overrides dialing, so that connections for those names go to the emulator:
// [Emulator.DialContext] does that, and [Emulator.Transport] returns a ready
// *http.Transport that also trusts only the emulator's CA and negotiates HTTP/2.
//
//	e, _ := emulator.Start(emulator.Options{})
//	defer e.Close()
//	e.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: id, TenantID: e.TenantID(),
//		Issuer: "https://oidc.example", Subject: "system:serviceaccount:ns:sa"})
//	e.SetSecret("myvault", "db-password", "s3cret")
//	e.Grant("myvault", id, emulator.PermGet)
//	opts := azcore.ClientOptions{Transport: &http.Client{Transport: e.Transport()}}
//
// Requests whose Host is the listener's own address (127.0.0.1:PORT) are served as Azure AD
// too, for clients that use AZURE_AUTHORITY_HOST=https://127.0.0.1:PORT/ with
// DisableInstanceDiscovery, and as the managed-identity endpoint (/msi/token). Paths
// under /_emulator/ on any host are the admin API (see [AdminTokenHeader]).
//
// # Fidelity
//
// Responses, error bodies, status codes and headers follow what Key Vault and Azure AD
// send: the 401 challenge, SecretNotFound, disabled secrets, access-policy, RBAC and
// firewall denials, per-vault throttling with Retry-After, AADSTS70021 for a federated
// credential mismatch and so on. Faults (status codes, connection resets, throttling) and
// latency can be injected. Secret values, access tokens and assertions are never logged.
// Listings are paged in id order, not time order, and timestamps have whole seconds, as
// in Key Vault; [Emulator.UpdateSecret] changes a version's properties (tags, enabled)
// without a new version. [Emulator.ValueReads] and [Emulator.ListRequests] count the
// requests of one identity, so a test can prove that an identity never read a value.
//
// # Certificates and keys
//
// [Emulator.ImportCertificate] imports a certificate as Key Vault does: a certificate,
// a secret and a key of the same name and version. The secret (managed, with a kid)
// holds the certificate and its private key as base64 PKCS#12 with an empty password,
// or as PEM ([WithPEMContentType]); GET /certificates/{name} returns the leaf (cer),
// the ids and the policy, GET /keys/{name} the public JWK. [Emulator.SetKey] adds a key
// of its own. [NewTestChain] makes a CA, intermediate and leaf for tests.
// GET /certificates, /certificates/{name}/versions, /keys and /keys/{name}/versions
// list properties only (certificates with their thumbprint x5t), paged and in id order
// like the secrets' listings; they need the list permission of their kind in an access
// policy vault ([PermCertificatesList], [PermKeysList]) and the read action in an RBAC
// vault ([PermCertificatesGet], [PermKeysGet]: RBAC has no list-only action for them),
// and count as list requests, not value reads.
package emulator
