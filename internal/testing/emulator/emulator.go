package emulator

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTenantID is the tenant of vaults and managed identities when Options.TenantID is empty.
const DefaultTenantID = "8b6f2b8e-5c1a-4f3e-9d2a-0e5f4c3b2a10"

// Default throttling: Key Vault allows 4,000 secret transactions per 10 seconds per vault.
const (
	DefaultThrottleLimit  = 4000
	DefaultThrottleWindow = 10 * time.Second
)

// Options configure an emulator. The zero value is usable.
type Options struct {
	// TenantID is the default tenant for vaults and managed identities
	// (default DefaultTenantID).
	TenantID string
	// Port to listen on, on 127.0.0.1 only. 0 (the default) picks a free port.
	Port int
	// Latency is added to every Key Vault and Azure AD request (not to admin requests).
	Latency time.Duration
	// ThrottleLimit is the number of secret reads (gets and list pages) allowed per vault
	// within ThrottleWindow; the default is 4,000, a negative value disables throttling.
	ThrottleLimit int
	// ThrottleWindow is the sliding window of the throttle (default 10 s).
	ThrottleWindow time.Duration
	// TokenLifetime is the lifetime of issued access tokens (default 1 h, so expires_in
	// is 3599 like Azure AD).
	TokenLifetime time.Duration
	// Logger receives one record per request, if set. It never receives secret values,
	// tokens or assertions.
	Logger *slog.Logger
	// AdminToken protects the admin API; random when empty.
	AdminToken string
	// IdentityHeader is the value the managed-identity endpoint expects in
	// X-Identity-Header; random when empty.
	IdentityHeader string
	// Location is the default vault location used in messages (default "westeurope").
	Location string
}

// Stats are counters of the requests the emulator served. Admin requests are not counted.
type Stats struct {
	Requests          int64 `json:"requests"`          // Key Vault and Azure AD requests
	HTTP2Requests     int64 `json:"http2Requests"`     // of those, over HTTP/2
	Connections       int64 `json:"connections"`       // TCP connections accepted
	Gets              int64 `json:"gets"`              // authenticated gets (secrets, certificates, keys) that passed throttling
	Lists             int64 `json:"lists"`             // authenticated list pages that passed throttling
	Throttled         int64 `json:"throttled"`         // 429 responses, injected ones included
	Challenges        int64 `json:"challenges"`        // Key Vault 401 responses (missing or invalid bearer token)
	Discovery         int64 `json:"discovery"`         // OpenID configuration requests
	InstanceDiscovery int64 `json:"instanceDiscovery"` // instance discovery requests (/common/discovery/instance)
	TokenRequests     int64 `json:"tokenRequests"`     // token endpoint and managed-identity requests
	TokensIssued      int64 `json:"tokensIssued"`      // access tokens issued
	Faults            int64 `json:"faults"`            // injected faults applied
}

type counters struct {
	requests, http2, connections, gets, lists, throttled, challenges, discovery, instanceDiscovery atomic.Int64
	tokenRequests, tokensIssued, faults                                                            atomic.Int64
}

// Emulator is a running Key Vault and Azure AD emulator. All methods are safe for
// concurrent use.
type Emulator struct {
	opts       Options
	pki        *pki
	addr       string
	port       string
	srv        *http.Server
	served     chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	inflightMu sync.RWMutex // handlers hold it for reading; Close takes it to wait for them
	closed     bool
	logger     *slog.Logger
	latency    atomic.Int64 // nanoseconds

	stats counters

	// byClient holds the per-identity counters (*clientCounters), by lower-case
	// client ID.
	byClient sync.Map

	mu         sync.RWMutex
	vaults     map[string]*vault          // by lower-case name
	accounts   map[string]*storageAccount // Storage accounts (queues), by name
	eventSubs  map[string][]*eventSub     // Event Grid subscriptions, by lower-case vault name
	principals map[string]*principal      // by lower-case client ID
	systemID   string                     // client ID of the system-assigned identity
	tokens     map[string]*accessToken    // by token value
	throttle   throttleConfig

	faultsMu sync.Mutex
	faults   []*activeFault

	adminOnce sync.Once
	adminMux  *http.ServeMux
}

