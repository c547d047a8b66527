package mapping

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// AnnotationSecretProviderClass names a SecretProviderClass (secrets-store.csi.x-k8s.io/v1,
// provider azure) in the pod's namespace whose vault, identity and objects stand in for
// the kvinject.dev/vault, identity, tenant-id, cloud and secrets annotations.
const AnnotationSecretProviderClass = Prefix + "secret-provider-class"

// SecretProviderClass is what kvinject reads of a SecretProviderClass: its name, the
// spec's provider and parameters, and the names of the other spec fields it has.
type SecretProviderClass struct {
	Namespace, Name string
	Provider        string
	Parameters      map[string]string
	// SecretObjects is the number of spec.secretObjects (Kubernetes Secrets the CSI
	// driver would sync).
	SecretObjects int
	// OtherFields are the spec's fields other than provider, parameters and secretObjects.
	OtherFields []string
}

// The Azure provider's parameters (secrets-store-csi-driver-provider-azure).
const (
	spcKeyvaultName           = "keyvaultName"
	spcTenantID               = "tenantId"
	spcTenantIDAlt            = "tenantID"
	spcCloudName              = "cloudName"
	spcCloudEnvFileName       = "cloudEnvFileName"
	spcUsePodIdentity         = "usePodIdentity"
	spcUseVMManagedIdentity   = "useVMManagedIdentity"
	spcUserAssignedIdentityID = "userAssignedIdentityID"
	spcClientID               = "clientID"
	spcObjects                = "objects"
	// Parameters of old provider versions that the provider ignores.
	spcResourceGroup  = "resourceGroup"
	spcSubscriptionID = "subscriptionId"
)

// spcObject is one entry of the objects parameter.
type spcObject struct {
	ObjectName           string `json:"objectName"`
	ObjectAlias          string `json:"objectAlias"`
	ObjectVersion        string `json:"objectVersion"`
	ObjectVersionHistory int    `json:"objectVersionHistory"`
	ObjectType           string `json:"objectType"`
	ObjectFormat         string `json:"objectFormat"`
	ObjectEncoding       string `json:"objectEncoding"`
	FilePermission       string `json:"filePermission"`
}

