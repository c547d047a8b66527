package vaults

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Result labels of kvinject_hub_sweeps_total.
const (
	sweepOK          = "ok"
	sweepThrottled   = "throttled"    // 429
	sweepError       = "error"        // 5xx, connection errors
	sweepNotListable = "not_listable" // 401, 403 and other refusals
)

// metrics are the hub's Key Vault metrics. kvinject_hub_refusals_total is the
// server's: it counts every refusal it answers, these included.
type metrics struct {
	watchers      *prometheus.GaugeVec
	sweeps        *prometheus.CounterVec
	requests      *prometheus.CounterVec
	notifications prometheus.Counter
	pacingDelay   prometheus.Histogram
	listable      *prometheus.GaugeVec
	polled        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		watchers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvinject_hub_watchers",
			Help: "Open watches, by vault (host name).",
		}, []string{"vault"}),
		sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_sweeps_total",
			Help: "Sweeps of vaults, by result: ok, throttled (429), error (5xx, connection), not_listable (401, 403).",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_keyvault_requests_total",
			Help: "Key Vault requests (pages) the hub made, by op (list_secrets, list_versions) and status (HTTP status, or error).",
		}, []string{"op", "status"}),
		notifications: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvinject_hub_notifications_total",
			Help: "Change notifications released to watches (one per watch, whatever the number of changed objects in it).",
		}),
		pacingDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvinject_hub_pacing_delay_seconds",
			Help:    "Time from a watch being found changed to its notification's release by the vault's rate limiter.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12), // 10 ms .. ~10 min
		}),
		listable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvinject_hub_vault_listable",
			Help: "1 when the hub's last listing of the kind (secret, certificate, key) in the vault succeeded or failed transiently, 0 when Key Vault refused it (401, 403).",
		}, []string{"vault", "kind"}),
		polled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_polled_objects_total",
			Help: "Objects of watch requests answered as not watched (the agent polls them), by kind and reason: KindNotWatched (not in --watch-kinds), KindNotListable (Key Vault refused the listing).",
		}, []string{"kind", "reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.watchers, m.sweeps, m.requests, m.notifications, m.pacingDelay, m.listable, m.polled} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// forget removes a stopped vault's series.
func (m *metrics) forget(label string) {
	m.watchers.DeleteLabelValues(label)
	m.listable.DeletePartialMatch(prometheus.Labels{"vault": label})
}

// clock is the time source of pacing (a fake one in tests).
type clock interface {
	Now() time.Time
	// After returns a channel that receives after d, and a function that stops it.
	After(d time.Duration) (<-chan time.Time, func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) After(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}
