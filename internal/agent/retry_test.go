package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"429", secretErr("", kvErr(429, "Throttled", "", "", nil)), true},
		{"500", kvErr(500, "InternalServerError", "", "", nil), true},
		{"503", kvErr(503, "ServiceUnavailable", "", "", nil), true},
		{"408", kvErr(408, "RequestTimeout", "", "", nil), true},
		{"401", kvErr(401, "Unauthorized", "", "", nil), false},
		{"403 access", kvErr(403, "Forbidden", "", "AccessDenied", nil), false},
		{"403 disabled", kvErr(403, "Forbidden", "", "SecretDisabled", nil), false},
		{"404", kvErr(404, "SecretNotFound", "", "", nil), false},
		{"400", kvErr(400, "BadParameter", "", "", nil), false},
		{"AAD invalid_client", aadErr(401, "invalid_client", 70021, ""), false},
		{"AAD unknown client", aadErr(400, "unauthorized_client", 700016, ""), false},
		{"AAD unavailable", aadErr(503, "temporarily_unavailable", 0, ""), true},
		{"AAD throttled", aadErr(429, "temporarily_unavailable", 0, ""), true},
		{"AAD no response", &azidentity.AuthenticationFailedError{}, true},
		{"MSI not found", msiErr(400, map[string]string{"error": "invalid_request"}), false},
		{"MSI unavailable", msiErr(503, map[string]string{}), true},
		{"tenant not allowed", errors.New(`WorkloadIdentityCredential isn't configured to acquire tokens for tenant "x"`), false},
		{"no system identity", errors.New("ManagedIdentityCredential: failed to authenticate a system assigned identity"), false},
		{"challenge mismatch", errors.New(`challenge resource "https://vault.azure.net" doesn't match the requested domain`), false},
		{"config", &ConfigError{Msg: "x"}, false},
		{"connection refused", &url.Error{Op: "Get", URL: exVault, Err: &net.OpError{Op: "dial", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}}, true},
		{"reset", &url.Error{Op: "Get", URL: exVault, Err: syscall.ECONNRESET}, true},
		{"EOF", &url.Error{Op: "Get", URL: exVault, Err: io.EOF}, true},
		{"timeout", &url.Error{Op: "Get", URL: exVault, Err: context.DeadlineExceeded}, true},
		{"unknown authority", &url.Error{Op: "Get", URL: exVault, Err: x509.UnknownAuthorityError{}}, false},
		{"no such host", &url.Error{Op: "Get", URL: exVault, Err: &net.DNSError{Err: "no such host", IsNotFound: true}}, false},
		{"DNS timeout", &url.Error{Op: "Get", URL: exVault, Err: &net.DNSError{Err: "timeout", IsTimeout: true}}, true},
		{"given up", &GiveUpError{Err: kvErr(503, "", "", "", nil)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := transient(tc.err); got != tc.want {
				t.Errorf("transient(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
		want   time.Duration
	}{
		{"none", nil, 0},
		{"seconds", map[string]string{"Retry-After": "7"}, 7 * time.Second},
		{"ms", map[string]string{"retry-after-ms": "250"}, 250 * time.Millisecond},
		{"x-ms", map[string]string{"x-ms-retry-after-ms": "1500"}, 1500 * time.Millisecond},
		{"ms wins", map[string]string{"Retry-After": "7", "retry-after-ms": "100"}, 100 * time.Millisecond},
		{"garbage", map[string]string{"Retry-After": "soon"}, 0},
		{"negative", map[string]string{"Retry-After": "-3"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := secretErr("", kvErr(429, "Throttled", "", "", tc.header))
			if got := retryAfter(err); got != tc.want {
				t.Errorf("retryAfter = %s, want %s", got, tc.want)
			}
		})
	}
	date := time.Now().Add(30 * time.Second).UTC().Format(time.RFC1123)
	date = date[:len(date)-3] + "GMT"
	if got := retryAfter(kvErr(503, "", "", "", map[string]string{"Retry-After": date})); got < 25*time.Second || got > 31*time.Second {
		t.Errorf("retryAfter(HTTP date +30s) = %s", got)
	}
	if got := retryAfter(fmt.Errorf("plain")); got != 0 {
		t.Errorf("retryAfter(plain error) = %s", got)
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: time.Second}
	plain := errors.New("x")
	// Each delay lies in [d/2, d] for d = min * 2^attempt, capped at max.
	for i, d := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		d *= time.Millisecond
		for range 20 {
			bb := b
			got := bb.next(plain)
			if got < d/2 || got > d {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", i, got, d/2, d)
			}
		}
		b.next(plain)
	}
	// Retry-After above the computed delay wins, spread over up to as long
	// again, so that pods throttled together come back apart.
	throttled := kvErr(429, "Throttled", "", "", map[string]string{"Retry-After": "3"})
	var lo, hi time.Duration = time.Hour, 0
	for range 200 {
		b.reset()
		got := b.next(throttled)
		if got < 3*time.Second || got > 6*time.Second {
			t.Fatalf("delay with Retry-After 3: %s, want within [3s, 6s]", got)
		}
		lo, hi = min(lo, got), max(hi, got)
	}
	if hi-lo < time.Second {
		t.Errorf("delays with Retry-After 3 span only %s..%s: not spread", lo, hi)
	}
	// An absurd Retry-After is bounded, and so is its spread.
	huge := kvErr(429, "Throttled", "", "", map[string]string{"Retry-After": "86400"})
	if got := b.next(huge); got < maxRetryAfter || got > maxRetryAfter+retryAfterSpread {
		t.Fatalf("delay with Retry-After 1 day: %s", got)
	}
}

// TestSpreadFirst: the first stretched poll is spread over a whole interval,
// [d/2, 3d/2), each quarter of it about as likely (not within ±10% of d).
func TestSpreadFirst(t *testing.T) {
	const d, n = time.Minute, 4000
	var quarters [4]int
	for range n {
		got := spreadFirst(d)
		if got < d/2 || got >= 3*d/2 {
			t.Fatalf("spreadFirst(1m) = %s, want within [30s, 90s)", got)
		}
		quarters[(got-d/2)*4/d]++
	}
	for i, q := range quarters {
		if q < n/4*8/10 || q > n/4*12/10 {
			t.Errorf("quarter %d of [30s, 90s) got %d of %d first polls: not spread (%v)", i, q, n, quarters)
		}
	}
}

func TestJittered(t *testing.T) {
	for range 200 {
		if got := jittered(time.Minute); got < 54*time.Second || got > 66*time.Second {
			t.Fatalf("jittered(1m) = %s", got)
		}
	}
}
