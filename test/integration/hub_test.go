//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/hub"
	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testcert"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// inProcessHub is the real hub Server and vaults.Hub, run in the test's
// process over real TLS on 127.0.0.1, against the real API server as a
// Kubernetes user holding exactly the install's hub ClusterRole's rules
// (env.HubRules), and against the emulator as an Azure identity granted
// list only.
type inProcessHub struct {
	server   *hub.Server
	url      string
	client   *http.Client
	clientID string
	logs     *lockedBuffer
}

// lockedBuffer collects the hub's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// hubIdentity gives the in-process hub a Kubernetes user bound to the
// install's hub rules and a workload identity (federated with a ServiceAccount
// of its own namespace) granted list on vaults. It returns the hub's
// API server client and vaults.Options with its Key Vault client builders
// (secrets, certificates, keys).
func hubIdentity(t *testing.T, clientID string, vaultNames ...string) (kubernetes.Interface, vaults.Options) {
	t.Helper()
	ctx := context.Background()
	ns := newNamespace(t, nil, map[string]map[string]string{"kvinject-hub": nil})
	user, err := env.API.AddUser(envtest.User{Name: "kvinject-hub-" + ns, Groups: []string{"system:authenticated"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := env.HubRules()
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "hub-" + ns}, Rules: rules}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "hub-" + ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "kvinject-hub-" + ns}},
	}
	mustCreate(t, role)
	mustCreate(t, binding)
	kube, err := kubernetes.NewForConfig(user.Config())
	if err != nil {
		t.Fatal(err)
	}

	tenant := env.Emulator.TenantID()
	if err := env.RegisterWorkloadIdentity(clientID, tenant, ns, "kvinject-hub"); err != nil {
		t.Fatal(err)
	}
	for _, v := range vaultNames {
		if err := env.Emulator.Grant(v, clientID, emulator.PermList); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := env.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "kvinject-hub", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{mutate.TokenAudience}, ExpirationSeconds: ptr(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	azEnv := agent.Env{ClientID: clientID, TenantID: tenant, TokenFile: tokenFile, TestCAFile: env.CAFile, TestResolve: env.ResolveOverride()}
	clients := func(u string) (*agent.Clients, error) {
		// As cmd/hub builds them: the agent's builder, no SDK retries.
		c, err := agent.NewClients(u, agentconfig.IdentityWorkload, azEnv, policy.RetryOptions{MaxRetries: -1}, slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		t.Cleanup(c.Transport.CloseIdleConnections)
		return c, nil
	}
	vo := vaults.Options{
		Client: func(u string) (*azsecrets.Client, error) {
			c, err := clients(u)
			if err != nil {
				return nil, err
			}
			return c.Secrets, nil
		},
		CertificateClient: func(u string) (*azcertificates.Client, error) {
			c, err := clients(u)
			if err != nil {
				return nil, err
			}
			return c.Certificates, nil
		},
		KeyClient: func(u string) (*azkeys.Client, error) {
			c, err := clients(u)
			if err != nil {
				return nil, err
			}
			return c.Keys, nil
		},
	}
	return kube, vo
}

// startHub runs a hub in process until the test ends: vo's clients and kinds,
// a sweep every 500 ms.
func startHub(t *testing.T, kube kubernetes.Interface, vo vaults.Options, clientID string, opts hub.Options) *inProcessHub {
	t.Helper()
	h := &inProcessHub{clientID: clientID, logs: &lockedBuffer{}}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	vo.SweepInterval, vo.Logger = 500*time.Millisecond, log
	vh, err := vaults.New(vo)
	if err != nil {
		t.Fatal(err)
	}
	opts.Kube, opts.Vaults, opts.Logger = kube, vh, log
	if h.server, err = hub.NewServer(opts); err != nil {
		t.Fatal(err)
	}
	sc, err := testcert.New("kvinject-hub CA (integration)", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := sc.Cert, sc.Pool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "https://" + ln.Addr().String() + hubapi.WatchPath
	ctx, cancel := context.WithCancel(context.Background())
	served, ran := make(chan error, 1), make(chan error, 1)
	go func() { ran <- vh.Run(ctx) }()
	go func() {
		served <- h.server.Serve(ctx, ln, hub.TLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }))
	}()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	h.client = &http.Client{Transport: tr, Timeout: time.Minute}
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("hub Serve: %v", err)
		}
		<-ran
		tr.CloseIdleConnections()
	})
	return h
}

