package hub

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Defaults of Options.
const (
	// DefaultMaxWait is how long a watch is held without change (jittered
	// by maxWaitJitter).
	DefaultMaxWait = 5 * time.Minute
	// DefaultMaxConnectionAge is the age after which a connection is closed
	// after its next answer (jittered by connAgeJitter).
	DefaultMaxConnectionAge = 30 * time.Minute
)

const (
	// maxWaitJitter spreads the ends of held requests: +-10%.
	maxWaitJitter = 0.10
	// connAgeJitter spreads connection recycling: +-20%.
	connAgeJitter = 0.20
	// writeTimeout bounds writing one answer.
	writeTimeout = 30 * time.Second
	// drainRetryAfter is the Retry-After of the answers of a stopping hub, so
	// that agents reconnect to another replica soon (jittered up to 5x).
	drainRetryAfter = time.Second
	// shutdownTimeout bounds waiting for answers in flight when stopping.
	shutdownTimeout = 20 * time.Second
	// refusalLogInterval: a pod's refusal for one reason is logged at most
	// once per interval.
	refusalLogInterval = time.Minute
)

// Watcher is the Key Vault side of the hub: *vaults.Hub.
type Watcher interface {
	Watch(ctx context.Context, vault string, objs []hubapi.Object) (*vaults.Watch, error)
}