// ApplySecretProviderClass returns copies of the pod and its ServiceAccount with spc
// written as the annotations kvinject reads: kvinject.dev/vault, tenant-id, cloud,
// identity and secrets on the pod and, for workload identity with the class's
// clientID, azure.workload.identity/client-id on the ServiceAccount (the class's
// client ID wins over the ServiceAccount's, as with the CSI driver). The pod must
// not also set those annotations. Anything of the class that kvinject does not
// support is an error naming the field and the fix; parameters the Azure provider
// itself ignores give warnings.
func ApplySecretProviderClass(pod *corev1.Pod, sa *corev1.ServiceAccount, spc SecretProviderClass) (*corev1.Pod, *corev1.ServiceAccount, []string, error) {
	ref := fmt.Sprintf("SecretProviderClass %s/%s", spc.Namespace, spc.Name)
	var probs problems
	var warnings []string
	field := func(f string) string { return ref + ": " + f }

	if !strings.EqualFold(spc.Provider, "azure") {
		probs.add(field("spec.provider"), "is %q: kvinject reads only the Azure provider's classes (provider: azure)", spc.Provider)
		return nil, nil, nil, &agentconfig.InvalidError{Problems: probs}
	}
	if spc.SecretObjects > 0 {
		probs.add(field("spec.secretObjects"), "kvinject writes files only and does not sync Kubernetes Secrets: remove secretObjects (read the files instead), or keep this pod on the CSI driver")
	}
	for _, f := range spc.OtherFields {
		probs.add(field("spec."+f), "is not a SecretProviderClass field kvinject knows; remove it")
	}
	p := spc.Parameters
	known := []string{spcKeyvaultName, spcTenantID, spcTenantIDAlt, spcCloudName, spcCloudEnvFileName, spcUsePodIdentity,
		spcUseVMManagedIdentity, spcUserAssignedIdentityID, spcClientID, spcObjects, spcResourceGroup, spcSubscriptionID}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case !slices.Contains(known, k):
			probs.add(field("spec.parameters."+k), "is not a parameter kvinject supports (it reads %s); remove it", strings.Join(known[:10], ", "))
		case (k == spcResourceGroup || k == spcSubscriptionID) && p[k] != "":
			warnings = append(warnings, fmt.Sprintf("%s: spec.parameters.%s is ignored, as the Azure provider ignores it", ref, k))
		}
	}

	ann := map[string]string{}
	vault := strings.TrimSpace(p[spcKeyvaultName])
	if vault == "" {
		probs.add(field("spec.parameters.keyvaultName"), "is empty: name the vault")
	} else {
		ann[AnnotationVault] = vault
	}
	tenant := strings.TrimSpace(firstNonEmpty(p[spcTenantID], p[spcTenantIDAlt]))
	if tenant != "" {
		ann[AnnotationTenantID] = tenant
	}
	if c := strings.TrimSpace(p[spcCloudName]); c != "" {
		if strings.EqualFold(c, "AzureStackCloud") || strings.TrimSpace(p[spcCloudEnvFileName]) != "" {
			probs.add(field("spec.parameters.cloudName"), "%q: kvinject does not support Azure Stack (cloudEnvFileName); use AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud", c)
		} else {
			ann[AnnotationCloud] = c
		}
	}

	var clientID string
	podIdentity, err1 := spcBool(p[spcUsePodIdentity])
	vmIdentity, err2 := spcBool(p[spcUseVMManagedIdentity])
	if err1 != nil {
		probs.add(field("spec.parameters.usePodIdentity"), "%v", err1)
	}
	if err2 != nil {
		probs.add(field("spec.parameters.useVMManagedIdentity"), "%v", err2)
	}
	wiClient := strings.TrimSpace(p[spcClientID])
	uaID := strings.TrimSpace(p[spcUserAssignedIdentityID])
	switch {
	case podIdentity:
		probs.add(field("spec.parameters.usePodIdentity"), "pod-managed identity (aad-pod-identity) is deprecated and not supported: federate the identity with the pod's ServiceAccount and set clientID (workload identity)")
	case vmIdentity && wiClient != "":
		probs.add(field("spec.parameters"), "both useVMManagedIdentity and clientID are set: keep clientID for workload identity, or useVMManagedIdentity (with userAssignedIdentityID) for a managed identity")
	case wiClient != "":
		if !agentconfig.IsGUID(wiClient) {
			probs.add(field("spec.parameters.clientID"), "%q must be a GUID like 00000000-0000-0000-0000-000000000000", wiClient)
		}
		ann[AnnotationIdentity] = string(agentconfig.IdentityWorkload)
		clientID = strings.ToLower(wiClient)
	case vmIdentity && uaID != "":
		ann[AnnotationIdentity] = string(agentconfig.IdentityManaged) + ":" + uaID
	case vmIdentity:
		ann[AnnotationIdentity] = string(agentconfig.IdentitySystem)
	default:
		probs.add(field("spec.parameters"), "no identity: kvinject needs workload identity (clientID) or a managed identity (useVMManagedIdentity: \"true\", with userAssignedIdentityID for a user-assigned one); service principal secrets (nodePublishSecretRef) are not supported")
	}

	entries, objProbs := spcEntries(p[spcObjects])
	for _, pr := range objProbs {
		probs = append(probs, ref+": spec.parameters.objects"+pr)
	}
	if len(objProbs) == 0 {
		s := make([]string, len(entries))
		for i, e := range entries {
			s[i] = e.String()
		}
		ann[AnnotationSecrets] = strings.Join(s, ",")
	}

	for _, k := range []string{AnnotationVault, AnnotationSecrets, AnnotationIdentity, AnnotationTenantID, AnnotationCloud} {
		if _, set := pod.Annotations[k]; set {
			probs.add(k, "is set together with %s: the class provides it; remove one of them", AnnotationSecretProviderClass)
		}
	}
	if len(probs) > 0 {
		return nil, nil, warnings, &agentconfig.InvalidError{Problems: probs}
	}

	pod = pod.DeepCopy()
	for k, v := range ann {
		pod.Annotations[k] = v
	}
	if clientID != "" {
		if sa == nil {
			sa = &corev1.ServiceAccount{}
		} else {
			sa = sa.DeepCopy()
		}
		if sa.Annotations == nil {
			sa.Annotations = map[string]string{}
		}
		sa.Annotations[AnnotationWIClientID] = clientID
	}
	return pod, sa, warnings, nil
}

// spcBool parses the provider's boolean parameters ("true", "false", empty).
func spcBool(s string) (bool, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%q is not \"true\" or \"false\"", s)
	}
	return b, nil
}

