package agentconfig

import (
	"fmt"
	"strconv"
	"strings"
)

// ObjectType is the kind of Key Vault object an entry reads.
type ObjectType string

// Object types. "" and ObjectSecret both read a secret's value.
const (
	// ObjectSecret reads a secret's value (also the value of a certificate's secret).
	ObjectSecret ObjectType = "secret"
	// ObjectCert reads a certificate's public certificate (the leaf, PEM).
	ObjectCert ObjectType = "cert"
	// ObjectKey reads a key's public key (PKIX "PUBLIC KEY", PEM).
	ObjectKey ObjectType = "key"
)

// Format is how a secret's value is turned into files.
type Format string

// Formats. "" writes the value as stored.
const (
	// FormatPEM converts a certificate-backed secret to PEM: the private key
	// (PKCS#8), then the chain from the leaf to the root.
	FormatPEM Format = "pem"
	// FormatPFX writes a certificate-backed secret as PKCS#12 bytes.
	FormatPFX Format = "pfx"
	// FormatJSON writes one file per top-level key of a JSON object under <file>/.
	FormatJSON Format = "json"
	// FormatAuto writes a certificate-backed secret as FormatPEM does and any other
	// secret as stored: what the Secrets Store CSI driver's Azure provider writes for
	// objectType secret, so that a migrated SecretProviderClass keeps its files.
	FormatAuto Format = "auto"
)

// Encoding is how a secret's value is decoded before it is written.
type Encoding string

// Encodings. "" writes the value as it is.
const (
	EncodingBase64 Encoding = "base64"
	EncodingHex    Encoding = "hex"
)

// MaxHistory bounds History: each version is one read per rotation.
const MaxHistory = 16

// Entry is one item of the mapping: what to read from Key Vault and where to
// write it, relative to the mount.
//
// The written grammar (see docs/contract.md):
//
//	entry  = [ file "=" ] [ kind ":" ] name [ "@" version ] *( ";" option )
//	kind   = "secret" | "cert" | "key"
//	option = "format=" ( "pem" | "pfx" | "json" | "auto" ) | "split"
//	       | "encoding=" ( "base64" | "hex" ) | "history=" 1-16 | "mode=" octal
//	       | "nofile" | "optional" | "vault=" ( vault-name | vault-url )
//
// A plain "<file>=<secret-name>[@<version>]" writes the secret's value; a bare
// "<name>" writes a file named after the object. Key Vault names cannot contain
// ':' or ';' and files cannot contain ';', which keeps the grammar unambiguous.
// Kinds, option names and values are case-insensitive; String writes them in
// lower case, in the order above.
type Entry struct {
	// File is the path relative to the mount, e.g. "connectionstring.txt" or
	// "db/password". With Split it is the stem of <file>.key and <file>.crt;
	// with History or FormatJSON it is a directory.
	File string
	// Name is the Key Vault object name (1-127 of [0-9A-Za-z-]).
	Name string
	// Version is a pinned 32-hex-character version; empty means the latest.
	Version string
	// Type is the object kind; "" (as written without a kind) means ObjectSecret.
	Type ObjectType
	// Format converts a secret's value; "" writes it as stored.
	Format Format
	// Split, with FormatPEM, writes <file>.key (the private key) and <file>.crt
	// (the chain) instead of one file.
	Split bool
	// Encoding decodes a secret's value before it is written.
	Encoding Encoding
	// History > 0 writes the newest History enabled versions as <file>/0 (the
	// newest) to <file>/<History-1>; it needs the list permission.
	History int
	// Mode is this entry's file mode; 0 means the mapping's (kvinject.dev/file-mode).
	Mode uint32
	// NoFile fetches and renders the entry for templates only: its files are
	// not written, but its paths stay its own (templates name them).
	NoFile bool
	// Optional lets the set be complete without the entry's object while it
	// does not exist (404) or, for a secret, is disabled: the entry then
	// writes no file, and the agent reads the object again at each rotation
	// until it appears. Other failures (401, 403 for another reason, a value
	// that cannot become the entry's files) still fail.
	Optional bool
	// Vault is the vault the entry reads, when not the pod's (--vault,
	// kvinject.dev/vault): as parsed, a lower-cased vault name or a canonical
	// vault URL; Config.Validate and the webhook resolve names in the pod's
	// cloud (ResolveEntryVault). Empty: the pod's vault.
	Vault string
}

