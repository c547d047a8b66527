package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// The action on change: the agent runs in-process against the emulator and
// calls an httptest receiver on 127.0.0.1 (http), or reports to the fake hub
// (restart).

// Log messages of the action on change.
const (
	msgActionDone       = "on-change action done"
	msgActionRetry      = "on-change action failed; retrying"
	msgActionGiveUp     = "on-change action failed; giving up until the next new set"
	msgActionSuperseded = "on-change action superseded by a newer set; starting over"
)

// reloadCall is one call the receiver got.
type reloadCall struct {
	method, uri, userAgent, changed string
	header                          http.Header
	body                            []byte
}

// receiver is the app's reload endpoint: it counts calls and answers the
// statuses queued (then its default).
type receiver struct {
	srv *httptest.Server

	mu      sync.Mutex
	calls   []reloadCall
	answers []int
	status  int // the answer when none is queued
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	rc := &receiver{status: http.StatusOK}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.calls = append(rc.calls, reloadCall{method: r.Method, uri: r.RequestURI, userAgent: r.UserAgent(),
			changed: r.Header.Get(agent.ChangedHeader), header: r.Header.Clone(), body: body})
		status := rc.status
		if len(rc.answers) > 0 {
			status, rc.answers = rc.answers[0], rc.answers[1:]
		}
		rc.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	if u, _ := url.Parse(rc.srv.URL); u.Hostname() != "127.0.0.1" {
		t.Fatalf("the receiver listens on %s, not 127.0.0.1", u.Host)
	}
	return rc
}

// port is the receiver's port on 127.0.0.1.
func (rc *receiver) port() string {
	u, _ := url.Parse(rc.srv.URL)
	return u.Port()
}

func (rc *receiver) got() []reloadCall {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.calls)
}

func (rc *receiver) answer(status int, queued ...int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.status, rc.answers = status, queued
}

// checkNoValues fails when a call carries a secret value or a version in its
// URL, headers or body.
func (rc *receiver) checkNoValues(t *testing.T, h *harness, versions ...string) {
	t.Helper()
	h.mu.Lock()
	values := slices.Clone(h.values)
	h.mu.Unlock()
	for _, c := range rc.got() {
		all := fmt.Sprintf("%s %s %v %s", c.method, c.uri, c.header, c.body)
		for _, v := range append(values, versions...) {
			if strings.Contains(all, v) {
				t.Errorf("the call %s %s carries %q", c.method, c.uri, v)
			}
		}
		if len(c.body) != 0 {
			t.Errorf("the call %s %s has a body of %d bytes, want none", c.method, c.uri, len(c.body))
		}
	}
}

// onChangeOptions are h.options with quick retries of the action.
func onChangeOptions(h *harness, minB, maxB time.Duration) agent.Options {
	o := h.options()
	o.OnChangeMinBackoff, o.OnChangeMaxBackoff = minB, maxB
	return o
}

// startPollingAgent writes secrets a and b and starts a polling sidecar
// with the action, waiting for the first set.
func startPollingAgent(t *testing.T, h *harness, action string, opts agent.Options) {
	t.Helper()
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	h.setSecret("a")
	h.setSecret("b")
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b"})
	oc, err := agentconfig.ParseOnChange(action)
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnChange = oc
	h.runSidecar(cfg, opts)
	h.waitFor("the first set", 10*time.Second, func() bool { return atomicdir.Check(h.dir) == nil })
}

