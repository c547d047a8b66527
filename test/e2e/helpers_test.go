//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// secrets remembers every value stored in the emulator, by secret name, so
// that the node's disk can be scanned for them. Values are never printed.
var secrets struct {
	mu     sync.Mutex
	values map[string]string // value -> "vault/secret"
}

// newValue returns a random secret value (32 random bytes, base64) and
// remembers it.
func newValue(t *testing.T, vault, name string) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	v := "kvinject-e2e-" + base64.RawURLEncoding.EncodeToString(b)
	secrets.mu.Lock()
	defer secrets.mu.Unlock()
	if secrets.values == nil {
		secrets.values = map[string]string{}
	}
	secrets.values[v] = vault + "/" + name
	return v
}

// setSecret stores a new random version of a secret and returns its value.
func setSecret(t *testing.T, vault, name string) string {
	t.Helper()
	v := newValue(t, vault, name)
	env.Emulator.SetSecret(vault, name, v)
	return v
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// workload is a namespace whose ServiceAccount "app" is federated with a
// workload identity, and a vault in the emulator.
type workload struct {
	ns, vault, clientID string
}

// newWorkload creates the namespace (with the kube-root-ca.crt ConfigMap
// that a controller-manager would publish, which every pod's API token
// volume needs), the ServiceAccount, the vault and the federated identity,
// granted 'get' on the vault when grant is true.
func newWorkload(t *testing.T, prefix string, grant bool) workload {
	t.Helper()
	ctx := context.Background()
	r := randomHex(3)
	w := workload{ns: prefix + "-" + r, vault: "e2e-" + prefix[:min(len(prefix), 10)] + "-" + r,
		clientID: fmt.Sprintf("%s-%s-4%s-8%s-%s", randomHex(4), randomHex(2), randomHex(2)[1:], randomHex(2)[1:], randomHex(6))}
	tenant := env.Emulator.TenantID()
	if err := env.EnsureNamespace(ctx, w.ns, nil, nil, map[string]map[string]string{"app": {
		mapping.AnnotationWIClientID: w.clientID, mapping.AnnotationWITenantID: tenant,
	}}); err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(env.Config.CAData)}}
	if _, err := env.Kube.CoreV1().ConfigMaps(w.ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := env.Emulator.AddVault(w.vault, emulator.VaultOptions{TenantID: tenant}); err != nil {
		t.Fatal(err)
	}
	if grant {
		if err := env.Emulator.Grant(w.vault, w.clientID, emulator.PermGet); err != nil {
			t.Fatal(err)
		}
		// The version hub watches the vault with list (metadata) only.
		if err := env.GrantHub(w.vault); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.RegisterWorkloadIdentity(w.clientID, tenant, w.ns, "app"); err != nil {
		t.Fatal(err)
	}
	return w
}

// appArgs are the test app's arguments for the files of a mapping.
func appArgs(mode string, files ...string) []string {
	args := []string{mode, "--dir=/app/secrets", "--token-dir=" + mutate.TokenDir}
	for _, f := range files {
		args = append(args, "--file="+f)
	}
	return args
}

// podTemplate is an opted-in pod template whose app container is the test
// app. It uses the host's network, so that the agent reaches the emulator on
// 127.0.0.1, and never pulls an image.
func podTemplate(name string, annotations map[string]string, restart corev1.RestartPolicy, args []string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels:      map[string]string{"app": name, mapping.LabelInject: mapping.LabelInjectValue},
			Annotations: annotations,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName:            "app",
			HostNetwork:                   true,
			RestartPolicy:                 restart,
			TerminationGracePeriodSeconds: ptr(int64(5)),
			Containers: []corev1.Container{{
				Name:            "app",
				Image:           appImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            args,
				SecurityContext: &corev1.SecurityContext{
					RunAsNonRoot:             ptr(true),
					AllowPrivilegeEscalation: ptr(false),
					ReadOnlyRootFilesystem:   ptr(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
					SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
				},
			}},
		},
	}
}

// deploymentPod validates a Deployment with the template through the API
// server (a dry run: no controller-manager runs here) and returns the pod its
// ReplicaSet would create from it.
func deploymentPod(t *testing.T, ns, name string, tmpl corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: tmpl,
		},
	}
	if _, err := env.Kube.AppsV1().Deployments(ns).Create(context.Background(), d, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatalf("the Deployment is not valid: %v", err)
	}
	hash := randomHex(4)[:8]
	pod := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
	pod.Namespace, pod.Name = ns, name+"-"+hash+"-"+randomHex(3)[:5]
	pod.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
	return pod
}

