package offline

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// TestEditYAML checks that operations are written into the text, with the rest
// of it as it was, for the shapes manifests take.
func TestEditYAML(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ops      []patchOp
		want     string
		step     int
	}{
		{name: "key added to a block mapping, before a foot comment",
			in:   "a:\n  b: 1 # one\n# foot of a\nc: 2\n",
			ops:  []patchOp{{Op: "add", Path: "/a/x", Value: []byte(`"on"`)}},
			want: "a:\n  b: 1 # one\n  x: \"on\"\n# foot of a\nc: 2\n", step: 1},
		{name: "item appended to a compact sequence",
			in:  "l:\n- a\n- b\n\n# after\nm: 1\n",
			ops: []patchOp{{Op: "add", Path: "/l/-", Value: []byte(`{"k":"0644","n":[1]}`)}},
			// n alone is a YAML 1.1 boolean: quoted.
			want: "l:\n- a\n- b\n- k: \"0644\"\n  \"n\":\n    - 1\n\n# after\nm: 1\n", step: 1},
		{name: "item inserted before an item with a head comment",
			in:   "l:\n  # first\n  - a\n",
			ops:  []patchOp{{Op: "add", Path: "/l/0", Value: []byte(`"z"`)}},
			want: "l:\n  - z\n  # first\n  - a\n", step: 1},
		{name: "after a block scalar",
			in:   "m:\n  s: |\n    # not a comment\n    x\n\nn: 1\n",
			ops:  []patchOp{{Op: "add", Path: "/m/t", Value: []byte(`"multi\nline"`)}},
			want: "m:\n  s: |\n    # not a comment\n    x\n  t: |-\n    multi\n    line\n\nn: 1\n", step: 1},
		{name: "flow mapping turned block down to the change",
			in:   "m: {a: {b: 1}, c: [1, 2]} # m\nn: 1\n",
			ops:  []patchOp{{Op: "add", Path: "/m/a/z", Value: []byte(`true`)}},
			want: "m: # m\n  a:\n    b: 1\n    z: true\n  c: [1, 2]\nn: 1\n", step: 1},
		{name: "path through an alias is a copy",
			in:   "x: &x {a: 1}\nw: *x\n",
			ops:  []patchOp{{Op: "add", Path: "/w/b", Value: []byte(`2`)}},
			want: "x: &x {a: 1}\nw: {a: 1, b: 2}\n", step: 1},
		{name: "key through a merge key",
			in:   "d: &d\n  m:\n    a: 1\ne:\n  <<: *d\n  f: 1\n",
			ops:  []patchOp{{Op: "add", Path: "/e/m/b", Value: []byte(`2`)}},
			want: "d: &d\n  m:\n    a: 1\ne:\n  <<: *d\n  f: 1\n  m:\n    a: 1\n    b: 2\n", step: 1},
		{name: "items and keys removed with their comments",
			in:   "l:\n  - a\n  # b goes\n  - b\n  - c\nk: 1\nj: 2\n",
			ops:  []patchOp{{Op: "remove", Path: "/l/1"}, {Op: "remove", Path: "/k"}},
			want: "l:\n  - a\n  - c\nj: 2\n", step: 1},
		{name: "four-space indentation",
			in:   "a:\n    b:\n        c: 1\n",
			ops:  []patchOp{{Op: "add", Path: "/a/n", Value: []byte(`{"p":{"q":1}}`)}},
			want: "a:\n    b:\n        c: 1\n    \"n\":\n        p:\n            q: 1\n", step: 1},
		{name: "a JSON document is written as block YAML",
			in:   `{"a": {"b": "true"}}`,
			ops:  []patchOp{{Op: "add", Path: "/a/c", Value: []byte(`1`)}},
			want: "a:\n  b: \"true\"\n  c: 1\n", step: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := yaml.YAMLToJSON([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			got, step, err := editYAML([]byte(tc.in), j, tc.ops)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, string(got)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
			if step != tc.step {
				t.Errorf("written by step %d, want %d", step, tc.step)
			}
		})
	}
}
