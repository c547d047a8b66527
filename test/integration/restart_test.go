//go:build integration

package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"

	"sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/internal/restarter"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/internal/testing/testenv"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// TestRestartThroughTheHub: a secret rotates; the agent of a Deployment's pod
// (webhook-injected, with kvinject.dev/on-change: restart on the Deployment's
// template) swaps in the new set and reports it to the real hub process; the
// restart controller, authenticated to the hub with its own ServiceAccount's
// token and to the API server with the install's ClusterRole bound in the
// pod's namespace only, verifies the chain pod -> ReplicaSet -> Deployment and
// rolls the Deployment by its template annotation, once, with an Event.
func TestRestartThroughTheHub(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const restarterNS, restarterSA = "kvinject-system", "kvinject-restarter"
	e, err := testenv.Start(ctx, testenv.Options{
		WebhookArgs: append(append([]string(nil), webhookFlags...), "--restart-action=true"),
		BinDir:      env.BinDir, Log: testWriter{t},
		Hub: true, HubSweepInterval: time.Second,
		HubArgs: []string{"--restarter-service-account=" + restarterNS + "/" + restarterSA},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- hub log ---\n%s", e.HubLog())
		}
		e.Stop()
	})

	const vault, clientID, ns = "restart-vault", "e7e7e7e7-0000-4000-8000-000000000018", "shop"
	tenant := e.Emulator.TenantID()
	if err := e.Emulator.AddVault(vault, emulator.VaultOptions{TenantID: tenant}); err != nil {
		t.Fatal(err)
	}
	e.Emulator.SetSecret(vault, "DB-PASSWORD", "restart-db-password-1")
	if err := e.Emulator.Grant(vault, clientID, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	if err := e.GrantHub(vault); err != nil {
		t.Fatal(err)
	}
	if err := e.RegisterWorkloadIdentity(clientID, tenant, ns, "app"); err != nil {
		t.Fatal(err)
	}
	if err := e.EnsureNamespace(ctx, ns, nil, nil, map[string]map[string]string{
		"default": nil, "app": {mapping.AnnotationWIClientID: clientID, mapping.AnnotationWITenantID: tenant},
	}); err != nil {
		t.Fatal(err)
	}

	// The restarter: its ServiceAccount, a pod its hub token is bound to, the
	// install's ClusterRole bound in ns only (the opt-in).
	if err := e.EnsureNamespace(ctx, restarterNS, nil, nil, map[string]map[string]string{"default": nil, restarterSA: nil}); err != nil {
		t.Fatal(err)
	}
	rpod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: restarterNS, Name: "kvinject-restarter-0"},
		Spec: corev1.PodSpec{ServiceAccountName: restarterSA, Containers: []corev1.Container{{Name: "restarter", Image: "ghcr.io/kvinject/restarter:v0.1.0"}}}}
	if err := e.Client.Create(ctx, rpod); err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := readManifest(filepath.Join(e.Root, "manifests/components/restarter/restarter-rbac.yaml"), "ClusterRole", &role); err != nil {
		t.Fatal(err)
	}
	role.ResourceVersion = ""
	if err := e.Client.Create(ctx, &role); err != nil {
		t.Fatal(err)
	}
	if err := e.Client.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kvinject-restarter"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: restarterSA, Namespace: restarterNS}},
	}); err != nil {
		t.Fatal(err)
	}
	token := func(audiences []string, bound *corev1.Pod) string {
		spec := authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr(int64(3600))}
		if bound != nil {
			spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: bound.Name, UID: bound.UID}
		}
		tr, err := e.Kube.CoreV1().ServiceAccounts(restarterNS).CreateToken(ctx, restarterSA, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	hubTokenFile := filepath.Join(t.TempDir(), "hub-token")
	if err := os.WriteFile(hubTokenFile, []byte(token([]string{hubapi.Audience}, rpod)), 0o600); err != nil {
		t.Fatal(err)
	}
	rkube := kubernetes.NewForConfigOrDie(&rest.Config{Host: e.Config.Host, BearerToken: token(nil, nil), TLSClientConfig: rest.TLSClientConfig{CAData: e.Config.CAData}})

	// The Deployment (envtest runs no controller-manager: its ReplicaSet and
	// pod are made here, the pod through the webhook like any pod).
	tmpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: map[string]string{"app": "web", mapping.LabelInject: "true"},
			Annotations: map[string]string{
				mapping.AnnotationVault: vault, mapping.AnnotationSecrets: "db.txt=DB-PASSWORD",
				mapping.AnnotationRotation: "1h", mapping.AnnotationOnChange: "restart",
			},
		},
		Spec: corev1.PodSpec{ServiceAccountName: "app", SecurityContext: &corev1.PodSecurityContext{FSGroup: ptr(int64(2000))},
			Containers: []corev1.Container{{Name: "app", Image: "contoso.azurecr.io/app:1"}}},
	}
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: appsv1.DeploymentSpec{Selector: sel, Template: tmpl}}
	if err := e.Client.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	yes := true
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-6b7d9", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: &yes}}},
		Spec:       appsv1.ReplicaSetSpec{Selector: sel, Template: tmpl},
	}
	if err := e.Client.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
	pod.Namespace, pod.Name = ns, "web-6b7d9-q2x4z"
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}}
	if err := e.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	a, err := e.StartAgent(ctx, pod, mapping.AgentContainerName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	eventually(t, "the agent holds a watch", 20*time.Second, func() bool {
		text, err := e.HubMetrics()
		return err == nil && testenv.MetricSum(text, "kvinject_hub_held_requests") == 1
	}, a.Output)

	// The restarter, in process: the hub's feed through its one replica.
	caPEM, err := os.ReadFile(e.HubCAFile())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var logs lockedBuffer
	log := newTestLogger(&logs)
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: rkube.CoreV1().Events("")})
	defer bc.Shutdown()
	m := restarter.NewMetrics()
	ctl := restarter.New(restarter.Options{Kube: rkube, Recorder: bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kvinject-restarter"}),
		Debounce: 500 * time.Millisecond, ServiceAccount: restarterNS + "/" + restarterSA, Logger: log, Metrics: m})
	host, port, _ := net.SplitHostPort(e.HubAddr())
	fctx, stopFeeds := context.WithCancel(ctx)
	fed := make(chan error, 1)
	go func() {
		fed <- restarter.Feeds(fctx, restarter.FeedOptions{
			HubURL: testenv.HubURL, Peers: "kvinject-hub-peers.kvinject-system.svc:" + port, RootCAs: roots, TokenFile: hubTokenFile,
			Resolve: func(context.Context, string) ([]string, error) { return []string{host}, nil },
			Handle:  func(ctx context.Context, ch hubapi.Change) { ctl.Handle(ctx, ch) }, Logger: log, Metrics: m,
		})
	}()
	defer func() { stopFeeds(); <-fed; ctl.Stop(); ctl.Wait() }()
	time.Sleep(time.Second) // the feed request is held

	rotated := time.Now()
	e.Emulator.SetSecret(vault, "DB-PASSWORD", "restart-db-password-2")
	var restartedAt string
	eventually(t, "the Deployment is restarted", 30*time.Second, func() bool {
		d, err := e.Kube.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false
		}
		restartedAt = d.Spec.Template.Annotations[mapping.AnnotationRestartedAt]
		return restartedAt != ""
	}, func() string { return a.Output() + "\n--- restarter ---\n" + logs.String() })
	t.Logf("from the new version to the Deployment's restart: %s (sweep 1 s, debounce 0.5 s)", time.Since(rotated).Round(10*time.Millisecond))
	if !strings.Contains(a.Output(), "restart") {
		t.Errorf("the agent's log does not mention its report:\n%s", a.Output())
	}
	eventually(t, "an Event on the Deployment", 10*time.Second, func() bool {
		evs, err := e.Kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Deployment,involvedObject.name=web"})
		if err != nil {
			return false
		}
		for _, ev := range evs.Items {
			if ev.Reason == restarter.ReasonRestarted && strings.Contains(ev.Message, "secret/DB-PASSWORD changed (reported by pod "+pod.Name+")") {
				return true
			}
		}
		return false
	}, logs.String)
	for what, text := range map[string]string{"agent": a.Output(), "restarter": logs.String(), "hub": e.HubLog()} {
		for _, v := range []string{"restart-db-password-1", "restart-db-password-2"} {
			if strings.Contains(text, v) {
				t.Errorf("the %s's log holds a secret value", what)
			}
		}
	}
}

// newTestLogger logs JSON lines into w.
func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// readManifest decodes the first object of kind in a YAML file of the
// repository's manifests into into.
func readManifest(path, kind string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if tm.Kind == kind {
			return yaml.UnmarshalStrict([]byte(doc), into)
		}
	}
	return fmt.Errorf("%s holds no %s", path, kind)
}
