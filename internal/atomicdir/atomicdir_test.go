package atomicdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// tree describes a directory: name -> "link:<target>", "dir" or "file:<mode>:<content>".
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		// Timestamps differ from run to run.
		key := rel
		if first, rest, _ := strings.Cut(rel, string(filepath.Separator)); tsDirRE.MatchString(first) {
			key = filepath.Join("<set>", rest)
			if rest == "" {
				key = "<set>"
			}
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if tsDirRE.MatchString(target) {
				target = "<set>"
			}
			got[key] = "link:" + target
		case d.IsDir():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			got[key] = fmt.Sprintf("dir:%04o", fi.Mode().Perm())
		default:
			fi, err := d.Info()
			if err != nil {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			got[key] = fmt.Sprintf("file:%04o:%s", fi.Mode().Perm(), b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// memDir returns a new directory on tmpfs (/dev/shm) when there is one, like
// the pod's in-memory emptyDir, else in the test's temporary directory. It is
// removed when the test ends.
func memDir(t *testing.T) string {
	t.Helper()
	if dir, err := os.MkdirTemp("/dev/shm", "kvinject-atomicdir-test-"); err == nil {
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		return dir
	}
	return t.TempDir()
}

func TestWriteLayout(t *testing.T) {
	dir := t.TempDir()
	w := New(dir, 0o440)
	first := []File{
		{Path: "connectionstring.txt", Data: []byte("one")},
		{Path: "db/password", Data: []byte("two")},
		{Path: "db/user", Data: []byte("three")},
		{Path: "old.txt", Data: []byte("four")},
	}
	if err := w.Write(first); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"<set>":                      "dir:0755",
		"<set>/connectionstring.txt": "file:0440:one",
		"<set>/db":                   "dir:0755",
		"<set>/db/password":          "file:0440:two",
		"<set>/db/user":              "file:0440:three",
		"<set>/old.txt":              "file:0440:four",
		"..data":                     "link:<set>",
		"connectionstring.txt":       "link:..data/connectionstring.txt",
		"db":                         "link:..data/db",
		"old.txt":                    "link:..data/old.txt",
	}
	if diff := cmp.Diff(want, tree(t, dir)); diff != "" {
		t.Fatalf("after the first write (-want +got):\n%s", diff)
	}
	firstSet := Current(dir)

	// The second set drops old.txt and changes a value.
	second := []File{
		{Path: "connectionstring.txt", Data: []byte("one-v2")},
		{Path: "db/password", Data: []byte("two")},
		{Path: "db/user", Data: []byte("three")},
	}
	w.now = func() time.Time { return time.Now().Add(time.Second) }
	if err := w.Write(second); err != nil {
		t.Fatal(err)
	}
	want = map[string]string{
		"<set>":                      "dir:0755",
		"<set>/connectionstring.txt": "file:0440:one-v2",
		"<set>/db":                   "dir:0755",
		"<set>/db/password":          "file:0440:two",
		"<set>/db/user":              "file:0440:three",
		"..data":                     "link:<set>",
		"connectionstring.txt":       "link:..data/connectionstring.txt",
		"db":                         "link:..data/db",
	}
	if diff := cmp.Diff(want, tree(t, dir)); diff != "" {
		t.Fatalf("after the second write (-want +got):\n%s", diff)
	}
	if Current(dir) == firstSet {
		t.Fatalf("..data still points at %s", firstSet)
	}
	if _, err := os.Stat(filepath.Join(dir, firstSet)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the previous set %s was not removed: %v", firstSet, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "db", "password"))
	if err != nil || string(b) != "two" {
		t.Fatalf("reading through the visible link: %q, %v", b, err)
	}
}

func TestModes(t *testing.T) {
	// The umask must not change the modes.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for _, mode := range []fs.FileMode{0o400, 0o440, 0o444, 0o640, 0o600} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			dir := t.TempDir()
			if err := New(dir, mode).Write([]File{{Path: "a", Data: []byte("x")}, {Path: "d/b", Data: []byte("y")}}); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"a", "d/b"} {
				fi, err := os.Stat(filepath.Join(dir, p))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != mode {
					t.Errorf("%s: mode %04o, want %04o", p, fi.Mode().Perm(), mode)
				}
			}
			fi, err := os.Stat(filepath.Join(dir, "d"))
			if err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("directory d: %v, %v; want mode 0755", fi.Mode(), err)
			}
		})
	}
}

