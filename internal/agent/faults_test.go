package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// The fault matrix: every fault of the hardening issue (latency spikes,
// connection resets, 429 storms, 5xx, expired or invalid tokens, a secret
// disabled or deleted mid-rotation, the token file missing for a while, the
// volume full), injected into a running sidecar and into init.
//
// Sidecar: a good set is written first; then the fault is injected and a
// secret changes. While the fault lasts (at least two polls), a concurrent
// reader checks that the visible set is always one complete set written
// before (never partial, torn, empty, deleted or older than one already
// seen), and the logs must report the fault by secret, vault and error code.
// Then the fault ends and the same agent, without a restart, must bring in
// the held-back change and the next one.
//
// Init: a transient fault either ends while init retries (init must then
// succeed within --init-timeout) or lasts (init must give up with the
// specific termination message); a permanent one must fail at once with it.
//
// Every case runs the agent through agent.Main, as the binary does, with all
// of its output (logs, usage, termination log) captured and scanned for
// secret values and service account tokens by the harness.

const (
	// faultRotation is the sidecar's polling interval.
	faultRotation = 250 * time.Millisecond
	// roundTimeout bounds one round of reads: generous, as the first round
	// (TLS, Azure AD discovery, token, challenge) may be slow on a loaded
	// machine. The "latency spike" cases set their own, which the spike
	// exceeds.
	roundTimeout      = 5 * time.Second
	spikeRoundTimeout = time.Second
	// Bounds for a loaded machine (-race, other jobs): only failing cases
	// wait for them. firstSetWithin is for the sidecar's first set (also its
	// --init-timeout); recoverWithin for a change once a fault ended (after a
	// 1s Retry-After, say); initTimeout is init's default --init-timeout.
	firstSetWithin = 15 * time.Second
	recoverWithin  = 6 * time.Second
	initTimeout    = 10 * time.Second
	// faultWindow bounds how long a case waits for the fault to be reported
	// as expected; a fault that fails more than minReports+2 polls or
	// attempts without being reported so ends the window early. Two retries
	// after a 1s Retry-After take up to 4s (the agent spreads a Retry-After
	// over up to twice its length), plus a slow start on a loaded machine.
	faultWindow = 10 * time.Second
	// minReports is the number of polls (or init attempts) that must report
	// the fault before it ends.
	minReports = 2
)

// The mapping of every case: secret "a" twice (names are case-insensitive:
// both files must always hold the same value), "b" in a subdirectory.
var faultEntries = []agentconfig.Entry{
	{File: "a", Name: "a"},
	{File: "a-again", Name: "A"},
	{File: "sub/b", Name: "b"},
}

// Log messages of the agent that the cases look for.
const (
	msgPollFailed   = "poll failed; keeping the last good set"
	msgRetrying     = "attempt failed, retrying"
	msgGone         = "secret unavailable; keeping its last value"
	msgRenewed      = "Key Vault rejected the token; renewed the credential"
	msgCannotRenew  = "cannot renew the credential"
	msgNoChange     = "no change"
	msgChanged      = "secrets changed; wrote a new set"
	msgStarting     = "starting"
	msgSidecarFatal = "failed"
)

// logWant is a log record to look for: attribute -> value as printed. A key
// ending in "~" matches a value that contains the text; the key "*~" matches
// a record with any attribute that contains it; the key "#" is the number
// of records it must match (default minReports). A want without "msg" or
// "msg~" gets the mode's failure message (msgPollFailed or msgRetrying).
// Every want also requires the vault attribute.
type logWant map[string]string

// outcome is what init must do.
type outcome int

const (
	// recovers: init succeeds (after the fault ended, if it ends).
	recovers outcome = iota
	// givesUp: the transient fault outlasts --init-timeout; init fails with want.
	givesUp
	// failsAtOnce: a permanent fault; init fails with want, without waiting
	// for --init-timeout.
	failsAtOnce
)

// initPlan is one init-mode run of a fault.
type initPlan struct {
	name string
	// begin starts the fault before the agent starts (default: the case's).
	begin func(fx *fixture)
	// retries are logged while init retries; with end set, the fault ends
	// once each was logged minReports times.
	retries []logWant
	// during, if set, runs once the retries were logged; the fault then ends
	// once duringLogs were logged too.
	during     func(fx *fixture)
	duringLogs []logWant
	// end ends the fault (nil: it lasts).
	end func(fx *fixture)
	// outcome and, for failures, the termination message: a template with
	// {vault} {vaultURL} {client} {tenant} {tokfile} {dir} {bytes} (length of
	// the value of "a"), {n} (digits), {ts} (a set directory) and {any}.
	outcome outcome
	want    string
	// timeout is --init-timeout (default initTimeout).
	timeout time.Duration
}

// faultCase is one row of the matrix.
type faultCase struct {
	name string
	// managed uses a user-assigned managed identity (its cases run one at a
	// time: the managed-identity endpoint is process environment); otherwise
	// workload identity.
	managed bool
	// volume puts the secrets on a small tmpfs of their own.
	volume bool
	// roundTimeout is the agent's RoundTimeout (default roundTimeout).
	roundTimeout time.Duration
	// begin starts the fault; end stops it (both may be nil).
	begin, end func(fx *fixture)

	// Sidecar mode. reports must each be logged in at least minReports polls
	// while the fault lasts. blocks: the change made during the fault must not
	// arrive before it ends (otherwise it may, or must with rotates). quiet:
	// no poll may fail.
	reports []logWant
	blocks  bool
	rotates bool
	quiet   bool

	// Init mode.
	init []initPlan
}

