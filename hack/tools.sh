#!/usr/bin/env bash
# tools.sh installs (once) the pinned command-line tools kvinject's install
# needs, kustomize and helm, with `go install` from the Go module proxy into a
# cache folder outside the repository, and prints the path of each tool asked
# for, one per line.
#
#   hack/tools.sh kustomize helm
#
# Environment: KUSTOMIZE_VERSION (default v5.8.2; v5.8.3 needs Go 1.27),
# HELM_VERSION (default v3.22.0), KVINJECT_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/kvinject).
set -euo pipefail

KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.2}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${KVINJECT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvinject}

log() { echo "tools: $*" >&2; }

# install <name> <module/package> <version>: installs into
# $CACHE/tools/<name>-<version>/<name> unless it is there, atomically (a
# concurrent run never sees a partial binary).
install() {
  local name=$1 pkg=$2 version=$3
  local dir="$CACHE/tools/$name-$version"
  if [ ! -x "$dir/$name" ]; then
    log "installing $name $version (first time only)"
    mkdir -p "$dir"
    local tmp; tmp=$(mktemp -d "$dir/.tmp.XXXXXX")
    # Outside any module, so that the project's go.mod is neither read nor changed.
    (cd "$tmp" && GOFLAGS=-mod=mod GOBIN="$tmp" CGO_ENABLED=0 go install "$pkg@$version")
    mv "$tmp/$name" "$dir/$name"
    rm -rf "$tmp"
  fi
  echo "$dir/$name"
}

[ $# -gt 0 ] || set -- kustomize helm
for tool in "$@"; do
  case "$tool" in
    kustomize) install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION" ;;
    helm) install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;
    *) echo "tools: unknown tool $tool (known: kustomize, helm)" >&2; exit 2 ;;
  esac
done
