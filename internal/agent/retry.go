package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// transient reports whether err may go away by itself: throttling, server
// errors, timeouts, connection failures and an unavailable token endpoint.
// Permanent errors (401, 403, 404, a disabled secret, Azure AD refusing the
// identity, TLS verification failures, a name that does not resolve) need a
// change by a person, so retrying them only delays the explanation.
func transient(err error) bool {
	if err == nil {
		return false
	}
	var ce *ConfigError
	var cont *ContentError
	if errors.As(err, &ce) || errors.As(err, &cont) {
		return false
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return transientStatus(re.StatusCode)
	}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) {
		if afe.RawResponse != nil {
			return transientStatus(afe.RawResponse.StatusCode)
		}
		// Without a response, the token request did not get an answer.
		return !isTLSVerification(err) && !isNotFoundHost(err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "isn't configured to acquire tokens for tenant"),
		strings.Contains(msg, "failed to authenticate a system assigned identity"),
		strings.Contains(msg, "doesn't match the requested domain"):
		return false
	case isTLSVerification(err), isNotFoundHost(err):
		return false
	}
	// Connection errors, timeouts, an unavailable managed-identity endpoint and
	// anything unknown: retry within the time bound.
	return true
}

// transientStatus reports whether an HTTP status is worth retrying.
func transientStatus(code int) bool {
	return code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500
}

// isTLSVerification reports whether err is a failed certificate verification.
func isTLSVerification(err error) bool {
	var (
		ua  x509.UnknownAuthorityError
		hn  x509.HostnameError
		ci  x509.CertificateInvalidError
		tve *tls.CertificateVerificationError
	)
	if errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) || errors.As(err, &tve) {
		return true
	}
	// azidentity flattens some errors into text.
	msg := err.Error()
	return strings.Contains(msg, "x509: ") || strings.Contains(msg, "tls: failed to verify")
}

// isNotFoundHost reports whether err is a DNS lookup of a name that does not exist.
func isNotFoundHost(err error) bool {
	var de *net.DNSError
	if errors.As(err, &de) {
		return de.IsNotFound
	}
	return strings.Contains(err.Error(), "no such host")
}

// retryAfter returns the delay a throttled or unavailable service asked for,
// from Retry-After (seconds or an HTTP date), retry-after-ms or
// x-ms-retry-after-ms; zero when none.
func retryAfter(err error) time.Duration {
	var resp *http.Response
	var re *azcore.ResponseError
	var afe *azidentity.AuthenticationFailedError
	switch {
	case errors.As(err, &re):
		resp = re.RawResponse
	case errors.As(err, &afe):
		resp = afe.RawResponse
	}
	if resp == nil {
		return 0
	}
	for _, h := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := resp.Header.Get(h); v != "" {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil && s > 0 {
			return time.Duration(s) * time.Second
		}
		if t, err := http.ParseTime(v); err == nil {
			if d := time.Until(t); d > 0 {
				return d
			}
		}
	}
	return 0
}

// maxRetryAfter bounds a Retry-After the agent honours.
const maxRetryAfter = 10 * time.Minute

// retryAfterSpread bounds the jitter added to a Retry-After.
const retryAfterSpread = 30 * time.Second

// backoff computes exponentially growing, jittered delays between failed
// attempts, at least what the service asked for with Retry-After.
type backoff struct {
	min, max time.Duration
	attempt  int
}

// next returns the delay before the next attempt after err.
func (b *backoff) next(err error) time.Duration {
	d := b.min
	for i := 0; i < b.attempt && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	// "Equal jitter": half fixed, half random.
	if half := d / 2; half > 0 {
		d = half + rand.N(half+1)
	}
	if ra := min(retryAfter(err), maxRetryAfter); ra > d {
		// Never earlier than asked, but spread over up to as long again
		// (at most retryAfterSpread more): pods throttled together are told
		// the same Retry-After and would otherwise come back together.
		d = ra + rand.N(min(ra, retryAfterSpread)+1)
	}
	b.attempt++
	return d
}

// reset starts over after a success.
func (b *backoff) reset() { b.attempt = 0 }

// jittered returns d changed by up to ±10%, so that pods started together do
// not poll together.
func jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	spread := d / 5
	return d - spread/2 + rand.N(spread+1)
}

// spreadFirst is the wait before the first stretched poll after the hub was
// lost: uniform in [d/2, 3d/2). The agents of a cluster lose the hub at the
// same moment; with jittered (±10%) their first polls would all fall within a
// fifth of d, a peak as high as polling without the stretch. Spread over a
// whole d, the first round costs Key Vault the stretched rate, and the later
// rounds (jittered from each agent's own first poll) stay spread.
func spreadFirst(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d/2 + rand.N(d)
}

// sleep waits for d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
