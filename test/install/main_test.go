//go:build integration

// Package install proves kvinject's installation on a real kube-apiserver and
// etcd (envtest). It renders the kustomize install (manifests/) and the Helm
// chart (charts/kvinject), applies them with server-side apply, and checks that:
//   - every object is accepted, without warnings;
//   - the webhook's pod template passes Pod Security "restricted";
//   - the RBAC grants exactly what the webhook needs (SelfSubjectAccessReview and
//     SelfSubjectRulesReview with the installed ServiceAccount's token);
//   - the webhook, run on this machine as the Deployment's pod template says
//     (its arguments, environment, ports and probes) with the installed
//     ServiceAccount's token, gets a trusted certificate in both certificate
//     modes, after which pods created through the API are mutated by the API
//     server calling the webhook's Service over TLS;
//   - built-in certificates are shared by the replicas and renewed without a
//     failed admission, and cert-manager renewals are followed the same way;
//   - with the version hub (the *-hub installs, Helm's hub.enabled): its pods
//     pass Pod Security, its ServiceAccount may create TokenReviews and get
//     pods and nothing else (SelfSubjectRulesReview, SubjectAccessReview), its
//     certificate is trusted under the webhook's --hub-url name with the CA the
//     webhook gives agents, rotating agents are given the hub, and kvinject-hub,
//     run as its pod template says, gets ready and authenticates and authorizes
//     an agent's request;
//   - with the restart controller (manifests/examples/restarter, Helm's
//     restarter.enabled, proveRestarter): its pod passes Pod Security, it has
//     no rights in a namespace until the namespace binds its ClusterRole and
//     then exactly what it needs, it restarts a real Deployment, and the
//     ValidatingAdmissionPolicy for its ServiceAccount refuses every other change.
//
// The API server reaches the webhook exactly as in a cluster: through the
// Service named in the webhook configuration, verifying the certificate for
// <service>.<namespace>.svc against caBundle. Its egress selector sends the
// connection to the Service's cluster IP through an HTTP CONNECT proxy on a
// Unix socket (egressProxy), which forwards it to the local replicas.
//
// Run with `make test-integration` (KUBEBUILDER_ASSETS from hack/kube-binaries.sh);
// kustomize and helm come from hack/tools.sh.
package install

import (
	"fmt"
	"github.com/kvinject/kvinject/internal/testing/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var (
	// root is the repository root.
	root string
	// webhookBin is the webhook binary built for this run.
	webhookBin string
	// hubBin is the version hub's binary (cmd/hub), or "" when it did not
	// build: hubBuildErr says why, and only the tests that run it fail.
	hubBin, hubBuildErr string
	// kustomizeBin and helmBin are the pinned tools.
	kustomizeBin, helmBin string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "install: KUBEBUILDER_ASSETS is not set: run through `make test-integration`, or set it to the output of hack/kube-binaries.sh")
		return 1
	}
	var err error
	if root, err = testenv.RepoRoot(); err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "kvinject-install-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(tmp, "webhook"), "./cmd/webhook")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "install: go build ./cmd/webhook: %v\n%s", err, out)
		return 1
	}
	webhookBin = filepath.Join(tmp, "webhook")
	build = exec.Command("go", "build", "-trimpath", "-o", filepath.Join(tmp, "hub"), "./cmd/hub")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		hubBuildErr = fmt.Sprintf("go build ./cmd/hub: %v\n%s", err, out)
	} else {
		hubBin = filepath.Join(tmp, "hub")
	}

	tools := exec.Command(filepath.Join(root, "hack", "tools.sh"), "kustomize", "helm")
	tools.Stderr = os.Stderr
	out, err := tools.Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "install: hack/tools.sh: %v\n", err)
		return 1
	}
	paths := strings.Fields(string(out))
	if len(paths) != 2 {
		fmt.Fprintf(os.Stderr, "install: hack/tools.sh printed %q, want two paths\n", out)
		return 1
	}
	kustomizeBin, helmBin = paths[0], paths[1]
	return m.Run()
}
