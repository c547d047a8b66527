package emulator

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2/queueerror"
)

const (
	testAccount = "kvievents"
	testQueue   = "ordersvault-events"
)

// queueClient is the unmodified SDK's client of the test queue.
func queueClient(t *testing.T, e *Emulator, cred azcore.TokenCredential, tr http.RoundTripper) *azqueue.QueueClient {
	t.Helper()
	c, err := azqueue.NewQueueClient(QueueURL(testAccount, testQueue), cred, &azqueue.ClientOptions{ClientOptions: clientOptions(tr, noRetry)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestQueueWithTheSDK: the azqueue client enqueues, peeks, dequeues with a
// visibility timeout and deletes; each role's permissions are enforced; a
// message comes back after its visibility timeout with a new pop receipt,
// and the old one no longer deletes it.
func TestQueueWithTheSDK(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	if err := e.AddQueue(testAccount, testQueue); err != nil {
		t.Fatal(err)
	}
	processor, pcred := registerWorkload(t, e, tr)
	sender, scred := registerWorkload(t, e, tr)
	_, ncred := registerWorkload(t, e, tr)
	if err := e.GrantQueue(testAccount, testQueue, processor, PermQueuePeek, PermQueueProcess); err != nil {
		t.Fatal(err)
	}
	if err := e.GrantQueue(testAccount, testQueue, sender, PermQueueAdd); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pq, sq, nq := queueClient(t, e, pcred, tr), queueClient(t, e, scred, tr), queueClient(t, e, ncred, tr)

	if _, err := sq.EnqueueMessage(ctx, "first", nil); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	if _, err := sq.EnqueueMessage(ctx, "second", nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		code queueerror.Code
	}{
		{"processor enqueues", func() error { _, err := pq.EnqueueMessage(ctx, "x", nil); return err }, queueerror.AuthorizationPermissionMismatch},
		{"sender dequeues", func() error { _, err := sq.DequeueMessage(ctx, nil); return err }, queueerror.AuthorizationPermissionMismatch},
		{"no role peeks", func() error { _, err := nq.PeekMessage(ctx, nil); return err }, queueerror.AuthorizationPermissionMismatch},
		{"32 at most", func() error {
			_, err := pq.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: to.Ptr[int32](33)})
			return err
		}, queueerror.OutOfRangeQueryParameterValue},
	} {
		if err := tc.call(); !queueerror.HasCode(err, tc.code) {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}

	peek, err := pq.PeekMessages(ctx, &azqueue.PeekMessagesOptions{NumberOfMessages: to.Ptr[int32](5)})
	if err != nil || len(peek.Messages) != 2 || *peek.Messages[0].MessageText != "first" {
		t.Fatalf("peek: %v %+v", err, peek.Messages)
	}
	got, err := pq.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: to.Ptr[int32](1), VisibilityTimeout: to.Ptr[int32](1)})
	if err != nil || len(got.Messages) != 1 {
		t.Fatalf("dequeue: %v %+v", err, got.Messages)
	}
	m := got.Messages[0]
	if *m.MessageText != "first" || *m.DequeueCount != 1 || m.PopReceipt == nil || m.TimeNextVisible == nil {
		t.Fatalf("dequeued %+v", m)
	}
	// Invisible for its timeout: the next get has the second message only.
	got2, err := pq.DequeueMessages(ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
	if err != nil || len(got2.Messages) != 1 || *got2.Messages[0].MessageText != "second" {
		t.Fatalf("second dequeue: %v %+v", err, got2.Messages)
	}
	time.Sleep(1100 * time.Millisecond)
	again, err := pq.DequeueMessage(ctx, &azqueue.DequeueMessageOptions{VisibilityTimeout: to.Ptr[int32](30)})
	if err != nil || len(again.Messages) != 1 || *again.Messages[0].MessageID != *m.MessageID || *again.Messages[0].DequeueCount != 2 {
		t.Fatalf("after the visibility timeout: %v %+v", err, again.Messages)
	}
	if _, err := pq.DeleteMessage(ctx, *m.MessageID, *m.PopReceipt, nil); !queueerror.HasCode(err, queueerror.PopReceiptMismatch) {
		t.Errorf("delete with the stale pop receipt: %v, want PopReceiptMismatch", err)
	}
	if _, err := pq.DeleteMessage(ctx, *m.MessageID, *again.Messages[0].PopReceipt, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := pq.DeleteMessage(ctx, *m.MessageID, *again.Messages[0].PopReceipt, nil); !queueerror.HasCode(err, queueerror.MessageNotFound) {
		t.Errorf("second delete: %v, want MessageNotFound", err)
	}
	st, err := e.QueueStats(testAccount, testQueue)
	if err != nil || st.Messages != 1 || st.Visible != 0 || st.Deleted != 1 {
		t.Errorf("stats %+v %v, want 1 message (invisible), 1 deleted", st, err)
	}
	if e.QueueRequests(processor) == 0 {
		t.Error("the processor's queue requests were not counted")
	}

	// Unavailable: 503 ServerBusy, which the SDK's retry policy retries.
	if err := e.SetQueueUnavailable(testAccount, testQueue, true); err != nil {
		t.Fatal(err)
	}
	var re *azcore.ResponseError
	if _, err := pq.PeekMessage(ctx, nil); !errors.As(err, &re) || re.StatusCode != http.StatusServiceUnavailable || re.ErrorCode != "ServerBusy" {
		t.Errorf("unavailable queue: %v", err)
	}
}

// TestQueueAuthentication: no token, a Key Vault token, and an unknown queue.
func TestQueueAuthentication(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	if err := e.AddQueue(testAccount, testQueue); err != nil {
		t.Fatal(err)
	}
	_, cred := registerWorkload(t, e, tr)
	resp, _ := rawDo(t, tr, http.MethodGet, QueueURL(testAccount, testQueue)+"/messages?peekonly=true", "", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("x-ms-error-code") != "NoAuthenticationInformation" ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), "resource_id=https://storage.azure.com") {
		t.Errorf("without a token: %d %q %q", resp.StatusCode, resp.Header.Get("x-ms-error-code"), resp.Header.Get("WWW-Authenticate"))
	}
	resp, _ = rawDo(t, tr, http.MethodGet, QueueURL(testAccount, testQueue)+"/messages?peekonly=true", vaultToken(t, cred, e.TenantID()), nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("x-ms-error-code") != "InvalidAuthenticationInfo" {
		t.Errorf("with a Key Vault token: %d %q", resp.StatusCode, resp.Header.Get("x-ms-error-code"))
	}
	c, err := azqueue.NewQueueClient(QueueURL(testAccount, "no-such-queue"), cred, &azqueue.ClientOptions{ClientOptions: clientOptions(tr, noRetry)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PeekMessage(context.Background(), nil); !queueerror.HasCode(err, queueerror.QueueNotFound) {
		t.Errorf("unknown queue: %v, want QueueNotFound", err)
	}
}

// decodeEvent reads an Event Grid event from a message text: base64 or plain.
func decodeEvent(t *testing.T, text string) gridEvent {
	t.Helper()
	body := []byte(text)
	if b, err := base64.StdEncoding.DecodeString(text); err == nil {
		body = b
	}
	var ev gridEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatalf("message %q is not an event: %v", text, err)
	}
	return ev
}

// TestEventsDeliveredToAQueue: a subscribed queue receives each new version of
// a secret, certificate and key as an Event Grid event (base64 by default,
// plain JSON on request); versions created before the subscription, tag
// updates and other vaults' versions are not delivered.
func TestEventsDeliveredToAQueue(t *testing.T) {
	e := start(t, Options{})
	tr := transport(t, e)
	for _, q := range []string{testQueue, "plain-events"} {
		if err := e.AddQueue(testAccount, q); err != nil {
			t.Fatal(err)
		}
	}
	before := e.SetSecret("ordersvault", "DB-PASSWORD", "v1")
	e.SetSecret("othervault", "DB-PASSWORD", "other")
	if err := e.SubscribeEvents("ordersvault", testAccount, testQueue, EventOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.SubscribeEvents("ordersvault", testAccount, "plain-events", EventOptions{PlainJSON: true, Types: []string{EventSecretNewVersionCreated}}); err != nil {
		t.Fatal(err)
	}
	v2 := e.SetSecret("ordersvault", "DB-PASSWORD", "v2", WithExpires(time.Unix(1900000000, 0)))
	e.SetSecret("othervault", "DB-PASSWORD", "other-2")
	kv, err := e.SetKey("ordersvault", "SIGNING", nil)
	if err != nil {
		t.Fatal(err)
	}
	processor, cred := registerWorkload(t, e, tr)
	for _, q := range []string{testQueue, "plain-events"} {
		if err := e.GrantQueue(testAccount, q, processor, PermQueueProcess); err != nil {
			t.Fatal(err)
		}
	}
	got, err := queueClient(t, e, cred, tr).DequeueMessages(context.Background(), &azqueue.DequeueMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
	if err != nil || len(got.Messages) != 2 {
		t.Fatalf("dequeue: %v, %d messages, want 2 (a secret's and a key's new version)", err, len(got.Messages))
	}
	if _, err := base64.StdEncoding.DecodeString(*got.Messages[0].MessageText); err != nil {
		t.Errorf("default delivery is not base64: %q", *got.Messages[0].MessageText)
	}
	ev := decodeEvent(t, *got.Messages[0].MessageText)
	if ev.EventType != EventSecretNewVersionCreated || ev.Subject != "DB-PASSWORD" || ev.Data.Version != v2 || ev.Data.Version == before ||
		ev.Data.ObjectType != "Secret" || ev.Data.VaultName != "ordersvault" || ev.Data.ID != "https://ordersvault.vault.azure.net/secrets/DB-PASSWORD/"+v2 ||
		ev.Data.EXP == nil || *ev.Data.EXP != "1900000000" || ev.Data.NBF != nil || !strings.HasSuffix(ev.Topic, "/providers/Microsoft.KeyVault/vaults/ordersvault") {
		t.Errorf("secret event %+v", ev)
	}
	if ev := decodeEvent(t, *got.Messages[1].MessageText); ev.EventType != EventKeyNewVersionCreated || ev.Data.Version != kv || ev.Data.ObjectType != "Key" {
		t.Errorf("key event %+v", ev)
	}
	plainQ, err := azqueue.NewQueueClient(QueueURL(testAccount, "plain-events"), cred, &azqueue.ClientOptions{ClientOptions: clientOptions(tr, noRetry)})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := plainQ.DequeueMessages(context.Background(), &azqueue.DequeueMessagesOptions{NumberOfMessages: to.Ptr[int32](32)})
	if err != nil || len(plain.Messages) != 1 || !strings.HasPrefix(*plain.Messages[0].MessageText, "{") {
		t.Fatalf("plain JSON subscription of secret events: %v %+v", err, plain.Messages)
	}
	// Unsubscribed: the next version is not delivered.
	e.UnsubscribeEvents("ordersvault")
	e.SetSecret("ordersvault", "DB-PASSWORD", "v3")
	if st, err := e.QueueStats(testAccount, testQueue); err != nil || st.Visible != 0 {
		t.Errorf("after UnsubscribeEvents a version was delivered: %+v, %v", st, err)
	}
}

// TestEventFaults: with drops and duplicates, what arrives is a subset of the
// versions, some twice; with delays, everything arrives, not always in order.
func TestEventFaults(t *testing.T) {
	e := start(t, Options{})
	if err := e.AddQueue(testAccount, testQueue); err != nil {
		t.Fatal(err)
	}
	e.SetSecret("ordersvault", "API-KEY", "v0")
	if err := e.SubscribeEvents("ordersvault", testAccount, testQueue, EventOptions{Faults: EventFaults{DropRate: 0.3, DuplicateRate: 0.5}}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for range n {
		e.SetSecret("ordersvault", "API-KEY", "v")
	}
	st, err := e.QueueStats(testAccount, testQueue)
	if err != nil {
		t.Fatal(err)
	}
	// 140 delivered on average, 70 of them twice: 210 messages.
	if st.Messages < 150 || st.Messages > 270 {
		t.Errorf("%d messages for %d versions with 30%% dropped and 50%% duplicated, want about 210", st.Messages, n)
	}

	e2 := start(t, Options{})
	if err := e2.AddQueue(testAccount, testQueue); err != nil {
		t.Fatal(err)
	}
	e2.SetSecret("ordersvault", "API-KEY", "v0")
	if err := e2.SubscribeEvents("ordersvault", testAccount, testQueue, EventOptions{PlainJSON: true, Faults: EventFaults{MaxDelay: 200 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	var order []string
	for range 20 {
		order = append(order, e2.SetSecret("ordersvault", "API-KEY", "v"))
	}
	time.Sleep(400 * time.Millisecond)
	e2.mu.Lock()
	q, _ := e2.queueLocked(testAccount, testQueue)
	var got []string
	for _, m := range q.msgs {
		got = append(got, decodeEvent(t, m.text).Data.Version)
	}
	e2.mu.Unlock()
	if len(got) != len(order) {
		t.Fatalf("%d events delivered with delays, want %d", len(got), len(order))
	}
	same := true
	for i := range got {
		same = same && got[i] == order[i]
	}
	if same {
		t.Error("20 events delayed by up to 200 ms each arrived in creation order")
	}
}
