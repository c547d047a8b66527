// Package mapping turns what users write on pods, namespaces and ServiceAccounts
// (labels and annotations under kvinject.dev/) into a resolved Spec: which vault,
// which secrets, which files, which identity. The parts the agent shares (the entry
// grammar, the agent's command line and environment, identity kinds, clouds) are in
// package agentconfig, which has no Kubernetes in it.
//
// The package is pure: no I/O, no clocks, no Kubernetes client. Callers look up the
// Namespace and ServiceAccount and pass them in.
package mapping

// Prefix is the annotation and label prefix that kvinject owns.
const Prefix = "kvinject.dev/"

// LabelInject is the opt-in pod label; the webhook configuration selects on it.
const LabelInject = Prefix + "inject"

// LabelInjectValue is the value of LabelInject that opts a pod in.
const LabelInjectValue = "true"

// Pod annotations (the first four may also be set on a Namespace as defaults).
const (
	// AnnotationVault names the vault: "myvault" or "https://myvault.vault.azure.net/".
	AnnotationVault = Prefix + "vault"
	// AnnotationIdentity chooses the Azure identity: workload, managed, managed:<client-id> or system.
	AnnotationIdentity = Prefix + "identity"
	// AnnotationTenantID is the Azure AD tenant of the identity.
	AnnotationTenantID = Prefix + "tenant-id"
	// AnnotationCloud is the Azure cloud: AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud.
	AnnotationCloud = Prefix + "cloud"
	// AnnotationSecrets is the mapping of files to Key Vault objects: "<file>=[<kind>:]<name>[@<version>][;<option>...], ..." (see agentconfig.Entry).
	AnnotationSecrets = Prefix + "secrets"
	// AnnotationMountPath is where the app containers see the files (default /app/secrets).
	AnnotationMountPath = Prefix + "mount-path"
	// AnnotationContainers lists the containers that get the mount (default: every regular container).
	AnnotationContainers = Prefix + "containers"
	// AnnotationFileMode is the octal mode of the files (default 0440 with fsGroup, else 0444).
	AnnotationFileMode = Prefix + "file-mode"
	// AnnotationRotation is "off" or the polling interval, at least 30s (default 2m).
	AnnotationRotation = Prefix + "rotation"
	// AnnotationOnChange is what the rotating agent does after it swaps in a new
	// set: "http:<port><path>[;<option>...]" or "restart" (see agentconfig.OnChange).
	AnnotationOnChange = Prefix + "on-change"
	// AnnotationAgentCPURequest overrides the agent's CPU request.
	AnnotationAgentCPURequest = Prefix + "agent-cpu-request"
	// AnnotationAgentMemoryRequest overrides the agent's memory request.
	AnnotationAgentMemoryRequest = Prefix + "agent-memory-request"
	// AnnotationAgentCPULimit overrides the agent's CPU limit.
	AnnotationAgentCPULimit = Prefix + "agent-cpu-limit"
	// AnnotationAgentMemoryLimit overrides the agent's memory limit.
	AnnotationAgentMemoryLimit = Prefix + "agent-memory-limit"
	// AnnotationTemplatePrefix followed by a file name is a template of that
	// file, rendered from the entries (see agentconfig.Template).
	AnnotationTemplatePrefix = Prefix + "template."
	// AnnotationTemplateModePrefix followed by a template's file name is the
	// octal mode of the rendered file (default: the mapping's file mode).
	AnnotationTemplateModePrefix = Prefix + "template-mode."
	// AnnotationStatus is written by the webhook ("injected"); users do not set it.
	AnnotationStatus = Prefix + "status"
	// AnnotationRestartedAt is written by the restart controller on a
	// workload's pod template (RFC 3339) to roll its pods, as kubectl rollout
	// restart writes kubectl.kubernetes.io/restartedAt; users do not set it.
	AnnotationRestartedAt = Prefix + "restarted-at"
)

// StatusInjected is the value of AnnotationStatus on an injected pod.
const StatusInjected = "injected"

// ServiceAccount annotations of the azure-workload-identity contract.
const (
	// AnnotationWIClientID is the client ID of the identity federated with the ServiceAccount.
	AnnotationWIClientID = "azure.workload.identity/client-id"
	// AnnotationWITenantID is the tenant of that identity.
	AnnotationWITenantID = "azure.workload.identity/tenant-id"
)

// Container names reserved for kvinject's agent; a pod may not use them.
const (
	// AgentContainerName is the agent: a native sidecar, an init container, or a regular sidecar.
	AgentContainerName = "kvinject-agent"
	// AgentInitContainerName is the init-mode agent used beside a regular (non-native) sidecar.
	AgentInitContainerName = "kvinject-agent-init"
)

// IsAgentContainer reports whether name is one of the agent's reserved container names.
func IsAgentContainer(name string) bool {
	return name == AgentContainerName || name == AgentInitContainerName
}

// podKeys are the annotation keys a pod may carry, in the order docs/contract.md lists them.
var podKeys = []string{
	AnnotationVault, AnnotationSecrets, AnnotationSecretProviderClass, AnnotationMountPath, AnnotationContainers,
	AnnotationFileMode, AnnotationRotation, AnnotationOnChange, AnnotationIdentity, AnnotationTenantID,
	AnnotationCloud, AnnotationAgentCPURequest, AnnotationAgentMemoryRequest,
	AnnotationAgentCPULimit, AnnotationAgentMemoryLimit, AnnotationStatus, AnnotationRestartedAt,
}

// namespaceKeys are the annotation keys a Namespace may carry as defaults.
var namespaceKeys = []string{AnnotationVault, AnnotationIdentity, AnnotationTenantID, AnnotationCloud}

// PodAnnotationKeys returns the annotation keys a pod may carry.
func PodAnnotationKeys() []string { return append([]string(nil), podKeys...) }

// podKeyPrefixes are the prefixes of annotation keys a pod may carry, each
// followed by a file name.
var podKeyPrefixes = []string{AnnotationTemplatePrefix, AnnotationTemplateModePrefix}

// PodAnnotationKeyPrefixes returns the prefixes of the annotation keys a pod
// may carry followed by a name (kvinject.dev/template.<file>).
func PodAnnotationKeyPrefixes() []string { return append([]string(nil), podKeyPrefixes...) }
