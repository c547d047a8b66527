package hub

import (
	"encoding/json"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

const (
	testVersion  = "0123456789abcdef0123456789abcdef"
	pinnedVer    = "4387e9f3d6e14c459867679a90fd0f79"
	testClientID = "5e8c2a1f-3b4d-4c6e-9f0a-1b2c3d4e5f60"
)

// injectedPod builds a pod from annotations the way the webhook does:
// mapping.Resolve, then mutate.Patch applied as the API server applies it.
func injectedPod(t testing.TB, annotations map[string]string, cfg mutate.Config) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "orders", Namespace: "shop", UID: "11111111-2222-3333-4444-555555555555", Annotations: annotations},
		Spec:       corev1.PodSpec{ServiceAccountName: "app", Containers: []corev1.Container{{Name: "app", Image: "contoso.azurecr.io/app:1"}}},
	}
	spec, _, err := mapping.Resolve(pod, nil, nil, mapping.Defaults{Identity: "managed", ManagedIdentityClientID: testClientID})
	if err != nil {
		t.Fatalf("mapping.Resolve: %v", err)
	}
	if cfg.AgentImage == "" {
		cfg.AgentImage = "ghcr.io/kvinject/agent:test"
	}
	ops, err := mutate.Patch(pod, spec, cfg)
	if err != nil {
		t.Fatalf("mutate.Patch: %v", err)
	}
	raw, _ := json.Marshal(pod)
	patchJSON, _ := json.Marshal(ops)
	p, err := jsonpatch.DecodePatch(patchJSON)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("applying the patch: %v", err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

func request(vault string, names ...string) *watchRequest {
	req := &watchRequest{WatchRequest: hubapi.WatchRequest{Vault: vault}}
	for _, n := range names {
		req.Objects = append(req.Objects, hubapi.Object{Kind: hubapi.KindSecret, Name: n, Version: testVersion})
	}
	return req
}

// requestKind is request for objects of another kind.
func requestKind(vault, kind string, names ...string) *watchRequest {
	req := request(vault, names...)
	for i := range req.Objects {
		req.Objects[i].Kind = kind
	}
	return req
}

func TestAuthorizeInjectedPods(t *testing.T) {
	rotating := map[string]string{
		mapping.AnnotationVault: "ordersvault",
		mapping.AnnotationSecrets: "db.txt=DB-PASSWORD, api.txt=API-KEY, old.txt=OLD-KEY@" + pinnedVer +
			", tls=cert:SERVER-CERT, jwt.pem=key:SIGNING, hist=HISTORIC;history=3, both=PINNED-AND-NOT@" + pinnedVer + ", both-latest=PINNED-AND-NOT",
		mapping.AnnotationRotation: "2m",
	}
	noRotation := map[string]string{
		mapping.AnnotationVault:   "ordersvault",
		mapping.AnnotationSecrets: "db.txt=DB-PASSWORD",
	}
	vaults := map[string]string{
		mapping.AnnotationVault: "ordersvault",
		mapping.AnnotationSecrets: "db.txt=DB-PASSWORD, config.json=APP-CONFIG;vault=SharedVault, ca.crt=cert:ROOT-CA;vault=https://pki-kv.vault.azure.net/" +
			", pinned.txt=PINNED@" + pinnedVer + ";vault=sharedvault",
		mapping.AnnotationRotation: "2m",
	}
	const vault = "https://ordersvault.vault.azure.net/"
	native := mutate.Config{NativeSidecars: true}
	withHub := mutate.Config{NativeSidecars: true, HubURL: "https://kvinject-hub.kvinject-system.svc", HubCA: "-----BEGIN CERTIFICATE-----\n"}
	tests := []struct {
		name    string
		ann     map[string]string
		cfg     mutate.Config
		req     *watchRequest
		want    string // refusal reason; "" accepted
		wantMsg string
	}{
		{"native sidecar, one secret", rotating, native, request(vault, "DB-PASSWORD"), "", ""},
		{"native sidecar, all unpinned secrets", rotating, native, request(vault, "DB-PASSWORD", "API-KEY", "HISTORIC", "PINNED-AND-NOT"), "", ""},
		{"with the hub configured", rotating, withHub, request(vault, "API-KEY"), "", ""},
		{"regular sidecar", rotating, mutate.Config{}, request(vault, "API-KEY"), "", ""},
		{"object names are case-insensitive", rotating, native, request(vault, "db-password"), "", ""},
		{"vault without trailing slash, host in capitals", rotating, native, request("https://OrdersVault.vault.azure.net", "DB-PASSWORD"), "", ""},
		{"pinned secret", rotating, native, request(vault, "OLD-KEY"), hubapi.ReasonNotPodObject, `does not read secret "OLD-KEY"`},
		{"certificate entry, as a secret", rotating, native, request(vault, "SERVER-CERT"), hubapi.ReasonNotPodObject, `secret "SERVER-CERT"`},
		{"key entry, as a secret", rotating, native, request(vault, "SIGNING"), hubapi.ReasonNotPodObject, `secret "SIGNING"`},
		{"certificate entry", rotating, native, requestKind(vault, hubapi.KindCertificate, "server-cert"), "", ""},
		{"key entry", rotating, native, requestKind(vault, hubapi.KindKey, "SIGNING"), "", ""},
		{"a secret as a certificate", rotating, native, requestKind(vault, hubapi.KindCertificate, "DB-PASSWORD"), hubapi.ReasonNotPodObject, `certificate "DB-PASSWORD"`},
		{"a certificate as a key", rotating, native, requestKind(vault, hubapi.KindKey, "SERVER-CERT"), hubapi.ReasonNotPodObject, `key "SERVER-CERT"`},
		{"another object", rotating, native, request(vault, "DB-PASSWORD", "SOMEONE-ELSES"), hubapi.ReasonNotPodObject, `"SOMEONE-ELSES"`},
		{"another vault", rotating, native, request("https://othervault.vault.azure.net/", "DB-PASSWORD"), hubapi.ReasonNotPodObject, "reads vault https://ordersvault.vault.azure.net/, not https://othervault.vault.azure.net/"},
		{"same vault name in another cloud", rotating, native, request("https://ordersvault.vault.azure.cn/", "DB-PASSWORD"), hubapi.ReasonNotPodObject, "not https://ordersvault.vault.azure.cn/"},
		{"entry of a second vault, by name", vaults, native, request("https://sharedvault.vault.azure.net/", "APP-CONFIG"), "", ""},
		{"entry of a second vault, by URL", vaults, native, requestKind("https://pki-kv.vault.azure.net", hubapi.KindCertificate, "ROOT-CA"), "", ""},
		{"the pod's vault, with a second vault", vaults, native, request(vault, "DB-PASSWORD"), "", ""},
		{"second vault's object at the pod's vault", vaults, native, request(vault, "APP-CONFIG"), hubapi.ReasonNotPodObject, `does not read secret "APP-CONFIG" of https://ordersvault.vault.azure.net/`},
		{"pod vault's object at the second vault", vaults, native, request("https://sharedvault.vault.azure.net/", "DB-PASSWORD"), hubapi.ReasonNotPodObject, `does not read secret "DB-PASSWORD" of https://sharedvault.vault.azure.net/`},
		{"pinned entry of the second vault", vaults, native, request("https://sharedvault.vault.azure.net/", "PINNED"), hubapi.ReasonNotPodObject, `does not read secret "PINNED"`},
		{"a vault no entry reads", vaults, native, request("https://othervault.vault.azure.net/", "APP-CONFIG"), hubapi.ReasonNotPodObject,
			"reads vaults https://ordersvault.vault.azure.net/, https://pki-kv.vault.azure.net/, https://sharedvault.vault.azure.net/, not https://othervault.vault.azure.net/"},
		{"init-mode agent (no rotation)", noRotation, native, request(vault, "DB-PASSWORD"), hubapi.ReasonNotPodObject, "runs in init mode"},
		{"init-mode agent, regular sidecars", noRotation, mutate.Config{}, request(vault, "DB-PASSWORD"), hubapi.ReasonNotPodObject, "runs in init mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := injectedPod(t, tc.ann, tc.cfg)
			if ref := tc.req.validate(); ref != nil {
				t.Fatalf("validate: %v", ref)
			}
			a := agentOf(pod)
			checkRefusal(t, a.check(tc.req), tc.want, tc.wantMsg)
		})
	}
}

