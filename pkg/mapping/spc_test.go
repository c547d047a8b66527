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
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := "array:\n  - |\n" + indent(tc.object, "    ")
			entries, probs := spcEntries(raw)
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
	if _, _, _, err := ApplySecretProviderClass(pod, sa, base(map[string]string{"clientID": "2f1e5b7c-9a3d-4e8f-b6c1-0d2a4e6f8a1b", "useVMManagedIdentity": "true"})); err == nil || !strings.Contains(err.Error(), "both useVMManagedIdentity and clientID") {
		t.Errorf("ambiguous identity: %v", err)
	}
	if _, _, _, err := ApplySecretProviderClass(pod, sa, base(map[string]string{"useVMManagedIdentity": "yes please"})); err == nil || !strings.Contains(err.Error(), `spec.parameters.useVMManagedIdentity: "yes please" is not "true" or "false"`) {
		t.Errorf("bad boolean: %v", err)
	}
}
