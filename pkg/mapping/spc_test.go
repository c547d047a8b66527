package mapping

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSPCObjects checks the Azure provider's object semantics, object by object.
func TestSPCObjects(t *testing.T) {
	for _, tc := range []struct {
		name, object, want, problem string
	}{
		{"secret: pem for a certificate's, else as stored", "objectName: db\nobjectType: secret", "db=secret:db;format=auto", ""},
		{"alias", "objectName: db\nobjectAlias: db.txt\nobjectType: secret", "db.txt=secret:db;format=auto", ""},
		{"objectFormat pem is the default", "objectName: web\nobjectType: secret\nobjectFormat: PEM", "web=secret:web;format=auto", ""},
		{"pfx alone: the stored base64", "objectName: web\nobjectType: secret\nobjectFormat: pfx", "web=secret:web", ""},
		{"pfx with base64: its bytes", "objectName: web\nobjectType: secret\nobjectFormat: pfx\nobjectEncoding: base64", "web=secret:web;encoding=base64", ""},
		{"utf-8 is no decoding", "objectName: a\nobjectType: secret\nobjectEncoding: utf-8", "a=secret:a;format=auto", ""},
		{"hex", "objectName: a\nobjectType: secret\nobjectEncoding: hex", "a=secret:a;encoding=hex", ""},
		{"cert", "objectName: web\nobjectType: cert", "web=cert:web", ""},
		{"key", "objectName: k\nobjectType: key\nobjectVersion: 0123456789ABCDEF0123456789abcdef", "k=key:k@0123456789abcdef0123456789abcdef", ""},
		{"history of one is one file", "objectName: a\nobjectType: secret\nobjectVersionHistory: 1", "a=secret:a;format=auto", ""},
		{"history", "objectName: a\nobjectType: secret\nobjectVersionHistory: 4", "a=secret:a;format=auto;history=4", ""},
		{"file permission", "objectName: a\nobjectType: secret\nfilePermission: \"0400\"", "a=secret:a;format=auto;mode=0400", ""},
		{"no type", "objectName: a", "", `objectType: "": use secret, key or cert`},
		{"pfx of a cert", "objectName: a\nobjectType: cert\nobjectFormat: pfx", "", "objectFormat: pfx applies to objectType secret only"},
		{"history too long", "objectName: a\nobjectType: secret\nobjectVersionHistory: 40", "", "objectVersionHistory: 40 is more than kvinject's limit of 16"},
		{"history and version", "objectName: a\nobjectType: secret\nobjectVersionHistory: 2\nobjectVersion: 0123456789abcdef0123456789abcdef", "", "cannot be combined with objectVersion"},
		{"unknown field", "objectName: a\nobjectType: secret\nobjectSize: 3", "", `unknown field "objectSize"`},
		{"bad alias", "objectName: a\nobjectAlias: ../etc/passwd\nobjectType: secret", "", "objectAlias:"},
		// Scalars keep their text, as yaml.v3 decodes them into the provider's strings.
		{"unquoted 0644 is 0644", "objectName: a\nobjectType: secret\nfilePermission: 0644", "a=secret:a;format=auto;mode=0644", ""},
		{"unquoted 0440", "objectName: a\nobjectType: secret\nfilePermission: 0440", "a=secret:a;format=auto;mode=0440", ""},
		{"unquoted 0600", "objectName: a\nobjectType: secret\nfilePermission: 0600", "a=secret:a;format=auto;mode=0600", ""},
		{"unquoted 0640", "objectName: a\nobjectType: secret\nfilePermission: 0640", "a=secret:a;format=auto;mode=0640", ""},
		{"octal without leading zero, as ParseInt base 8", "objectName: a\nobjectType: secret\nfilePermission: 644", "a=secret:a;format=auto;mode=0644", ""},
		{"single-quoted", "objectName: a\nobjectType: secret\nfilePermission: '0400'", "a=secret:a;format=auto;mode=0400", ""},
		{"0o prefix: the provider cannot parse it", "objectName: a\nobjectType: secret\nfilePermission: 0o644", "", "not an octal mode the provider can read"},
		{"0755 is executable", "objectName: a\nobjectType: secret\nfilePermission: 0755", "", "must not make secrets executable"},
		{"decimal-looking 420 is octal 0420", "objectName: a\nobjectType: secret\nfilePermission: 420", "a=secret:a;format=auto;mode=0420", ""},
		{"not octal", "objectName: a\nobjectType: secret\nfilePermission: 0999", "", "not an octal mode"},
		{"name 0123 stays 0123", "objectName: 0123\nobjectType: secret", "0123=secret:0123;format=auto", ""},
		{"name 1e3 stays 1e3", "objectName: 1e3\nobjectType: secret", "1e3=secret:1e3;format=auto", ""},
		{"name yes stays yes", "objectName: yes\nobjectType: secret", "yes=secret:yes;format=auto", ""},
		{"name 0x1F is not a Key Vault name", "objectName: 0x1F\nobjectType: secret", "0x1F=secret:0x1F;format=auto", ""},
		{"name with spaces trimmed", "objectName: '  db  '\nobjectType: ' secret '", "db=secret:db;format=auto", ""},
		{"name with underscore", "objectName: my_secret\nobjectType: secret", "", "not a Key Vault object name"},
		{"empty version is the latest", "objectName: a\nobjectType: secret\nobjectVersion: \"\"", "a=secret:a;format=auto", ""},
		{"null version is the latest", "objectName: a\nobjectType: secret\nobjectVersion:", "a=secret:a;format=auto", ""},
		{"latest is sent to Key Vault", "objectName: a\nobjectType: secret\nobjectVersion: latest", "", "sends it to Key Vault as a version ID"},
		{"latest with history is the latest", "objectName: a\nobjectType: secret\nobjectVersion: latest\nobjectVersionHistory: 2", "a=secret:a;format=auto;history=2", ""},
		{"short version", "objectName: a\nobjectType: secret\nobjectVersion: 1234", "", "not a version ID"},
		{"history 010 is 8 (yaml.v3)", "objectName: a\nobjectType: secret\nobjectVersionHistory: 010", "a=secret:a;format=auto;history=8", ""},
		{"history 0x3", "objectName: a\nobjectType: secret\nobjectVersionHistory: 0x3", "a=secret:a;format=auto;history=3", ""},
		{"history 3.0", "objectName: a\nobjectType: secret\nobjectVersionHistory: 3.0", "a=secret:a;format=auto;history=3", ""},
		{"history 0", "objectName: a\nobjectType: secret\nobjectVersionHistory: 0", "a=secret:a;format=auto", ""},
		{"negative history is one version, as with the provider", "objectName: a\nobjectType: secret\nobjectVersionHistory: -2", "a=secret:a;format=auto", ""},
		{"quoted history", "objectName: a\nobjectType: secret\nobjectVersionHistory: \"3\"", "", "cannot unmarshal !!str"},
		{"history of a cert", "objectName: a\nobjectType: cert\nobjectVersionHistory: 2", "", "version history of objectType secret only"},
		{"capitalized type", "objectName: a\nobjectType: Secret", "", `the provider reads only lowercase`},
		{"PFX of a cert is ignored by the provider", "objectName: a\nobjectType: cert\nobjectFormat: PFX", "a=cert:a", ""},
		{"encoding any case", "objectName: a\nobjectType: secret\nobjectEncoding: Base64", "a=secret:a;encoding=base64", ""},
		{"encoding of a key", "objectName: a\nobjectType: key\nobjectEncoding: utf-8", "", "applies to objectType secret only"},
		{"bad encoding", "objectName: a\nobjectType: secret\nobjectEncoding: utf-16", "", `"utf-16": use utf-8, base64 or hex`},
		{"bad format", "objectName: a\nobjectType: secret\nobjectFormat: der", "", `"der": use pem or pfx`},
		{"duplicate key", "objectName: a\nobjectName: b\nobjectType: secret", "", "already defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := "array:\n  - |\n" + indent(tc.object, "    ")
			entries, probs, _ := spcEntries(raw)
			if tc.problem != "" {
				if len(probs) != 1 || !strings.Contains(probs[0], tc.problem) {
					t.Fatalf("problems %q, want one containing %q", probs, tc.problem)
				}
				return
			}
			if len(probs) > 0 || len(entries) != 1 {
				t.Fatalf("problems %q, entries %v", probs, entries)
			}
			if got := entries[0].String(); got != tc.want {
				t.Errorf("entry %q, want %q", got, tc.want)
			}
		})
	}
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix) + "\n"
}