func checkRefusal(t *testing.T, ref *refusal, want, wantMsg string) {
	t.Helper()
	switch {
	case want == "" && ref != nil:
		t.Errorf("refused: %v", ref)
	case want != "" && ref == nil:
		t.Errorf("accepted, want refusal %s", want)
	case want != "" && ref.reason != want:
		t.Errorf("refused %s (%s), want %s", ref.reason, ref.message, want)
	case want != "" && !strings.Contains(ref.message, wantMsg):
		t.Errorf("message %q does not contain %q", ref.message, wantMsg)
	}
}

func TestAuthorizePodsWithoutAWatchingAgent(t *testing.T) {
	const vault = "https://ordersvault.vault.azure.net/"
	base := injectedPod(t, map[string]string{
		mapping.AnnotationVault: "ordersvault", mapping.AnnotationSecrets: "db.txt=DB-PASSWORD", mapping.AnnotationRotation: "1m",
	}, mutate.Config{NativeSidecars: true})
	agentArgs := func(p *corev1.Pod) *[]string { return &p.Spec.InitContainers[0].Args }
	tests := []struct {
		name    string
		edit    func(p *corev1.Pod)
		wantMsg string
	}{
		{"not injected", func(p *corev1.Pod) { p.Spec.InitContainers = nil }, "has no container kvinject-agent"},
		{"arguments that do not parse", func(p *corev1.Pod) { *agentArgs(p) = append(*agentArgs(p), "--no-such-flag") }, "do not parse"},
		{"no arguments", func(p *corev1.Pod) { *agentArgs(p) = nil }, "do not parse"},
		{"probe mode", func(p *corev1.Pod) { *agentArgs(p) = []string{"probe", "--dir=/kvinject/secrets"} }, "runs in probe mode"},
		{"a vault URL of no cloud", func(p *corev1.Pod) {
			for i, a := range *agentArgs(p) {
				if strings.HasPrefix(a, "--vault=") {
					(*agentArgs(p))[i] = "--vault=https://ordersvault.example.com/"
				}
			}
		}, "not a Key Vault URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := base.DeepCopy()
			tc.edit(pod)
			req := request(vault, "DB-PASSWORD")
			if ref := req.validate(); ref != nil {
				t.Fatal(ref)
			}
			checkRefusal(t, agentOf(pod).check(req), hubapi.ReasonNotPodObject, tc.wantMsg)
		})
	}
	// The unedited pod is accepted: the cases above fail for their own reason.
	req := request(vault, "DB-PASSWORD")
	_ = req.validate()
	checkRefusal(t, agentOf(base).check(req), "", "")
}

