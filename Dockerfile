# syntax=docker/dockerfile:1
# kvinject's images for people with Docker (or any BuildKit builder). They hold
# exactly what `make images` builds without Docker (hack/images): a static
# binary on an empty base with the nonroot user 65532 and a CA bundle taken
# from the pinned Go module golang.org/x/crypto/x509roots/fallback.
#
#   docker build --target webhook -t ghcr.io/kvinject/webhook:dev .
#   docker build --target agent   -t ghcr.io/kvinject/agent:dev .
#   docker build --target hub     -t ghcr.io/kvinject/hub:dev .
#   docker build --target restarter -t ghcr.io/kvinject/restarter:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 --target agent ...
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/kvinject/kvinject/internal/version.Version=${VERSION}" \
      -o /out/ ./cmd/webhook ./cmd/agent ./cmd/hub ./cmd/restarter \
 && go run ./hack/images -rootfs /rootfs

FROM scratch AS base
COPY --from=build /rootfs/ /
COPY --from=build --chown=65532:65532 /rootfs/home/nonroot /home/nonroot
ENV PATH=/ SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
WORKDIR /

FROM base AS agent
COPY --from=build /out/agent /kvinject-agent
ENTRYPOINT ["/kvinject-agent"]

FROM base AS webhook
COPY --from=build /out/webhook /kvinject-webhook
ENTRYPOINT ["/kvinject-webhook"]

FROM base AS hub
COPY --from=build /out/hub /kvinject-hub
ENTRYPOINT ["/kvinject-hub"]

FROM base AS restarter
COPY --from=build /out/restarter /kvinject-restarter
ENTRYPOINT ["/kvinject-restarter"]
