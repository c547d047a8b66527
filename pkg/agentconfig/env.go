package agentconfig

// Environment variables of the agent container. The webhook sets the first seven, and the two hub ones with --hub
// (the first four are azidentity's own contract, the next three come from the
// downward API); the agent and its doctor read them. The test-only ones are never
// set by the webhook.
const (
	// EnvClientID is the identity's client ID (workload and user-assigned managed identity).
	EnvClientID = "AZURE_CLIENT_ID"
	// EnvTenantID is the identity's tenant (workload identity).
	EnvTenantID = "AZURE_TENANT_ID"
	// EnvAuthorityHost is the cloud's Azure AD, e.g. https://login.microsoftonline.com/.
	EnvAuthorityHost = "AZURE_AUTHORITY_HOST"
	// EnvTokenFile is the projected service account token (workload identity).
	EnvTokenFile = "AZURE_FEDERATED_TOKEN_FILE"
	// EnvPodName is the pod's name (downward API: FieldPodName), for audit logs.
	EnvPodName = "POD_NAME"
	// EnvPodNamespace is the pod's namespace (downward API: FieldPodNamespace), for
	// audit logs and messages.
	EnvPodNamespace = "POD_NAMESPACE"
	// EnvServiceAccount is the pod's ServiceAccount (downward API:
	// FieldServiceAccount), for messages.
	EnvServiceAccount = EnvPrefix + "SERVICE_ACCOUNT"
	// EnvHubTokenFile is the projected ServiceAccount token (audience
	// hubapi.Audience) the agent presents to the version hub; set with --hub.
	EnvHubTokenFile = EnvPrefix + "HUB_TOKEN_FILE"
	// EnvHubCA holds the PEM roots the agent trusts for the hub's serving
	// certificate (the webhook's --hub-ca-file); set with --hub.
	EnvHubCA = EnvPrefix + "HUB_CA"
	// EnvTestCAFile names a PEM file; when set, the agent trusts only those
	// roots. For tests against a local emulator only.
	EnvTestCAFile = EnvPrefix + "TEST_CA_FILE"
	// EnvTestResolve overrides dialing, "host=ip:port,*.suffix=ip:port,...",
	// keeping the real host names for TLS and Key Vault's challenge. For tests
	// against a local emulator only.
	EnvTestResolve = EnvPrefix + "TEST_RESOLVE"
)

// EnvPrefix starts the name of every variable that configures the agent and is
// not azidentity's or the downward API's: an agent container that carries one the
// webhook did not set is not the webhook's.
const EnvPrefix = "KVINJECT_"

// The pod fields that the webhook passes through the downward API.
const (
	// FieldPodName is the field path of EnvPodName.
	FieldPodName = "metadata.name"
	// FieldPodNamespace is the field path of EnvPodNamespace.
	FieldPodNamespace = "metadata.namespace"
	// FieldServiceAccount is the field path of EnvServiceAccount.
	FieldServiceAccount = "spec.serviceAccountName"
)

// The pod annotations that the agent's and the doctor's messages name. Package
// mapping defines every annotation; its AnnotationSecrets, AnnotationCloud and
// AnnotationOnChange equal these (its tests hold them equal).
const (
	// AnnotationSecrets is the mapping of files to Key Vault objects.
	AnnotationSecrets = "kvinject.dev/secrets"
	// AnnotationCloud chooses the Azure cloud.
	AnnotationCloud = "kvinject.dev/cloud"
	// AnnotationOnChange is the action after each new set (--on-change).
	AnnotationOnChange = "kvinject.dev/on-change"
)