// TestOnChangeHTTP: no call after the first set; exactly one call per new
// set, with the method, path and query, the agent's User-Agent, the changed
// object's kind/name and no body; a 500 is retried until the app answers
// 2xx; no value or version in the calls, and none in the logs (harness).
func TestOnChangeHTTP(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	rc := newReceiver(t)
	startPollingAgent(t, h, "http:"+rc.port()+"/-/reload?source=kvinject;method=put;timeout=2s;retries=3", onChangeOptions(h, 20*time.Millisecond, 100*time.Millisecond))

	time.Sleep(5 * 200 * time.Millisecond) // five polls without a change
	if n := len(rc.got()); n != 0 {
		t.Fatalf("%d calls after the first set, want none", n)
	}

	a2, v2 := h.setSecret("a")
	h.waitFor("the new a", 5*time.Second, func() bool { return h.fileIs("a", a2) })
	h.waitFor("the call", 5*time.Second, func() bool { return len(rc.got()) >= 1 })
	time.Sleep(5 * 200 * time.Millisecond) // five more polls
	calls := rc.got()
	if len(calls) != 1 {
		t.Fatalf("%d calls after one new set, want 1: %+v", len(calls), calls)
	}
	c := calls[0]
	if c.method != http.MethodPut || c.uri != "/-/reload?source=kvinject" || c.changed != "secret/a" || !strings.HasPrefix(c.userAgent, "kvinject-agent/") {
		t.Errorf("call %s %s User-Agent %q %s %q; want PUT /-/reload?source=kvinject, kvinject-agent/<version>, secret/a", c.method, c.uri, c.userAgent, agent.ChangedHeader, c.changed)
	}
	if strings.Contains(c.userAgent, " ") {
		t.Errorf("User-Agent %q, want exactly kvinject-agent/<version>", c.userAgent)
	}
	done := h.records(0, msgActionDone, map[string]string{"changed": "secret/a", "action": "http:" + rc.port() + "/-/reload?source=kvinject;method=PUT;timeout=2s;retries=3"})
	if len(done) != 1 || done[0]["status"] != float64(200) || done[0]["attempt"] != float64(1) {
		t.Errorf("outcome records %v, want one: status 200 at attempt 1", done)
	}
	if swapped := h.records(0, msgChanged, nil); len(swapped) == 1 && len(done) == 1 {
		at := func(rec map[string]any) time.Time {
			ts, _ := time.Parse(time.RFC3339Nano, rec["time"].(string))
			return ts
		}
		t.Logf("from the swap to the app's answer: %s", at(done[0]).Sub(at(swapped[0])))
	}

	// The app fails twice, then reloads: two retries, one success.
	rc.answer(http.StatusOK, http.StatusInternalServerError, http.StatusServiceUnavailable)
	b2, vb2 := h.setSecret("b")
	h.waitFor("the new b", 5*time.Second, func() bool { return h.fileIs("b", b2) })
	h.waitFor("three more calls", 5*time.Second, func() bool { return len(rc.got()) >= 4 })
	time.Sleep(5 * 200 * time.Millisecond)
	if calls := rc.got(); len(calls) != 4 || calls[1].changed != "secret/b" || calls[3].changed != "secret/b" {
		t.Errorf("calls %+v; want 4, the last three for secret/b", calls)
	}
	if n := len(h.records(0, msgActionRetry, map[string]string{"changed": "secret/b"})); n != 2 {
		t.Errorf("%d retry records, want 2", n)
	}
	done = h.records(0, msgActionDone, map[string]string{"changed": "secret/b"})
	if len(done) != 1 || done[0]["attempt"] != float64(3) {
		t.Errorf("outcome records %v, want one at attempt 3", done)
	}
	if counters, _ := done[0]["onChange"].(map[string]any); counters["succeeded"] != float64(2) || counters["failed"] != float64(0) {
		t.Errorf("counters %v, want 2 succeeded, none failed", done[0]["onChange"])
	}
	rc.checkNoValues(t, h, v2, vb2)
}

