# kvinject — see README.md. `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/kvinject/kvinject/internal/version.Version=$(VERSION)
BIN       := bin
# Control-plane binaries (kube-apiserver, etcd) are built once from the Go module
# proxy into a cache outside the repository; see hack/kube-binaries.sh. A failed
# build stops the target that needs them.

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the webhook, agent and emulator into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./test/...

.PHONY: test-unit
test-unit: ## unit and golden tests (fast, no control plane)
	$(GO) test -race -count=1 ./...

.PHONY: kube-binaries
kube-binaries: ## build (once) and print the cached kube-apiserver/etcd folder
	@hack/kube-binaries.sh

.PHONY: test-integration
test-integration: ## tests against a real kube-apiserver + etcd and the Key Vault emulator
	assets=$$(hack/kube-binaries.sh); \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test -count=1 -tags integration -timeout 20m ./test/...

.PHONY: bench-smoke
bench-smoke: ## run every benchmark once, so they keep working (not a measurement)
	$(GO) test -run '^$$' -bench . -benchtime=1x ./...

.PHONY: test
test: lint test-unit bench-smoke test-integration ## everything CI runs: lint, unit, golden, benchmark smoke and integration tests

.PHONY: bench
bench: ## benchmarks of the mutation and the AdmissionReview handling (ns/op, B/op, allocs/op)
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/... ./internal/injector/

.PHONY: golden
golden: ## regenerate the golden AdmissionReview answers (review the diff!)
	$(GO) test ./internal/injector/ -run TestGolden -update

.PHONY: demo
demo: ## the local end-to-end demo: control plane, emulator, webhook, agent
	assets=$$(hack/kube-binaries.sh); \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) run ./test/demo

.PHONY: clean
clean: ## remove build output (the control-plane cache stays)
	rm -rf $(BIN)
