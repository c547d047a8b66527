//go:build integration

package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// replica is one webhook process, started as the Deployment's pod template says.
type replica struct {
	name    string
	cmd     *exec.Cmd
	addr    string // the webhook's TLS listener, 127.0.0.1:port
	probe   string // the health probes' listener
	metrics string
	certDir string
	logFile string
	exited  chan struct{}
}

// log returns what the replica logged.
func (r *replica) log() string {
	b, _ := os.ReadFile(r.logFile)
	return string(b)
}

// stop sends SIGTERM, as the kubelet does, and waits (SIGKILL after 15s).
func (r *replica) stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.exited:
	case <-time.After(15 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

// podSpecArgs turns the Deployment's container into a local command line: its
// args after the kubelet's $(VAR) expansion (env from the ConfigMaps the API
// server holds and the downward API), with the listeners moved to free ports on
// 127.0.0.1 and the certificate folder to certDir. It checks on the way that the
// flags agree with the pod template: --port is the container port the Service
// targets, --health-probe-bind-address the port the probes use, and --cert-dir
// the mount path of the certificate volume.
func (c *cluster) podSpecArgs(t *testing.T, in *install, certDir string) (args, env []string, r *replica) {
	t.Helper()
	ctr := in.container(t)
	vars := map[string]string{}
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			vars[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			vars[e.Name] = in.namespace
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := c.kube.CoreV1().ConfigMaps(in.namespace).Get(context.Background(), ref.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("env %s: %v", e.Name, err)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				t.Fatalf("env %s: ConfigMap %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			vars[e.Name] = v
		default:
			t.Fatalf("env %s: unsupported source %+v", e.Name, e.ValueFrom)
		}
		env = append(env, e.Name+"="+vars[e.Name])
	}
	portOf := func(p intstr.IntOrString) int {
		if p.Type == intstr.Int {
			return p.IntValue()
		}
		for _, cp := range ctr.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort)
			}
		}
		t.Fatalf("%s: no container port named %q", in.name, p.StrVal)
		return 0
	}
	var targetPort int
	for _, sp := range in.service.Spec.Ports {
		if in.webhook.Webhooks[0].ClientConfig.Service.Port != nil && sp.Port == *in.webhook.Webhooks[0].ClientConfig.Service.Port {
			targetPort = portOf(sp.TargetPort)
		}
	}
	if targetPort == 0 {
		t.Fatalf("%s: the Service has no port %v, which the webhook configuration calls", in.name, in.webhook.Webhooks[0].ClientConfig.Service.Port)
	}
	probePort := portOf(ctr.ReadinessProbe.HTTPGet.Port)
	if lp := portOf(ctr.LivenessProbe.HTTPGet.Port); lp != probePort {
		t.Fatalf("%s: readiness (%d) and liveness (%d) probes use different ports", in.name, probePort, lp)
	}
	certMount := ""
	for _, m := range ctr.VolumeMounts {
		if m.Name == "certs" {
			certMount = m.MountPath
		}
	}

	r = &replica{certDir: certDir}
	seen := map[string]bool{}
	for _, a := range ctr.Args {
		a = expandVars(a, vars)
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		seen[name] = true
		switch name {
		case "port":
			if value != strconv.Itoa(targetPort) {
				t.Fatalf("%s: --port=%s, but the Service targets container port %d", in.name, value, targetPort)
			}
			r.addr = freeAddr(t)
			a = "--port=" + portPart(r.addr)
		case "health-probe-bind-address":
			if !strings.HasSuffix(value, ":"+strconv.Itoa(probePort)) {
				t.Fatalf("%s: --health-probe-bind-address=%s, but the probes use port %d", in.name, value, probePort)
			}
			r.probe = freeAddr(t)
			a = "--health-probe-bind-address=" + r.probe
		case "metrics-bind-address":
			r.metrics = freeAddr(t)
			a = "--metrics-bind-address=" + r.metrics
		case "cert-dir":
			if value != certMount {
				t.Fatalf("%s: --cert-dir=%s, but the certificate volume is mounted at %q", in.name, value, certMount)
			}
			a = "--cert-dir=" + certDir
		case "kubeconfig", "host":
			t.Fatalf("%s: the pod template sets --%s", in.name, name)
		}
		args = append(args, a)
	}
	for _, required := range []string{"port", "health-probe-bind-address", "cert-dir"} {
		if !seen[required] {
			t.Fatalf("%s: the pod template does not set --%s", in.name, required)
		}
	}
	return append(args, "--host=127.0.0.1"), env, r
}

