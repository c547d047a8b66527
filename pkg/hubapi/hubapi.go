// Package hubapi is the wire protocol between kvinject's agent and its version
// hub (cmd/hub), with no Kubernetes and no Azure in it: the agent binary links it
// without growing, the hub serves it, and both read the names from here only.
//
// # One long poll per agent
//
// A rotating agent holds one request at a time: POST WatchPath with a
// WatchRequest naming the vault and, for each watched object, the version the
// agent holds. The hub answers at once with the objects whose newest enabled
// version differs from the one held, or holds the request until one changes or
// until its maximum wait (MaxWaitHeader, jittered by the hub) ends, and then
// answers 200 with no Changed objects: the agent asks again at once.
//
// A long poll rather than a stream: every answer is a complete state, so a
// request can go to any hub replica (the replicas share nothing); the token is
// re-validated on every request; the hub recycles connections by closing them
// after an answer once they are older than its maximum connection age, which
// rebalances agents across replicas; and it passes any HTTP/1.1 proxy.
//
// # Authentication and authorization
//
// The request carries "Authorization: Bearer <token>", a projected
// ServiceAccount token of audience Audience bound to the agent's pod. The hub
// accepts a watch only for objects that the pod's injected agent reads (its
// own arguments) and only with a version id of that object: holding one proves
// the pod could read it. Refusals are a non-2xx status with a Refusal body.
//
// # Kinds the hub does not watch
//
// The hub watches the kinds its --watch-kinds names (secrets always;
// certificates and keys when configured) of the vaults it may list. A request
// naming objects of another kind, or of a kind the hub may not list in that
// vault, is answered at once, 200, with those objects in Poll (and nothing
// watched): the agent polls them on its own schedule and leaves them out of
// its requests until their RetryAfterSeconds have passed. The other objects
// of the request are not refused.
package hubapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// Audience is the audience of the projected ServiceAccount token an agent
// presents to the hub. The API server does not accept tokens of this audience.
const Audience = "kvinject-hub"

// WatchPath is the path of the watch request (POST, JSON).
const WatchPath = "/v1/watch"

// MaxWaitHeader is the response header in which the hub tells how long it
// holds a request without change (a Go duration, e.g. "5m0s"); the agent's
// request timeout must exceed it.
const MaxWaitHeader = "Kvinject-Hub-Max-Wait"

// Object kinds the hub can watch: secrets always, certificates and keys when
// the hub's --watch-kinds names them.
const (
	KindSecret      = "secret"
	KindCertificate = "certificate"
	KindKey         = "key"
)

// IsKind reports whether k is one of the Kind* constants.
func IsKind(k string) bool {
	return k == KindSecret || k == KindCertificate || k == KindKey
}

// MaxObjects bounds the objects of one watch request.
const MaxObjects = 1024

// MaxRequestBytes bounds the body of a watch request.
const MaxRequestBytes = 256 << 10

// Object is a watched object: in a request, the version the agent holds; in a
// response, the newest enabled version the hub saw.
type Object struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Version string `json:"version"`
}

// String names the object for logs, e.g. "secret/API-KEY@0123abcd".
func (o Object) String() string { return o.Kind + "/" + o.Name + "@" + o.Version }

// WatchRequest is the body of a watch request.
type WatchRequest struct {
	// Vault is the vault's URL exactly as the agent's --vault flag gives it,
	// or as an entry's own vault= does (an agent whose entries read several
	// vaults sends one request per vault).
	Vault string `json:"vault"`
	// Objects are the watched objects, each with the version the agent holds.
	Objects []Object `json:"objects"`
}

// WatchResponse is the body of a 200 answer.
type WatchResponse struct {
	// Changed are the watched objects whose newest enabled version differs from
	// the one held, with that newest version; empty when the wait ended.
	Changed []Object `json:"changed,omitempty"`
	// Poll are objects of the request that the hub does not watch: the agent
	// reads them on its own schedule. An answer with Poll comes at once.
	Poll []Polled `json:"poll,omitempty"`
}

// Reasons of a Polled object.
const (
	// PollKindNotWatched: the hub does not watch this kind (its --watch-kinds).
	PollKindNotWatched = "KindNotWatched"
	// PollKindNotListable: Key Vault refuses the hub's listing of this kind in
	// this vault (401 or 403).
	PollKindNotListable = "KindNotListable"
)

// Polled is an object the hub does not watch, and why.
type Polled struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// RetryAfterSeconds is when naming the object to the hub again may get it
	// watched.
	RetryAfterSeconds int `json:"retryAfterSeconds,omitempty"`
}

// Reasons of a Refusal. The agent falls back to polling on every refusal; the
// hub counts refusals by reason.
const (
	// ReasonBadRequest: the body is not a valid WatchRequest (400).
	ReasonBadRequest = "BadRequest"
	// ReasonUnauthenticated: no bearer token, or the API server did not accept
	// it (expired, revoked, wrong audience, pod deleted) (401).
	ReasonUnauthenticated = "Unauthenticated"
	// ReasonNotAPod: the token is valid but not bound to a pod (401).
	ReasonNotAPod = "NotAPod"
	// ReasonPodMismatch: the token's pod is gone or has another UID (403).
	ReasonPodMismatch = "PodMismatch"
	// ReasonNotPodObject: the pod's injected agent does not read this vault or
	// object, or reads it pinned to a version, or the pod has no rotating
	// agent (403).
	ReasonNotPodObject = "NotPodObject"
	// ReasonUnknownVersion: the version is not a version of the object (or the
	// object does not exist: the hub does not say which) (403).
	ReasonUnknownVersion = "UnknownVersion"
	// ReasonVaultNotListable: the hub may not list the vault (Key Vault said
	// 403), or listing failed; poll instead (503, Retry-After).
	ReasonVaultNotListable = "VaultNotListable"
	// ReasonUnavailable: the hub cannot answer now (API server or Key Vault
	// unreachable, shutting down) (503, Retry-After).
	ReasonUnavailable = "Unavailable"
)

// Refusal is the body of a non-2xx answer.
type Refusal struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Error describes the refusal.
func (r *Refusal) Error() string {
	return fmt.Sprintf("the hub refused the watch (%s): %s", r.Reason, r.Message)
}

// ReadRefusal decodes a non-2xx answer's body (at most 4 KiB); a body that is
// not a Refusal gives a Refusal with an empty Reason and the status text.
func ReadRefusal(resp *http.Response) *Refusal {
	var r Refusal
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err := json.Unmarshal(b, &r); err != nil || r.Message == "" {
		return &Refusal{Reason: r.Reason, Message: fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))}
	}
	return &r
}