func faultCases() []faultCase {
	injectFault := func(f emulator.Fault) func(*fixture) {
		return func(fx *fixture) { fx.inject(f) }
	}
	clearFaults := func(fx *fixture) { fx.emu.ClearFaults() }
	expireAnd := func(f emulator.Fault) func(*fixture) {
		return func(fx *fixture) {
			fx.inject(f)
			fx.emu.ExpireTokens()
		}
	}
	const (
		giveUpHead = `kvinject-agent: cannot read secret "a" from vault {vault}, still failing after {n}s ({n} attempts): `
		failHead   = `kvinject-agent: cannot read secret "a" from vault {vault}: `
	)
	// After a one-off expiry, Key Vault rejects the token once; then the
	// agent renews the credential (once) and the fault shows elsewhere.
	kv401 := logWant{"secret": "a", "status": "401", "code": "Unauthorized", "#": "1"}
	renewed := logWant{"msg": msgRenewed, "#": "1"}
	// With tokens revoked again and again, both repeat.
	kv401s := logWant{"secret": "a", "status": "401", "code": "Unauthorized"}
	renewals := logWant{"msg": msgRenewed}
	// Some record (a failed poll, a failed renewal) reports the 503 of the
	// token endpoint.
	anyRecord503 := logWant{"msg~": "", "status": "503"}
	return []faultCase{
		{
			name:         "latency spike beyond the round timeout",
			roundTimeout: spikeRoundTimeout,
			begin:        func(fx *fixture) { fx.emu.SetLatency(spikeRoundTimeout + 500*time.Millisecond) },
			end:          func(fx *fixture) { fx.emu.SetLatency(0) },
			reports:      []logWant{{"secret": "a", "error~": "context deadline exceeded"}},
			blocks:       true,
			init: []initPlan{
				{name: "ends", retries: []logWant{{"secret": "a", "error~": "context deadline exceeded"}},
					end: func(fx *fixture) { fx.emu.SetLatency(0) }},
				// The wording is open; it must name the vault's host and say
				// what to do.
				{name: "lasts", outcome: givesUp, timeout: 2500 * time.Millisecond,
					want: giveUpHead + `{any}{vault}.vault.azure.net{any}. Fix: {any}`},
			},
		},
		{
			name:    "latency spike within the round timeout",
			begin:   func(fx *fixture) { fx.emu.SetLatency(300 * time.Millisecond) },
			end:     func(fx *fixture) { fx.emu.SetLatency(0) },
			reports: []logWant{{"msg": msgNoChange}},
			rotates: true,
			quiet:   true,
			init:    []initPlan{{name: "slow"}},
		},
		{
			name:    "connection resets",
			begin:   injectFault(emulator.Fault{Kind: emulator.FaultReset, Match: emulator.OpKeyVault}),
			end:     clearFaults,
			reports: []logWant{{"secret": "a", "error~": "stream error"}},
			blocks:  true,
			init: []initPlan{
				{name: "ends", retries: []logWant{{"secret": "a", "error~": "stream error"}}, end: clearFaults},
				{name: "lasts", outcome: givesUp, timeout: 1500 * time.Millisecond,
					want: giveUpHead + `cannot connect to {vault}.vault.azure.net ({any}). Fix: allow egress from the pod to {vault}.vault.azure.net:443 in network policies, NSGs and firewalls`},
			},
		},
		{
			name:    "429 storm",
			begin:   injectFault(emulator.Fault{Kind: emulator.FaultThrottle, RetryAfterSeconds: 1, Match: emulator.OpKeyVault}),
			end:     clearFaults,
			reports: []logWant{{"secret": "a", "status": "429", "code": "Throttled", "retryAfter": "1s"}},
			blocks:  true,
			init: []initPlan{
				{name: "ends", retries: []logWant{{"secret": "a", "status": "429", "code": "Throttled", "retryAfter": "1s"}}, end: clearFaults},
				{name: "lasts", outcome: givesUp, timeout: 1500 * time.Millisecond,
					want: giveUpHead + `HTTP 429 Too Many Requests, Key Vault error Throttled: the vault is throttling reads (Key Vault allows 4,000 secret reads per 10 seconds per vault). Fix: spread pod start-ups, lengthen kvinject.dev/rotation, or spread the secrets over more vaults`},
			},
		},
		{
			name:    "500",
			begin:   injectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 500, Match: emulator.OpGet}),
			end:     clearFaults,
			reports: []logWant{{"secret": "a", "status": "500", "code": "InternalServerError"}},
			blocks:  true,
			init:    []initPlan{{name: "ends", retries: []logWant{{"secret": "a", "status": "500", "code": "InternalServerError"}}, end: clearFaults}},
		},
		{
			name:    "503",
			begin:   injectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpKeyVault}),
			end:     clearFaults,
			reports: []logWant{{"secret": "a", "status": "503", "code": "ServiceUnavailable"}},
			blocks:  true,
			init:    []initPlan{{name: "ends", retries: []logWant{{"secret": "a", "status": "503", "code": "ServiceUnavailable"}}, end: clearFaults}},
		},
		{
			name:    "expired access tokens",
			begin:   func(fx *fixture) { fx.expireEvery(100 * time.Millisecond) },
			end:     func(fx *fixture) { fx.stopExpiring() },
			reports: []logWant{kv401s, renewals},
			init: []initPlan{{
				// Tokens are revoked while the first read is on its way.
				name: "revoked before use",
				begin: func(fx *fixture) {
					fx.emu.SetLatency(300 * time.Millisecond)
					fx.expireEvery(5 * time.Millisecond)
				},
				outcome: failsAtOnce,
				want:    failHead + `HTTP 401 Unauthorized, Key Vault error Unauthorized: Key Vault rejected the access token ([TokenExpired] Error validating token: 'S2S12086'.). Fix: check that the identity belongs to the vault's tenant ({tenant}) and that the nodes' clocks are right; the agent gets a new token on its next attempt`,
			}},
		},
		{
			name:    "token endpoint 503 while tokens expire",
			begin:   expireAnd(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpToken}),
			end:     clearFaults,
			reports: []logWant{kv401, renewed, anyRecord503},
			blocks:  true,
			init: []initPlan{
				{name: "ends", retries: []logWant{{"secret": "a", "status": "503"}}, end: clearFaults},
				{name: "lasts", outcome: givesUp, timeout: 1500 * time.Millisecond,
					want: giveUpHead + `Azure AD refused the token request of workload identity {client} (HTTP 503 Service Unavailable server_error, AADSTS90033): Azure AD is unavailable or throttling. Fix: this is usually temporary; the pod retries when it restarts`},
			},
		},
		{
			name:    "Azure AD connection resets while tokens expire",
			begin:   expireAnd(emulator.Fault{Kind: emulator.FaultReset, Match: emulator.OpAAD}),
			end:     clearFaults,
			reports: []logWant{kv401, renewed, {"secret": "a", "*~": "login.microsoftonline.com"}},
			blocks:  true,
			init:    []initPlan{{name: "ends", retries: []logWant{{"secret": "a", "*~": "login.microsoftonline.com"}}, end: clearFaults}},
		},
		{
			name: "invalid service account token",
			begin: func(fx *fixture) {
				fx.writeToken("garbage-token-" + randHex(16))
				fx.emu.ExpireTokens()
			},
			end:     func(fx *fixture) { fx.writeToken(fx.validToken()) },
			reports: []logWant{kv401, renewed, {"secret": "a", "status": "400", "*~": "AADSTS50027"}},
			blocks:  true,
			init: []initPlan{{name: "at start", outcome: failsAtOnce,
				want: failHead + `Azure AD refused the token request of workload identity {client} (HTTP 400 Bad Request invalid_request, AADSTS50027): the service account token is not a valid JWT. Fix: check the projected token volume kvinject-azure-token (audience api://AzureADTokenExchange)`}},
		},
		{
			name: "expired service account token",
			begin: func(fx *fixture) {
				fx.writeToken(fx.token(time.Now().Add(-time.Minute)))
				fx.emu.ExpireTokens()
			},
			end:     func(fx *fixture) { fx.writeToken(fx.validToken()) },
			reports: []logWant{kv401, renewed, {"secret": "a", "status": "401", "*~": "AADSTS700024"}},
			blocks:  true,
			init: []initPlan{{name: "at start", outcome: failsAtOnce,
				want: failHead + `Azure AD refused the token request of workload identity {client} (HTTP 401 Unauthorized invalid_client, AADSTS700024): the service account token is expired or not yet valid. Fix: check the nodes' clocks and that kubelet refreshes the projected token (kvinject-azure-token volume)`}},
		},
		{
			name: "token file missing for a while",
			begin: func(fx *fixture) {
				fx.removeToken()
				fx.emu.ExpireTokens()
			},
			end:     func(fx *fixture) { fx.writeToken(fx.validToken()) },
			reports: []logWant{kv401, {"msg": msgCannotRenew, "error~": "azure-identity-token cannot be read"}},
			blocks:  true,
			init: []initPlan{
				{name: "at start", outcome: failsAtOnce,
					want: `kvinject-agent: workload identity: the projected service account token {tokfile} cannot be read (stat {tokfile}: no such file or directory). Fix: check that the pod mounts the kvinject-azure-token volume with audience api://AzureADTokenExchange, then recreate the pod`},
				{
					// Azure AD's discovery fails, so the token file has not
					// been read yet (azidentity keeps what it read for 10
					// minutes); then the discovery recovers but the file is
					// missing for a while, and comes back.
					name:    "while retrying",
					begin:   injectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpOpenID}),
					retries: []logWant{{"secret": "a"}},
					during: func(fx *fixture) {
						fx.removeToken()
						fx.emu.ClearFaults()
					},
					duringLogs: []logWant{{"secret": "a", "error~": "azure-identity-token"}},
					end:        func(fx *fixture) { fx.writeToken(fx.validToken()) },
				},
			},
		},
		{
			name:    "secret disabled mid-rotation",
			begin:   func(fx *fixture) { fx.must(fx.emu.DisableSecret(fx.vault, "b")) },
			reports: []logWant{{"msg": msgGone, "secret": "b", "file": "sub/b", "status": "403", "innerCode": "SecretDisabled"}},
			rotates: true,
			init: []initPlan{{
				name: "while retrying",
				begin: func(fx *fixture) {
					fx.inject(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Count: 2, Match: emulator.OpGet})
					fx.must(fx.emu.DisableSecret(fx.vault, "b"))
				},
				outcome: failsAtOnce,
				want:    `kvinject-agent: cannot read secret "b" from vault {vault}: HTTP 403 Forbidden, Key Vault error Forbidden (inner error SecretDisabled): the secret's current version is disabled. Fix: enable it (az keyvault secret list-versions --vault-name {vault} --name b shows it; az keyvault secret set-attributes --vault-name {vault} --name b --version <version> --enabled true), set a new value, or pin an enabled version in kvinject.dev/secrets (<file>=b@<version>)`,
			}},
		},
		{
			name:    "secret deleted mid-rotation",
			begin:   func(fx *fixture) { fx.must(fx.emu.DeleteSecret(fx.vault, "b")) },
			reports: []logWant{{"msg": msgGone, "secret": "b", "file": "sub/b", "status": "404", "code": "SecretNotFound"}},
			rotates: true,
			init: []initPlan{{
				name: "while retrying",
				begin: func(fx *fixture) {
					fx.inject(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Count: 2, Match: emulator.OpGet})
					fx.must(fx.emu.DeleteSecret(fx.vault, "b"))
				},
				outcome: failsAtOnce,
				want:    `kvinject-agent: cannot read secret "b" from vault {vault}: HTTP 404 Not Found, Key Vault error SecretNotFound: the vault has no secret named "b" (or it was deleted). Fix: check the name in kvinject.dev/secrets; list the vault's secrets with az keyvault secret list --vault-name {vault} --query "[].name"`,
			}},
		},
		{
			name:    "volume full",
			volume:  true,
			begin:   func(fx *fixture) { fx.fillVolume() },
			end:     func(fx *fixture) { fx.freeVolume() },
			reports: []logWant{{"error~": "{volumeError}"}},
			blocks:  true,
			init: []initPlan{{name: "at start", outcome: failsAtOnce,
				want: `{volumeMessage}`}},
		},
		{
			// MSAL caches managed-identity tokens per process: after Key
			// Vault rejected one, the agent must still get a new one.
			name:    "managed identity: expired access tokens",
			managed: true,
			begin:   func(fx *fixture) { fx.expireEvery(100 * time.Millisecond) },
			end:     func(fx *fixture) { fx.stopExpiring() },
			reports: []logWant{kv401s, renewals},
		},
		{
			name:    "managed identity: identity endpoint 503 while tokens expire",
			managed: true,
			begin:   expireAnd(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpMSI}),
			end:     clearFaults,
			reports: []logWant{kv401, renewed, anyRecord503},
			blocks:  true,
			init: []initPlan{
				{name: "ends", begin: injectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpMSI}),
					retries: []logWant{{"secret": "a", "status": "503"}}, end: clearFaults},
				{name: "lasts", begin: injectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpMSI}),
					outcome: givesUp, timeout: 1500 * time.Millisecond,
					want: giveUpHead + `the managed-identity endpoint answered HTTP 503 Service Unavailable (Service Unavailable). Fix: this is usually temporary; the pod retries when it restarts`},
			},
		},
	}
}

