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

// Object kinds the hub watches. Certificates and keys are read by the agent on
// its own schedule (they are not watched yet).
const (
	KindSecret = "secret"
)

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
	// Vault is the vault's URL exactly as the agent's --vault flag gives it.
	Vault string `json:"vault"`
	// Objects are the watched objects, each with the version the agent holds.
	Objects []Object `json:"objects"`
}

// WatchResponse is the body of a 200 answer.
type WatchResponse struct {
	// Changed are the watched objects whose newest enabled version differs from
	// the one held, with that newest version; empty when the wait ended.
	Changed []Object `json:"changed,omitempty"`
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
