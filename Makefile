# kvinject — see README.md. `make help` lists the targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The binaries know their version and the agent image the webhook injects by
# default (internal/version): the agent of this version, by tag. `make images`
# stamps the agent by digest instead. AGENT_IMAGE=<ref> stamps another default,
# e.g. a mirror's. VERSION=dev stamps none, as a plain `go build`: no agent:dev
# image is published. (Recursive: REGISTRY is set further down.)
VERSION_PKG := github.com/kvinject/kvinject/internal/version
AGENT_IMAGE ?= $(if $(filter dev,$(VERSION)),,$(REGISTRY)/agent:$(VERSION))
LDFLAGS_VERSION = -s -w -X $(VERSION_PKG).Version=$(VERSION)
LDFLAGS   = $(LDFLAGS_VERSION) -X $(VERSION_PKG).AgentImage=$(AGENT_IMAGE)
BIN       := bin
# Control-plane binaries (kube-apiserver, etcd) are built once from the Go module
# proxy into a cache outside the repository; see hack/kube-binaries.sh. A failed
# build stops the target that needs them.

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the webhook, agent, hub, restarter and emulator into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./test/...
	$(GO) vet -tags e2e ./test/e2e/...

.PHONY: test-unit
test-unit: ## unit and golden tests (fast, no control plane)
	$(GO) test -race -count=1 ./...

.PHONY: kube-binaries
kube-binaries: ## build (once) and print the cached kube-apiserver/etcd folder
	@hack/kube-binaries.sh

.PHONY: test-integration
test-integration: ## tests against a real kube-apiserver + etcd and the Key Vault emulator
	assets=$$(hack/kube-binaries.sh); \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test -count=1 -tags integration -timeout 20m ./test/... ./internal/injector/

.PHONY: e2e-kubelet
e2e-kubelet: ## real pods on a real kubelet + containerd on this machine (root; builds the kubelet, installs containerd/runc)
	assets=$$(hack/kubelet.sh); \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test -count=1 -tags e2e -timeout 20m -v ./test/e2e/

.PHONY: bench-smoke
bench-smoke: ## run every benchmark once, smoke-sized, so they keep working (not a measurement)
	$(GO) test -run '^$$' -bench . -benchtime=1x ./...
	assets=$$(hack/kube-binaries.sh); \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test -tags integration -run '^$$' -bench . -benchtime=1x -timeout 10m ./test/bench/

# The AdmissionReview targets first replay ~200 seeds (about 45 s on 2 cores)
# before they mutate anything, so they get a longer budget.
FUZZTIME ?= 10s
FUZZTIME_REVIEW ?= 75s

.PHONY: fuzz-smoke
fuzz-smoke: ## run every fuzz target briefly; longer: make fuzz-smoke FUZZTIME=10m FUZZTIME_REVIEW=30m
	for target in FuzzParseEntries FuzzAgentArgs FuzzVaultURL FuzzParseOnChange FuzzTemplate; do \
	  $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) ./pkg/agentconfig/; done
	$(GO) test -run '^$$' -fuzz '^FuzzEditYAML$$' -fuzztime $(FUZZTIME) ./internal/offline/
	for target in FuzzAdmissionReview FuzzPodAnnotations; do \
	  $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME_REVIEW) -fuzzminimizetime 3s ./internal/injector/; done

.PHONY: test
test: lint test-unit bench-smoke fuzz-smoke test-integration ## everything CI runs: lint, unit, golden, benchmark and fuzz smoke, integration tests

.PHONY: bench
bench: ## every benchmark at full size, as in BENCHMARKS.md (over an hour; hub and hub-events about 20 minutes each); some: make bench GROUPS="agent webhook"
	hack/bench.sh $(GROUPS)

.PHONY: golden
golden: ## regenerate the golden AdmissionReview answers and offline injections (review the diff!)
	$(GO) test ./internal/injector/ -run TestGolden -update
	$(GO) test ./internal/offline/ -run TestGolden -update

# The demo's own budget (5 minutes) starts once everything is built: the first run
# on an empty cache builds kube-apiserver and etcd (~10 min on 2 cores) and then
# the demo, webhook, agent and hub (a few minutes), each announced on the terminal.
.PHONY: demo
demo: ## the local end-to-end demo: control plane, emulator, webhook, hub, agent (first run builds for ~15 min)
	@assets=$$(hack/kube-binaries.sh); \
	  echo "demo: building the demo, webhook, agent and hub into $(BIN)/demo (a cold build cache takes a few minutes)"; \
	  start=$$(date +%s); \
	  CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/demo/ ./test/demo ./cmd/webhook ./cmd/agent ./cmd/hub; \
	  echo "demo: built in $$(( $$(date +%s) - start ))s"; \
	  KUBEBUILDER_ASSETS="$$assets" $(BIN)/demo/demo --bin-dir=$(BIN)/demo

