// Package agentimage resolves the agent image a build of the webhook injects by
// default, from what the linker stamped into package version, and validates it
// with go-containerregistry's reference parser. It is apart from package
// version so that the agent, which links version, does not link the parser.
package agentimage

import (
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kvinject/kvinject/internal/version"
)

// Agent is a build's default agent image.
type Agent struct {
	// Image is the reference, empty when the build has no default (a
	// development build).
	Image string
	// Pinned is true when Image names a digest, so every node runs the same
	// bytes whatever the tag points at.
	Pinned bool
	// Source says where Image comes from, for messages: "stamped at build time",
	// "the registry default for version v0.1.0" or "none: development build".
	Source string
}

// Describe returns a one-line account of a for help texts and logs.
func (a Agent) Describe() string {
	switch {
	case a.Image == "":
		return "none: this is a development build (version " + version.Version + ") with no agent image stamped in"
	case a.Pinned:
		return a.Image + " (" + a.Source + ", pinned by digest)"
	default:
		return a.Image + " (" + a.Source + ", by tag)"
	}
}

// Default returns this build's default agent image:
//   - version.AgentImage when it was stamped, pinned when it names a digest;
//   - else, when version.Version was stamped, version.Registry + "/agent:" +
//     version.Version, by tag;
//   - else (a development build) none: Agent.Image is empty.
//
// It fails when the stamped reference does not parse as a fully qualified
// image reference (registry, repository and a tag or digest), which is a
// broken build rather than a user's mistake.
func Default() (Agent, error) {
	return resolve(version.Version, version.AgentImage)
}

// resolve is Default for the given stamps.
func resolve(stamp, stamped string) (Agent, error) {
	if stamped != "" {
		ref, err := name.ParseReference(stamped, name.StrictValidation)
		if err != nil {
			return Agent{}, fmt.Errorf("the agent image stamped into this build (internal/version.AgentImage) %q is not a registry/repository:tag[@sha256:digest] reference: %w", stamped, err)
		}
		_, pinned := ref.(name.Digest)
		return Agent{Image: stamped, Pinned: pinned, Source: "stamped at build time"}, nil
	}
	if stamp == "" || stamp == version.Dev {
		return Agent{Source: "none: development build"}, nil
	}
	image := version.Registry + "/agent:" + stamp
	if _, err := name.NewTag(image, name.StrictValidation); err != nil {
		return Agent{}, fmt.Errorf("the version stamped into this build (internal/version.Version) %q is not an image tag, so it gives no agent image %q: %w", stamp, image, err)
	}
	return Agent{Image: image, Source: "the registry default for version " + stamp}, nil
}
