package mapping

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"

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

// The Azure provider's parameters (secrets-store-csi-driver-provider-azure,
// pkg/provider/types). Every value is read with strings.TrimSpace, as the provider does.
const (
	spcKeyvaultName           = "keyvaultName"
	spcTenantID               = "tenantID" // wins over tenantId, as with the provider
	spcTenantIDDeprecated     = "tenantId"
	spcCloudName              = "cloudName"
	spcCloudEnvFileName       = "cloudEnvFileName"
	spcUsePodIdentity         = "usePodIdentity"
	spcUseVMManagedIdentity   = "useVMManagedIdentity"
	spcUserAssignedIdentityID = "userAssignedIdentityID"
	spcClientID               = "clientID"
	spcUseAzureTokenProxy     = "useAzureTokenProxy"
	spcObjects                = "objects"
	// Parameters of old provider versions that the provider ignores.
	spcResourceGroup  = "resourceGroup"
	spcSubscriptionID = "subscriptionId"
)

// spcKnownParameters are the parameters kvinject reads, in the order messages list them.
var spcKnownParameters = []string{spcKeyvaultName, spcTenantID, spcTenantIDDeprecated, spcCloudName, spcCloudEnvFileName,
	spcUsePodIdentity, spcUseVMManagedIdentity, spcUserAssignedIdentityID, spcClientID, spcUseAzureTokenProxy, spcObjects}

// spcObject is one entry of the objects parameter, decoded as the provider decodes
// its KeyVaultObject: with gopkg.in/yaml.v3, so a string field keeps the text of
// its scalar (filePermission: 0644 is "0644", objectName: 0123 is "0123", yes is
// "yes") and objectVersionHistory is an int32 (yaml.v3's integers: 010 is 8, 0x10
// is 16, 3.5 is 3; a quoted "3" is an error).
type spcObject struct {
	ObjectName           string `yaml:"objectName"`
	ObjectAlias          string `yaml:"objectAlias"`
	ObjectVersion        string `yaml:"objectVersion"`
	ObjectVersionHistory int32  `yaml:"objectVersionHistory"`
	ObjectType           string `yaml:"objectType"`
	ObjectFormat         string `yaml:"objectFormat"`
	ObjectEncoding       string `yaml:"objectEncoding"`
	FilePermission       string `yaml:"filePermission"`
}

// spcObjectFields are spcObject's keys.
var spcObjectFields = []string{"objectName", "objectAlias", "objectType", "objectVersion", "objectVersionHistory", "objectFormat", "objectEncoding", "filePermission"}

// spcObjectArray is the objects parameter: a YAML document whose array holds one YAML
// document (a string, usually a "|" block) per object.
type spcObjectArray struct {
	Array []string `yaml:"array"`
}

