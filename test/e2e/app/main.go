// Command app is the test application of the real-kubelet tests (test/e2e):
// the app container of their pods. It reads the secret files that kvinject's
// agent wrote and prints what it found, never a value: each file's mode, size
// and SHA-256.
//
//	app check --dir=/app/secrets --file=a.txt --file=b.txt [--token-dir=DIR]
//	app watch --dir=/app/secrets --file=a.txt --file=b.txt [--token-dir=DIR]
//
// Both modes first look at the files once, at the very moment the container
// starts, and exit 1 if any is missing or unreadable: a pod whose app
// container started before its secrets were complete fails visibly. They also
// report whether the workload-identity token directory (--token-dir) or any
// AZURE_* variable is visible to the app, which must never be the case.
//
// check then exits 0 (a Job). watch keeps reading the set, as a consistent
// reader of an atomically swapped directory must (resolve ..data once, read the
// files inside what it resolved, start over if it changed meanwhile), and
// prints a line each time the set it sees changes, so that the test can tell
// when a rotation arrived and that no set was ever torn. It exits 0 on SIGTERM.
//
// Output lines are "key=value" words, one event per line:
//
//	file name=a.txt mode=0444 size=12 sha256=...
//	missing name=b.txt error=...
//	identity tokenDir=absent azureEnv=
//	ready files=2
//	set at=<unix ms> dir=..2026_... a.txt=<sha256> b.txt=<sha256>
//	error at=<unix ms> what=...
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// dataLink is the symlink the agent swaps to publish a new set (see internal/atomicdir).
const dataLink = "..data"

type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || (args[0] != "check" && args[0] != "watch") {
		fmt.Fprintln(os.Stderr, "usage: app check|watch --dir=DIR --file=NAME... [--token-dir=DIR] [--interval=50ms]")
		return 2
	}
	mode := args[0]
	fset := flag.NewFlagSet("app "+mode, flag.ContinueOnError)
	dir := fset.String("dir", "/app/secrets", "the secrets mount")
	tokenDir := fset.String("token-dir", "", "the agent's token directory, which the app must not see")
	interval := fset.Duration("interval", 50*time.Millisecond, "watch: time between two reads of the set")
	var files fileList
	fset.Var(&files, "file", "a file the agent must have written (repeat)")
	if err := fset.Parse(args[1:]); err != nil {
		return 2
	}
	if len(files) == 0 {
		fmt.Fprintln(os.Stderr, "app: no --file given")
		return 2
	}
	sort.Strings(files)

	// First look, before anything else: the files must be there already.
	missing := 0
	for _, name := range files {
		p := filepath.Join(*dir, name)
		fi, err := os.Stat(p)
		var sum string
		if err == nil {
			sum, err = hashFile(p)
		}
		if err != nil {
			missing++
			fmt.Printf("missing name=%s error=%q\n", name, errText(err))
			continue
		}
		fmt.Printf("file name=%s mode=%04o size=%d sha256=%s\n", name, fi.Mode().Perm(), fi.Size(), sum)
	}
	fmt.Printf("identity tokenDir=%s azureEnv=%s\n", presence(*tokenDir), strings.Join(azureEnv(), ","))
	if missing > 0 {
		fmt.Printf("incomplete missing=%d\n", missing)
		return 1
	}
	fmt.Printf("ready files=%d\n", len(files))
	if mode == "check" {
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	watch(ctx, *dir, files, *interval)
	fmt.Println("stopped")
	return 0
}

// watch reads the set every interval and prints it when it changed.
func watch(ctx context.Context, dir string, files []string, interval time.Duration) {
	var last string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		line, err := readSet(dir, files)
		if err != nil {
			fmt.Printf("error at=%d what=%q\n", time.Now().UnixMilli(), errText(err))
		} else if line != last {
			fmt.Printf("set at=%d %s\n", time.Now().UnixMilli(), line)
			last = line
		}
		// Every visible name must also read whole at any moment.
		for _, name := range files {
			if _, err := hashFile(filepath.Join(dir, name)); err != nil {
				fmt.Printf("error at=%d what=%q\n", time.Now().UnixMilli(), "visible "+name+": "+errText(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readSet reads every file from one published set: it resolves ..data, reads
// the files inside the directory it resolved and checks that ..data still
// points there, starting over (a few times) if a new set was published
// meanwhile. It returns "dir=<set> <file>=<sha256> ...".
func readSet(dir string, files []string) (string, error) {
	for attempt := 0; attempt < 5; attempt++ {
		target, err := os.Readlink(filepath.Join(dir, dataLink))
		if err != nil {
			return "", err
		}
		var b strings.Builder
		fmt.Fprintf(&b, "dir=%s", target)
		var readErr error
		for _, name := range files {
			sum, err := hashFile(filepath.Join(dir, target, name))
			if err != nil {
				readErr = err
				break
			}
			fmt.Fprintf(&b, " %s=%s", name, sum)
		}
		again, err := os.Readlink(filepath.Join(dir, dataLink))
		if err != nil {
			return "", err
		}
		if again != target {
			continue // a new set was published while reading: read that one
		}
		if readErr != nil {
			return "", readErr
		}
		return b.String(), nil
	}
	return "", errors.New("the set changed under every one of 5 reads")
}

func hashFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// presence says whether a path exists ("absent" also for an empty path).
func presence(p string) string {
	if p == "" {
		return "absent"
	}
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return "absent"
	} else if err != nil {
		return "unknown:" + errText(err)
	}
	return "present"
}

// azureEnv returns the names (never the values) of AZURE_* variables.
func azureEnv() []string {
	var names []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AZURE_") {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}

func errText(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
