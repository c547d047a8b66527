package offline

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	yamlv3 "gopkg.in/yaml.v3"
	"sigs.k8s.io/yaml"
)

// patchOp is one JSON patch operation on a document, its path from the
// document's root. inject makes "add" operations (the webhook's patch) and,
// with --remove-csi-volumes, "remove" operations.
type patchOp struct {
	Op    string          `json:"op"`
	Path  string          `json:"path"`
	Value json.RawMessage `json:"value,omitempty"`
}

// editYAML returns the document raw with ops applied, keeping its text as it
// is wherever the operations change nothing: comments, key order, quoting,
// flow and block styles, anchors, blank lines and indentation.
//
// It works in three steps, each checked against the patch applied to the
// document's JSON (the truth, as the API server would apply it):
//
//  1. Splice: the operations are applied to the document's yaml.v3 node tree,
//     and only the text of what they add, replace or remove is written, at
//     the place the node positions give; a flow collection that changes
//     ({...} or [...]) is written anew as a whole, in flow style.
//  2. Else the whole changed node tree is encoded by yaml.v3: comments, key
//     order and scalar styles stay, indentation and blank lines may not.
//  3. Else the patched JSON is printed by sigs.k8s.io/yaml (keys sorted, no
//     comments), the way inject printed every changed document before.
//
// It also returns which step gave the text (1, 2 or 3), for tests.
func editYAML(raw, docJSON []byte, ops []patchOp) ([]byte, int, error) {
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		return nil, 0, fmt.Errorf("internal error: encoding the patch: %w", err)
	}
	p, err := jsonpatch.DecodePatch(opsJSON)
	if err != nil {
		return nil, 0, fmt.Errorf("internal error: decoding the patch: %w", err)
	}
	want, err := p.Apply(docJSON)
	if err != nil {
		return nil, 0, fmt.Errorf("internal error: applying the patch: %w", err)
	}
	if out, err := guarded(spliceYAML, raw, ops); err == nil && sameJSON(out, want) {
		return out, 1, nil
	}
	if out, err := guarded(reencodeYAML, raw, ops); err == nil && sameJSON(out, want) {
		return out, 2, nil
	}
	out, err := yaml.JSONToYAML(want)
	return out, 3, err
}

// guarded runs a formatting step, turning a panic in it into an error: a bug in
// keeping the text costs formatting (the next step), never the run.
func guarded(step func([]byte, []patchOp) ([]byte, error), raw []byte, ops []patchOp) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("internal error: %v", r)
		}
	}()
	return step(raw, ops)
}

// sameJSON reports whether the YAML document y reads (as inject and kubectl
// read it) as the JSON document want.
func sameJSON(y, want []byte) bool {
	got, err := yaml.YAMLToJSON(y)
	if err != nil {
		return false
	}
	var a, b any
	if json.Unmarshal(got, &a) != nil || json.Unmarshal(want, &b) != nil {
		return false
	}
	return reflect.DeepEqual(a, b)
}

// errWholeDocument stops the splice: the change is in a flow collection that is
// the document itself (a JSON document), which step 2 writes instead.
var errWholeDocument = errors.New("the document is one flow collection")

// editor applies patch operations to a document's node tree and records the
// text edits that they make.
type editor struct {
	raw    []byte
	starts []int // starts[l] is the offset of line l (from 1); starts[len-1] is len(raw)
	doc    *yamlv3.Node
	indent int // the document's indentation step

	order []*yamlv3.Node       // the parsed nodes, in document order
	index map[*yamlv3.Node]int // a node's position in order
	last  map[*yamlv3.Node]int // the position in order of the last node of a node's subtree

	edits []edit
	seen  map[*yamlv3.Node]bool // nodes whose text is already being rewritten
}

// edit replaces raw[start:end] with the text that render returns once every
// operation is applied.
type edit struct {
	start, end int
	depth      int // deeper edits at the same place come first
	seq        int
	render     func() (string, error)
}