// TestPerFileModes: a file's own mode wins over the writer's.
func TestPerFileModes(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	if err := New(dir, 0o444).Write([]File{{Path: "a", Data: []byte("x")}, {Path: "d/b", Data: []byte("y"), Mode: 0o400}}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{"a": 0o444, "d/b": 0o400} {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %04o", p, fi.Mode(), err, want)
		}
	}
}

func TestRefusedSets(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []File
		want  string
	}{
		{"empty", nil, "empty set"},
		{"dot-dot prefix", []File{{Path: "..data"}}, "reserved"},
		{"dot-dot hidden", []File{{Path: "..x"}}, "reserved"},
		{"dot-dot nested", []File{{Path: "a/..b"}}, "reserved"},
		{"parent", []File{{Path: "a/../../etc"}}, "clean"},
		{"absolute", []File{{Path: "/etc/passwd"}}, "relative"},
		{"empty name", []File{{Path: ""}}, "empty file name"},
		{"dot", []File{{Path: "./a"}}, "clean"},
		{"trailing slash", []File{{Path: "a/"}}, "clean"},
		{"twice", []File{{Path: "a"}, {Path: "a"}}, "twice"},
		{"file and directory", []File{{Path: "db"}, {Path: "db/password"}}, "directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			err := New(dir, 0o444).Write(tc.files)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				t.Fatalf("a refused set left %d entries behind", len(entries))
			}
		})
	}
}

func TestRefusesToReplaceForeignFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(dir string) error
	}{
		{"regular file", func(dir string) error { return os.WriteFile(filepath.Join(dir, "a"), []byte("mine"), 0o644) }},
		{"directory", func(dir string) error { return os.Mkdir(filepath.Join(dir, "a"), 0o755) }},
		{"foreign link", func(dir string) error { return os.Symlink("/etc/hostname", filepath.Join(dir, "a")) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := tc.setup(dir); err != nil {
				t.Fatal(err)
			}
			before := tree(t, dir)
			err := New(dir, 0o444).Write([]File{{Path: "a", Data: []byte("x")}})
			if err == nil || !strings.Contains(err.Error(), "not a link made by the writer") {
				t.Fatalf("error %v", err)
			}
			if diff := cmp.Diff(before, tree(t, dir)); diff != "" {
				t.Fatalf("the directory changed (-before +after):\n%s", diff)
			}
		})
	}
}

func TestVolumeFull(t *testing.T) {
	for _, tc := range []struct {
		name   string
		failAt int // the n-th file written in the second set fails
		err    error
		full   bool
	}{
		{"first file ENOSPC", 1, syscall.ENOSPC, true},
		{"last file ENOSPC", 3, syscall.ENOSPC, true},
		{"quota", 2, syscall.EDQUOT, true},
		{"other error", 2, syscall.EIO, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := New(dir, 0o440)
			good := []File{{Path: "a", Data: []byte("a1")}, {Path: "b", Data: []byte("b1")}, {Path: "n/c", Data: []byte("c1")}}
			if err := w.Write(good); err != nil {
				t.Fatal(err)
			}
			before := tree(t, dir)

			n := 0
			w.writeFile = func(name string, data []byte, mode fs.FileMode) error {
				n++
				if n == tc.failAt {
					// Like a real full tmpfs: part of the data made it.
					_ = writeFile(name, data[:1], mode)
					return &fs.PathError{Op: "write", Path: name, Err: tc.err}
				}
				return writeFile(name, data, mode)
			}
			w.now = func() time.Time { return time.Now().Add(time.Hour) }
			err := w.Write([]File{{Path: "a", Data: []byte("SECRET-a2")}, {Path: "b", Data: []byte("SECRET-b2")}, {Path: "n/c", Data: []byte("SECRET-c2")}})
			if err == nil {
				t.Fatal("no error")
			}
			if got := errors.Is(err, ErrVolumeFull); got != tc.full {
				t.Fatalf("errors.Is(%v, ErrVolumeFull) = %v, want %v", err, got, tc.full)
			}
			if !strings.Contains(err.Error(), "the previous files stay in place") {
				t.Errorf("error %q does not say the previous files stay", err)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error %q contains file content", err)
			}
			if diff := cmp.Diff(before, tree(t, dir)); diff != "" {
				t.Fatalf("a failed write changed the directory (-before +after):\n%s", diff)
			}
			if err := Check(dir); err != nil {
				t.Fatalf("Check after a failed write: %v", err)
			}

			// The next write succeeds once there is space again.
			w.writeFile = writeFile
			w.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
			if err := w.Write([]File{{Path: "a", Data: []byte("a3")}, {Path: "b", Data: []byte("b3")}, {Path: "n/c", Data: []byte("c3")}}); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "n", "c")); string(b) != "c3" {
				t.Fatalf("n/c = %q after recovery", b)
			}
		})
	}
}

