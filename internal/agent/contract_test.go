package agent_test

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// TestWebhookContract runs the agent binary, its startup probe and its doctor
// with exactly the command, arguments and environment that the webhook's
// mutation (mapping.Resolve, then mutate.Desired) gives the agent container of
// a pod. Only what a kubelet does is done on top: the image's entrypoint is the
// built binary, container paths are translated through the container's own
// volume mounts (the secrets volume, the projected token), the downward API's
// fields are filled from the pod, and --termination-log keeps the test out of
// /dev. The test-only settings that point the unmodified SDK at the emulator,
// and the managed-identity endpoint a node provides, are added to the
// environment.
func TestWebhookContract(t *testing.T) {
	bin := agentBinary(t)
	for _, tc := range []struct {
		name     string
		identity string // kvinject.dev/identity; "" means workload identity from the ServiceAccount
		rotation string // kvinject.dev/rotation
		native   bool
		mode     string // the agent container's mode
	}{
		{name: "workload identity, init", rotation: "off", mode: agentconfig.ModeInit},
		{name: "workload identity, native sidecar", rotation: "30s", native: true, mode: agentconfig.ModeSidecar},
		{name: "managed identity, native sidecar", identity: "managed", rotation: "30s", native: true, mode: agentconfig.ModeSidecar},
		{name: "managed identity, init beside a regular sidecar", identity: "managed", rotation: "30s", mode: agentconfig.ModeInit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, emulator.Options{})
			var (
				clientID string
				tok      *tokenDir
				extraEnv []string
			)
			if tc.identity == "" {
				clientID, tok = h.workload()
			} else {
				clientID = h.managed()
				tc.identity += ":" + clientID
				extraEnv = append(extraEnv, "IDENTITY_ENDPOINT="+h.emu.MSIEndpoint(), "IDENTITY_HEADER="+h.emu.IdentityHeader())
			}
			if err := h.emu.Grant(h.vault, clientID, emulator.PermGet); err != nil {
				t.Fatal(err)
			}
			a, _ := h.setSecret("a")
			b, _ := h.setSecret("b")

			pod, agentC := injectedAgent(t, h, tc.identity, tc.rotation, tc.native)
			if len(agentC.Command) != 1 || agentC.Command[0] != mutate.AgentBinary {
				t.Fatalf("command %q, want the agent binary %s", agentC.Command, mutate.AgentBinary)
			}
			if agentC.Args[0] != tc.mode {
				t.Fatalf("the agent container runs in mode %q, want %q", agentC.Args[0], tc.mode)
			}
			mounts := h.mounts(agentC, tok)
			args := translate(agentC.Args, mounts)
			env := append(containerEnv(t, pod, agentC, mounts),
				agentconfig.EnvTestCAFile+"="+h.env[agentconfig.EnvTestCAFile],
				agentconfig.EnvTestResolve+"="+h.env[agentconfig.EnvTestResolve])
			env = append(env, extraEnv...)

			// The doctor, in front of the agent's command line.
			code, out := h.exec(bin, append([]string{"doctor"}, args...), env, 30*time.Second)
			if code != 0 || !strings.Contains(out, "All 6 checks passed.") || !strings.Contains(out, "[ok]   template ab.txt: renders") || !strings.Contains(out, clientID) {
				t.Errorf("doctor: exit %d, want 0 with every check passed for client %s:\n%s", code, clientID, out)
			}

			// The agent.
			p := h.startEnv(bin, append([]string{args[0], "--termination-log=" + h.termLog}, args[1:]...), env)
			if tc.mode == agentconfig.ModeInit {
				if code := p.wait(t, 30*time.Second); code != 0 {
					t.Fatalf("init exited with %d\ntermination log: %s\nstderr:\n%s", code, h.termination(), p.stderr)
				}
			} else {
				h.waitFor("the first set", 30*time.Second, func() bool { return h.fileIs("a", a) && h.fileIs("sub/b", b) })
				// The startup probe, as the kubelet runs it.
				probe := agentC.StartupProbe.Exec.Command
				if probe[0] != mutate.AgentBinary {
					t.Fatalf("startup probe %q does not run the agent binary", probe)
				}
				if code, out := h.exec(bin, translate(probe[1:], mounts), env, 10*time.Second); code != 0 {
					t.Errorf("startup probe %q: exit %d\n%s", probe, code, out)
				}
				_ = p.cmd.Process.Signal(syscall.SIGTERM)
				if code := p.wait(t, 10*time.Second); code != 0 {
					t.Errorf("the sidecar exited with %d on SIGTERM, want 0", code)
				}
			}
			if !h.fileIs("a", a) || !h.fileIs("sub/b", b) {
				t.Error("the files do not hold the secrets")
			}
			if want := a + "\n\"" + b + "\"\n"; !h.fileIs("ab.txt", want) {
				t.Errorf("the template's file is not %q", want)
			}
			checkJSONLogs(t, p.stderr.String())
			// The downward API's variables reached the agent under the names it reads.
			if want := `"pod":"` + pod.Namespace + "/" + pod.Name + `"`; !strings.Contains(p.stderr.String(), want) {
				t.Errorf("the agent's logs lack %s:\n%s", want, p.stderr)
			}
		})
	}
}

