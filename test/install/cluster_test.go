//go:build integration

package install

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// fieldManager applies the rendered installs, as `kubectl apply --server-side` would.
const fieldManager = "kvinject-install-test"

// cluster is a control plane for one test: envtest's kube-apiserver and etcd with
// the ServiceAccount admission plugin on and an egress proxy for webhook calls.
type cluster struct {
	env    *envtest.Environment
	cfg    *rest.Config
	client client.Client
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.RESTMapper
	proxy  *egressProxy
	work   string

	warnMu   sync.Mutex
	warnings []string
}

// startCluster starts a control plane and stops it when the test ends.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	start := time.Now()
	// A short folder: a Unix socket path is limited to 108 bytes.
	work, err := os.MkdirTemp("", "kvi-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{work: work}
	t.Cleanup(func() { os.RemoveAll(work) })

	c.proxy, err = startEgressProxy(filepath.Join(work, "egress.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.proxy.close)
	egress := filepath.Join(work, "egress.yaml")
	if err := os.WriteFile(egress, []byte(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
  # Webhooks called through a Service go through the proxy; nothing else does.
  - name: cluster
    connection:
      proxyProtocol: HTTPConnect
      transport:
        uds:
          udsName: `+c.proxy.path+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	c.env = &envtest.Environment{}
	api := c.env.ControlPlane.GetAPIServer()
	// envtest turns the ServiceAccount admission plugin off; a real cluster has it.
	api.Configure().Set("disable-admission-plugins", "")
	api.Configure().Set("egress-selector-config-file", egress)
	if c.cfg, err = c.env.Start(); err != nil {
		t.Fatalf("starting the control plane: %v", err)
	}
	t.Cleanup(func() {
		if err := c.env.Stop(); err != nil {
			t.Logf("stopping the control plane: %v", err)
		}
	})
	// Every request of the test goes through a config that records warnings, so
	// that an object accepted with a warning (e.g. "would violate PodSecurity")
	// is noticed.
	c.cfg = rest.CopyConfig(c.cfg)
	c.cfg.WarningHandler = c
	c.cfg.QPS, c.cfg.Burst = 500, 1000
	httpClient, err := rest.HTTPClientFor(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c.mapper, err = apiutil.NewDynamicRESTMapper(c.cfg, httpClient); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	if c.client, err = client.New(c.cfg, client.Options{Scheme: scheme, Mapper: c.mapper}); err != nil {
		t.Fatal(err)
	}
	if c.kube, err = kubernetes.NewForConfig(c.cfg); err != nil {
		t.Fatal(err)
	}
	if c.dyn, err = dynamic.NewForConfig(c.cfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane started in %s", time.Since(start).Round(time.Millisecond))
	return c
}

// HandleWarningHeader records the API server's warnings (rest.WarningHandler).
func (c *cluster) HandleWarningHeader(code int, _ string, text string) {
	if code != 299 || text == "" {
		return
	}
	c.warnMu.Lock()
	defer c.warnMu.Unlock()
	c.warnings = append(c.warnings, text)
}

// takeWarnings returns and forgets the warnings recorded so far.
func (c *cluster) takeWarnings() []string {
	c.warnMu.Lock()
	defer c.warnMu.Unlock()
	w := c.warnings
	c.warnings = nil
	return w
}

// kindOrder is the order in which kinds are applied (like kubectl and Helm).
var kindOrder = map[string]int{
	"CustomResourceDefinition": 0, "Namespace": 1, "ServiceAccount": 2, "Secret": 3, "ConfigMap": 3,
	"ClusterRole": 4, "Role": 4, "ClusterRoleBinding": 5, "RoleBinding": 5, "Service": 6,
	"Deployment": 7, "PodDisruptionBudget": 7, "Issuer": 8, "ClusterIssuer": 8, "Certificate": 9,
	"MutatingWebhookConfiguration": 10,
}

// apply applies objs with server-side apply, in kindOrder, and fails the test if
// one is refused or draws a warning.
func (c *cluster) apply(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	sorted := append([]*unstructured.Unstructured(nil), objs...)
	sortByKind(sorted)
	c.takeWarnings()
	for _, obj := range sorted {
		if _, err := c.applyOne(obj); err != nil {
			t.Fatalf("applying %s: %v", describe(obj), err)
		}
		if w := c.takeWarnings(); len(w) > 0 {
			t.Errorf("applying %s drew warnings: %q", describe(obj), w)
		}
	}
}

// sortByKind sorts objs in the order they are applied.
func sortByKind(objs []*unstructured.Unstructured) {
	sort.SliceStable(objs, func(i, j int) bool { return kindRank(objs[i]) < kindRank(objs[j]) })
}

func kindRank(obj *unstructured.Unstructured) int {
	if r, ok := kindOrder[obj.GetKind()]; ok {
		return r
	}
	return 8
}

func (c *cluster) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, err
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			return nil, fmt.Errorf("namespaced %s rendered without a namespace", gvk.Kind)
		}
		return c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

func (c *cluster) applyOne(obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	ri, err := c.resource(obj)
	if err != nil {
		return nil, err
	}
	return ri.Apply(context.Background(), obj.GetName(), obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
}

// deleteAll deletes objs in the reverse of their order (like `kubectl delete -k`).
func (c *cluster) deleteAll(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for i := len(objs) - 1; i >= 0; i-- {
		ri, err := c.resource(objs[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := ri.Delete(context.Background(), objs[i].GetName(), metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting %s: %v", describe(objs[i]), err)
		}
	}
}

func describe(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() != "" {
		return fmt.Sprintf("%s %s/%s", obj.GetKind(), obj.GetNamespace(), obj.GetName())
	}
	return fmt.Sprintf("%s %s", obj.GetKind(), obj.GetName())
}

// installCRDs applies CRDs and waits until they are served.
func (c *cluster) installCRDs(t *testing.T, crds []*unstructured.Unstructured) {
	t.Helper()
	c.apply(t, crds)
	for _, u := range crds {
		deadline := time.Now().Add(30 * time.Second)
		for {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := c.client.Get(context.Background(), types.NamespacedName{Name: u.GetName()}, crd); err != nil {
				t.Fatal(err)
			}
			established := false
			for _, cond := range crd.Status.Conditions {
				established = established || (cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue)
			}
			if established {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("CRD %s not established within 30s", u.GetName())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// adminKubeconfig writes a kubeconfig for envtest's administrator, for helm.
func (c *cluster) adminKubeconfig(t *testing.T) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.cfg.Host, CertificateAuthorityData: c.cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: c.cfg.CertData, ClientKeyData: c.cfg.KeyData, Token: c.cfg.BearerToken}
	kc.Contexts["admin"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "admin"
	file := filepath.Join(c.work, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, file); err != nil {
		t.Fatal(err)
	}
	return file
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount ns/name with a token from the TokenRequest API, as the
// ServiceAccount's projected token does in a pod, and returns its path and a
// client configuration.
func (c *cluster) serviceAccountKubeconfig(t *testing.T, ns, name string) (string, *rest.Config) {
	t.Helper()
	exp := int64(3600)
	tr, err := c.kube.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("a token for ServiceAccount %s/%s: %v", ns, name, err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: c.cfg.Host, CertificateAuthorityData: c.cfg.CAData}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["sa"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: name}
	kc.CurrentContext = "sa"
	file := filepath.Join(c.work, ns+"-"+name+".kubeconfig")
	if err := clientcmd.WriteToFile(*kc, file); err != nil {
		t.Fatal(err)
	}
	cfg := &rest.Config{Host: c.cfg.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: c.cfg.CAData}, QPS: -1}
	return file, cfg
}

// egressProxy is the HTTP CONNECT proxy the API server's egress selector sends
// webhook connections to. A route maps a Service's clusterIP:port to the local
// replicas behind it, used in turn.
type egressProxy struct {
	path string
	ln   net.Listener

	mu      sync.Mutex
	routes  map[string][]string
	next    map[string]int
	refused []string
	wg      sync.WaitGroup
	conns   map[net.Conn]bool
}

func startEgressProxy(path string) (*egressProxy, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	p := &egressProxy{path: path, ln: ln, routes: map[string][]string{}, next: map[string]int{}, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// route sends connections for target (clusterIP:port) to backends.
func (p *egressProxy) route(target string, backends []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.routes[target] = backends
}

// takeRefused returns the CONNECT targets that had no route.
func (p *egressProxy) takeRefused() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.refused
	p.refused = nil
	return r
}

func (p *egressProxy) serve() {
	defer p.wg.Done()
	for {
		conn, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns[conn] = true
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(conn)
			p.mu.Lock()
			delete(p.conns, conn)
			p.mu.Unlock()
		}()
	}
}

func (p *egressProxy) handle(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		fmt.Fprint(conn, "HTTP/1.1 400 Bad Request\r\n\r\n")
		return
	}
	p.mu.Lock()
	backends := p.routes[req.Host]
	var backend string
	if len(backends) > 0 {
		backend = backends[p.next[req.Host]%len(backends)]
		p.next[req.Host]++
	} else {
		p.refused = append(p.refused, req.Host)
	}
	p.mu.Unlock()
	if backend == "" {
		fmt.Fprint(conn, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	up, err := net.DialTimeout("tcp", backend, 5*time.Second)
	if err != nil {
		fmt.Fprint(conn, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	if _, err := fmt.Fprint(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, br); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(conn, up); closeWrite(conn); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func (p *egressProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// eventually retries f until it succeeds or timeout passes, then fails the test
// with f's last error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
