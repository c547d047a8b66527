package hub

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of kvinject_hub_watch_requests_total.
const (
	// resultChanged: answered 200 with changed objects.
	resultChanged = "changed"
	// resultUnchanged: answered 200 with nothing changed (the wait ended).
	resultUnchanged = "unchanged"
	// resultRefused: answered with a refusal (see kvinject_hub_refusals_total).
	resultRefused = "refused"
	// resultClientGone: the agent went away before an answer (a parked
	// watch's answer that could not be written counts under its result too).
	resultClientGone = "client_gone"
)

// Results of kvinject_hub_tokenreviews_total.
const (
	reviewAuthenticated   = "authenticated"
	reviewUnauthenticated = "unauthenticated"
	reviewNotAPod         = "not_a_pod"
	reviewError           = "error"
)

// metrics are the server's Prometheus metrics. The Key Vault side (watchers,
// sweeps, Key Vault requests, notifications, pacing) registers its own, in
// package vaults; the names here are distinct from those.
type metrics struct {
	requests   *prometheus.CounterVec
	refusals   *prometheus.CounterVec
	reviews    *prometheus.CounterVec
	podLookups *prometheus.CounterVec
	held       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_watch_requests_total",
			Help: "Watch requests answered, by result: changed, unchanged (the wait ended), refused, client_gone.",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_refusals_total",
			Help: "Watch requests refused, by reason (see pkg/hubapi).",
		}, []string{"reason"}),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_tokenreviews_total",
			Help: "Token authentications, by result (authenticated, unauthenticated, not_a_pod, error) and whether the answer came from the cache or a concurrent review of the same token (cached=true) or from a TokenReview of the API server (cached=false).",
		}, []string{"result", "cached"}),
		podLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_pod_lookups_total",
			Help: "Lookups of the token's pod, by result (found, mismatch, error) and whether the answer came from the cache (cached=true) or a GET of the API server (cached=false).",
		}, []string{"result", "cached"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvinject_hub_held_requests",
			Help: "Watch requests held open now, waiting for a change.",
		}),
	}
	for _, r := range []string{resultChanged, resultUnchanged, resultRefused, resultClientGone} {
		m.requests.WithLabelValues(r)
	}
	for _, r := range allReasons {
		m.refusals.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.refusals, m.reviews, m.podLookups, m.held} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("registering the hub server's metrics: a metric of the same name is already registered (two hub servers on one registry, or package vaults registering a server metric)")
			}
			return nil, err
		}
	}
	return m, nil
}

// review counts one authentication.
func (m *metrics) review(result string, cached bool) {
	m.reviews.WithLabelValues(result, strconv.FormatBool(cached)).Inc()
}

// podLookup counts one pod lookup.
func (m *metrics) podLookup(result string, cached bool) {
	m.podLookups.WithLabelValues(result, strconv.FormatBool(cached)).Inc()
}