// TestWebhookContractServiceAccount: the agent explains a missing federated
// credential with the pod's namespace and ServiceAccount, as the webhook passes
// them (POD_NAMESPACE, KVINJECT_SERVICE_ACCOUNT).
func TestWebhookContractServiceAccount(t *testing.T) {
	bin := agentBinary(t)
	h := newHarness(t, emulator.Options{})
	_, tok := h.workload()
	// The ServiceAccount names an identity that trusts another ServiceAccount
	// than the pod's.
	other := newClientID()
	if err := h.emu.AddWorkloadIdentity(emulator.WorkloadIdentity{ClientID: other, Issuer: testIssuer, Subject: "system:serviceaccount:" + testNamespace + ":other"}); err != nil {
		t.Fatal(err)
	}
	h.env[agentconfig.EnvClientID] = other
	h.setSecret("a")
	pod, agentC := injectedAgent(t, h, "", "off", true)
	mounts := h.mounts(agentC, tok)
	args := translate(agentC.Args, mounts)
	env := append(containerEnv(t, pod, agentC, mounts), agentconfig.EnvTestCAFile+"="+h.env[agentconfig.EnvTestCAFile], agentconfig.EnvTestResolve+"="+h.env[agentconfig.EnvTestResolve])
	p := h.startEnv(bin, append([]string{args[0], "--termination-log=" + h.termLog}, args[1:]...), env)
	if code := p.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("init exited with %d, want 1\ntermination log: %s", code, h.termination())
	}
	want := "kvinject-" + pod.Namespace + "-" + pod.Spec.ServiceAccountName
	if !strings.Contains(h.termination(), want) {
		t.Errorf("the termination log does not name the pod's ServiceAccount (%s):\n%s", want, h.termination())
	}
}

// TestWebhookContractOnChange: the agent binary, with the arguments the
// webhook gives a pod annotated kvinject.dev/on-change, calls the app once
// per new set and not for the first; the doctor checks the action (something
// listens on the port) without calling it. Only --rotation is shortened,
// after the webhook's arguments (the annotation's minimum is 30s).
func TestWebhookContractOnChange(t *testing.T) {
	bin := agentBinary(t)
	h := newHarness(t, emulator.Options{})
	rc := newReceiver(t)
	clientID, tok := h.workload()
	if err := h.emu.Grant(h.vault, clientID, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	h.setSecret("a")
	h.setSecret("b")
	pod, agentC := injectedAgentWith(t, h, "", "30s", true, map[string]string{mapping.AnnotationOnChange: "http:" + rc.port() + "/-/reload;method=put"})
	want := "--on-change=http:" + rc.port() + "/-/reload;method=PUT"
	if !slices.Contains(agentC.Args, want) {
		t.Fatalf("the agent's arguments %q lack %s", agentC.Args, want)
	}
	mounts := h.mounts(agentC, tok)
	args := translate(agentC.Args, mounts)
	env := append(containerEnv(t, pod, agentC, mounts),
		agentconfig.EnvTestCAFile+"="+h.env[agentconfig.EnvTestCAFile],
		agentconfig.EnvTestResolve+"="+h.env[agentconfig.EnvTestResolve])

	code, out := h.exec(bin, append([]string{"doctor"}, args...), env, 30*time.Second)
	if code != 0 || !strings.Contains(out, "[ok]   on-change: the agent will call PUT http://127.0.0.1:"+rc.port()+"/-/reload") || !strings.Contains(out, "All 7 checks passed.") {
		t.Errorf("doctor: exit %d, want 0 with the on-change check passed:\n%s", code, out)
	}
	if n := len(rc.got()); n != 0 {
		t.Fatalf("the doctor called the app %d times", n)
	}

	p := h.startEnv(bin, append(append([]string{args[0], "--termination-log=" + h.termLog}, args[1:]...), "--rotation=200ms"), env)
	h.waitFor("the first set", 30*time.Second, func() bool { return strings.Contains(p.stderr.String(), "wrote secrets") })
	time.Sleep(time.Second)
	if n := len(rc.got()); n != 0 {
		t.Fatalf("%d calls after the first set, want none", n)
	}
	a2, _ := h.setSecret("a")
	h.waitFor("the call", 10*time.Second, func() bool { return len(rc.got()) == 1 })
	if !h.fileIs("a", a2) {
		t.Error("the app was called before the new set was swapped in")
	}
	time.Sleep(time.Second)
	if calls := rc.got(); len(calls) != 1 || calls[0].method != "PUT" || calls[0].changed != "secret/a" {
		t.Errorf("calls %+v, want one PUT for secret/a", calls)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("the sidecar exited with %d on SIGTERM, want 0", code)
	}
	checkJSONLogs(t, p.stderr.String())
	h.output(p.stderr.String())
	h.output(out)
	rc.checkNoValues(t, h)
}

// injectedAgent resolves an opted-in pod with the webhook's code and returns
// the pod and its agent container: the init container (native sidecar or
// init-mode agent) that mutate.Desired builds.
func injectedAgent(t *testing.T, h *harness, identity, rotation string, native bool) (*corev1.Pod, corev1.Container) {
	t.Helper()
	return injectedAgentWith(t, h, identity, rotation, native, nil)
}

// injectedAgentWith is injectedAgent for a pod with more annotations.
func injectedAgentWith(t *testing.T, h *harness, identity, rotation string, native bool, more map[string]string) (*corev1.Pod, corev1.Container) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: testPod, Namespace: testNamespace, Annotations: map[string]string{
			mapping.AnnotationVault:    h.vault,
			mapping.AnnotationSecrets:  "a=a, sub/b=b",
			mapping.AnnotationRotation: rotation,
			// A template on several lines, through the binary's command line.
			mapping.AnnotationTemplatePrefix + "ab.txt": "{{ file \"a\" }}\n{{ secret \"B\" | jsonQuote }}\n",
		}},
		Spec: corev1.PodSpec{ServiceAccountName: testSA, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if identity != "" {
		pod.Annotations[mapping.AnnotationIdentity] = identity
	}
	for k, v := range more {
		pod.Annotations[k] = v
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: testSA, Namespace: testNamespace}}
	if identity == "" {
		sa.Annotations = map[string]string{
			mapping.AnnotationWIClientID: h.env[agentconfig.EnvClientID],
			mapping.AnnotationWITenantID: h.env[agentconfig.EnvTenantID],
		}
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}
	spec, _, err := mapping.Resolve(pod, ns, sa, mapping.Defaults{})
	if err != nil {
		t.Fatalf("mapping.Resolve: %v", err)
	}
	inj := mutate.Desired(pod, spec, mutate.Config{AgentImage: "kvinject-agent:test", NativeSidecars: native})
	return pod, inj.InitAgent
}

