package emulator

import (
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Azure Storage queues: the subset of the Queue service REST API that the
// Azure SDK's azqueue client uses to consume messages (get with a visibility
// timeout, peek, delete; put), with Azure AD bearer authentication (audience
// https://storage.azure.com/ or the account's queue endpoint) and the data
// roles' permissions; and Event Grid's delivery of Key Vault events to a queue
// (SubscribeEvents), in Event Grid's event schema, base64-encoded by default.
// Accounts answer on https://ACCOUNT.queue.core.windows.net/.

// QueuePermission is a data permission on a queue, as the built-in roles grant
// them: Storage Queue Data Reader (PermQueuePeek), Storage Queue Data Message
// Processor (PermQueuePeek and PermQueueProcess: get and delete), Storage
// Queue Data Message Sender (PermQueueAdd).
type QueuePermission string

// Queue permissions.
const (
	PermQueuePeek    QueuePermission = "peek"
	PermQueueProcess QueuePermission = "process"
	PermQueueAdd     QueuePermission = "add"
)

// The Queue service's limits.
const (
	maxQueueMessage     = 64 << 10 // bytes of a message's text
	maxDequeue          = 32       // numofmessages
	maxVisibility       = 7 * 24 * time.Hour
	defaultMessageTTL   = 7 * 24 * time.Hour
	defaultVisibility   = 30 * time.Second
	queueServiceVersion = "2026-04-06"
)

// queueHostSuffix is the public cloud's queue endpoint suffix.
const queueHostSuffix = ".queue.core.windows.net"

var (
	accountNameRE = regexp.MustCompile(`^[a-z0-9]{3,24}$`)
	queueNameRE   = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$`)
)

type storageAccount struct {
	name   string
	queues map[string]*queue
}

type queue struct {
	name        string
	msgs        []*queueMessage // in insertion order
	grants      map[string]map[QueuePermission]bool
	unavailable bool
	deleted     int64 // messages deleted by their consumer
}

type queueMessage struct {
	id, text, popReceipt         string
	inserted, expires, visibleAt time.Time
	dequeues                     int64
}

// eventSub is an Event Grid subscription of a vault's system topic that
// delivers to a queue.
type eventSub struct {
	account, queue string
	opts           EventOptions
}

// EventOptions configure an event subscription (SubscribeEvents).
type EventOptions struct {
	// PlainJSON delivers the event JSON as the message text; by default it is
	// base64-encoded, as Event Grid delivers to Storage queues.
	PlainJSON bool
	// Types are the event types delivered (e.g.
	// Microsoft.KeyVault.SecretNewVersionCreated); empty means all.
	Types []string
	// Faults of the delivery: Event Grid delivers at least once and in no
	// guaranteed order.
	Faults EventFaults
}

// EventFaults make the delivery lossy, duplicating and out of order.
type EventFaults struct {
	// DropRate is the share of events never delivered (0-1).
	DropRate float64
	// DuplicateRate is the share of delivered events delivered twice (0-1).
	DuplicateRate float64
	// MaxDelay delays each delivery by a random duration up to it, which
	// reorders events that are close in time.
	MaxDelay time.Duration
}

// Event types of Key Vault.
const (
	EventSecretNewVersionCreated      = "Microsoft.KeyVault.SecretNewVersionCreated"
	EventSecretNearExpiry             = "Microsoft.KeyVault.SecretNearExpiry"
	EventSecretExpired                = "Microsoft.KeyVault.SecretExpired"
	EventCertificateNewVersionCreated = "Microsoft.KeyVault.CertificateNewVersionCreated"
	EventKeyNewVersionCreated         = "Microsoft.KeyVault.KeyNewVersionCreated"
)

// EmulatorSubscriptionID is the Azure subscription in the events' topics.
const EmulatorSubscriptionID = "00000000-0000-4000-8000-00000000e17a"

// AddQueue creates a queue (and its storage account when new).
func (e *Emulator) AddQueue(account, name string) error {
	account, name = strings.ToLower(account), strings.ToLower(name)
	if !accountNameRE.MatchString(account) {
		return fmt.Errorf("emulator: invalid storage account name %q (3-24 of [a-z0-9])", account)
	}
	if !queueNameRE.MatchString(name) {
		return fmt.Errorf("emulator: invalid queue name %q (3-63 of [a-z0-9-], no double or edge dashes)", name)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.accounts == nil {
		e.accounts = map[string]*storageAccount{}
	}
	a := e.accounts[account]
	if a == nil {
		a = &storageAccount{name: account, queues: map[string]*queue{}}
		e.accounts[account] = a
	}
	if a.queues[name] == nil {
		a.queues[name] = &queue{name: name, grants: map[string]map[QueuePermission]bool{}}
	}
	return nil
}

// QueueURL is the URL of a queue: https://ACCOUNT.queue.core.windows.net/QUEUE.
func QueueURL(account, name string) string {
	return "https://" + strings.ToLower(account) + queueHostSuffix + "/" + strings.ToLower(name)
}

func (e *Emulator) queueLocked(account, name string) (*queue, error) {
	a := e.accounts[strings.ToLower(account)]
	if a == nil {
		return nil, fmt.Errorf("emulator: no storage account %q", account)
	}
	q := a.queues[strings.ToLower(name)]
	if q == nil {
		return nil, fmt.Errorf("emulator: no queue %q in account %q", name, account)
	}
	return q, nil
}

// GrantQueue gives an identity (by client ID) permissions on a queue.
func (e *Emulator) GrantQueue(account, name, clientID string, perms ...QueuePermission) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	q, err := e.queueLocked(account, name)
	if err != nil {
		return err
	}
	key := strings.ToLower(clientID)
	if q.grants[key] == nil {
		q.grants[key] = map[QueuePermission]bool{}
	}
	for _, p := range perms {
		if p != PermQueuePeek && p != PermQueueProcess && p != PermQueueAdd {
			return fmt.Errorf("emulator: unknown queue permission %q", p)
		}
		q.grants[key][p] = true
	}
	return nil
}

// SetQueueUnavailable makes a queue answer 503 ServerBusy (true) or serve again.
func (e *Emulator) SetQueueUnavailable(account, name string, unavailable bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	q, err := e.queueLocked(account, name)
	if err != nil {
		return err
	}
	q.unavailable = unavailable
	return nil
}

// EnqueueRaw puts a message with this text on a queue, as a producer would:
// for poison messages.
func (e *Emulator) EnqueueRaw(account, name, text string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	q, err := e.queueLocked(account, name)
	if err != nil {
		return err
	}
	q.put(text, time.Now(), defaultMessageTTL, 0)
	return nil
}

// QueueStats are what a queue holds and what its consumers did.
type QueueStats struct {
	// Messages are the messages not deleted nor expired; Visible those of them
	// that a get would return now.
	Messages, Visible int
	// Deleted is the number of messages deleted by consumers.
	Deleted int64
}

// QueueStats returns a queue's figures.
func (e *Emulator) QueueStats(account, name string) (QueueStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	q, err := e.queueLocked(account, name)
	if err != nil {
		return QueueStats{}, err
	}
	now := time.Now()
	q.expire(now)
	st := QueueStats{Messages: len(q.msgs), Deleted: q.deleted}
	for _, m := range q.msgs {
		if !m.visibleAt.After(now) {
			st.Visible++
		}
	}
	return st, nil
}

// SubscribeEvents subscribes a queue to a vault's events, as an Event Grid
// subscription of the vault's system topic with a Storage queue endpoint:
// from then on, each new version of a secret, certificate or key created
// through the emulator's admin API is delivered to the queue (versions
// created before are not, as with Event Grid).
func (e *Emulator) SubscribeEvents(vaultName, account, queueName string, opts EventOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.vaultLocked(vaultName); err != nil {
		return err
	}
	if _, err := e.queueLocked(account, queueName); err != nil {
		return err
	}
	if e.eventSubs == nil {
		e.eventSubs = map[string][]*eventSub{}
	}
	key := strings.ToLower(vaultName)
	e.eventSubs[key] = append(e.eventSubs[key], &eventSub{account: strings.ToLower(account), queue: strings.ToLower(queueName), opts: opts})
	return nil
}

// UnsubscribeEvents deletes every event subscription of a vault: later
// versions are no longer delivered (those already delayed still are).
func (e *Emulator) UnsubscribeEvents(vaultName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.eventSubs, strings.ToLower(vaultName))
}

// PublishEvent publishes an event of a vault's object, as Key Vault would:
// kind is "Secret", "Certificate" or "Key"; for NearExpiry and Expired events,
// which the emulator does not raise by itself.
func (e *Emulator) PublishEvent(vaultName, eventType, kind, name, version string, notBefore, expires time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.vaultLocked(vaultName)
	if err != nil {
		return err
	}
	e.publishLocked(v, eventType, kind, name, version, notBefore, expires)
	return nil
}

// eventData is an event's data, as the documented samples spell it.
type eventData struct {
	ID         string  `json:"Id"`
	VaultName  string  `json:"VaultName"`
	ObjectType string  `json:"ObjectType"`
	ObjectName string  `json:"ObjectName"`
	Version    string  `json:"Version"`
	NBF        *string `json:"NBF"`
	EXP        *string `json:"EXP"`
}

// gridEvent is an event in Event Grid's schema.
type gridEvent struct {
	ID              string    `json:"id"`
	Topic           string    `json:"topic"`
	Subject         string    `json:"subject"`
	EventType       string    `json:"eventType"`
	EventTime       string    `json:"eventTime"`
	Data            eventData `json:"data"`
	DataVersion     string    `json:"dataVersion"`
	MetadataVersion string    `json:"metadataVersion"`
}

// publishLocked delivers an event to the vault's subscriptions, with their
// faults; e.mu is held.
func (e *Emulator) publishLocked(v *vault, eventType, kind, name, version string, notBefore, expires time.Time) {
	subs := e.eventSubs[v.name]
	if len(subs) == 0 {
		return
	}
	unix := func(t time.Time) *string {
		if t.IsZero() {
			return nil
		}
		s := strconv.FormatInt(t.Unix(), 10)
		return &s
	}
	collection := map[string]string{"Secret": "secrets", "Certificate": "certificates", "Key": "keys"}[kind]
	ev := gridEvent{
		ID:        newUUID(),
		Topic:     "/subscriptions/" + EmulatorSubscriptionID + "/resourceGroups/kvinject-emulator/providers/Microsoft.KeyVault/vaults/" + v.name,
		Subject:   name,
		EventType: eventType,
		EventTime: time.Now().UTC().Format("2006-01-02T15:04:05.0000000Z"),
		Data: eventData{
			ID:        "https://" + v.name + "." + v.cloud.vaultSuffix + "/" + collection + "/" + name + "/" + version,
			VaultName: v.name, ObjectType: kind, ObjectName: name, Version: version,
			NBF: unix(notBefore), EXP: unix(expires),
		},
		DataVersion: "1", MetadataVersion: "1",
	}
	body, _ := json.Marshal(ev)
	for _, s := range subs {
		if len(s.opts.Types) > 0 && !containsFold(s.opts.Types, eventType) {
			continue
		}
		f := s.opts.Faults
		if f.DropRate > 0 && rand.Float64() < f.DropRate {
			continue
		}
		text := string(body)
		if !s.opts.PlainJSON {
			text = base64.StdEncoding.EncodeToString(body)
		}
		copies := 1
		if f.DuplicateRate > 0 && rand.Float64() < f.DuplicateRate {
			copies = 2
		}
		for range copies {
			if f.MaxDelay <= 0 {
				e.deliverLocked(s, text)
				continue
			}
			delay := rand.N(f.MaxDelay + 1)
			time.AfterFunc(delay, func() {
				e.mu.Lock()
				defer e.mu.Unlock()
				e.deliverLocked(s, text)
			})
		}
	}
}

// deliverLocked puts an event on its subscription's queue (dropped if the
// queue is gone).
func (e *Emulator) deliverLocked(s *eventSub, text string) {
	if q, err := e.queueLocked(s.account, s.queue); err == nil {
		q.put(text, time.Now(), defaultMessageTTL, 0)
	}
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// put appends a message.
func (q *queue) put(text string, now time.Time, ttl, visibility time.Duration) *queueMessage {
	m := &queueMessage{id: newUUID(), text: text, inserted: now.UTC().Truncate(time.Second), visibleAt: now.Add(visibility), popReceipt: randomPopReceipt()}
	if ttl > 0 {
		m.expires = now.Add(ttl).UTC().Truncate(time.Second)
	} else {
		m.expires = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
	}
	q.msgs = append(q.msgs, m)
	return m
}

// expire drops expired messages.
func (q *queue) expire(now time.Time) {
	kept := q.msgs[:0]
	for _, m := range q.msgs {
		if now.Before(m.expires) {
			kept = append(kept, m)
		}
	}
	clear(q.msgs[len(kept):])
	q.msgs = kept
}

// accountResolves reports whether a storage account exists.
func (e *Emulator) accountResolves(account string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, ok := e.accounts[account]
	return ok
}

func randomPopReceipt() string {
	return base64.StdEncoding.EncodeToString([]byte(randomHex(8)))
}

// parseQueueHost returns the account of ACCOUNT.queue.core.windows.net.
func parseQueueHost(host string) (string, bool) {
	name, ok := strings.CutSuffix(host, queueHostSuffix)
	return name, ok && accountNameRE.MatchString(name)
}

// queueResources are the token audiences the Queue service accepts for an
// account.
func queueAudienceOK(resource, account string) bool {
	r := strings.TrimSuffix(strings.ToLower(resource), "/")
	return r == "https://storage.azure.com" || r == "https://"+account+queueHostSuffix
}

// The Queue service's XML bodies.
type (
	xmlQueueMessage struct {
		XMLName     xml.Name `xml:"QueueMessage"`
		MessageText string   `xml:"MessageText"`
	}
	xmlMessageList struct {
		XMLName  xml.Name     `xml:"QueueMessagesList"`
		Messages []xmlMessage `xml:"QueueMessage"`
	}
	xmlMessage struct {
		MessageID       string `xml:"MessageId"`
		InsertionTime   string `xml:"InsertionTime"`
		ExpirationTime  string `xml:"ExpirationTime"`
		PopReceipt      string `xml:"PopReceipt,omitempty"`
		TimeNextVisible string `xml:"TimeNextVisible,omitempty"`
		DequeueCount    *int64 `xml:"DequeueCount,omitempty"`
		MessageText     *string
	}
	xmlError struct {
		XMLName xml.Name `xml:"Error"`
		Code    string   `xml:"Code"`
		Message string   `xml:"Message"`
	}
)

// writeXML answers with an XML body and the Queue service's headers.
func writeXML(w http.ResponseWriter, status int, v any) {
	w.Header().Set("x-ms-request-id", newUUID())
	w.Header().Set("x-ms-version", queueServiceVersion)
	w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
	if v == nil {
		w.WriteHeader(status)
		return
	}
	b, _ := xml.Marshal(v)
	b = append([]byte(xml.Header), b...)
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// queueError answers with a Queue service error.
func queueError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("x-ms-error-code", code)
	writeXML(w, status, xmlError{Code: code, Message: message + "\nRequestId:" + newUUID() + "\nTime:" + time.Now().UTC().Format("2006-01-02T15:04:05.0000000Z")})
}

func rfc1123(t time.Time) string { return t.UTC().Format(http.TimeFormat) }

// serveQueue serves the Queue service of an account.
func (e *Emulator) serveQueue(w http.ResponseWriter, r *http.Request, account string) {
	ri, _ := r.Context().Value(ctxKey{}).(*reqInfo)
	// Authentication: a bearer token for the Queue service.
	auth := r.Header.Get("Authorization")
	raw, ok := strings.CutPrefix(auth, "Bearer ")
	challenge := func() {
		w.Header().Set("WWW-Authenticate", "Bearer authorization_uri=https://login.microsoftonline.com/"+e.opts.TenantID+"/oauth2/authorize resource_id=https://storage.azure.com")
	}
	if !ok || strings.TrimSpace(raw) == "" {
		challenge()
		queueError(w, http.StatusUnauthorized, "NoAuthenticationInformation", "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.")
		return
	}
	tok, found := e.lookupToken(raw)
	if !found || !time.Now().Before(tok.expires) || !queueAudienceOK(tok.resource, account) {
		challenge()
		queueError(w, http.StatusUnauthorized, "InvalidAuthenticationInfo", "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.\nAuthenticationErrorDetail:Issuer validation failed, the token has expired, or its audience is not the Queue service.")
		return
	}
	if ri != nil {
		ri.clientID = tok.clientID
	}
	e.clientCounters(tok.clientID).queueRequests.Add(1)

	rest := strings.TrimPrefix(r.URL.Path, "/")
	qname, rest, _ := strings.Cut(rest, "/")
	msgs, msgID, _ := strings.Cut(rest, "/")
	if msgs != "messages" {
		queueError(w, http.StatusBadRequest, "InvalidUri", "The emulator serves the messages of a queue only: /QUEUE/messages.")
		return
	}
	q := r.URL.Query()
	e.mu.Lock()
	defer e.mu.Unlock()
	qu, err := e.queueLocked(account, qname)
	if err != nil {
		queueError(w, http.StatusNotFound, "QueueNotFound", "The specified queue does not exist.")
		return
	}
	if qu.unavailable {
		w.Header().Set("Retry-After", "1")
		queueError(w, http.StatusServiceUnavailable, "ServerBusy", "The server is currently unable to receive requests. Please retry your request.")
		return
	}
	allowed := func(perms ...QueuePermission) bool {
		g := qu.grants[strings.ToLower(tok.clientID)]
		for _, p := range perms {
			if g[p] {
				return true
			}
		}
		queueError(w, http.StatusForbidden, "AuthorizationPermissionMismatch", "This request is not authorized to perform this operation using this permission.")
		return false
	}
	now := time.Now()
	qu.expire(now)
	switch {
	case r.Method == http.MethodGet && msgID == "" && q.Get("peekonly") == "true":
		if ri != nil {
			ri.op = "queue-peek"
		}
		n, ok := intParam(w, q, "numofmessages", 1, 1, maxDequeue)
		if !ok || !allowed(PermQueuePeek, PermQueueProcess) {
			return
		}
		writeXML(w, http.StatusOK, qu.visible(now, n, nil))
	case r.Method == http.MethodGet && msgID == "":
		if ri != nil {
			ri.op = "queue-get"
		}
		n, ok := intParam(w, q, "numofmessages", 1, 1, maxDequeue)
		if !ok {
			return
		}
		vt, ok := intParam(w, q, "visibilitytimeout", int(defaultVisibility/time.Second), 1, int(maxVisibility/time.Second))
		if !ok || !allowed(PermQueueProcess) {
			return
		}
		writeXML(w, http.StatusOK, qu.visible(now, n, func(m *queueMessage) {
			m.dequeues++
			m.popReceipt = randomPopReceipt()
			m.visibleAt = now.Add(time.Duration(vt) * time.Second)
		}))
	case r.Method == http.MethodPost && msgID == "":
		if ri != nil {
			ri.op = "queue-put"
		}
		vt, ok := intParam(w, q, "visibilitytimeout", 0, 0, int(maxVisibility/time.Second))
		if !ok {
			return
		}
		ttl, ok := intParam(w, q, "messagettl", int(defaultMessageTTL/time.Second), -1, math32)
		if !ok || ttl == 0 || !allowed(PermQueueAdd) {
			if ok && ttl == 0 {
				queueError(w, http.StatusBadRequest, "OutOfRangeQueryParameterValue", "One of the query parameters specified in the request URI is outside the permissible range: messagettl.")
			}
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 2*maxQueueMessage))
		var in xmlQueueMessage
		if err != nil || xml.Unmarshal(body, &in) != nil {
			queueError(w, http.StatusBadRequest, "InvalidXmlDocument", "XML specified is not syntactically valid.")
			return
		}
		if len(in.MessageText) > maxQueueMessage {
			queueError(w, http.StatusRequestEntityTooLarge, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum permissible limit.")
			return
		}
		var ttlD time.Duration = -1
		if ttl > 0 {
			ttlD = time.Duration(ttl) * time.Second
		}
		m := qu.put(in.MessageText, now, ttlD, time.Duration(vt)*time.Second)
		writeXML(w, http.StatusCreated, xmlMessageList{Messages: []xmlMessage{{MessageID: m.id, InsertionTime: rfc1123(m.inserted),
			ExpirationTime: rfc1123(m.expires), PopReceipt: m.popReceipt, TimeNextVisible: rfc1123(m.visibleAt)}}})
	case r.Method == http.MethodDelete && msgID != "":
		if ri != nil {
			ri.op = "queue-delete"
		}
		if !allowed(PermQueueProcess) {
			return
		}
		pop := q.Get("popreceipt")
		if pop == "" {
			queueError(w, http.StatusBadRequest, "MissingRequiredQueryParameter", "A query parameter that's mandatory for this request is not specified: popreceipt.")
			return
		}
		for i, m := range qu.msgs {
			if m.id != msgID {
				continue
			}
			if m.popReceipt != pop {
				queueError(w, http.StatusBadRequest, "PopReceiptMismatch", "The specified pop receipt did not match the pop receipt for a dequeued message.")
				return
			}
			qu.msgs = append(qu.msgs[:i], qu.msgs[i+1:]...)
			qu.deleted++
			writeXML(w, http.StatusNoContent, nil)
			return
		}
		queueError(w, http.StatusNotFound, "MessageNotFound", "The specified message does not exist.")
	default:
		queueError(w, http.StatusMethodNotAllowed, "UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb "+r.Method+" here.")
	}
}

// visible returns up to n visible messages, oldest first, each taken by take
// first (a get: new pop receipt and visibility); nil take peeks.
func (q *queue) visible(now time.Time, n int, take func(*queueMessage)) xmlMessageList {
	out := xmlMessageList{Messages: []xmlMessage{}}
	for _, m := range q.msgs {
		if len(out.Messages) == n {
			break
		}
		if m.visibleAt.After(now) {
			continue
		}
		x := xmlMessage{MessageID: m.id, InsertionTime: rfc1123(m.inserted), ExpirationTime: rfc1123(m.expires)}
		if take != nil {
			take(m)
			x.PopReceipt, x.TimeNextVisible = m.popReceipt, rfc1123(m.visibleAt)
		}
		d, text := m.dequeues, m.text
		x.DequeueCount, x.MessageText = &d, &text
		out.Messages = append(out.Messages, x)
	}
	return out
}

const math32 = 1<<31 - 1

// intParam reads an integer query parameter within [lo, hi] (def when
// absent), answering 400 when it is not.
func intParam(w http.ResponseWriter, q map[string][]string, name string, def, lo, hi int) (int, bool) {
	vals := q[name]
	if len(vals) == 0 {
		return def, true
	}
	n, err := strconv.Atoi(vals[0])
	if err != nil || n < lo || n > hi {
		queueError(w, http.StatusBadRequest, "OutOfRangeQueryParameterValue", "One of the query parameters specified in the request URI is outside the permissible range: "+name+".")
		return 0, false
	}
	return n, true
}
