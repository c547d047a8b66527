package docs_test

// These tests keep README.md and docs/*.md true to the code, without a cluster:
// what they compare is read from the code itself (the contract's constants, the
// install's RBAC files, the Makefile, the flag registrations, the tree, go.mod),
// so a change on either side that the other does not follow fails here, with a
// message that names the key, rule, link, target, flag or directory and where.

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	"github.com/kvinject/kvinject/internal/certs"
	"github.com/kvinject/kvinject/internal/hub"
	"github.com/kvinject/kvinject/internal/injector"
	"github.com/kvinject/kvinject/pkg/mapping"
)

// root is the repository, seen from this package's directory.
const root = ".."

// page is one Markdown file: its path relative to root and its lines.
type page struct {
	path  string
	lines []string
}

// pages returns README.md and docs/*.md: the documentation the tests check.
func pages(t *testing.T) []page {
	t.Helper()
	paths := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(more) == 0 {
		t.Fatal("no docs/*.md found")
	}
	for _, m := range more {
		rel, _ := filepath.Rel(root, m)
		paths = append(paths, filepath.ToSlash(rel))
	}
	var out []page
	for _, p := range paths {
		out = append(out, readPage(t, p))
	}
	return out
}

func readPage(t *testing.T, rel string) page {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return page{path: rel, lines: strings.Split(string(b), "\n")}
}

func pageByPath(t *testing.T, rel string) page {
	t.Helper()
	for _, p := range pages(t) {
		if p.path == rel {
			return p
		}
	}
	t.Fatalf("%s not found", rel)
	return page{}
}

// fenced reports, for each line, whether it is inside a fenced code block
// (the fences included).
func fenced(lines []string) []bool {
	in := make([]bool, len(lines))
	open := false
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			in[i] = true
			open = !open
			continue
		}
		in[i] = open
	}
	return in
}

// table returns the rows of the Markdown table whose header row's cells are
// header (compared case-insensitively), as cells without the outer pipes, and
// the line number (1-based) of each row.
func table(t *testing.T, p page, header ...string) (rows [][]string, lineNos []int) {
	t.Helper()
	want := strings.ToLower(strings.Join(header, "|"))
	for i := 0; i < len(p.lines); i++ {
		if strings.ToLower(strings.Join(cells(p.lines[i]), "|")) != want {
			continue
		}
		for j := i + 2; j < len(p.lines) && strings.HasPrefix(strings.TrimSpace(p.lines[j]), "|"); j++ {
			rows = append(rows, cells(p.lines[j]))
			lineNos = append(lineNos, j+1)
		}
		return rows, lineNos
	}
	t.Fatalf("%s: no table with the header | %s |", p.path, strings.Join(header, " | "))
	return nil, nil
}

// cells splits a Markdown table row into trimmed cells.
func cells(line string) []string {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "|") {
		return nil
	}
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	parts := strings.Split(line, "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

var codeSpanRE = regexp.MustCompile("`([^`]+)`")

// codeSpans returns the contents of the `code spans` of s.
func codeSpans(s string) []string {
	var out []string
	for _, m := range codeSpanRE.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

// --- (a) annotation and label keys ---

// contractKeys returns the values of the exported string constants of
// pkg/mapping that start with kvinject.dev/ (the contract), read from the source
// so that a new constant is seen without a change here, mapped to the constant's
// name.
func contractKeys(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, "pkg", "mapping", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	exprs := map[string]ast.Expr{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						exprs[name.Name] = vs.Values[i]
					}
				}
			}
		}
	}
	var eval func(e ast.Expr, depth int) (string, bool)
	eval = func(e ast.Expr, depth int) (string, bool) {
		if depth > 20 {
			return "", false
		}
		switch e := e.(type) {
		case *ast.BasicLit:
			if e.Kind != token.STRING {
				return "", false
			}
			s, err := strconv.Unquote(e.Value)
			return s, err == nil
		case *ast.Ident:
			if x, ok := exprs[e.Name]; ok {
				return eval(x, depth+1)
			}
		case *ast.ParenExpr:
			return eval(e.X, depth+1)
		case *ast.BinaryExpr:
			if e.Op == token.ADD {
				a, ok1 := eval(e.X, depth+1)
				b, ok2 := eval(e.Y, depth+1)
				return a + b, ok1 && ok2
			}
		}
		return "", false
	}
	keys := map[string]string{}
	for name, e := range exprs {
		if !ast.IsExported(name) {
			continue
		}
		if v, ok := eval(e, 0); ok && strings.HasPrefix(v, mapping.Prefix) && len(v) > len(mapping.Prefix) {
			// A prefix followed by a name (kvinject.dev/template.<file>) is
			// documented as the prefix without its dot.
			keys[strings.TrimSuffix(v, ".")] = "mapping." + name
		}
	}
	// The reading of the source must find at least what the compiled package says.
	for _, k := range append(mapping.PodAnnotationKeys(), mapping.LabelInject, mapping.AnnotationAllowedVaults, mapping.AnnotationAllowedIdentities) {
		if _, ok := keys[k]; !ok {
			t.Fatalf("reading pkg/mapping's constants missed %s: fix contractKeys in docs/docs_test.go", k)
		}
	}
	return keys
}

