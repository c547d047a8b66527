package injector

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corpusDir is the corpus of SecretProviderClasses in the Azure provider's
// documented shapes (see pkg/mapping's differential test).
const corpusDir = "../../pkg/mapping/testdata/spc-corpus"

// corpusCluster is what every corpus case runs against, before its class.
const corpusCluster = `# Generated from pkg/mapping/testdata/spc-corpus by TestSPCCorpusGoldenCases -update; edit the corpus, not this file.
apiVersion: v1
kind: Namespace
metadata:
  name: apps
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: orders
  namespace: apps
  annotations:
    azure.workload.identity/client-id: 3f2a1b0c-9d8e-4f7a-b6c5-d4e3f2a1b0c9
    azure.workload.identity/tenant-id: 72f988bf-86f1-41af-91ab-2d7cd011db47
---
`

// TestSPCCorpusGoldenCases checks that every corpus class has its golden case,
// golden/spc-corpus-<file>: a pod of one container naming the class, with the
// class in the case's cluster.yaml. With -update it writes the request and the
// cluster (run it before TestGolden -update).
func TestSPCCorpusGoldenCases(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus in %s: %v", corpusDir, err)
	}
	tmpl := mustRead(t, filepath.Join(goldenDir, "spc-workload-identity", "request.json"))
	for i, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		dir := filepath.Join(goldenDir, "spc-corpus-"+name)
		class := mustRead(t, f)
		var review map[string]any
		if err := json.Unmarshal(tmpl, &review); err != nil {
			t.Fatal(err)
		}
		req := review["request"].(map[string]any)
		req["uid"] = "5bc1e7a0-0000-4000-8000-" + strings.Repeat("0", 9) + string(rune('a'+i/26)) + string(rune('a'+i%26))
		req["object"].(map[string]any)["metadata"].(map[string]any)["annotations"] = map[string]any{"kvinject.dev/secret-provider-class": name}
		reqJSON := append(mustIndentJSONAny(t, review), '\n')
		cluster := append([]byte(corpusCluster), class...)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for file, b := range map[string][]byte{"request.json": reqJSON, "cluster.yaml": cluster} {
				if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		for file, want := range map[string][]byte{"request.json": reqJSON, "cluster.yaml": cluster} {
			got, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s/%s is missing or differs from the corpus file %s: run go test ./internal/injector -run 'TestSPCCorpusGoldenCases|TestGolden' -update", dir, file, f)
			}
		}
	}
}

func mustIndentJSONAny(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
