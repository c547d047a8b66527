package emulator

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// BenchmarkKeyVaultGet measures what one authenticated secret read costs the
// emulator (TLS, HTTP/2, routing, token check, throttle, JSON), with concurrent
// clients over one HTTP/2 connection and no added latency. It bounds the load
// a benchmark can put through the emulator before the emulator, rather than
// the code under test, is what is measured (see test/bench's rollout).
func BenchmarkKeyVaultGet(b *testing.B) {
	for _, throttled := range []bool{false, true} {
		name := "throttle=off"
		if throttled {
			name = "throttle=4000per10s"
		}
		b.Run(name, func(b *testing.B) {
			opts := Options{ThrottleLimit: -1}
			if throttled {
				// The real limit with a window so short that it is never
				// reached: every read passes through the full sliding window.
				opts.ThrottleLimit, opts.ThrottleWindow = DefaultThrottleLimit, time.Nanosecond
			}
			e, err := Start(opts)
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			e.SetSecret("benchvault", "DATABASE-PASSWORD", "s3cret-value-of-a-realistic-length-0123456789")
			clientID := newUUID()
			if err := e.Grant("benchvault", clientID, PermGet); err != nil {
				b.Fatal(err)
			}
			e.mu.Lock()
			p := e.principalLocked(clientID, e.opts.TenantID, "")
			e.mu.Unlock()
			token, _ := e.issueToken(p, "https://vault.azure.net")
			tr := e.Transport()
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			url := e.VaultURL("benchvault") + "secrets/DATABASE-PASSWORD/?api-version=2026-04-01"
			get := func() error {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				resp, err := client.Do(req)
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("HTTP %d", resp.StatusCode)
				}
				return nil
			}
			// One request first, so that every goroutine shares its connection.
			if err := get(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := get(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if st := e.Stats(); st.Connections != 1 || st.HTTP2Requests != st.Requests {
				b.Errorf("%d connections, %d of %d requests over HTTP/2; want one HTTP/2 connection", st.Connections, st.HTTP2Requests, st.Requests)
			}
		})
	}
}
