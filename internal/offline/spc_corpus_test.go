package offline

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// corpusGolden are the webhook's golden cases generated from the
// SecretProviderClass corpus (pkg/mapping/testdata/spc-corpus): each holds the
// class and its namespace's objects (cluster.yaml), a pod that migrates to it
// (request.json) and the webhook's answer (golden.json).
const corpusGolden = "../injector/testdata/golden"

// TestSPCCorpusThroughInject runs every class of the corpus through inject, as
// the webhook's golden cases run it through the admission handler: the class
// and its namespace's objects, then the same pod as a manifest. An admitted
// class must be injected exactly as the handler injects it (checkOutput); a
// refused one must be refused by both, with the class named.
func TestSPCCorpusThroughInject(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(corpusGolden, "spc-corpus-*"))
	if err != nil {
		t.Fatal(err)
	}
	corpus, err := filepath.Glob("../../pkg/mapping/testdata/spc-corpus/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 || len(dirs) != len(corpus) {
		t.Fatalf("%d corpus golden cases for %d corpus classes: regenerate them (go test ./pkg/mapping -run TestSPCCorpusGoldenCases -update)", len(dirs), len(corpus))
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var review struct {
				Request struct {
					Object json.RawMessage `json:"object"`
				} `json:"request"`
			}
			if err := json.Unmarshal(mustRead(t, filepath.Join(dir, "request.json")), &review); err != nil {
				t.Fatal(err)
			}
			pod, err := yaml.JSONToYAML(review.Request.Object)
			if err != nil {
				t.Fatal(err)
			}
			var answer struct {
				Allowed bool   `json:"allowed"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(mustRead(t, filepath.Join(dir, "golden.json")), &answer); err != nil {
				t.Fatal(err)
			}
			input := append(append(mustRead(t, filepath.Join(dir, "cluster.yaml")), "---\n"...), pod...)

			code, stdout, stderr := runMain(t, append([]string{"-f", "-"}, baseFlags...), input)
			if !answer.Allowed {
				if code != 1 || stdout != "" {
					t.Fatalf("the webhook refuses the pod (%s); inject: exit %d, stdout %q, stderr %s", answer.Message, code, stdout, stderr)
				}
				class := "SecretProviderClass "
				if !strings.Contains(answer.Message, class) || !strings.Contains(stderr, class) {
					t.Errorf("a refusal does not name the class:\n webhook: %s\n inject: %s", answer.Message, stderr)
				}
				// Each problem inject names is one the webhook names too.
				problems := 0
				for _, line := range strings.Split(stderr, "\n") {
					if _, problem, ok := strings.Cut(line, "): "); ok && strings.Contains(line, "document ") {
						problems++
						if !strings.Contains(answer.Message, problem) {
							t.Errorf("inject names a problem the webhook does not:\n inject:  %s\n webhook: %s", problem, answer.Message)
						}
					}
				}
				if problems == 0 {
					t.Errorf("inject names no problem:\n%s", stderr)
				}
				return
			}
			if code != 0 {
				t.Fatalf("the webhook admits the pod; inject: exit %d, stderr %s", code, stderr)
			}
			checkOutput(t, input, []byte(stdout), baseFlags)
		})
	}
}