var docKeyRE = regexp.MustCompile(`kvinject\.dev/[a-z0-9][a-z0-9-]*`)

// TestKeysInDocsAreContract: every kvinject.dev/ key the docs name is a key of
// the contract (no key that kvinject ignores is documented as if it worked).
func TestKeysInDocsAreContract(t *testing.T) {
	keys := contractKeys(t)
	for _, p := range append(pages(t), readPage(t, "SECURITY.md"), readPage(t, "charts/kvinject/README.md")) {
		for i, l := range p.lines {
			for _, k := range docKeyRE.FindAllString(l, -1) {
				k = strings.TrimRight(k, "-")
				if _, ok := keys[k]; !ok {
					t.Errorf("%s:%d names %s, which is not a key of the contract (the kvinject.dev/ constants of pkg/mapping): fix the page, or add the key to pkg/mapping", p.path, i+1, k)
				}
			}
		}
	}
}

// TestContractKeysDocumented: every key of the contract is in the table of
// docs/contract.md, and every pod annotation is in the README's table.
func TestContractKeysDocumented(t *testing.T) {
	keys := contractKeys(t)
	documented := func(p page, header ...string) map[string]bool {
		rows, _ := table(t, p, header...)
		in := map[string]bool{}
		for _, r := range rows {
			for _, k := range docKeyRE.FindAllString(r[0], -1) {
				in[k] = true
			}
		}
		return in
	}
	contract := documented(pageByPath(t, "docs/contract.md"), "key", "where", "meaning", "default")
	for k, name := range keys {
		if !contract[k] {
			t.Errorf("docs/contract.md: the table | key | where | meaning | default | has no row for %s (%s): document it", k, name)
		}
	}
	readme := documented(pageByPath(t, "README.md"), "annotation", "meaning", "default")
	for _, k := range mapping.PodAnnotationKeys() {
		// Written by kvinject, not by users: the contract lists them.
		if k != mapping.AnnotationStatus && k != mapping.AnnotationRestartedAt && !readme[k] {
			t.Errorf("README.md: the contract table | annotation | meaning | default | has no row for the pod annotation %s", k)
		}
	}
}

// --- (b) RBAC ---

// grant is one verb on one resource (or one named object) in one scope, as
// installed with one part of the install.
type grant struct {
	with, scope, group, resource, name, verb string
}

func (g grant) String() string {
	r := g.resource
	if g.group != "" {
		r += "." + g.group
	}
	if g.name != "" {
		r += "/" + g.name
	}
	return fmt.Sprintf("[%s] %s: %s %s", g.with, g.scope, g.verb, r)
}

// installedWith names the parts of the install in the docs' RBAC table.
var installedWith = map[string]string{
	"base":          "every install",
	"builtin-certs": "built-in certificates",
	"cert-manager":  "cert-manager",
}

const (
	webhookNamespace      = "kvinject-system"
	webhookServiceAccount = "kvinject-webhook"
)

// docsRBAC reads the RBAC table of docs/install.md.
func docsRBAC(t *testing.T) map[grant]string { return docsRBACOf(t, "docs/install.md") }

