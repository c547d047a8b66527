package images

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image is one of kvinject's images: the binary it holds and how it is
// described. `make images` (hack/images) and the real-kubelet tests
// (test/e2e) build them from this one list, so the image a test pod runs is
// the image a release ships.
type Image struct {
	// Name is the repository name under the registry ("agent") and the
	// binary's file name in a build folder.
	Name string
	// Path is the binary's absolute path in the image, also the entrypoint.
	Path string
	// Description becomes org.opencontainers.image.description.
	Description string
}

// kvinject's images.
var (
	// Webhook is the mutating admission webhook's image.
	Webhook = Image{Name: "webhook", Path: "/kvinject-webhook", Description: "kvinject's mutating admission webhook: injects the Key Vault fetcher agent into opted-in pods"}
	// Agent is the fetcher agent's image, which every opted-in pod runs.
	Agent = Image{Name: "agent", Path: "/kvinject-agent", Description: "kvinject's Key Vault fetcher agent, injected into pods by the webhook"}
	// Hub is the version hub's image (cmd/hub, docs/hub.md).
	Hub = Image{Name: "hub", Path: "/kvinject-hub", Description: "kvinject's version hub: watches Key Vault for new secret versions once for all rotating agents"}
	// Restarter is the restart controller's image (cmd/restarter, docs/actions.md).
	Restarter = Image{Name: "restarter", Path: "/kvinject-restarter", Description: "kvinject's restart controller: rolls the workloads that ask for it when their secrets change"}
)

// All returns kvinject's images in the order `make images` builds them.
func All() []Image { return []Image{Webhook, Agent, Hub, Restarter} }

// Spec returns the Spec of im holding binary for platform p.
func (im Image) Spec(binary []byte, p v1.Platform, version, source string, sourceDateEpoch time.Time) Spec {
	return Spec{
		Binary: binary, BinaryPath: im.Path,
		OS: p.OS, Arch: p.Architecture, Variant: p.Variant,
		Title: "kvinject-" + im.Name, Description: im.Description,
		Version: version, Source: source, SourceDateEpoch: sourceDateEpoch,
	}
}

// Extend returns img with one more layer holding files (directories first,
// as Tar requires) and with env (KEY=VALUE) set in its configuration,
// replacing variables of the same name. createdBy describes the layer in the
// image's history. Tests use it to add what only they need, such as a test
// CA, on top of the very image a release ships, without changing that image.
func Extend(img v1.Image, files []File, env []string, mtime time.Time, createdBy string) (v1.Image, error) {
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("environment entry %q is not KEY=VALUE", kv)
		}
	}
	if len(files) > 0 {
		layerTar, err := Tar(files, mtime)
		if err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(layerTar)), nil
		}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestCompression))
		if err != nil {
			return nil, fmt.Errorf("extending the image: %w", err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: mtime.UTC()}, CreatedBy: createdBy},
		})
		if err != nil {
			return nil, fmt.Errorf("extending the image: %w", err)
		}
	}
	if len(env) == 0 {
		return img, nil
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("extending the image: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Env = mergeEnv(cfg.Config.Env, env)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("extending the image: %w", err)
	}
	return img, nil
}

// mergeEnv returns base with each KEY=VALUE of extra replacing the entry of
// the same KEY, or appended in order.
func mergeEnv(base, extra []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range extra {
		key, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if k, _, _ := strings.Cut(old, "="); k == key {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// WriteArchiveFile writes WriteArchive's archive of imgs under ref into the
// file path. It writes a temporary file in the same folder and renames it
// onto path, so that path never holds a partial archive; on error it removes
// the temporary file and leaves path as it was.
func WriteArchiveFile(path, ref string, imgs []v1.Image) (_ []Summary, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("writing %s: %w", path, err)
		}
	}()
	sums, err := WriteArchive(f, ref, imgs)
	if err != nil {
		return nil, err
	}
	// CreateTemp makes the file 0600; an image archive is not secret.
	if err := f.Chmod(0o644); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return nil, err
	}
	return sums, nil
}
