package hub

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// refusal is a watch the hub does not accept: a hubapi reason, a message for
// the agent's log (never a token, never a value, nothing about objects the pod
// did not name) and, for 503s, when to come back.
type refusal struct {
	reason     string
	message    string
	retryAfter time.Duration
}

func (r *refusal) Error() string { return r.reason + ": " + r.message }

// refuse builds a refusal.
func refuse(reason, message string) *refusal {
	return &refusal{reason: reason, message: message}
}

// unavailable is a 503 refusal asking the agent to come back after retryAfter
// (jittered by the caller).
func unavailable(message string, retryAfter time.Duration) *refusal {
	return &refusal{reason: hubapi.ReasonUnavailable, message: message, retryAfter: retryAfter}
}

// statusOf is the HTTP status of a refusal reason (see pkg/hubapi).
func statusOf(reason string) int {
	switch reason {
	case hubapi.ReasonBadRequest:
		return http.StatusBadRequest
	case hubapi.ReasonUnauthenticated, hubapi.ReasonNotAPod:
		return http.StatusUnauthorized
	case hubapi.ReasonPodMismatch, hubapi.ReasonNotPodObject, hubapi.ReasonUnknownVersion,
		hubapi.ReasonNoRestartAction, hubapi.ReasonRestartsOff, hubapi.ReasonNotRestarter:
		return http.StatusForbidden
	default: // ReasonVaultNotListable, ReasonUnavailable and anything new: come back later
		return http.StatusServiceUnavailable
	}
}

// allReasons are the reasons the refusal counter starts with at zero.
var allReasons = []string{
	hubapi.ReasonBadRequest, hubapi.ReasonUnauthenticated, hubapi.ReasonNotAPod,
	hubapi.ReasonPodMismatch, hubapi.ReasonNotPodObject, hubapi.ReasonUnknownVersion,
	hubapi.ReasonVaultNotListable, hubapi.ReasonUnavailable,
}

// defaultRetryAfter is the Retry-After of a 503 that does not say otherwise.
const defaultRetryAfter = 10 * time.Second

// writeRefusal answers with the refusal's status, a hubapi.Refusal body and,
// for a 503, Retry-After in whole seconds (at least 1).
func writeRefusal(w http.ResponseWriter, r *refusal) {
	status := statusOf(r.reason)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if status == http.StatusServiceUnavailable {
		ra := r.retryAfter
		if ra <= 0 {
			ra = defaultRetryAfter
		}
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(ra.Seconds()))))
	}
	if status == http.StatusUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="kvinject-hub"`)
	}
	body, _ := json.Marshal(hubapi.Refusal{Reason: r.reason, Message: r.message})
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// logLimiter lets a refusal be logged once per key (the pod, or the client's
// address when no pod is known, and the reason) per interval, so that an agent
// retrying in a loop does not flood the log.
type logLimiter struct {
	mu       sync.Mutex
	interval time.Duration
	max      int
	last     map[string]time.Time
}

func newLogLimiter(interval time.Duration, max int) *logLimiter {
	return &logLimiter{interval: interval, max: max, last: map[string]time.Time{}}
}

// allow reports whether key may be logged at now, and records it if so.
func (l *logLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.interval {
		return false
	}
	if len(l.last) >= l.max {
		for k, t := range l.last {
			if now.Sub(t) >= l.interval {
				delete(l.last, k)
			}
		}
		if len(l.last) >= l.max {
			return false // a flood of distinct keys: the counters still count them
		}
	}
	l.last[key] = now
	return true
}
