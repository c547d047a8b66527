package injector

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/version"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestAgentImageDefault checks --agent-image: its default is this build's
// agent (stamped by tag or by digest, none in a development build), the flag
// overrides it, and the help text and errors say which applies.
func TestAgentImageDefault(t *testing.T) {
	pinned := "ghcr.io/kvinject/agent:v1.2.3@" + testDigest
	for _, tc := range []struct {
		name             string
		version, stamped string
		args             []string
		wantImage        string
		wantOrigin       string
		wantErr          string
		wantHelp         []string
	}{
		{name: "dev build without the flag", version: version.Dev,
			wantErr:  "--agent-image is required: this is a development build (version dev) with no agent image stamped in; pass --agent-image=<image>, e.g. --agent-image=ghcr.io/kvinject/agent:<version>, or build with `make build`",
			wantHelp: []string{"required: this development build (version dev) has no default"}},
		{name: "dev build with the flag", version: version.Dev, args: []string{"--agent-image=example.com/agent:x"},
			wantImage: "example.com/agent:x", wantOrigin: "--agent-image"},
		{name: "stamped by tag", version: "v1.2.3", stamped: "ghcr.io/kvinject/agent:v1.2.3",
			wantImage: "ghcr.io/kvinject/agent:v1.2.3", wantOrigin: "this build's default, by tag",
			wantHelp: []string{"the default is this build's agent (version v1.2.3), by tag", `(default "ghcr.io/kvinject/agent:v1.2.3")`}},
		{name: "stamped by digest", version: "v1.2.3", stamped: pinned,
			wantImage: pinned, wantOrigin: "this build's default, pinned by digest",
			wantHelp: []string{"the default is this build's agent (version v1.2.3), pinned by digest", `(default "` + pinned + `")`}},
		{name: "version only", version: "v1.2.3",
			wantImage: "ghcr.io/kvinject/agent:v1.2.3", wantOrigin: "this build's default, by tag"},
		{name: "the flag overrides a pinned default", version: "v1.2.3", stamped: pinned, args: []string{"--agent-image=contoso.azurecr.io/kvinject/agent:v1.2.3"},
			wantImage: "contoso.azurecr.io/kvinject/agent:v1.2.3", wantOrigin: "--agent-image"},
		{name: "the flag set to the default still counts as the flag", version: "v1.2.3", stamped: pinned, args: []string{"--agent-image=" + pinned},
			wantImage: pinned, wantOrigin: "--agent-image"},
		{name: "an empty flag is refused", version: "v1.2.3", stamped: pinned, args: []string{"--agent-image="},
			wantErr: "--agent-image is empty: give the agent image, e.g. --agent-image=ghcr.io/kvinject/agent:<version>"},
		{name: "a broken stamp without the flag", version: "v1.2.3", stamped: "agent:v1.2.3",
			wantErr: `--agent-image: this build has no usable default, pass --agent-image=<image>: the agent image stamped into this build (internal/version.AgentImage) "agent:v1.2.3" is not`},
		{name: "a broken stamp with the flag", version: "v1.2.3", stamped: "agent:v1.2.3", args: []string{"--agent-image=example.com/agent:x"},
			wantImage: "example.com/agent:x", wantOrigin: "--agent-image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stamp(t, tc.version, tc.stamped)
			var o Options
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			var help bytes.Buffer
			fs.SetOutput(&help)
			o.BindFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			fs.PrintDefaults()
			for _, w := range tc.wantHelp {
				if !strings.Contains(help.String(), w) {
					t.Errorf("help lacks %q:\n%s", w, help.String())
				}
			}
			err := o.Complete()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Complete() = %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.Mutate.AgentImage != tc.wantImage {
				t.Errorf("agent image %q, want %q", o.Mutate.AgentImage, tc.wantImage)
			}
			if got := o.AgentImageOrigin(); got != tc.wantOrigin {
				t.Errorf("origin %q, want %q", got, tc.wantOrigin)
			}
			if h := o.NewHandler(); h.Mutate.AgentImage != tc.wantImage {
				t.Errorf("the handler injects %q, want %q", h.Mutate.AgentImage, tc.wantImage)
			}
		})
	}
}

// stamp sets the build stamps as the linker's -X would, for the rest of the test.
func stamp(t *testing.T, v, agentImage string) {
	t.Helper()
	oldVersion, oldImage := version.Version, version.AgentImage
	t.Cleanup(func() { version.Version, version.AgentImage = oldVersion, oldImage })
	version.Version, version.AgentImage = v, agentImage
}
