package agent

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// # Actions on change
//
// With --on-change, the rotating agent acts after each swap of a new set
// (never after the first set, which the app reads at start): it calls the
// app (http) or reports the set to the version hub, whose restart controller
// rolls the pod's owner (restart). The rotation loops only hand the changed
// objects to an actionRunner, which never blocks them: it runs the action
// in a goroutine of its own, retries a failed one with a jittered
// exponential backoff, and when a newer set is swapped in while it retries,
// drops the pending retries and starts over for both sets at once
// (coalescing). The outcome is logged with the runner's counters: the agent
// serves nothing, so its log lines are where they are read.
//
// Neither action carries a value: the http call has an empty body and names
// the changed objects (kind/name) in the Kvinject-Changed header; the report
// names them with their new versions.

// Defaults of the action's retries (see Options).
const (
	// DefaultOnChangeMinBackoff is the delay after the first failed attempt;
	// it doubles with each further failure.
	DefaultOnChangeMinBackoff = time.Second
	// DefaultOnChangeMaxBackoff bounds the delay between attempts.
	DefaultOnChangeMaxBackoff = 30 * time.Second
)

const (
	// ChangedHeader names the changed objects of the http action's call:
	// comma-separated kind/name (kinds as in hubapi: secret, certificate, key).
	ChangedHeader = "Kvinject-Changed"
	// reportTimeout bounds one attempt of the restart action's report.
	reportTimeout = 30 * time.Second
	// maxActionAnswer bounds the body of an answer the agent reads (and discards).
	maxActionAnswer = 64 << 10
	// maxChangedHeader bounds the Kvinject-Changed header (servers commonly
	// refuse request headers over 8 KiB); a longer list ends with ",..." after
	// the last name that fits.
	maxChangedHeader = 4 << 10
)

// changedObject is an object of a swapped set whose version or value changed,
// at its new version.
type changedObject struct {
	kind, name, version string
	// vault is the object's vault when it is not the pod's (an entry's
	// ;vault=); "" for the pod's.
	vault string
}

// key identifies the object across sets.
func (o changedObject) key() string { return o.vault + " " + o.kind + "/" + strings.ToLower(o.name) }

// mergeChanged returns the objects of older and newer, each once, at the
// newer's version when both name it, in the order they first appear.
func mergeChanged(older, newer []changedObject) []changedObject {
	out := append([]changedObject(nil), older...)
	at := make(map[string]int, len(out))
	for i, o := range out {
		at[o.key()] = i
	}
	for _, o := range newer {
		if i, ok := at[o.key()]; ok {
			out[i] = o
			continue
		}
		at[o.key()] = len(out)
		out = append(out, o)
	}
	return out
}

// actionOutcome is the result of one attempt.
type actionOutcome struct {
	// status is the HTTP status of an answer; 0 without one.
	status int
	// err is nil on success.
	err error
	// retry says whether another attempt may succeed.
	retry bool
	// retryAfter is what the hub asked for, at least.
	retryAfter time.Duration
}

// actionRunner runs the pod's action on change.
type actionRunner struct {
	log     *slog.Logger
	retries int
	minB    time.Duration
	maxB    time.Duration
	// attempt makes one attempt for the objects of a change.
	attempt func(ctx context.Context, objs []changedObject) actionOutcome

	mu sync.Mutex
	// pending are the objects of the sets swapped in since the runner last
	// took them; nil when none.
	pending []changedObject
	// wake has a token when pending may hold objects.
	wake chan struct{}
	done chan struct{}

	// Counters, reported in every outcome's log line.
	succeeded, failed, superseded atomic.Int64
}