// Kind returns the entry's object type, with "" as ObjectSecret.
func (e Entry) Kind() ObjectType {
	if e.Type == "" {
		return ObjectSecret
	}
	return e.Type
}

// String returns the entry in its canonical written form.
func (e Entry) String() string {
	var b strings.Builder
	b.WriteString(e.File)
	b.WriteByte('=')
	if e.Type != "" {
		b.WriteString(string(e.Type))
		b.WriteByte(':')
	}
	b.WriteString(e.Name)
	if e.Version != "" {
		b.WriteString("@" + e.Version)
	}
	if e.Format != "" {
		b.WriteString(";format=" + string(e.Format))
	}
	if e.Split {
		b.WriteString(";split")
	}
	if e.Encoding != "" {
		b.WriteString(";encoding=" + string(e.Encoding))
	}
	if e.History > 0 {
		b.WriteString(";history=" + strconv.Itoa(e.History))
	}
	if e.Mode != 0 {
		fmt.Fprintf(&b, ";mode=%04o", e.Mode)
	}
	if e.NoFile {
		b.WriteString(";nofile")
	}
	if e.Optional {
		b.WriteString(";optional")
	}
	if e.Vault != "" {
		b.WriteString(";vault=" + e.Vault)
	}
	return b.String()
}

// IsDir reports whether the entry writes a directory at File (history, or a
// JSON secret split into files) rather than files.
func (e Entry) IsDir() bool { return e.History > 0 || e.Format == FormatJSON }

// Files returns the paths the entry writes, as far as the mapping knows them:
// File, or <File>.key and <File>.crt with Split; for a directory entry (IsDir),
// File itself, whose content is only known when the agent reads the object.
func (e Entry) Files() []string {
	if e.Split && !e.IsDir() {
		return []string{e.File + SplitKeySuffix, e.File + SplitCertSuffix}
	}
	return []string{e.File}
}

// Suffixes of the two files of a split PEM entry.
const (
	SplitKeySuffix  = ".key"
	SplitCertSuffix = ".crt"
)

// VersionFile returns the path of the i-th newest version (0 is the newest)
// of a history entry.
func (e Entry) VersionFile(i int) string { return e.File + "/" + strconv.Itoa(i) }

// IsObjectName reports whether s is a valid name of a Key Vault secret, certificate
// or key: 1-127 of [0-9A-Za-z-].
func IsObjectName(s string) bool {
	return len(s) >= 1 && len(s) <= 127 && allBytes(s, func(c byte) bool { return isAlnum(c) || c == '-' })
}

// IsVersion reports whether s is an object version: 32 hexadecimal characters.
func IsVersion(s string) bool {
	return len(s) == 32 && allBytes(s, func(c byte) bool {
		return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
	})
}

