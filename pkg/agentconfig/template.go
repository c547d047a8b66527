package agentconfig

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template/parse"

	"github.com/kvinject/kvinject/internal/textdist"
)

// Template is a file rendered from the values of entries: the pod's
// kvinject.dev/template.<file> annotation, the agent's --template flag.
//
// The text is Go text/template restricted to a small language (see
// docs/contract.md, "Templates"): text, comments and actions that are a
// pipeline of at most maxPipeline functions of TemplateFuncs, whose
// arguments are string literals. References (file "<path>", secret "<name>")
// name entries the pod fetches; CheckTemplates resolves every one of them
// before anything is fetched.
//
// The written form of the flag is
//
//	<file>[;mode=<octal>]=<text>
//
// The file cannot contain ';' or '=', so the first '=' ends the head and the
// text follows as it is (newlines included).
type Template struct {
	// File is the rendered file: one path segment at the top of the mount.
	File string
	// Mode is the rendered file's mode; 0 means the mapping's (kvinject.dev/file-mode).
	Mode uint32
	// Text is the template.
	Text string
}

// Bounds of templates. The text of all templates together is bounded by the
// annotations' own limit (256 KiB), and on the agent's command line by
// MaxTemplates*MaxTemplateSize.
const (
	// MaxTemplates bounds the templates of one pod.
	MaxTemplates = 16
	// MaxTemplateSize bounds one template's text, in bytes.
	MaxTemplateSize = 16 << 10
	// MaxTemplateFileLen bounds a template's file name: an annotation key's
	// name part is at most 63 characters, of which "template." takes 9.
	MaxTemplateFileLen = 63 - len("template.")
	// MaxRendered bounds one rendered file, enforced while it is written.
	MaxRendered = 1 << 20
	// MaxRenderedTotal bounds all rendered files of a set together.
	MaxRenderedTotal = 4 << 20
	// maxWork bounds the bytes that one template's functions produce (the
	// values they read included), so that chained functions cannot allocate
	// without limit even when their results are not written.
	maxWork = 4 << 20
	// maxPipeline bounds the commands of one action: file "x" | f | g ...
	maxPipeline = 8
)

// String returns the template in the flag's written form.
func (t Template) String() string {
	head := t.File
	if t.Mode != 0 {
		head += fmt.Sprintf(";mode=%04o", t.Mode)
	}
	return head + "=" + t.Text
}