// parseDocument reads raw into a yaml.v3 editor.
func parseDocument(raw []byte) (*editor, error) {
	if len(raw) > 0 && raw[len(raw)-1] != '\n' {
		raw = append(append([]byte(nil), raw...), '\n')
	}
	e := &editor{raw: raw, index: map[*yamlv3.Node]int{}, last: map[*yamlv3.Node]int{}, seen: map[*yamlv3.Node]bool{}, indent: 2}
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	if doc.Kind != yamlv3.DocumentNode || len(doc.Content) != 1 {
		return nil, errors.New("not one YAML document")
	}
	e.doc = &doc
	e.starts = []int{0, 0}
	for i, c := range raw {
		if c == '\n' {
			e.starts = append(e.starts, i+1)
		}
	}
	e.walk(doc.Content[0])
	e.indent = detectIndent(doc.Content[0])
	return e, nil
}

// walk records the document order of n's subtree.
func (e *editor) walk(n *yamlv3.Node) {
	e.index[n] = len(e.order)
	e.order = append(e.order, n)
	for _, c := range n.Content {
		e.walk(c)
	}
	e.last[n] = len(e.order) - 1
}

// detectIndent returns the indentation step of the first block mapping nested
// in a block mapping, else 2.
func detectIndent(n *yamlv3.Node) int {
	if n.Kind == yamlv3.MappingNode && n.Style&yamlv3.FlowStyle == 0 {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if v.Kind == yamlv3.MappingNode && v.Style&yamlv3.FlowStyle == 0 && v.Line > k.Line {
				if d := v.Column - k.Column; d >= 2 && d <= 8 {
					return d
				}
			}
		}
	}
	for _, c := range n.Content {
		if c.Kind == yamlv3.MappingNode || c.Kind == yamlv3.SequenceNode {
			if d := detectIndent(c); d != 2 {
				return d
			}
		}
	}
	return 2
}

// spliceYAML is step 1 of editYAML.
func spliceYAML(raw []byte, ops []patchOp) ([]byte, error) {
	e, err := parseDocument(raw)
	if err != nil {
		return nil, err
	}
	for _, op := range ops {
		if err := e.apply(op, true); err != nil {
			return nil, err
		}
	}
	return e.splice()
}

// reencodeYAML is step 2 of editYAML. A document that is one flow collection
// (JSON) is written as block YAML, its strings quoted only where needed.
func reencodeYAML(raw []byte, ops []patchOp) ([]byte, error) {
	e, err := parseDocument(raw)
	if err != nil {
		return nil, err
	}
	if root := e.doc.Content[0]; root.Style&yamlv3.FlowStyle != 0 {
		toBlock(root)
	}
	for _, op := range ops {
		if err := e.apply(op, false); err != nil {
			return nil, err
		}
	}
	return encodeNode(e.doc, e.indent)
}

// toBlock writes n's subtree in block style, with plain scalars where they
// read back the same.
func toBlock(n *yamlv3.Node) {
	switch {
	case n.Kind == yamlv3.MappingNode || n.Kind == yamlv3.SequenceNode:
		n.Style &^= yamlv3.FlowStyle
	case n.Kind == yamlv3.ScalarNode && n.Tag == "!!str" && n.Style&(yamlv3.DoubleQuotedStyle|yamlv3.SingleQuotedStyle) != 0:
		n.Style = 0
		if needsQuotes(n.Value) {
			n.Style = yamlv3.DoubleQuotedStyle
		}
	}
	for _, c := range n.Content {
		toBlock(c)
	}
}