// hubAnswer is an answer of the hub.
type hubAnswer struct {
	status  int
	changed []hubapi.Object
	poll    []hubapi.Polled
	refusal *hubapi.Refusal
	took    time.Duration
}

// watch sends one watch request with token.
func (h *inProcessHub) watch(t *testing.T, token, vaultURL string, objs ...hubapi.Object) hubAnswer {
	t.Helper()
	body, _ := json.Marshal(hubapi.WatchRequest{Vault: vaultURL, Objects: objs})
	req, _ := http.NewRequest(http.MethodPost, h.url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer resp.Body.Close()
	a := hubAnswer{status: resp.StatusCode, took: time.Since(start)}
	if resp.StatusCode == http.StatusOK {
		var wr hubapi.WatchResponse
		if err := json.NewDecoder(resp.Body).Decode(&wr); err != nil {
			t.Fatal(err)
		}
		a.changed, a.poll = wr.Changed, wr.Poll
	} else {
		a.refusal = hubapi.ReadRefusal(resp)
	}
	return a
}

// expectRefusal checks that an answer is the refusal wanted.
func expectRefusal(t *testing.T, what string, a hubAnswer, status int, reason string) {
	t.Helper()
	if a.status != status || a.refusal == nil || a.refusal.Reason != reason {
		t.Errorf("%s: answer %d %+v %+v, want %d %s", what, a.status, a.changed, a.refusal, status, reason)
		return
	}
	t.Logf("%s: %d %s: %s", what, a.status, a.refusal.Reason, a.refusal.Message)
}

// podToken mints a token of the pod's ServiceAccount with the audience,
// bound to the pod unless pod.UID is empty; a real projected token.
func podToken(t *testing.T, pod *corev1.Pod, audience string) string {
	t.Helper()
	spec := authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr(int64(mutate.HubTokenExpirationSeconds))}
	if pod.UID != "" {
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := env.Kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName,
		&authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("minting a token for %s: %v", pod.Name, err)
	}
	return tr.Status.Token
}

func secretObject(name, version string) hubapi.Object {
	return hubapi.Object{Kind: hubapi.KindSecret, Name: name, Version: version}
}

