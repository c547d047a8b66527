//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// rotation is the polling interval of the rotating pod: the shortest the
// contract allows. The agent polls every interval ±10%.
const rotation = 30 * time.Second

// hubSweep is the version hub's --sweep-interval: the rotating pod's agent
// watches the hub (the webhook is given --hub-url), so a new version reaches
// it within one sweep, well before its 30 s polling interval would.
const hubSweep = 5 * time.Second

// TestPodsOnRealKubelet runs the pods on the node in parallel, deletes them,
// and then checks what they left on the node.
func TestPodsOnRealKubelet(t *testing.T) {
	t.Run("pods", func(t *testing.T) {
		t.Run("DeploymentPodReadsAndRotates", noPanic(testDeploymentPod))
		t.Run("IdentityWithoutAccessNeverStartsTheApp", noPanic(testNoAccess))
		t.Run("JobPodCompletes", noPanic(testJobPod))
	})
	t.Run("NodeKeepsNoSecretOnDisk", noPanic(testNodeLeavesNothing))
}

// noPanic turns a panic of a test into its failure: a panicking test ends the
// test binary at once, which would leave containerd, the kubelet, their
// containers and mounts behind.
func noPanic(f func(*testing.T)) func(*testing.T) {
	return func(t *testing.T) {
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		f(t)
	}
}

