// Package atomicdir writes a set of files into a directory so that readers see
// either the whole previous set or the whole new one, the way kubelet's
// AtomicWriter updates Secret and ConfigMap volumes.
//
// Layout of a target directory after a write:
//
//	..2026_11_23_15_04_05.123456789/   the current set (hidden, timestamped)
//	    connectionstring.txt
//	    db/password
//	..data -> ..2026_11_23_15_04_05.123456789
//	connectionstring.txt -> ..data/connectionstring.txt
//	db -> ..data/db
//
// A write puts every file of the new set into a new timestamped directory, then
// swaps the ..data symlink with one rename(2), which is atomic. The visible names
// are symlinks through ..data, so each of them switches to the new set at that
// instant, and nothing visible is ever truncated or half written. The previous
// timestamped directory is removed after the swap.
//
// A reader that must see several files from the same set resolves ..data once
// (os.Readlink, or opening the directory ..data) and reads the files inside the
// directory it resolved; if that directory disappears under it (a newer set
// replaced it), it starts over. A reader that opens each visible name on its own
// sees every file whole, old or new, but may combine files of two consecutive
// sets, exactly as with Kubernetes Secret volumes.
//
// Files are not fsynced: the target is an in-memory (tmpfs) emptyDir, whose
// content does not outlive the pod, let alone a crash. A write that fails
// (for example with ENOSPC when the volume's size limit is reached) removes
// its partial directory and leaves the current set untouched.
package atomicdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DataLink is the name of the symlink that points at the current set.
const DataLink = "..data"

// tmpLink is the temporary symlink renamed over DataLink.
const tmpLink = "..data_tmp"

// tsLayout is the layout of a timestamped directory's name.
const tsLayout = "..2006_01_02_15_04_05.000000000"

// tsDirRE matches the names of timestamped directories (with an optional
// collision suffix), and nothing a caller may write.
var tsDirRE = regexp.MustCompile(`^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}(-\d+)?$`)

// ErrVolumeFull is wrapped by Write's error when the volume has no space (or
// no inodes) left for the new set. The previous set stays in place.
var ErrVolumeFull = errors.New("the volume is full")

// File is one file of a set.
type File struct {
	// Path is slash-separated and relative to the target directory, e.g.
	// "apikey.txt" or "db/password". No segment may start with "..".
	Path string
	// Data is the file's content.
	Data []byte
	// Mode is the file's permission bits; 0 means the Writer's mode.
	Mode fs.FileMode
}

// Writer writes sets of files into one directory. Its methods are safe for
// concurrent use; writes are serialized.
type Writer struct {
	dir  string
	mode fs.FileMode
	// AllowEmpty lets Write swap in a set without files (the agent's mapping
	// of optional entries whose objects are all absent); otherwise an empty
	// set is refused as a caller's mistake. Set it before the first Write.
	AllowEmpty bool

	mu sync.Mutex
	// writeFile creates one file of a new set; tests replace it to simulate a
	// full volume.
	writeFile func(name string, data []byte, mode fs.FileMode) error
	// now returns the time used to name a new set's directory.
	now func() time.Time
}

// New returns a Writer for dir, which must exist. Files are created with mode
// (permission bits only; the process umask does not apply), unless a File
// sets its own.
func New(dir string, mode fs.FileMode) *Writer {
	return &Writer{dir: dir, mode: mode.Perm(), writeFile: writeFile, now: time.Now}
}

// Dir returns the target directory.
func (w *Writer) Dir() string { return w.dir }

// ValidatePath checks that p can be a file of a set: relative, clean,
// slash-separated, and without segments that start with "..".
func ValidatePath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty file name")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("file %q must be relative", p)
	case path.Clean(p) != p:
		return fmt.Errorf("file %q must be a clean path", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("file %q contains a NUL byte", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || strings.HasPrefix(seg, "..") {
			return fmt.Errorf("file %q: names starting with '..' are reserved for the atomic writer", p)
		}
	}
	return nil
}

