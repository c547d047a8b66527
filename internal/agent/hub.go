package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Defaults of the hub client (see Options).
const (
	// DefaultSafetyInterval is the period of the full re-read while the hub
	// drives rotation (jittered by ±10%).
	DefaultSafetyInterval = 24 * time.Hour
	// DefaultHubMinBackoff and DefaultHubMaxBackoff bound the delays between
	// attempts to reach the hub while it is unusable.
	DefaultHubMinBackoff = time.Second
	DefaultHubMaxBackoff = 5 * time.Minute
	// HubFallbackStretch multiplies --rotation while the hub is unusable: the
	// agents then poll Key Vault, but 5 times less often than without a hub,
	// so that a hub outage does not bring back the load the hub removes.
	HubFallbackStretch = 5
)

const (
	// defaultHubMaxWait is how long the agent expects the hub to hold a watch
	// request before the hub told it (hubapi.MaxWaitHeader).
	defaultHubMaxWait = 10 * time.Minute
	// minHubMaxWait and maxHubMaxWait bound the MaxWaitHeader the agent believes.
	minHubMaxWait = time.Second
	maxHubMaxWait = time.Hour
	// hubTimeoutMargin is added to the hub's maximum wait (besides a quarter
	// of it, for the hub's jitter) to bound one watch request.
	hubTimeoutMargin = 30 * time.Second
	// hubLagRetries is how many times a notified object is read again while
	// Key Vault still returns the version the agent holds (replication lag),
	// after MinBackoff, twice that, and so on.
	hubLagRetries = 3
	// maxHubAnswer bounds the body of a watch answer the agent reads.
	maxHubAnswer = 1 << 20
	// maxHubToken bounds the token file the agent reads.
	maxHubToken = 64 << 10
)

// Rotation sources: the "source" attribute of every rotation log line when a
// hub is configured, the agent's status. With sourceHub the hub tells the
// agent when a watched object changed; with sourcePoll the hub is unusable
// and the agent polls the watched objects at HubFallbackStretch x --rotation.
const (
	sourceHub  = "hub"
	sourcePoll = "poll"
)

// Triggers: the "trigger" attribute of the log lines of a read with a hub,
// what made the agent read.
const (
	triggerHub      = "hub"      // the hub reported a change
	triggerPoll     = "poll"     // the stretched poll while the hub is unusable
	triggerRotation = "rotation" // the poll of objects the hub does not watch, every --rotation
	triggerSafety   = "safety"   // the safety re-read of the whole set
)

// Reasons for leaving the hub besides the hub's own refusals (hubapi.Reason*),
// the "reason" attribute of the "rotation source" log line.
const (
	hubReasonConnection = "ConnectionFailed"
	hubReasonTLS        = "UntrustedCertificate"
	hubReasonTimeout    = "Timeout"
	hubReasonBadAnswer  = "BadAnswer"
	hubReasonToken      = "TokenFile"
	hubReasonConfig     = "HubConfig"
)

// hubError is a failed watch request. Its message never holds the token.
type hubError struct {
	// reason is the hub's Refusal.Reason or one of the hubReason* constants.
	reason string
	// status is the HTTP status of a refusal; 0 without an answer.
	status int
	msg    string
	// retryAfter is what a refusal's Retry-After asked for.
	retryAfter time.Duration
	err        error
}

func (e *hubError) Error() string { return e.msg }
func (e *hubError) Unwrap() error { return e.err }

// hubClient makes watch requests (hubapi.WatchPath) to the version hub over a
// transport of its own, trusting only the roots of KVINJECT_HUB_CA.
type hubClient struct {
	// base is the hub's URL without a trailing '/'; url is its WatchPath.
	base      string
	url       string
	tokenFile string
	userAgent string
	transport *http.Transport
	client    *http.Client
}