// jobPod validates a Job with the template through the API server (a dry
// run) and returns the pod the Job controller would create from it.
func jobPod(t *testing.T, ns, name string, tmpl corev1.PodTemplateSpec) *corev1.Pod {
	t.Helper()
	j := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       batchv1.JobSpec{BackoffLimit: ptr(int32(0)), Template: tmpl},
	}
	if _, err := env.Kube.BatchV1().Jobs(ns).Create(context.Background(), j, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Fatalf("the Job is not valid: %v", err)
	}
	pod := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
	pod.Namespace, pod.Name = ns, name+"-"+randomHex(3)[:5]
	pod.Labels[batchv1.JobNameLabel] = name
	return pod
}

// createAndBind creates the pod (through the webhook) and binds it to the
// node through the Binding API, as a scheduler does. It deletes the pod at
// the end of the test and waits until the kubelet has cleaned up after it.
func createAndBind(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	created, err := env.Kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", pod.Name, err)
	}
	t.Cleanup(func() { deletePod(t, created) })
	if created.Annotations[mapping.AnnotationStatus] != "injected" {
		t.Fatalf("pod %s was not injected (annotations %v)", created.Name, created.Annotations)
	}
	if created.Spec.NodeName != "" {
		t.Fatalf("pod %s was created already bound to %q", created.Name, created.Spec.NodeName)
	}
	binding := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: created.Namespace, Name: created.Name},
		Target:     corev1.ObjectReference{Kind: "Node", Name: nodeName},
	}
	if err := env.Kube.CoreV1().Pods(created.Namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("binding pod %s to node %s: %v", created.Name, nodeName, err)
	}
	return created
}

// deletePod deletes a pod and waits until the kubelet has stopped its
// containers, torn down its volumes and removed it from the API.
func deletePod(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	err := env.Kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(5))})
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Errorf("deleting pod %s: %v", pod.Name, err)
		return
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		_, err := env.Kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("the kubelet did not finish deleting pod %s/%s within 90s", pod.Namespace, pod.Name)
}

// waitPod polls the pod until cond says done, fails the test on cond's error
// or after timeout.
func waitPod(t *testing.T, pod *corev1.Pod, timeout time.Duration, what string, cond func(*corev1.Pod) (bool, error)) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	var last *corev1.Pod
	for {
		p, err := env.Kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("reading pod %s: %v", pod.Name, err)
		}
		last = p
		done, err := cond(p)
		if err != nil {
			t.Fatalf("pod %s: %v\nstatus: %s\n%s", pod.Name, err, statusSummary(p), podLogs(p))
		}
		if done {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: not %s within %s\nstatus: %s\n%s", pod.Name, what, timeout, statusSummary(last), podLogs(last))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// statusSummary is a short, value-free description of a pod's status.
func statusSummary(p *corev1.Pod) string {
	b, _ := json.Marshal(struct {
		Phase      corev1.PodPhase          `json:"phase"`
		Node       string                   `json:"node"`
		Conditions []corev1.PodCondition    `json:"conditions"`
		Init       []corev1.ContainerStatus `json:"init"`
		Containers []corev1.ContainerStatus `json:"containers"`
		Message    string                   `json:"message,omitempty"`
		Reason     string                   `json:"reason,omitempty"`
	}{p.Status.Phase, p.Spec.NodeName, p.Status.Conditions, p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.Message, p.Status.Reason})
	return string(b)
}

// podLogs returns the last lines of every log of the pod's containers on the
// node, for failure messages (the agent and the test app never log values).
func podLogs(p *corev1.Pod) string {
	var b strings.Builder
	dir := filepath.Join(theNode.PodLogs, p.Namespace+"_"+p.Name+"_"+string(p.UID))
	files, _ := filepath.Glob(filepath.Join(dir, "*", "*.log"))
	for _, f := range files {
		fmt.Fprintf(&b, "--- %s ---\n%s\n", strings.TrimPrefix(f, dir+"/"), tail(f, 15))
	}
	if len(files) == 0 {
		fmt.Fprintf(&b, "(no container log under %s)", dir)
	}
	return b.String()
}

// containerStatus returns the status of a container (init or regular).
func containerStatus(p *corev1.Pod, name string) (corev1.ContainerStatus, bool) {
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, s := range list {
			if s.Name == name {
				return s, true
			}
		}
	}
	return corev1.ContainerStatus{}, false
}

// logLine is one line of a container log in the CRI format.
type logLine struct {
	Time   time.Time
	Stream string
	Text   string
}

// containerLog reads the log of one run (0 for the first) of a container
// from the node's pod logs.
func containerLog(t *testing.T, pod *corev1.Pod, container string, run int) []logLine {
	t.Helper()
	file := filepath.Join(theNode.ContainerLogDir(pod.Namespace, pod.Name, string(pod.UID), container), fmt.Sprintf("%d.log", run))
	lines, err := readCRILog(file)
	if err != nil {
		t.Fatalf("reading the log of %s/%s: %v", pod.Name, container, err)
	}
	return lines
}