// TestFaultMatrix runs every case in sidecar mode and its init plans.
//
// The cases spend their time waiting for polls, so they run concurrently:
// t.Run from goroutines, not t.Parallel, whose limit (-parallel, GOMAXPROCS
// by default) would serialize them on a small machine. Managed-identity cases
// set the process environment (IDENTITY_ENDPOINT): they run one after
// another, each with its own client ID (MSAL caches managed-identity tokens
// process-wide, by client ID).
func TestFaultMatrix(t *testing.T) {
	start := time.Now()
	var wg sync.WaitGroup
	var managed []func()
	for _, tc := range faultCases() {
		runs := []func(){func() { t.Run("sidecar/"+tc.name, func(t *testing.T) { runSidecarCase(t, tc) }) }}
		for _, p := range tc.init {
			runs = append(runs, func() { t.Run("init/"+tc.name+"/"+p.name, func(t *testing.T) { runInitPlan(t, tc, p) }) })
		}
		if tc.managed {
			managed = append(managed, runs...)
			continue
		}
		for _, r := range runs {
			wg.Go(r)
		}
	}
	wg.Go(func() {
		for _, r := range managed {
			r()
		}
	})
	wg.Wait()
	t.Logf("fault matrix: %s", time.Since(start).Round(time.Millisecond))
}