// spcEntries converts the objects parameter ("array:" of YAML documents, one per
// object) into entries. Problems start with the object's position, e.g. "[2].objectType: ...".
func spcEntries(raw string) ([]agentconfig.Entry, []string) {
	if strings.TrimSpace(raw) == "" {
		return nil, []string{": is empty: list the objects to write under array:"}
	}
	var arr struct {
		Array []string `json:"array"`
	}
	if err := yaml.UnmarshalStrict([]byte(raw), &arr); err != nil {
		return nil, []string{fmt.Sprintf(": is not the provider's format (array: a list of objects, each a YAML string): %v", err)}
	}
	if len(arr.Array) == 0 {
		return nil, []string{".array: is empty: list the objects to write"}
	}
	var (
		entries []agentconfig.Entry
		probs   []string
	)
	for i, doc := range arr.Array {
		at := fmt.Sprintf("[%d]", i)
		var o spcObject
		if err := yaml.UnmarshalStrict([]byte(doc), &o); err != nil {
			probs = append(probs, fmt.Sprintf("%s: %v (kvinject reads objectName, objectAlias, objectType, objectVersion, objectVersionHistory, objectFormat, objectEncoding and filePermission)", at, err))
			continue
		}
		e, ps := spcEntry(o)
		for _, p := range ps {
			probs = append(probs, at+"."+p)
		}
		if len(ps) == 0 {
			entries = append(entries, e)
		}
	}
	if len(probs) > 0 {
		return nil, probs
	}
	// The same checks as for the annotation: files unique and not nested.
	s := make([]string, len(entries))
	for i, e := range entries {
		s[i] = e.String()
	}
	if _, err := agentconfig.ParseEntries(strings.Join(s, ",")); err != nil {
		return nil, []string{": " + err.Error()}
	}
	return entries, nil
}

// spcEntry converts one object, with the Azure provider's semantics.
func spcEntry(o spcObject) (agentconfig.Entry, []string) {
	var probs []string
	bad := func(f, format string, args ...any) { probs = append(probs, f+": "+fmt.Sprintf(format, args...)) }
	name := strings.TrimSpace(o.ObjectName)
	e := agentconfig.Entry{Name: name, File: firstNonEmpty(strings.TrimSpace(o.ObjectAlias), name), Version: strings.ToLower(strings.TrimSpace(o.ObjectVersion))}
	if !agentconfig.IsObjectName(name) {
		bad("objectName", "%q must be 1-127 letters, digits or hyphens", o.ObjectName)
	}
	if e.Version != "" && !agentconfig.IsVersion(e.Version) {
		bad("objectVersion", "%q must be 32 hexadecimal characters, or empty for the latest", o.ObjectVersion)
	}
	if err := agentconfig.ValidateFile(e.File); err != nil {
		bad("objectAlias", "%v", err)
	}
	typ := strings.ToLower(strings.TrimSpace(o.ObjectType))
	format := strings.ToLower(strings.TrimSpace(o.ObjectFormat))
	encoding := strings.ToLower(strings.TrimSpace(o.ObjectEncoding))
	switch typ {
	case "secret":
		e.Type = agentconfig.ObjectSecret
	case "cert":
		e.Type = agentconfig.ObjectCert
	case "key":
		e.Type = agentconfig.ObjectKey
	default:
		bad("objectType", "%q: use secret, key or cert", o.ObjectType)
	}
	switch format {
	case "", "pem":
		if typ == "secret" {
			// The provider's default: a certificate-backed secret as PEM, any other as stored.
			e.Format = agentconfig.FormatAuto
		}
	case "pfx":
		if typ != "secret" {
			bad("objectFormat", "pfx applies to objectType secret only")
		}
		// The value as stored (base64 PKCS#12); with objectEncoding base64, its bytes.
	default:
		bad("objectFormat", "%q: use pem or pfx", o.ObjectFormat)
	}
	switch encoding {
	case "", "utf-8":
	case "base64":
		e.Encoding = agentconfig.EncodingBase64
	case "hex":
		e.Encoding = agentconfig.EncodingHex
	default:
		bad("objectEncoding", "%q: use utf-8, base64 or hex", o.ObjectEncoding)
	}
	if e.Encoding != "" && typ != "secret" {
		bad("objectEncoding", "applies to objectType secret only")
	}
	if e.Encoding != "" && e.Format == agentconfig.FormatAuto {
		// Decoding applies to the value as stored.
		e.Format = ""
	}
	switch {
	case o.ObjectVersionHistory < 0:
		bad("objectVersionHistory", "%d must not be negative", o.ObjectVersionHistory)
	case o.ObjectVersionHistory > 1 && typ != "secret":
		bad("objectVersionHistory", "kvinject keeps the version history of objectType secret only; for a certificate's versions use objectType secret with the certificate's name")
	case o.ObjectVersionHistory > agentconfig.MaxHistory:
		bad("objectVersionHistory", "%d is more than kvinject's limit of %d versions", o.ObjectVersionHistory, agentconfig.MaxHistory)
	case o.ObjectVersionHistory > 1 && e.Version != "":
		bad("objectVersionHistory", "cannot be combined with objectVersion: history starts at the latest version")
	case o.ObjectVersionHistory > 1:
		// As with the provider: more than one version makes <alias>/0 (newest) .. <alias>/<N-1>.
		e.History = o.ObjectVersionHistory
	}
	if fp := strings.TrimSpace(o.FilePermission); fp != "" {
		m, err := agentconfig.ParseFileMode(fp)
		if err != nil {
			bad("filePermission", "%v", err)
		}
		e.Mode = m
	}
	return e, probs
}