// TestApplySecretProviderClass checks the class's identity and vault parameters
// and that the pod and ServiceAccount it is given are not changed.
func TestApplySecretProviderClass(t *testing.T) {
	objects := "array:\n  - |\n    objectName: db\n    objectType: secret\n"
	base := func(params map[string]string) SecretProviderClass {
		p := map[string]string{"keyvaultName": "kv1", "objects": objects}
		for k, v := range params {
			p[k] = v
		}
		return SecretProviderClass{Namespace: "apps", Name: "c", Provider: "azure", Parameters: p}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationSecretProviderClass: "c"}}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationWIClientID: "11111111-1111-1111-1111-111111111111"}}}
	for _, tc := range []struct {
		name     string
		params   map[string]string
		identity string
		clientID string // the ServiceAccount's after the call
	}{
		{"workload identity: the class's client ID wins", map[string]string{"clientID": "2F1E5B7C-9A3D-4E8F-B6C1-0D2A4E6F8A1B", "tenantId": "t1"}, "workload", "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"},
		{"user-assigned managed identity", map[string]string{"useVMManagedIdentity": "true", "userAssignedIdentityID": "0d9f8e7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"}, "managed:0d9f8e7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f", "11111111-1111-1111-1111-111111111111"},
		{"system-assigned", map[string]string{"useVMManagedIdentity": "True"}, "system", "11111111-1111-1111-1111-111111111111"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p2, sa2, _, err := ApplySecretProviderClass(pod, sa, base(tc.params))
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{AnnotationSecretProviderClass: "c", AnnotationVault: "kv1", AnnotationSecrets: "db=secret:db;format=auto", AnnotationIdentity: tc.identity}
			if tc.params["tenantId"] != "" {
				want[AnnotationTenantID] = tc.params["tenantId"]
			}
			if d := cmp.Diff(want, p2.Annotations); d != "" {
				t.Errorf("pod annotations (-want +got):\n%s", d)
			}
			if got := sa2.Annotations[AnnotationWIClientID]; got != tc.clientID {
				t.Errorf("ServiceAccount client ID %q, want %q", got, tc.clientID)
			}
			if len(pod.Annotations) != 1 || sa.Annotations[AnnotationWIClientID] != "11111111-1111-1111-1111-111111111111" {
				t.Error("the pod or ServiceAccount passed in was changed")
			}
		})
	}
	// As with the provider, a VM managed identity wins over clientID.
	if p2, _, w, err := ApplySecretProviderClass(pod, sa, base(map[string]string{"clientID": "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b", "useVMManagedIdentity": "true"})); err != nil || p2.Annotations[AnnotationIdentity] != "system" || !strings.Contains(strings.Join(w, "\n"), "clientID is ignored") {
		t.Errorf("managed identity and clientID: %v, %v", err, w)
	}
	if _, _, _, err := ApplySecretProviderClass(pod, sa, base(map[string]string{"useVMManagedIdentity": "yes please"})); err == nil || !strings.Contains(err.Error(), `spec.parameters.useVMManagedIdentity: "yes please" is not "true" or "false"`) {
		t.Errorf("bad boolean: %v", err)
	}
}