// encodeNode encodes n with the given indentation.
func encodeNode(n *yamlv3.Node, indent int) ([]byte, error) {
	var b bytes.Buffer
	enc := yamlv3.NewEncoder(&b)
	enc.SetIndent(indent)
	if err := enc.Encode(n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// isNew reports whether n was made by an operation (it has no place in the text).
func isNew(n *yamlv3.Node) bool { return n.Line == 0 }

// pointer splits a JSON pointer into its unescaped tokens.
func pointer(path string) ([]string, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("path %q is not a JSON pointer", path)
	}
	toks := strings.Split(path[1:], "/")
	for i, t := range toks {
		toks[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
	}
	return toks, nil
}

// apply applies one operation to the node tree; with record, it records the
// text edits that it makes.
func (e *editor) apply(op patchOp, record bool) error {
	toks, err := pointer(op.Path)
	if err != nil {
		return err
	}
	chain := []*yamlv3.Node{e.doc.Content[0]}
	for _, tok := range toks[:len(toks)-1] {
		next, err := e.child(chain, tok, record)
		if err != nil {
			return fmt.Errorf("%s: %w", op.Path, err)
		}
		chain = append(chain, next)
	}
	parent, tok := chain[len(chain)-1], toks[len(toks)-1]
	var value *yamlv3.Node
	if op.Op == "add" {
		if value, err = valueNode(op.Value); err != nil {
			return fmt.Errorf("%s: %w", op.Path, err)
		}
	} else if op.Op != "remove" {
		return fmt.Errorf("%s: operation %q is not add or remove", op.Path, op.Op)
	}
	// Where the change is written: in a block collection that is in the text,
	// else with the new node or the flow collection it is in.
	block, err := e.locate(chain, record)
	if err != nil {
		return err
	}
	depth := len(chain)
	switch parent.Kind {
	case yamlv3.MappingNode:
		i := findKey(parent, tok)
		switch {
		case op.Op == "remove" && i < 0:
			return fmt.Errorf("%s: no such key", op.Path)
		case op.Op == "remove":
			k, v := parent.Content[i], parent.Content[i+1]
			parent.Content = append(parent.Content[:i:i], parent.Content[i+2:]...)
			if block && !isNew(k) {
				e.add(e.headStart(k, parent), e.end(v, parent), depth, func() (string, error) { return "", nil })
			}
		case i >= 0:
			k, old := parent.Content[i], parent.Content[i+1]
			parent.Content[i+1] = value
			if block && !isNew(k) && !e.seen[k] {
				e.seen[k] = true
				e.add(e.start(k), e.end(old, parent), depth, func() (string, error) { return e.renderPair(parent, k, true) })
			}
		default:
			k := scalarNode(tok)
			parent.Content = append(parent.Content, k, value)
			if block {
				e.add(e.end(parent, parent), e.end(parent, parent), depth, func() (string, error) { return e.renderPair(parent, k, false) })
			}
		}
	case yamlv3.SequenceNode:
		n := len(parent.Content)
		i := n
		if tok != "-" {
			if i, err = strconv.Atoi(tok); err != nil || i < 0 || i > n || (op.Op == "remove" && i == n) {
				return fmt.Errorf("%s: index %q out of range (%d items)", op.Path, tok, n)
			}
		} else if op.Op == "remove" {
			return fmt.Errorf("%s: cannot remove \"-\"", op.Path)
		}
		if op.Op == "remove" {
			item := parent.Content[i]
			parent.Content = append(parent.Content[:i:i], parent.Content[i+1:]...)
			if block && !isNew(item) {
				e.add(e.headStart(item, parent), e.end(item, parent), depth, func() (string, error) { return "", nil })
			}
			return nil
		}
		parent.Content = append(parent.Content[:i:i], append([]*yamlv3.Node{value}, parent.Content[i:]...)...)
		if !block {
			return nil
		}
		at := e.end(parent, parent)
		for _, next := range parent.Content[i+1:] {
			if !isNew(next) {
				at = e.headStart(next, parent)
				break
			}
		}
		e.add(at, at, depth, func() (string, error) { return e.renderItem(parent, value) })
	default:
		return fmt.Errorf("%s: the parent is not a mapping or a sequence", op.Path)
	}
	return nil
}

// add records an edit.
func (e *editor) add(start, end, depth int, render func() (string, error)) {
	e.edits = append(e.edits, edit{start: start, end: end, depth: depth, seq: len(e.edits), render: render})
}

// child returns the child tok of the last node of chain. An alias on the way
// is replaced by a copy of what it stands for (so that the change does not
// reach the other places that use the anchor), and a key that the mapping
// has only through a merge key (<<) is copied into it.
func (e *editor) child(chain []*yamlv3.Node, tok string, record bool) (*yamlv3.Node, error) {
	parent := chain[len(chain)-1]
	var slot **yamlv3.Node
	switch parent.Kind {
	case yamlv3.MappingNode:
		i := findKey(parent, tok)
		if i < 0 {
			v := mergedValue(parent, tok)
			if v == nil {
				return nil, fmt.Errorf("no key %q", tok)
			}
			k, c := scalarNode(tok), copyNew(v)
			parent.Content = append(parent.Content, k, c)
			if block, err := e.locate(chain, record); err != nil {
				return nil, err
			} else if block {
				at := e.end(parent, parent)
				e.add(at, at, len(chain), func() (string, error) { return e.renderPair(parent, k, false) })
			}
			return c, nil
		}
		slot = &parent.Content[i+1]
		if (*slot).Kind == yamlv3.AliasNode {
			k := parent.Content[i]
			if block, err := e.locate(chain, record); err != nil {
				return nil, err
			} else if block && !e.seen[k] {
				e.seen[k] = true
				e.add(e.start(k), e.end(*slot, parent), len(chain), func() (string, error) { return e.renderPair(parent, k, true) })
			}
		}
	case yamlv3.SequenceNode:
		i, err := strconv.Atoi(tok)
		if err != nil || i < 0 || i >= len(parent.Content) {
			return nil, fmt.Errorf("index %q out of range (%d items)", tok, len(parent.Content))
		}
		slot = &parent.Content[i]
		if item := *slot; item.Kind == yamlv3.AliasNode {
			if block, err := e.locate(chain, record); err != nil {
				return nil, err
			} else if block && !e.seen[item] {
				e.seen[item] = true
				start, end := e.headStart(item, parent), e.end(item, parent)
				e.add(start, end, len(chain), func() (string, error) {
					if i := indexOf(parent, *slot); i >= 0 {
						return e.renderItem(parent, parent.Content[i])
					}
					return "", nil
				})
			}
		}
	default:
		return nil, fmt.Errorf("%q: the parent is not a mapping or a sequence", tok)
	}
	if (*slot).Kind == yamlv3.AliasNode {
		*slot = copyNew((*slot).Alias)
	}
	return *slot, nil
}

// locate decides where a change in the last node of chain is written. It
// returns true when that node is a block collection in the text, under block
// collections only: the change is an edit of it. Under a new node, the change
// is written with that node. Under a flow collection, the outermost one is
// written anew, as a whole (locate records that edit when record is set), with
// the flow collections from it down to the change turned to block style, so
// that what is added reads as the rest of the manifest; the flow collections
// that do not change stay as they are.
func (e *editor) locate(chain []*yamlv3.Node, record bool) (bool, error) {
	for i, n := range chain {
		if isNew(n) {
			return false, nil
		}
		if n.Style&yamlv3.FlowStyle == 0 {
			continue
		}
		for j, m := range chain[i:] {
			m.Style &^= yamlv3.FlowStyle
			// yaml.v3 writes the line comment of a block collection nowhere
			// or on a wrong line: put it on the key.
			if i+j == 0 || m.LineComment == "" {
				continue
			}
			if p := chain[i+j-1]; p.Kind == yamlv3.MappingNode {
				if k := p.Content[indexOf(p, m)-1]; k.LineComment == "" {
					k.LineComment, m.LineComment = m.LineComment, ""
				}
			}
		}
		if !record {
			return false, nil
		}
		if i == 0 {
			return false, errWholeDocument
		}
		if e.seen[n] {
			return false, nil
		}
		e.seen[n] = true
		parent := chain[i-1]
		if parent.Kind == yamlv3.MappingNode {
			k := parent.Content[indexOf(parent, n)-1]
			e.add(e.start(k), e.end(n, parent), i, func() (string, error) { return e.renderPair(parent, k, true) })
		} else {
			e.add(e.headStart(n, parent), e.end(n, parent), i, func() (string, error) { return e.renderItem(parent, n) })
		}
		return false, nil
	}
	return record, nil
}

// findKey returns the index in m.Content of the key tok, or -1.
func findKey(m *yamlv3.Node, tok string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yamlv3.ScalarNode && k.Value == tok {
			return i
		}
	}
	return -1
}

// mergedValue returns the value of key tok that m has through its merge keys.
func mergedValue(m *yamlv3.Node, tok string) *yamlv3.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind != yamlv3.ScalarNode || k.Value != "<<" {
			continue
		}
		sources := []*yamlv3.Node{m.Content[i+1]}
		if sources[0].Kind == yamlv3.SequenceNode {
			sources = sources[0].Content
		}
		for _, s := range sources {
			for s.Kind == yamlv3.AliasNode {
				s = s.Alias
			}
			if s.Kind != yamlv3.MappingNode {
				continue
			}
			if j := findKey(s, tok); j >= 0 {
				return s.Content[j+1]
			}
			if v := mergedValue(s, tok); v != nil {
				return v
			}
		}
	}
	return nil
}