// docsRBACOf reads the RBAC table (| installed with | scope | resource | names
// | verbs |) of a page.
func docsRBACOf(t *testing.T, path string) map[grant]string {
	t.Helper()
	p := pageByPath(t, path)
	rows, lineNos := table(t, p, "installed with", "scope", "resource", "names", "verbs")
	out := map[grant]string{}
	for i, r := range rows {
		where := fmt.Sprintf("%s:%d", path, lineNos[i])
		if len(r) != 5 {
			t.Errorf("%s: want 5 cells, got %d", where, len(r))
			continue
		}
		scope := r[1]
		if scope != "cluster" {
			ns := codeSpans(scope)
			if !strings.HasPrefix(scope, "namespace ") || len(ns) != 1 {
				t.Errorf("%s: scope %q is neither cluster nor namespace `<name>`", where, scope)
				continue
			}
			scope = "namespace " + ns[0]
		}
		res := codeSpans(r[2])
		if len(res) != 1 {
			t.Errorf("%s: want one `resource[.group]` in %q", where, r[2])
			continue
		}
		resource, group, _ := strings.Cut(res[0], ".")
		names := []string{""}
		if r[3] != "all" {
			names = codeSpans(r[3])
		}
		for _, name := range names {
			for _, verb := range codeSpans(r[4]) {
				out[grant{r[0], scope, group, resource, name, verb}] = where
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: the RBAC table is empty", path)
	}
	return out
}

// rbacDocs are the RBAC objects of one YAML stream.
type rbacDocs struct {
	roles    []rbacv1.ClusterRole // Roles too, with Namespace set
	bindings []rbacv1.ClusterRoleBinding
}

// parseRBAC decodes the Roles, ClusterRoles and their bindings of a YAML
// stream; other kinds are refused, as an RBAC file should hold nothing else.
func parseRBAC(t *testing.T, where string, data []byte) rbacDocs {
	t.Helper()
	var out rbacDocs
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s: document %d: %v", where, i+1, err)
		}
		switch tm.Kind {
		case "ClusterRole", "Role":
			var r rbacv1.ClusterRole // same fields as Role
			if err := yaml.UnmarshalStrict([]byte(doc), &r); err != nil {
				t.Fatalf("%s: document %d (%s): %v", where, i+1, tm.Kind, err)
			}
			if tm.Kind == "Role" && r.Namespace == "" {
				r.Namespace = webhookNamespace // the kustomization's namespace
			}
			if tm.Kind == "ClusterRole" {
				r.Namespace = ""
			}
			r.Kind = tm.Kind
			out.roles = append(out.roles, r)
		case "ClusterRoleBinding", "RoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := yaml.UnmarshalStrict([]byte(doc), &b); err != nil {
				t.Fatalf("%s: document %d (%s): %v", where, i+1, tm.Kind, err)
			}
			if tm.Kind == "RoleBinding" && b.Namespace == "" {
				b.Namespace = webhookNamespace
			}
			b.Kind = tm.Kind
			out.bindings = append(out.bindings, b)
		default:
			t.Fatalf("%s: document %d is a %q: an RBAC file should hold only Roles, ClusterRoles and their bindings", where, i+1, tm.Kind)
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// grants expands the roles into grants, after checking that each role is
// bound to the webhook's ServiceAccount.
func (d rbacDocs) grants(t *testing.T, where, with string) map[grant]string {
	t.Helper()
	return d.grantsTo(t, where, with, webhookServiceAccount)
}

// grantsTo expands the roles into grants, after checking that each role is
// bound to the ServiceAccount sa of the kvinject namespace.
func (d rbacDocs) grantsTo(t *testing.T, where, with, sa string) map[grant]string {
	t.Helper()
	out := map[grant]string{}
	for _, r := range d.roles {
		bound := false
		for _, b := range d.bindings {
			sameScope := (r.Kind == "ClusterRole" && b.Kind == "ClusterRoleBinding") || (r.Kind == "Role" && b.Kind == "RoleBinding" && b.Namespace == r.Namespace)
			if !sameScope || b.RoleRef.Kind != r.Kind || b.RoleRef.Name != r.Name {
				continue
			}
			for _, s := range b.Subjects {
				if s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == webhookNamespace {
					bound = true
				}
			}
		}
		if !bound {
			t.Errorf("%s: %s %q is not bound to the ServiceAccount %s/%s", where, r.Kind, r.Name, webhookNamespace, sa)
		}
		scope := "cluster"
		if r.Kind == "Role" {
			scope = "namespace " + r.Namespace
		}
		for _, rule := range r.Rules {
			if len(rule.NonResourceURLs) > 0 {
				t.Errorf("%s: %s %q grants non-resource URLs %v, which the docs' RBAC table cannot show", where, r.Kind, r.Name, rule.NonResourceURLs)
			}
			names := rule.ResourceNames
			if len(names) == 0 {
				names = []string{""}
			}
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					for _, n := range names {
						for _, v := range rule.Verbs {
							out[grant{with, scope, g, res, n, v}] = fmt.Sprintf("%s (%s %s)", where, r.Kind, r.Name)
						}
					}
				}
			}
		}
	}
	return out
}

// compareGrants reports the grants that one side has and the other lacks.
func compareGrants(t *testing.T, docs, installed map[grant]string, installedWhat string) {
	t.Helper()
	compareGrantsOf(t, "docs/install.md", docs, installed, installedWhat)
}