// Start starts an emulator on 127.0.0.1. Close it when done.
func Start(opts Options) (*Emulator, error) {
	if opts.TenantID == "" {
		opts.TenantID = DefaultTenantID
	}
	if !validTenant(opts.TenantID) {
		return nil, fmt.Errorf("emulator: invalid tenant ID %q", opts.TenantID)
	}
	if opts.ThrottleLimit == 0 {
		opts.ThrottleLimit = DefaultThrottleLimit
	}
	if opts.ThrottleWindow <= 0 {
		opts.ThrottleWindow = DefaultThrottleWindow
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = time.Hour
	}
	if opts.AdminToken == "" {
		opts.AdminToken = randomHex(24)
	}
	if opts.IdentityHeader == "" {
		opts.IdentityHeader = randomHex(16)
	}
	if opts.Location == "" {
		opts.Location = "westeurope"
	}
	p, err := newPKI(time.Now())
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.Port)))
	if err != nil {
		return nil, fmt.Errorf("emulator: listen: %w", err)
	}
	e := &Emulator{
		opts:       opts,
		pki:        p,
		addr:       ln.Addr().String(),
		served:     make(chan struct{}),
		done:       make(chan struct{}),
		logger:     opts.Logger,
		vaults:     map[string]*vault{},
		principals: map[string]*principal{},
		tokens:     map[string]*accessToken{},
		throttle:   throttleConfig{limit: opts.ThrottleLimit, window: opts.ThrottleWindow},
	}
	_, e.port, _ = net.SplitHostPort(e.addr)
	e.latency.Store(int64(opts.Latency))

	errorLog := log.New(io.Discard, "", 0)
	if e.logger != nil {
		errorLog = slog.NewLogLogger(e.logger.Handler(), slog.LevelDebug)
	}
	e.srv = &http.Server{
		Handler: http.HandlerFunc(e.serveHTTP),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{p.serving},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2", "http/1.1"},
		},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          errorLog,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				e.stats.connections.Add(1)
			}
		},
	}
	go func() {
		defer close(e.served)
		_ = e.srv.ServeTLS(ln, "", "")
	}()
	return e, nil
}

// Close stops the server, closes all connections and waits for in-flight handlers.
func (e *Emulator) Close() error {
	var err error
	e.closeOnce.Do(func() {
		err = e.srv.Close()
		close(e.done) // wakes handlers waiting for latency
		<-e.served
		e.inflightMu.Lock()
		e.closed = true
		e.inflightMu.Unlock()
	})
	return err
}

// Addr is the listener's address, "127.0.0.1:PORT".
func (e *Emulator) Addr() string { return e.addr }

// CAPEM is the PEM encoding of the emulator's CA certificate.
func (e *Emulator) CAPEM() []byte { return append([]byte(nil), e.pki.caPEM...) }

// TenantID is the emulator's default tenant.
func (e *Emulator) TenantID() string { return e.opts.TenantID }

// AdminToken is the value the admin API expects in the AdminTokenHeader header.
func (e *Emulator) AdminToken() string { return e.opts.AdminToken }

// IdentityHeader is the value the managed-identity endpoint expects in X-Identity-Header
// (the IDENTITY_HEADER environment variable of a client).
func (e *Emulator) IdentityHeader() string { return e.opts.IdentityHeader }

// MSIEndpoint is the App Service style managed-identity endpoint (the IDENTITY_ENDPOINT
// environment variable of a client), https://127.0.0.1:PORT/msi/token.
func (e *Emulator) MSIEndpoint() string { return "https://" + e.addr + "/msi/token" }

// AuthorityHost is an Azure AD authority served on the listener's own address,
// https://127.0.0.1:PORT/. MSAL does not trust that host, so clients using it must set
// DisableInstanceDiscovery (or also route login.microsoftonline.com to the emulator, which
// answers instance discovery too).
func (e *Emulator) AuthorityHost() string { return "https://" + e.addr + "/" }

// VaultURL is the URL of a vault in the public cloud, https://NAME.vault.azure.net/.
func (e *Emulator) VaultURL(name string) string {
	return "https://" + strings.ToLower(name) + "." + clouds[0].vaultSuffix + "/"
}

// SetLatency changes the latency added to Key Vault and Azure AD requests.
func (e *Emulator) SetLatency(d time.Duration) { e.latency.Store(int64(max(d, 0))) }

// Stats returns a snapshot of the request counters.
func (e *Emulator) Stats() Stats {
	c := &e.stats
	return Stats{
		Requests:          c.requests.Load(),
		HTTP2Requests:     c.http2.Load(),
		Connections:       c.connections.Load(),
		Gets:              c.gets.Load(),
		Lists:             c.lists.Load(),
		Throttled:         c.throttled.Load(),
		Challenges:        c.challenges.Load(),
		Discovery:         c.discovery.Load(),
		InstanceDiscovery: c.instanceDiscovery.Load(),
		TokenRequests:     c.tokenRequests.Load(),
		TokensIssued:      c.tokensIssued.Load(),
		Faults:            c.faults.Load(),
	}
}

