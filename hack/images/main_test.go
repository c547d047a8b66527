package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fakeELF is enough of a binary for images.Build's check.
var fakeELF = append([]byte("\x7fELF"), bytes.Repeat([]byte{1}, 1024)...)

// TestOnlyAgentWritesPinnedRef checks what `make images` relies on: -only
// agent builds the agent alone and writes agent.ref, the reference pinned by
// the digest that the archive gives it (the image index's with several
// platforms).
func TestOnlyAgentWritesPinnedRef(t *testing.T) {
	for _, tc := range []struct {
		name      string
		platforms []string
		wantIndex bool
	}{
		{name: "one platform", platforms: []string{"linux/amd64"}},
		{name: "two platforms", platforms: []string{"linux/amd64", "linux/arm64"}, wantIndex: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin, out := t.TempDir(), t.TempDir()
			for _, p := range tc.platforms {
				dir := filepath.Join(bin, strings.ReplaceAll(p, "/", "_"))
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				// Only the agent's binary: -only agent must not need the webhook's.
				if err := os.WriteFile(filepath.Join(dir, "agent"), fakeELF, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			err := run([]string{"-only", "agent", "-bindir", bin, "-platforms", strings.Join(tc.platforms, ","),
				"-registry", "example.com/kvinject", "-version", "v9.9.9", "-source-date-epoch", "1700000000", "-out", out})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(out, "webhook.tar")); !os.IsNotExist(err) {
				t.Errorf("-only agent wrote the webhook's archive (%v)", err)
			}
			raw, err := os.ReadFile(filepath.Join(out, "agent.ref"))
			if err != nil {
				t.Fatal(err)
			}
			ref := strings.TrimSuffix(string(raw), "\n")
			top := topDescriptor(t, filepath.Join(out, "agent.tar"))
			if want := "example.com/kvinject/agent:v9.9.9@" + top.Digest.String(); ref != want {
				t.Errorf("agent.ref = %q, want %q", ref, want)
			}
			if top.MediaType.IsIndex() != tc.wantIndex {
				t.Errorf("the archive's top entry is %s", top.MediaType)
			}
		})
	}
}

// TestOnlyRefusesUnknownImages checks that a misspelt -only names the images.
func TestOnlyRefusesUnknownImages(t *testing.T) {
	err := run([]string{"-only", "agent,wehbook", "-bindir", t.TempDir(), "-out", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), `-only: no image "wehbook"; the images are webhook, agent, hub, restarter`) {
		t.Fatalf("run = %v", err)
	}
}

// TestOnlyWebhookAndHub checks the second step of `make images`: -only
// webhook,hub builds those two images from their binaries, the hub's with the
// entrypoint /kvinject-hub, and not the agent's.
func TestOnlyWebhookAndHub(t *testing.T) {
	bin, out := t.TempDir(), t.TempDir()
	dir := filepath.Join(bin, "linux_amd64")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"webhook", "hub"} {
		if err := os.WriteFile(filepath.Join(dir, name), fakeELF, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	err := run([]string{"-only", "webhook,hub", "-bindir", bin, "-platforms", "linux/amd64",
		"-registry", "example.com/kvinject", "-version", "v9.9.9", "-source-date-epoch", "1700000000", "-out", out})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "agent.tar")); !os.IsNotExist(err) {
		t.Errorf("-only webhook,hub wrote the agent's archive (%v)", err)
	}
	for _, name := range []string{"webhook", "hub"} {
		raw, err := os.ReadFile(filepath.Join(out, name+".ref"))
		if err != nil {
			t.Fatal(err)
		}
		top := topDescriptor(t, filepath.Join(out, name+".tar"))
		if want := "example.com/kvinject/" + name + ":v9.9.9@" + top.Digest.String() + "\n"; string(raw) != want {
			t.Errorf("%s.ref = %q, want %q", name, raw, want)
		}
	}
	if got := entrypoint(t, filepath.Join(out, "hub.tar")); len(got) != 1 || got[0] != "/kvinject-hub" {
		t.Errorf("the hub image's entrypoint is %q, want [/kvinject-hub]", got)
	}
}

// TestCatalogHasHubOnce checks that the hub is built once, whether or not
// internal/images lists it.
func TestCatalogHasHubOnce(t *testing.T) {
	n := 0
	for _, im := range catalog() {
		if im.Name == "hub" {
			n++
			if im.Path != "/kvinject-hub" {
				t.Errorf("the hub's binary is %s in its image, want /kvinject-hub", im.Path)
			}
		}
	}
	if n != 1 {
		t.Errorf("catalog() names the hub %d times, want once", n)
	}
}

// entrypoint returns the entrypoint of the single-platform image in the OCI
// layout archive.
func entrypoint(t *testing.T, archive string) []string {
	t.Helper()
	blobs := map[string][]byte{}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if strings.HasPrefix(h.Name, "blobs/sha256/") {
			var b bytes.Buffer
			if _, err := b.ReadFrom(tr); err != nil {
				t.Fatal(err)
			}
			blobs["sha256:"+strings.TrimPrefix(h.Name, "blobs/sha256/")] = b.Bytes()
		}
	}
	top := topDescriptor(t, archive)
	var m v1.Manifest
	if err := json.Unmarshal(blobs[top.Digest.String()], &m); err != nil {
		t.Fatalf("%s: the manifest %s: %v", archive, top.Digest, err)
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(blobs[m.Config.Digest.String()], &cfg); err != nil {
		t.Fatalf("%s: the config %s: %v", archive, m.Config.Digest, err)
	}
	return cfg.Config.Entrypoint
}

// topDescriptor returns the entry of the OCI layout archive's index.json.
func topDescriptor(t *testing.T, archive string) v1.Descriptor {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no index.json: %v", archive, err)
		}
		if h.Name != "index.json" {
			continue
		}
		var im v1.IndexManifest
		if err := json.NewDecoder(tr).Decode(&im); err != nil {
			t.Fatalf("%s: index.json: %v", archive, err)
		}
		if len(im.Manifests) != 1 {
			t.Fatalf("%s: index.json has %d entries", archive, len(im.Manifests))
		}
		return im.Manifests[0]
	}
}