// isFileSegment: one or more of [A-Za-z0-9._-].
func isFileSegment(s string) bool {
	return s != "" && allBytes(s, func(c byte) bool { return isAlnum(c) || c == '.' || c == '_' || c == '-' })
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// maxEntries bounds one pod's mapping; Key Vault and the agent handle more, but a
// pod asking for more than this is almost certainly a mistake.
const maxEntries = 256

// maxFileLen bounds a file path (bytes), well below PATH_MAX once the mount path is added.
const maxFileLen = 253

// maxOptionsLen bounds the options of an entry: every option once, with room
// for spaces around them (the longest vault URL is 64 characters).
const maxOptionsLen = 96 + 64

// maxEntryLen is the longest valid entry: a file, '=', a kind, a name, '@', a
// version and the options.
const maxEntryLen = maxFileLen + 1 + len("secret:") + 127 + 1 + 32 + maxOptionsLen

// grammarHint is the form every entry error ends with.
const grammarHint = "write <file>=<secret-name>[@<version>]"

// typedHint is the form of typed entries.
const typedHint = "write <file>=<kind>:<name>[@<version>][;<option>...] with kind secret, cert or key"

// ParseEntries parses a mapping: entries separated by commas or newlines, blank
// entries ignored. It reports every bad entry, not just the first, and every
// pair of entries whose files collide.
func ParseEntries(s string) ([]Entry, error) {
	var (
		entries []Entry
		raws    []string
		probs   []string
	)
	for _, raw := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if len(entries)+len(probs) > maxEntries {
			probs = append(probs, fmt.Sprintf("more than the limit of %d entries", maxEntries))
			break
		}
		if len(raw) > maxEntryLen {
			probs = append(probs, fmt.Sprintf("entry %q... is longer than the longest valid entry (%d characters)", raw[:40], maxEntryLen))
			continue
		}
		e, err := ParseEntry(raw)
		if err != nil {
			probs = append(probs, err.Error())
			continue
		}
		entries = append(entries, e)
		raws = append(raws, raw)
	}
	probs = append(probs, fileProblems(entries, raws)...)
	if len(probs) == 0 && len(entries) == 0 {
		probs = append(probs, "no entries: "+grammarHint+", separated by commas or newlines")
	}
	if len(probs) > 0 {
		return nil, &InvalidError{Problems: probs}
	}
	return entries, nil
}

// claim is a path an entry writes: a file, or a directory whose content the
// agent learns at run time (history, JSON).
type claim struct {
	path  string
	dir   bool
	entry int
}

// fileProblems reports entries whose files collide: the same path twice, a
// file that is also the directory of another, and anything inside the
// directory of a history or JSON entry. raws names the entries as written
// (nil: their canonical form).
func fileProblems(entries []Entry, raws []string) []string {
	name := func(i int) string {
		if raws != nil {
			return raws[i]
		}
		return entries[i].String()
	}
	var (
		probs  []string
		claims = map[string]claim{}
		order  []claim
	)
	for i, e := range entries {
		for _, p := range e.Files() {
			c := claim{path: p, dir: e.IsDir(), entry: i}
			if prev, dup := claims[p]; dup {
				probs = append(probs, fmt.Sprintf("entry %q: file %q is already used by entry %q", name(i), p, name(prev.entry)))
				continue
			}
			claims[p] = c
			order = append(order, c)
		}
	}
	for _, c := range order {
		for i := range len(c.path) {
			if c.path[i] != '/' {
				continue
			}
			parent, ok := claims[c.path[:i]]
			switch {
			case !ok:
			case parent.dir:
				probs = append(probs, fmt.Sprintf("entry %q writes the directory %q (%s); %q cannot be inside it",
					name(parent.entry), parent.path, entries[parent.entry].dirReason(), c.path))
			default:
				probs = append(probs, fmt.Sprintf("file %q cannot also be the directory of %q", parent.path, c.path))
			}
		}
	}
	return probs
}

// dirReason says why a directory entry is a directory.
func (e Entry) dirReason() string {
	if e.History > 0 {
		return "one file per version"
	}
	return "one file per JSON key"
}