// compareGrantsOf is compareGrants for the RBAC table of the page docsPath.
func compareGrantsOf(t *testing.T, docsPath string, docs, installed map[grant]string, installedWhat string) {
	t.Helper()
	var missing, extra []string
	for g, where := range installed {
		if _, ok := docs[g]; !ok {
			missing = append(missing, fmt.Sprintf("%s, granted by %s", g, where))
		}
	}
	for g, where := range docs {
		if _, ok := installed[g]; !ok {
			extra = append(extra, fmt.Sprintf("%s, listed at %s", g, where))
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	for _, m := range missing {
		t.Errorf("%s's RBAC table lacks %s", docsPath, m)
	}
	for _, e := range extra {
		t.Errorf("%s does not grant %s", installedWhat, e)
	}
}

// TestRBACTableMatchesKustomize: the docs' RBAC table equals the rules of
// manifests/base/rbac.yaml and manifests/components/*/rbac.yaml.
func TestRBACTableMatchesKustomize(t *testing.T) {
	installed := map[grant]string{}
	files := []string{filepath.Join("manifests", "base", "rbac.yaml")}
	comps, err := filepath.Glob(filepath.Join(root, "manifests", "components", "*", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range comps {
		rel, _ := filepath.Rel(root, c)
		files = append(files, rel)
	}
	for _, f := range files {
		part := filepath.Base(filepath.Dir(f))
		with, ok := installedWith[part]
		if !ok {
			t.Errorf("%s: the docs test does not know how docs/install.md names the component %q: add it to installedWith", f, part)
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		for g, where := range parseRBAC(t, f, data).grants(t, f, with) {
			installed[g] = where
		}
	}
	compareGrants(t, docsRBAC(t), installed, "the kustomize install (manifests/base, manifests/components)")
}

// chartSubstitutions render the template expressions of the chart's rbac.yaml
// for release "kvinject" in namespace kvinject-system, which gives the
// kustomize install's names (see charts/kvinject/templates/_helpers.tpl).
var chartSubstitutions = map[string]string{
	`{{ $name }}`:              "kvinject-webhook",
	`{{ .Release.Namespace }}`: webhookNamespace,
	`{{ include "kvinject.webhookConfigName" . | quote }}`: `"kvinject"`,
	`{{ include "kvinject.certSecretName" . | quote }}`:    `"kvinject-webhook-cert"`,
}

// TestRBACTableMatchesChart: the same for the Helm chart's templates/rbac.yaml,
// read without Helm: whole-line template directives are dropped (the builtin
// certificate mode's condition decides the part), and the few inline
// expressions are replaced with their values for release "kvinject". Rendering
// with Helm itself, and comparing with the kustomize install, is done by
// test/install.
func TestRBACTableMatchesChart(t *testing.T) {
	const f = "charts/kvinject/templates/rbac.yaml"
	data, err := os.ReadFile(filepath.Join(root, f))
	if err != nil {
		t.Fatal(err)
	}
	var always, builtin strings.Builder
	cur := &always
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == `{{- if eq .Values.certificates.mode "builtin" }}`:
			cur = &builtin
			continue
		case trimmed == `{{- end }}`:
			cur = &always
			continue
		case strings.HasPrefix(trimmed, "{{- $name :="),
			strings.HasPrefix(trimmed, `{{- include "kvinject.labels"`):
			continue
		case strings.HasPrefix(trimmed, "{{"):
			t.Fatalf("%s:%d: the docs test cannot read the directive %q: teach TestRBACTableMatchesChart about it", f, i+1, trimmed)
		}
		for from, to := range chartSubstitutions {
			line = strings.ReplaceAll(line, from, to)
		}
		if strings.Contains(line, "{{") {
			t.Fatalf("%s:%d: the docs test cannot read the expression in %q: add it to chartSubstitutions", f, i+1, strings.TrimSpace(line))
		}
		cur.WriteString(line + "\n")
	}
	installed := map[grant]string{}
	for part, text := range map[string]string{"base": always.String(), "builtin-certs": builtin.String()} {
		for g, where := range parseRBAC(t, f, []byte(text)).grants(t, f, installedWith[part]) {
			installed[g] = where
		}
	}
	compareGrants(t, docsRBAC(t), installed, "the Helm chart ("+f+")")
}

// hubServiceAccount is the version hub's ServiceAccount.
const hubServiceAccount = "kvinject-hub"

// TestHubRBACTable: docs/hub.md's RBAC table equals the rules of the hub's
// kustomize component and of the chart's hub-rbac.yaml (rows "the hub"), and
// with Key Vault events those of the hub-events component and the chart's
// hub-events-rbac.yaml (rows "the hub with events"), all bound to the hub's
// ServiceAccount.
func TestHubRBACTable(t *testing.T) {
	const withEvents = "the hub with events"
	hubRows, eventRows := map[grant]string{}, map[grant]string{}
	for g, where := range docsRBACOf(t, "docs/hub.md") {
		if g.with == withEvents {
			eventRows[g] = where
		} else {
			hubRows[g] = where
		}
	}
	for _, c := range []struct {
		kustomize, chart, with string
		docs                   map[grant]string
	}{
		{"manifests/components/hub/hub-rbac.yaml", "charts/kvinject/templates/hub-rbac.yaml", "the hub", hubRows},
		{"manifests/components/hub-events/events-rbac.yaml", "charts/kvinject/templates/hub-events-rbac.yaml", withEvents, eventRows},
	} {
		data, err := os.ReadFile(filepath.Join(root, c.kustomize))
		if err != nil {
			t.Fatal(err)
		}
		compareGrantsOf(t, "docs/hub.md", c.docs, parseRBAC(t, c.kustomize, data).grantsTo(t, c.kustomize, c.with, hubServiceAccount), "the kustomize component ("+c.kustomize+")")
		compareGrantsOf(t, "docs/hub.md", c.docs, parseRBAC(t, c.chart, hubChartRBAC(t, c.chart)).grantsTo(t, c.chart, c.with, hubServiceAccount), "the Helm chart ("+c.chart+")")
	}
}

// hubChartRBAC renders one of the chart's hub RBAC templates for release
// "kvinject" in the webhook's namespace, reading the few directives they use.
func hubChartRBAC(t *testing.T, cf string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, cf))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "{{- if .Values.hub.enabled }}", trimmed == "{{- if and .Values.hub.enabled .Values.hub.events.queues }}", trimmed == "{{- end }}",
			strings.HasPrefix(trimmed, "{{- $name :="), strings.HasPrefix(trimmed, `{{- include "kvinject.hubLabels"`):
			continue
		case strings.HasPrefix(trimmed, "{{"):
			t.Fatalf("%s:%d: the docs test cannot read the directive %q: teach hubChartRBAC about it", cf, i+1, trimmed)
		}
		line = strings.ReplaceAll(line, "{{ $name }}", hubServiceAccount)
		line = strings.ReplaceAll(line, `{{ include "kvinject.hubName" . }}`, hubServiceAccount)
		line = strings.ReplaceAll(line, "{{ .Release.Namespace }}", webhookNamespace)
		if strings.Contains(line, "{{") {
			t.Fatalf("%s:%d: the docs test cannot read the expression in %q", cf, i+1, strings.TrimSpace(line))
		}
		b.WriteString(line + "\n")
	}
	return []byte(b.String())
}

