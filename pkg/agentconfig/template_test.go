package agentconfig

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// templateEntries is the mapping the template tests read.
const templateEntries = "db/password=DB-PASSWORD;nofile, db/user=DB-USER, cfg=secret:app-config;format=json, " +
	"hist=secret:rotating;history=2, tls=secret:web-cert;format=pem;split, ca.crt=cert:web-cert, dup1=SHARED, dup2=SHARED"

func mustEntries(t *testing.T, s string) []Entry {
	t.Helper()
	es, err := ParseEntries(s)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func TestCheckTemplates(t *testing.T) {
	entries := mustEntries(t, templateEntries)
	// Every accepted form also reads db/password, the ;nofile entry.
	const pw = `{{ file "db/password" }}`
	tests := []struct {
		name, file, text string
		want             string // "" accepted; else a problem containing this
	}{
		{name: "file", text: pw},
		{name: "secret case-insensitive", text: `{{ secret "db-password" }}`},
		{name: "pipeline", text: pw + `{{ file "db/user" | trim | jsonQuote }}{{ secret "DB-USER" | yamlQuote }}{{ file "db/user" | base64 | base64Decode | urlQuery | default "x" }}`},
		{name: "json key", text: pw + `{{ file "cfg/host" }}`},
		{name: "history version", text: pw + `{{ file "hist/1" }}`},
		{name: "split part", text: pw + `{{ file "tls.key" }}{{ file "tls.crt" }}{{ file "ca.crt" }}`},
		{name: "comment and literal braces", text: pw + `{{/* a comment */}}{{ "{{" }}`},
		{name: "trim markers", text: "a\n  {{- " + pw[2:len(pw)-2] + " -}}\n"},

		{name: "syntax error line", text: "line one\n{{ file \"db/password\" ", want: `line 2, column 1: syntax error: unclosed action`},
		{name: "syntax error column", text: "a\n  {{ file \"db/password\" | yamlQuote }\n", want: `line 2, column 37: syntax error: unexpected "}" in operand; check the {{ }} there`},
		{name: "syntax error without a column", text: "{{ file \"db/password\" }} {{ trim }\n", want: `line 1: syntax error: unexpected "}" in operand`},
		{name: "unknown function", text: pw + "\n\n  {{ jsn }}", want: `line 3, column 6: unknown function "jsn"; the functions are file, secret, jsonQuote`},
		{name: "alias hint", text: pw + `{{ file "db/user" | toJson }}`, want: `unknown function "toJson"; did you mean jsonQuote?`},
		{name: "printf", text: `{{ printf "%999999999d" 1 }}`, want: `line 1, column 4: printf is not available: printf can allocate without bound`},
		{name: "call", text: `{{ call .F }}`, want: "call is not available"},
		{name: "index", text: `{{ index "abc" 1 }}`, want: `index is not available: index reads dynamic values; read a JSON key with {{ file "<file>/<key>" }}`},
		{name: "slice", text: `{{ slice "abc" 1 }}`, want: "slice is not available"},
		{name: "range over an integer", text: "{{ range 1000000000 }}x{{ end }}", want: `line 1, column 10: {{range}} is not available: templates have no loops`},
		{name: "if", text: "{{ if true }}x{{ end }}", want: "{{if}} is not available"},
		{name: "with", text: `{{ with "x" }}{{ . }}{{ end }}`, want: "{{with}} is not available"},
		{name: "define", text: `{{ define "x" }}a{{ end }}`, want: `{{define}} and {{block}} (here "x") are not available`},
		{name: "template", text: `{{ template "x" }}`, want: "{{template}} and {{block}} are not available"},
		{name: "variable", text: `{{ $p := file "db/password" }}`, want: "variables ($p) are not available"},
		{name: "dot", text: `{{ . }}`, want: "the dot {{ . }} is not available"},
		{name: "field", text: `{{ .Password }}`, want: "fields (.Password) are not available"},
		{name: "number", text: `{{ 42 }}`, want: "42: only string literals are available"},
		{name: "dynamic argument", text: `{{ file .X }}`, want: "the argument of file must be a string literal"},
		{name: "parenthesized", text: `{{ jsonQuote (file "db/password") }}`, want: "jsonQuote takes the value piped into it"},
		{name: "nested pipeline argument", text: `{{ file (secret "DB-USER") }}`, want: "parenthesized pipelines are not available"},
		{name: "file piped", text: `{{ "x" | file }}`, want: "file must start its action"},
		{name: "file two arguments", text: `{{ file "a" "b" }}`, want: "file takes one string literal"},
		{name: "default not literal", text: pw + `{{ file "db/user" | default .X }}`, want: "the argument of default must be a string literal"},
		{name: "too long a pipeline", text: `{{ file "db/password"` + strings.Repeat(" | trim", 8) + ` }}`, want: "an action may chain at most 8 functions, this one has 9"},
		{name: "unknown file", text: `{{ file "db/pasword" }}`, want: `no entry of kvinject.dev/secrets writes the file "db/pasword"; the files are`},
		{name: "unknown secret", text: `{{ secret "NOPE" }}`, want: `no entry of kvinject.dev/secrets reads the secret "NOPE"; add one, e.g. nope=NOPE;nofile`},
		{name: "bad secret name", text: `{{ secret "a_b" }}`, want: "a Key Vault secret name is 1-127 letters, digits or hyphens"},
		{name: "ambiguous secret", text: pw + `{{ secret "shared" }}`, want: `the secret "shared" is read by several entries (files "dup1", "dup2")`},
		{name: "secret of a directory", text: pw + `{{ secret "app-config" }}`, want: `{{ file "cfg/<key>" }} (the JSON key <key>)`},
		{name: "secret of a split", text: pw + `{{ secret "web-cert" }}`, want: `{{ file "tls.key" }} or {{ file "tls.crt" }}`},
		{name: "directory itself", text: pw + `{{ file "cfg" }}`, want: `file "cfg" is the directory of entry "cfg=secret:app-config;format=json" (one file per JSON key)`},
		{name: "history out of range", text: pw + `{{ file "hist/2" }}`, want: "a history entry writes the versions 0 (the newest) to 1"},
		{name: "json key not a file name", text: pw + `{{ file "cfg/a/b" }}`, want: `the JSON key "a/b" cannot be a file name`},
		{name: "collision with a file", file: "ca.crt", text: pw, want: `the file "ca.crt" is already written by entry "ca.crt=cert:web-cert"`},
		{name: "collision with a directory", file: "db", text: pw, want: `the file "db" is already a path of entry "db/password=DB-PASSWORD;nofile" (not written, as it has nofile, but named by templates)`},
		{name: "collision with a JSON entry's directory", file: "cfg", text: pw, want: `the file "cfg" is already the directory of entry "cfg=secret:app-config;format=json"`},
		{name: "collision with a directory of files", file: "hist", text: pw, want: `the file "hist" is already the directory of entry "hist=secret:rotating;history=2"`},
		{name: "file with a slash", file: "a/b", text: pw, want: "must be a flat name at the top of the mount"},
		{name: "file with ..", file: "..x", text: pw, want: "must not start with '..'"},
		{name: "file too long", file: strings.Repeat("a", MaxTemplateFileLen+1), text: pw, want: "longer than 54 characters"},
		{name: "too big", text: pw + strings.Repeat("x", MaxTemplateSize), want: "more than the limit of 16384"},
		{name: "nofile unread", text: `{{ file "db/user" }}`, want: `entry "db/password=DB-PASSWORD;nofile" has nofile, but no template reads it`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			if file == "" {
				file = "out.txt"
			}
			cs, probs := CheckTemplates([]Template{{File: file, Text: tt.text}}, entries)
			var msgs []string
			for _, p := range probs {
				msgs = append(msgs, p.File+": "+p.Msg)
			}
			got := strings.Join(msgs, "\n")
			switch {
			case tt.want == "" && (len(probs) > 0 || len(cs) != 1):
				t.Fatalf("refused:\n%s", got)
			case tt.want != "" && !strings.Contains(got, tt.want):
				t.Fatalf("problems:\n%s\nwant one containing %q", got, tt.want)
			case tt.want != "" && cs != nil:
				t.Fatalf("compiled a refused template")
			}
		})
	}
}

