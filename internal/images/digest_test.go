package images

import (
	"bytes"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestDigest checks that Digest is the digest the archive's index.json gives
// the reference, for one platform (the image manifest) and for several (the
// image index), so a reference pinned by it names what the archive holds.
func TestDigest(t *testing.T) {
	var imgs []v1.Image
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := Build(spec(arch))
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	for _, tc := range []struct {
		name      string
		imgs      []v1.Image
		wantIndex bool
	}{
		{name: "one platform", imgs: imgs[:1]},
		{name: "two platforms", imgs: imgs, wantIndex: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Digest(tc.imgs)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			sums, err := WriteArchive(&buf, "ghcr.io/kvinject/agent:v1", tc.imgs)
			if err != nil {
				t.Fatal(err)
			}
			im, err := readLayout(t, buf.Bytes()).IndexManifest()
			if err != nil {
				t.Fatal(err)
			}
			top := im.Manifests[0]
			if got != top.Digest {
				t.Errorf("Digest = %s, index.json names %s", got, top.Digest)
			}
			if top.MediaType.IsIndex() != tc.wantIndex {
				t.Errorf("index.json's entry is %s", top.MediaType)
			}
			if !tc.wantIndex && got.String() != sums[0].Digest {
				t.Errorf("Digest = %s, the image's manifest is %s", got, sums[0].Digest)
			}
		})
	}
	if _, err := Digest(nil); err == nil {
		t.Error("Digest of no image succeeded")
	}
}