// TestHubFlags: docs/hub.md's flag table lists exactly the flags of
// kvinject-hub: hub.Flags.Bind's and --kubeconfig.
func TestHubFlags(t *testing.T) {
	const mainFile = "cmd/hub/main.go"
	own, delegated := registeredFlags(t, mainFile, "parseFlags", "fs")
	if want := []string{"config.RegisterFlags"}; !slices.Equal(delegated, want) {
		t.Fatalf("%s registers flags through %v; the docs test knows %v: teach TestHubFlags", mainFile, delegated, want)
	}
	fs := flag.NewFlagSet("hub", flag.ContinueOnError)
	var f hub.Flags
	f.Bind(fs)
	config.RegisterFlags(fs)
	code := flagNames(fs)
	for n := range own {
		code[n] = true
	}
	docs := docsFlags(t, pageByPath(t, "docs/hub.md"), "hub flag", "default", "meaning")
	compareFlags(t, "docs/hub.md (table | hub flag |)", docs, code, mainFile+" (hub.Flags.Bind, config.RegisterFlags)")
}

// --- (c) links ---

var linkRE = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)\)`)

// anchors returns the GitHub anchors of a Markdown file's headings.
func anchors(p page) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	in := fenced(p.lines)
	for i, l := range p.lines {
		if in[i] || !strings.HasPrefix(l, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(l, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			out[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

// TestLinks: every relative link of the docs points to an existing file and,
// for a Markdown file, to an existing heading.
func TestLinks(t *testing.T) {
	all := append(pages(t), readPage(t, "SECURITY.md"), readPage(t, "charts/kvinject/README.md"))
	for _, p := range all {
		in := fenced(p.lines)
		for i, l := range p.lines {
			if in[i] {
				continue
			}
			for _, m := range linkRE.FindAllStringSubmatch(l, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				where := fmt.Sprintf("%s:%d", p.path, i+1)
				file, anchor, _ := strings.Cut(target, "#")
				rel := p.path
				if file != "" {
					rel = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(p.path), file)))
					if strings.HasPrefix(rel, "../") {
						t.Errorf("%s: the link %s leaves the repository", where, target)
						continue
					}
					if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
						t.Errorf("%s: the link %s points to %s, which does not exist", where, target, rel)
						continue
					}
				}
				if anchor == "" || !strings.HasSuffix(rel, ".md") {
					continue
				}
				if !anchors(readPage(t, rel))[anchor] {
					t.Errorf("%s: the link %s points to #%s, which is not a heading of %s", where, target, anchor, rel)
				}
			}
		}
	}
}

// --- (d) make targets and flags ---

// makeTargets returns the Makefile's targets.
func makeTargets(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([a-z0-9][a-z0-9_-]*)\s*:([^=]|$)`).FindAllStringSubmatch(string(data), -1) {
		out[m[1]] = true
	}
	if len(out) == 0 {
		t.Fatal("no targets found in the Makefile")
	}
	return out
}

var (
	makeInlineRE = regexp.MustCompile("`make ([a-z0-9][a-z0-9_-]*)")
	makeLineRE   = regexp.MustCompile(`^\s*make ([a-z0-9][a-z0-9_-]*)`)
)