// ParseTemplateFlag parses the written form of --template (see Template). It
// checks the head (file, mode) and the size; the text is checked by
// CheckTemplates against the entries.
func ParseTemplateFlag(s string) (Template, error) {
	form := "write <file>[;mode=<octal>]=<template text>"
	i := strings.IndexAny(s, ";=")
	if i < 0 {
		return Template{}, fmt.Errorf("%q: %s", truncate(s, 60), form)
	}
	t := Template{File: s[:i]}
	if err := ValidateTemplateFile(t.File); err != nil {
		return Template{}, err
	}
	text := s[i+1:]
	if s[i] == ';' {
		key, after, _ := strings.Cut(text, "=")
		if key != "mode" {
			return Template{}, fmt.Errorf("template %q: unknown option %q; the only option is mode=<octal>", t.File, truncate(key, 40))
		}
		val, rest, ok := strings.Cut(after, "=")
		if !ok {
			return Template{}, fmt.Errorf("template %q: %s", t.File, form)
		}
		m, err := ParseFileMode(val)
		if err != nil {
			return Template{}, fmt.Errorf("template %q: mode %v", t.File, err)
		}
		t.Mode, text = m, rest
	}
	if len(text) > MaxTemplateSize {
		return Template{}, fmt.Errorf("template %q is %d bytes, more than the limit of %d", t.File, len(text), MaxTemplateSize)
	}
	t.Text = text
	return t, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// ValidateTemplateFile checks a template's file: one path segment that
// ValidateFile accepts (letters, digits, '.', '_', '-'), at most
// MaxTemplateFileLen characters.
func ValidateTemplateFile(f string) error {
	switch {
	case f == "":
		return fmt.Errorf("the template's file name is empty: write kvinject.dev/template.<file>, e.g. kvinject.dev/template.appsettings.json")
	case len(f) > MaxTemplateFileLen:
		return fmt.Errorf("template file %q is longer than %d characters (an annotation key's name is at most 63, with \"template.\")", f, MaxTemplateFileLen)
	case strings.Contains(f, "/"):
		return fmt.Errorf("template file %q must be a flat name at the top of the mount: annotation keys cannot contain '/'", f)
	}
	if err := ValidateFile(f); err != nil {
		return fmt.Errorf("template %v", err)
	}
	return nil
}

// TemplateProblem is what is wrong with one template (File), or with an
// entry because of the templates (File empty).
type TemplateProblem struct {
	File string
	Msg  string
}

// CompiledTemplate is a template checked against the entries: its parse tree
// and the files it reads.
type CompiledTemplate struct {
	Template
	tree *parse.Tree
	// refs maps each literal reference, "file\x00<path>" or
	// "secret\x00<name>", to what it reads.
	refs map[string]reference
}

// reference is what a literal file or secret reference reads: the file path
// of an entry's rendered files, and how to explain its absence.
type reference struct {
	path string
	// entry is the entry's written form, for messages.
	entry string
	// missing explains, without values, a path that the entry may not write
	// (a JSON key, a version of a history); empty for a path it always writes.
	missing string
	// optional: the entry is ;optional, so its files are absent while its
	// object is; the template then reads "" (for default to replace).
	optional bool
}

// CheckTemplates checks templates against the entries they read: the count,
// each template's file, mode and size, its syntax and its restricted
// language, every reference, collisions with the entries' files, and that
// every ;nofile entry is read by some template. It returns the compiled
// templates when there is no problem.
func CheckTemplates(ts []Template, entries []Entry) ([]*CompiledTemplate, []TemplateProblem) {
	var probs []TemplateProblem
	add := func(file, format string, args ...any) {
		probs = append(probs, TemplateProblem{File: file, Msg: fmt.Sprintf(format, args...)})
	}
	if len(ts) > MaxTemplates {
		add(ts[MaxTemplates].File, "the pod has %d templates, more than the limit of %d; render fewer files (one template may read many entries)", len(ts), MaxTemplates)
		return nil, probs
	}
	claims := entryPaths(entries)
	used := make([]bool, len(entries))
	seen := map[string]bool{}
	var out []*CompiledTemplate
	for _, t := range ts {
		if err := ValidateTemplateFile(t.File); err != nil {
			add(t.File, "%v", err)
			continue
		}
		if seen[t.File] {
			add(t.File, "is given twice")
			continue
		}
		seen[t.File] = true
		if by, ok := claims[t.File]; ok {
			add(t.File, "the file %q is already %s; name the template's file differently", t.File, by)
		}
		if len(t.Text) > MaxTemplateSize {
			add(t.File, "the template is %d bytes, more than the limit of %d; split it into several files", len(t.Text), MaxTemplateSize)
			continue
		}
		c, msgs := compile(t, entries, used)
		for _, m := range msgs {
			add(t.File, "%s", m)
		}
		if len(msgs) == 0 {
			out = append(out, c)
		}
	}
	for i, e := range entries {
		if len(probs) > 0 {
			break // a template that failed may be the one meant to read it
		}
		if e.NoFile && !used[i] {
			add("", "entry %q has nofile, but no template reads it, so it would be fetched for nothing; drop ;nofile to write its file, or read it in a template with {{ file %q }}", e.String(), e.File)
		}
	}
	if len(probs) > 0 {
		return nil, probs
	}
	return out, nil
}

// entryPaths maps every path the entries claim, and every directory above
// one, to what claims it, for messages: `written by entry "..."`.
func entryPaths(entries []Entry) map[string]string {
	m := map[string]string{}
	for _, e := range entries {
		for _, p := range e.Files() {
			what := fmt.Sprintf("written by entry %q", e.String())
			switch {
			case e.NoFile:
				what = fmt.Sprintf("a path of entry %q (not written, as it has nofile, but named by templates)", e.String())
			case e.IsDir():
				what = fmt.Sprintf("the directory of entry %q", e.String())
			}
			for q := p; ; {
				if _, ok := m[q]; !ok {
					m[q] = what
				}
				i := strings.LastIndexByte(q, '/')
				if i < 0 {
					break
				}
				q = q[:i]
				if !e.NoFile {
					what = fmt.Sprintf("the directory of entry %q", e.String())
				}
			}
		}
	}
	return m
}

// The functions of templates.
const (
	fnFile         = "file"
	fnSecret       = "secret"
	fnJSONQuote    = "jsonQuote"
	fnYAMLQuote    = "yamlQuote"
	fnBase64       = "base64"
	fnBase64Decode = "base64Decode"
	fnTrim         = "trim"
	fnDefault      = "default"
	fnURLQuery     = "urlQuery"
)

// TemplateFuncs are the functions a template may call, in the order the
// documentation lists them.
var TemplateFuncs = []string{fnFile, fnSecret, fnJSONQuote, fnYAMLQuote, fnBase64, fnBase64Decode, fnTrim, fnDefault, fnURLQuery}

// funcsHint lists the functions in messages.
var funcsHint = "the functions are " + strings.Join(TemplateFuncs, ", ")

// forbidden explains text/template's builtins, which templates cannot use.
var forbidden = map[string]string{
	"printf":   "printf can allocate without bound (a width such as %999999999d); put text outside {{ }} and quote values with | jsonQuote or | yamlQuote",
	"print":    "print is not available; put text outside {{ }}",
	"println":  "println is not available; put text and newlines outside {{ }}",
	"call":     "call runs a function value, and templates have none",
	"index":    "index reads dynamic values; read a JSON key with {{ file \"<file>/<key>\" }} of a format=json entry",
	"slice":    "slice reads dynamic values; templates have none",
	"len":      "len is not available",
	"and":      "conditions are not available; use | default \"<text>\" for an empty value",
	"or":       "conditions are not available; use | default \"<text>\" for an empty value",
	"not":      "conditions are not available",
	"eq":       "comparisons are not available",
	"ne":       "comparisons are not available",
	"lt":       "comparisons are not available",
	"le":       "comparisons are not available",
	"gt":       "comparisons are not available",
	"ge":       "comparisons are not available",
	"html":     "html escaping is not available; use jsonQuote, yamlQuote or urlQuery",
	"js":       "js escaping is not available; use jsonQuote",
	"urlquery": "write urlQuery (capital Q)",
}

// compile parses t and checks its nodes; it marks the entries it reads in used.
func compile(t Template, entries []Entry, used []bool) (*CompiledTemplate, []string) {
	tree := parse.New(t.File)
	tree.Mode = parse.SkipFuncCheck | parse.ParseComments
	treeSet := map[string]*parse.Tree{}
	if _, err := tree.Parse(t.Text, "", "", treeSet); err != nil {
		return nil, []string{syntaxMessage(t.Text, err)}
	}
	c := &CompiledTemplate{Template: t, tree: tree, refs: map[string]reference{}}
	w := walker{text: t.Text, entries: entries, used: used, c: c}
	for name := range treeSet {
		if name != t.File {
			w.problem(0, "{{define}} and {{block}} (here %q) are not available: a template is one file", name)
		}
	}
	if tree.Root != nil {
		w.node(tree.Root)
	}
	if len(w.probs) > 0 {
		return nil, w.probs
	}
	return c, nil
}

var syntaxRE = regexp.MustCompile(`^template: [^:]*:(\d+): (.*)$`)

// syntaxTokenRE finds the token a syntax error is about.
var syntaxTokenRE = regexp.MustCompile(`^unexpected (?:"(.+)" in|\{\{(\w+)\}\})`)

// syntaxTokens maps other syntax errors to the token they are about.
var syntaxTokens = map[string]string{
	"unclosed action":                 "{{",
	"missing value for command":       "{{",
	"unexpected right paren":          ")",
	"unterminated quoted string":      `"`,
	"unterminated raw quoted string":  "`",
	"unterminated character constant": "'",
}

// syntaxMessage rephrases text/template's syntax error: "line N, column M:
// ...". Go's parser reports the line only; the column is that of the token
// the error names when it occurs once on that line, else left out.
func syntaxMessage(text string, err error) string {
	msg := err.Error()
	line := 0
	if m := syntaxRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	fix := "check the {{ }} there: actions are {{ file \"<file>\" }}, {{ secret \"<name>\" }}, optionally piped into functions, e.g. {{ file \"db/password\" | jsonQuote }}"
	if line <= 0 {
		return fmt.Sprintf("syntax error: %s; %s", truncate(msg, 200), fix)
	}
	at := fmt.Sprintf("line %d", line)
	token := syntaxTokens[msg]
	if m := syntaxTokenRE.FindStringSubmatch(msg); m != nil {
		token = m[1] + m[2]
	}
	if lines := strings.Split(text, "\n"); token != "" && line <= len(lines) && strings.Count(lines[line-1], token) == 1 {
		at += fmt.Sprintf(", column %d", strings.Index(lines[line-1], token)+1)
	}
	return fmt.Sprintf("%s: syntax error: %s; %s", at, truncate(msg, 200), fix)
}

// walker checks a parse tree against the allow-list of nodes and functions.
type walker struct {
	text    string
	entries []Entry
	used    []bool
	c       *CompiledTemplate
	probs   []string
}

// maxTemplateProblems bounds the problems reported for one template.
const maxTemplateProblems = 5

func (w *walker) problem(pos parse.Pos, format string, args ...any) {
	if len(w.probs) >= maxTemplateProblems {
		return
	}
	line, col := lineCol(w.text, int(pos))
	w.probs = append(w.probs, fmt.Sprintf("line %d, column %d: ", line, col)+fmt.Sprintf(format, args...))
}

// lineCol returns the 1-based line and column (in bytes) of offset pos.
func lineCol(text string, pos int) (int, int) {
	pos = min(max(pos, 0), len(text))
	before := text[:pos]
	return 1 + strings.Count(before, "\n"), pos - strings.LastIndexByte(before, '\n')
}

func (w *walker) node(n parse.Node) {
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			w.node(c)
		}
	case *parse.TextNode, *parse.CommentNode:
	case *parse.ActionNode:
		w.pipe(n.Pipe)
	case *parse.IfNode:
		w.problem(n.Pos, "{{if}} is not available: templates have no conditions; use | default \"<text>\" for an empty value")
	case *parse.RangeNode:
		w.problem(n.Pos, "{{range}} is not available: templates have no loops; name each file you need with {{ file \"<file>\" }}")
	case *parse.WithNode:
		w.problem(n.Pos, "{{with}} is not available: templates have no conditions or dot; use | default \"<text>\" for an empty value")
	case *parse.TemplateNode:
		w.problem(n.Pos, "{{template}} and {{block}} are not available: a template is one file")
	case *parse.BreakNode, *parse.ContinueNode:
		w.problem(n.Position(), "{{break}} and {{continue}} are not available: templates have no loops")
	default:
		w.problem(n.Position(), "%s is not available here", n)
	}
}

