package main

import (
	"strings"
	"testing"
)

// TestListenReusePort checks --bind-reuse-port: two listeners share an
// address with it, and without it another one is refused, naming the flag.
func TestListenReusePort(t *testing.T) {
	a, err := listen("127.0.0.1:0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	addr := a.Addr().String()
	b, err := listen(addr, true)
	if err != nil {
		t.Fatalf("a second listener on %s with --bind-reuse-port: %v", addr, err)
	}
	defer b.Close()
	if l, err := listen(addr, false); err == nil || !strings.Contains(err.Error(), "--bind-address "+addr) {
		if l != nil {
			l.Close()
		}
		t.Errorf("a listener without --bind-reuse-port on a shared address: %v, want an error naming --bind-address", err)
	}
}