// startReplicas starts one webhook process per certificate folder, all at once,
// as the Deployment's pod template says, authenticated by kubeconfig; routes the
// webhook Service's cluster IP to them; and waits until every one is ready. The
// replicas are stopped when the test ends.
func (c *cluster) startReplicas(t *testing.T, in *install, kubeconfig string, certDirs []string, extraArgs ...string) []*replica {
	t.Helper()
	start := time.Now()
	var replicas []*replica
	for i, dir := range certDirs {
		args, env, r := c.podSpecArgs(t, in, dir)
		r.name = fmt.Sprintf("replica-%d", i)
		args = append(append(args, "--kubeconfig="+kubeconfig), extraArgs...)
		r.logFile = filepath.Join(c.work, fmt.Sprintf("%s-%d.log", r.name, time.Now().UnixNano()))
		logf, err := os.Create(r.logFile)
		if err != nil {
			t.Fatal(err)
		}
		r.cmd = exec.Command(webhookBin, args...)
		r.cmd.Stdout, r.cmd.Stderr = logf, logf
		r.cmd.Env = append(filteredEnviron(), env...)
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r.exited = make(chan struct{})
		go func() { _ = r.cmd.Wait(); logf.Close(); close(r.exited) }()
		replicas = append(replicas, r)
		t.Cleanup(func() {
			r.stop()
			if t.Failed() {
				t.Logf("--- %s log (%s) ---\n%s", r.name, strings.Join(r.cmd.Args[1:], " "), r.log())
			}
		})
	}
	c.routeService(t, in, replicas)
	for _, r := range replicas {
		r.waitReady(t, in)
	}
	t.Logf("%d replicas ready in %s", len(replicas), time.Since(start).Round(time.Millisecond))
	return replicas
}

// filteredEnviron is the test's environment without what would change how the
// webhook finds its cluster or namespace.
func filteredEnviron() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KUBECONFIG=") || strings.HasPrefix(kv, "POD_NAMESPACE=") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// routeService sends the API server's connections to the webhook Service's
// cluster IP and port to the replicas.
func (c *cluster) routeService(t *testing.T, in *install, replicas []*replica) {
	t.Helper()
	ref := in.webhook.Webhooks[0].ClientConfig.Service
	svc := &corev1.Service{}
	if err := c.client.Get(context.Background(), types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}, svc); err != nil {
		t.Fatalf("the Service the webhook configuration calls: %v", err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Fatalf("Service %s/%s has no cluster IP", ref.Namespace, ref.Name)
	}
	var backends []string
	for _, r := range replicas {
		backends = append(backends, r.addr)
	}
	c.proxy.route(net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(*ref.Port))), backends)
}

// waitReady waits for the readiness probe's path to answer 200 (and checks the
// liveness probe's), failing with the replica's log.
func (r *replica) waitReady(t *testing.T, in *install) {
	t.Helper()
	ctr := in.container(t)
	deadline := time.Now().Add(90 * time.Second)
	for {
		select {
		case <-r.exited:
			t.Fatalf("%s exited before it was ready:\n%s", r.name, r.log())
		default:
		}
		if code, _ := httpGet("http://" + r.probe + ctr.ReadinessProbe.HTTPGet.Path); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			_, body := httpGet("http://" + r.probe + ctr.ReadinessProbe.HTTPGet.Path + "?verbose")
			t.Fatalf("%s not ready within 90s: %s\n%s", r.name, body, r.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := httpGet("http://" + r.probe + ctr.LivenessProbe.HTTPGet.Path); code != http.StatusOK {
		t.Fatalf("%s: liveness %s answers %d: %s", r.name, ctr.LivenessProbe.HTTPGet.Path, code, body)
	}
}

func httpGet(url string) (int, string) {
	cl := &http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// servedCert returns the certificate the replica presents.
func (r *replica) servedCert() (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", r.addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only reads the certificate
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// verifyAsAPIServer connects to the replica as the API server does: trusting
// only caBundle and verifying the Service's DNS name.
func (r *replica) verifyAsAPIServer(caBundle []byte, serverName string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		return fmt.Errorf("caBundle holds no PEM certificate")
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", r.addr, &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})
	if err != nil {
		return err
	}
	return conn.Close()
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8])
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func portPart(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// serviceDNSName is the name the API server verifies for the webhook's Service.
func (in *install) serviceDNSName() string {
	ref := in.webhook.Webhooks[0].ClientConfig.Service
	return ref.Name + "." + ref.Namespace + ".svc"
}

// loadResult counts what a load loop saw.
type loadResult struct {
	mu       sync.Mutex
	created  int
	failures []string
}

func (l *loadResult) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.failures = append(l.failures, err.Error())
		return
	}
	l.created++
}