// testDeploymentPod: a Deployment-style pod with a rotating native sidecar.
// It proves (1) admission, scheduling, Running, and the app's first look at
// every file with its content and mode, gated by the startup probe; (2) the
// volume is a size-limited tmpfs, read-only in the app, and no value is on
// disk while the pod runs; (3) the token the agent used was minted by the API
// server for the pod's ServiceAccount and audience and is mounted only into
// the agent; (4) a rotation reaches the running app within the interval and
// the app never reads a torn set, the template file app.env (rendered from two
// of the entries) changing in the same set as the files it reads.
func testDeploymentPod(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	w := newWorkload(t, "orders", true)
	conn := setSecret(t, w.vault, "DATABASE-CONNECTION-STRING")
	apiKey := setSecret(t, w.vault, "API-KEY")
	dbPass := setSecret(t, w.vault, "DB-PASSWORD")
	// app.env is rendered from two of the entries (a template): it changes
	// when either rotates, in the same set as their own files.
	files := []string{"apikey.txt", "app.env", "connectionstring.txt", "db/password"}
	appEnv := func(conn, apiKey string) string { return "CONN=" + conn + "\nKEY=" + apiKey + "\n" }
	tmpl := podTemplate("orders", map[string]string{
		mapping.AnnotationVault:                      w.vault,
		mapping.AnnotationSecrets:                    "connectionstring.txt=DATABASE-CONNECTION-STRING, apikey.txt=API-KEY, db/password=DB-PASSWORD",
		mapping.AnnotationRotation:                   rotation.String(),
		mapping.AnnotationTemplatePrefix + "app.env": "CONN={{ file \"connectionstring.txt\" }}\nKEY={{ secret \"API-KEY\" }}\n",
	}, corev1.RestartPolicyAlways, appArgs("watch", files...))
	pod := deploymentPod(t, w.ns, "orders", tmpl)

	// Key Vault throttles the first two reads (Retry-After 2 s), so the first
	// set takes seconds: an app container not gated by the startup probe would
	// start before its files exist, and its first look would fail.
	if err := env.Emulator.InjectFault(emulator.Fault{Kind: emulator.FaultThrottle, RetryAfterSeconds: 2, Count: 2, Match: emulator.OpGet, Vault: w.vault}); err != nil {
		t.Fatal(err)
	}
	pod = createAndBind(t, pod)
	agentSpec := findContainer(t, pod, mutate.AgentContainerName, true)
	if agentSpec.RestartPolicy == nil || *agentSpec.RestartPolicy != corev1.ContainerRestartPolicyAlways || agentSpec.StartupProbe == nil {
		t.Fatalf("the agent is not a native sidecar with a startup probe: %+v", agentSpec)
	}
	if agentSpec.Image != agentImage {
		t.Fatalf("the agent image is %q, want %q", agentSpec.Image, agentImage)
	}

	pod = waitPod(t, pod, 2*time.Minute, "running its app container", func(p *corev1.Pod) (bool, error) {
		if s, ok := containerStatus(p, "app"); ok {
			if s.RestartCount > 0 || s.State.Terminated != nil {
				return false, fmt.Errorf("the app container exited (restarts %d): it started without its files", s.RestartCount)
			}
			return s.State.Running != nil, nil
		}
		return false, nil
	})
	if pod.Spec.NodeName != nodeName || pod.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod on %q in phase %s, want Running on %s", pod.Spec.NodeName, pod.Status.Phase, nodeName)
	}
	appStatus, _ := containerStatus(pod, "app")
	agentStatus, _ := containerStatus(pod, mutate.AgentContainerName)
	if agentStatus.State.Running == nil || agentStatus.Started == nil || !*agentStatus.Started || agentStatus.RestartCount != 0 {
		t.Fatalf("agent sidecar status: %+v", agentStatus)
	}
	t.Logf("pod %s running on %s; agent started %s, app started %s", pod.Name, pod.Spec.NodeName,
		agentStatus.State.Running.StartedAt.Format(time.RFC3339), appStatus.State.Running.StartedAt.Format(time.RFC3339))

	// (4, first half) Rotate two secrets now. The agent watches the hub, which
	// may see the vault between the two changes: every set the app may see is
	// one the vault held (old, the connection string alone changed, or new),
	// and anything else is a torn set. The agent reads no value meanwhile.
	readsBefore := env.Emulator.ValueReads(w.clientID)
	rotatedAt := time.Now()
	newConn := setSecret(t, w.vault, "DATABASE-CONNECTION-STRING")
	newAPIKey := setSecret(t, w.vault, "API-KEY")
	if env.Emulator.ValueReads(w.clientID) != readsBefore {
		t.Fatal("the agent read a value while the test rotated the secrets: the rotation is not a clean cut")
	}

	// (1) The app's first look, at its first instruction, and the gating.
	lines := waitLog(t, pod, "app", "ready files=")
	checkFirstLook(t, lines, map[string]wantFile{
		"connectionstring.txt": {conn, "0444"}, "apikey.txt": {apiKey, "0444"}, "db/password": {dbPass, "0444"},
		"app.env": {appEnv(conn, apiKey), "0444"},
	})
	agentLog := waitLog(t, pod, mutate.AgentContainerName, `"msg":"wrote secrets"`)
	var agentStart, firstSet time.Time
	for _, l := range agentLog {
		if agentStart.IsZero() && strings.Contains(l.Text, `"msg":"starting"`) {
			agentStart = l.Time
		}
		if strings.Contains(l.Text, `"msg":"wrote secrets"`) {
			firstSet = l.Time
			break
		}
	}
	if agentStart.IsZero() || firstSet.IsZero() {
		t.Fatalf("the agent's log lacks its start or its first set (%d lines)", len(agentLog))
	}
	appFirst := lines[0].Time
	t.Logf("agent started %s, first set written %s later, app's first instruction %s after that",
		agentStart.Format(time.RFC3339Nano), firstSet.Sub(agentStart).Round(time.Millisecond), appFirst.Sub(firstSet).Round(time.Millisecond))
	if firstSet.Sub(agentStart) < 2*time.Second {
		t.Errorf("the first set took %s: the throttled reads did not delay it, so the gating is not shown", firstSet.Sub(agentStart))
	}
	if !appFirst.After(firstSet) {
		t.Errorf("the app ran at %s, before the agent wrote the first set at %s", appFirst.Format(time.RFC3339Nano), firstSet.Format(time.RFC3339Nano))
	}
	if s := env.Emulator.Stats(); s.Throttled < 2 {
		t.Errorf("the emulator throttled %d reads, want at least 2", s.Throttled)
	}

	// (2) The volume is a tmpfs of the size limit on the node, read-only in
	// the app and writable only by the agent.
	volDir := theNode.PodVolumeDir(string(pod.UID), "kubernetes.io~empty-dir", mutate.VolumeName)
	tokDir := theNode.PodVolumeDir(string(pod.UID), "kubernetes.io~projected", mutate.TokenVolumeName)
	hostMounts, err := theNode.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	vol, ok := findMount(hostMounts, volDir)
	if !ok || vol.FSType != "tmpfs" {
		t.Errorf("the secrets volume %s is not a tmpfs on the node (%+v)", volDir, vol)
	} else if !slices.Contains(strings.Split(vol.SuperOptions, ","), "size=16384k") {
		t.Errorf("the secrets tmpfs has options %q, want the 16Mi size limit", vol.SuperOptions)
	}
	if m, ok := findMount(hostMounts, tokDir); !ok || m.FSType != "tmpfs" {
		t.Errorf("the token volume %s is not a tmpfs on the node (%+v)", tokDir, m)
	}
	appPID, err := theNode.TaskPID(ctx, containerID(appStatus))
	if err != nil {
		t.Fatal(err)
	}
	agentPID, err := theNode.TaskPID(ctx, containerID(agentStatus))
	if err != nil {
		t.Fatal(err)
	}
	appMounts, err := readMounts(fmt.Sprintf("/proc/%d/mountinfo", appPID))
	if err != nil {
		t.Fatal(err)
	}
	agentMounts, err := readMounts(fmt.Sprintf("/proc/%d/mountinfo", agentPID))
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := findMount(appMounts, "/app/secrets"); !ok || m.FSType != "tmpfs" || !slices.Contains(strings.Split(m.Options, ","), "ro") {
		t.Errorf("in the app container, /app/secrets is %+v; want a read-only tmpfs", m)
	}
	if m, ok := findMount(agentMounts, mutate.AgentDir); !ok || m.FSType != "tmpfs" || !slices.Contains(strings.Split(m.Options, ","), "rw") {
		t.Errorf("in the agent container, %s is %+v; want a writable tmpfs", mutate.AgentDir, m)
	}
	// The scanner finds the values where they are (so that finding nothing
	// elsewhere means something), and finds none on disk.
	if hits, _, err := scanForSecrets([]string{volDir}, false); err != nil || len(hits) < 3 {
		t.Errorf("the scan of the tmpfs found %d values (%v); want the 3 of the first set", len(hits), err)
	}
	hits, scanned, err := scanForSecrets([]string{theNode.dir}, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hits {
		t.Errorf("while the pod runs, a secret value is on the node's disk: %s", h)
	}
	t.Logf("while the pod runs: no secret value in the %d files on the node's disk", scanned)

	// (3) The token: minted by the API server for this pod's ServiceAccount
	// and audience, the very file the agent reads, and nowhere in the app.
	for _, m := range appMounts {
		if m.Point == mutate.TokenDir || strings.HasPrefix(m.Point, mutate.TokenDir+"/") {
			t.Errorf("the app container has the identity token mounted at %s", m.Point)
		}
	}
	for _, c := range pod.Spec.Containers {
		for _, vm := range c.VolumeMounts {
			if vm.Name == mutate.TokenVolumeName {
				t.Errorf("container %s mounts the identity token", c.Name)
			}
		}
	}
	if m, ok := findMount(agentMounts, mutate.TokenDir); !ok || m.FSType != "tmpfs" {
		t.Errorf("in the agent container, %s is %+v; want the projected token's tmpfs", mutate.TokenDir, m)
	}
	hostToken, err := os.ReadFile(filepath.Join(tokDir, mutate.TokenFile))
	if err != nil {
		t.Fatalf("reading the projected token on the node: %v", err)
	}
	agentToken, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s/%s", agentPID, mutate.TokenDir, mutate.TokenFile))
	if err != nil {
		t.Fatalf("reading the token in the agent container: %v", err)
	}
	if sha256.Sum256(hostToken) != sha256.Sum256(agentToken) {
		t.Error("the agent sees another token than the kubelet projected")
	}
	checkToken(t, pod, w, string(agentToken))

	// (4, second half) The rotation reaches the running app within the
	// interval, and every set it read is the old or the new one.
	oldSet := setLine(files, map[string]string{"apikey.txt": apiKey, "app.env": appEnv(conn, apiKey), "connectionstring.txt": conn, "db/password": dbPass})
	midSet := setLine(files, map[string]string{"apikey.txt": apiKey, "app.env": appEnv(newConn, apiKey), "connectionstring.txt": newConn, "db/password": dbPass})
	newSet := setLine(files, map[string]string{"apikey.txt": newAPIKey, "app.env": appEnv(newConn, newAPIKey), "connectionstring.txt": newConn, "db/password": dbPass})
	// One sweep (jittered by 10%), then the notification and the agent's read.
	limit := hubSweep + hubSweep/10 + 5*time.Second
	var arrived time.Time
	deadline := rotatedAt.Add(limit + 10*time.Second)
	for arrived.IsZero() && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		for _, l := range containerLog(t, pod, "app", 0) {
			if ev, kv := words(l.Text); ev == "set" && setOf(kv) == newSet {
				ms, _ := strconv.ParseInt(kv["at"], 10, 64)
				arrived = time.UnixMilli(ms)
				break
			}
		}
	}
	if arrived.IsZero() {
		t.Fatalf("the rotated secrets did not reach the app within %s", limit+10*time.Second)
	}
	t.Logf("rotation reached the app %s after the vault changed (hub sweep %s ±10%%, polling interval %s)", arrived.Sub(rotatedAt).Round(time.Millisecond), hubSweep, rotation)
	if d := arrived.Sub(rotatedAt); d > limit {
		t.Errorf("the rotation took %s, more than the hub's sweep (%s) allows", d, limit)
	}
	// The agent learned it from the hub, not from a poll.
	var fromHub bool
	for _, l := range containerLog(t, pod, mutate.AgentContainerName, 0) {
		fromHub = fromHub || (strings.Contains(l.Text, `"secrets changed; wrote a new set"`) && strings.Contains(l.Text, `"source":"hub"`) && strings.Contains(l.Text, `"trigger":"hub"`))
	}
	if !fromHub {
		t.Errorf("the agent's log has no new set triggered by the hub")
	}
	// Let the app read the new set for a while longer, then judge every read.
	time.Sleep(2 * time.Second)
	checkSets(t, containerLog(t, pod, "app", 0), oldSet, midSet, newSet)
	pod, err = env.Kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app", mutate.AgentContainerName} {
		if s, _ := containerStatus(pod, name); s.RestartCount != 0 || s.State.Running == nil {
			t.Errorf("%s: restarts %d, state %+v; want running since the start", name, s.RestartCount, s.State)
		}
	}

	// The pod's volumes go when the pod goes.
	deletePod(t, pod)
	if mounts, _ := theNode.Mounts(); len(mounts) > 0 {
		for _, m := range mounts {
			if strings.Contains(m.Point, string(pod.UID)) {
				t.Errorf("%s is still mounted after the pod was deleted", m.Point)
			}
		}
	}
	// The kubelet's housekeeping (every 2 s) removes the pod's folder.
	podDir := filepath.Join(theNode.KubeletRoot, "pods", string(pod.UID))
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		if _, err := os.Stat(podDir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the kubelet kept the pod's folder %s 20s after deleting the pod", podDir)
			break
		}
	}
}