// pipe checks one action: no variables, at most maxPipeline commands, a
// literal or a reference first, then functions.
func (w *walker) pipe(p *parse.PipeNode) {
	if len(p.Decl) > 0 {
		w.problem(p.Pos, "variables ($%s) are not available: write the reference where its value goes, e.g. {{ file \"db/password\" }}", strings.TrimPrefix(p.Decl[0].Ident[0], "$"))
		return
	}
	if len(p.Cmds) > maxPipeline {
		w.problem(p.Pos, "an action may chain at most %d functions, this one has %d", maxPipeline, len(p.Cmds))
		return
	}
	for i, cmd := range p.Cmds {
		w.command(cmd, i == 0)
	}
}

// command checks one command of a pipeline; first is the pipeline's first,
// which receives no piped value.
func (w *walker) command(cmd *parse.CommandNode, first bool) {
	head := cmd.Args[0]
	id, ok := head.(*parse.IdentifierNode)
	if !ok {
		if _, isString := head.(*parse.StringNode); isString && first && len(cmd.Args) == 1 {
			return // a literal string, e.g. {{ "{{" }} to write braces
		}
		w.problem(head.Position(), "%s", operandMessage(head))
		return
	}
	name := id.Ident
	if why, bad := forbidden[name]; bad {
		w.problem(id.Pos, "%s is not available: %s", name, why)
		return
	}
	args := cmd.Args[1:]
	literal := func(want int, form string) ([]string, bool) {
		if len(args) != want {
			w.problem(id.Pos, "%s takes %s, as in %s", name, plural(want, "string literal"), form)
			return nil, false
		}
		var out []string
		for _, a := range args {
			s, ok := a.(*parse.StringNode)
			if !ok {
				w.problem(a.Position(), "the argument of %s must be a string literal in double quotes, as in %s (%s)", name, form, operandMessage(a))
				return nil, false
			}
			out = append(out, s.Text)
		}
		return out, true
	}
	switch name {
	case fnFile, fnSecret:
		form := `{{ file "db/password" }}`
		if name == fnSecret {
			form = `{{ secret "DB-PASSWORD" }}`
		}
		if !first {
			w.problem(id.Pos, "%s must start its action (it reads a value, it takes none): write %s", name, form)
			return
		}
		lit, ok := literal(1, form)
		if !ok {
			return
		}
		w.reference(id.Pos, name, lit[0])
	case fnJSONQuote, fnYAMLQuote, fnBase64, fnBase64Decode, fnTrim, fnURLQuery:
		if first || len(args) > 0 {
			w.problem(id.Pos, "%s takes the value piped into it: write {{ file \"<file>\" | %s }}", name, name)
		}
	case fnDefault:
		if first {
			w.problem(id.Pos, "default takes the value piped into it: write {{ file \"<file>\" | default \"<text>\" }}")
			return
		}
		literal(1, `{{ file "<file>" | default "<text>" }}`)
	default:
		hint := funcsHint
		if near := closestFunc(name); near != "" {
			hint = "did you mean " + near + "? " + hint
		}
		w.problem(id.Pos, "unknown function %q; %s", name, hint)
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "one " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// operandMessage explains an operand that templates do not allow.
func operandMessage(n parse.Node) string {
	switch n := n.(type) {
	case *parse.DotNode:
		return "the dot {{ . }} is not available: templates read entries with {{ file \"<file>\" }} or {{ secret \"<name>\" }}"
	case *parse.FieldNode, *parse.ChainNode:
		return fmt.Sprintf("fields (%s) are not available: templates read entries with {{ file \"<file>\" }} or {{ secret \"<name>\" }}", truncate(n.String(), 40))
	case *parse.VariableNode:
		return fmt.Sprintf("variables (%s) are not available", truncate(n.String(), 40))
	case *parse.NumberNode, *parse.BoolNode, *parse.NilNode:
		return fmt.Sprintf("%s: only string literals are available", truncate(n.String(), 40))
	case *parse.PipeNode:
		return "parenthesized pipelines are not available: chain functions with |, as in {{ file \"<file>\" | trim | jsonQuote }}"
	case *parse.StringNode:
		return "a string literal can only be a whole action, as in {{ \"{{\" }}"
	}
	return fmt.Sprintf("%s is not available", truncate(n.String(), 40))
}

// closestFunc returns the function nearest to name, case-insensitively, when
// it is close enough to be a typo.
func closestFunc(name string) string {
	if f, ok := funcAliases[strings.ToLower(name)]; ok {
		return f
	}
	best, bestDist := "", 3
	for _, f := range TemplateFuncs {
		if d := levenshtein(strings.ToLower(name), strings.ToLower(f)); d < bestDist {
			best, bestDist = f, d
		}
	}
	return best
}

// levenshtein is textdist.Levenshtein, bounded: names longer than 64 bytes
// (which no function or entry name is) count as far from everything.
func levenshtein(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	return textdist.Levenshtein(a, b)
}

// funcAliases are names other template languages (Helm, Sprig, vault-k8s)
// give to the functions.
var funcAliases = map[string]string{
	"json": fnJSONQuote, "tojson": fnJSONQuote, "quote": fnJSONQuote, "squote": fnJSONQuote,
	"yaml": fnYAMLQuote, "toyaml": fnYAMLQuote,
	"b64enc": fnBase64, "base64encode": fnBase64, "b64dec": fnBase64Decode,
	"trimspace": fnTrim, "urlencode": fnURLQuery, "querystring": fnURLQuery,
	"getsecret": fnSecret, "readfile": fnFile,
}

// refKey is the key of a reference in CompiledTemplate.refs.
func refKey(fn, arg string) string { return fn + "\x00" + arg }

// reference resolves a literal reference and records it.
func (w *walker) reference(pos parse.Pos, fn, arg string) {
	key := refKey(fn, arg)
	if _, done := w.c.refs[key]; done {
		return
	}
	var (
		r   reference
		i   int
		err error
	)
	if fn == fnFile {
		r, i, err = resolveFile(w.entries, arg)
	} else {
		r, i, err = resolveSecret(w.entries, arg)
	}
	if err != nil {
		w.problem(pos, "%v", err)
		return
	}
	w.used[i] = true
	w.c.refs[key] = r
}

// resolveFile finds the entry that writes path: one of its files, or a file
// inside its directory (a key of a format=json entry, a version of a history
// entry).
func resolveFile(entries []Entry, p string) (reference, int, error) {
	for i, e := range entries {
		for _, f := range e.Files() {
			if f == p && !e.IsDir() {
				return reference{path: p, entry: e.String(), optional: e.Optional}, i, nil
			}
		}
		if !e.IsDir() {
			continue
		}
		if p == e.File {
			return reference{}, 0, fmt.Errorf("file %q is the directory of entry %q (%s); name one file in it, e.g. %s", p, e.String(), e.dirReason(), dirExample(e))
		}
		rest, inside := strings.CutPrefix(p, e.File+"/")
		if !inside {
			continue
		}
		missing, err := insideDir(e, rest)
		if err != nil {
			return reference{}, 0, fmt.Errorf("file %q: %v; e.g. %s", p, err, dirExample(e))
		}
		return reference{path: p, entry: e.String(), missing: missing, optional: e.Optional}, i, nil
	}
	var files []string
	for _, e := range entries {
		if e.IsDir() {
			files = append(files, strconv.Quote(e.File+"/..."))
			continue
		}
		for _, f := range e.Files() {
			files = append(files, strconv.Quote(f))
		}
	}
	sort.Strings(files)
	if len(files) > 8 {
		files = append(files[:8], "...")
	}
	return reference{}, 0, fmt.Errorf("no entry of %s writes the file %q; the files are %s (add an entry, with ;nofile if only templates read it)",
		"kvinject.dev/secrets", p, strings.Join(files, ", "))
}

// dirExample names a file inside a directory entry.
func dirExample(e Entry) string {
	switch {
	case e.History > 0 && e.Format == FormatJSON:
		return fmt.Sprintf("{{ file %q }} (the newest version's key <key>)", e.File+"/0/<key>")
	case e.History > 0 && e.Split:
		return fmt.Sprintf("{{ file %q }} (the newest version's key)", e.File+"/0"+SplitKeySuffix)
	case e.History > 0:
		return fmt.Sprintf("{{ file %q }} (the newest version)", e.File+"/0")
	}
	return fmt.Sprintf("{{ file %q }} (the JSON key <key>)", e.File+"/<key>")
}

// insideDir checks rest, a path inside the directory of e, against the files
// e can write there, and returns how to explain its absence at run time.
func insideDir(e Entry, rest string) (string, error) {
	key := rest
	missing := ""
	if e.History > 0 {
		idx, after, _ := strings.Cut(rest, "/")
		suffix := ""
		if e.Split {
			for _, s := range []string{SplitKeySuffix, SplitCertSuffix} {
				if strings.HasSuffix(idx, s) {
					idx, suffix = strings.TrimSuffix(idx, s), s
				}
			}
		}
		n, err := strconv.Atoi(idx)
		if err != nil || strconv.Itoa(n) != idx || n < 0 || n >= e.History {
			return "", fmt.Errorf("a history entry writes the versions 0 (the newest) to %d", e.History-1)
		}
		switch {
		case e.Split && suffix == "":
			return "", fmt.Errorf("a split entry writes <version>%s and <version>%s", SplitKeySuffix, SplitCertSuffix)
		case e.Format == FormatJSON && after == "":
			return "", fmt.Errorf("a format=json entry writes a directory per version; name a key in it")
		case e.Format != FormatJSON && after != "":
			return "", fmt.Errorf("version %d is a file, not a directory", n)
		}
		missing = fmt.Sprintf("the secret has fewer than %d enabled versions", n+1)
		if e.Format != FormatJSON {
			return missing, nil
		}
		key = after
	}
	if _, err := JSONFile("x", key); err != nil {
		return "", err
	}
	if missing != "" {
		return fmt.Sprintf("%s, or that version's JSON object has no key %q", missing, key), nil
	}
	return fmt.Sprintf("the JSON object has no key %q", key), nil
}

// resolveSecret finds the one entry that reads the secret named name and
// writes one file.
func resolveSecret(entries []Entry, name string) (reference, int, error) {
	if !IsObjectName(name) {
		return reference{}, 0, fmt.Errorf("secret %q: a Key Vault secret name is 1-127 letters, digits or hyphens", name)
	}
	found := -1
	var all []string
	for i, e := range entries {
		if e.Kind() != ObjectSecret || !strings.EqualFold(e.Name, name) {
			continue
		}
		if found < 0 {
			found = i
		}
		all = append(all, strconv.Quote(e.File))
	}
	switch {
	case found < 0:
		return reference{}, 0, fmt.Errorf("no entry of kvinject.dev/secrets reads the secret %q; add one, e.g. %s;nofile (then only templates read it), or name a file with {{ file \"<file>\" }}", name, strings.ToLower(name)+"="+name)
	case len(all) > 1:
		return reference{}, 0, fmt.Errorf("the secret %q is read by several entries (files %s); name the one to use with {{ file \"<file>\" }}", name, strings.Join(all, ", "))
	}
	e := entries[found]
	if e.IsDir() || e.Split {
		return reference{}, 0, fmt.Errorf("the secret %q is read by entry %q, which writes several files; name one with %s", name, e.String(), dirOrSplitExample(e))
	}
	return reference{path: e.File, entry: e.String(), optional: e.Optional}, found, nil
}

func dirOrSplitExample(e Entry) string {
	if e.IsDir() {
		return dirExample(e)
	}
	return fmt.Sprintf("{{ file %q }} or {{ file %q }}", e.File+SplitKeySuffix, e.File+SplitCertSuffix)
}