// Options configure a Server.
type Options struct {
	// Kube is the API server client: TokenReviews (create) and pods (get).
	Kube kubernetes.Interface
	// Vaults watches the objects once a request is authorized.
	Vaults Watcher
	// MaxWait is how long a request is held without change; 0 means
	// DefaultMaxWait. Each request's wait is jittered by +-10% and never
	// extends beyond its token's expiry.
	MaxWait time.Duration
	// MaxConnectionAge is the age after which a connection is closed after
	// its next answer (Connection: close), so that agents rebalance across
	// replicas; 0 means DefaultMaxConnectionAge. Jittered by +-20% per
	// connection.
	MaxConnectionAge time.Duration
	// PodCacheTTL is how long a pod lookup is reused; 0 means
	// DefaultPodCacheTTL, negative means never.
	PodCacheTTL time.Duration
	// RestarterServiceAccount is "<namespace>/<name>" of the restart
	// controller's ServiceAccount, the only identity the feed
	// (hubapi.FeedPath) answers; empty: no feed, and reports
	// (hubapi.ChangedPath) are refused with hubapi.ReasonRestartsOff.
	RestarterServiceAccount string
	// FeedSize bounds the reports kept for the restart controller; 0 means
	// DefaultFeedSize.
	FeedSize int
	// Logger receives the server's log; nil discards it.
	Logger *slog.Logger
	// Registerer receives the server's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Server is the hub's watch endpoint: an http.Handler for POST
// hubapi.WatchPath that authenticates the agent's token (TokenReview),
// authorizes the objects against its pod's injected agent, and holds the
// request until one of them changes or the wait ends.
type Server struct {
	opts    Options
	authn   *authenticator
	authz   *authorizer
	metrics *metrics
	log     *slog.Logger
	logs    *logLimiter
	now     func() time.Time

	apiAnswered atomic.Bool
	drainOnce   sync.Once
	draining    chan struct{}

	// listener is Serve's listener, which takes hijacked connections back
	// (nil outside Serve); ages keeps a handed-back connection's maximum age
	// (net.Conn -> time.Time) for its next ConnContext; lot is the parked
	// watches.
	listener atomic.Pointer[reuseListener]
	ages     sync.Map
	lot      lot

	// feed keeps the reports of swapped sets for the restart controller,
	// whose ServiceAccount is restarterNS/restarterSA (empty: no feed).
	feed                     *feed
	feedMetrics              *feedMetrics
	restarterNS, restarterSA string
}

// NewServer returns a Server.
func NewServer(opts Options) (*Server, error) {
	if opts.Kube == nil || opts.Vaults == nil {
		return nil, errors.New("hub.NewServer: Options.Kube and Options.Vaults are required")
	}
	if opts.MaxWait == 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.MaxConnectionAge == 0 {
		opts.MaxConnectionAge = DefaultMaxConnectionAge
	}
	switch {
	case opts.PodCacheTTL == 0:
		opts.PodCacheTTL = DefaultPodCacheTTL
	case opts.PodCacheTTL < 0:
		opts.PodCacheTTL = 0
	}
	if opts.MaxWait < 0 || opts.MaxConnectionAge < 0 {
		return nil, errors.New("hub.NewServer: MaxWait and MaxConnectionAge must be positive")
	}
	if opts.FeedSize == 0 {
		opts.FeedSize = DefaultFeedSize
	}
	if opts.FeedSize < 0 {
		return nil, errors.New("hub.NewServer: FeedSize must be positive")
	}
	var restarterNS, restarterSA string
	if opts.RestarterServiceAccount != "" {
		var err error
		if restarterNS, restarterSA, err = hubapi.ParseServiceAccount(opts.RestarterServiceAccount); err != nil {
			return nil, fmt.Errorf("hub.NewServer: RestarterServiceAccount: %w", err)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	fm, err := newFeedMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:     opts,
		metrics:  m,
		log:      log,
		logs:     newLogLimiter(refusalLogInterval, 100_000),
		now:      time.Now,
		draining: make(chan struct{}),

		feedMetrics: fm,
		restarterNS: restarterNS,
		restarterSA: restarterSA,
	}
	s.feed = newFeed(opts.FeedSize, s.now)
	s.authn = newAuthenticator(opts.Kube, m, s.now, s.markAPIAnswered)
	s.authz = newAuthorizer(opts.Kube, opts.PodCacheTTL, m, s.now)
	return s, nil
}

// MaxWaitBound is the longest the server holds a request, which the
// MaxWaitHeader announces so that the agent's timeout exceeds it: its wait
// (MaxWait, +10% jitter) and, for a watch whose change is queued for pacing
// when the wait ends, up to one more MaxWait (see hold). Without a change, a
// request is answered after its wait, at most MaxWait+10%.
func (s *Server) MaxWaitBound() time.Duration {
	return time.Duration(float64(s.opts.MaxWait)*(1+maxWaitJitter)) + s.opts.MaxWait
}

// ServeHTTP serves POST hubapi.WatchPath.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	w.Header().Set(hubapi.MaxWaitHeader, s.MaxWaitBound().String())
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.refused(w, r, nil, refuse(hubapi.ReasonBadRequest, fmt.Sprintf("method %s: a watch is POST %s", r.Method, hubapi.WatchPath)), http.StatusMethodNotAllowed)
		return
	}
	if s.isDraining() {
		w.Header().Set("Connection", "close")
		s.refused(w, r, nil, s.drainRefusal(), 0)
		return
	}
	token, ref := bearerToken(r)
	if ref != nil {
		s.refused(w, r, nil, ref, 0)
		return
	}
	id, ref := s.authn.authenticate(ctx, token)
	if ref != nil {
		s.refused(w, r, nil, ref, 0)
		return
	}
	req, ref := readRequest(w, r)
	if ref != nil {
		s.refused(w, r, &id, ref, 0)
		return
	}
	agent, ref := s.authz.podOf(ctx, id)
	if ref == nil {
		ref = agent.check(req)
	}
	if ref != nil {
		s.refused(w, r, &id, ref, 0)
		return
	}
	wait := jitter(s.opts.MaxWait, maxWaitJitter)
	// Never hold a request beyond its token's expiry: the next request brings
	// the kubelet's fresh token, reviewed again.
	var untilExpiry time.Duration = -1
	if !id.Expires.IsZero() {
		untilExpiry = id.Expires.Sub(s.now())
		if untilExpiry <= 0 {
			s.refused(w, r, &id, refuse(hubapi.ReasonUnauthenticated, "the token has expired: read the projected token file again"), 0)
			return
		}
		wait = min(wait, untilExpiry)
	}
	watch, err := s.opts.Vaults.Watch(ctx, req.vault, req.Objects)
	if err != nil {
		s.refused(w, r, &id, vaultRefusal(err), 0)
		return
	}
	s.holdWatch(w, r, &id, req.vault, watch, wait, untilExpiry)
}