// fixture is one case's harness: an emulator with secrets "a" and "b", an
// identity allowed to read them, and what the case changed.
type fixture struct {
	*harness
	tc       faultCase
	clientID string
	tok      *tokenDir // workload identity only

	// cur is the current value of each secret; gen counts its values.
	cur map[string]string
	gen map[string]int
	// watch, once started, learns every set that may become visible.
	watch *setWatcher

	// realVolume: the secrets are on a small tmpfs (else a stand-in obstacle).
	realVolume bool

	expMu   sync.Mutex
	expStop chan struct{}
	expDone chan struct{}

	// The agent's output, parsed.
	recMu  sync.Mutex
	parsed int
	lines  []logLine
}

// logLine is a line of the agent's output at offset at; rec is nil when it
// is not a JSON log record.
type logLine struct {
	at   int
	text string
	rec  map[string]any
}

func newFixture(t *testing.T, tc faultCase) *fixture {
	t.Helper()
	// The emulator's request log (it never holds values or tokens) helps
	// to tell what the agent did when a case fails.
	requests := &syncBuffer{}
	h := newHarness(t, emulator.Options{Logger: slog.New(slog.NewTextHandler(requests, nil))})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("emulator requests:\n%s", tail(requests.String(), 6000))
		}
	})
	fx := &fixture{harness: h, tc: tc, cur: map[string]string{}, gen: map[string]int{}}
	if tc.managed {
		fx.clientID = h.managed()
	} else {
		fx.clientID, fx.tok = h.workload()
		// A token the leak check knows.
		fx.writeToken(fx.validToken())
	}
	fx.must(h.emu.Grant(h.vault, fx.clientID, emulator.PermGet))
	if tc.volume {
		h.dir, fx.realVolume = smallVolume(t)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", fx.logTail())
		}
	})
	t.Cleanup(fx.stopExpiring)
	fx.set("a")
	fx.set("b")
	return fx
}

func (fx *fixture) must(err error) {
	fx.t.Helper()
	if err != nil {
		fx.t.Fatal(err)
	}
}

func (fx *fixture) inject(f emulator.Fault) { fx.must(fx.emu.InjectFault(f)) }

// set gives a secret a new value (a new version) and returns it.
func (fx *fixture) set(secret string) string {
	fx.gen[secret]++
	v := fmt.Sprintf("VALUE-%s%d-%s", secret, fx.gen[secret], randHex(12))
	fx.cur[secret] = v
	if fx.watch != nil {
		// Before Key Vault has it, so the reader always knows the set.
		fx.watch.allow(fx.expected(), fmt.Sprintf("a%d b%d", fx.gen["a"], fx.gen["b"]))
	}
	fx.setSecretValue(secret, v)
	return v
}

// expected is the set the current values make: file -> value.
func (fx *fixture) expected() map[string]string {
	return map[string]string{"a": fx.cur["a"], "a-again": fx.cur["a"], "sub/b": fx.cur["b"]}
}

// visible reports whether the directory shows exactly set.
func (fx *fixture) visible(set map[string]string) bool {
	for f, v := range set {
		if !fx.fileIs(f, v) {
			return false
		}
	}
	return true
}

// token is a service account token for the case's ServiceAccount.
func (fx *fixture) token(exp time.Time) string {
	return jwt(testIssuer, testSubject, emulator.DefaultAudience, exp)
}

func (fx *fixture) validToken() string { return fx.token(time.Now().Add(time.Hour)) }