func TestRemovesLeftovers(t *testing.T) {
	dir := t.TempDir()
	// A crashed earlier write left a partial set and a temporary link.
	stale := filepath.Join(dir, "..2020_01_02_03_04_05.000000001")
	if err := os.MkdirAll(filepath.Join(stale, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..2020_01_02_03_04_05.000000001", filepath.Join(dir, tmpLink)); err != nil {
		t.Fatal(err)
	}
	// Something that only looks similar is left alone.
	if err := os.WriteFile(filepath.Join(dir, "..2020_not_a_set"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := New(dir, 0o444).Write([]File{{Path: "a", Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"<set>":            "dir:0755",
		"<set>/a":          "file:0444:x",
		"..data":           "link:<set>",
		"a":                "link:..data/a",
		"..2020_not_a_set": "file:0644:",
	}
	if diff := cmp.Diff(want, tree(t, dir)); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	if err := Check(dir); err == nil || !strings.Contains(err.Error(), "no complete set yet") {
		t.Fatalf("Check of an empty directory: %v", err)
	}
	w := New(dir, 0o444)
	if err := w.Write([]File{{Path: "a", Data: []byte("x")}, {Path: "d/b", Data: []byte("y")}}); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err != nil {
		t.Fatalf("Check after a write: %v", err)
	}

	for _, tc := range []struct {
		name   string
		breakf func(dir string) error
		want   string
	}{
		{"missing set", func(dir string) error { return os.RemoveAll(filepath.Join(dir, Current(dir))) }, "missing set"},
		{"foreign target", func(dir string) error {
			if err := os.Remove(filepath.Join(dir, DataLink)); err != nil {
				return err
			}
			return os.Symlink("/tmp", filepath.Join(dir, DataLink))
		}, "not at a set"},
		{"missing file", func(dir string) error { return os.Remove(filepath.Join(dir, Current(dir), "a")) }, "does not resolve"},
		{"file not yet visible", func(dir string) error { return os.Remove(filepath.Join(dir, "d")) }, "is not visible yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := New(dir, 0o444).Write([]File{{Path: "a", Data: []byte("x")}, {Path: "d/b", Data: []byte("y")}}); err != nil {
				t.Fatal(err)
			}
			if err := tc.breakf(dir); err != nil {
				t.Fatal(err)
			}
			if err := Check(dir); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestEmptySet: with AllowEmpty a set without files is swapped in like any
// other (removing the previous set's files), and Check finds it complete.
func TestEmptySet(t *testing.T) {
	dir := t.TempDir()
	w := New(dir, 0o444)
	w.AllowEmpty = true
	if err := w.Write([]File{{Path: "a", Data: []byte("x")}, {Path: "d/b", Data: []byte("y")}}); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(nil); err != nil {
		t.Fatalf("Write of an empty set: %v", err)
	}
	want := map[string]string{"<set>": "dir:0755", "..data": "link:<set>"}
	if diff := cmp.Diff(want, tree(t, dir)); diff != "" {
		t.Fatalf("after the empty set (-want +got):\n%s", diff)
	}
	if err := Check(dir); err != nil {
		t.Fatalf("Check of an empty set: %v", err)
	}
	if err := w.Write([]File{{Path: "a", Data: []byte("z")}}); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err != nil {
		t.Fatalf("Check after the empty set was replaced: %v", err)
	}
}

// TestConcurrentReaders swaps hundreds of sets while readers read. A reader that
// resolves ..data once never sees files of two sets; a reader of a single visible
// name never sees a partial or empty file.
func TestConcurrentReaders(t *testing.T) {
	dir := memDir(t)
	w := New(dir, 0o444)
	paths := []string{"a.txt", "b.txt", "db/password", "db/user", "z"}
	set := func(gen int) []File {
		var fs []File
		for _, p := range paths {
			// Values of different lengths, so that a torn read would show.
			fs = append(fs, File{Path: p, Data: []byte(fmt.Sprintf("gen=%d;file=%s;%s", gen, p, strings.Repeat("x", gen%97)))})
		}
		return fs
	}
	if err := w.Write(set(0)); err != nil {
		t.Fatal(err)
	}
	const swaps = 1000
	var (
		done       atomic.Bool
		wg         sync.WaitGroup
		consistent atomic.Int64
		restarts   atomic.Int64
		singles    atomic.Int64
		errMu      sync.Mutex
		failures   []string
	)
	fail := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	parse := func(b []byte, p string) (int, bool) {
		var gen int
		s := string(b)
		head, pad, ok := strings.Cut(s, ";"+"file="+p+";")
		if !ok {
			return 0, false
		}
		if _, err := fmt.Sscanf(head, "gen=%d", &gen); err != nil {
			return 0, false
		}
		return gen, pad == strings.Repeat("x", gen%97)
	}
	// Set readers.
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				runtime.Gosched()
				target, err := os.Readlink(filepath.Join(dir, DataLink))
				if err != nil {
					fail("readlink: %v", err)
					return
				}
				gens := map[int]bool{}
				restart := false
				for _, p := range paths {
					b, err := os.ReadFile(filepath.Join(dir, target, p))
					if errors.Is(err, fs.ErrNotExist) {
						restart = true // a newer set replaced this one
						break
					}
					if err != nil {
						fail("read %s: %v", p, err)
						return
					}
					gen, ok := parse(b, p)
					if !ok {
						fail("torn file %s: %q", p, b)
						return
					}
					gens[gen] = true
				}
				if restart {
					restarts.Add(1)
					continue
				}
				if len(gens) != 1 {
					fail("a set mixes generations %v", gens)
					return
				}
				consistent.Add(1)
			}
		}()
	}
	// Single-file readers through the visible names.
	for _, p := range []string{"db/password"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				runtime.Gosched()
				b, err := os.ReadFile(filepath.Join(dir, p))
				if errors.Is(err, fs.ErrNotExist) {
					continue // resolved ..data just before the old set was removed
				}
				if err != nil {
					fail("read %s: %v", p, err)
					return
				}
				if _, ok := parse(b, p); !ok {
					fail("torn file %s: %q", p, b)
					return
				}
				singles.Add(1)
			}
		}()
	}
	for gen := 1; gen <= swaps; gen++ {
		if err := w.Write(set(gen)); err != nil {
			t.Fatal(err)
		}
	}
	done.Store(true)
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	// One set, ..data, a.txt, b.txt, db and z.
	if len(names) != 6 {
		t.Errorf("after %d swaps the directory holds %v", swaps, names)
	}
	t.Logf("%d swaps: %d consistent set reads (%d restarts), %d single-file reads", swaps, consistent.Load(), restarts.Load(), singles.Load())
	if consistent.Load() == 0 {
		t.Error("no reader completed a set")
	}
}

// TestFSGroupVolume: in a volume kubelet prepared for an fsGroup (group-owned,
// setgid), every file and directory of every set belongs to that group, so the
// app containers, which run with the fsGroup, can read group-readable files.
func TestFSGroupVolume(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the volume another group")
	}
	const fsGroup = 4242
	dir := t.TempDir()
	if err := os.Chown(dir, -1, fsGroup); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	w := New(dir, 0o440)
	for round := range 2 {
		if err := w.Write([]File{{Path: "a.txt", Data: []byte("a")}, {Path: "db/password", Data: []byte("p")}}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, p := range []string{"..data", "..data/a.txt", "..data/db", "..data/db/password"} {
			fi, err := os.Stat(filepath.Join(dir, p))
			if err != nil {
				t.Fatal(err)
			}
			if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != fsGroup {
				t.Errorf("round %d: %s has group %d, want the fsGroup %d", round, p, gid, fsGroup)
			}
			if fi.IsDir() && fi.Mode()&os.ModeSetgid == 0 {
				t.Errorf("round %d: directory %s lost the setgid bit", round, p)
			}
		}
	}
}