// mounts is the kubelet's part: the container's volume mounts, as
// directories of this machine (container path -> directory).
func (h *harness) mounts(c corev1.Container, tok *tokenDir) map[string]string {
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		switch m.Name {
		case mutate.VolumeName:
			mounts[m.MountPath] = h.dir
		case mutate.TokenVolumeName:
			mounts[m.MountPath] = tok.dir
		default:
			mounts[m.MountPath] = h.t.TempDir()
		}
	}
	return mounts
}

// translate maps container paths to this machine's through the mounts
// (container path -> directory), as a bind mount does.
func translate(args []string, mounts map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = translatePath(a, mounts)
	}
	return out
}

// translatePath translates a value, or the value of a --flag=value, that is a
// path inside one of the mounts.
func translatePath(v string, mounts map[string]string) string {
	prefix, val := "", v
	if strings.HasPrefix(v, "--") {
		if name, rest, ok := strings.Cut(v, "="); ok {
			prefix, val = name+"=", rest
		}
	}
	for dir, host := range mounts {
		if val == dir {
			return prefix + host
		}
		if rest, ok := strings.CutPrefix(val, dir+"/"); ok {
			return prefix + filepath.Join(host, rest)
		}
	}
	return v
}

// containerEnv is the container's environment as the kubelet sets it: values
// as written (paths translated through the mounts), the downward API's fields
// from the pod.
func containerEnv(t *testing.T, pod *corev1.Pod, c corev1.Container, mounts map[string]string) []string {
	t.Helper()
	var env []string
	for _, e := range c.Env {
		v := translatePath(e.Value, mounts)
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				t.Fatalf("env %s: only fieldRef is supported here", e.Name)
			}
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = pod.Name
			case "metadata.namespace":
				v = pod.Namespace
			case "spec.serviceAccountName":
				v = pod.Spec.ServiceAccountName
			default:
				t.Fatalf("env %s: field %s is not supported here", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env
}

// startEnv starts the agent binary with exactly env.
func (h *harness) startEnv(bin string, args, env []string) *process {
	h.t.Helper()
	p := &process{stderr: &syncBuffer{}, stdout: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	h.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		h.output(p.stdout.String())
		h.output(p.stderr.String())
	})
	return p
}

// exec runs the binary to completion with exactly env and returns its exit
// code and output.
func (h *harness) exec(bin string, args, env []string, timeout time.Duration) (int, string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	h.output(out.String())
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String()
	case err != nil:
		h.t.Fatalf("%s %q: %v", bin, args, err)
	}
	return 0, out.String()
}
