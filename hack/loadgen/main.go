// Command loadgen sends one AdmissionReview over and over to an admission webhook
// over HTTPS and reports throughput and latency percentiles. It is kvinject's load
// generator for BENCHMARKS.md (see hack/bench.sh and test/bench).
//
// Two load shapes:
//
//   - fixed rate (-rate N): an open loop. Requests are scheduled every 1/N s whatever
//     the server does, and a request's latency counts from its scheduled time, so
//     time spent waiting for a free connection is included (no coordinated
//     omission). -c bounds the connections in use.
//   - saturation (-rate 0): a closed loop. -c workers each send their next request
//     as soon as the previous answer arrived.
//
// Connections use HTTP/1.1 with keep-alive unless -h2 is given: the API server
// calls webhooks behind a Service over HTTP/1.1, one connection per concurrent
// request (kubernetes/kubernetes#82090).
//
// Every run is bounded: -duration (at most 10 minutes) and -max-requests. Only
// loopback URLs are accepted. The result is printed as one JSON object (-json) or
// as text.
//
//	loadgen -url https://127.0.0.1:9443/mutate-v1-pod -body review.json -rate 1000 -c 32 -duration 15s
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// maxDuration bounds one measurement.
const maxDuration = 10 * time.Minute

// Result is what one run measured. Latencies are in milliseconds.
type Result struct {
	Mode        string         `json:"mode"` // "rate" or "saturation"
	TargetRPS   float64        `json:"targetRPS,omitempty"`
	Connections int            `json:"connections"`
	Proto       string         `json:"proto"`
	DurationS   float64        `json:"durationS"`
	Requests    int            `json:"requests"`
	Errors      int            `json:"errors"`
	Statuses    map[string]int `json:"statuses"`
	RPS         float64        `json:"rps"`
	MeanMS      float64        `json:"meanMS"`
	P50MS       float64        `json:"p50MS"`
	P90MS       float64        `json:"p90MS"`
	P99MS       float64        `json:"p99MS"`
	P999MS      float64        `json:"p999MS"`
	MaxMS       float64        `json:"maxMS"`
	// Late counts fixed-rate requests sent more than 1 ms after their scheduled
	// time because every connection was busy.
	Late int `json:"late,omitempty"`
	// Sent counts every request of the run, warm-up included, so that a caller
	// measuring the server's CPU time around the whole run can divide by it.
	Sent       int64  `json:"sent"`
	FirstError string `json:"firstError,omitempty"`
}