func TestCheckTemplatesLimits(t *testing.T) {
	entries := mustEntries(t, "a=A")
	var ts []Template
	for i := range MaxTemplates + 1 {
		ts = append(ts, Template{File: "t" + string(rune('a'+i)), Text: "x"})
	}
	if _, probs := CheckTemplates(ts, entries); len(probs) != 1 || !strings.Contains(probs[0].Msg, "templates, more than the limit of 16; render fewer files") {
		t.Errorf("17 templates: %v", probs)
	}
	if _, probs := CheckTemplates(ts[:MaxTemplates], entries); len(probs) != 0 {
		t.Errorf("16 templates: %v", probs)
	}
	if _, probs := CheckTemplates([]Template{{File: "a.t", Text: "x"}, {File: "a.t", Text: "y"}}, entries); len(probs) != 1 || probs[0].Msg != "is given twice" {
		t.Errorf("twice: %v", probs)
	}
	// Many problems in one template are bounded.
	_, probs := CheckTemplates([]Template{{File: "t", Text: strings.Repeat("{{ printf }}", 100)}}, entries)
	if len(probs) != maxTemplateProblems {
		t.Errorf("got %d problems, want %d", len(probs), maxTemplateProblems)
	}
}

// renderOne compiles text against entries and renders it from files.
func renderOne(t *testing.T, entries, text string, files map[string]string, limit int) ([]byte, error) {
	t.Helper()
	cs, probs := CheckTemplates([]Template{{File: "out", Text: text}}, mustEntries(t, entries))
	if len(probs) > 0 {
		t.Fatalf("refused: %v", probs)
	}
	return cs[0].Render(func(p string) ([]byte, bool) {
		s, ok := files[p]
		return []byte(s), ok
	}, limit)
}

