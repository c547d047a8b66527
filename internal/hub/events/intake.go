package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvinject/kvinject/internal/hub/vaults"
)

// Defaults of IntakeOptions.
const (
	DefaultPollInterval = 500 * time.Millisecond
	DefaultDeleteAfter  = 10 * time.Second
	DefaultMaxAttempts  = 5
)

const (
	// peekBatch is the most messages a peek or a get returns (the service's
	// limit).
	peekBatch = 32
	// visibility is how long a message the deleter took stays invisible
	// before it is deleted (or seen again if the deleter died).
	visibility = 30 * time.Second
	// seenTTL is how long message and event ids are remembered.
	seenTTL = time.Hour
	// maxSeen bounds the remembered ids.
	maxSeen = 100_000
	// maxBackoff bounds the wait after queue errors.
	maxBackoff = time.Minute
	// deniedRetry is the wait after the queue refused the hub's identity.
	deniedRetry = time.Minute
)

// Hinter is the Key Vault side of the hub: *vaults.Hub.
type Hinter interface {
	// HintObject tells the hub that an object (kind KindSecret,
	// KindCertificate or KindKey, the hub's kinds) may have a new version;
	// the answer is one of the vaults.Hint* results.
	HintObject(ctx context.Context, vaultURL, kind, name, version string) (string, error)
}

// IntakeOptions configure an Intake.
type IntakeOptions struct {
	// Queue is the Storage queue Event Grid delivers the vaults' events to,
	// with the hub's identity (role Storage Queue Data Message Processor).
	Queue *azqueue.QueueClient
	// Name names the queue in logs and metrics (its URL without query).
	Name string
	// Hints receives the new versions of secrets (vaults.Hub.Hint).
	Hints Hinter
	// Deleter reports whether this replica deletes the messages every
	// replica has had time to read (the holder of the hub's Lease); nil means
	// always (a single replica).
	Deleter func() bool
	// PollInterval is the wait between peeks of an empty queue; default
	// DefaultPollInterval.
	PollInterval time.Duration
	// DeleteAfter is how long after the deleter first read a message it
	// takes and deletes it, so that every replica peeked it first (each peeks
	// the front of the queue every PollInterval); default DefaultDeleteAfter.
	// Keep it several PollIntervals. A backlog drains at most 32 messages
	// (one peek) per DeleteAfter.
	DeleteAfter time.Duration
	// MaxAttempts is how many times a message that cannot be understood, or
	// whose listing fails, is tried before it is given up (and deleted);
	// default DefaultMaxAttempts.
	MaxAttempts int
	// Logger receives the intake's records; nil discards them.
	Logger *slog.Logger
	// Metrics are shared by the intakes of one hub (NewMetrics).
	Metrics *Metrics
}

// Intake reads one queue: every replica peeks the messages (so that each one
// hears of every event, whichever replica holds the watchers), hands each new
// secret version to the hub once (Hint), and the deleter (one replica) takes
// and deletes the messages older than DeleteAfter. Events are hints: the hub
// confirms each with a version listing, and its sweep catches what events
// miss (Event Grid sends no event for deletes, disables or tag edits, and may
// drop, repeat and reorder them).
type Intake struct {
	opts IntakeOptions
	log  *slog.Logger
	m    *Metrics

	mu   sync.Mutex
	seen map[string]seenEntry // message and event ids

	stale bool // the front of the queue is not being deleted (Run's goroutine only)
}

// seenEntry is what the intake remembers of a message or an event.
type seenEntry struct {
	at       time.Time
	first    time.Time // when this replica first read the message
	attempts int
	done     bool // handled (or given up): the deleter may delete it
}