type config struct {
	url        string
	body       []byte
	rate       float64
	conns      int
	duration   time.Duration
	warmup     time.Duration
	maxReqs    int
	h2         bool
	expect     []byte
	tlsConfig  *tls.Config
	jsonOutput bool
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	res, err := run(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	if cfg.jsonOutput {
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return
	}
	fmt.Printf("%s c=%d %s: %d requests in %.1fs = %.0f req/s, %d errors; latency ms p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f\n",
		res.Mode, res.Connections, res.Proto, res.Requests, res.DurationS, res.RPS, res.Errors,
		res.P50MS, res.P90MS, res.P99MS, res.P999MS, res.MaxMS)
}

func parseFlags(args []string) (config, error) {
	var (
		c       config
		body    string
		caFile  string
		expect  string
		insecur bool
	)
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&c.url, "url", "", "webhook URL, https://127.0.0.1:PORT/path (loopback only)")
	fs.StringVar(&body, "body", "", "file holding the AdmissionReview to send")
	fs.StringVar(&caFile, "cacert", "", "PEM file of the CA that signed the webhook's certificate")
	fs.BoolVar(&insecur, "insecure", false, "do not verify the webhook's certificate")
	fs.Float64Var(&c.rate, "rate", 0, "requests per second (open loop); 0 sends as fast as -c connections allow")
	fs.IntVar(&c.conns, "c", 10, "connections (and workers)")
	fs.DurationVar(&c.duration, "duration", 15*time.Second, "measurement time (at most 10m)")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "load before measuring, not recorded")
	fs.IntVar(&c.maxReqs, "max-requests", 2_000_000, "stop measuring after this many requests")
	fs.BoolVar(&c.h2, "h2", false, "use HTTP/2 instead of HTTP/1.1")
	fs.StringVar(&expect, "expect", `"patch"`, "a response body must contain this to count as a success")
	fs.BoolVar(&c.jsonOutput, "json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	u, err := url.Parse(c.url)
	if err != nil || u.Scheme != "https" {
		return c, fmt.Errorf("-url %q: need an https URL", c.url)
	}
	if ip := net.ParseIP(u.Hostname()); !(u.Hostname() == "localhost" || ip != nil && ip.IsLoopback()) {
		return c, fmt.Errorf("-url %q: only loopback addresses may be loaded", c.url)
	}
	if c.body, err = os.ReadFile(body); err != nil {
		return c, fmt.Errorf("-body: %w", err)
	}
	switch {
	case c.conns < 1 || c.conns > 1000:
		return c, errors.New("-c must be between 1 and 1000")
	case c.duration <= 0 || c.duration > maxDuration:
		return c, fmt.Errorf("-duration must be positive and at most %s", maxDuration)
	case c.warmup < 0 || c.warmup > time.Minute:
		return c, errors.New("-warmup must be between 0 and 1m")
	case c.rate < 0 || c.rate > 100_000:
		return c, errors.New("-rate must be between 0 and 100000")
	case c.maxReqs < 1:
		return c, errors.New("-max-requests must be positive")
	}
	c.expect = []byte(expect)
	c.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	switch {
	case caFile != "":
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return c, fmt.Errorf("-cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return c, fmt.Errorf("-cacert %s holds no PEM certificate", caFile)
		}
		c.tlsConfig.RootCAs = pool
	case insecur:
		c.tlsConfig.InsecureSkipVerify = true //nolint:gosec // explicit flag, loopback only
	default:
		return c, errors.New("give -cacert or -insecure")
	}
	return c, nil
}

// client returns an HTTP client that keeps up to n connections open.
func (c *config) client() (*http.Client, string) {
	t := &http.Transport{
		TLSClientConfig:     c.tlsConfig.Clone(),
		MaxIdleConns:        c.conns,
		MaxIdleConnsPerHost: c.conns,
		MaxConnsPerHost:     c.conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   c.h2,
	}
	proto := "HTTP/1.1"
	if c.h2 {
		proto = "HTTP/2"
	} else {
		t.TLSClientConfig.NextProtos = []string{"http/1.1"}
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: t, Timeout: 30 * time.Second}, proto
}

// sample is one finished request.
type sample struct {
	latency time.Duration
	status  int
	err     error
	late    bool
}

// recorder collects samples from the workers.
type recorder struct {
	sent     atomic.Int64
	mu       sync.Mutex
	on       bool
	samples  []sample
	max      int
	firstErr error
}

func (r *recorder) add(s sample) {
	r.sent.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on || len(r.samples) >= r.max {
		return
	}
	r.samples = append(r.samples, s)
	if s.err != nil && r.firstErr == nil {
		r.firstErr = s.err
	}
}

func (r *recorder) full() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.samples) >= r.max
}

func (r *recorder) set(on bool) {
	r.mu.Lock()
	r.on = on
	r.mu.Unlock()
}

// send posts the body once and checks the answer.
func (c *config) send(ctx context.Context, hc *http.Client) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(c.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
	}
	if !bytes.Contains(b, c.expect) {
		return resp.StatusCode, fmt.Errorf("the answer lacks %q: %.300s", c.expect, b)
	}
	return resp.StatusCode, nil
}

