package hub

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// clientsEnv names the file that makes TestHeldWatchClients the client
// process of BenchmarkHeldWatchMemory.
const clientsEnv = "KVINJECT_HUB_BENCH_CLIENTS"

// clientsJob is what the benchmark asks its client process to hold.
type clientsJob struct {
	URL    string   `json:"url"`
	CAPEM  []byte   `json:"caPEM"`
	Tokens []string `json:"tokens"`
	Body   []byte   `json:"body"`
}

// BenchmarkHeldWatchMemory measures what a held watch costs the hub's
// server: N agents (KVINJECT_HUB_BENCH_WATCHES, default 2,000) each hold one
// watch of 2 secrets (the fixture pod's rotating ones) over its own TLS connection, from a separate client
// process (so that only the server's side is in this process), each with its
// own token (one TokenReview cache entry each) for the same pod. It reports the
// Go heap, the goroutine stacks and the RSS of this process per held watch,
// and goroutines per watch, measured after a GC with every watch held, above
// the same figures before the first. The process also holds the emulator and
// the fake API server, which do not grow with held watches.
//
// Run: go test -run '^$' -bench HeldWatchMemory -benchtime=1x ./internal/hub/
// (KVINJECT_HUB_BENCH_HEAPPROFILE=file writes the heap profile with every
// watch held).
func BenchmarkHeldWatchMemory(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("KVINJECT_HUB_BENCH_WATCHES")); err == nil && v > 0 {
		n = v
	}
	b.Run(fmt.Sprintf("watches=%d", n), func(b *testing.B) {
		for range b.N {
			heldWatchMemory(b, n)
		}
	})
}

func heldWatchMemory(b *testing.B, n int) {
	f := newFixture(b, Options{MaxWait: 30 * time.Minute})
	st := authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{hubapi.Audience},
		User: podUser(f.orders.Namespace, f.orders.Spec.ServiceAccountName, f.orders.Name, string(f.orders.UID))}
	exp := time.Now().Add(time.Hour).Unix()
	job := clientsJob{URL: f.url, CAPEM: f.caPEM}
	f.rv.mu.Lock()
	for i := range n {
		tok := jwt(fmt.Sprintf(`{"sub":"agent-%d","exp":%d}`, i, exp))
		f.rv.tokens[tok] = st
		job.Tokens = append(job.Tokens, tok)
	}
	f.rv.mu.Unlock()
	job.Body, _ = json.Marshal(hubapi.WatchRequest{Vault: vaultURL, Objects: []hubapi.Object{
		secretAt("API-KEY", f.version["API-KEY"]), secretAt("DB-PASSWORD", f.version["DB-PASSWORD"]),
	}})
	// A first watch (of a made-up version: refused at once) sets up the
	// vault: its first sweep and version listings are not what is measured.
	warm, _ := json.Marshal(hubapi.WatchRequest{Vault: vaultURL, Objects: []hubapi.Object{secretAt("API-KEY", "00000000000000000000000000000000")}})
	req, _ := http.NewRequest(http.MethodPost, f.url, bytes.NewReader(warm))
	req.Header.Set("Authorization", "Bearer "+job.Tokens[0])
	resp, err := f.client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		b.Fatalf("first watch: %d, want 403 UnknownVersion", resp.StatusCode)
	}
	file := filepath.Join(b.TempDir(), "job.json")
	data, _ := json.Marshal(job)
	if err := os.WriteFile(file, data, 0o600); err != nil {
		b.Fatal(err)
	}

	before := memNow()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHeldWatchClients$", "-test.count=1")
	cmd.Env = append(os.Environ(), clientsEnv+"="+file)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(time.Duration(n)*10*time.Millisecond + time.Minute)
	for testutil.ToFloat64(f.srv.metrics.held) < float64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("%v of %d watches held after %v; the clients said:\n%s", testutil.ToFloat64(f.srv.metrics.held), n, time.Until(deadline), out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // handlers and handshakes done
	// The fake API server records every TokenReview it answered; the real
	// one keeps nothing in the hub.
	f.kube.ClearActions()
	after := memNow()
	if file := os.Getenv("KVINJECT_HUB_BENCH_HEAPPROFILE"); file != "" {
		// What the held watches keep: go tool pprof -sample_index=inuse_space
		if err := writeHeapProfile(file); err != nil {
			b.Error(err)
		}
	}
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	b.ReportMetric(per(after.heap, before.heap), "heap-B/watch")
	b.ReportMetric(per(after.stacks, before.stacks), "stack-B/watch")
	b.ReportMetric(per(after.rss, before.rss), "rss-B/watch")
	b.ReportMetric(per(after.goroutines, before.goroutines), "goroutines/watch")
	b.ReportMetric(float64(before.rss)/(1<<20), "rss-MiB-before")
	b.ReportMetric(float64(after.rss)/(1<<20), "rss-MiB-held")
	b.ReportMetric(float64(after.heap)/(1<<20), "heap-MiB-held")
}

// writeHeapProfile writes the heap profile to file.
func writeHeapProfile(file string) error {
	fh, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(fh); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// memFigures are the process's memory figures.
type memFigures struct{ heap, stacks, rss, goroutines uint64 }

// memNow returns them after a GC.
func memNow() memFigures {
	runtime.GC()
	runtime.GC()
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}, {Name: "/sched/goroutines:goroutines"}}
	rtmetrics.Read(s)
	m := memFigures{heap: s[0].Value.Uint64(), stacks: s[1].Value.Uint64(), goroutines: s[2].Value.Uint64()}
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.rss = kb << 10
			}
		}
	}
	return m
}

// TestHeldWatchClients is BenchmarkHeldWatchMemory's client process: it
// holds one watch per token, each on its own connection, until killed. It
// does nothing in a normal test run.
func TestHeldWatchClients(t *testing.T) {
	file := os.Getenv(clientsEnv)
	if file == "" {
		t.Skip("the client process of BenchmarkHeldWatchMemory")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var job clientsJob
	if err := json.Unmarshal(data, &job); err != nil {
		t.Fatal(err)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(job.CAPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: -1}
	sem := make(chan struct{}, 32) // requests being sent (handshakes) at a time
	for _, tok := range job.Tokens {
		sem <- struct{}{}
		go func() {
			var once sync.Once
			release := func() { once.Do(func() { <-sem }) }
			defer release()
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { release() }})
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, job.URL, bytes.NewReader(job.Body))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			resp, err := tr.RoundTrip(req)
			if err != nil {
				fmt.Println("watch:", err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Printf("answered: %s %s", resp.Status, body)
		}()
	}
	time.Sleep(time.Hour) // until killed
}
