package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// Agent is an agent process started from a pod's injected container.
type Agent struct {
	// Dir is the host directory standing in for the in-memory volume.
	Dir string
	// TerminationLog is the host file standing in for /dev/termination-log.
	TerminationLog string
	// TokenFile is the host file holding the projected ServiceAccount token, if any.
	TokenFile string
	// HubTokenFile is the host file holding the projected hub token, if any.
	HubTokenFile string
	// Args and Env are what the process was started with.
	Args, Env []string

	cmd    *exec.Cmd
	mu     sync.Mutex
	output bytes.Buffer
	done   chan struct{}
	err    error
}

// AgentContainer returns the injected agent container of a stored pod: the native
// sidecar or init container, or with regular sidecars the named one.
func AgentContainer(pod *corev1.Pod, name string) (*corev1.Container, error) {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i], nil
			}
		}
	}
	return nil, fmt.Errorf("pod %s/%s has no container %q", pod.Namespace, pod.Name, name)
}

// StartAgent runs the agent binary with exactly the command, arguments and
// environment of the named container of the stored pod. Only host paths are
// remapped: the volume directory and the projected token file (minted through the
// TokenRequest API with the audience and lifetime the pod asks for). The explicit
// test-only options point the agent at the emulator: its CA as the only trusted
// root, and a dial override for the real Azure host names.
func (e *Env) StartAgent(ctx context.Context, pod *corev1.Pod, container string) (*Agent, error) {
	c, err := AgentContainer(pod, container)
	if err != nil {
		return nil, err
	}
	if len(c.Command) != 1 || c.Command[0] != mutate.AgentBinary {
		return nil, fmt.Errorf("container %q runs %q, not the agent", container, c.Command)
	}
	dir, err := e.TempDir("volume-")
	if err != nil {
		return nil, err
	}
	// The termination log lives beside, not inside, the volume, as in a pod.
	a := &Agent{Dir: dir, TerminationLog: dir + ".termination-log", done: make(chan struct{})}
	cred, err := e.prepareAsKubelet(pod, c, a)
	if err != nil {
		return nil, err
	}

	mountDir := map[string]string{}
	for _, m := range c.VolumeMounts {
		mountDir[m.Name] = m.MountPath
	}
	for _, arg := range c.Args {
		if v, ok := strings.CutPrefix(arg, "--dir="); ok {
			if v != mountDir[mutate.VolumeName] {
				return nil, fmt.Errorf("agent --dir %q is not where the secrets volume is mounted (%q)", v, mountDir[mutate.VolumeName])
			}
			arg = "--dir=" + dir
		}
		a.Args = append(a.Args, arg)
	}
	a.Args = append(a.Args, "--termination-log="+a.TerminationLog)

	for _, ev := range c.Env {
		val := ev.Value
		if ev.ValueFrom != nil {
			if val, err = fieldValue(pod, ev.ValueFrom); err != nil {
				return nil, fmt.Errorf("env %s: %w", ev.Name, err)
			}
		}
		switch ev.Name {
		case agentconfig.EnvTokenFile:
			if a.TokenFile, err = e.projectToken(ctx, pod, mutate.TokenVolumeName, mountDir, val, cred); err != nil {
				return nil, err
			}
			val = a.TokenFile
		case agentconfig.EnvHubTokenFile:
			if a.HubTokenFile, err = e.projectToken(ctx, pod, mutate.HubTokenVolumeName, mountDir, val, cred); err != nil {
				return nil, err
			}
			val = a.HubTokenFile
		}
		a.Env = append(a.Env, ev.Name+"="+val)
	}
	a.Env = append(a.Env,
		"KVINJECT_TEST_CA_FILE="+e.CAFile,
		"KVINJECT_TEST_RESOLVE="+e.ResolveOverride(),
		// The managed-identity source azidentity picks from the environment; on AKS it is IMDS.
		"IDENTITY_ENDPOINT="+e.Emulator.MSIEndpoint(),
		"IDENTITY_HEADER="+e.Emulator.IdentityHeader(),
		"PATH="+os.Getenv("PATH"),
	)
	cmd := exec.Command(filepath.Join(e.BinDir, "agent"), a.Args...)
	cmd.Env = a.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Stdout, cmd.Stderr = &lockedWriter{a}, &lockedWriter{a}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a.cmd = cmd
	go func() {
		a.err = cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

// ResolveOverride is the agent's test-only dial override: the Azure host names the
// emulator serves, all on its loopback address, and the hub's Service name when
// the environment runs a hub.
func (e *Env) ResolveOverride() string {
	r := e.emulatorResolve()
	if e.hub != nil {
		r += "," + HubHost + "=" + e.hub.addr
	}
	return r
}

// emulatorResolve is the dial override of the Azure host names only (Azure
// AD, Key Vault and the Storage queues of Key Vault events).
func (e *Env) emulatorResolve() string {
	addr := e.Emulator.Addr()
	var parts []string
	for _, h := range []string{"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn", "*.vault.azure.net", "*.vault.usgovcloudapi.net", "*.vault.azure.cn", "*.queue.core.windows.net"} {
		parts = append(parts, h+"="+addr)
	}
	return strings.Join(parts, ",")
}

// prepareAsKubelet sets up the volume and the process identity the way the kubelet
// would: when the tests run as root, the agent runs as its container's runAsUser and
// runAsGroup with the pod's fsGroup as a supplementary group, in a volume directory
// that is world-writable (emptyDir) and, with an fsGroup, owned by that group and
// setgid. It returns nil credentials (run as the current user) otherwise.
func (e *Env) prepareAsKubelet(pod *corev1.Pod, c *corev1.Container, a *Agent) (*syscall.Credential, error) {
	mode, gid := os.FileMode(0o777), -1
	var fsGroup *int64
	if psc := pod.Spec.SecurityContext; psc != nil {
		fsGroup = psc.FSGroup
	}
	if fsGroup != nil {
		mode, gid = 0o777|os.ModeSetgid, int(*fsGroup)
	}
	if err := os.Chown(a.Dir, -1, gid); err != nil && gid >= 0 {
		return nil, err
	}
	if err := os.Chmod(a.Dir, mode); err != nil {
		return nil, err
	}
	sc := c.SecurityContext
	if os.Geteuid() != 0 || sc == nil || sc.RunAsUser == nil || sc.RunAsGroup == nil {
		return nil, nil
	}
	cred := &syscall.Credential{Uid: uint32(*sc.RunAsUser), Gid: uint32(*sc.RunAsGroup)}
	if fsGroup != nil {
		cred.Groups = []uint32{uint32(*fsGroup)}
	}
	// The kubelet creates the termination log writable by the container.
	if err := os.WriteFile(a.TerminationLog, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Chown(a.TerminationLog, int(cred.Uid), int(cred.Gid)); err != nil {
		return nil, err
	}
	return cred, nil
}

// projectToken mints the token the kubelet would project for the pod's token volume,
// readable the way the kubelet makes it: by everyone in the container without an
// fsGroup (only the agent mounts it), else by the fsGroup.
func (e *Env) projectToken(ctx context.Context, pod *corev1.Pod, volume string, mountDir map[string]string, file string, cred *syscall.Credential) (string, error) {
	var proj *corev1.ServiceAccountTokenProjection
	for _, v := range pod.Spec.Volumes {
		if v.Name == volume && v.Projected != nil && len(v.Projected.Sources) == 1 {
			proj = v.Projected.Sources[0].ServiceAccountToken
		}
	}
	if proj == nil || filepath.Join(mountDir[volume], proj.Path) != file {
		return "", fmt.Errorf("token file %q is not in the projected token volume %s", file, volume)
	}
	tr, err := e.Kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{proj.Audience},
			ExpirationSeconds: proj.ExpirationSeconds,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("minting the projected token: %w", err)
	}
	dir, err := e.TempDir("token-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, proj.Path)
	if err := os.WriteFile(path, []byte(tr.Status.Token), 0o644); err != nil {
		return "", err
	}
	if cred != nil && len(cred.Groups) > 0 {
		if err := os.Chown(path, -1, int(cred.Groups[0])); err != nil {
			return "", err
		}
		return path, os.Chmod(path, 0o640)
	}
	return path, nil
}

// RunProbe runs the container's startup probe command, with the volume directory
// remapped to dir, and returns its error (nil when it passes).
func (e *Env) RunProbe(pod *corev1.Pod, container, dir string) error {
	c, err := AgentContainer(pod, container)
	if err != nil {
		return err
	}
	if c.StartupProbe == nil || c.StartupProbe.Exec == nil {
		return fmt.Errorf("container %q has no exec startup probe", container)
	}
	cmd := c.StartupProbe.Exec.Command
	if len(cmd) == 0 || cmd[0] != mutate.AgentBinary {
		return fmt.Errorf("the startup probe runs %q, not the agent", cmd)
	}
	var args []string
	for _, arg := range cmd[1:] {
		if strings.HasPrefix(arg, "--dir=") {
			arg = "--dir=" + dir
		}
		args = append(args, arg)
	}
	out, err := exec.Command(filepath.Join(e.BinDir, "agent"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// fieldValue resolves the downward-API fields the agent uses.
func fieldValue(pod *corev1.Pod, src *corev1.EnvVarSource) (string, error) {
	if src.FieldRef == nil {
		return "", errors.New("only fieldRef is supported")
	}
	switch src.FieldRef.FieldPath {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	}
	return "", fmt.Errorf("unsupported field %q", src.FieldRef.FieldPath)
}

// Wait waits for the agent to exit, up to timeout.
func (a *Agent) Wait(timeout time.Duration) error {
	select {
	case <-a.done:
		return a.err
	case <-time.After(timeout):
		return fmt.Errorf("the agent did not exit within %s", timeout)
	}
}

// Stop sends SIGTERM and waits (SIGKILL after 10s).
func (a *Agent) Stop() error {
	select {
	case <-a.done:
		return a.err
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	return a.err
}

// Output returns everything the agent printed so far.
func (a *Agent) Output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.output.String()
}

// TerminationMessage returns what the agent wrote to its termination log.
func (a *Agent) TerminationMessage() string {
	b, _ := os.ReadFile(a.TerminationLog)
	return string(b)
}

type lockedWriter struct{ a *Agent }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return w.a.output.Write(p)
}

// RegisterWorkloadIdentity federates a ServiceAccount with an emulated app
// registration, as `az identity federated-credential create` does.
func (e *Env) RegisterWorkloadIdentity(clientID, tenantID, namespace, serviceAccount string) error {
	return e.Emulator.AddWorkloadIdentity(emulator.WorkloadIdentity{
		ClientID: clientID,
		TenantID: tenantID,
		Issuer:   e.Issuer(),
		Subject:  "system:serviceaccount:" + namespace + ":" + serviceAccount,
	})
}
