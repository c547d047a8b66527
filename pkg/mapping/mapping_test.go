package mapping

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// TestIdentityPrecedence pins the order: pod, namespace, ServiceAccount, webhook default.
func TestIdentityPrecedence(t *testing.T) {
	const (
		saClient  = "3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9"
		podClient = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
		nsClient  = "0d9f8e7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"
		defClient = "5e8c2a1f-3b4d-4c6e-9f0a-1b2c3d4e5f60"
		tenant    = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	)
	wiSA := map[string]string{AnnotationWIClientID: saClient, AnnotationWITenantID: tenant}
	tests := []struct {
		name        string
		pod, ns, sa map[string]string
		defaultID   string
		want        Identity
	}{
		{name: "service account", sa: wiSA, want: Identity{Kind: agentconfig.IdentityWorkload, ClientID: saClient, TenantID: tenant}},
		{name: "service account beats default", sa: wiSA, defaultID: "system", want: Identity{Kind: agentconfig.IdentityWorkload, ClientID: saClient, TenantID: tenant}},
		{name: "default", defaultID: "managed", want: Identity{Kind: agentconfig.IdentityManaged, ClientID: defClient}},
		{name: "namespace beats service account", ns: map[string]string{AnnotationIdentity: "managed:" + nsClient}, sa: wiSA, want: Identity{Kind: agentconfig.IdentityManaged, ClientID: nsClient}},
		{name: "pod beats namespace", pod: map[string]string{AnnotationIdentity: "managed:" + podClient}, ns: map[string]string{AnnotationIdentity: "system"}, want: Identity{Kind: agentconfig.IdentityManaged, ClientID: podClient}},
		{name: "pod tenant beats service account tenant", pod: map[string]string{AnnotationTenantID: "contoso.onmicrosoft.com"}, sa: wiSA, want: Identity{Kind: agentconfig.IdentityWorkload, ClientID: saClient, TenantID: "contoso.onmicrosoft.com"}},
		{name: "service account tenant beats namespace tenant", ns: map[string]string{AnnotationTenantID: "other.onmicrosoft.com"}, sa: wiSA, want: Identity{Kind: agentconfig.IdentityWorkload, ClientID: saClient, TenantID: tenant}},
		{name: "system", pod: map[string]string{AnnotationIdentity: "System"}, want: Identity{Kind: agentconfig.IdentitySystem}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationVault: "myvault", AnnotationSecrets: "a=B"}}}
			for k, v := range tt.pod {
				pod.Annotations[k] = v
			}
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Annotations: tt.ns}}
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Annotations: tt.sa}}
			spec, _, err := Resolve(pod, ns, sa, Defaults{Identity: tt.defaultID, ManagedIdentityClientID: defClient})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, spec.Identity); d != "" {
				t.Errorf("identity (-want +got):\n%s", d)
			}
		})
	}
}

func TestAgentUser(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	tests := []struct {
		name     string
		pod      *corev1.PodSecurityContext
		scs      []*corev1.SecurityContext
		uid, gid int64
		sharePID bool
	}{
		{name: "none", scs: []*corev1.SecurityContext{nil}, uid: DefaultAgentUser, gid: DefaultAgentUser},
		{name: "pod level", pod: &corev1.PodSecurityContext{RunAsUser: i(1000), RunAsGroup: i(3000)}, scs: []*corev1.SecurityContext{nil, nil}, uid: 1000, gid: 3000},
		{name: "container overrides agree", pod: &corev1.PodSecurityContext{RunAsUser: i(5)}, scs: []*corev1.SecurityContext{{RunAsUser: i(7)}, {RunAsUser: i(7)}}, uid: 7, gid: DefaultAgentUser},
		{name: "disagree", scs: []*corev1.SecurityContext{{RunAsUser: i(7)}, {RunAsUser: i(8)}}, uid: DefaultAgentUser, gid: DefaultAgentUser},
		{name: "one unset", scs: []*corev1.SecurityContext{{RunAsUser: i(7)}, nil}, uid: DefaultAgentUser, gid: DefaultAgentUser},
		{name: "root", pod: &corev1.PodSecurityContext{RunAsUser: i(0)}, scs: []*corev1.SecurityContext{nil}, uid: DefaultAgentUser, gid: DefaultAgentUser},
		{name: "shared process namespace", sharePID: true, pod: &corev1.PodSecurityContext{RunAsUser: i(1000), RunAsGroup: i(3000)}, scs: []*corev1.SecurityContext{nil}, uid: DefaultAgentUser, gid: DefaultAgentUser},
	}
	for _, tt := range tests {
		pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: tt.pod, ShareProcessNamespace: &tt.sharePID}}
		var names []string
		for n, sc := range tt.scs {
			name := string(rune('a' + n))
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: name, SecurityContext: sc})
			names = append(names, name)
		}
		if uid, gid := agentUser(pod, names); uid != tt.uid || gid != tt.gid {
			t.Errorf("%s: agentUser = %d/%d, want %d/%d", tt.name, uid, gid, tt.uid, tt.gid)
		}
	}
}

func TestClosestKey(t *testing.T) {
	for typo, want := range map[string]string{
		"kvinject.dev/secret":      AnnotationSecrets,
		"kvinject.dev/mountpath":   AnnotationMountPath,
		"kvinject.dev/Vault":       AnnotationVault,
		"kvinject.dev/filemode":    AnnotationFileMode,
		"kvinject.dev/tenant":      AnnotationTenantID,
		"kvinject.dev/container":   AnnotationContainers,
		"kvinject.dev/identity-id": AnnotationIdentity,
	} {
		if got := closestKey(typo); got != want {
			t.Errorf("closestKey(%q) = %q, want %q", typo, got, want)
		}
	}
}

func TestParseRotation(t *testing.T) {
	for in, want := range map[string]time.Duration{"off": 0, "OFF": 0, "30s": 30 * time.Second, " 2m ": 2 * time.Minute, "24h": 24 * time.Hour} {
		if got, err := ParseRotation(in); err != nil || got != want {
			t.Errorf("ParseRotation(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"29s", "0", "-1m", "25h", "2", "soon", ""} {
		if _, err := ParseRotation(in); err == nil {
			t.Errorf("ParseRotation(%q) succeeded", in)
		}
	}
}

func TestDefaultsValidate(t *testing.T) {
	if err := (Defaults{}).Validate(); err != nil {
		t.Errorf("empty defaults: %v", err)
	}
	err := Defaults{Vault: "x", Identity: "pod", ManagedIdentityClientID: "id", TenantID: "a b", Cloud: "Mars", MountPath: "rel", Rotation: time.Second}.Validate()
	for _, flag := range []string{"--default-cloud", "--default-identity", "--managed-identity-client-id", "--default-tenant-id", "--default-mount-path", "--default-rotation"} {
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("error %v does not name %s", err, flag)
		}
	}
}

// TestAnnotationsAgentconfigNames: the agent's and the doctor's messages name
// three annotations through package agentconfig; they are this package's.
func TestAnnotationsAgentconfigNames(t *testing.T) {
	for _, tc := range []struct{ agent, mapping string }{
		{agentconfig.AnnotationSecrets, AnnotationSecrets},
		{agentconfig.AnnotationCloud, AnnotationCloud},
		{agentconfig.AnnotationOnChange, AnnotationOnChange},
	} {
		if tc.agent != tc.mapping {
			t.Errorf("agentconfig names %q, mapping %q", tc.agent, tc.mapping)
		}
	}
}
