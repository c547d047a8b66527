package hub

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

func change(pod string) hubapi.Change {
	return hubapi.Change{Namespace: "ns", Pod: pod, PodUID: "uid-" + pod}
}

func pods(f hubapi.Feed) []string {
	var out []string
	for _, c := range f.Changes {
		out = append(out, c.Pod)
	}
	return out
}

// TestFeedCursor: a reader sees each kept report once, in order; a bounded
// feed counts what the reader missed; a cursor of another feed starts from
// the oldest report held; a pod's reports within reportCoalesce are kept once.
func TestFeedCursor(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	f := newFeed(3, clk.now)

	ans, changed := f.since("", 0)
	if ans.Hub != f.id || ans.Next != 0 || len(ans.Changes) != 0 || ans.Lost != 0 {
		t.Fatalf("empty feed: %+v", ans)
	}
	if !f.add("a", change("a")) {
		t.Fatal("first report of a not kept")
	}
	select {
	case <-changed:
	default:
		t.Fatal("adding a report did not wake the reader")
	}
	if f.add("a", change("a")) {
		t.Fatal("a's second report within the coalescing window was kept")
	}
	f.add("b", change("b"))
	ans, _ = f.since(f.id, 0)
	if got := fmt.Sprint(pods(ans)); got != "[a b]" || ans.Next != 2 || ans.Lost != 0 {
		t.Fatalf("since 0: %v next %d lost %d", got, ans.Next, ans.Lost)
	}
	ans, _ = f.since(f.id, ans.Next)
	if len(ans.Changes) != 0 || ans.Next != 2 {
		t.Fatalf("nothing new: %+v", ans)
	}
	clk.add(reportCoalesce + time.Second)
	for _, p := range []types.UID{"a", "c", "d"} {
		if !f.add(p, change(string(p))) {
			t.Fatalf("report of %s not kept", p)
		}
	}
	// Holds b a c d minus the oldest: [a c d] at 2..4; the reader at 2 lost nothing.
	ans, _ = f.since(f.id, 2)
	if got := fmt.Sprint(pods(ans)); got != "[a c d]" || ans.Next != 5 || ans.Lost != 0 {
		t.Fatalf("since 2: %v next %d lost %d", got, ans.Next, ans.Lost)
	}
	// A reader still at 0 lost a and b.
	ans, _ = f.since(f.id, 0)
	if got := fmt.Sprint(pods(ans)); got != "[a c d]" || ans.Lost != 2 {
		t.Fatalf("since 0 after overflow: %v lost %d", got, ans.Lost)
	}
	// Another feed's cursor (the replica restarted): everything held, nothing lost.
	for _, cur := range []uint64{0, 4, 99} {
		ans, _ = f.since("other", cur)
		if got := fmt.Sprint(pods(ans)); got != "[a c d]" || ans.Lost != 0 || ans.Next != 5 {
			t.Fatalf("other feed's cursor %d: %v lost %d next %d", cur, got, ans.Lost, ans.Next)
		}
	}
	// A cursor beyond the end of this feed is treated as another feed's.
	ans, _ = f.since(f.id, 99)
	if len(ans.Changes) != 3 {
		t.Fatalf("cursor past the end: %+v", ans)
	}
}

// TestFeedAnswerBound: one answer holds at most MaxFeedChanges reports.
func TestFeedAnswerBound(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	f := newFeed(DefaultFeedSize, clk.now)
	for i := range hubapi.MaxFeedChanges + 10 {
		f.add(types.UID(fmt.Sprint(i)), change(fmt.Sprint(i)))
	}
	ans, _ := f.since(f.id, 0)
	if len(ans.Changes) != hubapi.MaxFeedChanges || ans.Next != hubapi.MaxFeedChanges {
		t.Fatalf("first answer: %d changes, next %d", len(ans.Changes), ans.Next)
	}
	ans, _ = f.since(f.id, ans.Next)
	if len(ans.Changes) != 10 || ans.Changes[0].Pod != fmt.Sprint(hubapi.MaxFeedChanges) {
		t.Fatalf("second answer: %d changes", len(ans.Changes))
	}
}

func TestParseServiceAccount(t *testing.T) {
	for _, tc := range []struct {
		in     string
		ns, sa string
		ok     bool
	}{
		{"kvinject-system/kvinject-restarter", "kvinject-system", "kvinject-restarter", true},
		{"a/b.c", "a", "b.c", true},
		{"kvinject-restarter", "", "", false},
		{"/x", "", "", false},
		{"x/", "", "", false},
		{"X/y", "", "", false},
		{"a/b/c", "", "", false},
	} {
		ns, sa, err := hubapi.ParseServiceAccount(tc.in)
		if (err == nil) != tc.ok || ns != tc.ns || sa != tc.sa {
			t.Errorf("ParseServiceAccount(%q) = %q, %q, %v", tc.in, ns, sa, err)
		}
	}
}