// TestMakeTargets: every make target the docs name exists, and every target of
// the Makefile is in docs/development.md's table.
func TestMakeTargets(t *testing.T) {
	targets := makeTargets(t)
	for _, p := range append(pages(t), readPage(t, "charts/kvinject/README.md")) {
		in := fenced(p.lines)
		for i, l := range p.lines {
			var named []string
			for _, m := range makeInlineRE.FindAllStringSubmatch(l, -1) {
				named = append(named, m[1])
			}
			if m := makeLineRE.FindStringSubmatch(l); in[i] && m != nil {
				named = append(named, m[1])
			}
			for _, n := range named {
				if !targets[n] {
					t.Errorf("%s:%d names `make %s`, but the Makefile has no target %q", p.path, i+1, n, n)
				}
			}
		}
	}
	rows, _ := table(t, pageByPath(t, "docs/development.md"), "target", "what")
	listed := map[string]bool{}
	for _, r := range rows {
		for _, c := range codeSpans(r[0]) {
			listed[strings.TrimPrefix(c, "make ")] = true
		}
	}
	for target := range targets {
		if !listed[target] {
			t.Errorf("docs/development.md: the table | target | what | has no row for the Makefile's target %q", target)
		}
	}
}

// docsFlags returns the flags in the first cell of a table's rows, without dashes.
func docsFlags(t *testing.T, p page, header ...string) map[string]int {
	t.Helper()
	rows, lineNos := table(t, p, header...)
	out := map[string]int{}
	for i, r := range rows {
		for _, c := range codeSpans(r[0]) {
			if !strings.HasPrefix(c, "-") {
				t.Errorf("%s:%d: %q is not a flag", p.path, lineNos[i], c)
				continue
			}
			out[strings.TrimLeft(c, "-")] = lineNos[i]
		}
	}
	return out
}

func flagNames(fs *flag.FlagSet) map[string]bool {
	out := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { out[f.Name] = true })
	return out
}

// compareFlags reports flags that the code defines and the docs lack, and back.
func compareFlags(t *testing.T, where string, docs map[string]int, code map[string]bool, codeWhat string) {
	t.Helper()
	var names []string
	for n := range code {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, ok := docs[n]; !ok {
			t.Errorf("%s lacks --%s, which %s defines", where, n, codeWhat)
		}
	}
	names = names[:0]
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !code[n] {
			t.Errorf("%s:%d lists --%s, which %s does not define", strings.SplitN(where, " ", 2)[0], docs[n], n, codeWhat)
		}
	}
}

// registeredFlags returns the flag names a Go function registers on its flag
// set with calls such as fs.StringVar(&v, "name", ...) or fs.Func("name", ...):
// the first string literal argument of each call on fsName; and the number of
// calls to BindFlags and RegisterFlags (registrations done elsewhere).
func registeredFlags(t *testing.T, file, funcName, fsName string) (map[string]bool, []string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(root, file), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	var delegated []string
	found := false
	for _, decl := range f.Decls {
		fd, ok := decl.(*ast.FuncDecl)
		if !ok || fd.Name.Name != funcName {
			continue
		}
		found = true
		ast.Inspect(fd, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if sel.Sel.Name == "BindFlags" || sel.Sel.Name == "RegisterFlags" {
				delegated = append(delegated, exprString(sel.X)+"."+sel.Sel.Name)
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != fsName {
				return true
			}
			for _, a := range call.Args {
				if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, _ := strconv.Unquote(lit.Value)
					names[s] = true
					break
				}
			}
			return true
		})
	}
	if !found {
		t.Fatalf("%s has no function %s", file, funcName)
	}
	sort.Strings(delegated)
	return names, delegated
}

// exprString writes a chain of identifiers and selectors (cmd.iopts).
func exprString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return exprString(e.X) + "." + e.Sel.Name
	}
	return fmt.Sprintf("%T", e)
}