// indexOf returns the index of c in n.Content, or -1.
func indexOf(n, c *yamlv3.Node) int {
	for i, x := range n.Content {
		if x == c {
			return i
		}
	}
	return -1
}

// copyNew returns a deep copy of n, aliases resolved, without positions,
// anchors or comments: a new node.
func copyNew(n *yamlv3.Node) *yamlv3.Node {
	for n.Kind == yamlv3.AliasNode {
		n = n.Alias
	}
	c := *n
	c.Line, c.Column, c.Anchor = 0, 0, ""
	c.HeadComment, c.LineComment, c.FootComment = "", "", ""
	c.Content = nil
	for _, x := range n.Content {
		c.Content = append(c.Content, copyNew(x))
	}
	return &c
}

// scalarNode returns a new string scalar, quoted when needed.
func scalarNode(s string) *yamlv3.Node {
	n := &yamlv3.Node{Kind: yamlv3.ScalarNode, Tag: "!!str", Value: s}
	if needsQuotes(s) {
		n.Style = yamlv3.DoubleQuotedStyle
	}
	return n
}

// needsQuotes reports whether the plain scalar s would not read back as the
// string s with the YAML 1.1 rules of sigs.k8s.io/yaml (kubectl, inject):
// yes, on, 0644, 1e3 and the like. yaml.v3 itself quotes what YAML 1.2 would
// read as another type.
func needsQuotes(s string) bool {
	if strings.Contains(s, "\n") {
		return false // written as a literal block
	}
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return true
	}
	str, ok := v.(string)
	return !ok || str != s
}