// ApplySecretProviderClass returns copies of the pod and its ServiceAccount with spc
// written as the annotations kvinject reads: kvinject.dev/vault, tenant-id, cloud,
// identity and secrets on the pod and, for workload identity with the class's
// clientID, azure.workload.identity/client-id on the ServiceAccount (the class's
// client ID wins over the ServiceAccount's, as with the CSI driver). The class is
// read as the Azure provider reads it. The pod must not also set those
// annotations, nor still have the class's CSI volume. Anything of the class that
// kvinject does not support, or that the provider would not read as written, is an
// error naming the class, the field and the fix, together with the problems of the
// pod's own kvinject annotations; parameters the provider itself ignores give
// warnings.
func ApplySecretProviderClass(pod *corev1.Pod, sa *corev1.ServiceAccount, spc SecretProviderClass) (*corev1.Pod, *corev1.ServiceAccount, []string, error) {
	ref := fmt.Sprintf("SecretProviderClass %s/%s", spc.Namespace, spc.Name)
	var probs problems
	var warnings []string
	field := func(f string) string { return ref + ": " + f }
	param := func(k string) string { return field("spec.parameters." + k) }

	if !strings.EqualFold(spc.Provider, "azure") {
		probs.add(field("spec.provider"), "is %q: kvinject reads only the Azure provider's classes (provider: azure)", spc.Provider)
		return nil, nil, nil, &agentconfig.InvalidError{Problems: probs}
	}
	if spc.SecretObjects > 0 {
		probs.add(field("spec.secretObjects"), "kvinject writes files only and does not sync Kubernetes Secrets; other pods that share this class may read the synced Secrets, so do not remove secretObjects from it: name a copy of the class without secretObjects (e.g. %s-kvinject) in %s and have the app read the files, or keep this pod on the CSI driver", spc.Name, AnnotationSecretProviderClass)
	}
	for _, f := range spc.OtherFields {
		probs.add(field("spec."+f), "is not a SecretProviderClass field kvinject knows; remove it")
	}
	p := make(map[string]string, len(spc.Parameters))
	for k, v := range spc.Parameters {
		p[k] = strings.TrimSpace(v)
	}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case k == spcResourceGroup || k == spcSubscriptionID:
			if p[k] != "" {
				warnings = append(warnings, fmt.Sprintf("%s: spec.parameters.%s is ignored, as the Azure provider ignores it", ref, k))
			}
		case !slices.Contains(spcKnownParameters, k):
			probs.add(param(k), "is not a parameter of the Azure provider that kvinject reads (it reads %s); name a copy of the class without it in %s", strings.Join(spcKnownParameters, ", "), AnnotationSecretProviderClass)
		}
	}

	ann := map[string]string{}
	// The cloud first: the vault's name is checked against it.
	cloud := agentconfig.AzurePublicCloud
	if c := p[spcCloudName]; c != "" || p[spcCloudEnvFileName] != "" {
		switch {
		case strings.EqualFold(c, "AzureStackCloud") || p[spcCloudEnvFileName] != "":
			probs.add(param(spcCloudName), "%q (cloudEnvFileName %q): kvinject does not support Azure Stack; use AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud", c, p[spcCloudEnvFileName])
		case strings.EqualFold(c, "AzureGermanCloud"):
			probs.add(param(spcCloudName), "%q: Microsoft Cloud Germany is closed and kvinject does not support it; use AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud", c)
		default:
			name := c
			// The provider's cloud names (go-autorest) include these two aliases.
			switch {
			case strings.EqualFold(c, "AzureCloud"):
				name = agentconfig.AzurePublicCloud.Name
			case strings.EqualFold(c, "AzureUSGovernment"):
				name = agentconfig.AzureUSGovernmentCloud.Name
			}
			if cl, err := agentconfig.ParseCloud(name); err != nil {
				probs.add(param(spcCloudName), "%v", err)
			} else {
				cloud = cl
				ann[AnnotationCloud] = cl.Name
			}
		}
	}

	switch vault := p[spcKeyvaultName]; {
	case vault == "":
		probs.add(param(spcKeyvaultName), "is empty: name the vault")
	case strings.ContainsAny(vault, "/:"):
		probs.add(param(spcKeyvaultName), "%q: the provider reads a vault name, not a URL; write the name alone (e.g. contoso-shop)", vault)
	default:
		if _, err := agentconfig.VaultURL(vault, cloud); err != nil {
			probs.add(param(spcKeyvaultName), "%v", err)
		} else {
			ann[AnnotationVault] = vault
		}
	}

	tenantKey := spcTenantID
	if p[spcTenantID] == "" {
		tenantKey = spcTenantIDDeprecated
	} else if p[spcTenantIDDeprecated] != "" && p[spcTenantIDDeprecated] != p[spcTenantID] {
		warnings = append(warnings, fmt.Sprintf("%s: spec.parameters.tenantId %q is ignored: tenantID %q wins, as with the Azure provider (tenantId is deprecated)", ref, p[spcTenantIDDeprecated], p[spcTenantID]))
	}
	if tenant := p[tenantKey]; tenant != "" {
		if err := validateTenant(tenant); err != nil {
			probs.add(param(tenantKey), "%v", err)
		} else {
			ann[AnnotationTenantID] = tenant
		}
	}

	clientID, identity := spcIdentity(p, param, &probs, &warnings, ref)
	if identity != "" {
		ann[AnnotationIdentity] = identity
	}

	entries, objProbs, objWarnings := spcEntries(p[spcObjects])
	for _, pr := range objProbs {
		probs = append(probs, param(spcObjects)+pr)
	}
	for _, w := range objWarnings {
		warnings = append(warnings, param(spcObjects)+w)
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

	ofClass, others := FindCSIVolumes(&pod.Spec, spc.Name)
	for _, v := range ofClass {
		probs = append(probs, csiVolumeProblem(pod, ref, v))
	}
	for _, v := range others {
		warnings = append(warnings, fmt.Sprintf("%s: the pod's CSI volume %q of SecretProviderClass %q remains: kvinject does not touch it, and the CSI driver keeps serving it", ref, v.Name, v.Class))
	}
	if len(ofClass) == 0 {
		warnings = append(warnings, containersWarning(pod, ref)...)
	}

	if len(probs) > 0 {
		// Every error at once: the pod's own annotations too, which Resolve would
		// otherwise report only once the class is fixed.
		probs = append(probs, podOnlyProblems(pod)...)
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

// spcIdentity chooses the identity as the provider does: at most one of
// usePodIdentity, useVMManagedIdentity and useAzureTokenProxy; a VM managed
// identity wins over clientID; clientID alone is workload identity. It returns the
// workload identity's client ID (lowercased) and the kvinject.dev/identity value.
func spcIdentity(p map[string]string, param func(string) string, probs *problems, warnings *[]string, ref string) (clientID, identity string) {
	flags := map[string]bool{}
	for _, k := range []string{spcUsePodIdentity, spcUseVMManagedIdentity, spcUseAzureTokenProxy} {
		b, err := spcBool(p[k])
		if err != nil {
			probs.add(param(k), "%v", err)
		}
		flags[k] = b
	}
	wiClient, uaID := p[spcClientID], p[spcUserAssignedIdentityID]
	var on []string
	for _, k := range []string{spcUsePodIdentity, spcUseVMManagedIdentity, spcUseAzureTokenProxy} {
		if flags[k] {
			on = append(on, k)
		}
	}
	switch {
	case len(on) > 1:
		probs.add(ref+": spec.parameters", "%s are all \"true\": the Azure provider refuses more than one identity mode, and so does kvinject; keep one", strings.Join(on, " and "))
	case flags[spcUsePodIdentity]:
		probs.add(param(spcUsePodIdentity), "pod-managed identity (aad-pod-identity) is deprecated and not supported: federate the identity with the pod's ServiceAccount and name a copy of the class with clientID instead (workload identity)")
	case flags[spcUseAzureTokenProxy]:
		probs.add(param(spcUseAzureTokenProxy), "identity binding (the Azure token proxy) is not supported: kvinject signs in with workload identity, which needs a federated identity credential for this pod's ServiceAccount; create one for the identity %s, annotate the ServiceAccount with %s=<client-id> (and %s), and name a copy of the class without useAzureTokenProxy in %s (other pods keep this class)", quoteOr(wiClient, "of clientID"), AnnotationWIClientID, AnnotationWITenantID, AnnotationSecretProviderClass)
	case flags[spcUseVMManagedIdentity]:
		if wiClient != "" {
			*warnings = append(*warnings, fmt.Sprintf("%s: spec.parameters.clientID is ignored because useVMManagedIdentity is \"true\", as with the Azure provider", ref))
		}
		if uaID == "" {
			return "", string(agentconfig.IdentitySystem)
		}
		if !agentconfig.IsGUID(uaID) {
			probs.add(param(spcUserAssignedIdentityID), "%q must be the identity's client ID, a GUID like 00000000-0000-0000-0000-000000000000", uaID)
			return "", ""
		}
		return "", string(agentconfig.IdentityManaged) + ":" + strings.ToLower(uaID)
	case wiClient != "":
		if !agentconfig.IsGUID(wiClient) {
			probs.add(param(spcClientID), "%q must be a GUID like 00000000-0000-0000-0000-000000000000", wiClient)
			return "", ""
		}
		return strings.ToLower(wiClient), string(agentconfig.IdentityWorkload)
	default:
		probs.add(ref+": spec.parameters", "no identity: kvinject needs workload identity (clientID) or a managed identity (useVMManagedIdentity: \"true\", with userAssignedIdentityID for a user-assigned one); service principal secrets (nodePublishSecretRef) are not supported")
	}
	return "", ""
}

func quoteOr(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	return strconv.Quote(s)
}

// spcBool parses the provider's boolean parameters as it does (strconv.ParseBool;
// empty is false).
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

// csiVolumeProblem is the refusal of a pod that still has a CSI volume of the
// class it migrates, with the exact fix: which volume, mounts and Secret
// reference to remove, and the annotations that keep the files where the
// containers read them.
func csiVolumeProblem(pod *corev1.Pod, ref string, v CSIVolume) string {
	var (
		b             strings.Builder
		names         []string
		paths         []string
		byPath        = map[string][]string{}
		subs          []string
		seenContainer = map[string]bool{}
	)
	for _, m := range v.Mounts {
		if !seenContainer[m.Container] {
			seenContainer[m.Container] = true
			names = append(names, m.Container)
		}
		if m.SubPath != "" {
			subs = append(subs, fmt.Sprintf("container %q mounts only %q of it at %s: kvinject mounts the whole directory, so read <mount-path>/%s", m.Container, m.SubPath, m.MountPath, m.SubPath))
			continue
		}
		if _, ok := byPath[m.MountPath]; !ok {
			paths = append(paths, m.MountPath)
		}
		byPath[m.MountPath] = append(byPath[m.MountPath], m.Container)
	}
	fmt.Fprintf(&b, "spec.volumes %q: the pod still has the CSI driver's volume of %s", v.Name, ref)
	if len(names) > 0 {
		fmt.Fprintf(&b, " (mounted by %s)", quoteList(names))
	}
	fmt.Fprintf(&b, ", so its containers would keep reading the CSI driver's files, not kvinject's; remove the volume")
	if len(names) > 0 {
		fmt.Fprintf(&b, " and its volumeMounts in %s", quoteList(names))
	}
	if v.NodePublishSecretRef != "" {
		fmt.Fprintf(&b, ", with its nodePublishSecretRef (Secret %q, which kvinject does not need)", v.NodePublishSecretRef)
	}
	var add []string
	switch len(paths) {
	case 0:
	case 1:
		if strings.TrimSpace(pod.Annotations[AnnotationMountPath]) != paths[0] {
			add = append(add, fmt.Sprintf("%s: %s", AnnotationMountPath, paths[0]))
		}
	default:
		var per []string
		for _, pth := range paths {
			per = append(per, fmt.Sprintf("%s at %s", quoteList(byPath[pth]), pth))
		}
		fmt.Fprintf(&b, "; the containers mount it at different paths (%s), but kvinject mounts one directory into every selected container: choose one for %s and change the other containers to read from it", strings.Join(per, ", "), AnnotationMountPath)
	}
	// The containers kvinject would mount into (none when the annotation is
	// wrong, which podOnlyProblems reports) must be those that mounted the class.
	selected, _ := selectContainers(pod, pod.Annotations[AnnotationContainers])
	if len(names) > 0 && !sameSet(names, selected) {
		add = append(add, fmt.Sprintf("%s: %s", AnnotationContainers, strings.Join(names, ",")))
	}
	if len(add) > 0 {
		fmt.Fprintf(&b, "; then set %s, so the same containers see the files at the same place", strings.Join(add, " and "))
	}
	for _, s := range subs {
		b.WriteString("; " + s)
	}
	return b.String()
}

// containersWarning says who sees the files when a migrated pod leaves
// kvinject.dev/containers to its default: every regular container, no init
// container, where the CSI driver served only the containers that mounted its
// volume.
func containersWarning(pod *corev1.Pod, ref string) []string {
	if strings.TrimSpace(pod.Annotations[AnnotationContainers]) != "" {
		return nil
	}
	regular, _ := selectContainers(pod, "") // every regular container: never fails
	var inits []string
	for _, c := range pod.Spec.InitContainers {
		if !IsAgentContainer(c.Name) {
			inits = append(inits, c.Name)
		}
	}
	if len(regular) < 2 && len(inits) == 0 {
		return nil
	}
	w := fmt.Sprintf("%s: without %s, kvinject mounts the files into every regular container (%s)", ref, AnnotationContainers, quoteList(regular))
	if len(inits) > 0 {
		w += fmt.Sprintf(" and into no init container (%s)", quoteList(inits))
	}
	return []string{w + "; with the CSI driver only the containers that mounted its volume saw them: set " + AnnotationContainers + " to those containers"}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// podOnlyProblems are the problems of the pod's annotations that the class does
// not stand in for, with Resolve's rules, so that a refusal for the class also
// names them.
func podOnlyProblems(pod *corev1.Pod) []string {
	var probs problems
	ann := pod.Annotations
	if raw, ok := ann[AnnotationMountPath]; ok {
		if err := validateMountPath(strings.TrimSpace(raw)); err != nil {
			probs.add(AnnotationMountPath, "%v", err)
		}
	}
	if _, err := selectContainers(pod, ann[AnnotationContainers]); err != nil {
		probs.add(AnnotationContainers, "%v", err)
	}
	if raw, ok := ann[AnnotationFileMode]; ok {
		if _, err := agentconfig.ParseFileMode(raw); err != nil {
			probs.add(AnnotationFileMode, "%v", err)
		}
	}
	if raw, ok := ann[AnnotationRotation]; ok {
		if _, err := ParseRotation(raw); err != nil {
			probs.add(AnnotationRotation, "%v", err)
		}
	}
	resolveResources(ann, corev1.ResourceRequirements{}, &probs)
	return probs
}

// spcEntries converts the objects parameter into entries, reading it as the
// provider does (gopkg.in/yaml.v3 into its types, every string field trimmed).
// Problems and warnings start with the object's position, e.g. "[2].objectType: ...".
func spcEntries(raw string) ([]agentconfig.Entry, []string, []string) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, []string{": is empty: list the objects to write under array:"}, nil
	}
	var arr spcObjectArray
	if err := yaml.Unmarshal([]byte(raw), &arr); err != nil {
		return nil, []string{fmt.Sprintf(": is not the provider's format (array: a list of objects, each a YAML string such as a | block): %s", yamlError(err))}, nil
	}
	if unknown := unknownKeys(raw, []string{"array"}); len(unknown) > 0 {
		return nil, []string{fmt.Sprintf(": unknown key %s: the provider reads only array (and ignores the rest); remove it", quoteList(unknown))}, nil
	}
	if len(arr.Array) == 0 {
		return nil, []string{".array: is empty: list the objects to write"}, nil
	}
	var (
		entries  []agentconfig.Entry
		probs    []string
		warnings []string
	)
	for i, doc := range arr.Array {
		at := fmt.Sprintf("[%d]", i)
		var o spcObject
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			probs = append(probs, fmt.Sprintf("%s: the provider cannot read this object (%s); the fields are objectName, objectAlias, objectType, objectVersion, objectVersionHistory (a number), objectFormat, objectEncoding and filePermission", at, yamlError(err)))
			continue
		}
		if unknown := unknownKeys(doc, spcObjectFields); len(unknown) > 0 {
			probs = append(probs, fmt.Sprintf("%s: unknown field %s: the provider ignores it, so it may be a misspelling of %s; fix or remove it (the CSI driver ignores it too, so other pods are unaffected)", at, quoteList(unknown), strings.Join(spcObjectFields, ", ")))
			continue
		}
		trimObject(&o)
		e, ps, ws := spcEntry(o)
		for _, p := range ps {
			probs = append(probs, at+"."+p)
		}
		for _, w := range ws {
			warnings = append(warnings, at+"."+w)
		}
		if len(ps) == 0 {
			entries = append(entries, e)
		}
	}
	if len(probs) > 0 {
		return nil, probs, warnings
	}
	// The same checks as for the annotation: files unique and not nested.
	s := make([]string, len(entries))
	for i, e := range entries {
		s[i] = e.String()
	}
	if _, err := agentconfig.ParseEntries(strings.Join(s, ",")); err != nil {
		return nil, []string{": " + err.Error()}, warnings
	}
	return entries, nil, warnings
}