func TestRender(t *testing.T) {
	const entries = "db/host=DB-HOST, db/user=DB-USER, db/password=DB-PASSWORD, cfg=secret:app;format=json, b64=B64"
	files := map[string]string{
		"db/host": "db.example.com", "db/user": " app\n", "db/password": "p\"a\\ss&=\n\x01\u2028é",
		"cfg/port": "5432", "b64": "aGVsbG8=",
	}
	tests := []struct{ name, text, want string }{
		{"jdbc url", `jdbc:postgresql://{{ file "db/host" }}:{{ file "cfg/port" }}/app?user={{ file "db/user" | trim | urlQuery }}&password={{ secret "DB-PASSWORD" | urlQuery }}`,
			"jdbc:postgresql://db.example.com:5432/app?user=app&password=p%22a%5Css%26%3D%0A%01%E2%80%A8%C3%A9"},
		{"json", `{"password": {{ file "db/password" | jsonQuote }}}`, `{"password": "p\"a\\ss&=\n\u0001\u2028é"}` + ""},
		{"yaml", `password: {{ file "db/password" | yamlQuote }}`, `password: "p\"a\\ss&=\n\u0001\u2028é"`},
		{"base64", `{{ file "db/host" | base64 }} {{ file "b64" | base64Decode }}`, "ZGIuZXhhbXBsZS5jb20= hello"},
		{"default", `{{ file "cfg/port" | default "1" }}`, "5432"},
		{"literal braces and text", "a {{ \"{{\" }} b\n  {{- /* c */ -}}\n d{{ file \"db/password\" | trim | default \"\" | base64 | base64Decode | jsonQuote | yamlQuote }}", "a {{ bd\"\\\"p\\\\\\\"a\\\\\\\\ss&=\\\\n\\\\u0001\\\\u2028é\\\"\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := renderOne(t, entries, tt.text, files, MaxRendered)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, string(got)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	t.Run("default of an empty value", func(t *testing.T) {
		got, err := renderOne(t, "a=A", `{{ file "a" | default "none" }}`, map[string]string{"a": ""}, MaxRendered)
		if err != nil || string(got) != "none" {
			t.Errorf("got %q, %v", got, err)
		}
	})
}

