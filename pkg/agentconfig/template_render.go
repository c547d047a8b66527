package agentconfig

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"unicode/utf8"
)

// RenderError is a template that could not be rendered: the template's file,
// the line and column of the action (0 when unknown), and why, never a value.
type RenderError struct {
	File      string
	Line, Col int
	Msg       string
}

// Error names the template, the place and the reason.
func (e *RenderError) Error() string {
	at := ""
	if e.Line > 0 {
		at = fmt.Sprintf(" line %d, column %d:", e.Line, e.Col)
	}
	return fmt.Sprintf("template %q:%s %s", e.File, at, e.Msg)
}

// funcError is a function's failure; its message never holds a value.
type funcError struct{ msg string }

func (e *funcError) Error() string { return e.msg }

// errTooBig is the output writer's refusal.
var errTooBig = errors.New("rendered output over the limit")

// limitWriter keeps what is written, up to max bytes.
type limitWriter struct {
	buf bytes.Buffer
	max int
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.buf.Len()+len(p) > w.max {
		return 0, errTooBig
	}
	return w.buf.Write(p)
}

// execLocRE finds the place in text/template's execution error:
// "template: <name>:<line>:<col>: ...", the column counted from 0.
var execLocRE = regexp.MustCompile(`^template: [^:]*:(\d+):(\d+): `)

// Render executes the template. files returns the content of a file that an
// entry renders (whether or not the entry writes it: ;nofile entries are
// rendered too); limit bounds the output (at most MaxRendered). The error
// is a *RenderError that quotes no value.
func (c *CompiledTemplate) Render(files func(path string) ([]byte, bool), limit int) ([]byte, error) {
	limit = min(limit, MaxRendered)
	work := 0
	charge := func(fn string, n int) error {
		work += n
		if work > maxWork {
			return &funcError{fmt.Sprintf("%s: the template's functions produced more than %d bytes together", fn, maxWork)}
		}
		return nil
	}
	// checkIn refuses an input that could not be written anyway, before a
	// function multiplies it.
	checkIn := func(fn, s string) error {
		if len(s) > MaxRendered {
			return &funcError{fmt.Sprintf("%s: the value is %d bytes, more than a rendered file may hold (%d)", fn, len(s), MaxRendered)}
		}
		return nil
	}
	read := func(fn, arg string) (string, error) {
		r, ok := c.refs[refKey(fn, arg)]
		if !ok {
			// CheckTemplates resolved every literal; a template can reach no other.
			return "", &funcError{fmt.Sprintf("%s %q was not checked against the entries", fn, arg)}
		}
		data, ok := files(r.path)
		if !ok && r.optional {
			// An absent optional entry: "" (e.g. for default).
			return "", nil
		}
		if !ok {
			why := r.missing
			if why == "" {
				why = "the entry wrote no such file"
			}
			return "", &funcError{fmt.Sprintf("%s %q: entry %q has no file %q: %s", fn, arg, r.entry, r.path, why)}
		}
		if err := charge(fn, len(data)); err != nil {
			return "", err
		}
		return string(data), nil
	}
	str := func(fn string, f func(string) (string, error)) func(string) (string, error) {
		return func(s string) (string, error) {
			if err := checkIn(fn, s); err != nil {
				return "", err
			}
			out, err := f(s)
			if err != nil {
				return "", err
			}
			if err := charge(fn, len(out)); err != nil {
				return "", err
			}
			return out, nil
		}
	}
	unavailable := func(name string) func(...any) (string, error) {
		return func(...any) (string, error) { return "", &funcError{name + " is not available"} }
	}
	funcs := template.FuncMap{
		fnFile:         func(p string) (string, error) { return read(fnFile, p) },
		fnSecret:       func(n string) (string, error) { return read(fnSecret, n) },
		fnJSONQuote:    str(fnJSONQuote, func(s string) (string, error) { return JSONQuote(s), nil }),
		fnYAMLQuote:    str(fnYAMLQuote, func(s string) (string, error) { return YAMLQuote(s), nil }),
		fnBase64:       str(fnBase64, func(s string) (string, error) { return base64.StdEncoding.EncodeToString([]byte(s)), nil }),
		fnBase64Decode: str(fnBase64Decode, base64Decode),
		fnTrim:         str(fnTrim, func(s string) (string, error) { return strings.TrimSpace(s), nil }),
		fnURLQuery:     str(fnURLQuery, func(s string) (string, error) { return url.QueryEscape(s), nil }),
		fnDefault: func(def, s string) string {
			if s == "" {
				return def
			}
			return s
		},
	}
	// Shadow the builtins, which CheckTemplates already refuses.
	for name := range forbidden {
		if _, ours := funcs[name]; !ours {
			funcs[name] = unavailable(name)
		}
	}
	t, err := template.New(c.File).Option("missingkey=error").Funcs(funcs).AddParseTree(c.File, c.tree)
	if err != nil {
		return nil, &RenderError{File: c.File, Msg: "internal error: " + err.Error()}
	}
	w := &limitWriter{max: limit}
	if err := t.Execute(w, nil); err != nil {
		re := &RenderError{File: c.File}
		if m := execLocRE.FindStringSubmatch(err.Error()); m != nil {
			re.Line, _ = strconv.Atoi(m[1])
			re.Col, _ = strconv.Atoi(m[2])
			re.Col++
		}
		var fe *funcError
		switch {
		case errors.Is(err, errTooBig):
			re.Msg = fmt.Sprintf("the rendered file would be larger than %d bytes", limit)
			if limit < MaxRendered {
				re.Msg = fmt.Sprintf("the rendered files together would be larger than %d bytes", MaxRenderedTotal)
			}
		case errors.As(err, &fe):
			re.Msg = fe.msg
		default:
			// text/template's own errors name nodes of the template, never values;
			// the restricted language leaves none that reach here.
			re.Msg = "cannot render the template"
		}
		return nil, re
	}
	return w.buf.Bytes(), nil
}

// base64Decode decodes standard base64 (with or without padding, also the
// URL alphabet); its error says where, never what.
func base64Decode(s string) (string, error) {
	s = strings.TrimSpace(s)
	var firstErr error
	for _, e := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := e.DecodeString(s)
		if err == nil {
			return string(b), nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	var ce base64.CorruptInputError
	if errors.As(firstErr, &ce) {
		return "", &funcError{fmt.Sprintf("base64Decode: the value is not valid base64 (at byte %d of %d)", int64(ce)+1, len(s))}
	}
	return "", &funcError{"base64Decode: the value is not valid base64"}
}

// JSONQuote returns s as a JSON string literal, quotes included. Invalid
// UTF-8 becomes U+FFFD, as encoding/json writes it.
func JSONQuote(s string) string {
	return quote(s, func(r rune) bool {
		return r < 0x20 || r == 0x7f || r == 0x2028 || r == 0x2029
	})
}

// YAMLQuote returns s as a YAML double-quoted scalar, quotes included:
// everything YAML does not print is escaped. Invalid UTF-8 becomes U+FFFD.
func YAMLQuote(s string) string {
	return quote(s, func(r rune) bool {
		return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 || r == 0xfeff || r == 0xfffe || r == 0xffff
	})
}

// quote writes s between double quotes, escaping '"' and '\\', newline,
// carriage return and tab by their short escapes and every rune for which
// escape is true as \uXXXX: the double-quoted string that JSON and YAML
// share. Invalid bytes become utf8.RuneError (U+FFFD).
func quote(s string, escape func(rune) bool) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case escape(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
