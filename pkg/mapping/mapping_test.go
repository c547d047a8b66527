package mapping

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseEntries(t *testing.T) {
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	tests := []struct {
		in      string
		want    []Entry
		wantErr string
	}{
		{in: "a.txt=A", want: []Entry{{File: "a.txt", Name: "A"}}},
		{in: " a.txt = A , b=B@" + strings.ToUpper(v) + "\n\n c/d=C,", want: []Entry{{File: "a.txt", Name: "A"}, {File: "b", Name: "B", Version: v}, {File: "c/d", Name: "C"}}},
		{in: "API-KEY", want: []Entry{{File: "API-KEY", Name: "API-KEY"}}},
		{in: "API-KEY@" + v, want: []Entry{{File: "API-KEY", Name: "API-KEY", Version: v}}},
		{in: "", wantErr: "no entries"},
		{in: "a=B_C", wantErr: `secret name "B_C" must be 1-127 letters`},
		{in: "a=" + strings.Repeat("X", 128), wantErr: "must be 1-127"},
		{in: "a=B@123", wantErr: `version "123" must be 32 hexadecimal`},
		{in: "a=B@", wantErr: `version "" must be 32 hexadecimal`},
		{in: "=B", wantErr: "file name is empty"},
		{in: "a=", wantErr: `secret name ""`},
		{in: "/a=B", wantErr: "without a leading '/'"},
		{in: "../a=B", wantErr: "must not start with '..'"},
		{in: "..data=B", wantErr: "must not start with '..'"},
		{in: "a/../../b=B", wantErr: "'.' or '..' segments"},
		{in: "a/./b=B", wantErr: "'.' or '..' segments"},
		{in: "db/..b=B", wantErr: "no path segment may start with '..'"},
		{in: "db/...=B", wantErr: "no path segment may start with '..'"},
		{in: "db/.hidden=B", want: []Entry{{File: "db/.hidden", Name: "B"}}},
		{in: "a//b=B", wantErr: "empty path segment"},
		{in: "a/=B", wantErr: "empty path segment"},
		{in: "a b=B", wantErr: "may only use letters"},
		{in: "a\x00=B", wantErr: "may only use letters"},
		{in: "é=B", wantErr: "may only use letters"},
		{in: strings.Repeat("a", 254) + "=B", wantErr: "longer than 253"},
		{in: "a=B,a=C", wantErr: `file "a" is already used by entry "a=B"`},
		{in: "a=B,a/b=C", wantErr: `file "a" cannot also be the directory of "a/b"`},
		{in: "a=certificate:B", wantErr: `unknown kind "certificate"`},
		{in: "a=B;format=yaml", wantErr: `format "yaml"`},
		{in: "x=B_1, y=C@z", wantErr: `secret name "B_1"`},
	}
	for _, tt := range tests {
		got, err := ParseEntries(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseEntries(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseEntries(%q): %v", tt.in, err)
			continue
		}
		if d := cmp.Diff(tt.want, got); d != "" {
			t.Errorf("ParseEntries(%q) (-want +got):\n%s", tt.in, d)
		}
	}
}

func TestParseEntriesReportsEveryProblem(t *testing.T) {
	_, err := ParseEntries("a=B_1, ../c=D, e=F@1")
	for _, want := range []string{`"B_1"`, `"../c"`, `version "1"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}

func TestEntryStringRoundTrip(t *testing.T) {
	for _, in := range []string{"a=B", "db/password=DB-PASSWORD@4387e9f3d6e14c459867679a90fd0f79"} {
		e, err := ParseEntry(in)
		if err != nil || e.String() != in {
			t.Errorf("ParseEntry(%q).String() = %q, %v", in, e.String(), err)
		}
	}
}

func TestVaultURL(t *testing.T) {
	tests := []struct {
		in      string
		cloud   Cloud
		want    string
		wantErr string
	}{
		{in: "myvault", cloud: AzurePublicCloud, want: "https://myvault.vault.azure.net/"},
		{in: "My-Vault-01", cloud: AzureChinaCloud, want: "https://my-vault-01.vault.azure.cn/"},
		{in: "abc", cloud: AzureUSGovernmentCloud, want: "https://abc.vault.usgovcloudapi.net/"},
		{in: "https://MyVault.vault.azure.net", cloud: AzurePublicCloud, want: "https://myvault.vault.azure.net/"},
		{in: "https://myvault.vault.azure.net:443/", cloud: AzurePublicCloud, want: "https://myvault.vault.azure.net/"},
		{in: "ab", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: strings.Repeat("a", 25), cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "1vault", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "vault-", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "my--vault", cloud: AzurePublicCloud, wantErr: "not a valid vault name"},
		{in: "http://myvault.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "must use https"},
		{in: "https://u:p@myvault.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "user info"},
		{in: "https://myvault.vault.azure.net/?x=1", cloud: AzurePublicCloud, wantErr: "query"},
		{in: "https://myvault.vault.azure.net/?", cloud: AzurePublicCloud, wantErr: "query"},
		{in: "https://myvault.vault.azure.net/#frag", cloud: AzurePublicCloud, wantErr: "fragment"},
		{in: "https://myvault.vault.azure.net/secrets", cloud: AzurePublicCloud, wantErr: "must not have a path"},
		{in: "https://myvault.vault.azure.net:8443/", cloud: AzurePublicCloud, wantErr: "port"},
		{in: "https://evil.com/", cloud: AzurePublicCloud, wantErr: "not a Key Vault of AzurePublicCloud"},
		{in: "https://myvault.vault.azure.net.evil.com/", cloud: AzurePublicCloud, wantErr: "not a Key Vault"},
		{in: "https://a.b.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "not a Key Vault"},
		{in: "https://127.0.0.1/", cloud: AzurePublicCloud, wantErr: "not a Key Vault"},
		{in: "https://myvault.vault.usgovcloudapi.net/", cloud: AzurePublicCloud, wantErr: "set kvinject.dev/cloud=AzureUSGovernmentCloud"},
		{in: "https://x_y.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "in ASCII letters, digits"},
		{in: "https://%zz", cloud: AzurePublicCloud, wantErr: "neither a vault name nor a valid URL"},
		{in: "https://\u212aeyvault.vault.azure.net/", cloud: AzurePublicCloud, wantErr: "in ASCII letters"},
	}
	for _, tt := range tests {
		got, err := VaultURL(tt.in, tt.cloud)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("VaultURL(%q) = %q, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("VaultURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

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
		{name: "service account", sa: wiSA, want: Identity{Kind: IdentityWorkload, ClientID: saClient, TenantID: tenant}},
		{name: "service account beats default", sa: wiSA, defaultID: "system", want: Identity{Kind: IdentityWorkload, ClientID: saClient, TenantID: tenant}},
		{name: "default", defaultID: "managed", want: Identity{Kind: IdentityManaged, ClientID: defClient}},
		{name: "namespace beats service account", ns: map[string]string{AnnotationIdentity: "managed:" + nsClient}, sa: wiSA, want: Identity{Kind: IdentityManaged, ClientID: nsClient}},
		{name: "pod beats namespace", pod: map[string]string{AnnotationIdentity: "managed:" + podClient}, ns: map[string]string{AnnotationIdentity: "system"}, want: Identity{Kind: IdentityManaged, ClientID: podClient}},
		{name: "pod tenant beats service account tenant", pod: map[string]string{AnnotationTenantID: "contoso.onmicrosoft.com"}, sa: wiSA, want: Identity{Kind: IdentityWorkload, ClientID: saClient, TenantID: "contoso.onmicrosoft.com"}},
		{name: "service account tenant beats namespace tenant", ns: map[string]string{AnnotationTenantID: "other.onmicrosoft.com"}, sa: wiSA, want: Identity{Kind: IdentityWorkload, ClientID: saClient, TenantID: tenant}},
		{name: "system", pod: map[string]string{AnnotationIdentity: "System"}, want: Identity{Kind: IdentitySystem}},
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