func TestRenderErrorsQuoteNoValue(t *testing.T) {
	const secret = "s3cr3t-VALUE-!"
	tests := []struct {
		name, entries, text string
		files               map[string]string
		limit               int
		want                string
	}{
		{"missing JSON key", "cfg=secret:app;format=json", "x\n  {{ file \"cfg/host\" }}", map[string]string{"cfg/port": secret}, MaxRendered,
			`template "out": line 2, column 6: file "cfg/host": entry "cfg=secret:app;format=json" has no file "cfg/host": the JSON object has no key "host"`},
		{"missing version", "h=secret:h;history=3", `{{ file "h/2" }}`, map[string]string{"h/0": secret}, MaxRendered,
			"the secret has fewer than 3 enabled versions"},
		{"not base64", "a=A", `{{ file "a" | base64Decode }}`, map[string]string{"a": secret}, MaxRendered,
			`line 1, column 15: base64Decode: the value is not valid base64 (at byte 7 of 14)`},
		{"output over the limit, while writing", "a=A", `{{ file "a" }}{{ file "a" }}{{ file "a" }}`, map[string]string{"a": secret}, 30,
			"the rendered files together would be larger than 4194304 bytes"},
		{"output over 1 MiB", "a=A", `{{ file "a" | base64 }}`, map[string]string{"a": strings.Repeat(secret, MaxRendered/len(secret))}, MaxRendered,
			"the rendered file would be larger than 1048576 bytes"},
		{"input over 1 MiB", "a=A", `{{ file "a" | trim }}`, map[string]string{"a": strings.Repeat(secret, MaxRendered/len(secret)+1)}, MaxRendered,
			"trim: the value is 1048586 bytes, more than a rendered file may hold (1048576)"},
		{"functions' work bounded", "a=A", strings.Repeat(`{{ file "a" | jsonQuote | trim | trim | trim | trim | trim | default "" }}`, 10), map[string]string{"a": strings.Repeat("\x01", 100000)}, MaxRendered,
			"the template's functions produced more than 4194304 bytes together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := renderOne(t, tt.entries, tt.text, tt.files, tt.limit)
			var re *RenderError
			if !errors.As(err, &re) {
				t.Fatalf("got %d bytes, %v; want a *RenderError", len(out), err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\nwant it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("the error quotes the value: %q", err)
			}
		})
	}
}

func TestQuoteFunctions(t *testing.T) {
	for _, tt := range []struct{ in, json, yaml string }{
		{"plain", `"plain"`, `"plain"`},
		{"\x00\x7f\u0085\ufeff", `"\u0000\u007f` + "\u0085\ufeff" + `"`, `"\u0000\u007f\u0085\ufeff"`},
		{"\xff", "\"\ufffd\"", "\"\ufffd\""},
	} {
		if got := JSONQuote(tt.in); got != tt.json {
			t.Errorf("JSONQuote(%q) = %q, want %q", tt.in, got, tt.json)
		}
		if got := YAMLQuote(tt.in); got != tt.yaml {
			t.Errorf("YAMLQuote(%q) = %q, want %q", tt.in, got, tt.yaml)
		}
	}
}

