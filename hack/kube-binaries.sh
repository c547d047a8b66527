#!/usr/bin/env bash
# kube-binaries.sh builds the control-plane binaries that envtest and the demo run
# (kube-apiserver, etcd; kubelet on request) from the Go module proxy, for pinned
# versions, into a cache folder outside the repository, and reuses that cache.
#
#   hack/kube-binaries.sh [kubelet]   prints the folder that holds the binaries
#
# Environment: KUBE_VERSION (default v1.37.1), ETCD_VERSION (default v3.6.16),
# KVINJECT_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/kvinject).
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.37.1}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${KVINJECT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvinject}
OUT="$CACHE/k8s/$KUBE_VERSION-etcd$ETCD_VERSION"
mkdir -p "$OUT"

log() { echo "kube-binaries: $*" >&2; }

build_etcd() {
  [ -x "$OUT/etcd" ] && return 0
  log "building etcd $ETCD_VERSION (first time only, ~1 min)"
  local d; d=$(mktemp -d)
  trap 'rm -rf "$d"' RETURN
  (cd "$d" && go mod init kvinject.local/etcd >/dev/null 2>&1 &&
    GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 &&
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$OUT/etcd.tmp" "$OUT/etcd"
}

# kube_module writes a throwaway module that requires k8s.io/kubernetes and replaces
# every k8s.io staging module it pins at v0.0.0 with the matching published version.
kube_module() {
  local d=$1 minor=${KUBE_VERSION#v1.}
  local staging="v0.$minor"
  (cd "$d" && go mod init kvinject.local/kube >/dev/null 2>&1)
  local gomod; gomod=$(cd "$d" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    grep -Eo '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0(\s|$)' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}' | sort -u
  } >>"$d/go.mod"
}

build_kube() {
  local bin=$1
  [ -x "$OUT/$bin" ] && return 0
  log "building $bin $KUBE_VERSION (first time only, ~6 min cold)"
  local d; d=$(mktemp -d)
  trap 'rm -rf "$d"' RETURN
  kube_module "$d"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  (cd "$d" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$OUT/$bin.tmp" "k8s.io/kubernetes/cmd/$bin")
  mv "$OUT/$bin.tmp" "$OUT/$bin"
}

build_etcd
build_kube kube-apiserver
for extra in "$@"; do build_kube "$extra"; done
echo "$OUT"