// NewIntake returns an Intake; Run reads the queue.
func NewIntake(opts IntakeOptions) (*Intake, error) {
	if opts.Queue == nil || opts.Hints == nil || opts.Metrics == nil {
		return nil, errors.New("events.NewIntake: Queue, Hints and Metrics are required")
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.DeleteAfter < 0 {
		return nil, errors.New("events.NewIntake: DeleteAfter must not be negative")
	}
	if opts.DeleteAfter == 0 && opts.Deleter != nil {
		opts.DeleteAfter = DefaultDeleteAfter
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.Deleter == nil {
		opts.Deleter = func() bool { return true }
	}
	if opts.Name == "" {
		opts.Name = strings.SplitN(opts.Queue.URL(), "?", 2)[0]
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts.Metrics.queueOK.WithLabelValues(opts.Name).Set(1)
	return &Intake{opts: opts, log: log.With("queue", opts.Name), m: opts.Metrics, seen: map[string]seenEntry{}}, nil
}

// Run reads the queue until ctx ends.
func (in *Intake) Run(ctx context.Context) error {
	in.log.Info("reading Key Vault events", "pollInterval", in.opts.PollInterval, "deleteAfter", in.opts.DeleteAfter)
	backoff := time.Duration(0)
	denied := false
	for ctx.Err() == nil {
		full, err := in.tick(ctx)
		var wait time.Duration
		switch {
		case err == nil:
			if denied {
				in.log.Info("the queue accepts the hub's identity again")
				in.m.queueOK.WithLabelValues(in.opts.Name).Set(1)
			}
			denied, backoff = false, 0
			if !full {
				wait = in.opts.PollInterval
			}
		case ctx.Err() != nil:
			return nil
		case refused(err):
			if !denied {
				in.log.Warn("the queue refuses the hub's identity: events are off for it, the sweep goes on; give the identity the role Storage Queue Data Message Processor on the queue",
					"status", statusOf(err), "error", oneLine(err))
				in.m.queueOK.WithLabelValues(in.opts.Name).Set(0)
			}
			denied, wait = true, deniedRetry
		default:
			backoff = min(max(2*backoff, time.Second), maxBackoff)
			wait = backoff/2 + rand.N(backoff/2+1)
			in.log.Warn("reading the queue failed; retrying", "error", oneLine(err), "retryIn", wait.Round(time.Millisecond))
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
	}
	return nil
}

// tick peeks the queue, handles what is new, and deletes what is old enough
// when this replica is the deleter. full reports a full page (read again at
// once).
func (in *Intake) tick(ctx context.Context) (full bool, err error) {
	peeked, err := in.opts.Queue.PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr[int32](peekBatch)})
	in.m.count(in.opts.Name, "peek", err)
	if err != nil {
		return false, err
	}
	// old counts the leading messages that are done with and that this
	// replica first read DeleteAfter ago or more: every replica peeks the
	// front of the queue every PollInterval, so by then each has read them
	// too (a peek sees at most the first 32 messages: a message further back
	// is read when it reaches the front, not when it was inserted). A get
	// returns the oldest visible messages, so only a prefix of the peeked
	// ones is taken (the rest wait for the one being retried, at most
	// MaxAttempts reads).
	old, prefix := int32(0), true
	oldest := time.Now()
	for _, msg := range peeked.Messages {
		if msg == nil || msg.MessageID == nil || msg.MessageText == nil {
			prefix = false
			continue
		}
		done, first := in.handle(ctx, *msg.MessageID, *msg.MessageText, msg.InsertionTime)
		if first.Before(oldest) {
			oldest = first
		}
		if prefix && done && time.Since(first) >= in.opts.DeleteAfter {
			old++
		} else {
			prefix = false
		}
	}
	in.prune(time.Now())
	in.watchBacklog(time.Since(oldest))
	if old == 0 || !in.opts.Deleter() {
		return false, nil
	}
	if err := in.deleteOld(ctx, old); err != nil {
		return false, err
	}
	// A full page deleted: more may wait behind it, read again at once.
	return len(peeked.Messages) == peekBatch, nil
}

// staleAfter is how long a message may stay at the front of the queue after
// this replica first read it before the intake warns that nobody deletes.
const staleAfter = 2 * time.Minute

// watchBacklog exports how long the oldest message at the front of the queue
// has been read and not deleted, and warns once when that exceeds
// max(staleAfter, 6 DeleteAfter): no replica deletes (none holds the Lease),
// and once a peek's 32 messages are all stale, new events are no longer seen.
func (in *Intake) watchBacklog(age time.Duration) {
	in.m.backlog.WithLabelValues(in.opts.Name).Set(age.Seconds())
	stale := age > max(staleAfter, 6*in.opts.DeleteAfter)
	switch {
	case stale && !in.stale:
		in.log.Warn("queue messages are read but not deleted: no hub replica holds the events Lease (check the hub's Lease RBAC and its log); once 32 are waiting, new events are not seen and the sweep alone finds new versions",
			"oldestReadAgo", age.Round(time.Second))
	case !stale && in.stale:
		in.log.Info("queue messages are deleted again")
	}
	in.stale = stale
}

// deleteOld takes n messages (the oldest visible: the queue is best-effort
// FIFO) and deletes them, handling first any this replica has not seen.
func (in *Intake) deleteOld(ctx context.Context, n int32) error {
	got, err := in.opts.Queue.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{
		NumberOfMessages: to.Ptr(n), VisibilityTimeout: to.Ptr(int32(visibility / time.Second)),
	})
	in.m.count(in.opts.Name, "get", err)
	if err != nil {
		return err
	}
	for _, msg := range got.Messages {
		if msg == nil || msg.MessageID == nil || msg.PopReceipt == nil || msg.MessageText == nil {
			continue
		}
		if done, _ := in.handle(ctx, *msg.MessageID, *msg.MessageText, msg.InsertionTime); !done {
			continue // a listing failed: seen again after the visibility timeout
		}
		_, err := in.opts.Queue.DeleteMessage(ctx, *msg.MessageID, *msg.PopReceipt, nil)
		in.m.count(in.opts.Name, "delete", err)
		if err != nil && !notFound(err) {
			return err
		}
		if err == nil {
			in.m.messages.WithLabelValues("deleted").Inc()
		}
	}
	return nil
}

// handle reads a message's events once (by message id) and hands them to the
// hub; it reports whether the message is done with (handled, or given up
// after MaxAttempts), so that the deleter may delete it, and when this
// replica first read it.
func (in *Intake) handle(ctx context.Context, id, text string, inserted *time.Time) (done bool, first time.Time) {
	in.mu.Lock()
	e, ok := in.seen["m:"+id]
	in.mu.Unlock()
	if ok && e.done {
		return true, e.first
	}
	e.attempts++
	evs, err := Parse(text)
	if err != nil {
		give := e.attempts >= in.opts.MaxAttempts
		if e.attempts == 1 || give {
			in.log.Warn("a queue message is not a Key Vault event", "messageId", id, "attempt", e.attempts, "givenUp", give, "error", err.Error())
		}
		if e.attempts == 1 {
			in.m.messages.WithLabelValues("unreadable").Inc()
		}
		return give, in.remember("m:"+id, seenEntry{attempts: e.attempts, done: give})
	}
	done = true
	for _, ev := range evs {
		if !in.hint(ctx, ev, inserted) {
			done = false
		}
	}
	if !done && e.attempts >= in.opts.MaxAttempts {
		in.log.Warn("giving up a queue message whose listing kept failing; the sweep will catch up", "messageId", id, "attempts", e.attempts)
		done = true
	}
	if done {
		in.m.messages.WithLabelValues("handled").Inc()
	}
	return done, in.remember("m:"+id, seenEntry{attempts: e.attempts, done: done})
}

// hint hands one event to the hub; false when its listing failed.
func (in *Intake) hint(ctx context.Context, ev Event, inserted *time.Time) bool {
	if ev.Kind == "" {
		in.m.events.WithLabelValues("", "ignored").Inc()
		return true
	}
	key := "e:" + ev.ID
	if ev.ID == "" {
		key = "e:" + strings.ToLower(ev.VaultURL+"|"+ev.Kind+"|"+ev.Name+"|"+ev.Version+"|"+ev.Change)
	}
	in.mu.Lock()
	prev, dup := in.seen[key]
	in.mu.Unlock()
	if dup && prev.done {
		in.m.events.WithLabelValues(ev.Kind, "duplicate").Inc()
		return true
	}
	switch {
	case ev.Change == ChangeNearExpiry || ev.Change == ChangeExpired:
		level := slog.LevelInfo
		if ev.Change == ChangeExpired {
			level = slog.LevelWarn
		}
		in.log.Log(ctx, level, "Key Vault object "+strings.ToLower(ev.Change[:1])+ev.Change[1:], "vault", ev.VaultURL, "kind", ev.Kind, "name", ev.Name, "version", ev.Version, "expires", ev.Expires)
		in.m.expiry.WithLabelValues(ev.Kind, ev.Change).Inc()
		in.m.events.WithLabelValues(ev.Kind, "expiry").Inc()
	default:
		// A kind the hub does not watch (--watch-kinds) is unwatched.
		res, err := in.opts.Hints.HintObject(ctx, ev.VaultURL, ev.Kind, ev.Name, ev.Version)
		in.m.events.WithLabelValues(ev.Kind, res).Inc()
		if inserted != nil && (res == vaults.HintListed || res == vaults.HintKnown) {
			in.m.lag.Observe(max(0, time.Since(*inserted).Seconds()))
		}
		if res == vaults.HintFailed {
			in.log.Info("listing after an event failed; retried at the next read of the queue", "vault", ev.VaultURL, "kind", ev.Kind, "name", ev.Name, "error", oneLine(err))
			return false
		}
		if res == vaults.HintListed {
			in.log.Debug("event", "vault", ev.VaultURL, "kind", ev.Kind, "name", ev.Name, "version", ev.Version, "eventId", ev.ID)
		}
	}
	in.remember(key, seenEntry{done: true})
	return true
}

// remember records e under key, keeping the time key was first recorded,
// which it returns.
func (in *Intake) remember(key string, e seenEntry) (first time.Time) {
	e.at = time.Now()
	in.mu.Lock()
	defer in.mu.Unlock()
	e.first = e.at
	if old, ok := in.seen[key]; ok && !old.first.IsZero() {
		e.first = old.first
	}
	if len(in.seen) >= maxSeen {
		in.pruneLocked(e.at, seenTTL/4)
	}
	in.seen[key] = e
	return e.first
}

func (in *Intake) prune(now time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.pruneLocked(now, seenTTL)
}

func (in *Intake) pruneLocked(now time.Time, ttl time.Duration) {
	for k, e := range in.seen {
		if now.Sub(e.at) > ttl {
			delete(in.seen, k)
		}
	}
}

// statusOf is an error's HTTP status, 0 if none.
func statusOf(err error) int {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// refused: the queue does not accept the hub's identity (or does not exist).
func refused(err error) bool {
	s := statusOf(err)
	return s == http.StatusUnauthorized || s == http.StatusForbidden || (s == http.StatusNotFound && !notFound(err))
}

// notFound: a message already deleted (by another deleter, or expired).
func notFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.ErrorCode == "MessageNotFound"
}

// oneLine shortens an SDK error to its first line.
func oneLine(err error) string {
	if err == nil {
		return ""
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// Metrics are the event intake's metrics, shared by the intakes of a hub.
type Metrics struct {
	events   *prometheus.CounterVec
	messages *prometheus.CounterVec
	requests *prometheus.CounterVec
	queueOK  *prometheus.GaugeVec
	expiry   *prometheus.CounterVec
	lag      prometheus.Histogram
	backlog  *prometheus.GaugeVec
}

// NewMetrics registers the intake's metrics on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_events_total",
			Help: "Key Vault events read, by object kind and result: listed (new version: listed at once), known (duplicate or late: no call), unwatched (no watcher of this replica, or a kind --watch-kinds leaves out), failed, duplicate (same event again), expiry (NearExpiry, Expired), ignored (other event types).",
		}, []string{"kind", "result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_event_messages_total",
			Help: "Queue messages, by result: handled, unreadable (not a Key Vault event; deleted after the maximum attempts), deleted (by this replica).",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_event_queue_requests_total",
			Help: "Storage queue requests, by queue, op (peek, get, delete) and status (HTTP status, or error).",
		}, []string{"queue", "op", "status"}),
		queueOK: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvinject_hub_event_queue_readable",
			Help: "1 when the queue accepts the hub's identity, 0 when it refuses it (401, 403, queue not found).",
		}, []string{"queue"}),
		expiry: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvinject_hub_expiry_events_total",
			Help: "NearExpiry and Expired events of Key Vault objects, by kind and change (the log names the object and its expiry).",
		}, []string{"kind", "change"}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvinject_hub_event_oldest_read_seconds",
			Help: "How long ago this replica first read the oldest message at the front of the queue (0 when empty): above --events-delete-after plus a few seconds, no replica is deleting (none holds the events Lease).",
		}, []string{"queue"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvinject_hub_event_lag_seconds",
			Help:    "Time from an event's arrival in the queue to its version listing (the queue's insertion times have whole seconds: up to 1 s more than the real lag).",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60},
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.events, m.messages, m.requests, m.queueOK, m.expiry, m.lag, m.backlog} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering the event intake's metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *Metrics) count(queue, op string, err error) {
	status := "200"
	switch {
	case err == nil && op == "delete":
		status = "204"
	case err != nil && statusOf(err) != 0:
		status = fmt.Sprint(statusOf(err))
	case err != nil:
		status = "error"
	}
	m.requests.WithLabelValues(queue, op, status).Inc()
}
