package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Summary describes one platform's image in an archive.
type Summary struct {
	Platform string
	// Digest is the image manifest's digest.
	Digest string
	// Compressed is what a node pulls: manifest, config and gzip layer.
	Compressed int64
	// Uncompressed is the unpacked filesystem (the layer's tar).
	Uncompressed int64
}

// blob is a content-addressed file of an OCI layout.
type blob struct {
	digest v1.Hash
	open   func() (io.ReadCloser, error)
	size   int64
}

// WriteArchive writes images (one per platform, in that order) under the
// reference ref (e.g. "ghcr.io/kvinject/agent:v0.1.0") as an OCI image layout
// tarball. With several images the layout's index points at an image index
// that lists them by platform; with one it points at the image itself, and a
// Docker manifest.json is added for `docker load`.
func WriteArchive(w io.Writer, ref string, imgs []v1.Image) ([]Summary, error) {
	if len(imgs) == 0 {
		return nil, errors.New("no image to write")
	}
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", ref, err)
	}
	blobs := map[v1.Hash]blob{}
	addRaw := func(raw []byte) v1.Hash {
		h, size, _ := v1.SHA256(bytes.NewReader(raw))
		blobs[h] = blob{digest: h, size: size, open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(raw)), nil
		}}
		return h
	}

	var summaries []Summary
	var descs []v1.Descriptor
	var dockerManifest []map[string]any
	for _, img := range imgs {
		cfg, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		rawCfg, err := img.RawConfigFile()
		if err != nil {
			return nil, err
		}
		rawManifest, err := img.RawManifest()
		if err != nil {
			return nil, err
		}
		desc, err := indexDescriptor(img)
		if err != nil {
			return nil, err
		}
		cfgDigest := addRaw(rawCfg)
		manifestDigest := addRaw(rawManifest)
		layers, err := img.Layers()
		if err != nil {
			return nil, err
		}
		platform := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
		sum := Summary{Platform: platform.String(), Digest: manifestDigest.String(), Compressed: int64(len(rawManifest) + len(rawCfg))}
		var layerPaths []string
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return nil, err
			}
			size, err := l.Size()
			if err != nil {
				return nil, err
			}
			blobs[d] = blob{digest: d, size: size, open: l.Compressed}
			layerPaths = append(layerPaths, "blobs/sha256/"+d.Hex)
			sum.Compressed += size
			u, err := uncompressedSize(l)
			if err != nil {
				return nil, err
			}
			sum.Uncompressed += u
		}
		summaries = append(summaries, sum)
		descs = append(descs, desc)
		dockerManifest = append(dockerManifest, map[string]any{
			"Config":   "blobs/sha256/" + cfgDigest.Hex,
			"RepoTags": []string{tag.Name()},
			"Layers":   layerPaths,
		})
	}

	refAnnotations := map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
		"io.containerd.image.name":          tag.Name(),
	}
	top := descs[0]
	if len(imgs) > 1 {
		rawIdx, err := rawIndex(imgs, descs)
		if err != nil {
			return nil, err
		}
		top = v1.Descriptor{MediaType: types.OCIImageIndex, Digest: addRaw(rawIdx), Size: int64(len(rawIdx))}
	} else {
		top.Platform = nil // the manifest's config says it
	}
	top.Annotations = refAnnotations
	layoutIndex, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{top}})
	if err != nil {
		return nil, err
	}

	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0).UTC()
	dir := func(name string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch})
	}
	file := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
			return err
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s: wrote %d bytes, expected %d", name, n, size)
		}
		return err
	}
	small := func(name string, data []byte) error { return file(name, int64(len(data)), bytes.NewReader(data)) }

	if err := small("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	if err := dir("blobs/"); err != nil {
		return nil, err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return nil, err
	}
	digests := make([]v1.Hash, 0, len(blobs))
	for h := range blobs {
		digests = append(digests, h)
	}
	sort.Slice(digests, func(i, j int) bool { return digests[i].Hex < digests[j].Hex })
	for _, h := range digests {
		b := blobs[h]
		rc, err := b.open()
		if err != nil {
			return nil, err
		}
		err = file("blobs/sha256/"+h.Hex, b.size, rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("writing blob %s: %w", h, err)
		}
	}
	if err := small("index.json", layoutIndex); err != nil {
		return nil, err
	}
	if len(imgs) == 1 {
		raw, err := json.Marshal(dockerManifest)
		if err != nil {
			return nil, err
		}
		if err := small("manifest.json", raw); err != nil {
			return nil, err
		}
	}
	return summaries, tw.Close()
}

// Digest returns the digest under which WriteArchive's archive of imgs holds
// its reference: with one image the image manifest's, with several the image
// index's. It is the digest that a registry reports once the archive is
// pushed as it is (crane push, skopeo copy --all --preserve-digests), and the
// one that pins the reference: ghcr.io/kvinject/agent:v0.1.0@<digest>.
func Digest(imgs []v1.Image) (v1.Hash, error) {
	if len(imgs) == 0 {
		return v1.Hash{}, errors.New("no image to take the digest of")
	}
	descs := make([]v1.Descriptor, 0, len(imgs))
	for _, img := range imgs {
		d, err := indexDescriptor(img)
		if err != nil {
			return v1.Hash{}, err
		}
		descs = append(descs, d)
	}
	if len(imgs) == 1 {
		return descs[0].Digest, nil
	}
	raw, err := rawIndex(imgs, descs)
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	return h, err
}

// indexDescriptor returns img's entry in an image index: its manifest's media
// type, digest and size, and its platform.
func indexDescriptor(img v1.Image) (v1.Descriptor, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	h, size, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	platform := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: size, Platform: &platform}, nil
}

// rawIndex returns the OCI image index of imgs, whose entries are descs.
func rawIndex(imgs []v1.Image, descs []v1.Descriptor) ([]byte, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, img := range imgs {
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: descs[i]})
	}
	return idx.RawManifest()
}

func uncompressedSize(l v1.Layer) (int64, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(io.Discard, rc)
}