.PHONY: clean
clean: ## remove build output (the control-plane cache stays)
	rm -rf $(BIN)

# --- Installation: tools, images, chart and manifests (docs/install.md) ---
REGISTRY  ?= ghcr.io/kvinject
# Comma-separated os/arch pairs, e.g. linux/amd64,linux/arm64.
PLATFORMS ?= linux/$(shell $(GO) env GOARCH)
# Every timestamp in the images; the last commit's time makes builds reproducible.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DIST      := dist

.PHONY: tools
tools: ## install (once) the pinned kustomize and helm into the cache and print their paths
	@hack/tools.sh kustomize helm

# The agent first: its image's digest (the image index's with several platforms),
# written by hack/images into dist/images/agent.ref, is stamped into the webhook
# as its default agent image (<registry>/agent:<version>@sha256:...), so every
# pod of a release gets exactly the agent released with its webhook.
IMAGES_FLAGS = -bindir $(DIST)/bin -platforms '$(PLATFORMS)' -registry '$(REGISTRY)' \
  -version '$(VERSION)' -source-date-epoch '$(SOURCE_DATE_EPOCH)' -out $(DIST)/images

.PHONY: images
images: ## build the agent image, then the webhook's (pinning that agent by digest), the hub's and the restarter's, as OCI tarballs into dist/images (PLATFORMS, REGISTRY, VERSION)
	rm -rf $(DIST)/bin $(DIST)/images
	for p in $$(echo '$(PLATFORMS)' | tr ',' ' '); do \
	  os=$${p%%/*}; arch=$${p#*/}; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS_VERSION)' -o $(DIST)/bin/$${os}_$${arch}/ ./cmd/agent ./cmd/hub ./cmd/restarter; \
	done
	$(GO) run ./hack/images -only agent $(IMAGES_FLAGS)
	agent=$$(cat $(DIST)/images/agent.ref); \
	  echo "images: the webhook injects $$agent by default"; \
	  for p in $$(echo '$(PLATFORMS)' | tr ',' ' '); do \
	    os=$${p%%/*}; arch=$${p#*/}; \
	    CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS_VERSION) -X $(VERSION_PKG).AgentImage=$$agent" \
	      -o $(DIST)/bin/$${os}_$${arch}/ ./cmd/webhook; \
	  done
	$(GO) run ./hack/images -only webhook,hub,restarter $(IMAGES_FLAGS)

.PHONY: helm-lint
helm-lint: ## helm lint --strict the chart in both certificate modes, without and with the hub, and with the restart controller
	helm=$$(hack/tools.sh helm); hub='--set hub.enabled=true --set hub.identity.clientID=00000000-0000-0000-0000-000000000000'; \
	  $$helm lint --strict charts/kvinject; \
	  $$helm lint --strict charts/kvinject --set certificates.mode=cert-manager; \
	  $$helm lint --strict charts/kvinject $$hub; \
	  $$helm lint --strict charts/kvinject --set certificates.mode=cert-manager $$hub; \
	  $$helm lint --strict charts/kvinject $$hub --set restarter.enabled=true; \
	  $$helm lint --strict charts/kvinject --set certificates.mode=cert-manager $$hub --set restarter.enabled=true

.PHONY: render
render: ## render the kustomize installs and package the chart into dist/install, for review or release
	mkdir -p $(DIST)/install
	kustomize=$$(hack/tools.sh kustomize); helm=$$(hack/tools.sh helm); \
	  $$kustomize build manifests/install/builtin-certs > $(DIST)/install/kvinject-builtin-certs.yaml; \
	  $$kustomize build manifests/install/cert-manager > $(DIST)/install/kvinject-cert-manager.yaml; \
	  $$kustomize build manifests/install/builtin-certs-hub > $(DIST)/install/kvinject-builtin-certs-hub.yaml; \
	  $$kustomize build manifests/install/cert-manager-hub > $(DIST)/install/kvinject-cert-manager-hub.yaml; \
	  $$helm package charts/kvinject --destination $(DIST)/install

.PHONY: test-install
test-install: ## only the installation tests (manifests, chart, certificates) on a real kube-apiserver
	assets=$$(hack/kube-binaries.sh); \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test -count=1 -tags integration -timeout 20m ./test/install/