// ParseEntry parses one entry (see Entry for the grammar).
func ParseEntry(raw string) (Entry, error) {
	head, opts, hasOpts := strings.Cut(raw, ";")
	file, ref, hasFile := strings.Cut(head, "=")
	if !hasFile {
		ref = head
	}
	file, ref = strings.TrimSpace(file), strings.TrimSpace(ref)
	kind, nameVer, hasKind := strings.Cut(ref, ":")
	if !hasKind {
		nameVer, kind = kind, ""
	}
	kind, nameVer = strings.TrimSpace(kind), strings.TrimSpace(nameVer)
	name, version, hasVersion := strings.Cut(nameVer, "@")
	if !hasFile {
		file = name
	}
	e := Entry{File: file, Name: name, Version: strings.ToLower(version)}
	typed := hasKind || hasOpts
	hint := grammarHint
	if typed {
		hint = typedHint
	}
	fail := func(format string, args ...any) (Entry, error) {
		return Entry{}, fmt.Errorf("entry %q: "+format, append([]any{raw}, args...)...)
	}
	if hasKind {
		switch t := ObjectType(strings.ToLower(kind)); t {
		case ObjectSecret, ObjectCert, ObjectKey:
			e.Type = t
		default:
			return fail("unknown kind %q: use secret (a secret's value), cert (a certificate's public certificate) or key (a key's public key)", kind)
		}
	}
	switch {
	case strings.ContainsAny(nameVer, ":"):
		return fail("%q: a name cannot contain ':'; %s", nameVer, hint)
	case !IsObjectName(name):
		return fail("%s name %q must be 1-127 letters, digits or hyphens; %s", e.objectWord(), name, hint)
	case hasVersion && !IsVersion(version):
		return fail("version %q must be 32 hexadecimal characters (omit @<version> for the latest)", version)
	}
	if hasOpts {
		if err := e.parseOptions(opts); err != nil {
			return fail("%v", err)
		}
	}
	if err := e.checkCombination(); err != nil {
		return fail("%v", err)
	}
	if err := ValidateFile(file); err != nil {
		return fail("%v", err)
	}
	if err := e.checkExpandedFiles(); err != nil {
		return fail("%v", err)
	}
	return e, nil
}

// objectWord names the entry's kind in messages.
func (e Entry) objectWord() string {
	switch e.Type {
	case ObjectCert:
		return "certificate"
	case ObjectKey:
		return "key"
	}
	return "secret"
}

// optionsHint lists the options.
const optionsHint = "options are format=pem|pfx|json|auto, split, encoding=base64|hex, history=<1-16>, mode=<octal>, nofile, optional and vault=<vault name or URL>"

// parseOptions parses the text after the first ';'.
func (e *Entry) parseOptions(s string) error {
	seen := map[string]bool{}
	for _, opt := range strings.Split(s, ";") {
		opt = strings.TrimSpace(opt)
		key, val, hasVal := strings.Cut(opt, "=")
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		if key == "" {
			return fmt.Errorf("empty option (a stray ';'); %s", optionsHint)
		}
		if seen[key] {
			return fmt.Errorf("option %s is given twice", key)
		}
		seen[key] = true
		if key != "split" && key != "nofile" && key != "optional" && !hasVal {
			switch key {
			case "format", "encoding", "history", "mode", "vault":
				return fmt.Errorf("option %s needs a value, e.g. %s", key, optionExample(key))
			}
		}
		switch key {
		case "format":
			switch f := Format(strings.ToLower(val)); f {
			case FormatPEM, FormatPFX, FormatJSON, FormatAuto:
				e.Format = f
			default:
				return fmt.Errorf("format %q: use pem (a certificate's key and chain), pfx (its PKCS#12 bytes), json (one file per key of a JSON secret) or auto (pem for a certificate's secret, else the value as stored)", val)
			}
		case "split":
			if hasVal {
				return fmt.Errorf("split takes no value (write ;split)")
			}
			e.Split = true
		case "nofile":
			if hasVal {
				return fmt.Errorf("nofile takes no value (write ;nofile)")
			}
			e.NoFile = true
		case "optional":
			if hasVal {
				return fmt.Errorf("optional takes no value (write ;optional)")
			}
			e.Optional = true
		case "encoding":
			switch enc := Encoding(strings.ToLower(val)); {
			case enc == EncodingBase64 || enc == EncodingHex:
				e.Encoding = enc
			case strings.EqualFold(val, "utf-8") || strings.EqualFold(val, "utf8"):
				return fmt.Errorf("encoding %q is the default: drop ;encoding=%s", val, val)
			default:
				return fmt.Errorf("encoding %q: use base64 or hex (the value is decoded before it is written)", val)
			}
		case "vault":
			v, err := parseEntryVault(val)
			if err != nil {
				return err
			}
			e.Vault = v
		case "history":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > MaxHistory {
				return fmt.Errorf("history %q must be a number of versions from 1 to %d", val, MaxHistory)
			}
			e.History = n
		case "mode":
			m, err := ParseFileMode(val)
			if err != nil {
				return fmt.Errorf("mode %v", err)
			}
			e.Mode = m
		default:
			return fmt.Errorf("unknown option %q; %s", key, optionsHint)
		}
	}
	return nil
}

