//go:build integration

package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// loadResult is hack/loadgen's JSON result (the fields used here).
type loadResult struct {
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	RPS        float64 `json:"rps"`
	P50MS      float64 `json:"p50MS"`
	P99MS      float64 `json:"p99MS"`
	P999MS     float64 `json:"p999MS"`
	MaxMS      float64 `json:"maxMS"`
	Late       int     `json:"late"`
	Sent       int64   `json:"sent"`
	FirstError string  `json:"firstError"`
}

// webhookLoad is one load shape.
type webhookLoad struct {
	name  string
	rate  int // 0: saturation
	conns int
}

// BenchmarkWebhookHTTPS loads the real webhook binary over HTTPS with the
// AdmissionReviews the API server sends, at fixed rates (open loop, latency
// from the scheduled send time) and at saturation (closed loop), from
// hack/loadgen running as its own process on the same two cores. It reports
// throughput, latency percentiles, the webhook's CPU time per request and its
// peak RSS. When `hey` is installed it also runs the two `hey` commands of
// docs/performance-anchors.md, for a comparison with the same load command.
func BenchmarkWebhookHTTPS(b *testing.B) {
	c := controlPlane(b)
	loadgen := binary(b, "hack/loadgen")
	ca := c.caFile(b)
	duration := pick(15*time.Second, 300*time.Millisecond)
	shapes := []struct{ containers, secrets int }{{1, 3}, {10, 50}}
	loads := []webhookLoad{
		{"rate=250", 250, 32}, {"rate=1000", 1000, 32}, {"rate=2000", 2000, 32},
		{"saturation/c=1", 0, 1}, {"saturation/c=10", 0, 10}, {"saturation/c=50", 0, 50},
	}
	for _, shape := range shapes {
		body := c.reviewFile(b, shape.containers, shape.secrets)
		for _, l := range loads {
			if shape.containers > 1 && l.rate != 1000 && l.conns != 50 {
				continue // the large pod: the target rate and saturation only
			}
			b.Run(fmt.Sprintf("pod=%dx%d/%s/%s", shape.containers, shape.secrets, l.name, duration), func(b *testing.B) {
				var sum loadResult
				var cpuPerReq float64
				for range b.N {
					cpu0 := procCPU(c.webhookPID)
					args := []string{"-json", "-url", c.webhookURL(), "-cacert", ca, "-body", body,
						"-c", strconv.Itoa(l.conns), "-duration", duration.String(), "-warmup", pick("2s", "100ms")}
					if l.rate > 0 {
						args = append(args, "-rate", strconv.Itoa(l.rate))
					}
					out, err := exec.Command(loadgen, args...).Output()
					if err != nil {
						b.Fatalf("loadgen %v: %v\n%s", args, err, stderrOf(err))
					}
					var r loadResult
					if err := json.Unmarshal(out, &r); err != nil {
						b.Fatalf("loadgen output %q: %v", out, err)
					}
					if r.Errors > 0 {
						b.Fatalf("%d of %d requests failed; first: %s", r.Errors, r.Requests, r.FirstError)
					}
					cpuPerReq += ms(procCPU(c.webhookPID)-cpu0) / float64(r.Sent)
					sum.RPS += r.RPS
					sum.P50MS += r.P50MS
					sum.P99MS += r.P99MS
					sum.P999MS += r.P999MS
					sum.MaxMS += r.MaxMS
					sum.Late += r.Late
				}
				n := float64(b.N)
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(sum.RPS/n, "req/s")
				b.ReportMetric(sum.P50MS/n, "p50-ms")
				b.ReportMetric(sum.P99MS/n, "p99-ms")
				b.ReportMetric(sum.P999MS/n, "p99.9-ms")
				b.ReportMetric(sum.MaxMS/n, "max-ms")
				b.ReportMetric(cpuPerReq/n, "webhook-cpu-ms/req")
				b.ReportMetric(float64(procStatusKB(c.webhookPID, "VmHWM"))/1024, "webhook-peak-rss-MiB")
				if l.rate > 0 {
					b.ReportMetric(float64(sum.Late)/n, "late-sends")
				}
			})
		}
	}
	heyBin, err := exec.LookPath("hey")
	if err != nil {
		b.Logf("hey is not installed: skipping the anchor commands (hack/bench.sh installs it)")
		return
	}
	body := c.reviewFile(b, 1, 3)
	secs := pick("15s", "1s")
	for _, args := range [][]string{{"-c", "50"}, {"-c", "10", "-q", "100"}} {
		b.Run("hey/pod=1x3/"+strings.Join(args, "")+"/z="+secs, func(b *testing.B) {
			for range b.N {
				cpu0 := procCPU(c.webhookPID)
				full := append([]string{"-z", secs, "-m", "POST", "-T", "application/json", "-D", body}, args...)
				out, err := exec.Command(heyBin, append(full, c.webhookURL())...).Output()
				if err != nil {
					b.Fatalf("hey: %v\n%s", err, stderrOf(err))
				}
				h, err := parseHey(out)
				if err != nil {
					b.Fatalf("%v:\n%s", err, out)
				}
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(h.rps, "req/s")
				b.ReportMetric(h.p50*1000, "p50-ms")
				b.ReportMetric(h.p99*1000, "p99-ms")
				b.ReportMetric(ms(procCPU(c.webhookPID)-cpu0)/float64(h.requests), "webhook-cpu-ms/req")
			}
		})
	}
}

// heyResult is what is read from hey's text summary.
type heyResult struct {
	rps, p50, p99 float64 // p50 and p99 in seconds
	requests      int
}

var (
	heyRPS      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	heyPct      = regexp.MustCompile(`(?m)^\s+(50|99)%+ in ([0-9.]+) secs`)
	heyStatus   = regexp.MustCompile(`(?m)^\s+\[(\d+)\]\s+(\d+) responses`)
	heyErrorSec = regexp.MustCompile(`(?m)^Error distribution:`)
)

func parseHey(out []byte) (heyResult, error) {
	var h heyResult
	if heyErrorSec.Match(out) {
		return h, fmt.Errorf("hey saw errors")
	}
	m := heyRPS.FindSubmatch(out)
	if m == nil {
		return h, fmt.Errorf("no Requests/sec in hey's output")
	}
	h.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	for _, m := range heyPct.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		if string(m[1]) == "50" {
			h.p50 = v
		} else {
			h.p99 = v
		}
	}
	for _, m := range heyStatus.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(m[2]))
		if string(m[1]) != "200" {
			return h, fmt.Errorf("hey got %d responses with status %s", n, m[1])
		}
		h.requests += n
	}
	if h.requests == 0 || h.p50 == 0 || h.p99 == 0 {
		return h, fmt.Errorf("incomplete hey output")
	}
	return h, nil
}

// stderrOf returns the standard error of a failed command.
func stderrOf(err error) []byte {
	if ee, ok := err.(*exec.ExitError); ok {
		return bytes.TrimSpace(ee.Stderr)
	}
	return nil
}
