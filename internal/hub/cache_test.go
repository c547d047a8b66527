package hub

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLRUExpiresAndEvicts(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	c := newLRU[string, int](3, clk.now)
	c.add("a", 1, time.Minute)
	c.add("b", 2, 10*time.Second)
	c.add("c", 3, time.Minute)
	if v, ok := c.get("a"); !ok || v != 1 { // a is now the most recently used
		t.Fatalf("get a = %d, %v", v, ok)
	}
	c.add("d", 4, time.Minute) // evicts b, the least recently used
	if _, ok := c.get("b"); ok {
		t.Error("b survived eviction")
	}
	for _, k := range []string{"a", "c", "d"} {
		if _, ok := c.get(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	if c.len() != 3 {
		t.Errorf("len %d, want 3", c.len())
	}
	c.add("a", 10, 5*time.Second) // update: new value, new expiry
	clk.add(5 * time.Second)
	if _, ok := c.get("a"); ok {
		t.Error("a did not expire at its ttl")
	}
	if v, ok := c.get("c"); !ok || v != 3 {
		t.Errorf("c = %d, %v before its expiry", v, ok)
	}
	clk.add(time.Minute)
	if _, ok := c.get("c"); ok {
		t.Error("c did not expire")
	}
	c.add("e", 5, 0) // not cached
	if _, ok := c.get("e"); ok {
		t.Error("an entry with ttl 0 was cached")
	}
	c.add("d", 4, 0) // removes d
	if c.len() != 0 {
		t.Errorf("len %d after expiry and removal, want 0", c.len())
	}
}

func TestLRUBound(t *testing.T) {
	c := newLRU[int, int](100, nil)
	for i := range 1000 {
		c.add(i, i, time.Hour)
	}
	if c.len() != 100 {
		t.Errorf("len %d, want the bound 100", c.len())
	}
	if _, ok := c.get(899); ok {
		t.Error("an old entry survived")
	}
	if _, ok := c.get(999); !ok {
		t.Error("the newest entry was evicted")
	}
}

func TestFlight(t *testing.T) {
	var f flight[string, int]
	var runs atomic.Int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	results := make(chan [2]int, 10)
	for range 10 {
		wg.Go(func() {
			v, led, err := f.do(context.Background(), "k", func() int {
				runs.Add(1)
				<-release
				return 42
			})
			if err != nil {
				t.Error(err)
			}
			l := 0
			if led {
				l = 1
			}
			results <- [2]int{v, l}
		})
	}
	time.Sleep(50 * time.Millisecond)
	// A waiter whose context ends gives up; the call goes on.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := f.do(ctx, "k", func() int { t.Error("ran a second call"); return 0 }); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled waiter: %v", err)
	}
	close(release)
	wg.Wait()
	close(results)
	leaders := 0
	for r := range results {
		if r[0] != 42 {
			t.Errorf("value %d", r[0])
		}
		leaders += r[1]
	}
	if runs.Load() != 1 || leaders != 1 {
		t.Errorf("%d runs, %d leaders; want 1 and 1", runs.Load(), leaders)
	}
	// Once done, the next call runs again.
	if v, led, _ := f.do(context.Background(), "k", func() int { return 7 }); v != 7 || !led {
		t.Errorf("after the flight: %d, %v", v, led)
	}
}
