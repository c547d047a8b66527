package vaults

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// BenchmarkWatchMemory measures the heap this package keeps per open watch:
// 10,000 watches of 3 secrets each (the 20,000 agents x 3 secrets shape), all
// of the same 3 secrets. Run: go test -run '^$' -bench WatchMemory ./internal/hub/vaults/
func BenchmarkWatchMemory(b *testing.B) {
	const n = 10_000
	e := newEnv(b, envOpts{opts: Options{SweepInterval: time.Hour}})
	objs := []hubapi.Object{
		obj("api-key", e.set("api-key", past)),
		obj("db-password", e.set("db-password", past)),
		obj("tls-key", e.set("tls-key", past)),
	}
	e.watch(objs...).Close() // the first sweep
	b.ResetTimer()
	var perWatch float64
	for range b.N {
		ws := make([]*Watch, 0, n)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range n {
			// A copy, as the server decodes a request per agent.
			req := make([]hubapi.Object, len(objs))
			for i, o := range objs {
				req[i] = hubapi.Object{Kind: o.Kind, Name: string([]byte(o.Name)), Version: string([]byte(o.Version))}
			}
			w, err := e.hub.Watch(b.Context(), e.url, req)
			if err != nil {
				b.Fatal(err)
			}
			ws = append(ws, w)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perWatch = float64(after.HeapAlloc-before.HeapAlloc) / n
		b.StopTimer()
		for _, w := range ws {
			w.Close()
		}
		b.StartTimer()
		runtime.KeepAlive(ws)
	}
	b.ReportMetric(perWatch, "heap-B/watch")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/watch")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkSweep measures one sweep of a vault of 1,000 secrets, 10 of them
// watched, nothing changed: its Key Vault calls and time (emulator on
// loopback, no latency).
func BenchmarkSweep(b *testing.B) {
	e := newEnv(b, envOpts{opts: Options{SweepInterval: time.Hour, ReadBudget: 1e6}})
	var objs []hubapi.Object
	for i := range 1000 {
		name := fmt.Sprintf("secret-%04d", i)
		v := e.set(name, past)
		if i%100 == 0 {
			objs = append(objs, obj(name, v))
		}
	}
	e.watch(objs...)
	before := e.calls("list_secrets 200") + e.calls("list_versions 200")
	b.ResetTimer()
	for range b.N {
		e.sweep()
	}
	b.StopTimer()
	calls := e.calls("list_secrets 200") + e.calls("list_versions 200") - before
	b.ReportMetric(float64(calls)/float64(b.N), "kv-calls/sweep")
}

// BenchmarkWave measures releasing a change to 10,000 watchers of one secret
// with an unlimited budget: the cost of the index and the pacer per
// notification.
func BenchmarkWave(b *testing.B) {
	const n = 10_000
	e := newEnv(b, envOpts{opts: Options{SweepInterval: time.Hour, ReadBudget: 1e9}})
	held := e.set("s", past)
	e.watch(obj("s", held)).Close()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		ws := make([]*Watch, n)
		for j := range ws {
			w, err := e.hub.Watch(b.Context(), e.url, []hubapi.Object{obj("s", held)})
			if err != nil {
				b.Fatal(err)
			}
			ws[j] = w
		}
		next := e.set("s", past.Add(time.Duration(i+1)*time.Second))
		b.StartTimer()
		e.sweep()
		for _, w := range ws {
			if got := <-w.Changed(); got[0].Version != next {
				b.Fatalf("batch %v", got)
			}
		}
		held = next
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/notification")
}
