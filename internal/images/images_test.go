package images

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// fakeELF is enough of a binary for Build's check.
var fakeELF = append([]byte("\x7fELF"), bytes.Repeat([]byte{1}, 4096)...)

func spec(arch string) Spec {
	return Spec{Binary: fakeELF, BinaryPath: "/kvinject-agent", OS: "linux", Arch: arch,
		Title: "kvinject-agent", Version: "v0.0.0-test", Source: "https://github.com/kvinject/kvinject",
		SourceDateEpoch: time.Unix(1700000000, 0)}
}

func TestBuildIsValidAndReproducible(t *testing.T) {
	img, err := Build(spec("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	// Validate what is written (the in-memory manifest of go-containerregistry's
	// mutate differs from its raw form by an empty annotations map).
	var buf bytes.Buffer
	if _, err := WriteArchive(&buf, "ghcr.io/kvinject/agent:t", []v1.Image{img}); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	back, err := readLayout(t, buf.Bytes()).Image(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	again, err := Build(spec("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Fatalf("two builds of the same binary differ: %s and %s", d1, d2)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/kvinject-agent" {
		t.Errorf("config: user %q, entrypoint %q", cfg.Config.User, cfg.Config.Entrypoint)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || !cfg.Created.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("config: %s/%s created %s", cfg.OS, cfg.Architecture, cfg.Created)
	}

	files := layerFiles(t, img)
	if got := files["kvinject-agent"]; !bytes.Equal(got.data, fakeELF) || got.hdr.Mode != 0o755 {
		t.Errorf("/kvinject-agent: mode %o, %d bytes", got.hdr.Mode, len(got.data))
	}
	if !strings.Contains(string(files["etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd: %q", files["etc/passwd"].data)
	}
	if h := files["home/nonroot/"].hdr; h == nil || h.Uid != NonRootUID {
		t.Errorf("/home/nonroot is not owned by %d", NonRootUID)
	}
	if h := files["tmp/"].hdr; h == nil || h.Mode != 0o1777 {
		t.Errorf("/tmp mode: %v", h)
	}
	for path, f := range files {
		if !f.hdr.ModTime.Equal(time.Unix(1700000000, 0)) || f.hdr.Uname != "" {
			t.Errorf("%s: mtime %s, uname %q", path, f.hdr.ModTime, f.hdr.Uname)
		}
	}
	roots := parseBundle(t, files[CABundlePath].data)
	if len(roots) < 100 {
		t.Errorf("the CA bundle has %d roots", len(roots))
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	// The roots Azure's public endpoints chain to are in the bundle.
	for _, cn := range []string{"DigiCert Global Root G2", "Microsoft RSA Root Certificate Authority 2017"} {
		found := false
		for _, r := range roots {
			found = found || r.Subject.CommonName == cn
		}
		if !found {
			t.Errorf("the CA bundle lacks %q", cn)
		}
	}
}

func TestBuildRefusals(t *testing.T) {
	s := spec("amd64")
	s.Binary = []byte("#!/bin/sh\n")
	if _, err := Build(s); err == nil || !strings.Contains(err.Error(), "not an ELF executable") {
		t.Errorf("script accepted: %v", err)
	}
	s = spec("amd64")
	s.BinaryPath = "kvinject-agent"
	if _, err := Build(s); err == nil {
		t.Error("relative binary path accepted")
	}
	if _, err := Tar([]File{{Path: "etc/passwd"}}, time.Time{}); err == nil {
		t.Error("a file before its directory accepted")
	}
}

func TestArchiveSinglePlatform(t *testing.T) {
	img, err := Build(spec("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sums, err := WriteArchive(&buf, "ghcr.io/kvinject/agent:v0.0.0-test", []v1.Image{img})
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()
	if len(sums) != 1 || sums[0].Digest != digest.String() || sums[0].Platform != "linux/amd64" || sums[0].Compressed <= 0 || sums[0].Uncompressed <= sums[0].Compressed {
		t.Fatalf("summary: %+v", sums)
	}
	file := filepath.Join(t.TempDir(), "agent.tar")
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	// As `docker load` reads it: manifest.json.
	tag, _ := name.NewTag("ghcr.io/kvinject/agent:v0.0.0-test")
	fromDocker, err := tarball.ImageFromPath(file, &tag)
	if err != nil {
		t.Fatalf("reading the docker manifest.json: %v", err)
	}
	if d, _ := fromDocker.ConfigName(); d != mustConfigName(t, img) {
		t.Errorf("docker view: config %s", d)
	}
	// As an OCI layout.
	idx := readLayout(t, buf.Bytes())
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != digest || im.Manifests[0].Annotations["io.containerd.image.name"] != "ghcr.io/kvinject/agent:v0.0.0-test" || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v0.0.0-test" {
		t.Fatalf("index.json: %+v", im.Manifests)
	}
	back, err := idx.Image(digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Fatalf("image read back from the layout: %v", err)
	}

	var again bytes.Buffer
	if _, err := WriteArchive(&again, "ghcr.io/kvinject/agent:v0.0.0-test", []v1.Image{img}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two archives of the same image differ")
	}
}

func TestArchiveMultiPlatform(t *testing.T) {
	amd, err := Build(spec("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	arm, err := Build(spec("arm64"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	sums, err := WriteArchive(&buf, "ghcr.io/kvinject/agent:v1", []v1.Image{amd, arm})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 2 || sums[1].Platform != "linux/arm64" {
		t.Fatalf("summaries: %+v", sums)
	}
	idx := readLayout(t, buf.Bytes())
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || !im.Manifests[0].MediaType.IsIndex() {
		t.Fatalf("index.json does not point at an image index: %+v", im.Manifests)
	}
	inner, err := idx.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(inner); err != nil {
		t.Fatalf("image index: %v", err)
	}
	m, err := inner.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 2 || m.Manifests[0].Platform.Architecture != "amd64" || m.Manifests[1].Platform.Architecture != "arm64" {
		t.Fatalf("platforms: %+v", m.Manifests)
	}
	if strings.Contains(tarNames(t, buf.Bytes()), "manifest.json") {
		t.Error("a multi-platform archive has a docker manifest.json")
	}
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

func layerFiles(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = entry{hdr: h, data: b}
	}
}

func parseBundle(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func mustConfigName(t *testing.T, img v1.Image) v1.Hash {
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// readLayout unpacks an archive and opens it as an OCI image layout.
func readLayout(t *testing.T, archive []byte) v1.ImageIndex {
	t.Helper()
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func tarNames(t *testing.T, archive []byte) string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return strings.Join(names, " ")
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
}
