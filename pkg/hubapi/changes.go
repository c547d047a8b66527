package hubapi

import (
	"fmt"
	"strings"
	"time"
)

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

// FeedHubParam is FeedPath's query parameter naming the feed (Feed.Hub) the
// cursor belongs to; a cursor of another feed starts from the oldest report
// the replica holds.
const FeedHubParam = "hub"

// Reasons of refused reports and feed requests (in addition to the watch's
// ReasonBadRequest, ReasonUnauthenticated, ReasonNotAPod, ReasonPodMismatch,
// ReasonNotPodObject and ReasonUnavailable).
const (
	// ReasonNoRestartAction: the pod's agent does not run with
	// --on-change=restart, so the hub keeps no report of it (403).
	ReasonNoRestartAction = "NoRestartAction"
	// ReasonRestartsOff: the hub has no restart controller configured
	// (--restarter-service-account), so it keeps no reports (403).
	ReasonRestartsOff = "RestartsOff"
	// ReasonNotRestarter: the feed answers only the restart controller's
	// ServiceAccount (403).
	ReasonNotRestarter = "NotRestarter"
)

// ParseServiceAccount parses "<namespace>/<name>", the form in which the
// hub's --restarter-service-account names the restart controller.
func ParseServiceAccount(s string) (namespace, name string, err error) {
	ns, n, ok := strings.Cut(s, "/")
	if !ok || !isDNSLabel(ns) || !isDNSSubdomain(n) {
		return "", "", fmt.Errorf("%q is not <namespace>/<serviceaccount>, e.g. kvinject-system/kvinject-restarter", s)
	}
	return ns, n, nil
}

func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}
