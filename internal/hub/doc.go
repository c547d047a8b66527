// Package hub is the HTTP side of kvinject's version hub (cmd/hub): the watch
// endpoint that rotating agents long-poll (protocol: pkg/hubapi), with its
// authentication, authorization, long poll, connection recycling, metrics and
// flags. The Key Vault side (sweeps, version lists, pacing) is package
// internal/hub/vaults.
//
// # Authentication
//
// The agent presents its pod's projected ServiceAccount token of audience
// hubapi.Audience. The hub creates a TokenReview with spec.audiences
// [hubapi.Audience] and requires status.authenticated, the audience in
// status.audiences, a ServiceAccount username and the pod's name and UID in
// user.extra (else ReasonNotAPod). Reviews are cached by the token's SHA-256
// (the token itself is never kept or logged) until the token's exp, at most
// 10 minutes; refusals for 10 s; concurrent requests with one token share one
// review. An agent therefore costs one TokenReview per projected token (the
// kubelet renews it every 8 minutes), and a restarted replica costs one
// TokenReview per agent as the agents reconnect with their own jitter, never
// one per request. No request is held beyond its token's exp, so each token
// is reviewed again before it is used past its lifetime.
//
// # Authorization
//
// The hub GETs the token's pod (the UID must match: a pod deleted and
// recreated under the same name is refused with ReasonPodMismatch) and reads
// its injected agent container (mutate.AgentContainerName) with
// agentconfig.ParseArgs: the agent must be in sidecar mode, the request's
// vault must be its --vault and every object one of its entries of that kind
// (secret, certificate for cert:, key for key:) without a pinned version
// (else ReasonNotPodObject), whether the hub watches that kind or not: a
// kind it does not watch (--watch-kinds) is answered at once with the object
// in hubapi.WatchResponse.Poll, so that the agent polls it. The version check
// (ReasonUnknownVersion: holding a version id proves the pod could read the
// object) is package vaults'. Lookups are cached by pod UID for
// --pod-cache-ttl (a pod's spec is immutable: the TTL only bounds how long a
// deleted pod keeps watching).
//
// # Long poll and recycling
//
// An authorized request is held until an object changes, its vault ends the
// watch, or its wait ends (--max-wait, jittered by 10%, and never beyond the
// token's exp); it is then answered 200 with the changes, or none. A watch
// whose change is queued for pacing when its wait ends is held on (at most
// one more --max-wait, never beyond the token's exp) rather than sent to the
// back of the vault's queue. Every answer carries hubapi.MaxWaitHeader: the
// longest hold, 2.1 x --max-wait, which the agent's timeout must exceed.
//
// The server speaks HTTP/1.1 only: one held request per connection, and a
// connection older than --max-connection-age (jittered by 20%) is closed
// after its next answer (Connection: close) so that agents rebalance across
// replicas. A held request keeps no goroutine (park.go): the handler takes
// the connection from net/http, and the watch's end, its timer or the
// server's draining writes the answer and hands the connection back to the
// http.Server. When the hub stops, held requests are answered 503
// ReasonUnavailable with a short Retry-After so that agents reconnect to
// another replica at once.
package hub
