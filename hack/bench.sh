#!/usr/bin/env bash
# bench.sh runs kvinject's benchmarks at full size, one at a time (the machine
# has two cores), and keeps their raw output and a description of the machine.
# BENCHMARKS.md holds the numbers of one run and names these commands.
#
#   hack/bench.sh [GROUP...]   default: every group but hub-faults, over an hour
#
# Groups: mutation, emulator, agent, rollout, webhook, podcreate, memory, hub,
# hub-events, hub-faults (not in the default list: ~30 minutes).
# Environment: BENCH_OUT (default $TMPDIR/kvinject-bench-results) receives <group>.txt and
# machine.txt. The webhook group runs `hey` for the anchor commands of
# shared/docs/performance-anchors.md and installs it with apt-get when it is
# missing and this runs as root; without it, those two runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${BENCH_OUT:-${TMPDIR:-/tmp}/kvinject-bench-results}
mkdir -p "$OUT"
export KVINJECT_BENCH_SCALE=full
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(mutation emulator agent rollout webhook podcreate memory hub hub-events)

log() { echo "bench: $*" >&2; }

machine() {
  {
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu:     $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    echo "memory:  $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel:  $(uname -sr)"
    echo "go:      $(go version)"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([ -z "$(git status --porcelain 2>/dev/null)" ] || echo ' (with uncommitted changes)')"
    echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) before the run"
  } >"$OUT/machine.txt"
  cat "$OUT/machine.txt" >&2
}

# run GROUP ARGS...: go test ARGS, output to the terminal and to $OUT/GROUP.txt.
run() {
  local group=$1
  shift
  log "$group: go test $*"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/$group.txt"
  go test -run '^$' "$@" | tee -a "$OUT/$group.txt"
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/$group.txt"
}

ensure_hey() {
  command -v hey >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing hey (Debian package) for the anchor commands"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null; } ||
      log "could not install hey: the anchor commands are skipped"
  else
    log "hey is not installed: the anchor commands are skipped"
  fi
}

machine
for g in "${groups[@]}"; do
  case $g in
  mutation) run mutation -bench . -benchmem -count=5 ./pkg/... ./internal/injector/ ;;
  emulator) run emulator -bench . -benchmem -count=3 ./internal/testing/emulator/ ;;
  agent)
    run agent -bench 'BenchmarkFirstSet' -benchtime=10x -count=3 ./internal/agent/
    run agent-rotation -bench 'BenchmarkRotation' -benchtime=40x ./internal/agent/
    run agent-process -bench 'BenchmarkAgentProcess' -benchtime=20x ./test/bench/
    run agent-sidecar -bench 'BenchmarkAgentSidecarMemory' -benchtime=1x ./test/bench/
    ;;
  rollout) run rollout -bench 'BenchmarkKeyVaultRollout' -benchtime=1x -timeout=30m ./test/bench/ ;;
  webhook | podcreate)
    assets=$(hack/kube-binaries.sh)
    [ "$g" = webhook ] && ensure_hey
    bench=BenchmarkWebhookHTTPS
    [ "$g" = podcreate ] && bench=BenchmarkPodCreate
    KUBEBUILDER_ASSETS="$assets" run "$g" -tags integration -bench "$bench" -benchtime=1x -timeout=30m ./test/bench/
    ;;
  memory)
    # The webhook's memory idle and at 10,000 Namespaces + 60,000 ServiceAccounts
    # (KVINJECT_BENCH_MEMORY_SIZE=N/M for another size; KVINJECT_BENCH_BINDIR for
    # prebuilt binaries, such as another commit's).
    KUBEBUILDER_ASSETS="$(hack/kube-binaries.sh)" run memory -tags integration -bench BenchmarkWebhookMemory -benchtime=1x -timeout=40m ./test/bench/
    ;;
  hub)
    # The version hub: steady state, a wave, a replica killed, polling for comparison
    # (KVINJECT_BENCH_HUB_PHASES=steady,wave,kill,poll), with 2,000 agents (~20 minutes;
    # KVINJECT_BENCH_HUB_AGENTS=20000 for issue 16's size, ~30 minutes). The agents run in
    # worker processes, the hub as replicas sharing one port (--bind-reuse-port); the other
    # KVINJECT_BENCH_HUB_* knobs are in BENCHMARKS.md section 10. -v: the per-phase log lines.
    KUBEBUILDER_ASSETS="$(hack/kube-binaries.sh)" run hub -v -tags integration -bench 'BenchmarkHub$' -benchtime=1x -timeout=120m ./test/bench/
    ;;
  hub-events)
    # Key Vault events (docs/events.md): 100 and then 1,000 agents, 2 hub replicas with
    # --events-queue and the installs' 30s sweep, read budget 200/s (half Key Vault's
    # limit): 20 rotations with events, 6 with the sweep alone, 10 with faulty events,
    # steady state with and without (~20 minutes; KVINJECT_BENCH_EVENTS_AGENTS,
    # _ROTATIONS, _BUDGET, _WINDOW change it). -v: the per-phase log lines.
    KUBEBUILDER_ASSETS="$(hack/kube-binaries.sh)" run hub-events -v -tags integration -bench 'BenchmarkHubEvents$' -benchtime=1x -timeout=60m ./test/bench/
    ;;
  hub-faults)
    # The version hub's faults with 2,000 agents and 3 replicas: a replica killed, every
    # replica down for 5 minutes, the hub's identity losing list (~30 minutes). The pods
    # rotate every 30s, so that the agents' stretched polling (5 x 30s) shows within the
    # outage; with the default 2m it is due 9-11 minutes after the hub is lost.
    KVINJECT_BENCH_HUB_PHASES=${KVINJECT_BENCH_HUB_PHASES:-steady,wave,kill,outage,unlistable} \
      KVINJECT_BENCH_HUB_REPLICAS=${KVINJECT_BENCH_HUB_REPLICAS:-3} \
      KVINJECT_BENCH_HUB_ROTATION=${KVINJECT_BENCH_HUB_ROTATION:-30s} \
      KUBEBUILDER_ASSETS="$(hack/kube-binaries.sh)" run hub-faults -v -tags integration -bench 'BenchmarkHub$' -benchtime=1x -timeout=120m ./test/bench/
    ;;
  *)
    log "unknown group $g (mutation, emulator, agent, rollout, webhook, podcreate, memory, hub, hub-events, hub-faults)"
    exit 2
    ;;
  esac
done
log "raw results in $OUT/"