// newActionRunner returns the runner of oc, or nil without an action. hub is
// the watch client (restart reports go the same way); nil when the agent has
// no usable hub, which a restart action then logs at each new set.
func newActionRunner(a *agent, hub *hubClient) *actionRunner {
	oc := a.cfg.OnChange
	if oc.IsZero() {
		return nil
	}
	r := &actionRunner{
		log:  a.log.With("action", oc.String()),
		minB: a.opts.OnChangeMinBackoff,
		maxB: max(a.opts.OnChangeMaxBackoff, a.opts.OnChangeMinBackoff),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	switch oc.Kind {
	case agentconfig.OnChangeHTTP:
		r.retries = oc.Retries
		r.attempt = httpAction(oc)
	case agentconfig.OnChangeRestart:
		r.retries = agentconfig.DefaultOnChangeRetries
		r.attempt = reportAction(hub, a.cfg.VaultURL)
	}
	return r
}

// start runs the runner until ctx is done; wait waits for that.
func (r *actionRunner) start(ctx context.Context) {
	if r == nil {
		return
	}
	go r.run(ctx)
}

func (r *actionRunner) wait() {
	if r != nil {
		<-r.done
	}
}

// notify hands the runner the changed objects of a swapped set. It never
// blocks.
func (r *actionRunner) notify(objs []changedObject) {
	if r == nil || len(objs) == 0 {
		return
	}
	r.mu.Lock()
	r.pending = mergeChanged(r.pending, objs)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// take returns and clears the pending objects.
func (r *actionRunner) take() []changedObject {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pending
	r.pending = nil
	return p
}

func (r *actionRunner) run(ctx context.Context) {
	defer close(r.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		for objs := r.take(); len(objs) > 0; {
			objs = r.sequence(ctx, objs)
		}
	}
}

// sequence runs the action for objs, retrying failures up to r.retries
// times. It returns the objects to start over with when a newer set came
// while it waited to retry (objs merged with the newer set's), else nil.
func (r *actionRunner) sequence(ctx context.Context, objs []changedObject) []changedObject {
	b := backoff{min: r.minB, max: r.maxB}
	names := objectNames(objs)
	start := time.Now()
	for attempt := 1; ; attempt++ {
		out := r.attempt(ctx, objs)
		if ctx.Err() != nil {
			return nil
		}
		attrs := []any{"changed", names, "attempt", attempt}
		if out.status != 0 {
			attrs = append(attrs, "status", out.status)
		}
		if out.err == nil {
			r.succeeded.Add(1)
			r.log.Info("on-change action done", append(attrs, "elapsed", time.Since(start).Round(time.Millisecond).String(), r.counters())...)
			return nil
		}
		attrs = append(attrs, "error", errText(out.err))
		if !out.retry || attempt > r.retries {
			r.failed.Add(1)
			why := fmt.Sprintf("after %d attempts", attempt)
			if !out.retry {
				why = "not retried"
			}
			r.log.Error("on-change action failed; giving up until the next new set", append(attrs, "why", why, r.counters())...)
			return nil
		}
		d := max(b.next(nil), out.retryAfter)
		r.log.Warn("on-change action failed; retrying", append(attrs, "retryIn", d.String())...)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.wake:
			t.Stop()
			newer := r.take()
			if len(newer) == 0 {
				// A late token for objects already taken: keep waiting.
				if !sleep(ctx, d) {
					return nil
				}
				continue
			}
			r.superseded.Add(1)
			merged := mergeChanged(objs, newer)
			r.log.Info("on-change action superseded by a newer set; starting over", "changed", objectNames(merged), r.counters())
			return merged
		case <-t.C:
		}
	}
}

// counters is the runner's counters as one log attribute.
func (r *actionRunner) counters() slog.Attr {
	return slog.Group("onChange", "succeeded", r.succeeded.Load(), "failed", r.failed.Load(), "superseded", r.superseded.Load())
}

// objectNames is the changed objects as kind/name, comma-separated (the
// Kvinject-Changed header, and log lines).
func objectNames(objs []changedObject) string {
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.kind + "/" + o.name
	}
	return strings.Join(names, ",")
}

// changedHeader is the Kvinject-Changed header: objectNames, at most
// maxChangedHeader bytes.
func changedHeader(objs []changedObject) string {
	const more = ",..."
	var b strings.Builder
	for i, o := range objs {
		name := o.kind + "/" + o.name
		if i > 0 {
			name = "," + name
		}
		if b.Len()+len(name)+len(more) > maxChangedHeader && i < len(objs)-1 || b.Len()+len(name) > maxChangedHeader {
			b.WriteString(more)
			break
		}
		b.WriteString(name)
	}
	return b.String()
}