// valueNode returns the JSON value raw as new nodes, in block style, with the
// keys in the JSON's order.
func valueNode(raw json.RawMessage) (*yamlv3.Node, error) {
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("the value: %w", err)
	}
	if len(doc.Content) != 1 {
		return nil, errors.New("the value is empty")
	}
	var norm func(n *yamlv3.Node)
	norm = func(n *yamlv3.Node) {
		n.Line, n.Column, n.Style = 0, 0, 0
		if n.Kind == yamlv3.ScalarNode && n.Tag == "!!str" && needsQuotes(n.Value) {
			n.Style = yamlv3.DoubleQuotedStyle
		}
		for _, c := range n.Content {
			norm(c)
		}
	}
	norm(doc.Content[0])
	return doc.Content[0], nil
}

// line returns the text of line l, without its newline.
func (e *editor) line(l int) string {
	if l < 1 || l+1 >= len(e.starts) {
		return ""
	}
	return strings.TrimRight(string(e.raw[e.starts[l]:e.starts[l+1]]), "\r\n")
}

// lines is the number of lines of raw.
func (e *editor) lines() int { return len(e.starts) - 2 }

// start returns the offset of the line of n.
func (e *editor) start(n *yamlv3.Node) int { return e.starts[n.Line] }

// headStart returns the offset where child c of the block collection parent
// begins with its comment: the line of its key or of its "- ", preceded by the
// comment lines right above it at the same indentation.
func (e *editor) headStart(c, parent *yamlv3.Node) int {
	l := c.Line
	if parent.Kind == yamlv3.SequenceNode {
		// The "- " may stand alone on a line above the item's content.
		for l > 1 && !strings.HasPrefix(strings.TrimLeft(e.line(l), " "), "-") {
			l--
		}
	}
	indent := parent.Column - 1
	for l > 1 {
		t := e.line(l - 1)
		if trimmed := strings.TrimLeft(t, " "); !strings.HasPrefix(trimmed, "#") || len(t)-len(trimmed) != indent {
			break
		}
		l--
	}
	return e.starts[l]
}