// newHubClient returns the client of the hub at hubURL, configured from env.
// Its errors are *ConfigError: without a CA or a token file the agent cannot
// use the hub at all.
func newHubClient(hubURL string, env Env, log *slog.Logger) (*hubClient, error) {
	if env.HubCA == "" {
		return nil, &ConfigError{Msg: fmt.Sprintf("--hub is set but %s is empty, so the agent trusts no certificate for the hub. Fix: the webhook sets it from --hub-ca-file (default: ca.crt of --cert-dir); check that file, then recreate the pod", agentconfig.EnvHubCA)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(env.HubCA)) {
		return nil, &ConfigError{Msg: fmt.Sprintf("%s holds no PEM certificate. Fix: point the webhook's --hub-ca-file at the PEM CA that signed the hub's serving certificate, then recreate the pod", agentconfig.EnvHubCA)}
	}
	if env.HubTokenFile == "" {
		return nil, &ConfigError{Msg: fmt.Sprintf("--hub is set but %s is empty, so the agent has no token to present to the hub. Fix: the webhook sets it with --hub-url; make sure the webhook and the agent image are the same kvinject version, then recreate the pod", agentconfig.EnvHubTokenFile)}
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.ForceAttemptHTTP2 = true
	// An HTTP/2 connection that hears nothing for 30s is pinged, and closed
	// when the ping goes unanswered: a long poll on a dead connection fails
	// within a minute instead of at its timeout.
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second}
	if env.TestResolve != "" {
		rules, err := parseResolve(env.TestResolve)
		if err != nil {
			return nil, &ConfigError{Msg: fmt.Sprintf("%s: %v", agentconfig.EnvTestResolve, err)}
		}
		t.DialContext = rules.dialContext
		log.Warn("TEST OPTION IN USE: dialing the hub overridden by "+agentconfig.EnvTestResolve+"; never set this in production",
			"env", agentconfig.EnvTestResolve, "rules", env.TestResolve)
	}
	return &hubClient{
		base:      strings.TrimSuffix(hubURL, "/"),
		url:       strings.TrimSuffix(hubURL, "/") + hubapi.WatchPath,
		tokenFile: env.HubTokenFile,
		userAgent: userAgent(env.Pod()),
		transport: t,
		client:    &http.Client{Transport: t},
	}, nil
}

// close closes the client's idle connections.
func (c *hubClient) close() { c.transport.CloseIdleConnections() }

// watchResult is the outcome of one watch request.
type watchResult struct {
	// changed are the objects the hub answered with (none: its wait ended).
	changed []hubapi.Object
	// poll are the objects of the request the hub does not watch.
	poll []hubapi.Polled
	// maxWait is the hub's MaxWaitHeader; 0 when absent or out of bounds.
	maxWait time.Duration
	// took is how long the request took.
	took time.Duration
	err  *hubError
}

// hubTimeout bounds a watch request to a hub that holds requests for maxWait.
func hubTimeout(maxWait time.Duration) time.Duration {
	return maxWait + maxWait/4 + hubTimeoutMargin
}

// watch sends one watch request and waits for its answer, at most timeout.
// The token file is read again for every request: the kubelet renews it.
func (c *hubClient) watch(ctx context.Context, req hubapi.WatchRequest, timeout time.Duration) watchResult {
	start := time.Now()
	res := c.do(ctx, req, timeout)
	res.took = time.Since(start)
	return res
}

func (c *hubClient) do(ctx context.Context, wreq hubapi.WatchRequest, timeout time.Duration) watchResult {
	token, herr := c.token()
	if herr != nil {
		return watchResult{err: herr}
	}
	body, err := json.Marshal(wreq)
	if err != nil {
		return watchResult{err: &hubError{reason: hubReasonConfig, msg: fmt.Sprintf("cannot encode the watch request: %v", err), err: err}}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return watchResult{err: &hubError{reason: hubReasonConfig, msg: fmt.Sprintf("bad hub URL: %v", err), err: err}}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Authorization", "Bearer "+token)
	// A watch changes nothing: the transport may send it again on a fresh
	// connection when the hub closed a reused one (it recycles them after
	// an answer). The empty key marks it so without sending the header.
	req.Header["X-Idempotency-Key"] = []string{}
	resp, err := c.client.Do(req)
	if err != nil {
		return watchResult{err: connError(ctx, err)}
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxHubAnswer))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		r := hubapi.ReadRefusal(resp)
		reason := r.Reason
		if reason == "" {
			reason = fmt.Sprintf("HTTP%d", resp.StatusCode)
		}
		return watchResult{err: &hubError{reason: reason, status: resp.StatusCode, msg: firstLine(r.Error(), 300),
			retryAfter: parseRetryAfter(resp.Header.Get("Retry-After")), err: r}}
	}
	res := watchResult{maxWait: parseMaxWait(resp.Header.Get(hubapi.MaxWaitHeader))}
	var answer hubapi.WatchResponse
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxHubAnswer))
	if err := dec.Decode(&answer); err != nil {
		if ctx.Err() != nil || !isSyntax(err) {
			// The connection broke or timed out while the hub held the request.
			res.err = connError(ctx, err)
			return res
		}
		res.err = &hubError{reason: hubReasonBadAnswer, status: resp.StatusCode, msg: fmt.Sprintf("the hub answered HTTP %d with a body that is not a watch response: %v", resp.StatusCode, err), err: err}
		return res
	}
	for _, o := range answer.Changed {
		if o.Name == "" || o.Version == "" || o.Kind == "" {
			res.err = &hubError{reason: hubReasonBadAnswer, status: resp.StatusCode, msg: fmt.Sprintf("the hub answered with a changed object without a kind, name or version (%s)", o)}
			return res
		}
	}
	for _, p := range answer.Poll {
		if p.Name == "" || p.Kind == "" {
			res.err = &hubError{reason: hubReasonBadAnswer, status: resp.StatusCode, msg: fmt.Sprintf("the hub answered with an object to poll without a kind or name (%s/%s)", p.Kind, p.Name)}
			return res
		}
	}
	res.changed, res.poll = answer.Changed, answer.Poll
	return res
}