// TestSPCParameterErrors checks that what comes from the class is blamed on the
// class's field, with every problem at once.
func TestSPCParameterErrors(t *testing.T) {
	objects := "array:\n  - |\n    objectName: db\n    objectType: secret\n"
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationSecretProviderClass: "c", AnnotationRotation: "10s"}}}
	for _, tc := range []struct {
		name   string
		params map[string]string
		want   []string
	}{
		{"vault, cloud and the pod's own annotation", map[string]string{"keyvaultName": "my_vault", "cloudName": "Mars", "clientID": "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"},
			[]string{`SecretProviderClass shop/c: spec.parameters.keyvaultName: "my_vault" is not a valid vault name`, `SecretProviderClass shop/c: spec.parameters.cloudName: unknown cloud "Mars"`, `kvinject.dev/rotation: "10s" is shorter`}},
		{"vault URL", map[string]string{"keyvaultName": "https://kv1.vault.azure.net/", "clientID": "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"},
			[]string{`spec.parameters.keyvaultName: "https://kv1.vault.azure.net/": the provider reads a vault name, not a URL`}},
		{"tenant and identity IDs", map[string]string{"keyvaultName": "kv1", "tenantID": "not a tenant", "useVMManagedIdentity": "true", "userAssignedIdentityID": "my-identity"},
			[]string{`spec.parameters.tenantID: "not a tenant" is not a tenant ID`, `spec.parameters.userAssignedIdentityID: "my-identity" must be the identity's client ID`}},
		{"identity binding", map[string]string{"keyvaultName": "kv1", "useAzureTokenProxy": "true", "clientID": "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"},
			[]string{`spec.parameters.useAzureTokenProxy: identity binding (the Azure token proxy) is not supported`, "azure.workload.identity/client-id"}},
		{"two identity modes", map[string]string{"keyvaultName": "kv1", "usePodIdentity": "true", "useVMManagedIdentity": "1"},
			[]string{"usePodIdentity and useVMManagedIdentity are all \"true\""}},
		{"German cloud", map[string]string{"keyvaultName": "kv1", "cloudName": "AzureGermanCloud", "clientID": "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b"},
			[]string{"Microsoft Cloud Germany is closed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := map[string]string{"objects": objects}
			for k, v := range tc.params {
				p[k] = v
			}
			_, _, _, err := ApplySecretProviderClass(pod, nil, SecretProviderClass{Namespace: "shop", Name: "c", Provider: "azure", Parameters: p})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "kvinject.dev/vault") || strings.Contains(err.Error(), "kvinject.dev/cloud") || strings.Contains(err.Error(), "kvinject.dev/identity") {
				t.Errorf("error blames an annotation the user did not write: %q", err)
			}
		})
	}
}

