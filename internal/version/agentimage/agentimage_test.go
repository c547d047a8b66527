package agentimage

import (
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/version"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestResolveAgentImage checks the default agent image for each way a build
// can be stamped.
func TestResolveAgentImage(t *testing.T) {
	for _, tc := range []struct {
		name             string
		version, stamped string
		want             Agent
		wantErr          string
	}{
		{name: "development build", version: version.Dev,
			want: Agent{Source: "none: development build"}},
		{name: "unstamped, empty version", version: "",
			want: Agent{Source: "none: development build"}},
		{name: "stamped by tag (make build)", version: "v0.1.0", stamped: "ghcr.io/kvinject/agent:v0.1.0",
			want: Agent{Image: "ghcr.io/kvinject/agent:v0.1.0", Source: "stamped at build time"}},
		{name: "stamped by tag and digest (make images)", version: "v0.1.0", stamped: "ghcr.io/kvinject/agent:v0.1.0@" + testDigest,
			want: Agent{Image: "ghcr.io/kvinject/agent:v0.1.0@" + testDigest, Pinned: true, Source: "stamped at build time"}},
		{name: "stamped by digest only", version: "v0.1.0", stamped: "registry.example.com:5000/mirror/agent@" + testDigest,
			want: Agent{Image: "registry.example.com:5000/mirror/agent@" + testDigest, Pinned: true, Source: "stamped at build time"}},
		{name: "a mirror stamped into a dev build", version: version.Dev, stamped: "contoso.azurecr.io/kvinject/agent:dev",
			want: Agent{Image: "contoso.azurecr.io/kvinject/agent:dev", Source: "stamped at build time"}},
		{name: "git describe version", version: "v0.1.0-3-gabc1234-dirty", stamped: "ghcr.io/kvinject/agent:v0.1.0-3-gabc1234-dirty",
			want: Agent{Image: "ghcr.io/kvinject/agent:v0.1.0-3-gabc1234-dirty", Source: "stamped at build time"}},
		{name: "version only: the registry default", version: "v0.2.0",
			want: Agent{Image: "ghcr.io/kvinject/agent:v0.2.0", Source: "the registry default for version v0.2.0"}},
		{name: "version that is no tag", version: "v0.2.0+build.1",
			wantErr: `the version stamped into this build (internal/version.Version) "v0.2.0+build.1" is not an image tag`},
		{name: "stamp without a tag", version: "v0.1.0", stamped: "ghcr.io/kvinject/agent",
			wantErr: `the agent image stamped into this build (internal/version.AgentImage) "ghcr.io/kvinject/agent" is not a registry/repository:tag[@sha256:digest] reference`},
		{name: "stamp without a registry", version: "v0.1.0", stamped: "agent:v0.1.0",
			wantErr: `"agent:v0.1.0" is not a registry/repository:tag[@sha256:digest] reference`},
		{name: "stamp with a short digest", version: "v0.1.0", stamped: "ghcr.io/kvinject/agent:v0.1.0@sha256:0123",
			wantErr: `"ghcr.io/kvinject/agent:v0.1.0@sha256:0123" is not a registry/repository:tag[@sha256:digest] reference`},
		{name: "stamp with an empty digest (make images without agent.ref)", version: "v0.1.0", stamped: "ghcr.io/kvinject/agent:v0.1.0@",
			wantErr: `is not a registry/repository:tag[@sha256:digest] reference`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolve(tc.version, tc.stamped)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDefault checks that Default reads the stamped
// variables, as the linker's -X sets them.
func TestDefault(t *testing.T) {
	stamp(t, "v1.2.3", "ghcr.io/kvinject/agent:v1.2.3@"+testDigest)
	got, err := Default()
	if err != nil || got.Image != "ghcr.io/kvinject/agent:v1.2.3@"+testDigest || !got.Pinned {
		t.Errorf("Default() = %+v, %v", got, err)
	}
	stamp(t, version.Dev, "")
	if got, err := Default(); err != nil || got.Image != "" {
		t.Errorf("Default() of a dev build = %+v, %v", got, err)
	}
}

// TestDescribe checks the one-line account that help texts and logs show.
func TestDescribe(t *testing.T) {
	stamp(t, "v1.2.3", "")
	for _, tc := range []struct {
		agent Agent
		want  string
	}{
		{Agent{Source: "none: development build"}, "none: this is a development build (version v1.2.3) with no agent image stamped in"},
		{Agent{Image: "r.io/a:v1@" + testDigest, Pinned: true, Source: "stamped at build time"}, "r.io/a:v1@" + testDigest + " (stamped at build time, pinned by digest)"},
		{Agent{Image: "r.io/a:v1", Source: "stamped at build time"}, "r.io/a:v1 (stamped at build time, by tag)"},
	} {
		if got := tc.agent.Describe(); got != tc.want {
			t.Errorf("Describe() = %q, want %q", got, tc.want)
		}
	}
}

// stamp sets version.Version and version.AgentImage as -X would, for the rest of the test.
func stamp(t *testing.T, v, agentImage string) {
	t.Helper()
	oldVersion, oldImage := version.Version, version.AgentImage
	t.Cleanup(func() { version.Version, version.AgentImage = oldVersion, oldImage })
	version.Version, version.AgentImage = v, agentImage
}