// end returns the offset right after the text of n's subtree, a child of the
// block collection parent (or parent itself): the line where the next node
// begins, less the blank lines and the comments at parent's indentation or
// less right above it.
func (e *editor) end(n, parent *yamlv3.Node) int {
	next := e.lines() + 1
	if j := e.last[n] + 1; j < len(e.order) {
		next = e.order[j].Line
	}
	lastLine := e.order[e.last[n]].Line
	indent := parent.Column - 1
	for next-1 > lastLine {
		t := e.line(next - 1)
		trimmed := strings.TrimLeft(t, " ")
		if trimmed != "" && !(strings.HasPrefix(trimmed, "#") && len(t)-len(trimmed) <= indent) {
			break
		}
		next--
	}
	return e.starts[next]
}

// renderPair writes the pair of key k of the block mapping m as it is now, at
// m's indentation. Unless replaced, k is new; when replaced, k's head
// comment stays in the text above it.
func (e *editor) renderPair(m, k *yamlv3.Node, replaced bool) (string, error) {
	i := indexOf(m, k)
	if i < 0 {
		return "", nil
	}
	key := *k
	if replaced {
		key.HeadComment = ""
	}
	frag := &yamlv3.Node{Kind: yamlv3.MappingNode, Content: []*yamlv3.Node{&key, m.Content[i+1]}}
	return e.fragment(frag, m.Column-1)
}

// renderItem writes item of the block sequence s at s's indentation.
func (e *editor) renderItem(s, item *yamlv3.Node) (string, error) {
	if indexOf(s, item) < 0 {
		return "", nil
	}
	c := *item
	c.HeadComment = ""
	frag := &yamlv3.Node{Kind: yamlv3.SequenceNode, Content: []*yamlv3.Node{&c}}
	return e.fragment(frag, s.Column-1)
}

// fragment encodes n, each line indented by indent spaces.
func (e *editor) fragment(n *yamlv3.Node, indent int) (string, error) {
	b, err := encodeNode(n, e.indent)
	if err != nil {
		return "", err
	}
	pad := strings.Repeat(" ", indent)
	var out strings.Builder
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			out.WriteString(pad)
		}
		out.WriteString(l)
	}
	return out.String(), nil
}

// splice writes the recorded edits into the text.
func (e *editor) splice() ([]byte, error) {
	edits := append([]edit(nil), e.edits...)
	// By place; at one place, deeper first, then in the order made.
	for i := 1; i < len(edits); i++ {
		for j := i; j > 0 && lessEdit(edits[j], edits[j-1]); j-- {
			edits[j], edits[j-1] = edits[j-1], edits[j]
		}
	}
	var out bytes.Buffer
	at := 0
	for _, ed := range edits {
		if ed.start < at {
			return nil, errors.New("overlapping edits")
		}
		text, err := ed.render()
		if err != nil {
			return nil, err
		}
		out.Write(e.raw[at:ed.start])
		out.WriteString(text)
		at = ed.end
	}
	out.Write(e.raw[at:])
	return out.Bytes(), nil
}

func lessEdit(a, b edit) bool {
	if a.start != b.start {
		return a.start < b.start
	}
	if a.end != b.end {
		return a.end < b.end
	}
	if a.depth != b.depth {
		return a.depth > b.depth
	}
	return a.seq < b.seq
}