func optionExample(key string) string {
	switch key {
	case "format":
		return "format=pem"
	case "encoding":
		return "encoding=base64"
	case "history":
		return "history=3"
	case "vault":
		return "vault=othervault"
	}
	return "mode=0400"
}

// checkCombination refuses options that do not fit the kind or each other,
// saying why and what to write instead.
func (e Entry) checkCombination() error {
	if e.NoFile && e.Mode != 0 {
		return fmt.Errorf("mode sets the mode of the entry's file, but nofile writes no file; drop ;mode=%04o (a template's file has its own mode)", e.Mode)
	}
	if e.Optional && e.Version != "" {
		return fmt.Errorf("optional waits for an object to appear, but a pinned version is read once and never again (and a version that does not exist is a mistake in the mapping); drop @%s to read the latest, or drop ;optional", e.Version)
	}
	switch e.Type {
	case ObjectCert, ObjectKey:
		kind, what := "cert", "a certificate's public certificate"
		if e.Type == ObjectKey {
			kind, what = "key", "a key's public key"
		}
		switch {
		case e.Format == FormatPFX && e.Type == ObjectCert:
			return fmt.Errorf("format=pfx needs the private key, but cert: reads only the public certificate; write %s=secret:%s;format=pfx", e.File, e.Name)
		case e.Format == FormatPFX:
			return fmt.Errorf("format=pfx does not apply to key: (Key Vault never releases a key's private part); key: writes the public key as PEM")
		case e.Format == FormatJSON:
			return fmt.Errorf("format=json splits a JSON secret into files; it does not apply to %s:", kind)
		case e.Format == FormatAuto:
			return fmt.Errorf("format=auto chooses between a certificate's PEM and a secret's value; %s: always writes %s as PEM, drop ;format=auto", kind, what)
		case e.Split && e.Type == ObjectCert:
			return fmt.Errorf("split needs the private key, but cert: reads only the public certificate; write %s=secret:%s;format=pem;split for <file>.key and <file>.crt", e.File, e.Name)
		case e.Split:
			return fmt.Errorf("split applies to a certificate's secret (secret:<name>;format=pem;split); key: writes one public key")
		case e.Encoding != "":
			return fmt.Errorf("encoding decodes a secret's value; %s: already writes %s as PEM", kind, what)
		case e.History > 0 && e.Type == ObjectCert:
			return fmt.Errorf("history lists a secret's versions; for a certificate's versions write %s=secret:%s;format=pem;history=%d", e.File, e.Name, e.History)
		case e.History > 0:
			return fmt.Errorf("history lists a secret's versions; it does not apply to key:")
		}
	default:
		switch {
		case e.Split && e.Format != FormatPEM:
			return fmt.Errorf("split writes <file>.key and <file>.crt from a certificate's PEM; add ;format=pem")
		case e.Encoding != "" && (e.Format == FormatPEM || e.Format == FormatPFX || e.Format == FormatAuto):
			return fmt.Errorf("encoding does not apply with format=%s, which decodes the certificate's secret itself; drop ;encoding=%s", e.Format, e.Encoding)
		case e.Encoding != "" && e.Format == FormatJSON:
			return fmt.Errorf("encoding cannot be combined with format=json, whose values are written as they are; drop ;encoding=%s", e.Encoding)
		case e.History > 0 && e.Version != "":
			return fmt.Errorf("history writes the newest %d versions, so it cannot start at a pinned version; drop @%s or ;history=%d", e.History, e.Version, e.History)
		}
	}
	return nil
}

