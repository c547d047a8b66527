// Package version holds the build version of kvinject's binaries and the agent
// image the webhook injects by default, both set at link time:
//
//	go build -ldflags "-X github.com/kvinject/kvinject/internal/version.Version=v0.1.0 \
//	    -X github.com/kvinject/kvinject/internal/version.AgentImage=ghcr.io/kvinject/agent:v0.1.0@sha256:<digest>"
//
// `make build` stamps the version and the tag-only agent image
// (<registry>/agent:<version>); `make images`, which builds release images,
// stamps the agent image by digest, so every pod gets exactly the agent that
// was released with the webhook. Package agentimage resolves and validates the
// default; this package stays free of dependencies, because the agent links it.
package version

// Dev is the Version of a build that was not stamped.
const Dev = "dev"

// Registry is where release images are published: the default agent of a
// build stamped with a Version only is Registry + "/agent:" + Version.
const Registry = "ghcr.io/kvinject"

// Version is the release version; Dev for local builds.
var Version = Dev

// AgentImage is the reference of the agent image this build injects unless
// told otherwise (--agent-image): "<registry>/agent:<version>", or
// "<registry>/agent:<version>@sha256:<digest>" in release builds. Empty when
// not stamped; see package agentimage, which resolves the default.
var AgentImage = ""