// newActionClient is the http action's client: no proxy (a proxy from the
// environment would send the call out of the pod), no redirects followed,
// no connection kept (calls are rare), each attempt bounded by timeout.
func newActionClient(timeout time.Duration) *http.Client {
	t := &http.Transport{
		Proxy:             nil,
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		DisableKeepAlives: true,
		ForceAttemptHTTP2: false,
	}
	return &http.Client{
		Transport:     t,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// httpAction calls oc's URL on 127.0.0.1 with an empty body. 2xx is a
// success; any other status and a failed connection are retried.
func httpAction(oc agentconfig.OnChange) func(context.Context, []changedObject) actionOutcome {
	client := newActionClient(oc.Timeout)
	ua := productUserAgent("", "")
	return func(ctx context.Context, objs []changedObject) actionOutcome {
		req, err := http.NewRequestWithContext(ctx, oc.Method, oc.URL(), http.NoBody)
		if err != nil {
			return actionOutcome{err: fmt.Errorf("bad on-change URL: %w", err)}
		}
		req.Header.Set("User-Agent", ua)
		req.Header.Set(ChangedHeader, changedHeader(objs))
		resp, err := client.Do(req)
		if err != nil {
			return actionOutcome{err: err, retry: true}
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxActionAnswer))
		_ = resp.Body.Close()
		if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
			return actionOutcome{status: resp.StatusCode}
		}
		what := fmt.Sprintf("the app answered %s %s with HTTP %d", oc.Method, oc.URL(), resp.StatusCode)
		if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
			what += " (a redirect, which the agent does not follow: give the final path)"
		}
		return actionOutcome{status: resp.StatusCode, err: errors.New(what), retry: true}
	}
}

// reportAction reports the changed objects to the hub (hubapi.ChangedPath),
// with the watch's token and client. Refusals other than 429 are not retried.
func reportAction(hub *hubClient, vault string) func(context.Context, []changedObject) actionOutcome {
	return func(ctx context.Context, objs []changedObject) actionOutcome {
		if hub == nil {
			return actionOutcome{err: errors.New("the hub is not usable (see the \"rotation source\" log line): the new set cannot be reported, so the pod is not restarted")}
		}
		// One report per vault (a request names one vault, as a watch does).
		// An object that is gone (an absent optional entry) has no version to
		// prove it by: the report names the others.
		var reports []hubapi.ChangedReport
		index := map[string]int{}
		for _, o := range objs {
			if o.version == "" {
				continue
			}
			v := cmp.Or(o.vault, vault)
			i, ok := index[v]
			if !ok {
				i = len(reports)
				index[v] = i
				reports = append(reports, hubapi.ChangedReport{Vault: v})
			}
			reports[i].Objects = append(reports[i].Objects, hubapi.Object{Kind: o.kind, Name: o.name, Version: o.version})
		}
		var herr *hubError
		for _, report := range reports {
			if herr = hub.report(ctx, report, reportTimeout); herr != nil {
				break
			}
		}
		if herr == nil {
			return actionOutcome{status: http.StatusNoContent}
		}
		retry := herr.status == 0 || herr.status == http.StatusTooManyRequests || herr.status >= 500
		if herr.reason == hubReasonConfig {
			retry = false
		}
		return actionOutcome{status: herr.status, err: herr, retry: retry, retryAfter: herr.retryAfter}
	}
}

// report sends one report of a swapped set (hubapi.ChangedPath), at most
// timeout. The hub answers 204 or a Refusal.
func (c *hubClient) report(ctx context.Context, report hubapi.ChangedReport, timeout time.Duration) *hubError {
	token, herr := c.token()
	if herr != nil {
		return herr
	}
	body, err := json.Marshal(report)
	if err != nil {
		return &hubError{reason: hubReasonConfig, msg: fmt.Sprintf("cannot encode the report: %v", err), err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+hubapi.ChangedPath, bytes.NewReader(body))
	if err != nil {
		return &hubError{reason: hubReasonConfig, msg: fmt.Sprintf("bad hub URL: %v", err), err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.client.Do(req)
	if err != nil {
		return connError(ctx, err)
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxActionAnswer))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return nil
	}
	ref := hubapi.ReadRefusal(resp)
	reason := ref.Reason
	if reason == "" {
		reason = "HTTP" + strconv.Itoa(resp.StatusCode)
	}
	return &hubError{reason: reason, status: resp.StatusCode, retryAfter: parseRetryAfter(resp.Header.Get("Retry-After")),
		msg: fmt.Sprintf("the hub refused the report (%s): %s", reason, firstLine(ref.Message, 300)), err: ref}
}

// changedObjects returns the objects of refs whose value differs between
// old and cur, each once (a plain and a history entry of one secret), at
// their new version, in mapping order.
func (a *agent) changedObjects(refs []objectRef, old, cur map[objectRef]objectValue) []changedObject {
	var objs []changedObject
	seen := map[string]bool{}
	for _, r := range refs {
		if old[r].same(cur[r]) {
			continue
		}
		o := changedObject{kind: hubKind(r), name: a.entries[r].Name, version: cur[r].version, vault: r.vault}
		if seen[o.key()] {
			continue
		}
		seen[o.key()] = true
		objs = append(objs, o)
	}
	return objs
}
