package offline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/version"
)

// TestMainCommandLine checks the command line: exit codes, where output goes, and that
// several inputs are read as one stream (a Namespace in one file serves a
// Deployment in another) with each named in messages.
func TestMainCommandLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ns := write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    kvinject.dev/vault: contoso-shop\n    kvinject.dev/identity: system\n")
	deploy := write("deploy.yaml", `apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata:
      labels: {kvinject.dev/inject: "true"}
      annotations: {kvinject.dev/secrets: a=A}
    spec: {containers: [{name: web, image: web:1}]}
`)
	empty := write("empty.yaml", "")
	system := write("system.yaml", strings.Replace(string(mustRead(t, deploy)), "namespace: shop", "namespace: kube-system", 1))
	bad := write("bad.yaml", strings.Replace(string(mustRead(t, deploy)), "a=A", "../a=A", 1))
	image := "--agent-image=ghcr.io/kvinject/agent:v0.1.0"

	for _, tc := range []struct {
		name     string
		args     []string
		stdin    string
		code     int
		stdout   []string // parts the output must contain ("" for none expected)
		stderr   []string
		noStdout bool
	}{
		{name: "files", args: []string{"-f", ns, "--filename", deploy, image}, code: 0,
			stdout: []string{"kvinject.dev/vault: contoso-shop", "---\napiVersion: apps/v1", "kvinject.dev/status: injected", "--identity=system"}},
		{name: "stdin", args: []string{"-f", "-", image}, stdin: string(mustRead(t, ns)) + "---\n" + string(mustRead(t, deploy)), code: 0,
			stdout: []string{"kvinject.dev/status: injected"}},
		{name: "refused names the file", args: []string{"-f", ns, "-f", bad, image}, code: 1, noStdout: true,
			stderr: []string{"refused, nothing printed:", bad + `: document 1 (Deployment shop/web): spec.template: kvinject.dev/secrets: entry "../a=A"`}},
		{name: "empty file", args: []string{"-f", ns, "-f", empty, image}, code: 1, noStdout: true,
			stderr: []string{"refused, nothing printed:", "no documents in " + empty}},
		{name: "empty stdin", args: []string{"-f", "-", image}, stdin: "", code: 1, noStdout: true, stderr: []string{"no documents in <stdin>"}},
		{name: "excluded namespace", args: []string{"-f", system, image}, code: 0,
			stdout: []string{string(mustRead(t, system))}, stderr: []string{"(Deployment kube-system/web): not injected: the webhook's namespaceSelector excludes namespace kube-system (excluded: kube-system, kvinject-system)"}},
		{name: "webhook namespace", args: []string{"-f", ns, "-f", deploy, image, "--webhook-namespace=shop", "--excluded-namespaces="}, code: 0,
			stdout: []string{string(mustRead(t, deploy))}, stderr: []string{"excludes namespace shop (excluded: shop)"}},
		{name: "missing file", args: []string{"-f", filepath.Join(dir, "nope.yaml"), image}, code: 1, noStdout: true, stderr: []string{"nope.yaml"}},
		{name: "no input", args: []string{image}, code: 2, noStdout: true, stderr: []string{"no input: give -f <file>"}},
		{name: "no agent image", args: []string{"-f", deploy}, code: 2, noStdout: true, stderr: []string{"--agent-image is required: this is a development build (version dev)"}},
		{name: "bad webhook flag", args: []string{"-f", deploy, image, "--default-rotation=5s"}, code: 2, noStdout: true, stderr: []string{"--default-rotation"}},
		{name: "unknown flag", args: []string{"-f", deploy, image, "--cert-dir=/x"}, code: 2, noStdout: true, stderr: []string{"flag provided but not defined: -cert-dir"}},
		{name: "bad annotation flag", args: []string{"-f", deploy, image, "--namespace-annotation=novalue"}, code: 2, noStdout: true, stderr: []string{`"novalue" is not key=value`}},
		{name: "stray argument", args: []string{deploy, image}, code: 2, noStdout: true, stderr: []string{"unexpected argument"}},
		{name: "help", args: []string{"--help"}, code: 0, noStdout: true, stderr: []string{"Usage: kvinject-webhook inject -f <file|-> [-f ...] --agent-image=<image> ",
			"Agent image: none: this is a development build (version dev) with no agent image stamped in."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMain(t, tc.args, []byte(tc.stdin))
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			if tc.noStdout && stdout != "" {
				t.Errorf("stdout should be empty:\n%s", stdout)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

// TestMainDefaultAgentImage checks that a build with an agent image stamped in
// injects it without --agent-image, says so on stderr, and that the flag
// overrides it silently.
func TestMainDefaultAgentImage(t *testing.T) {
	const pinned = "ghcr.io/kvinject/agent:v1.2.3@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	oldVersion, oldImage := version.Version, version.AgentImage
	t.Cleanup(func() { version.Version, version.AgentImage = oldVersion, oldImage })
	version.Version, version.AgentImage = "v1.2.3", pinned

	pod := filepath.Join(t.TempDir(), "pod.yaml")
	if err := os.WriteFile(pod, []byte(`apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {kvinject.dev/inject: "true"}
  annotations: {kvinject.dev/secrets: a=A, kvinject.dev/vault: contoso-shop, kvinject.dev/identity: system}
spec: {containers: [{name: web, image: web:1}]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		args        []string
		code        int
		stdout      []string
		stderr      []string
		stderrLacks string
	}{
		{name: "the stamped default", args: []string{"-f", pod}, code: 0,
			stdout: []string{"image: " + pinned},
			stderr: []string{"kvinject-webhook inject: agent image " + pinned + " (this build's default, pinned by digest; --agent-image overrides)"}},
		{name: "the flag overrides it", args: []string{"-f", pod, "--agent-image=contoso.azurecr.io/kvinject/agent:v1.2.3"}, code: 0,
			stdout: []string{"image: contoso.azurecr.io/kvinject/agent:v1.2.3"}, stderrLacks: "agent image"},
		{name: "help shows the default", args: []string{"--help"}, code: 0,
			stderr: []string{"Usage: kvinject-webhook inject -f <file|-> [-f ...] [--agent-image=<image>] ",
				"Agent image: " + pinned + " (stamped at build time, pinned by digest).",
				`(default "` + pinned + `")`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMain(t, tc.args, nil)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if tc.stderrLacks != "" && strings.Contains(stderr, tc.stderrLacks) {
				t.Errorf("stderr has %q:\n%s", tc.stderrLacks, stderr)
			}
		})
	}
}