// checkToken checks the projected token the agent used: the API server
// authenticates it (TokenReview) as the pod's ServiceAccount, bound to this
// pod, for the workload-identity audience only, with the one-hour lifetime the
// webhook asked for; and the emulated Azure AD exchanged it (its federated
// credential names the same issuer, subject and audience).
func checkToken(t *testing.T, pod *corev1.Pod, w workload, token string) {
	t.Helper()
	ctx := context.Background()
	wantUser := "system:serviceaccount:" + pod.Namespace + ":" + pod.Spec.ServiceAccountName
	tr, err := env.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{mutate.TokenAudience}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := tr.Status
	if !st.Authenticated || st.User.Username != wantUser || !slices.Equal(st.Audiences, []string{mutate.TokenAudience}) {
		t.Errorf("TokenReview: authenticated %v as %q for %q (%s); want %q for %q", st.Authenticated, st.User.Username, st.Audiences, st.Error, wantUser, mutate.TokenAudience)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-uid"]; !slices.Equal(got, []string{string(pod.UID)}) {
		t.Errorf("the token is bound to pod UID %q, want %q", got, pod.UID)
	}
	// The API server's own audience refuses it.
	tr, err = env.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Status.Authenticated {
		t.Error("the workload-identity token also authenticates to the Kubernetes API")
	}
	claims, err := jwtClaims(token)
	if err != nil {
		t.Fatal(err)
	}
	if claims.Iss != env.Issuer() || claims.Sub != wantUser || !slices.Equal(claims.Aud, []string{mutate.TokenAudience}) || claims.Exp-claims.Iat != 3600 {
		t.Errorf("token claims: iss %q sub %q aud %q lifetime %ds; want %q, %q, [%s], 3600s", claims.Iss, claims.Sub, claims.Aud, claims.Exp-claims.Iat, env.Issuer(), wantUser, mutate.TokenAudience)
	}
	if claims.K8s.Pod.Name != pod.Name || claims.K8s.Pod.UID != string(pod.UID) {
		t.Errorf("token bound to pod %q (%s), want %q (%s)", claims.K8s.Pod.Name, claims.K8s.Pod.UID, pod.Name, pod.UID)
	}
	// The emulated Azure AD accepted an assertion for this client: one with
	// exactly the issuer, subject and audience of its federated credential.
	exchanged := false
	for _, line := range strings.Split(emulatorL.String(), "\n") {
		var rec struct {
			Path     string `json:"path"`
			Status   int    `json:"status"`
			ClientID string `json:"client_id"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && strings.HasSuffix(rec.Path, "/oauth2/v2.0/token") && rec.ClientID == w.clientID && rec.Status == 200 {
			exchanged = true
		}
	}
	if !exchanged {
		t.Errorf("the emulated Azure AD never issued a token to client %s", w.clientID)
	}
}

type tokenClaims struct {
	Iss string   `json:"iss"`
	Sub string   `json:"sub"`
	Aud []string `json:"aud"`
	Exp int64    `json:"exp"`
	Iat int64    `json:"iat"`
	K8s struct {
		Pod struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

// jwtClaims decodes a JWT's payload (the API server verified it already).
func jwtClaims(token string) (tokenClaims, error) {
	var c tokenClaims
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return c, fmt.Errorf("the token is not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return c, fmt.Errorf("the token's payload: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("the token's payload: %w", err)
	}
	return c, nil
}

// setLine is how the app prints a set's files: "name=sha256 ..." in name order.
func setLine(files []string, values map[string]string) string {
	var parts []string
	for _, f := range files {
		parts = append(parts, f+"="+sha(values[f]))
	}
	return strings.Join(parts, " ")
}

// setOf is the files part of an app "set" line.
func setOf(kv map[string]string) string {
	var names []string
	for k := range kv {
		if k != "at" && k != "dir" {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, n+"="+kv[n])
	}
	return strings.Join(parts, " ")
}

// checkSets judges every set the app read: each is one of the states the
// vault went through (oldest first, the last the newest), never an older one
// after a newer one, a published directory never changes, and no read failed.
func checkSets(t *testing.T, lines []logLine, states ...string) {
	t.Helper()
	newSet := states[len(states)-1]
	dirs := map[string]string{}
	sets, sawNew, at := 0, false, 0
	for _, l := range lines {
		ev, kv := words(l.Text)
		switch ev {
		case "error":
			t.Errorf("the app failed a read: %s", l.Text)
		case "set":
			sets++
			s := setOf(kv)
			i := slices.Index(states, s)
			switch {
			case i < 0:
				t.Errorf("the app read a torn set (dir %s): it is none of the %d sets the vault held", kv["dir"], len(states))
			case i < at:
				t.Errorf("the app read an older set again after a newer one (dir %s)", kv["dir"])
			default:
				at = i
				sawNew = sawNew || s == newSet
			}
			if prev, ok := dirs[kv["dir"]]; ok && prev != s {
				t.Errorf("the published directory %s changed in place", kv["dir"])
			}
			dirs[kv["dir"]] = s
		}
	}
	if sets < 2 || !sawNew {
		t.Errorf("the app reported %d sets; want the old and the new one", sets)
	}
	t.Logf("the app read %d distinct sets from %d published directories, none torn", sets, len(dirs))
}

// testNoAccess (5): the pod's identity has no access to the vault. The agent
// fails at once, the kubelet keeps restarting it, the app container is never
// created, and the pod's status carries the agent's explanation.
func testNoAccess(t *testing.T) {
	t.Parallel()
	w := newWorkload(t, "denied", false)
	setSecret(t, w.vault, "API-KEY")
	tmpl := podTemplate("denied", map[string]string{
		mapping.AnnotationVault:   w.vault,
		mapping.AnnotationSecrets: "apikey.txt=API-KEY",
	}, corev1.RestartPolicyAlways, appArgs("watch", "apikey.txt"))
	pod := createAndBind(t, deploymentPod(t, w.ns, "denied", tmpl))

	// Wait until the agent failed twice: the first run and the kubelet's
	// first restart after its back-off.
	var msg string
	pod = waitPod(t, pod, 2*time.Minute, "showing the agent's second failure", func(p *corev1.Pod) (bool, error) {
		if s, ok := containerStatus(p, "app"); ok && (s.State.Running != nil || s.State.Terminated != nil || s.RestartCount > 0 || (s.Started != nil && *s.Started)) {
			return false, fmt.Errorf("the app container ran although its secrets could not be read")
		}
		s, ok := containerStatus(p, mutate.AgentContainerName)
		if !ok {
			return false, nil
		}
		if term := s.LastTerminationState.Terminated; term != nil && s.RestartCount >= 1 {
			if term.ExitCode != 1 {
				return false, fmt.Errorf("the agent exited with %d, want 1", term.ExitCode)
			}
			msg = term.Message
			return true, nil
		}
		return false, nil
	})
	for _, want := range []string{`"API-KEY"`, w.vault, "403", w.clientID, "Key Vault Secrets User"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the agent's termination message in the pod's status lacks %q:\n%s", want, msg)
		}
	}
	t.Logf("the pod's status explains: %s", msg)
	if pod.Status.Phase != corev1.PodPending {
		t.Errorf("phase %s, want Pending", pod.Status.Phase)
	}
	app, ok := containerStatus(pod, "app")
	if !ok || app.State.Waiting == nil || app.State.Waiting.Reason != "PodInitializing" {
		t.Errorf("the app container's state is %+v; want waiting for PodInitializing", app.State)
	}
	if _, err := os.Stat(theNode.ContainerLogDir(pod.Namespace, pod.Name, string(pod.UID), "app")); !os.IsNotExist(err) {
		t.Errorf("the app container has a log folder on the node, so it was created (%v)", err)
	}
}

// testJobPod (6): with rotation off the agent is an init container; a
// Job-style pod (restartPolicy Never) runs its app once and completes.
func testJobPod(t *testing.T) {
	t.Parallel()
	w := newWorkload(t, "report", true)
	conn := setSecret(t, w.vault, "DATABASE-CONNECTION-STRING")
	apiKey := setSecret(t, w.vault, "API-KEY")
	tmpl := podTemplate("report", map[string]string{
		mapping.AnnotationVault:    w.vault,
		mapping.AnnotationSecrets:  "connectionstring.txt=DATABASE-CONNECTION-STRING, apikey.txt=API-KEY",
		mapping.AnnotationRotation: "off",
	}, corev1.RestartPolicyNever, appArgs("check", "apikey.txt", "connectionstring.txt"))
	pod := createAndBind(t, jobPod(t, w.ns, "report", tmpl))
	if c := findContainer(t, pod, mutate.AgentContainerName, true); c.RestartPolicy != nil || c.StartupProbe != nil {
		t.Fatalf("with rotation off the agent must be a plain init container: %+v", c)
	}
	pod = waitPod(t, pod, 2*time.Minute, "Succeeded", func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("the pod failed")
		}
		return p.Status.Phase == corev1.PodSucceeded, nil
	})
	agent, _ := containerStatus(pod, mutate.AgentContainerName)
	if term := agent.State.Terminated; term == nil || term.ExitCode != 0 || !strings.Contains(term.Message, "wrote 2 file(s) from vault") {
		t.Errorf("the init agent's state is %+v; want exit 0 with its summary", agent.State)
	}
	app, _ := containerStatus(pod, "app")
	if term := app.State.Terminated; term == nil || term.ExitCode != 0 || app.RestartCount != 0 {
		t.Errorf("the app's state is %+v (restarts %d); want one run that exited 0", app.State, app.RestartCount)
	}
	checkFirstLook(t, waitLog(t, pod, "app", "ready files="), map[string]wantFile{
		"connectionstring.txt": {conn, "0444"}, "apikey.txt": {apiKey, "0444"},
	})
}

// testNodeLeavesNothing (2, afterwards): once the pods are gone, no secret
// value is anywhere in the kubelet's, containerd's or the logs' folders, nor
// after containerd and the kubelet stopped; nothing stays mounted and no
// process stays behind.
func testNodeLeavesNothing(t *testing.T) {
	ctx := context.Background()
	pods, err := env.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeName})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) > 0 {
		t.Fatalf("%d pods are still on the node", len(pods.Items))
	}
	// The node's folder (kubelet, pod logs, containerd, their logs) and the
	// test environment's (webhook log, images).
	roots := []string{theNode.dir, filepath.Dir(env.BinDir)}
	if _, err := os.Stat(containerLogsDir); err == nil {
		roots = append(roots, containerLogsDir)
	}
	scan := func(when string) {
		hits, files, err := scanForSecrets(roots, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hits {
			t.Errorf("%s: a secret value is on the node's disk: %s", when, h)
		}
		t.Logf("%s: no secret value in %d files under %s", when, files, strings.Join(roots, ", "))
	}
	scan("pods deleted, node running")
	for _, m := range mustMounts(t) {
		if m.FSType == "tmpfs" && strings.HasPrefix(m.Point, filepath.Join(theNode.KubeletRoot, "pods")) {
			t.Errorf("a pod volume is still mounted: %s", m.Point)
		}
	}

	if err := theNode.Stop(); err != nil {
		t.Errorf("stopping the node needed cleaning up: %v", err)
	}
	scan("node stopped")
	if m := mustMounts(t); len(m) > 0 {
		t.Errorf("still mounted under %s: %+v", theNode.dir, m)
	}
	if pids := theNode.shimPIDs(); len(pids) > 0 {
		t.Errorf("containerd shims still running: %v", pids)
	}
}

func mustMounts(t *testing.T) []mount {
	t.Helper()
	m, err := theNode.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func findMount(mounts []mount, point string) (mount, bool) {
	var found mount
	ok := false
	for _, m := range mounts {
		if m.Point == point {
			found, ok = m, true // the last one is on top
		}
	}
	return found, ok
}

// containerID strips the runtime prefix ("containerd://") of a status's ID.
func containerID(s corev1.ContainerStatus) string {
	_, id, _ := strings.Cut(s.ContainerID, "://")
	return id
}

func findContainer(t *testing.T, pod *corev1.Pod, name string, init bool) *corev1.Container {
	t.Helper()
	list := pod.Spec.Containers
	if init {
		list = pod.Spec.InitContainers
	}
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	t.Fatalf("pod %s has no container %s", pod.Name, name)
	return nil
}