func TestValidateRequest(t *testing.T) {
	secret := func(name, version string) hubapi.Object {
		return hubapi.Object{Kind: hubapi.KindSecret, Name: name, Version: version}
	}
	many := make([]hubapi.Object, hubapi.MaxObjects+1)
	for i := range many {
		many[i] = secret("S"+strings.Repeat("x", i%100)+string(rune('a'+i%26)), testVersion)
	}
	tests := []struct {
		name    string
		req     hubapi.WatchRequest
		wantMsg string // "" valid
	}{
		{"valid", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: []hubapi.Object{secret("A", testVersion), secret("B", strings.ToUpper(testVersion))}}, ""},
		{"vault name only", hubapi.WatchRequest{Vault: "v1", Objects: []hubapi.Object{secret("A", testVersion)}}, "not a Key Vault URL"},
		{"http vault", hubapi.WatchRequest{Vault: "http://v1.vault.azure.net/", Objects: []hubapi.Object{secret("A", testVersion)}}, "not a Key Vault URL"},
		{"foreign host", hubapi.WatchRequest{Vault: "https://v1.example.com/", Objects: []hubapi.Object{secret("A", testVersion)}}, "not a Key Vault URL"},
		{"no objects", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/"}, "0 objects"},
		{"too many objects", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: many}, "1025 objects"},
		{"certificate", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: []hubapi.Object{{Kind: "cert", Name: "A", Version: testVersion}}}, `use "secret", "certificate" or "key"`},
		{"bad name", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: []hubapi.Object{secret("a_b", testVersion)}}, "not a Key Vault object name"},
		{"no version", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: []hubapi.Object{secret("A", "")}}, "not a version id"},
		{"short version", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: []hubapi.Object{secret("A", "0123")}}, "not a version id"},
		{"twice", hubapi.WatchRequest{Vault: "https://vault1.vault.azure.net/", Objects: []hubapi.Object{secret("A", testVersion), secret("a", testVersion)}}, "named twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := &watchRequest{WatchRequest: tc.req}
			ref := req.validate()
			if tc.wantMsg == "" {
				if ref != nil {
					t.Fatalf("refused: %v", ref)
				}
				if req.vault != "https://vault1.vault.azure.net/" {
					t.Errorf("vault %q", req.vault)
				}
				return
			}
			checkRefusal(t, ref, hubapi.ReasonBadRequest, tc.wantMsg)
		})
	}
}
