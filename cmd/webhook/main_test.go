package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/version"
)

// TestRunRefusesArguments checks that the server does not start when arguments
// are left after the flags, such as a subcommand given after a flag.
func TestRunRefusesArguments(t *testing.T) {
	// A kubeconfig that does not exist: were the arguments ignored, run would
	// fail on it (or start a server) instead of refusing the command line.
	kubeconfig := "--kubeconfig=" + filepath.Join(t.TempDir(), "none")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--agent-image=x", kubeconfig, "inject", "-f", "d.yaml"}, `unexpected argument "inject" (subcommands such as inject come first)`},
		{[]string{kubeconfig, "--agent-image=x", "serve"}, `unexpected argument "serve" (subcommands such as inject come first)`},
	} {
		err := run(tc.args)
		if err == nil || err.Error() != tc.want {
			t.Errorf("run(%q) = %v, want %s", tc.args, err, tc.want)
			continue
		}
		if code := exitCode(err); code != 2 {
			t.Errorf("run(%q): exit code %d, want 2", tc.args, code)
		}
	}
}

// TestExitCode checks that only command-line mistakes exit with 2.
func TestExitCode(t *testing.T) {
	err := run([]string{"--agent-image=x", "--kubeconfig=" + filepath.Join(t.TempDir(), "none")})
	if err == nil {
		t.Fatal("run with a missing kubeconfig succeeded")
	}
	if code := exitCode(err); code != 1 {
		t.Errorf("%v: exit code %d, want 1", err, code)
	}
}

// TestFlagErrors checks that a flag the webhook does not know is bad usage
// (exit code 2) and that --help is not an error for main to report.
func TestFlagErrors(t *testing.T) {
	if err := run([]string{"--no-such-flag"}); err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "-no-such-flag") {
		t.Errorf("run(--no-such-flag) = %v (exit code %d), want a usage error naming the flag", err, exitCode(err))
	}
	if err := run([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("run(--help) = %v, want flag.ErrHelp", err)
	}
}

// TestPrintVersion checks --version: the version, then the default agent image.
func TestPrintVersion(t *testing.T) {
	oldVersion, oldImage := version.Version, version.AgentImage
	t.Cleanup(func() { version.Version, version.AgentImage = oldVersion, oldImage })
	for _, tc := range []struct{ version, stamped, want string }{
		{version.Dev, "", "dev\nagent image: none: this is a development build (version dev) with no agent image stamped in\n"},
		{"v1.2.3", "ghcr.io/kvinject/agent:v1.2.3", "v1.2.3\nagent image: ghcr.io/kvinject/agent:v1.2.3 (stamped at build time, by tag)\n"},
		{"v1.2.3", "ghcr.io/kvinject/agent:v1.2.3@" + testDigest, "v1.2.3\nagent image: ghcr.io/kvinject/agent:v1.2.3@" + testDigest + " (stamped at build time, pinned by digest)\n"},
		{"v1.2.3", "agent", "v1.2.3\nagent image: the agent image stamped into this build (internal/version.AgentImage) \"agent\" is not"},
	} {
		version.Version, version.AgentImage = tc.version, tc.stamped
		var out bytes.Buffer
		printVersion(&out)
		if !strings.HasPrefix(out.String(), tc.want) {
			t.Errorf("version %q, agent image %q: printed\n%s\nwant\n%s", tc.version, tc.stamped, out.String(), tc.want)
		}
	}
}

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// TestBinaryStampedByMakefile builds the webhook with the ldflags the Makefile
// gives it (make build: the agent by tag; make images: by digest, $agent being
// the agent's pinned reference) and checks that the binary reports that
// agent image in --version and --help, and that `inject` uses it without
// --agent-image; built with VERSION=dev, it has no default and says so.
func TestBinaryStampedByMakefile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the webhook twice; skipped with -short")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the webhook with: " + err.Error())
	}
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("no make command to read the Makefile's ldflags with: " + err.Error())
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	const tagged = "example.com/kvinject/agent:v9.9.9"
	makeDryRun := func(target, version string) string {
		out, err := exec.Command(makeBin, "-n", "-C", root, target, "VERSION="+version, "REGISTRY=example.com/kvinject").Output()
		if err != nil {
			t.Fatalf("make -n %s: %v", target, err)
		}
		return string(out)
	}
	buildLDFlags := func(version string) string {
		out := makeDryRun("build", version)
		m := regexp.MustCompile(`-ldflags '([^']*)'`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("make -n build gives no -ldflags '...':\n%s", out)
		}
		return m[1]
	}
	tagLDFlags, devLDFlags := buildLDFlags("v9.9.9"), buildLDFlags("dev")
	imagesOut := makeDryRun("images", "v9.9.9")
	m := regexp.MustCompile(`-ldflags "([^"]*AgentImage=\$agent)"`).FindStringSubmatch(imagesOut)
	if m == nil {
		t.Fatalf("make -n images gives no -ldflags \"...AgentImage=$agent\" for the webhook:\n%s", imagesOut)
	}
	pinned := tagged + "@" + testDigest
	digestLDFlags := strings.Replace(m[1], "$agent", pinned, 1)

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
		name, ldflags, image, how string
	}{
		{name: "make build", ldflags: tagLDFlags, image: tagged, how: "by tag"},
		{name: "make images", ldflags: digestLDFlags, image: pinned, how: "pinned by digest"},
		{name: "make build VERSION=dev", ldflags: devLDFlags},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "kvinject-webhook")
			build := exec.Command(goBin, "build", "-trimpath", "-ldflags", tc.ldflags, "-o", bin, "./cmd/webhook")
			build.Dir = root
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build -ldflags %q: %v\n%s", tc.ldflags, err, out)
			}
			run := func(wantCode int, args ...string) (string, string) {
				var stdout, stderr bytes.Buffer
				cmd := exec.Command(bin, args...)
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				if code := cmd.ProcessState.ExitCode(); code != wantCode {
					t.Fatalf("kvinject-webhook %q: %v, want exit code %d\n%s", args, err, wantCode, stderr.String())
				}
				return stdout.String(), stderr.String()
			}
			if tc.image == "" {
				// A development build: no default, and it says so.
				if out, _ := run(0, "--version"); out != "dev\nagent image: none: this is a development build (version dev) with no agent image stamped in\n" {
					t.Errorf("--version printed:\n%s", out)
				}
				_, errOut := run(2, "inject", "-f", pod)
				if want := "--agent-image is required: this is a development build (version dev)"; !strings.Contains(errOut, want) {
					t.Errorf("inject without --agent-image: stderr lacks %q:\n%s", want, errOut)
				}
				return
			}
			if out, _ := run(0, "--version"); out != "v9.9.9\nagent image: "+tc.image+" (stamped at build time, "+tc.how+")\n" {
				t.Errorf("--version printed:\n%s", out)
			}
			_, help := run(0, "--help")
			for _, w := range []string{"the default is this build's agent (version v9.9.9), " + tc.how, `(default "` + tc.image + `")`} {
				if !strings.Contains(help, w) {
					t.Errorf("--help lacks %q:\n%s", w, help)
				}
			}
			out, note := run(0, "inject", "-f", pod)
			if !strings.Contains(out, "image: "+tc.image+"\n") {
				t.Errorf("inject without --agent-image did not inject %s:\n%s", tc.image, out)
			}
			if want := "agent image " + tc.image + " (this build's default, " + tc.how + "; --agent-image overrides)"; !strings.Contains(note, want) {
				t.Errorf("inject's stderr lacks %q:\n%s", want, note)
			}
		})
	}
}