// ResetStats sets all request counters, per-vault and per-identity counts included, to zero.
func (e *Emulator) ResetStats() {
	c := &e.stats
	for _, a := range []*atomic.Int64{&c.requests, &c.http2, &c.connections, &c.gets, &c.lists,
		&c.throttled, &c.challenges, &c.discovery, &c.instanceDiscovery, &c.tokenRequests, &c.tokensIssued, &c.faults} {
		a.Store(0)
	}
	e.byClient.Range(func(k, _ any) bool {
		e.byClient.Delete(k)
		return true
	})
	e.mu.RLock()
	defer e.mu.RUnlock()
	for _, v := range e.vaults {
		v.reads.Store(0)
	}
}

// clientCounters count the Key Vault requests of one identity.
type clientCounters struct {
	valueReads, lists, queueRequests atomic.Int64
}

func (e *Emulator) clientCounters(clientID string) *clientCounters {
	key := strings.ToLower(clientID)
	if c, ok := e.byClient.Load(key); ok {
		return c.(*clientCounters)
	}
	c, _ := e.byClient.LoadOrStore(key, &clientCounters{})
	return c.(*clientCounters)
}

// ValueReads is the number of Key Vault get requests (of a secret, a certificate or a
// key: the requests that can return a value) that the identity with this client ID
// sent since start or ResetStats, whatever the answer: denied, faulted and throttled
// ones included. A test proves with it that an identity never read a value.
func (e *Emulator) ValueReads(clientID string) int64 {
	if c, ok := e.byClient.Load(strings.ToLower(clientID)); ok {
		return c.(*clientCounters).valueReads.Load()
	}
	return 0
}

// ListRequests is the number of Key Vault list requests (pages of secrets or of
// versions) that the identity with this client ID sent since start or ResetStats,
// whatever the answer.
func (e *Emulator) ListRequests(clientID string) int64 {
	if c, ok := e.byClient.Load(strings.ToLower(clientID)); ok {
		return c.(*clientCounters).lists.Load()
	}
	return 0
}

// QueueRequests is the number of authenticated Queue service requests that the
// identity with this client ID sent since start or ResetStats.
func (e *Emulator) QueueRequests(clientID string) int64 {
	if c, ok := e.byClient.Load(strings.ToLower(clientID)); ok {
		return c.(*clientCounters).queueRequests.Load()
	}
	return 0
}

// DialContext dials the emulator for every host name it emulates (vault hosts of existing
// vaults, the Azure AD hosts, localhost and its own address) on any port, and dials
// normally otherwise. A vault host of a vault that does not exist fails like a DNS lookup
// of a name that does not exist. Use it as http.Transport.DialContext.
func (e *Emulator) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	var d net.Dialer
	switch {
	case isLoginHost(host), host == "localhost" && port == e.port:
		return d.DialContext(ctx, "tcp4", e.addr)
	}
	if account, ok := parseQueueHost(host); ok {
		if !e.accountResolves(account) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{
				Err: "no such host", Name: host, IsNotFound: true}}
		}
		return d.DialContext(ctx, "tcp4", e.addr)
	}
	if name, c, ok := parseVaultHost(host); ok {
		if !e.vaultResolves(name, c) {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{
				Err: "no such host", Name: host, IsNotFound: true}}
		}
		return d.DialContext(ctx, "tcp4", e.addr)
	}
	return d.DialContext(ctx, network, addr)
}

