// Package e2e runs kvinject's pods on a real node: a kubelet (built from the Go
// module proxy for the API server's Kubernetes version) with Debian's
// containerd and runc, registered with the real kube-apiserver and etcd of
// internal/testing/testenv, which also runs the real webhook, the version hub
// (cmd/hub) and the Key Vault + Azure AD emulator. The images (the agent's, a
// test app's and the pod sandbox's) are built locally as OCI tarballs by
// internal/images and imported into containerd; no registry is involved.
//
// The tests, which need root and carry the build tag e2e, prove that what the
// webhook writes works when a kubelet runs it: the app container sees every
// mapped file at its first instruction, the volume is a tmpfs, the projected
// token is minted for the pod's ServiceAccount and reaches only the agent, a
// rotation reaches the running app through the hub within one sweep and never
// as a torn set, an identity without access keeps the app from starting and
// explains why in the pod's status, a Job-style pod completes, and no secret
// value is left on the node's disk.
//
// Run them with `make e2e-kubelet` (docs/development.md), which builds the
// kubelet into the cache, installs containerd and runc when they are missing,
// and sets KUBEBUILDER_ASSETS.
package e2e