// waitLog waits (up to 15 s: the runtime writes logs asynchronously) until
// the first run's log of a container has a line that contains want, and
// returns its lines.
func waitLog(t *testing.T, pod *corev1.Pod, container, want string) []logLine {
	t.Helper()
	file := filepath.Join(theNode.ContainerLogDir(pod.Namespace, pod.Name, string(pod.UID), container), "0.log")
	deadline := time.Now().Add(15 * time.Second)
	for {
		lines, err := readCRILog(file)
		if err == nil {
			for _, l := range lines {
				if strings.Contains(l.Text, want) {
					return lines
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log of %s/%s has no line with %q within 15s (%d lines, %v)\n%s", pod.Name, container, want, len(lines), err, podLogs(pod))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readCRILog parses "<RFC3339Nano time> <stream> <P|F> <text>" lines,
// joining partial (P) lines.
func readCRILog(file string) ([]logLine, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []logLine
	var partial strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), " ", 4)
		if len(parts) < 4 {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, parts[0])
		if err != nil {
			return nil, fmt.Errorf("%s: bad time %q", file, parts[0])
		}
		partial.WriteString(parts[3])
		if parts[2] == "P" {
			continue
		}
		out = append(out, logLine{Time: ts, Stream: parts[1], Text: partial.String()})
		partial.Reset()
	}
	return out, sc.Err()
}

// words parses "event key=value key=value" into the event and its fields.
func words(line string) (string, map[string]string) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return "", nil
	}
	kv := map[string]string{}
	for _, w := range f[1:] {
		if k, v, ok := strings.Cut(w, "="); ok {
			kv[k] = v
		}
	}
	return f[0], kv
}

// wantFile is what the app must report for one file.
type wantFile struct {
	value string
	mode  string
}

// checkFirstLook checks the app's first look at its files, which it takes
// at its first instruction: every file with its content (by hash) and mode,
// no identity token or AZURE_* variable, and "ready".
func checkFirstLook(t *testing.T, lines []logLine, want map[string]wantFile) {
	t.Helper()
	seen := map[string]bool{}
	ready, identity := false, false
	for _, l := range lines {
		ev, kv := words(l.Text)
		switch ev {
		case "file":
			w, ok := want[kv["name"]]
			if !ok {
				t.Errorf("the app reported an unexpected file %q", kv["name"])
				continue
			}
			seen[kv["name"]] = true
			if kv["sha256"] != sha(w.value) || kv["size"] != fmt.Sprint(len(w.value)) {
				t.Errorf("%s: the app read other content than the vault's (%s bytes; content differs)", kv["name"], kv["size"])
			}
			if kv["mode"] != w.mode {
				t.Errorf("%s: mode %s, want %s", kv["name"], kv["mode"], w.mode)
			}
		case "missing", "incomplete":
			t.Errorf("the app's first look found a file missing: %s", l.Text)
		case "identity":
			identity = true
			if kv["tokenDir"] != "absent" || kv["azureEnv"] != "" {
				t.Errorf("the app container sees the agent's identity: %s", l.Text)
			}
		case "ready":
			ready = true
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("the app did not report %s", name)
		}
	}
	if !ready || !identity {
		t.Errorf("the app's first look is incomplete (ready %v, identity report %v): %d lines", ready, identity, len(lines))
	}
}

// scanForSecrets walks roots and returns every regular file that contains a
// stored secret value (naming the secret, never the value). Directories that
// are tmpfs mount points, which are memory and not disk, are skipped when
// skipTmpfs is set.
func scanForSecrets(roots []string, skipTmpfs bool) (hits []string, files int, err error) {
	skip := map[string]bool{}
	if skipTmpfs {
		all, err := readMounts("/proc/self/mountinfo")
		if err != nil {
			return nil, 0, err
		}
		for _, m := range all {
			if m.FSType == "tmpfs" {
				skip[m.Point] = true
			}
		}
	}
	secrets.mu.Lock()
	values := make(map[string]string, len(secrets.values))
	for v, n := range secrets.values {
		values[v] = n
	}
	secrets.mu.Unlock()
	if len(values) == 0 {
		return nil, 0, errors.New("no secret value was stored: nothing to scan for")
	}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil // removed while walking
				}
				return err
			}
			if d.IsDir() {
				if skip[p] && p != root {
					return filepath.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			files++
			for v, name := range values {
				if bytes.Contains(b, []byte(v)) {
					hits = append(hits, fmt.Sprintf("%s holds the value of %s", p, name))
				}
			}
			return nil
		})
		if err != nil {
			return hits, files, fmt.Errorf("scanning %s: %w", root, err)
		}
	}
	sort.Strings(hits)
	return hits, files, nil
}

func ptr[T any](v T) *T { return &v }
