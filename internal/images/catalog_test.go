package images

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func TestCatalogSpecs(t *testing.T) {
	p := v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	sde := time.Unix(1700000000, 0)
	for _, im := range All() {
		s := im.Spec(fakeELF, p, "v1.2.3", "https://github.com/kvinject/kvinject", sde)
		if s.BinaryPath != "/kvinject-"+im.Name || s.Title != "kvinject-"+im.Name || s.Description == "" ||
			s.OS != "linux" || s.Arch != "arm64" || s.Variant != "v8" || s.Version != "v1.2.3" || !s.SourceDateEpoch.Equal(sde) {
			t.Errorf("%s: spec %+v", im.Name, s)
		}
		if _, err := Build(s); err != nil {
			t.Errorf("%s: %v", im.Name, err)
		}
	}
}

func TestExtend(t *testing.T) {
	base, err := Build(spec("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	baseDigest := mustDigest(t, base)
	mtime := time.Unix(1700000001, 0)
	files := []File{
		{Path: "kvinject-test", Mode: fs.ModeDir | 0o755},
		{Path: "kvinject-test/ca.pem", Mode: 0o644, Data: []byte("not really a CA")},
	}
	img, err := Extend(base, files, []string{"KVINJECT_TEST_CA_FILE=/kvinject-test/ca.pem", "PATH=/bin"}, mtime, "test layer")
	if err != nil {
		t.Fatal(err)
	}
	// Validate what is written (see TestBuildIsValidAndReproducible).
	var buf bytes.Buffer
	if _, err := WriteArchive(&buf, "kvinject.local/agent:t", []v1.Image{img}); err != nil {
		t.Fatal(err)
	}
	back, err := readLayout(t, buf.Bytes()).Image(mustDigest(t, img))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	wantEnv := []string{"PATH=/bin", "SSL_CERT_FILE=/" + CABundlePath, "KVINJECT_TEST_CA_FILE=/kvinject-test/ca.pem"}
	if !slices.Equal(cfg.Config.Env, wantEnv) {
		t.Errorf("env %q, want %q", cfg.Config.Env, wantEnv)
	}
	if cfg.Config.User != "65532:65532" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/kvinject-agent" {
		t.Errorf("the base configuration changed: user %q, entrypoint %q", cfg.Config.User, cfg.Config.Entrypoint)
	}
	if n := len(cfg.History); n != 2 || cfg.History[1].CreatedBy != "test layer" {
		t.Errorf("history: %+v", cfg.History)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if !h.ModTime.Equal(mtime) {
			t.Errorf("%s: time %s", h.Name, h.ModTime)
		}
		if h.Name == "kvinject-test/ca.pem" {
			if b, _ := io.ReadAll(tr); !bytes.Equal(b, files[1].Data) {
				t.Errorf("ca.pem holds %q", b)
			}
		}
	}
	if want := []string{"kvinject-test/", "kvinject-test/ca.pem"}; !slices.Equal(names, want) {
		t.Errorf("layer holds %q, want %q", names, want)
	}
	// The base image is unchanged, and the extended image is another one.
	if d := mustDigest(t, base); d != baseDigest {
		t.Errorf("Extend changed the base image's digest from %s to %s", baseDigest, d)
	}
	if mustDigest(t, img) == baseDigest {
		t.Error("the extended image has the base image's digest")
	}
	if _, err := Extend(base, nil, []string{"NOEQUALS"}, mtime, ""); err == nil {
		t.Error("an environment entry without '=' was accepted")
	}
	same, err := Extend(base, nil, nil, mtime, "")
	if err != nil || mustDigest(t, same) != mustDigest(t, base) {
		t.Errorf("extending with nothing changed the image (%v)", err)
	}
}

func TestWriteArchiveFile(t *testing.T) {
	img, err := Build(spec("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.tar")
	sums, err := WriteArchiveFile(path, "kvinject.local/agent:t", []v1.Image{img})
	if err != nil || len(sums) != 1 || sums[0].Digest != mustDigest(t, img).String() {
		t.Fatalf("summaries %+v, %v", sums, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readLayout(t, b).Image(mustDigest(t, img)); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteArchiveFile(filepath.Join(t.TempDir(), "no", "such", "dir.tar"), "kvinject.local/agent:t", []v1.Image{img}); err == nil {
		t.Error("writing into a missing folder succeeded")
	}

	// A failed write leaves the file as it was, and no temporary file.
	dir := t.TempDir()
	path = filepath.Join(dir, "agent.tar")
	if err := os.WriteFile(path, []byte("previous archive"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		ref  string
		imgs []v1.Image
	}{{"not a reference", []v1.Image{img}}, {"kvinject.local/agent:t", nil}} {
		if _, err := WriteArchiveFile(path, bad.ref, bad.imgs); err == nil {
			t.Errorf("writing %q with %d images succeeded", bad.ref, len(bad.imgs))
		}
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "previous archive" {
		t.Errorf("after failed writes the file holds %q (%v)", b, err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 1 {
		t.Errorf("after failed writes the folder holds %v (%v), want only agent.tar", entries, err)
	}
	// A successful write replaces the file, readable by others like
	// os.Create's.
	if _, err := WriteArchiveFile(path, "kvinject.local/agent:t", []v1.Image{img}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o644 {
		t.Errorf("archive mode %v, want 0644", fi.Mode())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("after a write the folder holds %v, want only agent.tar", entries)
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