// writeToken replaces the projected token, kubelet-style; its content is a
// credential, so the leak check looks for it too.
func (fx *fixture) writeToken(content string) {
	fx.mu.Lock()
	fx.values = append(fx.values, content)
	fx.mu.Unlock()
	fx.tok.write(content)
}

// removeToken removes the projected token file (the name the agent reads).
func (fx *fixture) removeToken() {
	fx.must(os.Remove(fx.tok.path()))
}

// expireEvery revokes every access token at each tick until stopExpiring.
func (fx *fixture) expireEvery(d time.Duration) {
	fx.expMu.Lock()
	defer fx.expMu.Unlock()
	if fx.expStop != nil {
		return
	}
	stop, done := make(chan struct{}), make(chan struct{})
	fx.expStop, fx.expDone = stop, done
	go func() {
		defer close(done)
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			fx.emu.ExpireTokens()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
}

func (fx *fixture) stopExpiring() {
	fx.expMu.Lock()
	defer fx.expMu.Unlock()
	if fx.expStop != nil {
		close(fx.expStop)
		<-fx.expDone
		fx.expStop = nil
	}
}

// smallVolume returns a directory on a tmpfs of 256 KiB of its own, like the
// pod's emptyDir with a sizeLimit. Mounting needs privileges: without them it
// returns a plain directory and fillVolume uses a stand-in obstacle.
func smallVolume(t *testing.T) (string, bool) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "volume")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Logf("cannot mount a tmpfs (%v: %s); a leftover %s directory stands in for a full volume", err, strings.TrimSpace(string(out)), "..data_tmp")
		return dir, false
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir, true
}

const fillerName = ".filler"

// fillVolume takes all the space left on the volume (another writer to the
// emptyDir). Without a tmpfs of its own, a non-empty ..data_tmp directory
// makes the writer's swap fail instead.
func (fx *fixture) fillVolume() {
	fx.t.Helper()
	if !fx.realVolume {
		fx.must(os.MkdirAll(filepath.Join(fx.dir, "..data_tmp", "x"), 0o755))
		return
	}
	f, err := os.Create(filepath.Join(fx.dir, fillerName))
	fx.must(err)
	defer f.Close()
	buf := make([]byte, 4096)
	for written := 0; ; written += len(buf) {
		if written > 4<<20 {
			fx.t.Fatalf("the volume %s took more than 4 MiB without filling up", fx.dir)
		}
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				fx.t.Fatal(err)
			}
			return
		}
	}
}

func (fx *fixture) freeVolume() {
	fx.t.Helper()
	if !fx.realVolume {
		fx.must(os.RemoveAll(filepath.Join(fx.dir, "..data_tmp")))
		return
	}
	fx.must(os.Remove(filepath.Join(fx.dir, fillerName)))
}

// volumeError is what a failed write of a set says, in logs and in the
// termination log.
func (fx *fixture) volumeError() string {
	if fx.realVolume {
		return "the secrets volume is full"
	}
	return "cannot write the secrets"
}

// args is the command line the webhook writes, plus the agent's own flags.
func (fx *fixture) args(cfg agentconfig.Config, initTimeout time.Duration) []string {
	return append(cfg.Args(), "--termination-log="+fx.termLog, "--log-level=debug", "--init-timeout="+initTimeout.String())
}

// mainOptions send all of the agent's output to the harness's log buffer.
func (fx *fixture) mainOptions() agent.Options {
	o := fx.options()
	o.Logger = nil // Main logs JSON to Stderr at --log-level
	o.Stderr = fx.logs
	o.MinBackoff = 50 * time.Millisecond
	o.MaxBackoff = 250 * time.Millisecond
	o.RoundTimeout = roundTimeout
	if fx.tc.roundTimeout != 0 {
		o.RoundTimeout = fx.tc.roundTimeout
	}
	return o
}

// identity is the case's identity kind.
func (fx *fixture) identity() agentconfig.IdentityKind {
	if fx.tc.managed {
		return agentconfig.IdentityManaged
	}
	return agentconfig.IdentityWorkload
}

// mark is a position in the logs.
func (fx *fixture) mark() int { return len(fx.logs.String()) }

// records returns the JSON log records written after mark, and the lines
// that are not JSON log records. Lines are parsed once.
func (fx *fixture) records(mark int) ([]map[string]any, []string) {
	s := fx.logs.String()
	fx.recMu.Lock()
	defer fx.recMu.Unlock()
	for {
		i := strings.IndexByte(s[fx.parsed:], '\n')
		if i < 0 {
			break
		}
		line := s[fx.parsed : fx.parsed+i]
		l := logLine{at: fx.parsed, text: line}
		if err := json.Unmarshal([]byte(line), &l.rec); err != nil || l.rec["msg"] == nil {
			l.rec = nil
		}
		if strings.TrimSpace(line) != "" {
			fx.lines = append(fx.lines, l)
		}
		fx.parsed += i + 1
	}
	var recs []map[string]any
	var bad []string
	for _, l := range fx.lines {
		switch {
		case l.at < mark:
		case l.rec == nil:
			bad = append(bad, l.text)
		default:
			recs = append(recs, l.rec)
		}
	}
	return recs, bad
}

// expand fills a logWant's templates and defaults.
func (fx *fixture) expand(w logWant, defaultMsg string) logWant {
	out := logWant{"vault": fx.vaultURL()}
	for k, v := range w {
		if k != "#" {
			out[k] = strings.ReplaceAll(v, "{volumeError}", fx.volumeError())
		}
	}
	_, msg := out["msg"]
	_, msgPart := out["msg~"]
	if !msg && !msgPart {
		out["msg"] = defaultMsg
	}
	return out
}