// vaultRefusal turns an error of Vaults.Watch into a refusal.
func vaultRefusal(err error) *refusal {
	if err == nil {
		return unavailable("the hub ended the watch", defaultRetryAfter)
	}
	var vr *vaults.Refusal
	if errors.As(err, &vr) {
		return &refusal{reason: vr.Reason, message: vr.Message, retryAfter: vr.RetryAfter}
	}
	return unavailable("the hub could not set up the watch: "+oneLine(err.Error()), defaultRetryAfter)
}

// refused answers with ref (status overrides its reason's status when not 0),
// counts it, and logs it at most once a minute per pod (or client address)
// and reason.
func (s *Server) refused(w http.ResponseWriter, r *http.Request, id *identity, ref *refusal, status int) {
	writeAnswer(w, r, s, s.refusalAnswer(id, clientIP(r), ref, status))
}

// countRefusal counts a refusal, logs it at most once a minute per pod (or
// client address) and reason, and returns the copy to answer with (its
// Retry-After jittered).
func (s *Server) countRefusal(id *identity, client string, ref *refusal) *refusal {
	s.metrics.requests.WithLabelValues(resultRefused).Inc()
	s.metrics.refusals.WithLabelValues(ref.reason).Inc()
	// A copy: cached and shared refusals are read by other requests.
	cp := *ref
	ref = &cp
	if ref.reason == hubapi.ReasonUnavailable || ref.reason == hubapi.ReasonVaultNotListable {
		ref.retryAfter = jitter(max(ref.retryAfter, time.Second), 0.2)
	}
	who := "client " + client
	attrs := []any{"reason", ref.reason, "message", ref.message}
	if id != nil {
		who = "pod " + id.Pod()
		attrs = append(attrs, "pod", id.Pod(), "podUID", string(id.PodUID))
	} else {
		attrs = append(attrs, "client", client)
	}
	if s.logs.allow(who+" "+ref.reason, s.now()) {
		s.log.Info("watch refused (logged once a minute per pod and reason)", attrs...)
	}
	return ref
}

// writeRefusalStatus is writeRefusal with another status than the reason's.
func writeRefusalStatus(w http.ResponseWriter, ref *refusal, status int) {
	w.Header().Set("Content-Type", "application/json")
	body, _ := json.Marshal(hubapi.Refusal{Reason: ref.reason, Message: ref.message})
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// clientIP is the request's remote address without its port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// connKey is the context key of a connection's connInfo.
type connKey struct{}

// connInfo is what the server keeps of a connection.
type connInfo struct {
	// closeAfter is when the connection has reached its (jittered) maximum age.
	closeAfter time.Time
}

// ConnContext is the http.Server's ConnContext: it notes each connection's
// start and jittered maximum age.
func (s *Server) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if t, ok := s.ages.LoadAndDelete(c); ok {
		// A connection handed back after a parked watch's answer.
		return context.WithValue(ctx, connKey{}, &connInfo{closeAfter: t.(time.Time)})
	}
	return context.WithValue(ctx, connKey{}, &connInfo{closeAfter: s.now().Add(jitter(s.opts.MaxConnectionAge, connAgeJitter))})
}

// recycle, called just before an answer is written, asks for the connection
// to be closed after it once the connection is older than its maximum age, so that the agent's next request opens a new
// connection, which the Service may send to another replica.
func (s *Server) recycle(w http.ResponseWriter, r *http.Request) {
	if ci, ok := r.Context().Value(connKey{}).(*connInfo); ok && !s.now().Before(ci.closeAfter) {
		w.Header().Set("Connection", "close")
	}
}

