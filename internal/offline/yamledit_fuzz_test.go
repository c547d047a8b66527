package offline

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"sigs.k8s.io/yaml"
)

// FuzzEditYAML feeds editYAML arbitrary YAML documents (seeded with every
// golden input) and patches of add operations at the root, into the
// metadata's annotations and onto the containers, where the document has them.
// Whatever the text, the result must read as the patch applied to the document's JSON: keeping the
// text may fall back to re-encoding, but never changes what the document says.
func FuzzEditYAML(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/golden/*/input.yaml")
	for _, in := range inputs {
		b, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		docs, err := split(Input{Name: in, Data: b})
		if err != nil {
			continue
		}
		for _, d := range docs {
			f.Add(string(d.raw))
		}
	}
	f.Add("a: 1 # c\nb: [x, {y: z}]\n")
	f.Fuzz(func(t *testing.T, raw string) {
		docJSON, err := yaml.YAMLToJSON([]byte(raw))
		if err != nil {
			return
		}
		var obj map[string]any
		if json.Unmarshal(docJSON, &obj) != nil || obj == nil {
			return
		}
		ops := []patchOp{{Op: "add", Path: "/kvinjectFuzz", Value: json.RawMessage(`{"a":["b","0644","on"]}`)}}
		if md, ok := obj["metadata"].(map[string]any); ok {
			if _, ok := md["annotations"].(map[string]any); ok {
				ops = append(ops, patchOp{Op: "add", Path: "/metadata/annotations/kvinject.dev~1status", Value: json.RawMessage(`"injected"`)})
			}
		}
		if spec, ok := obj["spec"].(map[string]any); ok {
			if cs, ok := spec["containers"].([]any); ok && len(cs) > 0 && isObject(cs[0]) {
				ops = append(ops, patchOp{Op: "add", Path: "/spec/containers/0/kvinjectFuzz", Value: json.RawMessage(`[{"name":"x","readOnly":true}]`)},
					patchOp{Op: "add", Path: "/spec/containers/-", Value: json.RawMessage(`{"name":"agent","args":["--a=b"]}`)})
			}
		}
		out, _, err := editYAML([]byte(raw), docJSON, ops)
		if err != nil {
			t.Fatalf("editYAML: %v", err)
		}
		p, _ := json.Marshal(ops)
		patch, err := jsonpatch.DecodePatch(p)
		if err != nil {
			t.Fatal(err)
		}
		want, err := patch.Apply(docJSON)
		if err != nil {
			t.Fatal(err)
		}
		if !sameJSON(out, want) {
			t.Fatalf("the output does not read as the patched document:\n--- in\n%s\n--- out\n%s", raw, out)
		}
	})
}

func isObject(v any) bool { _, ok := v.(map[string]any); return ok }