// TestOnChangeHTTPGivesUp: an app that keeps failing gets the first
// attempt and retries= retries, then the agent logs and counts the failure;
// the next new set is called again.
func TestOnChangeHTTPGivesUp(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	rc := newReceiver(t)
	rc.answer(http.StatusInternalServerError)
	startPollingAgent(t, h, "http:"+rc.port()+"/reload;retries=2", onChangeOptions(h, 20*time.Millisecond, 40*time.Millisecond))

	h.setSecret("a")
	h.waitFor("the failure", 5*time.Second, func() bool { return len(h.records(0, msgActionGiveUp, nil)) == 1 })
	if n := len(rc.got()); n != 3 {
		t.Errorf("%d calls, want 3 (one and 2 retries)", n)
	}
	rec := h.records(0, msgActionGiveUp, nil)[0]
	if counters, _ := rec["onChange"].(map[string]any); counters["failed"] != float64(1) || rec["status"] != float64(500) {
		t.Errorf("failure record %v, want status 500 and 1 failed", rec)
	}
	if e, _ := rec["error"].(string); !strings.Contains(e, "HTTP 500") {
		t.Errorf("failure record's error %q does not say HTTP 500", e)
	}

	rc.answer(http.StatusNoContent)
	h.setSecret("b")
	h.waitFor("the next call", 5*time.Second, func() bool { return len(h.records(0, msgActionDone, nil)) == 1 })
	if calls := rc.got(); len(calls) != 4 || calls[3].changed != "secret/b" || calls[3].method != http.MethodPost {
		t.Errorf("calls %+v, want a fourth, POST, for secret/b", calls)
	}
	rc.checkNoValues(t, h)
}

// TestOnChangeHTTPCoalesces: a new set swapped in while the call of the
// previous one waits to be retried cancels those retries and starts over
// for both sets; once the app answers, one call succeeds and no other
// follows.
func TestOnChangeHTTPCoalesces(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	rc := newReceiver(t)
	rc.answer(http.StatusBadGateway)
	// Retries every 2-4s: a new set (polls every 200ms) comes first.
	startPollingAgent(t, h, "http:"+rc.port()+"/reload;retries=10", onChangeOptions(h, 4*time.Second, 4*time.Second))

	h.setSecret("a")
	h.waitFor("the first call", 5*time.Second, func() bool { return len(rc.got()) == 1 })
	h.setSecret("b")
	h.waitFor("the call for both", 5*time.Second, func() bool { return len(rc.got()) == 2 })
	if calls := rc.got(); calls[0].changed != "secret/a" || calls[1].changed != "secret/a,secret/b" {
		t.Errorf("calls for %q then %q, want secret/a then secret/a,secret/b", calls[0].changed, calls[1].changed)
	}
	if n := len(h.records(0, msgActionSuperseded, map[string]string{"changed": "secret/a,secret/b"})); n != 1 {
		t.Errorf("%d superseded records, want 1", n)
	}

	rc.answer(http.StatusOK)
	h.waitFor("the success", 10*time.Second, func() bool { return len(h.records(0, msgActionDone, nil)) == 1 })
	n := len(rc.got())
	time.Sleep(5 * 200 * time.Millisecond)
	if len(rc.got()) != n || n != 3 {
		t.Errorf("%d calls, then %d; want 3 (two failed, one success) and no more", n, len(rc.got()))
	}
	rec := h.records(0, msgActionDone, nil)[0]
	if counters, _ := rec["onChange"].(map[string]any); counters["succeeded"] != float64(1) || counters["superseded"] != float64(1) || counters["failed"] != float64(0) {
		t.Errorf("counters %v, want 1 succeeded, 1 superseded, 0 failed", rec["onChange"])
	}
	rc.checkNoValues(t, h)
}

// hubReport is a report of a swapped set the fake hub received.
type hubReport struct {
	auth string
	body hubapi.ChangedReport
}

// serveChanged receives a report (hubapi.ChangedPath): 204 unless an answer
// is queued.
func (f *fakeHub) serveChanged(w http.ResponseWriter, r *http.Request) {
	var rep hubapi.ChangedReport
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, hubapi.MaxRequestBytes)).Decode(&rep)
	f.mu.Lock()
	f.reports = append(f.reports, hubReport{auth: r.Header.Get("Authorization"), body: rep})
	status := http.StatusNoContent
	if len(f.reportAnswers) > 0 {
		status, f.reportAnswers = f.reportAnswers[0], f.reportAnswers[1:]
	}
	f.mu.Unlock()
	if err != nil {
		status = http.StatusBadRequest
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(hubapi.Refusal{Reason: hubapi.ReasonNotPodObject, Message: fmt.Sprintf("the fake hub answers %d", status)})
}

