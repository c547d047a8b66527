// Package bench holds kvinject's end-to-end benchmarks, the ones that need more
// than one package: the agent binary's start-up and memory, a rollout of a fleet
// of agents against the Key Vault emulator's real throttling limit and, with the
// build tag integration, the webhook over HTTPS under load (hack/loadgen), pod
// creation through a real API server with and without the webhook, the
// webhook's memory against cluster size, and the version hub with a fleet of
// in-process agents (Key Vault traffic against polling, a change wave, the
// hub's memory per watcher).
//
// Each benchmark iteration is one whole scenario; results are custom metrics
// (b.ReportMetric), and the scenario's size comes from KVINJECT_BENCH_SCALE:
// "full" for the sizes in BENCHMARKS.md (hack/bench.sh sets it), anything else
// for a smoke-sized run that only proves the benchmark still works (CI runs
// `go test -tags integration -run '^$' -bench . -benchtime=1x ./test/bench/...`).
// Sub-benchmark names carry the size, so smoke numbers are never mistaken for
// the real ones.
package bench
