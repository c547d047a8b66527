package hubapi

import "time"

// # Reports of swapped sets and the restart feed
//
// A pod whose on-change action is a rolling restart (its agent runs with
// --on-change=restart) cannot restart its owner itself: the agent holds no
// token the API server accepts. Its rotating agent instead reports each swap
// of a new set (never the first set) to the hub: POST ChangedPath with a
// ChangedReport, authenticated like a watch (the pod's projected token of
// audience Audience). The hub accepts a report only from a pod whose injected
// agent runs with --on-change=restart and only for objects that agent reads,
// and answers 204 No Content or a Refusal.
//
// The restart controller (cmd/restarter) reads the reports with a long poll:
// GET FeedPath?after=<cursor>, authenticated with its own ServiceAccount's
// projected token of audience Audience; the hub answers only the
// ServiceAccount its --restarter-service-account names. The answer is a Feed
// with the reports after the cursor, or, after the hub's maximum wait, none.
// Each hub replica keeps its own bounded feed in memory, so the controller
// reads every replica; a replica's feed starts empty when it starts (Feed.Hub
// changes), and reports the controller missed are counted in Feed.Lost. A
// report is a hint, never an order: the controller verifies the pod, walks its
// owners, and reads the action from the owner's pod template.

// ChangedPath is the path of an agent's report of a swapped set (POST, JSON).
const ChangedPath = "/v1/changed"

// FeedPath is the path of the restart controller's long poll (GET).
const FeedPath = "/v1/restarts"

// FeedAfterParam is FeedPath's query parameter: the Feed.Next of the previous
// answer of the same replica (Feed.Hub), or absent for the start.
const FeedAfterParam = "after"

// MaxFeedChanges bounds the changes of one Feed answer.
const MaxFeedChanges = 512

// ChangedReport is the body of a report: the objects of the swapped set whose
// version changed, each with its new version.
type ChangedReport struct {
	// Vault is the vault's URL exactly as the agent's --vault flag gives it.
	Vault string `json:"vault"`
	// Objects are the objects whose version changed, at their new version.
	Objects []Object `json:"objects"`
}

// Feed is the body of a 200 answer to FeedPath.
type Feed struct {
	// Hub identifies the replica's feed; it changes when the replica
	// restarts, and a cursor of another feed starts from the current one.
	Hub string `json:"hub"`
	// Next is the cursor of the next request.
	Next uint64 `json:"next"`
	// Lost counts reports between the cursor and the first change that the
	// feed no longer holds (it keeps the newest reports only).
	Lost uint64 `json:"lost,omitempty"`
	// Changes are the reports after the cursor, oldest first.
	Changes []Change `json:"changes,omitempty"`
}

// Change is one report as the hub verified it: the pod is the token's pod.
type Change struct {
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	PodUID    string    `json:"podUID"`
	Time      time.Time `json:"time"`
	Vault     string    `json:"vault"`
	Objects   []Object  `json:"objects"`
}
