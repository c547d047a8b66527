package hub

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// lru is a bounded cache whose entries expire: at most max entries, the least
// recently used evicted first. It is safe for concurrent use.
type lru[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front: most recently used
	items map[K]*list.Element
	now   func() time.Time
}

type lruEntry[K comparable, V any] struct {
	key     K
	val     V
	expires time.Time
}

// newLRU returns an empty cache of at most max entries; now is the clock
// (time.Now when nil).
func newLRU[K comparable, V any](max int, now func() time.Time) *lru[K, V] {
	if now == nil {
		now = time.Now
	}
	return &lru[K, V]{max: max, ll: list.New(), items: map[K]*list.Element{}, now: now}
}

// get returns the value of key if it is cached and not expired.
func (c *lru[K, V]) get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.items[key]
	if !ok {
		return zero, false
	}
	e := el.Value.(*lruEntry[K, V])
	if !c.now().Before(e.expires) {
		c.ll.Remove(el)
		delete(c.items, key)
		return zero, false
	}
	c.ll.MoveToFront(el)
	return e.val, true
}

// add caches val under key for ttl; a ttl of zero or less removes key.
func (c *lru[K, V]) add(key K, val V, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		if ttl <= 0 {
			c.ll.Remove(el)
			delete(c.items, key)
			return
		}
		e := el.Value.(*lruEntry[K, V])
		e.val, e.expires = val, c.now().Add(ttl)
		c.ll.MoveToFront(el)
		return
	}
	if ttl <= 0 || c.max <= 0 {
		return
	}
	for c.ll.Len() >= c.max {
		oldest := c.ll.Back()
		c.ll.Remove(oldest)
		delete(c.items, oldest.Value.(*lruEntry[K, V]).key)
	}
	c.items[key] = c.ll.PushFront(&lruEntry[K, V]{key: key, val: val, expires: c.now().Add(ttl)})
}

// len returns the number of entries, expired ones included until they are
// looked up or evicted.
func (c *lru[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// flight runs one call per key at a time: callers asking for a key while a
// call for it runs wait for that call's result instead of starting their own
// (what golang.org/x/sync/singleflight does, without its dependency).
type flight[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*flightCall[V]
}

type flightCall[V any] struct {
	done chan struct{}
	val  V
}

// do returns fn's result for key, running fn only if no call for key is under
// way; led reports whether this caller ran it. A waiting caller whose ctx ends
// gets ctx's error; the call itself goes on for the others (fn must bound its
// own time).
func (f *flight[K, V]) do(ctx context.Context, key K, fn func() V) (val V, led bool, err error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[K]*flightCall[V]{}
	}
	if c, ok := f.calls[key]; ok {
		f.mu.Unlock()
		select {
		case <-c.done:
			return c.val, false, nil
		case <-ctx.Done():
			var zero V
			return zero, false, ctx.Err()
		}
	}
	c := &flightCall[V]{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.calls, key)
		f.mu.Unlock()
		close(c.done)
	}()
	c.val = fn()
	return c.val, true, nil
}