// TestSPCTenantPrecedence checks that tenantID wins over the deprecated tenantId, as with the provider.
func TestSPCTenantPrecedence(t *testing.T) {
	objects := "array:\n  - |\n    objectName: db\n    objectType: secret\n"
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationSecretProviderClass: "c"}}}
	for _, tc := range []struct {
		name        string
		params      map[string]string
		want        string
		wantWarning bool
	}{
		{"tenantID alone", map[string]string{"tenantID": "t-id"}, "t-id", false},
		{"tenantId alone", map[string]string{"tenantId": "t-old"}, "t-old", false},
		{"both: tenantID wins", map[string]string{"tenantID": "t-id", "tenantId": "t-old"}, "t-id", true},
		{"tenantID blank: tenantId", map[string]string{"tenantID": "  ", "tenantId": "t-old"}, "t-old", false},
		{"both equal", map[string]string{"tenantID": "t-id", "tenantId": " t-id "}, "t-id", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := map[string]string{"keyvaultName": "kv1", "objects": objects, "useVMManagedIdentity": "true"}
			for k, v := range tc.params {
				p[k] = v
			}
			p2, _, w, err := ApplySecretProviderClass(pod, nil, SecretProviderClass{Namespace: "shop", Name: "c", Provider: "azure", Parameters: p})
			if err != nil {
				t.Fatal(err)
			}
			if got := p2.Annotations[AnnotationTenantID]; got != tc.want {
				t.Errorf("tenant %q, want %q", got, tc.want)
			}
			if got := strings.Contains(strings.Join(w, "\n"), "tenantId"); got != tc.wantWarning {
				t.Errorf("warnings %q, want a tenantId warning: %v", w, tc.wantWarning)
			}
		})
	}
}