// TestHubOnTheRealAPIServer runs the hub against the real API server
// (TokenReview of real projected tokens bound to pods the webhook injected,
// pod lookups as a user holding only the install's hub rules) and the
// emulator: a valid watch hears of a new version; wrong audience, another
// pod's objects, a made-up version, a token of no pod and a deleted pod are
// refused; and the hub's identity never reads a value.
func TestHubOnTheRealAPIServer(t *testing.T) {
	const (
		appID  = "c0ffee16-0000-4000-8000-000000000001"
		hubID  = "c0ffee16-0000-4000-8000-0000000000a1"
		vault  = "hub-server-vault"
		vaultU = "https://" + vault + ".vault.azure.net/"
	)
	ns := workloadNamespace(t, vault, appID, emulator.PermGet)
	apiV1 := setSecret(t, vault, "API-KEY", "hub-api-key-1")
	dbV1 := setSecret(t, vault, "DB-PASSWORD", "hub-db-password-1")
	pinned := setSecret(t, vault, "PINNED", "hub-pinned-1")
	otherV1 := setSecret(t, vault, "OTHER-SECRET", "hub-other-1")

	ordersAnnotations := map[string]string{
		mapping.AnnotationVault:    vault,
		mapping.AnnotationSecrets:  "api.txt=API-KEY, db.txt=DB-PASSWORD, pinned.txt=PINNED@" + pinned,
		mapping.AnnotationRotation: "1m",
	}
	newOrders := func() *corev1.Pod {
		p := appPod(ns, "orders", ordersAnnotations)
		p.Spec.ServiceAccountName = "app"
		return p
	}
	orders := newOrders()
	mustCreate(t, orders) // the webhook injects the rotating agent
	agentArgs := findContainer(t, orders, mapping.AgentContainerName).Args
	if len(agentArgs) == 0 || agentArgs[0] != agentconfig.ModeSidecar {
		t.Fatalf("the webhook did not inject a rotating agent: %q", agentArgs)
	}
	neighbour := appPod(ns, "neighbour", map[string]string{
		mapping.AnnotationVault: vault, mapping.AnnotationSecrets: "other.txt=OTHER-SECRET", mapping.AnnotationRotation: "1m",
	})
	neighbour.Spec.ServiceAccountName = "app"
	mustCreate(t, neighbour)

	kube, vo := hubIdentity(t, hubID, vault)
	h := startHub(t, kube, vo, hubID, hub.Options{MaxWait: 30 * time.Second})
	// A second replica that never caches pods, to show what a cached review
	// of a deleted pod's token meets.
	h2 := startHub(t, kube, vo, hubID, hub.Options{MaxWait: 30 * time.Second, PodCacheTTL: -1})

	ordersToken := podToken(t, orders, hubapi.Audience)
	var tokens []string
	tokens = append(tokens, ordersToken)

	// A valid watch is held, then answered with the new version.
	secretValues = append(secretValues, "hub-api-key-2")
	go func() {
		time.Sleep(2 * time.Second)
		env.Emulator.SetSecret(vault, "API-KEY", "hub-api-key-2")
	}()
	a := h.watch(t, ordersToken, vaultU, secretObject("API-KEY", apiV1), secretObject("DB-PASSWORD", dbV1))
	apiV2, _ := env.Emulator.Secret(vault, "API-KEY")
	if a.status != http.StatusOK || len(a.changed) != 1 || a.changed[0] != secretObject("API-KEY", apiV2.Version) {
		t.Fatalf("valid watch: %d %+v %+v, want API-KEY@%s", a.status, a.changed, a.refusal, apiV2.Version)
	}
	if a.took < 1500*time.Millisecond || a.took > 15*time.Second {
		t.Errorf("the change was answered after %v: want after it was made (2s) and within a few sweeps", a.took)
	}
	t.Logf("valid watch: held %v, answered %+v", a.took, a.changed)
	// Holding the newest version, the watch is held (here: until the client gives up).
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	body, _ := json.Marshal(hubapi.WatchRequest{Vault: vaultU, Objects: []hubapi.Object{secretObject("API-KEY", apiV2.Version)}})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+ordersToken)
	if resp, err := h.client.Do(req); err == nil {
		resp.Body.Close()
		t.Errorf("a watch of the newest version was answered %d at once", resp.StatusCode)
	}
	cancel()

	// Refusals.
	wrongAudience := podToken(t, orders, mutate.TokenAudience)
	neighbourToken := podToken(t, neighbour, hubapi.Audience)
	noPod := podToken(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "none"}, Spec: corev1.PodSpec{ServiceAccountName: "app"}}, hubapi.Audience)
	tokens = append(tokens, wrongAudience, neighbourToken, noPod)
	expectRefusal(t, "audience api://AzureADTokenExchange", h.watch(t, wrongAudience, vaultU, secretObject("API-KEY", apiV2.Version)), 401, hubapi.ReasonUnauthenticated)
	expectRefusal(t, "a token of no pod", h.watch(t, noPod, vaultU, secretObject("API-KEY", apiV2.Version)), 401, hubapi.ReasonNotAPod)
	expectRefusal(t, "another pod's objects", h.watch(t, neighbourToken, vaultU, secretObject("API-KEY", apiV2.Version)), 403, hubapi.ReasonNotPodObject)
	expectRefusal(t, "a pinned object", h.watch(t, ordersToken, vaultU, secretObject("PINNED", pinned)), 403, hubapi.ReasonNotPodObject)
	expectRefusal(t, "a made-up version", h.watch(t, ordersToken, vaultU, secretObject("API-KEY", "0123456789abcdef0123456789abcdef")), 403, hubapi.ReasonUnknownVersion)
	expectRefusal(t, "another object's version", h.watch(t, ordersToken, vaultU, secretObject("API-KEY", otherV1)), 403, hubapi.ReasonUnknownVersion)
	// The neighbour may watch its own object.
	if a := h.watch(t, neighbourToken, vaultU, secretObject("OTHER-SECRET", apiV1)); a.status != 403 || a.refusal.Reason != hubapi.ReasonUnknownVersion {
		t.Errorf("neighbour, own object, another object's version: %d %+v", a.status, a.refusal)
	}

	// The pod is deleted and recreated under its name (a new UID).
	usedOnH2 := ordersToken
	if a := h2.watch(t, usedOnH2, vaultU, secretObject("API-KEY", apiV1)); a.status != http.StatusOK || len(a.changed) != 1 {
		t.Fatalf("second replica before the deletion: %d %+v %+v", a.status, a.changed, a.refusal)
	}
	unused := podToken(t, orders, hubapi.Audience) // minted for the old pod, never presented yet
	tokens = append(tokens, unused)
	if err := env.Kube.CoreV1().Pods(ns).Delete(context.Background(), "orders", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := env.Kube.CoreV1().Pods(ns).Get(context.Background(), "orders", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod orders was not deleted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	recreated := newOrders()
	mustCreate(t, recreated)
	if recreated.UID == orders.UID {
		t.Fatal("the recreated pod has the old UID")
	}
	// Wait until the API server itself refuses the old pod's token (its
	// informers see the new pod within moments).
	for deadline := time.Now().Add(20 * time.Second); ; {
		tr, err := env.Kube.AuthenticationV1().TokenReviews().Create(context.Background(), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: unused, Audiences: []string{hubapi.Audience}}}, metav1.CreateOptions{})
		if err == nil && !tr.Status.Authenticated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server still accepts the deleted pod's token: %v %+v", err, tr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	expectRefusal(t, "the deleted pod's token, never seen", h.watch(t, unused, vaultU, secretObject("API-KEY", apiV2.Version)), 401, hubapi.ReasonUnauthenticated)
	expectRefusal(t, "the deleted pod's token, review cached", h2.watch(t, usedOnH2, vaultU, secretObject("API-KEY", apiV2.Version)), 403, hubapi.ReasonPodMismatch)
	// The new pod's own token works.
	newToken := podToken(t, recreated, hubapi.Audience)
	tokens = append(tokens, newToken)
	if a := h.watch(t, newToken, vaultU, secretObject("API-KEY", apiV1)); a.status != http.StatusOK || len(a.changed) != 1 || a.changed[0].Version != apiV2.Version {
		t.Errorf("recreated pod: %d %+v %+v", a.status, a.changed, a.refusal)
	}

	// The hub's identity only listed: no value read, and values never in its logs.
	if n := env.Emulator.ValueReads(hubID); n != 0 {
		t.Errorf("the hub's identity sent %d value reads, want 0", n)
	}
	if n := env.Emulator.ListRequests(hubID); n == 0 {
		t.Error("the hub's identity sent no list request: is the emulator counting it?")
	}
	for _, h := range []*inProcessHub{h, h2} {
		logs := h.logs.String()
		noSecretIn(t, "the hub's log", logs)
		for _, tok := range tokens {
			if strings.Contains(logs, tok) || strings.Contains(logs, tok[strings.LastIndex(tok, ".")+1:]) {
				t.Error("the hub's log contains a token")
			}
		}
	}
	t.Logf("Key Vault calls by the hub: %d list requests, %d value reads", env.Emulator.ListRequests(hubID), env.Emulator.ValueReads(hubID))
}