// validateSet checks every path and that no file is also a directory of another.
func validateSet(files []File) error {
	seen := make(map[string]bool, len(files))
	for _, f := range files {
		if err := ValidatePath(f.Path); err != nil {
			return err
		}
		if seen[f.Path] {
			return fmt.Errorf("file %q is given twice", f.Path)
		}
		seen[f.Path] = true
	}
	for _, f := range files {
		for p := path.Dir(f.Path); p != "."; p = path.Dir(p) {
			if seen[p] {
				return fmt.Errorf("file %q cannot also be the directory of %q", p, f.Path)
			}
		}
	}
	return nil
}

// topLevel returns the sorted, distinct first segments of the files' paths:
// the names that are visible in the target directory.
func topLevel(files []File) []string {
	var names []string
	for _, f := range files {
		top, _, _ := strings.Cut(f.Path, "/")
		names = append(names, top)
	}
	sort.Strings(names)
	return slices.Compact(names)
}

// Write atomically replaces the directory's current set with files. The set
// is swapped in only when every file is written; on error the previous set
// stays in place, untouched, and the partial new one is removed. An error
// caused by a full volume wraps ErrVolumeFull.
func (w *Writer) Write(files []File) error {
	if len(files) == 0 && !w.AllowEmpty {
		return fmt.Errorf("atomicdir: refusing to write an empty set into %s", w.dir)
	}
	if err := validateSet(files); err != nil {
		return fmt.Errorf("atomicdir: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()

	visible := topLevel(files)
	// Never replace something the writer did not create.
	for _, name := range visible {
		fi, err := os.Lstat(filepath.Join(w.dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("atomicdir: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if t, err := os.Readlink(filepath.Join(w.dir, name)); err == nil && t == filepath.Join(DataLink, name) {
				continue
			}
		}
		return fmt.Errorf("atomicdir: %s exists and is not a link made by the writer; refusing to replace it", filepath.Join(w.dir, name))
	}

	newDir, err := w.makeSetDir()
	if err != nil {
		return w.failed("creating the directory of the new set", err)
	}
	abort := func(what string, err error) error {
		_ = os.RemoveAll(filepath.Join(w.dir, newDir))
		_ = os.Remove(filepath.Join(w.dir, tmpLink))
		return w.failed(what, err)
	}
	for _, f := range files {
		name := filepath.Join(w.dir, newDir, filepath.FromSlash(f.Path))
		if d := path.Dir(f.Path); d != "." {
			if err := mkdirAll(filepath.Join(w.dir, newDir), filepath.FromSlash(d)); err != nil {
				return abort("creating the directory of "+f.Path, err)
			}
		}
		mode := w.mode
		if f.Mode != 0 {
			mode = f.Mode.Perm()
		}
		if err := w.writeFile(name, f.Data, mode); err != nil {
			return abort(fmt.Sprintf("writing %s (%d bytes)", f.Path, len(f.Data)), err)
		}
	}

	// Swap: a temporary link renamed over ..data.
	tmp := filepath.Join(w.dir, tmpLink)
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return abort("removing a stale "+tmpLink, err)
	}
	if err := os.Symlink(newDir, tmp); err != nil {
		return abort("linking the new set", err)
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, DataLink)); err != nil {
		return abort("swapping "+DataLink, err)
	}

	// From here on the new set is current; what remains is housekeeping, and a
	// failure only leaves something stale behind (or a new name not yet visible).
	var errs []error
	for _, name := range visible {
		link := filepath.Join(w.dir, name)
		want := filepath.Join(DataLink, name)
		if got, err := os.Readlink(link); err == nil && got == want {
			continue
		}
		if err := os.Symlink(want, link); err != nil {
			errs = append(errs, err)
		}
	}
	if err := w.removeStale(newDir, visible); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return w.failed("finishing the swap", err)
	}
	return nil
}

// makeSetDir creates a new timestamped directory and returns its name.
func (w *Writer) makeSetDir() (string, error) {
	base := w.now().UTC().Format(tsLayout)
	for i := 0; ; i++ {
		name := base
		if i > 0 {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		err := os.Mkdir(filepath.Join(w.dir, name), 0o755)
		if errors.Is(err, fs.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			return "", err
		}
		return name, traversable(filepath.Join(w.dir, name))
	}
}

// mkdirAll creates rel (and its parents) under root with mode 0755.
func mkdirAll(root, rel string) error {
	p := root
	for _, seg := range strings.Split(rel, string(filepath.Separator)) {
		p = filepath.Join(p, seg)
		if err := os.Mkdir(p, 0o755); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return err
		}
		if err := traversable(p); err != nil {
			return err
		}
	}
	return nil
}

