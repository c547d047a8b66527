// Package vaults is the Key Vault side of kvinject's version hub: it sweeps the
// vaults that agents watch, detects new versions of the watched objects
// (secrets, and certificates and keys when Options.Kinds names them), checks
// the versions agents hold, and releases change notifications within a read
// budget per vault.
//
// # Kinds
//
// Each sweep lists the secrets of the vault and, for each other watched kind
// with objects watched in the vault, that kind (azcertificates
// NewListCertificatePropertiesPager, azkeys NewListKeyPropertiesPager; one
// listing per kind per sweep), and lists versions with the kind's versions
// pager, as below for secrets. A certificate version with the thumbprint (x5t)
// of the one held is no change: the agent would write the same certificate.
// Objects are keyed by kind and name (a certificate's secret and key share its
// name). A vault may let the hub list secrets but not certificates or keys: a
// 401 or 403 on another kind's listing makes that kind "not listable" in that
// vault only (logged once until it recovers, kvinject_hub_vault_listable{kind}
// 0, retried every NotListableRetry); its watches end at once with its objects
// in Watch.Polled, and new watches naming it get them there too, as do objects
// of a kind not in Options.Kinds, so that the agents poll those and watch the
// rest. Secrets not listable make the whole vault not listable, as below.
//
// # Sweeps
//
// Each vault that a watch names gets one sweeper goroutine. Every
// SweepInterval (jittered by +-10%) it lists the vault's secret properties
// (azsecrets NewListSecretPropertiesPager, all pages; never a value). The
// attributes.updated of a watched secret is a hint only (whole seconds; it also
// changes on tag and content-type edits): when it changed since the versions
// were last listed, or when that listing was too close to it to be trusted (a
// change within the same second would keep it), the sweeper lists the secret's
// versions (NewListSecretPropertiesVersionsPager, paged in id order, not time
// order; at most MaxVersions), sorts them by created and takes the newest
// enabled one. Watchers are told only when that newest enabled version
// changed: a tag edit, a disabled newest version or a deleted secret tells
// nobody.
//
// 429, 5xx and connection errors back off exponentially (1 s doubling, capped at
// 5 minutes), honouring Retry-After; the last known state stays valid meanwhile.
// A 401 or 403 on the listing makes the vault "not listable": logged once until
// it recovers, exported as kvinject_hub_vault_listable 0, watches of it are
// refused (hubapi.ReasonVaultNotListable, so the agents poll) and the listing is
// retried every 5 minutes.
//
// # Watches
//
// [Hub.Watch] checks each held version. A listed version created before the
// newest enabled one: changed at once (still paced). The newest enabled one,
// or one as new (a disabled newest version, a version of the same second):
// watching, so that a disabled newest never sends agents back and ties never
// loop. Unknown: the object's versions are listed now (single-flight per
// object: concurrent watches share one listing, and it waits for the budget)
// and checked again; still unknown, or no such object: refused with
// hubapi.ReasonUnknownVersion, without saying which. Watches are indexed by
// (vault, kind, name); no goroutine runs per watch.
//
// # Metrics
//
// kvinject_hub_watchers{vault}, kvinject_hub_sweeps_total{result},
// kvinject_hub_keyvault_requests_total{op,status},
// kvinject_hub_notifications_total, kvinject_hub_pacing_delay_seconds and
// kvinject_hub_vault_listable{vault}; the vault label is the vault's host.
// kvinject_hub_refusals_total is the server's: it counts every refusal it
// answers, these included.
//
// # Pacing
//
// One goroutine per vault releases changed watches in FIFO order through a
// smooth rate limiter (golang.org/x/time/rate) of ReadBudget tokens per second:
// a released batch costs one token per changed object (the agent reads each
// once). The hub's own reads count against the same budget: version listings
// for watches wait for it, the sweeps' pages are debited without waiting (a
// sweep is never delayed by a wave of notifications).
//
// Names of vaults and secrets appear in logs; values never do: the hub never
// reads one.
package vaults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// Defaults of Options.
const (
	DefaultSweepInterval = 30 * time.Second
	DefaultReadBudget    = 100
	DefaultMaxVersions   = 500
	DefaultIdleTimeout   = 10 * time.Minute
)

// NotListableRetry is how often the hub retries listing a vault that answered
// 401 or 403.
const NotListableRetry = 5 * time.Minute

// MaxBackoff caps the backoff after 429, 5xx and connection errors.
const MaxBackoff = 5 * time.Minute

