package hub

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Feed bounds (see feed).
const (
	// DefaultFeedSize is how many reports a replica keeps for the restart
	// controller.
	DefaultFeedSize = 4096
	// reportCoalesce: a pod's reports closer together than this are kept
	// once. The restart controller debounces per owner anyway, and a pod
	// cannot flood the feed and push the other pods' reports out.
	reportCoalesce = 10 * time.Second
)

// feed is a replica's bounded, in-memory list of the reports of swapped sets,
// which the restart controller reads with a long poll (hubapi.FeedPath).
type feed struct {
	id   string
	size int
	now  func() time.Time

	mu sync.Mutex
	// buf holds the reports with sequence numbers start .. start+len(buf)-1.
	buf   []hubapi.Change
	start uint64
	// changed is closed, and replaced, when a report is added.
	changed chan struct{}
	// lastReport is when each pod's last kept report came (coalescing).
	lastReport *lru[types.UID, time.Time]
}

func newFeed(size int, now func() time.Time) *feed {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &feed{
		id:         hex.EncodeToString(b),
		size:       size,
		now:        now,
		changed:    make(chan struct{}),
		lastReport: newLRU[types.UID, time.Time](maxPodCacheEntries, now),
	}
}

// add keeps a report, unless the same pod's last one is younger than
// reportCoalesce (then it returns false).
func (f *feed) add(uid types.UID, c hubapi.Change) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, recent := f.lastReport.get(uid); recent {
		return false
	}
	f.lastReport.add(uid, c.Time, reportCoalesce)
	if len(f.buf) == f.size {
		copy(f.buf, f.buf[1:])
		f.buf = f.buf[:len(f.buf)-1]
		f.start++
	}
	f.buf = append(f.buf, c)
	close(f.changed)
	f.changed = make(chan struct{})
	return true
}

// since returns the reports after the cursor (at most
// hubapi.MaxFeedChanges), the next cursor, how many reports after the cursor
// are no longer kept, and a channel closed when another report comes.
func (f *feed) since(hub string, after uint64) (hubapi.Feed, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	end := f.start + uint64(len(f.buf))
	if hub != f.id || after > end {
		// Another replica's (or this replica's previous life's) cursor:
		// everything this feed holds is new to the reader.
		after = f.start
	}
	ans := hubapi.Feed{Hub: f.id, Next: end}
	if after < f.start {
		ans.Lost = f.start - after
		after = f.start
	}
	n := min(end-after, hubapi.MaxFeedChanges)
	ans.Changes = append([]hubapi.Change(nil), f.buf[after-f.start:after-f.start+n]...)
	ans.Next = after + n
	return ans, f.changed
}

// feedMetrics count reports and feed requests.
type feedMetrics struct {
	reports  *prometheus.CounterVec
	requests *prometheus.CounterVec
}

// Results of kvinject_hub_change_reports_total.
const (
	reportKept      = "kept"
	reportCoalesced = "coalesced"
	reportRefused   = "refused"
)

func newFeedMetrics(reg prometheus.Registerer) (*feedMetrics, error) {
	m := &feedMetrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_change_reports_total",
			Help: "Agents' reports of a swapped set (pods with the restart action), by result: kept (for the restart controller), coalesced (the pod reported less than 10 s before), refused.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_feed_requests_total",
			Help: "The restart controller's feed requests, by result: changes, unchanged (the wait ended), refused.",
		}, []string{"result"}),
	}
	for _, r := range []string{reportKept, reportCoalesced, reportRefused} {
		m.reports.WithLabelValues(r)
	}
	for _, r := range []string{"changes", "unchanged", "refused"} {
		m.requests.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.reports, m.requests} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering the hub's feed metrics: %w", err)
			}
		}
	}
	return m, nil
}

// serveChanged serves POST hubapi.ChangedPath: an agent's report of a
// swapped set, authenticated and authorized like a watch, kept for the
// restart controller when the pod's agent runs with --on-change=restart.
func (s *Server) serveChanged(w http.ResponseWriter, r *http.Request) {
	refused := func(id *identity, ref *refusal, status int) {
		s.feedMetrics.reports.WithLabelValues(reportRefused).Inc()
		s.logRefusal("report refused (logged once a minute per pod and reason)", id, clientIP(r), ref)
		writeSimple(w, ref, status)
	}
	id, ok := s.authenticated(w, r, http.MethodPost, "a report", hubapi.ChangedPath, refused)
	if !ok {
		return
	}
	if s.restarterNS == "" {
		refused(&id, refuse(hubapi.ReasonRestartsOff, "this hub has no restart controller (--restarter-service-account is not set): install the restarter (docs/actions.md) or remove kvinject.dev/on-change: restart"), 0)
		return
	}
	req, ref := readRequest(w, r)
	if ref != nil {
		refused(&id, ref, 0)
		return
	}
	agent, ref := s.authz.podOf(r.Context(), id)
	if ref == nil {
		ref = agent.check(req)
	}
	if ref == nil && !agent.Restart {
		ref = refuse(hubapi.ReasonNoRestartAction, fmt.Sprintf("pod %s's agent does not run with --on-change=restart: the hub keeps reports only of pods whose action is a restart", id.Pod()))
	}
	if ref != nil {
		refused(&id, ref, 0)
		return
	}
	c := hubapi.Change{
		Namespace: id.Namespace, Pod: id.PodName, PodUID: string(id.PodUID),
		Time: s.now().UTC().Truncate(time.Second), Vault: req.vault, Objects: req.Objects,
	}
	if s.feed.add(id.PodUID, c) {
		s.feedMetrics.reports.WithLabelValues(reportKept).Inc()
		s.log.Info("kept a report of a swapped set for the restart controller", "pod", id.Pod(), "podUID", string(id.PodUID), "objects", objectNames(req.Objects))
	} else {
		s.feedMetrics.reports.WithLabelValues(reportCoalesced).Inc()
	}
	w.WriteHeader(http.StatusNoContent)
}

