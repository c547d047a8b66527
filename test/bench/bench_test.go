package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// full reports whether KVINJECT_BENCH_SCALE asks for the full-size scenarios.
func full() bool { return os.Getenv("KVINJECT_BENCH_SCALE") == "full" }

// pick returns big at full scale and small otherwise.
func pick[T any](big, small T) T {
	if full() {
		return big
	}
	return small
}

// atExit runs functions after every benchmark, last registered first: what
// benchmarks share (a control plane, built binaries) is set up once.
var atExit struct {
	mu  sync.Mutex
	fns []func()
}

func onExit(fn func()) {
	atExit.mu.Lock()
	defer atExit.mu.Unlock()
	atExit.fns = append(atExit.fns, fn)
}

func TestMain(m *testing.M) {
	code := m.Run()
	atExit.mu.Lock()
	for _, fn := range slices.Backward(atExit.fns) {
		fn()
	}
	atExit.mu.Unlock()
	os.Exit(code)
}

var builds struct {
	mu   sync.Mutex
	dir  string
	bins map[string]string
}

// binary builds a command of this module once per run, the way `make build`
// does (static, stripped), and returns its path.
func binary(b *testing.B, pkg string) string {
	b.Helper()
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if p, ok := builds.bins[pkg]; ok {
		return p
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "kvinject-bench-bin-")
		if err != nil {
			b.Fatal(err)
		}
		builds.dir, builds.bins = dir, map[string]string{}
		onExit(func() { _ = os.RemoveAll(dir) })
	}
	out := filepath.Join(builds.dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "github.com/kvinject/kvinject/"+pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	builds.bins[pkg] = out
	return out
}

// procCPU is a process's user+system CPU time, from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// procStatusKB reads a "Name: N kB" line of /proc/PID/status, such as VmHWM
// (peak RSS) or VmRSS.
func procStatusKB(pid int, name string) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// findProc returns the PID of the one process whose command line satisfies
// match; several matches are an error, because another run's processes (another
// engineer's tests) must never be measured as ours.
func findProc(match func(args []string) bool) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var found []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(raw) == 0 {
			continue
		}
		if match(strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")) {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		return 0, fmt.Errorf("%d matching processes: %v", len(found), found)
	}
	return found[0], nil
}

// percentile returns the q-quantile (nearest rank) of values, sorting them.
func percentile(values []time.Duration, q float64) time.Duration {
	if len(values) == 0 {
		return 0
	}
	slices.Sort(values)
	i := int(q*float64(len(values))+0.5) - 1
	return values[min(max(i, 0), len(values)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
