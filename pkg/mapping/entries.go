package mapping

import (
	"fmt"
	"strings"
)

// Entry is one file the agent writes: the latest (or a pinned) version of a
// Key Vault secret, at a path relative to the mount.
//
// The written grammar is "<file>=<secret-name>[@<version>]"; a bare
// "<secret-name>[@<version>]" writes a file named after the secret. Key Vault
// names cannot contain ':' or ';', which keeps "<file>=<kind>:<name>;<option>=..."
// free for typed entries (certificates, keys, encodings).
type Entry struct {
	// File is the path relative to the mount, e.g. "connectionstring.txt" or "db/password".
	File string
	// Name is the Key Vault secret name (1-127 of [0-9A-Za-z-]).
	Name string
	// Version is a pinned 32-hex-character version; empty means the latest.
	Version string
}

// String returns the entry in its canonical written form.
func (e Entry) String() string {
	s := e.File + "=" + e.Name
	if e.Version != "" {
		s += "@" + e.Version
	}
	return s
}

// isSecretName: Key Vault's rule, 1-127 of [0-9A-Za-z-].
func isSecretName(s string) bool {
	return len(s) >= 1 && len(s) <= 127 && allBytes(s, func(c byte) bool { return isAlnum(c) || c == '-' })
}

// isVersion: 32 hexadecimal characters.
func isVersion(s string) bool {
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

// maxEntryLen is the longest valid entry: a file, '=', a secret name, '@' and a version.
const maxEntryLen = maxFileLen + 1 + 127 + 1 + 32

// ParseEntries parses a mapping: entries separated by commas or newlines, blank
// entries ignored. It reports every bad entry, not just the first.
func ParseEntries(s string) ([]Entry, error) {
	var (
		entries []Entry
		probs   []string
		files   = map[string]string{}
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
		if prev, dup := files[e.File]; dup {
			probs = append(probs, fmt.Sprintf("entry %q: file %q is already used by entry %q", raw, e.File, prev))
			continue
		}
		files[e.File] = raw
		entries = append(entries, e)
	}
	probs = append(probs, nestedFileProblems(entries)...)
	if len(probs) == 0 && len(entries) == 0 {
		probs = append(probs, "no entries: write <file>=<secret-name>[@<version>], separated by commas or newlines")
	}
	if len(probs) > 0 {
		return nil, &InvalidError{Problems: probs}
	}
	return entries, nil
}

// nestedFileProblems reports files that would be both a file and a directory,
// such as "db" and "db/password".
func nestedFileProblems(entries []Entry) []string {
	files := make(map[string]bool, len(entries))
	for _, e := range entries {
		files[e.File] = true
	}
	var probs []string
	for _, e := range entries {
		for i := range len(e.File) {
			if e.File[i] == '/' && files[e.File[:i]] {
				probs = append(probs, fmt.Sprintf("file %q cannot also be the directory of %q", e.File[:i], e.File))
			}
		}
	}
	return probs
}

// ParseEntry parses one "<file>=<secret-name>[@<version>]" entry.
func ParseEntry(raw string) (Entry, error) {
	file, ref, hasFile := strings.Cut(raw, "=")
	if !hasFile {
		ref = raw
	}
	file, ref = strings.TrimSpace(file), strings.TrimSpace(ref)
	name, version, hasVersion := strings.Cut(ref, "@")
	if !hasFile {
		file = name
	}
	e := Entry{File: file, Name: name, Version: strings.ToLower(version)}
	switch {
	case strings.ContainsAny(name, ":;"):
		return Entry{}, fmt.Errorf("entry %q: typed entries (%q) are not supported; write <file>=<secret-name>[@<version>]", raw, name)
	case !isSecretName(name):
		return Entry{}, fmt.Errorf("entry %q: secret name %q must be 1-127 letters, digits or hyphens; write <file>=<secret-name>[@<version>]", raw, name)
	case hasVersion && !isVersion(version):
		return Entry{}, fmt.Errorf("entry %q: version %q must be 32 hexadecimal characters (omit @<version> for the latest)", raw, version)
	}
	if err := validateFile(file); err != nil {
		return Entry{}, fmt.Errorf("entry %q: %v", raw, err)
	}
	return e, nil
}

// validateFile checks that a file path stays inside the mount and cannot collide
// with the agent's own "..data" and timestamped directories.
func validateFile(f string) error {
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