// run warms up, measures for cfg.duration and summarises.
func run(ctx context.Context, cfg config) (*Result, error) {
	hc, proto := cfg.client()
	defer hc.CloseIdleConnections()
	// One request first: a configuration error fails fast instead of as a flood.
	if _, err := cfg.send(ctx, hc); err != nil {
		return nil, fmt.Errorf("first request: %w", err)
	}
	rec := &recorder{max: cfg.maxReqs}
	ctx, cancel := context.WithTimeout(ctx, cfg.warmup+cfg.duration+35*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if cfg.rate > 0 {
		startOpenLoop(ctx, &cfg, hc, rec, stop, &wg)
	} else {
		startClosedLoop(ctx, &cfg, hc, rec, stop, &wg)
	}
	time.Sleep(cfg.warmup)
	start := time.Now()
	rec.set(true)
	deadline := time.NewTimer(cfg.duration)
	tick := time.NewTicker(10 * time.Millisecond)
	for waiting := true; waiting; {
		select {
		case <-deadline.C:
			waiting = false
		case <-tick.C:
			waiting = !rec.full()
		}
	}
	tick.Stop()
	rec.set(false)
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()

	res := &Result{Mode: "saturation", TargetRPS: cfg.rate, Connections: cfg.conns, Proto: proto,
		DurationS: elapsed.Seconds(), Statuses: map[string]int{}}
	if cfg.rate > 0 {
		res.Mode = "rate"
	}
	lat := make([]time.Duration, 0, len(rec.samples))
	var sum time.Duration
	for _, s := range rec.samples {
		res.Requests++
		if s.late {
			res.Late++
		}
		if s.err != nil {
			res.Errors++
			res.Statuses[statusKey(s.status)]++
			continue
		}
		res.Statuses[statusKey(s.status)]++
		lat = append(lat, s.latency)
		sum += s.latency
	}
	if rec.firstErr != nil {
		res.FirstError = rec.firstErr.Error()
	}
	res.RPS = float64(res.Requests) / elapsed.Seconds()
	if n := len(lat); n > 0 {
		slices.Sort(lat)
		res.MeanMS = ms(sum / time.Duration(n))
		res.P50MS, res.P90MS = ms(quantile(lat, 0.50)), ms(quantile(lat, 0.90))
		res.P99MS, res.P999MS = ms(quantile(lat, 0.99)), ms(quantile(lat, 0.999))
		res.MaxMS = ms(lat[n-1])
	}
	res.Sent = rec.sent.Load() + 1 // and the first request
	return res, nil
}

// startClosedLoop starts cfg.conns workers that send back to back.
func startClosedLoop(ctx context.Context, cfg *config, hc *http.Client, rec *recorder, stop <-chan struct{}, wg *sync.WaitGroup) {
	for range cfg.conns {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				status, err := cfg.send(ctx, hc)
				rec.add(sample{latency: time.Since(t0), status: status, err: err})
				if ctx.Err() != nil {
					return
				}
			}
		})
	}
}

// startOpenLoop schedules requests every 1/rate and hands them to cfg.conns
// workers; latency counts from the scheduled time.
func startOpenLoop(ctx context.Context, cfg *config, hc *http.Client, rec *recorder, stop <-chan struct{}, wg *sync.WaitGroup) {
	// Enough room for a few seconds of backlog; beyond that the scheduler waits
	// (and those requests are late, which their latency shows).
	queue := make(chan time.Time, int(cfg.rate*5)+cfg.conns)
	interval := time.Duration(float64(time.Second) / cfg.rate)
	wg.Go(func() {
		defer close(queue)
		start := time.Now()
		for i := int64(0); ; i++ {
			due := start.Add(time.Duration(i) * interval)
			if d := time.Until(due); d > 0 {
				select {
				case <-stop:
					return
				case <-time.After(d):
				}
			}
			select {
			case <-stop:
				return
			case queue <- due:
			}
		}
	})
	for range cfg.conns {
		wg.Go(func() {
			for due := range queue {
				sent := time.Now()
				status, err := cfg.send(ctx, hc)
				rec.add(sample{latency: time.Since(due), status: status, err: err, late: sent.Sub(due) > time.Millisecond})
				if ctx.Err() != nil {
					return
				}
			}
		})
	}
}

// quantile returns the q-quantile of sorted values (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func statusKey(code int) string {
	if code == 0 {
		return "transport-error"
	}
	return strconv.Itoa(code)
}