// watchAfter sends a watch request and makes change run 2 s later, while the
// hub holds the request; it returns the answer and what change returned.
func (h *inProcessHub) watchAfter(t *testing.T, change func() string, token, vaultURL string, objs ...hubapi.Object) (hubAnswer, string) {
	t.Helper()
	done := make(chan string, 1)
	go func() {
		time.Sleep(2 * time.Second)
		done <- change()
	}()
	a := h.watch(t, token, vaultURL, objs...)
	return a, <-done
}

// TestHubWatchesCertificatesAndKeys runs the hub with --watch-kinds
// secret,certificate,key on the real API server: a pod's watch of its
// certificate and key (real projected token) hears of one rotation of each,
// through the hub's sweeps of certificates and keys with list-only access
// (access policy); another pod's certificate and a version of another
// object are refused; a hub that watches secrets only answers them to poll;
// and the hub's identity reads no value.
func TestHubWatchesCertificatesAndKeys(t *testing.T) {
	const (
		appID  = "c0ffee16-0000-4000-8000-000000000002"
		hubID  = "c0ffee16-0000-4000-8000-0000000000a2"
		vault  = "hub-kinds-vault"
		vaultU = "https://" + vault + ".vault.azure.net/"
	)
	ns := workloadNamespace(t, vault, appID, emulator.PermGet, emulator.PermCertificatesGet, emulator.PermKeysGet)
	apiV1 := setSecret(t, vault, "API-KEY", "hub-kinds-api-key-1")
	newCert := func() string {
		ch, err := emulator.NewTestChain("tls.kinds.example", "EC")
		if err != nil {
			t.Error(err)
			return ""
		}
		v, err := env.Emulator.ImportCertificate(vault, "TLS-CERT", ch.LeafKey, ch.Chain())
		if err != nil {
			t.Error(err)
		}
		return v
	}
	newKey := func() string {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Error(err)
			return ""
		}
		v, err := env.Emulator.SetKey(vault, "SIGNING-KEY", k.Public())
		if err != nil {
			t.Error(err)
		}
		return v
	}
	certV1, keyV1 := newCert(), newKey()

	pod := appPod(ns, "tls-app", map[string]string{
		mapping.AnnotationVault:    vault,
		mapping.AnnotationSecrets:  "api.txt=API-KEY, tls.pem=cert:TLS-CERT, jwt.pub=key:SIGNING-KEY",
		mapping.AnnotationRotation: "1m",
	})
	pod.Spec.ServiceAccountName = "app"
	mustCreate(t, pod)
	other := appPod(ns, "other", map[string]string{
		mapping.AnnotationVault: vault, mapping.AnnotationSecrets: "api.txt=API-KEY", mapping.AnnotationRotation: "1m",
	})
	other.Spec.ServiceAccountName = "app"
	mustCreate(t, other)

	kube, vo := hubIdentity(t, hubID, vault)
	// Access policies: list on certificates and keys, nothing else.
	if err := env.Emulator.Grant(vault, hubID, emulator.PermCertificatesList, emulator.PermKeysList); err != nil {
		t.Fatal(err)
	}
	secretsOnly := vo
	vo.Kinds = []string{hubapi.KindSecret, hubapi.KindCertificate, hubapi.KindKey}
	h := startHub(t, kube, vo, hubID, hub.Options{MaxWait: 30 * time.Second})
	token := podToken(t, pod, hubapi.Audience)
	cert := func(v string) hubapi.Object {
		return hubapi.Object{Kind: hubapi.KindCertificate, Name: "TLS-CERT", Version: v}
	}
	key := func(v string) hubapi.Object {
		return hubapi.Object{Kind: hubapi.KindKey, Name: "SIGNING-KEY", Version: v}
	}

	// One rotation of the certificate, then one of the key, each reaching
	// the pod's held watch.
	a, certV2 := h.watchAfter(t, newCert, token, vaultU, secretObject("API-KEY", apiV1), cert(certV1), key(keyV1))
	if a.status != http.StatusOK || len(a.changed) != 1 || a.changed[0] != cert(certV2) || a.took < 1500*time.Millisecond {
		t.Fatalf("certificate rotation: %d %+v %+v after %v, want TLS-CERT@%s after the change", a.status, a.changed, a.refusal, a.took, certV2)
	}
	t.Logf("certificate rotation: held %v, answered %+v", a.took, a.changed)
	a, keyV2 := h.watchAfter(t, newKey, token, vaultU, secretObject("API-KEY", apiV1), cert(certV2), key(keyV1))
	if a.status != http.StatusOK || len(a.changed) != 1 || a.changed[0] != key(keyV2) || a.took < 1500*time.Millisecond {
		t.Fatalf("key rotation: %d %+v %+v after %v, want SIGNING-KEY@%s after the change", a.status, a.changed, a.refusal, a.took, keyV2)
	}
	t.Logf("key rotation: held %v, answered %+v", a.took, a.changed)

	// Refusals, as for secrets.
	otherToken := podToken(t, other, hubapi.Audience)
	expectRefusal(t, "another pod's certificate", h.watch(t, otherToken, vaultU, cert(certV2)), 403, hubapi.ReasonNotPodObject)
	expectRefusal(t, "a secret's version as the key's", h.watch(t, token, vaultU, key(apiV1)), 403, hubapi.ReasonUnknownVersion)
	expectRefusal(t, "a made-up certificate version", h.watch(t, token, vaultU, cert("0123456789abcdef0123456789abcdef")), 403, hubapi.ReasonUnknownVersion)

	// A hub that watches secrets only answers the certificate and key at once, to poll.
	h2 := startHub(t, kube, secretsOnly, hubID, hub.Options{MaxWait: 30 * time.Second})
	a = h2.watch(t, token, vaultU, secretObject("API-KEY", apiV1), cert(certV2), key(keyV2))
	if a.status != http.StatusOK || len(a.poll) != 2 || a.poll[0].Reason != hubapi.PollKindNotWatched || a.took > 10*time.Second {
		t.Errorf("secrets-only hub: %d poll %+v %+v after %v, want the certificate and key to poll at once", a.status, a.poll, a.refusal, a.took)
	}

	// The hub's identity only listed.
	if n := env.Emulator.ValueReads(hubID); n != 0 {
		t.Errorf("the hub's identity sent %d value reads, want 0", n)
	}
	if n := env.Emulator.ListRequests(hubID); n == 0 {
		t.Error("the hub's identity sent no list request")
	}
	noSecretIn(t, "the hub's log", h.logs.String())
	t.Logf("Key Vault calls by the hub: %d list requests, %d value reads", env.Emulator.ListRequests(hubID), env.Emulator.ValueReads(hubID))
}
