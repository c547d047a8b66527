// Command images builds kvinject's container images as OCI image layout
// tarballs from static binaries, without a container engine (see package
// internal/images). `make images` runs it:
//
//	go run ./hack/images -bindir dist/bin -platforms linux/amd64,linux/arm64 \
//	    -registry ghcr.io/kvinject -version v0.1.0 -out dist/images
//
// reads <bindir>/<os>_<arch>/webhook, .../agent and .../hub and writes
// <out>/webhook.tar (ghcr.io/kvinject/webhook:v0.1.0, entrypoint
// /kvinject-webhook), <out>/agent.tar (ghcr.io/kvinject/agent:v0.1.0,
// entrypoint /kvinject-agent) and <out>/hub.tar (ghcr.io/kvinject/hub:v0.1.0,
// entrypoint /kvinject-hub) and <out>/restarter.tar (entrypoint
// /kvinject-restarter), then prints each image's digest and sizes.
// Next to each archive, <out>/<name>.ref holds the image's reference pinned by
// digest (ghcr.io/kvinject/agent:v0.1.0@sha256:...; with several platforms
// the digest is the image index's), the digest a registry reports once the
// archive is pushed as it is.
//
// -only builds some of the images (comma-separated names): `make images`
// builds the agent first (-only agent), stamps the webhook with the content
// of agent.ref as its default agent image, then builds the webhook and the
// version hub and the restarter (-only webhook,hub,restarter), so a release's webhook injects exactly the
// agent released with it.
//
//	go run ./hack/images -rootfs DIR
//
// only writes the files every image has besides its binary (passwd, group,
// nsswitch.conf, CA bundle) into DIR: the Dockerfile copies them onto scratch,
// so images built with Docker have exactly the same base.
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kvinject/kvinject/internal/images"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	var (
		binDir    = fs.String("bindir", "dist/bin", "folder with <os>_<arch>/<image> binaries: webhook, agent, hub, restarter")
		platforms = fs.String("platforms", "linux/amd64", "comma-separated platforms, e.g. linux/amd64,linux/arm64")
		registry  = fs.String("registry", "ghcr.io/kvinject", "registry and namespace of the image names")
		version   = fs.String("version", "dev", "image tag and org.opencontainers.image.version")
		out       = fs.String("out", "dist/images", "output folder")
		source    = fs.String("source", "https://github.com/kvinject/kvinject", "org.opencontainers.image.source")
		epoch     = fs.String("source-date-epoch", os.Getenv("SOURCE_DATE_EPOCH"), "seconds since 1970 used for every timestamp (default $SOURCE_DATE_EPOCH, else 0)")
		rootfs    = fs.String("rootfs", "", "only write the base files into this folder and exit")
		only      = fs.String("only", "", "comma-separated images to build, e.g. agent (default: all: "+strings.Join(names(catalog()), ", ")+")")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *rootfs != "" {
		return writeRootFS(*rootfs)
	}
	sde := time.Unix(0, 0)
	if *epoch != "" {
		secs, err := strconv.ParseInt(*epoch, 10, 64)
		if err != nil {
			return fmt.Errorf("-source-date-epoch %q: %v", *epoch, err)
		}
		sde = time.Unix(secs, 0)
	}
	var plats []v1.Platform
	for _, p := range strings.Split(*platforms, ",") {
		plat, err := v1.ParsePlatform(strings.TrimSpace(p))
		if err != nil || plat.OS == "" || plat.Architecture == "" {
			return fmt.Errorf("-platforms: %q is not os/arch[/variant]", p)
		}
		plats = append(plats, *plat)
	}
	selected, err := selectImages(*only)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tPLATFORM\tCOMPRESSED\tUNPACKED\tDIGEST\tFILE")
	var pinned []string
	for _, im := range selected {
		var imgs []v1.Image
		for _, p := range plats {
			dir := p.OS + "_" + p.Architecture
			if p.Variant != "" {
				dir += "_" + p.Variant
			}
			bin, err := os.ReadFile(filepath.Join(*binDir, dir, im.Name))
			if err != nil {
				return fmt.Errorf("the %s binary for %s: %w (build it with `make images`, which cross-compiles with CGO_ENABLED=0)", im.Name, p.String(), err)
			}
			img, err := images.Build(im.Spec(bin, p, *version, *source, sde))
			if err != nil {
				return err
			}
			imgs = append(imgs, img)
		}
		ref := *registry + "/" + im.Name + ":" + *version
		file := filepath.Join(*out, im.Name+".tar")
		sums, err := images.WriteArchiveFile(file, ref, imgs)
		if err != nil {
			return err
		}
		for _, s := range sums {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ref, s.Platform, mib(s.Compressed), mib(s.Uncompressed), s.Digest, file)
		}
		digest, err := images.Digest(imgs)
		if err != nil {
			return fmt.Errorf("the digest of %s: %w", ref, err)
		}
		refFile := filepath.Join(*out, im.Name+".ref")
		if err := os.WriteFile(refFile, []byte(ref+"@"+digest.String()+"\n"), 0o644); err != nil {
			return fmt.Errorf("writing the pinned reference of %s: %w", ref, err)
		}
		pinned = append(pinned, ref+"@"+digest.String()+"  ("+refFile+")")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range pinned {
		fmt.Println(p)
	}
	return nil
}

// catalog returns the images this command builds: internal/images' list.
func catalog() []images.Image { return images.All() }

// selectImages returns the images named in only (comma-separated), in the
// order of catalog; all of them when only is empty.
func selectImages(only string) ([]images.Image, error) {
	if strings.TrimSpace(only) == "" {
		return catalog(), nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		want[strings.TrimSpace(n)] = true
	}
	var out []images.Image
	for _, im := range catalog() {
		if want[im.Name] {
			out = append(out, im)
			delete(want, im.Name)
		}
	}
	if len(want) > 0 {
		unknown := make([]string, 0, len(want))
		for n := range want {
			unknown = append(unknown, fmt.Sprintf("%q", n))
		}
		sort.Strings(unknown)
		return nil, fmt.Errorf("-only: no image %s; the images are %s", strings.Join(unknown, ", "), strings.Join(names(catalog()), ", "))
	}
	return out, nil
}

// names returns the images' names.
func names(ims []images.Image) []string {
	var out []string
	for _, im := range ims {
		out = append(out, im.Name)
	}
	return out
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// writeRootFS writes the base files into dir (ownership is left to the
// Dockerfile's COPY --chown, which only matters for home/nonroot).
func writeRootFS(dir string) error {
	for _, f := range images.RootFS() {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if f.Mode.IsDir() {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			if err := os.Chmod(p, f.Mode.Perm()|(f.Mode&fs.ModeSticky)); err != nil {
				return err
			}
			continue
		}
		if err := os.WriteFile(p, f.Data, f.Mode.Perm()); err != nil {
			return err
		}
	}
	return nil
}