// yamlError is err's message on one line, without yaml.v3's heading.
func yamlError(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:")
	return strings.Join(strings.Fields(s), " ")
}

// unknownKeys returns the keys of the YAML mapping doc that are not in known.
func unknownKeys(doc string, known []string) []string {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &n); err != nil || len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	var unknown []string
	m := n.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i].Value; !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	return unknown
}

// trimObject removes surrounding white space from every string field, as the
// provider does before it uses the object.
func trimObject(o *spcObject) {
	for _, f := range []*string{&o.ObjectName, &o.ObjectAlias, &o.ObjectVersion, &o.ObjectType, &o.ObjectFormat, &o.ObjectEncoding, &o.FilePermission} {
		*f = strings.TrimSpace(*f)
	}
}

// spcEntry converts one (trimmed) object with the Azure provider's semantics.
// Where the provider gives a value a meaning (an empty objectVersion is the
// latest, objectVersionHistory of 1 or less is one file), kvinject follows it;
// where the provider would fail the object or pass a value to Key Vault that
// cannot name an object, the object is refused with the reason.
func spcEntry(o spcObject) (agentconfig.Entry, []string, []string) {
	var probs, warnings []string
	bad := func(f, format string, args ...any) { probs = append(probs, f+": "+fmt.Sprintf(format, args...)) }
	e := agentconfig.Entry{Name: o.ObjectName, File: o.ObjectName}
	fileField := "objectName"
	if o.ObjectAlias != "" {
		e.File, fileField = o.ObjectAlias, "objectAlias"
	}
	switch {
	case o.ObjectName == "":
		bad("objectName", "is empty: name the Key Vault object")
	case !agentconfig.IsObjectName(o.ObjectName):
		bad("objectName", "%q is not a Key Vault object name (1-127 letters, digits or hyphens); the provider sends it to Key Vault unchanged, where no object can have it", o.ObjectName)
	}
	if o.ObjectName != "" {
		if err := agentconfig.ValidateFile(e.File); err != nil {
			bad(fileField, "%v (the file kvinject would write; set objectAlias to such a file)", err)
		}
	}

	switch o.ObjectType {
	case "secret":
		e.Type = agentconfig.ObjectSecret
	case "cert":
		e.Type = agentconfig.ObjectCert
	case "key":
		e.Type = agentconfig.ObjectKey
	default:
		if l := strings.ToLower(o.ObjectType); l == "secret" || l == "cert" || l == "key" {
			bad("objectType", "%q: the provider reads only lowercase secret, key or cert and fails this object; write %q", o.ObjectType, l)
		} else {
			bad("objectType", "%q: use secret, key or cert", o.ObjectType)
		}
	}
	secret := o.ObjectType == "secret"

	history := o.ObjectVersionHistory
	switch v := o.ObjectVersion; {
	case v == "":
		// The latest version.
	case strings.EqualFold(v, "latest") && history > 1:
		// The provider's history starts at the latest for "latest".
	case strings.EqualFold(v, "latest"):
		bad("objectVersion", "%q: the provider sends it to Key Vault as a version ID; leave objectVersion empty for the latest version", v)
	case !agentconfig.IsVersion(v):
		bad("objectVersion", "%q is not a version ID (32 hexadecimal characters): the provider sends it to Key Vault unchanged; leave it empty for the latest version", v)
	default:
		e.Version = strings.ToLower(v)
	}
	switch {
	case history <= 1:
		// As with the provider: one file, no version directory (also for 0 and negatives).
	case !secret:
		bad("objectVersionHistory", "kvinject keeps the version history of objectType secret only; for a certificate's versions use objectType secret with the certificate's name")
	case history > agentconfig.MaxHistory:
		bad("objectVersionHistory", "%d is more than kvinject's limit of %d versions", history, agentconfig.MaxHistory)
	case e.Version != "":
		bad("objectVersionHistory", "cannot be combined with objectVersion %q: the provider's history starts at that version, kvinject's at the latest; leave objectVersion empty", o.ObjectVersion)
	default:
		// <alias>/0 (newest) .. <alias>/<N-1>, as with the provider.
		e.History = int(history)
	}

	// objectFormat: the provider checks pem or pfx (any case), refuses exactly "pfx"
	// for other types than secret, and uses it only for a certificate's secret.
	switch {
	case o.ObjectFormat != "" && !strings.EqualFold(o.ObjectFormat, "pem") && !strings.EqualFold(o.ObjectFormat, "pfx"):
		bad("objectFormat", "%q: use pem or pfx", o.ObjectFormat)
	case o.ObjectFormat == "pfx" && !secret && e.Type != "":
		bad("objectFormat", "pfx applies to objectType secret only")
	case !secret && o.ObjectFormat != "":
		if e.Type != "" {
			warnings = append(warnings, fmt.Sprintf("objectFormat: %q has no effect on objectType %s (the provider ignores it too): the file is PEM", o.ObjectFormat, o.ObjectType))
		}
	case secret && strings.EqualFold(o.ObjectFormat, "pfx"):
		// The value as stored (base64 PKCS#12); with objectEncoding base64, its bytes.
	case secret:
		// The provider's default: a certificate's secret as PEM, any other as stored.
		e.Format = agentconfig.FormatAuto
	}

	// objectEncoding: the provider refuses it for other types than secret.
	switch enc := strings.ToLower(o.ObjectEncoding); {
	case enc == "":
	case !secret:
		if e.Type != "" {
			bad("objectEncoding", "applies to objectType secret only (the provider refuses it too)")
		}
	case enc == "utf-8":
	case enc == "base64":
		e.Encoding = agentconfig.EncodingBase64
	case enc == "hex":
		e.Encoding = agentconfig.EncodingHex
	default:
		bad("objectEncoding", "%q: use utf-8, base64 or hex", o.ObjectEncoding)
	}
	if e.Encoding != "" && e.Format == agentconfig.FormatAuto {
		// Decoding applies to the value as stored.
		e.Format = ""
	}

	if fp := o.FilePermission; fp != "" {
		// The provider reads it with strconv.ParseInt(fp, 8, 32): octal digits, with
		// or without a leading 0, no 0o prefix.
		m, err := strconv.ParseInt(fp, 8, 32)
		switch {
		case err != nil || m < 0:
			bad("filePermission", "%q is not an octal mode the provider can read (it would write the file with mode 0000); write e.g. \"0440\"", fp)
		default:
			mode, err := agentconfig.ParseFileMode(fmt.Sprintf("%04o", m))
			if err != nil {
				bad("filePermission", "%v", err)
			}
			e.Mode = mode
		}
	}
	return e, probs, warnings
}