// traversable gives a new directory mode 0755 (Mkdir honours the umask, and readers
// other than the owner need to traverse) while keeping the setgid bit it inherited:
// kubelet marks an fsGroup volume setgid so that every file created in it belongs
// to the pod's fsGroup, which is how group-readable files reach the app containers.
func traversable(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	return os.Chmod(dir, 0o755|fi.Mode()&os.ModeSetgid)
}

// removeStale removes timestamped directories other than current, visible
// links into ..data whose names are not in visible, and a leftover temporary
// link.
func (w *Writer) removeStale(current string, visible []string) error {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == current || name == DataLink:
		case tsDirRE.MatchString(name) && e.IsDir():
			errs = append(errs, os.RemoveAll(filepath.Join(w.dir, name)))
		case name == tmpLink:
			errs = append(errs, os.Remove(filepath.Join(w.dir, name)))
		case e.Type()&fs.ModeSymlink != 0 && !slices.Contains(visible, name):
			if target, err := os.Readlink(filepath.Join(w.dir, name)); err == nil && strings.HasPrefix(target, DataLink+string(filepath.Separator)) {
				errs = append(errs, os.Remove(filepath.Join(w.dir, name)))
			}
		}
	}
	return errors.Join(errs...)
}

// failed wraps an error of a write, marking a full volume.
func (w *Writer) failed(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("atomicdir: %s in %s: %w (%w); the previous files stay in place", what, w.dir, ErrVolumeFull, err)
	}
	return fmt.Errorf("atomicdir: %s in %s: %w; the previous files stay in place", what, w.dir, err)
}

// writeFile creates name exclusively with exactly mode and writes data.
func writeFile(name string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		// The umask may have cleared bits of mode.
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Check reports whether dir holds a complete set: ..data points at an existing
// timestamped directory, every top-level name of that set is visible (a link
// into ..data) and every visible link into ..data resolves. A set without
// files (Writer.AllowEmpty) is complete. It is the agent's startup probe.
func Check(dir string) error {
	target, err := os.Readlink(filepath.Join(dir, DataLink))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no complete set yet: %s does not exist", filepath.Join(dir, DataLink))
		}
		return err
	}
	if !tsDirRE.MatchString(target) {
		return fmt.Errorf("%s points at %q, not at a set written by the agent", filepath.Join(dir, DataLink), target)
	}
	fi, err := os.Stat(filepath.Join(dir, target))
	if err != nil {
		return fmt.Errorf("%s points at a missing set: %w", filepath.Join(dir, DataLink), err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s points at %s, which is not a directory", filepath.Join(dir, DataLink), target)
	}
	inSet, err := os.ReadDir(filepath.Join(dir, target))
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	visible := 0
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 || e.Name() == DataLink {
			continue
		}
		link := filepath.Join(dir, e.Name())
		if t, err := os.Readlink(link); err != nil || !strings.HasPrefix(t, DataLink+string(filepath.Separator)) {
			continue
		}
		if _, err := os.Stat(link); err != nil {
			return fmt.Errorf("%s does not resolve: %w", link, err)
		}
		visible++
	}
	if visible == 0 && len(inSet) > 0 {
		return fmt.Errorf("%s has no visible files yet", dir)
	}
	for _, e := range inSet {
		link := filepath.Join(dir, e.Name())
		if t, err := os.Readlink(link); err != nil || t != filepath.Join(DataLink, e.Name()) {
			return fmt.Errorf("%s is not visible yet (no link into %s)", link, DataLink)
		}
	}
	return nil
}

// Current returns the name of the current set's directory (the target of
// ..data), or "" when there is none.
func Current(dir string) string {
	target, err := os.Readlink(filepath.Join(dir, DataLink))
	if err != nil {
		return ""
	}
	return target
}