// Options configure a Hub.
type Options struct {
	// Client returns the client the hub lists vaultURL with (the hub's
	// identity). Called once per vault (again if the vault was dropped after
	// IdleTimeout), with the vault's canonical URL
	// ("https://<name>.vault.azure.net/"). The hub backs off on its own: give
	// the client no retries (policy.RetryOptions{MaxRetries: -1}) so that
	// throttling reaches the hub and its counts are exact.
	Client func(vaultURL string) (*azsecrets.Client, error)
	// Kinds are the watched kinds (hubapi.KindSecret, KindCertificate,
	// KindKey); default secrets only. Secrets are always among them: the
	// listing of secrets decides whether a vault is listable at all.
	Kinds []string
	// CertificateClient and KeyClient build the clients of certificates and
	// keys, as Client; required when Kinds names their kind.
	CertificateClient func(vaultURL string) (*azcertificates.Client, error)
	KeyClient         func(vaultURL string) (*azkeys.Client, error)
	// SweepInterval is the time between sweeps of a vault; default 30s; each
	// wait jittered +-10%.
	SweepInterval time.Duration
	// ReadBudget is the number of Key Vault reads per second per vault that this
	// replica may cause (already divided by the replicas); default 100.
	ReadBudget float64
	// MaxVersions bounds one version listing; default 500. A secret with more
	// versions is judged by the first MaxVersions in id order (logged).
	MaxVersions int
	// IdleTimeout stops sweeping a vault nobody watched for this long; default
	// 10m. Objects nobody watched for this long are forgotten too.
	IdleTimeout time.Duration
	// Logger receives the hub's records; nil discards them.
	Logger *slog.Logger
	// Registerer registers the metrics; nil: metrics not registered (still
	// counted).
	Registerer prometheus.Registerer
}

// Hub sweeps vaults, checks versions and paces notifications. Its methods are
// safe for concurrent use.
type Hub struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	burst   int

	// Test seams: the clock of pacing, the retry of a vault that is not
	// listable, the first backoff, and a hook run when a batch is released.
	clock            clock
	notListableRetry time.Duration
	backoffBase      time.Duration
	onRelease        func(w *Watch, batch []hubapi.Object, at time.Time)

	mu      sync.Mutex
	runCtx  context.Context
	started chan struct{} // closed when Run starts
	ended   bool          // Run returned
	vaults  map[string]*vault
	wg      sync.WaitGroup

	callsMu sync.Mutex
	calls   map[string]int64
}

