package mapping

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// CorpusDir holds SecretProviderClasses in the shapes the Azure provider
// documents (written for kvinject, one class per file). Each carries the
// annotation corpus.kvinject.dev/expect: admit or deny. The webhook's golden
// cases internal/injector/testdata/golden/spc-corpus-<file> run each one through
// the admission handler.
const corpusDir = "testdata/spc-corpus"

// corpusClass is a corpus file: a SecretProviderClass as the CRD has it.
type corpusClass struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Provider      string            `json:"provider"`
		Parameters    map[string]string `json:"parameters"`
		SecretObjects []any             `json:"secretObjects"`
	} `json:"spec"`
}

// providerObject mirrors the provider's documented object fields and their Go
// types (pkg/provider/types.KeyVaultObject), independently of kvinject's spcObject.
type providerObject struct {
	ObjectName           string `yaml:"objectName"`
	ObjectAlias          string `yaml:"objectAlias"`
	ObjectVersion        string `yaml:"objectVersion"`
	ObjectVersionHistory int32  `yaml:"objectVersionHistory"`
	ObjectType           string `yaml:"objectType"`
	ObjectFormat         string `yaml:"objectFormat"`
	ObjectEncoding       string `yaml:"objectEncoding"`
	FilePermission       string `yaml:"filePermission"`
}

// providerEntry is what the provider fetches and writes for one object, in
// kvinject's terms.
type providerEntry struct {
	File, Name, Version string
	Type                agentconfig.ObjectType
	Format              agentconfig.Format
	Encoding            agentconfig.Encoding
	History             int
	Mode                uint32
}

// expectFromProvider applies the provider's semantics to one decoded object:
// trimmed strings; the alias, else the name, as the file; an empty objectVersion
// (or "latest" with history) as the latest; history of 1 or less as one file;
// objectFormat pfx (any case) keeps a secret as stored, else a certificate's
// secret becomes PEM (kvinject's format=auto); objectEncoding (any case) decodes
// a secret; filePermission as strconv.ParseInt(s, 8, 32).
func expectFromProvider(t *testing.T, o providerObject) providerEntry {
	t.Helper()
	trim := strings.TrimSpace
	e := providerEntry{Name: trim(o.ObjectName), File: trim(o.ObjectAlias), Type: agentconfig.ObjectType(trim(o.ObjectType))}
	if e.File == "" {
		e.File = e.Name
	}
	if v := trim(o.ObjectVersion); v != "latest" {
		e.Version = strings.ToLower(v)
	}
	if o.ObjectVersionHistory > 1 {
		e.History = int(o.ObjectVersionHistory)
	}
	enc := strings.ToLower(trim(o.ObjectEncoding))
	if e.Type == agentconfig.ObjectSecret {
		switch enc {
		case "base64":
			e.Encoding = agentconfig.EncodingBase64
		case "hex":
			e.Encoding = agentconfig.EncodingHex
		}
		if !strings.EqualFold(trim(o.ObjectFormat), "pfx") && e.Encoding == "" {
			e.Format = agentconfig.FormatAuto
		}
	}
	if fp := trim(o.FilePermission); fp != "" {
		m, err := strconv.ParseInt(fp, 8, 32)
		if err != nil {
			t.Fatalf("filePermission %q: the provider cannot parse it, but the class is expected to be admitted", fp)
		}
		e.Mode = uint32(m)
	}
	return e
}

// TestSPCCorpusDifferential decodes each corpus class's objects with yaml.v3 (the
// provider's decoder) into the provider's fields, and compares, object by
// object and field by field, with the entries kvinject makes of the class.
func TestSPCCorpusDifferential(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("corpus: %d files, %v", len(files), err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var c corpusClass
			if err := sigsyaml.UnmarshalStrict(b, &c); err != nil {
				t.Fatal(err)
			}
			spc := SecretProviderClass{Namespace: c.Metadata.Namespace, Name: c.Metadata.Name, Provider: c.Spec.Provider,
				Parameters: c.Spec.Parameters, SecretObjects: len(c.Spec.SecretObjects)}
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationSecretProviderClass: spc.Name}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}}
			got, _, _, err := ApplySecretProviderClass(pod, nil, spc)
			switch expect := c.Metadata.Annotations["corpus.kvinject.dev/expect"]; expect {
			case "deny":
				if err == nil {
					t.Fatal("admitted, want a refusal")
				}
				if !strings.Contains(err.Error(), "SecretProviderClass apps/"+spc.Name+": spec.") {
					t.Errorf("refusal does not name the class's field: %v", err)
				}
				return
			case "admit":
				if err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("annotation corpus.kvinject.dev/expect is %q, want admit or deny", expect)
			}

			var arr struct {
				Array []string `yaml:"array"`
			}
			if err := yaml.Unmarshal([]byte(strings.TrimSpace(spc.Parameters["objects"])), &arr); err != nil {
				t.Fatal(err)
			}
			var want []providerEntry
			for i, doc := range arr.Array {
				var o providerObject
				if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
					t.Fatalf("object %d: %v", i, err)
				}
				want = append(want, expectFromProvider(t, o))
			}
			entries, err := agentconfig.ParseEntries(got.Annotations[AnnotationSecrets])
			if err != nil {
				t.Fatalf("kvinject's entries do not parse: %v", err)
			}
			var have []providerEntry
			for _, e := range entries {
				have = append(have, providerEntry{File: e.File, Name: e.Name, Version: e.Version, Type: e.Kind(), Format: e.Format,
					Encoding: e.Encoding, History: e.History, Mode: e.Mode})
			}
			if d := cmp.Diff(want, have); d != "" {
				t.Errorf("kvinject differs from the provider (-provider +kvinject):\n%s", d)
			}
		})
	}
}