// Transport returns a new transport for clients of the emulator: it dials through
// DialContext, trusts only the emulator's CA and negotiates HTTP/2.
func (e *Emulator) Transport() *http.Transport {
	return &http.Transport{
		DialContext:           e.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: e.pki.caPool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// reqInfo collects what a handler learned about a request, for the log record.
type reqInfo struct {
	op       string
	vault    string
	clientID string
	fault    string
}

type ctxKey struct{}

func infoFrom(r *http.Request) *reqInfo {
	if ri, ok := r.Context().Value(ctxKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{}
}

// recorder captures the status code for the log record.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// serveHTTP routes a request by its Host header.
func (e *Emulator) serveHTTP(w http.ResponseWriter, r *http.Request) {
	e.inflightMu.RLock()
	defer e.inflightMu.RUnlock()
	if e.closed {
		http.Error(w, "emulator closed", http.StatusServiceUnavailable)
		return
	}
	start := time.Now()
	rec := &recorder{ResponseWriter: w}
	ri := &reqInfo{}
	r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, ri))
	host := requestHost(r)
	defer func() {
		if e.logger == nil {
			return
		}
		status := rec.status
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("host", host),
			slog.String("path", r.URL.Path),
			slog.Int("status", status),
			slog.Duration("latency", time.Since(start)),
			slog.String("proto", r.Proto),
		}
		if ri.op != "" {
			attrs = append(attrs, slog.String("op", ri.op))
		}
		if ri.vault != "" {
			attrs = append(attrs, slog.String("vault", ri.vault))
		}
		if ri.clientID != "" {
			attrs = append(attrs, slog.String("client_id", ri.clientID))
		}
		if ri.fault != "" {
			attrs = append(attrs, slog.String("fault", ri.fault))
		}
		e.logger.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
	}()

	if strings.HasPrefix(r.URL.Path, adminPrefix) {
		ri.op = "admin"
		e.serveAdmin(rec, r)
		return
	}
	e.stats.requests.Add(1)
	if r.ProtoMajor == 2 {
		e.stats.http2.Add(1)
	}
	// Vault and login host names are served on any port, so that clients can also reach
	// the emulator through a resolver entry and a URL with its port.
	hostname := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		hostname = h
	}
	if name, c, ok := parseVaultHost(hostname); ok {
		e.serveKeyVault(rec, r, name, c)
		return
	}
	if account, ok := parseQueueHost(hostname); ok {
		e.serveQueue(rec, r, account)
		return
	}
	if isLoginHost(hostname) || e.isSelfHost(host) {
		e.serveIdentity(rec, r)
		return
	}
	ri.op = "misdirected"
	writeJSON(rec, http.StatusMisdirectedRequest, map[string]any{
		"error": map[string]any{"code": "MisdirectedRequest", "message": "The emulator does not serve host " + host + "."},
	})
}

// requestHost is the request's host, lower case, with the port only when it is not 443.
func requestHost(r *http.Request) string {
	h := strings.ToLower(r.Host)
	if hh, p, err := net.SplitHostPort(h); err == nil && p == "443" {
		h = hh
	}
	return h
}

func (e *Emulator) isSelfHost(host string) bool {
	h, p, err := net.SplitHostPort(host)
	if err != nil {
		return false
	}
	return p == e.port && (h == "127.0.0.1" || h == "localhost")
}

// delay waits for the configured latency. When the request is cancelled or the emulator
// closes meanwhile, it aborts the handler so that no answer is sent.
func (e *Emulator) delay(r *http.Request) {
	d := time.Duration(e.latency.Load())
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return
	case <-r.Context().Done():
	case <-e.done:
	}
	panic(http.ErrAbortHandler)
}

// cloud describes one Azure cloud.
type cloudInfo struct {
	name        string
	vaultSuffix string
	loginHost   string
	resource    string
}

// Cloud names accepted in VaultOptions.Cloud.
const (
	CloudPublic = "AzurePublic"
	CloudUSGov  = "AzureUSGovernment"
	CloudChina  = "AzureChina"
)

var clouds = []cloudInfo{
	{CloudPublic, "vault.azure.net", "login.microsoftonline.com", "https://vault.azure.net"},
	{CloudUSGov, "vault.usgovcloudapi.net", "login.microsoftonline.us", "https://vault.usgovcloudapi.net"},
	{CloudChina, "vault.azure.cn", "login.chinacloudapi.cn", "https://vault.azure.cn"},
}

func cloudByName(name string) (*cloudInfo, bool) {
	if name == "" {
		return &clouds[0], true
	}
	for i := range clouds {
		if strings.EqualFold(clouds[i].name, name) {
			return &clouds[i], true
		}
	}
	return nil, false
}

// parseVaultHost splits NAME.vault.azure.net (or another cloud's suffix) into the vault
// name and its cloud.
func parseVaultHost(host string) (string, *cloudInfo, bool) {
	for i := range clouds {
		c := &clouds[i]
		if name, ok := strings.CutSuffix(host, "."+c.vaultSuffix); ok && name != "" && !strings.Contains(name, ".") {
			return name, c, true
		}
	}
	return "", nil, false
}

func isLoginHost(host string) bool {
	switch host {
	case "login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
		"login.partner.microsoftonline.cn":
		return true
	}
	return false
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func validTenant(t string) bool {
	if t == "" {
		return false
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// ErrNotFound is returned (wrapped) for a vault or secret that does not exist.
var ErrNotFound = errors.New("not found")