// New returns a hub; call Run to start it.
func New(opts Options) (*Hub, error) {
	if opts.Client == nil {
		return nil, errors.New("vaults: Options.Client is nil: give the function that builds the hub's Key Vault client")
	}
	if opts.SweepInterval < 0 || opts.ReadBudget < 0 || opts.MaxVersions < 0 || opts.IdleTimeout < 0 {
		return nil, fmt.Errorf("vaults: negative option (SweepInterval %v, ReadBudget %v, MaxVersions %d, IdleTimeout %v): use 0 for the default",
			opts.SweepInterval, opts.ReadBudget, opts.MaxVersions, opts.IdleTimeout)
	}
	if len(opts.Kinds) == 0 {
		opts.Kinds = []string{hubapi.KindSecret}
	}
	kinds, err := ParseKinds(strings.Join(opts.Kinds, ","))
	switch {
	case err != nil:
		return nil, fmt.Errorf("vaults: Options.Kinds: %w", err)
	case kinds[0] != hubapi.KindSecret:
		return nil, errors.New("vaults: Options.Kinds must include secret: the listing of secrets decides whether a vault is listable")
	case slices.Contains(kinds, hubapi.KindCertificate) && opts.CertificateClient == nil:
		return nil, errors.New("vaults: Options.CertificateClient is nil but certificates are watched")
	case slices.Contains(kinds, hubapi.KindKey) && opts.KeyClient == nil:
		return nil, errors.New("vaults: Options.KeyClient is nil but keys are watched")
	}
	opts.Kinds = kinds
	if opts.SweepInterval == 0 {
		opts.SweepInterval = DefaultSweepInterval
	}
	if opts.ReadBudget == 0 {
		opts.ReadBudget = DefaultReadBudget
	}
	if opts.MaxVersions == 0 {
		opts.MaxVersions = DefaultMaxVersions
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Hub{
		opts:             opts,
		log:              log,
		metrics:          m,
		burst:            burstOf(opts.ReadBudget),
		clock:            realClock{},
		notListableRetry: NotListableRetry,
		backoffBase:      time.Second,
		started:          make(chan struct{}),
		vaults:           map[string]*vault{},
		calls:            map[string]int64{},
	}, nil
}

// burstOf is the burst of a budget: a tenth of a second's worth, 1 to 5, so
// that the rate stays smooth.
func burstOf(budget float64) int {
	return max(1, min(5, int(budget/10)))
}

// Run runs sweeps and pacers until ctx is done. Watches still open then end:
// their Done channel closes with ReasonUnavailable.
func (h *Hub) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.runCtx != nil {
		h.mu.Unlock()
		return errors.New("vaults: Hub.Run called twice")
	}
	h.runCtx = ctx
	close(h.started)
	h.mu.Unlock()

	<-ctx.Done()
	h.mu.Lock()
	h.ended = true
	vs := make([]*vault, 0, len(h.vaults))
	for _, v := range h.vaults {
		vs = append(vs, v)
	}
	h.mu.Unlock()
	h.wg.Wait()
	for _, v := range vs {
		v.mu.Lock()
		v.stopped = true
		v.endGenerationLocked(&Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub is shutting down", RetryAfter: 5 * time.Second})
		v.mu.Unlock()
	}
	return nil
}

// KeyVaultCalls returns the Key Vault calls made, by op and status: keys like
// "list_secrets 200" and "list_versions 403" (one call per page; "error" when
// no answer came).
func (h *Hub) KeyVaultCalls() map[string]int64 {
	h.callsMu.Lock()
	defer h.callsMu.Unlock()
	return maps.Clone(h.calls)
}

func (h *Hub) countCall(op, status string) {
	h.callsMu.Lock()
	h.calls[op+" "+status]++
	h.callsMu.Unlock()
	h.metrics.requests.WithLabelValues(op, status).Inc()
}

// Refusal is the error of Watch: the agent should poll instead. Reason is a
// hubapi.Reason* constant.
type Refusal struct {
	Reason, Message string
	// RetryAfter is when asking the hub again may succeed; 0: no advice.
	RetryAfter time.Duration
}

// Error describes the refusal.
func (r *Refusal) Error() string {
	return "watch refused (" + r.Reason + "): " + r.Message
}

func badRequest(format string, args ...any) *Refusal {
	return &Refusal{Reason: hubapi.ReasonBadRequest, Message: fmt.Sprintf(format, args...)}
}

// normalizeVault returns the canonical URL of a vault URL and its host (the
// metrics label), or a refusal.
func normalizeVault(vaultURL string) (string, string, *Refusal) {
	_, canonical, ok := agentconfig.CloudOfVault(vaultURL)
	if !ok {
		return "", "", badRequest("vault %q is not the URL of a Key Vault of a known cloud: use https://<vault-name>.vault.azure.net/ (or the vault domain of your cloud), as the agent's --vault gives it", vaultURL)
	}
	u, err := url.Parse(canonical)
	if err != nil {
		return "", "", badRequest("vault %q: %v", vaultURL, err)
	}
	return canonical, u.Host, nil
}

// validSecretName is Key Vault's rule for object names: 1-127 letters, digits
// and hyphens.
func validSecretName(s string) bool {
	if len(s) == 0 || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validVersion accepts what can be a Key Vault version id (32 hex digits
// today): 1-64 letters and digits.
func validVersion(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// validateObjects checks a watch's objects.
func validateObjects(objs []hubapi.Object) *Refusal {
	switch {
	case len(objs) == 0:
		return badRequest("objects is empty: name at least one watched object")
	case len(objs) > hubapi.MaxObjects:
		return badRequest("objects names %d objects, more than %d: split the watch", len(objs), hubapi.MaxObjects)
	}
	for i, o := range objs {
		switch {
		case !hubapi.IsKind(o.Kind):
			return badRequest("objects[%d].kind %q: use %s", i, o.Kind, strings.Join(Kinds, ", "))
		case !validSecretName(o.Name):
			return badRequest("objects[%d].name %q is not a Key Vault object name (1-127 letters, digits and '-')", i, o.Name)
		case !validVersion(o.Version):
			return badRequest("objects[%d].version %q is not a version id: give the version the agent holds (32 hex digits)", i, o.Version)
		}
	}
	return nil
}

// acquire returns the vault of url, created and started if needed, with one
// more Watch call in flight (release it with v.release).
func (h *Hub) acquire(ctx context.Context, canonical, label string) (*vault, *Refusal) {
	select {
	case <-h.started:
	case <-ctx.Done():
		return nil, &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub is not running yet", RetryAfter: 5 * time.Second}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ended || h.runCtx.Err() != nil {
		return nil, &Refusal{Reason: hubapi.ReasonUnavailable, Message: "the hub is shutting down", RetryAfter: 5 * time.Second}
	}
	v := h.vaults[canonical]
	if v == nil {
		ls, err := h.listers(canonical)
		if err != nil {
			h.log.Error("cannot build a Key Vault client", "vault", canonical, "err", err)
			return nil, &Refusal{Reason: hubapi.ReasonUnavailable, Message: fmt.Sprintf("the hub cannot reach vault %s: %v", canonical, err), RetryAfter: time.Minute}
		}
		v = newVault(h, canonical, label, ls)
		h.vaults[canonical] = v
		h.wg.Add(2)
		go v.sweepLoop()
		go v.pace()
	}
	v.mu.Lock()
	v.inflight++
	v.mu.Unlock()
	return v, nil
}

// lowerName is the key of a name: Key Vault names compare case-insensitively.
func lowerName(s string) string { return strings.ToLower(s) }

// objectKey is the key of an object of a vault: its kind and lower-case name
// (a certificate and its secret and key share the name).
func objectKey(kind, name string) string { return kind + "/" + lowerName(name) }