// serveFeed serves GET hubapi.FeedPath: the restart controller's long poll.
func (s *Server) serveFeed(w http.ResponseWriter, r *http.Request) {
	refused := func(id *identity, ref *refusal, status int) {
		s.feedMetrics.requests.WithLabelValues("refused").Inc()
		s.logRefusal("feed request refused (logged once a minute per client and reason)", id, clientIP(r), ref)
		writeSimple(w, ref, status)
	}
	w.Header().Set(hubapi.MaxWaitHeader, s.MaxWaitBound().String())
	if s.isDraining() {
		w.Header().Set("Connection", "close")
		refused(nil, s.drainRefusal(), 0)
		return
	}
	id, ok := s.authenticated(w, r, http.MethodGet, "the feed", hubapi.FeedPath, refused)
	if !ok {
		return
	}
	if s.restarterNS == "" {
		refused(&id, refuse(hubapi.ReasonRestartsOff, "this hub has no restart controller: start it with --restarter-service-account=<namespace>/<serviceaccount> of the restarter"), 0)
		return
	}
	if id.Namespace != s.restarterNS || id.ServiceAccount != s.restarterSA {
		refused(&id, refuse(hubapi.ReasonNotRestarter, fmt.Sprintf("the feed answers only ServiceAccount %s/%s (--restarter-service-account), not %s/%s", s.restarterNS, s.restarterSA, id.Namespace, id.ServiceAccount)), 0)
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get(hubapi.FeedAfterParam); v != "" {
		var err error
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			refused(&id, refuse(hubapi.ReasonBadRequest, fmt.Sprintf("%s=%q is not a cursor: send the Next of the previous answer", hubapi.FeedAfterParam, v)), 0)
			return
		}
	}
	hub := q.Get(hubapi.FeedHubParam)
	wait := jitter(s.opts.MaxWait, maxWaitJitter)
	if !id.Expires.IsZero() {
		wait = min(wait, id.Expires.Sub(s.now()))
	}
	timer := time.NewTimer(max(wait, 0))
	defer timer.Stop()
	for {
		ans, changed := s.feed.since(hub, after)
		if len(ans.Changes) > 0 || ans.Lost > 0 {
			s.feedMetrics.requests.WithLabelValues("changes").Inc()
			writeJSON(w, ans)
			return
		}
		hub, after = ans.Hub, ans.Next
		select {
		case <-changed:
			continue
		case <-timer.C:
		case <-s.draining:
		case <-r.Context().Done():
			return
		}
		s.feedMetrics.requests.WithLabelValues("unchanged").Inc()
		writeJSON(w, ans)
		return
	}
}

// authenticated checks a report's or a feed request's method and bearer
// token; when it returns false, refused has answered.
func (s *Server) authenticated(w http.ResponseWriter, r *http.Request, method, what, path string, refused func(*identity, *refusal, int)) (identity, bool) {
	if r.Method != method {
		w.Header().Set("Allow", method)
		refused(nil, refuse(hubapi.ReasonBadRequest, fmt.Sprintf("method %s: %s is %s %s", r.Method, what, method, path)), http.StatusMethodNotAllowed)
		return identity{}, false
	}
	token, ref := bearerToken(r)
	if ref == nil {
		var id identity
		if id, ref = s.authn.authenticate(r.Context(), token); ref == nil {
			return id, true
		}
	}
	refused(nil, ref, 0)
	return identity{}, false
}

// logRefusal logs a refusal of a report or feed request at most once a
// minute per pod (or client) and reason.
func (s *Server) logRefusal(msg string, id *identity, client string, ref *refusal) {
	who := "client " + client
	attrs := []any{"reason", ref.reason, "message", ref.message}
	if id != nil {
		who = "pod " + id.Pod()
		attrs = append(attrs, "pod", id.Pod(), "podUID", string(id.PodUID))
	} else {
		attrs = append(attrs, "client", client)
	}
	if s.logs.allow(who+" "+ref.reason+" "+msg, s.now()) {
		s.log.Info(msg, attrs...)
	}
}

// writeSimple answers a refusal outside the watch's parking: the reason's
// status (or status when not 0), its body and headers.
func writeSimple(w http.ResponseWriter, ref *refusal, status int) {
	if status != 0 {
		writeRefusalStatus(w, ref, status)
		return
	}
	writeRefusal(w, ref)
}

func writeJSON(w http.ResponseWriter, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}

// objectNames names objects for the log: kind/name@version, comma-separated.
func objectNames(objs []hubapi.Object) string {
	names := make([]string, len(objs))
	for i, o := range objs {
		names[i] = o.String()
	}
	return strings.Join(names, ",")
}