func TestTemplateFlag(t *testing.T) {
	tests := []struct {
		in      string
		want    Template
		wantErr string
	}{
		{in: "app.json=" + `{"a": {{ file "a" | jsonQuote }}}` + "\n=x", want: Template{File: "app.json", Text: `{"a": {{ file "a" | jsonQuote }}}` + "\n=x"}},
		{in: ".env;mode=0400=A={{ file \"a\" }}", want: Template{File: ".env", Mode: 0o400, Text: `A={{ file "a" }}`}},
		{in: "x=", want: Template{File: "x"}},
		{in: "noequals", wantErr: "write <file>[;mode=<octal>]=<template text>"},
		{in: "a/b=x", wantErr: "must be a flat name"},
		{in: "a;colour=red=x", wantErr: `unknown option "colour"; the only option is mode=<octal>`},
		{in: "a;mode=0755=x", wantErr: "must not make secrets executable"},
		{in: "a=" + strings.Repeat("x", MaxTemplateSize+1), wantErr: "more than the limit of 16384"},
	}
	for _, tt := range tests {
		got, err := ParseTemplateFlag(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTemplateFlag(%.40q) = %v; want an error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseTemplateFlag(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if back, err := ParseTemplateFlag(got.String()); err != nil || back != got {
			t.Errorf("round trip of %q: %+v, %v", got.String(), back, err)
		}
	}
}

// benchTemplate is a typical appsettings.json template.
const benchTemplate = `{
  "ConnectionStrings": {
    "Orders": "Server={{ file "db/host" | trim }};User Id={{ file "db/user" | trim }};Password={{ secret "DB-PASSWORD" | trim }}"
  },
  "Jwt": {"Key": {{ file "jwt.key" | jsonQuote }}, "Issuer": {{ file "cfg/issuer" | default "orders" | jsonQuote }}}
}
`

const benchEntries = "db/host=DB-HOST, db/user=DB-USER, db/password=DB-PASSWORD;nofile, jwt.key=JWT-KEY;nofile, cfg=secret:app-config;format=json"

// BenchmarkCheckTemplates is the admission's cost: a typical template, and
// the most a pod may bring (16 templates of 16 KiB, each 2,000 actions).
func BenchmarkCheckTemplates(b *testing.B) {
	entries, err := ParseEntries(benchEntries)
	if err != nil {
		b.Fatal(err)
	}
	big := strings.Repeat(`{{ file "db/host" | trim }}`, (MaxTemplateSize-100)/len(`{{ file "db/host" | trim }}`))
	var most []Template
	for i := range MaxTemplates {
		most = append(most, Template{File: "t" + strconv.Itoa(i), Text: big + `{{ file "db/password" }}{{ file "jwt.key" }}`})
	}
	for _, bc := range []struct {
		name string
		ts   []Template
	}{
		{"typical", []Template{{File: "appsettings.json", Text: benchTemplate}}},
		{"most", most},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, probs := CheckTemplates(bc.ts, entries); len(probs) > 0 {
					b.Fatal(probs)
				}
			}
		})
	}
}

// BenchmarkRender is the agent's cost per set: the typical template from
// 64-byte values, and 1 MiB of output from one 16 KiB value.
func BenchmarkRender(b *testing.B) {
	entries, err := ParseEntries(benchEntries)
	if err != nil {
		b.Fatal(err)
	}
	value := func(n int) []byte { return bytes.Repeat([]byte("x\""), n/2) }
	for _, bc := range []struct {
		name string
		text string
		size int
	}{
		{"typical", benchTemplate, 64},
		{"1MiB", strings.Repeat(`{{ file "jwt.key" }}`, MaxRendered/(16<<10)-1), 16 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cs, probs := CheckTemplates([]Template{{File: "t", Text: bc.text + `{{ file "db/password" }}`}}, entries)
			if len(probs) > 0 {
				b.Fatal(probs)
			}
			v := value(bc.size)
			files := func(string) ([]byte, bool) { return v, true }
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cs[0].Render(files, MaxRendered+len(v)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTemplateOptionalEntry: an absent optional entry reads "" (default
// replaces it); a required entry's missing file is still an error.
func TestTemplateOptionalEntry(t *testing.T) {
	entries := []Entry{{File: "feature.txt", Name: "FEATURE", Optional: true, NoFile: true}, {File: "db.txt", Name: "DB"}}
	cs, probs := CheckTemplates([]Template{{File: "app.env", Text: `F={{ file "feature.txt" | default "off" }} S={{ secret "feature" }} D={{ file "db.txt" }}`}}, entries)
	if len(probs) > 0 {
		t.Fatal(probs)
	}
	got, err := cs[0].Render(func(p string) ([]byte, bool) {
		if p == "db.txt" {
			return []byte("pw"), true
		}
		return nil, false
	}, MaxRendered)
	if err != nil || string(got) != "F=off S= D=pw" {
		t.Fatalf("Render = %q, %v", got, err)
	}
	if _, err := cs[0].Render(func(string) ([]byte, bool) { return nil, false }, MaxRendered); err == nil || !strings.Contains(err.Error(), `file "db.txt"`) {
		t.Fatalf("a required entry's missing file: %v", err)
	}
}