func matchRecord(rec map[string]any, w logWant) bool {
	for k, want := range w {
		switch {
		case k == "*~":
			found := false
			for _, v := range rec {
				if strings.Contains(fmt.Sprint(v), want) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
		case strings.HasSuffix(k, "~"):
			v, ok := rec[strings.TrimSuffix(k, "~")]
			if !ok || !strings.Contains(fmt.Sprint(v), want) {
				return false
			}
		default:
			v, ok := rec[k]
			if !ok || fmt.Sprint(v) != want {
				return false
			}
		}
	}
	return true
}

// count returns how many records after mark match w.
func (fx *fixture) count(mark int, w logWant) int {
	recs, _ := fx.records(mark)
	n := 0
	for _, r := range recs {
		if matchRecord(r, w) {
			n++
		}
	}
	return n
}

// times is how many records w must match: its "#", else n.
func times(w logWant, n int) int {
	if v, err := strconv.Atoi(w["#"]); err == nil {
		return v
	}
	return n
}

// reported reports whether each want was logged (at least n times, or its
// "#") after mark.
func (fx *fixture) reported(mark int, wants []logWant, defaultMsg string, n int) bool {
	return len(fx.missing(mark, wants, defaultMsg, n)) == 0
}

// missing lists the wants logged fewer times than reported requires.
func (fx *fixture) missing(mark int, wants []logWant, defaultMsg string, n int) []string {
	var out []string
	for _, w := range wants {
		min := times(w, n)
		w = fx.expand(w, defaultMsg)
		if c := fx.count(mark, w); c < min {
			b, _ := json.Marshal(w)
			out = append(out, fmt.Sprintf("%s (%d times, want %d)", b, c, min))
		}
	}
	return out
}

// waitUntil polls cond until it holds or the timeout passes; it reports
// whether it held.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// logTail is the end of the agent's output, for failure messages.
func (fx *fixture) logTail() string { return tail(fx.logs.String(), 12000) }

func tail(s string, n int) string {
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}

// startMain runs agent.Main in sidecar or init mode. stop cancels its
// context and returns its exit code; exited is closed when it returned by
// itself or after stop, and code then holds the exit code.
func (fx *fixture) startMain(cfg agentconfig.Config, initTimeout time.Duration) (stop func() int, exited <-chan struct{}, code *int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	args := fx.args(cfg, initTimeout)
	opts := fx.mainOptions()
	var c int
	go func() {
		defer close(done)
		c = agent.Main(ctx, args, opts)
	}()
	stop = func() int {
		cancel()
		select {
		case <-done:
			return c
		case <-time.After(10 * time.Second):
			fx.t.Errorf("the agent did not stop within 10s of its context's end")
			return -1
		}
	}
	fx.t.Cleanup(func() { stop() })
	return stop, done, &c
}

func runSidecarCase(t *testing.T, tc faultCase) {
	fx := newFixture(t, tc)
	cfg := fx.config(agentconfig.ModeSidecar, fx.identity(), faultEntries...)
	cfg.Rotation = faultRotation
	stop, exited, exitCode := fx.startMain(cfg, firstSetWithin)
	set0 := fx.expected()
	fx.waitFor("the first set", firstSetWithin, func() bool { return fx.visible(set0) })

	// The reader runs from the first set to the end.
	fx.watch = newSetWatcher(fx.dir, faultEntries)
	fx.watch.allow(set0, "a1 b1")
	fx.watch.start()
	t.Cleanup(func() {
		fx.watch.stop()
		for _, p := range fx.watch.problems() {
			t.Error(p)
		}
	})

	// The fault, and a change that it may hold back.
	mark := fx.mark()
	faultStart := time.Now()
	if tc.begin != nil {
		tc.begin(fx)
	}
	fx.set("a")
	waitUntil(faultWindow, func() bool {
		if fx.count(mark, logWant{"msg": msgPollFailed})+fx.count(mark, logWant{"msg": msgGone}) > minReports+2 && !tc.rotates {
			return true
		}
		return fx.reported(mark, tc.reports, msgPollFailed, minReports) && (!tc.rotates || fx.visible(fx.expected()))
	})
	if !fx.reported(mark, tc.reports, msgPollFailed, minReports) || tc.rotates && !fx.visible(fx.expected()) {
		t.Errorf("during the fault (%s), the logs lack %s; rotated: %v",
			time.Since(faultStart).Round(time.Millisecond), strings.Join(fx.missing(mark, tc.reports, msgPollFailed, minReports), ", "),
			fx.visible(fx.expected()))
	}
	if tc.blocks && !fx.visible(set0) {
		t.Errorf("a new set became visible while the fault lasted")
	}
	if tc.quiet {
		if n := fx.count(mark, logWant{"msg": msgPollFailed}); n > 0 {
			t.Errorf("%d polls failed during a fault that should only slow them down", n)
		}
	}
	select {
	case <-exited:
		t.Fatalf("the sidecar exited with code %d during the fault\ntermination log: %s", *exitCode, fx.termination())
	default:
	}
	readsDuringFault := fx.watch.reads()
	failedPolls := fx.count(mark, logWant{"msg": msgPollFailed}) + fx.count(mark, logWant{"msg": msgGone})

	// The fault ends: the same agent must bring in the change, then the next.
	if tc.end != nil {
		tc.end(fx)
	}
	fx.stopExpiring()
	endedAt := time.Now()
	if !waitUntil(recoverWithin, func() bool { return fx.visible(fx.expected()) }) {
		t.Fatalf("the agent did not recover within %s of the fault's end: the change made during the fault is not visible (emulator: %+v)",
			recoverWithin, fx.emu.Stats())
	}
	recovered := time.Since(endedAt)
	fx.set("b")
	if !waitUntil(recoverWithin, func() bool { return fx.visible(fx.expected()) }) {
		t.Fatalf("after recovering, the next change did not arrive within %s", recoverWithin)
	}

	if code := stop(); code != 0 {
		t.Errorf("the sidecar exited with code %d on shutdown, want 0", code)
	}
	if readsDuringFault < 20 {
		t.Errorf("the reader checked the set only %d times during the fault", readsDuringFault)
	}
	fx.checkSidecarLogs()
	fx.checkTidy(true)
	t.Logf("%d polls reported a failure or an unavailable secret over %s; recovered %s after it ended; the reader checked %d sets",
		failedPolls, endedAt.Sub(faultStart).Round(time.Millisecond), recovered.Round(time.Millisecond), fx.watch.reads())
}

// checkSidecarLogs checks what a sidecar that survived a fault logged: JSON
// records only, one start (no restart), no failure and no termination log.
func (fx *fixture) checkSidecarLogs() {
	fx.t.Helper()
	recs, bad := fx.records(0)
	for _, l := range bad {
		fx.t.Errorf("not a JSON log record: %s", l)
	}
	starts := 0
	for _, r := range recs {
		switch r["msg"] {
		case msgStarting:
			starts++
		case msgSidecarFatal:
			fx.t.Errorf("the sidecar logged a failure: %v", r)
		}
	}
	if starts != 1 {
		fx.t.Errorf("the agent started %d times, want once", starts)
	}
	if fx.count(0, logWant{"msg": msgChanged}) < 2 {
		fx.t.Errorf("the logs lack the two changes written after the fault")
	}
	if got := fx.termination(); got != "" {
		fx.t.Errorf("the sidecar wrote a termination log: %q", got)
	}
}

// checkTidy checks that the directory holds one set and nothing partial: with
// a set, ..data, one set directory and the visible links; without, nothing
// the agent made.
func (fx *fixture) checkTidy(withSet bool) {
	fx.t.Helper()
	entries, err := os.ReadDir(fx.dir)
	if err != nil {
		fx.t.Fatal(err)
	}
	setDir := regexp.MustCompile(`^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}(-\d+)?$`)
	var names, sets []string
	for _, e := range entries {
		names = append(names, e.Name())
		switch {
		case e.Name() == fillerName || e.Name() == "..data_tmp" && !fx.realVolume && !withSet:
			// the case's own obstacle
		case setDir.MatchString(e.Name()):
			sets = append(sets, e.Name())
		case withSet && (e.Name() == atomicdir.DataLink || e.Name() == "a" || e.Name() == "a-again" || e.Name() == "sub"):
		default:
			fx.t.Errorf("unexpected %s in the secrets directory", e.Name())
		}
	}
	want := 0
	if withSet {
		want = 1
	}
	if len(sets) != want {
		fx.t.Errorf("%d set directories (%v), want %d; directory: %v", len(sets), sets, want, names)
	}
	if withSet {
		if err := atomicdir.Check(fx.dir); err != nil {
			fx.t.Errorf("probe: %v", err)
		}
	}
}

func runInitPlan(t *testing.T, tc faultCase, p initPlan) {
	fx := newFixture(t, tc)
	timeout := p.timeout
	if timeout == 0 {
		timeout = initTimeout
	}
	begin := p.begin
	if begin == nil {
		begin = tc.begin
	}
	if begin != nil {
		begin(fx)
	}
	want := fx.expected()
	cfg := fx.config(agentconfig.ModeInit, fx.identity(), faultEntries...)
	start := time.Now()
	_, exited, exitCode := fx.startMain(cfg, timeout)

	code := -1
	if p.end != nil {
		// The fault lasts while init retries, then ends.
		waitFor := func(what string, wants []logWant) bool {
			waitUntil(faultWindow, func() bool {
				return fx.reported(0, wants, msgRetrying, minReports) || fx.count(0, logWant{"msg": msgRetrying}) > minReports+2
			})
			ok := fx.reported(0, wants, msgRetrying, minReports)
			if !ok {
				t.Errorf("init did not report %s %d times: %s", what, minReports,
					strings.Join(fx.missing(0, wants, msgRetrying, minReports), ", "))
			}
			return ok
		}
		waitFor("the fault", p.retries)
		if p.during != nil {
			mark := fx.mark()
			p.during(fx)
			waitUntil(faultWindow, func() bool {
				return fx.reported(mark, p.duringLogs, msgRetrying, minReports) || fx.count(mark, logWant{"msg": msgRetrying}) > minReports+2
			})
			if !fx.reported(mark, p.duringLogs, msgRetrying, minReports) {
				t.Errorf("init did not report %s: %s", "the second fault",
					strings.Join(fx.missing(mark, p.duringLogs, msgRetrying, minReports), ", "))
			}
		}
		p.end(fx)
		fx.stopExpiring()
	}
	select {
	case <-exited:
		code = *exitCode
	case <-time.After(timeout + 10*time.Second):
		t.Fatalf("init did not exit within %s", timeout+10*time.Second)
	}
	elapsed := time.Since(start)
	fx.stopExpiring()
	fx.emu.SetLatency(0)

	recs, bad := fx.records(0)
	for _, l := range bad {
		t.Errorf("not a JSON log record: %s", l)
	}
	term := fx.termination()
	switch p.outcome {
	case recovers:
		if code != 0 {
			t.Fatalf("init exited with %d after %s, want 0 (it should recover)\ntermination log: %s", code, elapsed, term)
		}
		for f, v := range want {
			if !fx.fileIs(f, v) {
				t.Errorf("%s does not hold the value of its secret", f)
			}
		}
		if w := "kvinject-agent: wrote 3 file(s) from vault " + fx.vaultURL(); term != w {
			t.Errorf("termination log %q, want %q", term, w)
		}
		fx.checkTidy(true)
	default:
		if code != 1 {
			t.Fatalf("init exited with %d after %s, want 1\ntermination log: %s", code, elapsed, term)
		}
		re := fx.messageRE(p.want)
		if !re.MatchString(term) {
			t.Errorf("termination log:\n got %s\nwant %s", term, re)
		}
		if n := strings.Count(term, "still failing after"); n > 1 {
			t.Errorf("the termination log says %d times how long init tried: %s", n, term)
		}
		// The termination message is also logged, once.
		failed := 0
		for _, r := range recs {
			if r["msg"] == msgSidecarFatal {
				failed++
				if r["message"] != term {
					t.Errorf("logged message %q differs from the termination log", r["message"])
				}
			}
		}
		if failed != 1 {
			t.Errorf("%d failure records logged, want 1", failed)
		}
		fx.checkTidy(false)
		t.Logf("termination log: %s", term)
		if p.outcome == givesUp && elapsed < timeout {
			t.Errorf("init gave up after %s, before --init-timeout=%s", elapsed, timeout)
		}
		if p.outcome == failsAtOnce && elapsed >= timeout {
			t.Errorf("a permanent fault took %s to fail (--init-timeout=%s)", elapsed, timeout)
		}
	}
	t.Logf("exit %d after %s (%d retries logged)", code, elapsed.Round(time.Millisecond), fx.count(0, logWant{"msg": msgRetrying}))
}

// messageRE turns a termination message template into an anchored regexp.
func (fx *fixture) messageRE(tmpl string) *regexp.Regexp {
	if tmpl == "{volumeMessage}" {
		if fx.realVolume {
			tmpl = `kvinject-agent: the secrets volume is full: atomicdir: writing a ({bytes} bytes) in {dir}: the volume is full (write {dir}/{ts}/a: no space left on device); the previous files stay in place. Fix: raise the webhook's volume size limit, or map fewer or smaller secrets`
		} else {
			tmpl = `kvinject-agent: cannot write the secrets: atomicdir: removing a stale ..data_tmp in {dir}: remove {dir}/..data_tmp: directory not empty; the previous files stay in place`
		}
	}
	q := regexp.QuoteMeta(tmpl)
	tokfile := ""
	if fx.tok != nil {
		tokfile = fx.tok.path()
	}
	for k, v := range map[string]string{
		"{vaultURL}": regexp.QuoteMeta(fx.vaultURL()),
		"{vault}":    regexp.QuoteMeta(fx.vault),
		"{client}":   regexp.QuoteMeta(fx.clientID),
		"{tenant}":   regexp.QuoteMeta(fx.emu.TenantID()),
		"{tokfile}":  regexp.QuoteMeta(tokfile),
		"{dir}":      regexp.QuoteMeta(fx.dir),
		"{bytes}":    strconv.Itoa(len(fx.cur["a"])),
		"{n}":        `\d+`,
		"{ts}":       `\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}(-\d+)?`,
		"{any}":      `.*`,
	} {
		q = strings.ReplaceAll(q, regexp.QuoteMeta(k), v)
	}
	return regexp.MustCompile("^" + q + "$")
}

// setWatcher is the app: it reads the secrets directory in a loop, the way
// atomicdir documents for readers of several files (resolve ..data once,
// read inside it, start over when it disappeared), and also each visible
// name on its own. Every read must see a complete set that was written
// (never partial, torn, empty or missing), never older than one seen
// before, and every visible file must hold a whole value of its secret.
type setWatcher struct {
	dir   string
	files []string

	mu    sync.Mutex
	sets  []map[string]string // in the order they may appear
	names []string            // a label for each set, for messages
	last  int                 // index of the newest set seen
	n     int
	probs []string

	quit     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newSetWatcher(dir string, entries []agentconfig.Entry) *setWatcher {
	w := &setWatcher{dir: dir, quit: make(chan struct{}), done: make(chan struct{})}
	for _, e := range entries {
		w.files = append(w.files, e.File)
	}
	return w
}

// allow adds a set that may become visible next.
func (w *setWatcher) allow(set map[string]string, name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sets = append(w.sets, set)
	w.names = append(w.names, name)
}

func (w *setWatcher) start() {
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.quit:
				return
			default:
			}
			w.observe()
			time.Sleep(time.Millisecond)
		}
	}()
}

