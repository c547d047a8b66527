// Package images builds kvinject's container images from static binaries,
// without a container engine and without pulling a base image: each image is one
// layer on an empty base, holding the binary, an /etc/passwd and /etc/group
// with the non-root user 65532, an nsswitch.conf and a CA bundle. The result is
// written as an OCI image layout tarball (which `docker load` of Docker 25+,
// `ctr images import`, `kind load image-archive`, skopeo's oci-archive: and
// crane can read). For a single platform the tarball also carries Docker's
// manifest.json, so older `docker load` reads it too.
//
// Builds are reproducible: file times are fixed (SourceDateEpoch), the order of
// entries is fixed, and the CA bundle comes from the pinned Go module
// golang.org/x/crypto/x509roots/fallback (Mozilla's NSS roots), not from the
// build machine. The same binaries give the same image digests.
package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// NonRootUID is the user and group the images run as: distroless' "nonroot",
// which is also the agent's default uid in pods (see pkg/mutate).
const NonRootUID = 65532

// CABundlePath is where the CA bundle is, the first place Go's crypto/x509
// looks on Linux.
const CABundlePath = "etc/ssl/certs/ca-certificates.crt"

// File is one entry of an image's filesystem.
type File struct {
	// Path is relative to the root, slash-separated, e.g. "etc/passwd".
	Path string
	// Mode holds the permission bits, plus fs.ModeDir for a directory.
	Mode fs.FileMode
	// UID and GID own the entry.
	UID, GID int
	// Data is the content of a regular file.
	Data []byte
}

// CABundle returns Mozilla's root certificates from the pinned module as PEM.
// Roots that NSS only trusts with extra constraints (a distrust-after date,
// which a PEM bundle cannot express) are left out, so nothing is trusted more
// widely than NSS trusts it.
func CABundle() []byte {
	var buf bytes.Buffer
	for root := range bundle.Roots() {
		if root.Constraint != nil {
			continue
		}
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: root.Certificate})
	}
	return buf.Bytes()
}

// RootFS returns the files every kvinject image has besides its binary.
func RootFS() []File {
	return []File{
		{Path: "etc", Mode: fs.ModeDir | 0o755},
		{Path: "etc/group", Mode: 0o644, Data: []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", NonRootUID))},
		{Path: "etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "etc/passwd", Mode: 0o644, Data: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", NonRootUID, NonRootUID))},
		{Path: "etc/ssl", Mode: fs.ModeDir | 0o755},
		{Path: "etc/ssl/certs", Mode: fs.ModeDir | 0o755},
		{Path: CABundlePath, Mode: 0o644, Data: CABundle()},
		{Path: "home", Mode: fs.ModeDir | 0o755},
		{Path: "home/nonroot", Mode: fs.ModeDir | 0o700, UID: NonRootUID, GID: NonRootUID},
		{Path: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	}
}

// Spec describes one image for one platform.
type Spec struct {
	// Binary is the static executable's content and BinaryPath its absolute path
	// in the image, which is also the entrypoint (e.g. "/kvinject-agent").
	Binary     []byte
	BinaryPath string
	// OS and Arch are the platform, e.g. "linux" and "amd64"; Variant e.g. "v8".
	OS, Arch, Variant string
	// Title, Description, Version and Source become OCI annotations and labels
	// (org.opencontainers.image.*).
	Title, Description, Version, Source string
	// SourceDateEpoch is the time of every file and of the image's creation.
	SourceDateEpoch time.Time
}

// Build returns the image described by spec: RootFS plus the binary, in one
// gzip layer, running as NonRootUID.
func Build(spec Spec) (v1.Image, error) {
	if !strings.HasPrefix(spec.BinaryPath, "/") || path.Clean(spec.BinaryPath) != spec.BinaryPath {
		return nil, fmt.Errorf("binary path %q must be absolute and clean", spec.BinaryPath)
	}
	if spec.OS == "" || spec.Arch == "" {
		return nil, fmt.Errorf("image %s: OS and architecture are required", spec.Title)
	}
	if len(spec.Binary) < 4 || !bytes.Equal(spec.Binary[:4], []byte("\x7fELF")) {
		return nil, fmt.Errorf("image %s: the binary for %s is not an ELF executable", spec.Title, spec.BinaryPath)
	}
	files := append(RootFS(), File{Path: strings.TrimPrefix(spec.BinaryPath, "/"), Mode: 0o755, Data: spec.Binary})
	layerTar, err := Tar(files, spec.SourceDateEpoch)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestCompression))
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: spec.SourceDateEpoch.UTC()}
	labels := spec.labels()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img = mutate.Annotations(img, labels).(v1.Image)
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: spec.Arch,
		OS:           spec.OS,
		Variant:      spec.Variant,
		Created:      created,
		Config: v1.Config{
			User:       fmt.Sprintf("%d:%d", NonRootUID, NonRootUID),
			Entrypoint: []string{spec.BinaryPath},
			Env:        []string{"PATH=/", "SSL_CERT_FILE=/" + CABundlePath},
			WorkingDir: "/",
			Labels:     labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   created,
			CreatedBy: "kvinject internal/images: " + spec.BinaryPath + " on an empty base with CA bundle and nonroot user",
		},
	})
	if err != nil {
		return nil, err
	}
	return img, nil
}

func (s Spec) labels() map[string]string {
	l := map[string]string{}
	for k, v := range map[string]string{
		"org.opencontainers.image.title":       s.Title,
		"org.opencontainers.image.description": s.Description,
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.source":      s.Source,
		"org.opencontainers.image.created":     s.SourceDateEpoch.UTC().Format(time.RFC3339),
	} {
		if v != "" {
			l[k] = v
		}
	}
	return l
}

// Tar returns files as an uncompressed tar stream, sorted by path, with every
// time set to mtime and no user or group names, so that the same files always
// give the same bytes.
func Tar(files []File, mtime time.Time) ([]byte, error) {
	sorted := append([]File(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	seen := map[string]bool{}
	for _, f := range sorted {
		if f.Path == "" || strings.HasPrefix(f.Path, "/") || path.Clean(f.Path) != f.Path || strings.HasPrefix(f.Path, "..") {
			return nil, fmt.Errorf("image file %q: path must be relative and clean", f.Path)
		}
		if seen[f.Path] {
			return nil, fmt.Errorf("image file %q is given twice", f.Path)
		}
		seen[f.Path] = true
		if dir := path.Dir(f.Path); dir != "." && !seen[dir] {
			return nil, fmt.Errorf("image file %q: its directory %q must come first", f.Path, dir)
		}
		hdr := &tar.Header{
			Name:    f.Path,
			Mode:    int64(f.Mode.Perm()),
			Uid:     f.UID,
			Gid:     f.GID,
			ModTime: mtime.UTC(),
		}
		if f.Mode&fs.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		if f.Mode.IsDir() {
			hdr.Typeflag, hdr.Name = tar.TypeDir, f.Path+"/"
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