// checkExpandedFiles checks the paths an entry derives from File.
func (e Entry) checkExpandedFiles() error {
	longest := e.File
	switch {
	case e.History > 0:
		longest = e.VersionFile(e.History - 1)
		if e.Split {
			longest += SplitCertSuffix
		}
	case e.Split:
		longest += SplitCertSuffix
	}
	if len(longest) > maxFileLen {
		return fmt.Errorf("file %q: the entry writes %q, which is longer than %d characters", e.File, longest, maxFileLen)
	}
	return nil
}

// JSONFile returns the file that the top-level key of a JSON secret becomes
// under dir (an entry's File, or one of its VersionFile with history), after
// checking it as the mapping checks files: the key must be one path segment
// that ValidateFile accepts. The agent checks every key before it writes
// anything; the error quotes the key, never a value.
func JSONFile(dir, key string) (string, error) {
	p := dir + "/" + key
	switch {
	case key == "":
		return "", fmt.Errorf("the JSON key \"\" cannot be a file name")
	case strings.Contains(key, "/"):
		return "", fmt.Errorf("the JSON key %q cannot be a file name: it contains '/' (each top-level key becomes one file)", key)
	}
	if err := ValidateFile(p); err != nil {
		return "", fmt.Errorf("the JSON key %q cannot be a file name: %v", key, err)
	}
	return p, nil
}

// ValidateFile checks a file path of the mapping: relative, inside the mount, of
// letters, digits, ".", "_" and "-" between "/", and unable to collide with the
// agent's own "..data" and timestamped directories.
func ValidateFile(f string) error {
	switch {
	case f == "":
		return fmt.Errorf("file name is empty")
	case strings.HasPrefix(f, "/"):
		return fmt.Errorf("file %q must be relative to the mount path, without a leading '/'", f)
	case len(f) > maxFileLen:
		return fmt.Errorf("file %q is longer than %d characters", f, maxFileLen)
	case strings.HasPrefix(f, ".."):
		return fmt.Errorf("file %q must not start with '..' (reserved for the atomic writer and for leaving the mount)", f)
	}
	for _, seg := range strings.Split(f, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("file %q has an empty path segment", f)
		case seg == "." || seg == "..":
			return fmt.Errorf("file %q must not contain '.' or '..' segments", f)
		case strings.HasPrefix(seg, ".."):
			return fmt.Errorf("file %q: no path segment may start with '..' (reserved for the atomic writer)", f)
		case !isFileSegment(seg):
			return fmt.Errorf("file %q may only use letters, digits, '.', '_', '-' and '/' between directories", f)
		}
	}
	return nil
}

// InvalidError lists every problem found in a value (a mapping, or all of a pod's
// annotations). Its message is what the user sees, e.g. in kubectl when a pod is
// denied.
type InvalidError struct {
	Problems []string
}

// maxReported bounds the problems a message lists, so a hostile or broken annotation
// cannot make a denial (or the webhook's log) megabytes long.
const maxReported = 10

// Error joins the problems, at most maxReported of them.
func (e *InvalidError) Error() string {
	if len(e.Problems) <= maxReported {
		return strings.Join(e.Problems, "; ")
	}
	return fmt.Sprintf("%s; and %d more problems", strings.Join(e.Problems[:maxReported], "; "), len(e.Problems)-maxReported)
}