// stop stops the reader (once the agent is done, the set stays in place).
func (w *setWatcher) stop() {
	w.stopOnce.Do(func() {
		close(w.quit)
		<-w.done
	})
}

func (w *setWatcher) reads() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

func (w *setWatcher) problems() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.probs...)
}

// problem records a violation (the first 10 distinct ones).
func (w *setWatcher) problem(format string, args ...any) {
	msg := "reader: " + fmt.Sprintf(format, args...)
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.probs) < 10 && !slices.Contains(w.probs, msg) {
		w.probs = append(w.probs, msg)
	}
}

// label names a value for messages (never the value itself).
func (w *setWatcher) label(file, v string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, s := range w.sets {
		if s[file] == v {
			return fmt.Sprintf("%s of set %q", file, w.names[i])
		}
	}
	return fmt.Sprintf("%s: an unknown %d-byte value", file, len(v))
}

func (w *setWatcher) observe() {
	target, err := os.Readlink(filepath.Join(w.dir, atomicdir.DataLink))
	if err != nil {
		w.problem("no current set: %v", err)
		return
	}
	got := map[string]string{}
	for _, f := range w.files {
		b, err := os.ReadFile(filepath.Join(w.dir, target, f))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				if now, _ := os.Readlink(filepath.Join(w.dir, atomicdir.DataLink)); now != target {
					return // a newer set replaced it meanwhile: start over
				}
			}
			w.problem("set %s: %v", target, err)
			return
		}
		got[f] = string(b)
	}
	w.mu.Lock()
	idx := -1
	for i, s := range w.sets {
		if equalSets(s, got) {
			idx = i
			break
		}
	}
	last := w.last
	if idx >= w.last {
		w.last = idx
	}
	w.n++
	w.mu.Unlock()
	switch {
	case idx < 0:
		var desc []string
		for _, f := range w.files {
			desc = append(desc, w.label(f, got[f]))
		}
		w.problem("set %s is not a complete set that was written: %s", target, strings.Join(desc, "; "))
	case idx < last:
		w.problem("went back from set %d to the older set %d", last, idx)
	}
	// Each visible name on its own: a whole value of its secret.
	for _, f := range w.files {
		b, err := os.ReadFile(filepath.Join(w.dir, f))
		if err != nil {
			w.problem("visible file %s: %v", f, err)
			continue
		}
		if !w.known(f, string(b)) {
			w.problem("visible %s", w.label(f, string(b)))
		}
	}
}

// known reports whether v is the value of file in some set.
func (w *setWatcher) known(file, v string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.sets {
		if s[file] == v {
			return true
		}
	}
	return false
}

func equalSets(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