func (f *fakeHub) receivedReports() []hubReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reports)
}

func (f *fakeHub) answerReports(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reportAnswers = statuses
}

// TestOnChangeRestart: the agent reports each new set (not the first) to the
// hub with the watch's token: the vault and the changed objects at their new
// versions; a 503 is retried, a refusal is not.
func TestOnChangeRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, tok := h.newHub()
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet, emulator.PermList); err != nil {
		t.Fatal(err)
	}
	h.setSecret("a")
	b0 := "VALUE-b-" + randHex(12)
	h.secretish(b0)
	h.emu.SetSecret(h.vault, "b", b0, emulator.WithCreated(time.Now().Add(-time.Minute)))
	h.setSecret("b")
	hub.follow("a", "b")
	cfg := h.hubConfig(agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b"}, agentconfig.Entry{File: "b-history", Name: "b", History: 2})
	cfg.OnChange = agentconfig.OnChange{Kind: agentconfig.OnChangeRestart}
	opts := h.hubOptions()
	opts.OnChangeMinBackoff, opts.OnChangeMaxBackoff = 20*time.Millisecond, 50*time.Millisecond
	h.runSidecar(cfg, opts)
	h.waitFor("the first set", 10*time.Second, func() bool { return atomicdir.Check(h.dir) == nil })
	h.waitFor("a watch request", 5*time.Second, func() bool { return len(hub.requests()) >= 1 })
	time.Sleep(3 * hubTestRotation)
	if n := len(hub.receivedReports()); n != 0 {
		t.Fatalf("%d reports after the first set, want none", n)
	}

	hub.answerReports(http.StatusServiceUnavailable)
	_, vb := h.setSecret("b")
	hub.follow("b")
	h.waitFor("the report", 5*time.Second, func() bool { return len(h.records(0, msgActionDone, nil)) == 1 })
	reports := hub.receivedReports()
	if len(reports) != 2 {
		t.Fatalf("%d reports, want 2 (a 503, then 204)", len(reports))
	}
	want := hubapi.ChangedReport{Vault: h.vaultURL(), Objects: []hubapi.Object{{Kind: hubapi.KindSecret, Name: "b", Version: vb}}}
	for _, r := range reports {
		if !strings.EqualFold(fmt.Sprint(r.body), fmt.Sprint(want)) {
			t.Errorf("report %+v, want %+v (b once, though two entries read it)", r.body, want)
		}
		if r.auth != "Bearer "+currentToken(t, tok) {
			t.Errorf("report authorization %q, want the hub token", r.auth)
		}
	}
	if rec := h.records(0, msgActionDone, nil)[0]; rec["status"] != float64(204) || rec["attempt"] != float64(2) || rec["action"] != "restart" {
		t.Errorf("outcome %v, want 204 at attempt 2", rec)
	}

	// A refusal is not retried.
	hub.answerReports(http.StatusForbidden)
	h.setSecret("a")
	hub.follow("a")
	h.waitFor("the refusal", 5*time.Second, func() bool { return len(h.records(0, msgActionGiveUp, nil)) == 1 })
	time.Sleep(3 * hubTestRotation)
	if n := len(hub.receivedReports()); n != 3 {
		t.Errorf("%d reports, want 3 (the refusal not retried)", n)
	}
	rec := h.records(0, msgActionGiveUp, nil)[0]
	if e, _ := rec["error"].(string); rec["status"] != float64(403) || !strings.Contains(e, "the hub refused the report") || rec["why"] != "not retried" {
		t.Errorf("failure record %v, want 403, the hub's refusal, not retried", rec)
	}
}

// currentToken is the hub token file's content.
func currentToken(t *testing.T, tok *tokenDir) string {
	t.Helper()
	b, err := os.ReadFile(tok.path())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