// TestWebhookFlags: the two flag tables of docs/contract.md list exactly the
// flags kvinject-webhook defines, and the injection table exactly those of
// injector.Options.BindFlags (names only: defaults change with the build).
func TestWebhookFlags(t *testing.T) {
	p := pageByPath(t, "docs/contract.md")
	injection := docsFlags(t, p, "injection flag", "default", "meaning")
	server := docsFlags(t, p, "server flag", "default", "meaning")

	fs := flag.NewFlagSet("injection", flag.ContinueOnError)
	var opts injector.Options
	opts.BindFlags(fs)
	injectionCode := flagNames(fs)
	compareFlags(t, "docs/contract.md (table | injection flag |)", injection, injectionCode, "injector.Options.BindFlags")

	// The server's flags: those cmd/webhook's run function registers itself, and
	// those of the registrations it calls.
	const mainFile = "cmd/webhook/main.go"
	own, delegated := registeredFlags(t, mainFile, "run", "fs")
	known := []string{"certOpts.BindFlags", "config.RegisterFlags", "opts.BindFlags", "zapOpts.BindFlags"}
	if !slices.Equal(delegated, known) {
		t.Fatalf("%s's run registers flags through %v; the docs test knows %v: teach TestWebhookFlags the new registration and document its flags in docs/contract.md", mainFile, delegated, known)
	}
	sfs := flag.NewFlagSet("server", flag.ContinueOnError)
	var certOpts certs.Options
	certOpts.BindFlags(sfs)
	config.RegisterFlags(sfs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(sfs)
	serverCode := flagNames(sfs)
	for n := range own {
		serverCode[n] = true
	}
	for n := range injectionCode {
		if serverCode[n] {
			t.Errorf("--%s is registered both by injector.Options and by the server", n)
		}
	}
	compareFlags(t, "docs/contract.md (table | server flag |)", server, serverCode, mainFile+" (with certs.Options, zap.Options and config.RegisterFlags)")
}

// TestInjectFlags: docs/offline-inject.md lists exactly the flags that
// `kvinject-webhook inject` adds to the injection flags.
func TestInjectFlags(t *testing.T) {
	const file = "internal/offline/main.go"
	own, delegated := registeredFlags(t, file, "parse", "fs")
	if want := []string{"cmd.iopts.BindFlags"}; !slices.Equal(delegated, want) {
		t.Fatalf("%s's parse registers flags through %v; the docs test knows %v: teach TestInjectFlags", file, delegated, want)
	}
	docs := docsFlags(t, pageByPath(t, "docs/offline-inject.md"), "flag", "default", "meaning")
	compareFlags(t, "docs/offline-inject.md (table | flag | default | meaning |)", docs, own, file)
}

// --- the tree and the dependencies ---

// TestTree: docs/development.md's tree lists every directory with files under
// cmd/, pkg/, internal/, test/ and hack/ (testdata aside), and each entry exists.
func TestTree(t *testing.T) {
	p := pageByPath(t, "docs/development.md")
	start := slices.Index(p.lines, "## Where things are")
	if start < 0 {
		t.Fatal("docs/development.md has no heading ## Where things are")
	}
	listed := map[string]int{}
	in := fenced(p.lines)
	for i := start; i < len(p.lines); i++ {
		if !in[i] {
			if len(listed) > 0 {
				break
			}
			continue
		}
		f := strings.Fields(p.lines[i])
		if len(f) == 0 || strings.HasPrefix(f[0], "```") {
			continue
		}
		listed[strings.TrimSuffix(f[0], "/")] = i + 1
		if _, err := os.Stat(filepath.Join(root, f[0])); err != nil {
			t.Errorf("docs/development.md:%d lists %s, which does not exist", i+1, f[0])
		}
	}
	for _, top := range []string{"cmd", "pkg", "internal", "test", "hack"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			if d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			entries, err := os.ReadDir(path)
			if err != nil {
				return err
			}
			hasFile := slices.ContainsFunc(entries, func(e os.DirEntry) bool { return !e.IsDir() })
			rel, _ := filepath.Rel(root, path)
			rel = filepath.ToSlash(rel)
			if _, ok := listed[rel]; hasFile && !ok && rel != "hack" {
				t.Errorf("docs/development.md's tree (## Where things are) does not list %s: add it with its role", rel)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestDependencies: docs/development.md's dependencies table names every
// direct requirement of go.mod.
func TestDependencies(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var direct []string
	inBlock := false
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "require (":
			inBlock = true
			continue
		case l == ")":
			inBlock = false
			continue
		case strings.HasPrefix(l, "require "):
			l = strings.TrimPrefix(l, "require ")
		case !inBlock:
			continue
		}
		if f := strings.Fields(l); len(f) >= 2 && !strings.Contains(l, "// indirect") {
			direct = append(direct, f[0])
		}
	}
	rows, _ := table(t, pageByPath(t, "docs/development.md"), "module", "why")
	var named []string
	for _, r := range rows {
		named = append(named, codeSpans(r[0])...)
		named = append(named, strings.Fields(strings.NewReplacer("`", " ", ",", " ").Replace(r[0]))...)
	}
	for _, mod := range direct {
		last := mod[strings.LastIndex(mod, "/")+1:]
		if strings.HasPrefix(last, "v") && len(mod) > len(last)+1 { // a major version suffix: name the path before it
			prev := strings.TrimSuffix(mod, "/"+last)
			if _, err := strconv.Atoi(strings.TrimPrefix(last, "v")); err == nil {
				last = prev[strings.LastIndex(prev, "/")+1:] + "/" + last
			}
		}
		if !slices.ContainsFunc(named, func(n string) bool {
			return n == mod || n == last || n == ".../"+last || strings.HasPrefix(n, mod+" ")
		}) {
			t.Errorf("docs/development.md: the table | module | why | does not name %s, a direct requirement of go.mod: say why it is needed", mod)
		}
	}
}

// hubMetricRE finds the names of the hub's Prometheus metrics in Go source.
var hubMetricRE = regexp.MustCompile(`Name:\s*"(kvinject_(?:hub|restarter)_[a-z_]+)"`)

// TestHubMetricsTables: the metrics tables of docs/hub.md and docs/events.md
// together list exactly the metrics the hub's packages define.
func TestHubMetricsTables(t *testing.T) {
	docs := map[string]string{}
	for _, path := range []string{"docs/hub.md", "docs/events.md", "docs/actions.md"} {
		rows, lineNos := table(t, pageByPath(t, path), "metric", "what")
		for i, r := range rows {
			spans := codeSpans(r[0])
			if len(spans) != 1 {
				t.Errorf("%s:%d: want one `metric{labels}` in %q", path, lineNos[i], r[0])
				continue
			}
			name, _, _ := strings.Cut(spans[0], "{")
			docs[name] = fmt.Sprintf("%s:%d", path, lineNos[i])
		}
	}
	code := map[string]string{}
	for _, dir := range []string{"internal/hub", "internal/hub/vaults", "internal/hub/events", "internal/restarter"} {
		files, err := filepath.Glob(filepath.Join(root, dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range hubMetricRE.FindAllStringSubmatch(string(data), -1) {
				code[m[1]], _ = filepath.Rel(root, f)
			}
		}
	}
	if len(code) == 0 {
		t.Fatal("no hub metric found in the code: the test is not looking at the hub")
	}
	for name, where := range code {
		if docs[name] == "" {
			t.Errorf("%s defines %s, which no metrics table of docs/hub.md, docs/events.md or docs/actions.md lists", where, name)
		}
	}
	for name, where := range docs {
		if code[name] == "" {
			t.Errorf("%s lists %s, which the hub does not define", where, name)
		}
	}
}

// TestRestarterFlags: docs/actions.md's flag table lists exactly the flags of
// cmd/restarter.
func TestRestarterFlags(t *testing.T) {
	const mainFile = "cmd/restarter/main.go"
	own, delegated := registeredFlags(t, mainFile, "parseFlags", "fs")
	if want := []string{"config.RegisterFlags"}; !slices.Equal(delegated, want) {
		t.Fatalf("%s registers flags through %v; the docs test knows %v: teach TestRestarterFlags", mainFile, delegated, want)
	}
	fs := flag.NewFlagSet("restarter", flag.ContinueOnError)
	config.RegisterFlags(fs)
	code := flagNames(fs)
	for n := range own {
		code[n] = true
	}
	docs := docsFlags(t, pageByPath(t, "docs/actions.md"), "restarter flag", "default", "meaning")
	compareFlags(t, "docs/actions.md (table | restarter flag |)", docs, code, mainFile+" (parseFlags, config.RegisterFlags)")
}

// TestRestarterRBACTable: docs/actions.md's RBAC table lists exactly the
// rules of the restarter's ClusterRole (granted per opted-in namespace) and of
// its Role in its own namespace, in the kustomize component and in the Helm
// chart (read for release "kvinject", whose names are the component's).
func TestRestarterRBACTable(t *testing.T) {
	const file, chart = "manifests/components/restarter/restarter-rbac.yaml", "charts/kvinject/templates/restarter-rbac.yaml"
	data, err := os.ReadFile(filepath.Join(root, file))
	if err != nil {
		t.Fatal(err)
	}
	docs := docsRBACOf(t, "docs/actions.md")
	for f, data := range map[string][]byte{file: data, chart: restarterChartRBAC(t, chart)} {
		code := map[grant]string{}
		for _, r := range parseRBAC(t, f, data).roles {
			with, scope := "the restarter", "namespace "+r.Namespace
			if r.Namespace == "" {
				with, scope = "the ClusterRole, per namespace", "namespace <opted in>"
			}
			for _, rule := range r.Rules {
				names := rule.ResourceNames
				if len(names) == 0 {
					names = []string{""}
				}
				for _, g := range rule.APIGroups {
					for _, res := range rule.Resources {
						for _, n := range names {
							for _, v := range rule.Verbs {
								code[grant{with, scope, g, res, n, v}] = f + " (" + r.Name + ")"
							}
						}
					}
				}
			}
		}
		for g, where := range code {
			if docs[g] == "" {
				t.Errorf("%s grants %+v, which docs/actions.md's RBAC table does not list", where, g)
			}
		}
		for g, where := range docs {
			if code[g] == "" {
				t.Errorf("%s lists %+v, which %s does not grant", where, g, f)
			}
		}
	}
}

// restarterChartRBAC reads the chart's restarter RBAC template for release
// "kvinject" in the webhook's namespace: the names of the kustomize component.
func restarterChartRBAC(t *testing.T, cf string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, cf))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "{{- if .Values.restarter.enabled }}", trimmed == "{{- end }}",
			strings.HasPrefix(trimmed, "{{- $name :="), strings.HasPrefix(trimmed, `{{- include "kvinject.restarterLabels"`):
			continue
		case strings.HasPrefix(trimmed, "{{"):
			t.Fatalf("%s:%d: the docs test cannot read the directive %q: teach restarterChartRBAC about it", cf, i+1, trimmed)
		}
		line = strings.ReplaceAll(line, "{{ $name }}", "kvinject-restarter")
		line = strings.ReplaceAll(line, "{{ .Release.Namespace }}", webhookNamespace)
		if strings.Contains(line, "{{") {
			t.Fatalf("%s:%d: the docs test cannot read the expression in %q", cf, i+1, strings.TrimSpace(line))
		}
		b.WriteString(line + "\n")
	}
	return []byte(b.String())
}
