package restarter

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the controller's Prometheus metrics.
type Metrics struct {
	reports   *prometheus.CounterVec
	restarts  *prometheus.CounterVec
	feeds     *prometheus.CounterVec
	lost      prometheus.Counter
	connected prometheus.Gauge
}

// NewMetrics returns unregistered metrics; Register registers them.
func NewMetrics() *Metrics {
	m := &Metrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_restarter_reports_total",
			Help: "Reports of swapped sets read from the hubs' feeds, by result: scheduled, pod_gone, namespace_not_opted_in, no_restartable_owner, owner_not_verified, owner_has_no_restart_action, pod_predates_last_restart, error.",
		}, []string{"result"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_restarter_restarts_total",
			Help: "Debounced restarts, by owner kind and result: restarted, not_forced (paused, OnDelete), failed, owner_gone, error.",
		}, []string{"kind", "result"}),
		feeds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_restarter_feed_requests_total",
			Help: "Requests to the hub replicas' feeds, by result: ok, error.",
		}, []string{"result"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvinject_restarter_reports_lost_total",
			Help: "Reports a hub replica no longer held when the controller asked (it was behind by more than the replica's feed size).",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kvinject_restarter_hub_replicas",
			Help: "Hub replicas whose feed the controller reads now (the last request answered).",
		}),
	}
	for _, r := range []string{ResultScheduled, ResultPodGone, ResultNotOptedIn, ResultNoOwner, ResultOwnerMismatch, ResultNoRestartAction, ResultBeforeLastRestart, ResultError} {
		m.reports.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.feeds.WithLabelValues(r)
	}
	return m
}

// Register registers the metrics.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.reports, m.restarts, m.feeds, m.lost, m.connected} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering the restarter's metrics: %w", err)
		}
	}
	return nil
}