// isSyntax reports whether err says that a body is not the JSON expected, as
// opposed to a body cut short.
func isSyntax(err error) bool {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return errors.As(err, &se) || errors.As(err, &te) || errors.Is(err, io.EOF)
}

// token reads the hub token file.
func (c *hubClient) token() (string, *hubError) {
	f, err := os.Open(c.tokenFile)
	if err != nil {
		return "", &hubError{reason: hubReasonToken, msg: fmt.Sprintf("cannot read the hub token %s (%s): %v. Fix: the pod must mount the projected volume kvinject-hub-token (audience %s); recreate the pod", c.tokenFile, agentconfig.EnvHubTokenFile, errText(errors.Unwrap(err)), hubapi.Audience), err: err}
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHubToken+1))
	if err != nil {
		return "", &hubError{reason: hubReasonToken, msg: fmt.Sprintf("cannot read the hub token %s: %v", c.tokenFile, errText(err)), err: err}
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case tok == "":
		return "", &hubError{reason: hubReasonToken, msg: fmt.Sprintf("the hub token %s is empty", c.tokenFile)}
	case len(b) > maxHubToken, strings.ContainsAny(tok, " \t\r\n"):
		return "", &hubError{reason: hubReasonToken, msg: fmt.Sprintf("the hub token %s is not a token (over %d bytes, or several words)", c.tokenFile, maxHubToken)}
	}
	return tok, nil
}

// connError describes a request that got no (complete) answer.
func connError(ctx context.Context, err error) *hubError {
	switch {
	case isTLSVerification(err):
		return &hubError{reason: hubReasonTLS, err: err,
			msg: fmt.Sprintf("the hub's certificate is not trusted (%s). Fix: %s must hold the CA that signed the hub's serving certificate (the webhook's --hub-ca-file); recreate the pod after fixing it", errText(err), agentconfig.EnvHubCA)}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &hubError{reason: hubReasonTimeout, err: err, msg: fmt.Sprintf("the hub did not answer in time (%s)", errText(err))}
	}
	return &hubError{reason: hubReasonConnection, err: err, msg: fmt.Sprintf("cannot reach the hub (%s)", errText(err))}
}

// parseMaxWait parses hubapi.MaxWaitHeader; 0 when absent or out of bounds.
func parseMaxWait(v string) time.Duration {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < minHubMaxWait || d > maxHubMaxWait {
		return 0
	}
	return d
}

// parseRetryAfter parses a Retry-After header (seconds or an HTTP date).
func parseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s > 0 {
		return min(time.Duration(s)*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return min(d, maxRetryAfter)
		}
	}
	return 0
}
