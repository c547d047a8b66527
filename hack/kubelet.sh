#!/usr/bin/env bash
# kubelet.sh prepares this machine for the real-kubelet tests (`make e2e-kubelet`,
# test/e2e) and prints the folder that holds kube-apiserver, etcd and kubelet:
#
#   - the kubelet, built once from the Go module proxy for the same Kubernetes
#     version as kube-apiserver, by hack/kube-binaries.sh into the same cache
#     (~/.cache/kvinject/k8s/<version>; ~2 min once kube-apiserver is built);
#   - Debian's containerd and runc, installed with apt-get when missing. The
#     install starts no service: the tests run their own containerd with its
#     state in a temporary folder, and stop it.
#
# Running containerd and the kubelet needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "kubelet.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "the real-kubelet tests run containerd, runc and a kubelet, which need root; run as root"
  exit 1
fi

missing=()
for tool in containerd ctr containerd-shim-runc-v2 runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian's containerd and runc (missing: ${missing[*]})"
  # Keep the package from starting its own containerd service. The policy
  # (when this script adds it) and the log go on exit whatever happens: a
  # policy-rc.d left behind would block every service start on this machine.
  policy=/usr/sbin/policy-rc.d
  added_policy=
  out=
  cleanup() {
    if [ -n "$added_policy" ]; then rm -f "$policy"; fi
    if [ -n "$out" ]; then rm -f "$out"; fi
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  if [ ! -e "$policy" ]; then
    added_policy=1
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
  fi
  out=$(mktemp)
  status=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd runc; } >"$out" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    cat "$out" >&2
    log "apt-get failed ($status)"
    exit "$status"
  fi
  cleanup
  added_policy= out=
  trap - EXIT INT TERM HUP
  log "installed: $(containerd --version), $(runc --version | head -1)"
fi

hack/kube-binaries.sh kubelet