// Drain makes the server answer every held and new request with 503
// ReasonUnavailable and a short Retry-After, closing their connections, so
// that the agents reconnect to another replica. It is what Serve does when
// its context ends; readiness fails from then on.
func (s *Server) Drain() {
	s.drainOnce.Do(func() {
		close(s.draining)
		for _, p := range s.lot.all() {
			go p.settle()
		}
	})
}

func (s *Server) isDraining() bool {
	select {
	case <-s.draining:
		return true
	default:
		return false
	}
}

func (s *Server) drainRefusal() *refusal {
	return unavailable("this hub replica is shutting down: reconnect (to another replica)", drainRetryAfter+time.Duration(rand.Int64N(int64(4*drainRetryAfter))))
}

// markAPIAnswered records that the API server answered.
func (s *Server) markAPIAnswered() { s.apiAnswered.Store(true) }

// Ready is the readiness check: the API server has answered a TokenReview or
// a discovery call (WaitForAPI), and the server is not draining.
func (s *Server) Ready(*http.Request) error {
	if s.isDraining() {
		return errors.New("the hub is shutting down")
	}
	if !s.apiAnswered.Load() {
		return errors.New("the Kubernetes API server has not answered yet")
	}
	return nil
}

// WaitForAPI asks the API server for its version until it answers (then the
// server is ready) or ctx ends. It never returns an error but ctx's: a
// runnable for the manager.
func (s *Server) WaitForAPI(ctx context.Context) error {
	delay := 500 * time.Millisecond
	for !s.apiAnswered.Load() {
		if _, err := s.opts.Kube.Discovery().ServerVersion(); err == nil {
			s.markAPIAnswered()
			s.log.Info("the Kubernetes API server answered: ready")
			break
		} else {
			s.log.Warn("the Kubernetes API server does not answer yet; retrying", "error", oneLine(err.Error()), "retryIn", delay)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
	<-ctx.Done()
	return nil
}

// TLSConfig is the hub's TLS configuration: TLS 1.2 or newer with AEAD,
// forward-secret suites only, HTTP/1.1 only (a held request per connection,
// and Connection: close recycles connections), the certificate from
// getCertificate (certwatcher's, which reloads it when the files change).
func TLSConfig(getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos:     []string{"http/1.1"},
		GetCertificate: getCertificate,
	}
}

// Serve serves the watch endpoint over TLS on ln until ctx ends, then drains
// (see Drain): it stops accepting connections, answers the held requests with
// 503 and a short Retry-After, and waits for those answers (at most 20 s).
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	mux := http.NewServeMux()
	mux.Handle(hubapi.WatchPath, s)
	mux.HandleFunc(hubapi.ChangedPath, s.serveChanged)
	mux.HandleFunc(hubapi.FeedPath, s.serveFeed)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// No ReadTimeout or WriteTimeout: they would cut held requests. The
		// body's read and the answer's write have their own deadlines.
		IdleTimeout:    90 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ConnContext:    s.ConnContext,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// HTTP/1.1 only (tlsConfig offers only http/1.1; a non-nil empty
		// map keeps net/http from adding HTTP/2).
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	rl := newReuseListener(tls.NewListener(ln, tlsConfig))
	s.listener.Store(rl)
	defer s.listener.CompareAndSwap(rl, nil)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(rl) }()
	select {
	case err := <-errc:
		return fmt.Errorf("the hub's watch server stopped: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: answering held watches with 503 so that agents reconnect elsewhere")
	s.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	// The parked watches are the server's own (hijacked), not net/http's:
	// Shutdown does not wait for them.
	parked := make(chan struct{})
	go func() { s.lot.wg.Wait(); close(parked) }()
	err := srv.Shutdown(sctx)
	select {
	case <-parked:
	case <-sctx.Done():
	}
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("shutting down the hub's watch server: %w", err)
	}
	return nil
}

// jitter returns d scaled by a random factor in [1-f, 1+f].
func jitter(d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
}
