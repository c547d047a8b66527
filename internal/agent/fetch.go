package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// objectRef identifies one read from Key Vault: a secret, certificate or key
// (names are case-insensitive) at a pinned version or the latest, or the
// newest versions of a secret (history). Entries that need the same read share
// it; each entry renders the value its own way (see render.go).
type objectRef struct {
	// vault is the entry's own vault (agentconfig.Entry.Vault, a canonical
	// URL); "" for the pod's (--vault).
	vault   string
	kind    agentconfig.ObjectType // "" or agentconfig.ObjectSecret, ObjectCert, ObjectKey
	name    string
	version string
	history int
}

func refOf(e agentconfig.Entry) objectRef {
	return objectRef{vault: e.Vault, kind: e.Kind(), name: strings.ToLower(e.Name), version: strings.ToLower(e.Version), history: e.History}
}

// objectValue is what one read returned. Values never leave the agent except
// into the files.
type objectValue struct {
	// value is a secret's value, a certificate's public certificate (PEM) or
	// a key's public key (PEM).
	value   []byte
	version string
	// contentType and certBacked describe a secret: its content type, and
	// whether it is a certificate's (Key Vault names the certificate's key).
	contentType string
	certBacked  bool
	// versions holds the versions of a history read, newest first.
	versions []objectValue
}

// same reports whether v and o hold the same versions and values.
func (v objectValue) same(o objectValue) bool {
	if v.version != o.version || !bytes.Equal(v.value, o.value) || v.contentType != o.contentType ||
		v.certBacked != o.certBacked || len(v.versions) != len(o.versions) {
		return false
	}
	for i := range v.versions {
		if !v.versions[i].same(o.versions[i]) {
			return false
		}
	}
	return true
}

// versionDesc is v's version for logs; a history read's versions are listed
// newest first.
func (v objectValue) versionDesc() string {
	if len(v.versions) == 0 {
		return v.version
	}
	vs := make([]string, len(v.versions))
	for i, x := range v.versions {
		vs[i] = x.version
	}
	return strings.Join(vs, ",")
}

// Lanes: each Key Vault client answers its own 401 challenge, so each is
// warmed up on its own (one challenge per client), sharing the credential's
// single token.
const (
	laneSecrets = iota
	laneCertificates
	laneKeys
	numLanes
)

func laneOf(r objectRef) int {
	switch r.kind {
	case agentconfig.ObjectCert:
		return laneCertificates
	case agentconfig.ObjectKey:
		return laneKeys
	}
	return laneSecrets
}

// lane is the warm-up state of one client.
type lane struct {
	// authorized is closed when the client sends its first request with a
	// token (see authorizedSignal): from then on it knows the challenge's
	// scope and tenant and has the token cached.
	authorized <-chan struct{}
	// warm is set once a request succeeded: the client knows the challenge's
	// scope and tenant and holds a token.
	warm bool
	// cautious is set once a cold fetch failed: later cold fetches wait for
	// their first read's answer before sending the others, so that a vault
	// that refuses or throttles this identity gets one request per attempt,
	// not one per object.
	cautious bool
}

// fetcher reads secrets, certificates and keys from one vault, with one
// client of each kind and one credential.
type fetcher struct {
	secrets *azsecrets.Client
	certs   *azcertificates.Client
	keys    *azkeys.Client
	// cred is the clients' credential; prefetch asks it for a token while the
	// first request pays the 401 challenge.
	cred        azcore.TokenCredential
	scope       string
	vault       string
	concurrency int
	lanes       [numLanes]lane

	// history caches the values of the secret versions that each history
	// read got last, by version: a version's value never changes, so a poll
	// reads only versions it has not seen.
	historyMu sync.Mutex
	history   map[objectRef]map[string]objectValue
}

// fetchResult is the outcome of reading a list of objects.
type fetchResult struct {
	values map[objectRef]objectValue
	errs   map[objectRef]error
}

// fetch reads refs, each client's (lane's) concurrently with the others'. A
// cold client sends one request first, which pays the 401 challenge and (for
// the first client) the single token request, prefetched while the challenge
// is answered; as soon as that request goes out again with the token, the
// client knows everything the others need, and they follow concurrently (at
// most f.concurrency at a time in all) over the same HTTP/2 connection, one
// round trip after the token instead of two. After a failed cold fetch the
// next one is cautious: the others wait for the first read's answer and are
// not tried when it failed for a reason other than its object being gone
// (they then have neither a value nor an error in the result). names maps a
// ref to the entry as the user wrote it, for errors.
func (f *fetcher) fetch(ctx context.Context, refs []objectRef, names map[objectRef]agentconfig.Entry) fetchResult {
	res := fetchResult{values: make(map[objectRef]objectValue, len(refs)), errs: map[objectRef]error{}}
	if len(refs) == 0 {
		return res
	}
	var byLane [numLanes][]objectRef
	for _, r := range refs {
		byLane[laneOf(r)] = append(byLane[laneOf(r)], r)
	}
	var mu sync.Mutex
	get := func(r objectRef) {
		v, err := f.get(ctx, r, names[r])
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res.errs[r] = err
			return
		}
		res.values[r] = v
	}
	failed := func(r objectRef) bool {
		mu.Lock()
		defer mu.Unlock()
		err := res.errs[r]
		// A failure of that one object only (deleted, disabled, a value that
		// does not fit the entry) says nothing about the others; any other
		// failure would repeat for each of them.
		var ce *ContentError
		return err != nil && !gone(err) && !errors.As(err, &ce)
	}
	// The lane of the first ref goes first: the other lanes start once its
	// client holds the token (so that the credential makes one token request),
	// and not at all when its first read failed for everyone.
	sem := make(chan struct{}, max(1, f.concurrency))
	primary := laneOf(refs[0])
	g := &gate{ch: make(chan struct{})}
	var wg sync.WaitGroup
	for i := range byLane {
		switch {
		case len(byLane[i]) == 0:
		case i == primary:
			wg.Go(func() { f.fetchLane(ctx, &f.lanes[i], byLane[i], sem, get, failed, g.open) })
		default:
			wg.Go(func() {
				if g.wait() {
					f.fetchLane(ctx, &f.lanes[i], byLane[i], sem, get, failed, func(bool) {})
				}
			})
		}
	}
	wg.Wait()
	return res
}

// gate lets the other lanes of a fetch start once the first lane's client
// holds a token (true), or keeps them from starting (false).
type gate struct {
	once sync.Once
	ch   chan struct{}
	ok   bool
}

func (g *gate) open(ok bool) {
	g.once.Do(func() {
		g.ok = ok
		close(g.ch)
	})
}

func (g *gate) wait() bool {
	<-g.ch
	return g.ok
}

// fetchLane reads the refs of one lane (see fetch). It calls opened(true)
// once its client holds a token and the others may follow, or opened(false)
// when its first read failed for every object.
func (f *fetcher) fetchLane(ctx context.Context, l *lane, refs []objectRef, sem chan struct{}, get func(objectRef), failed func(objectRef) bool, opened func(bool)) {
	defer opened(false) // unless opened before
	rest := refs
	if l.warm {
		opened(true)
	} else {
		prefetched := f.prefetch(ctx)
		firstDone := make(chan struct{})
		go func() {
			defer close(firstDone)
			get(refs[0])
		}()
		authorized := l.authorized
		if l.cautious {
			authorized = nil
		}
		select {
		case <-authorized:
		case <-firstDone:
		}
		select {
		case <-firstDone:
			if failed(refs[0]) {
				<-prefetched
				l.cautious = true
				opened(false)
				return
			}
		default:
		}
		opened(true)
		rest = refs[1:]
		defer func() {
			<-firstDone
			<-prefetched
			if failed(refs[0]) {
				l.cautious = true
				return
			}
			l.warm = true
		}()
	}
	var wg sync.WaitGroup
	for _, r := range rest {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			get(r)
		})
	}
	wg.Wait()
}

// keyVaultRetryStatusCodes are the statuses the Azure SDK retries for Key
// Vault requests: its defaults without 429. The SDK waits exactly what
// Retry-After says, so a fleet throttled together would come back together,
// three times; the agent's own backoff (which also honours Retry-After, with
// jitter) retries throttled requests instead, and only those that failed.
var keyVaultRetryStatusCodes = []int{
	http.StatusRequestTimeout,
	http.StatusInternalServerError,
	http.StatusBadGateway,
	http.StatusServiceUnavailable,
	http.StatusGatewayTimeout,
}

// keyVaultOptions returns the options of the Key Vault client: co (shared with
// the credential) with the authorized signal and, unless the caller chose its
// own, keyVaultRetryStatusCodes.
func keyVaultOptions(co azcore.ClientOptions, sig *authorizedSignal) azcore.ClientOptions {
	co.PerRetryPolicies = append(slices.Clone(co.PerRetryPolicies), sig)
	if len(co.Retry.StatusCodes) == 0 {
		co.Retry.StatusCodes = keyVaultRetryStatusCodes
	}
	return co
}

// authorizedSignal is a per-retry policy of the Key Vault client, which runs
// after the client's challenge policy: it closes ch when the first request
// carrying a token goes out, that is once the client has answered Key Vault's
// challenge and holds a token for the vault.
type authorizedSignal struct {
	once sync.Once
	ch   chan struct{}
}

func newAuthorizedSignal() *authorizedSignal {
	return &authorizedSignal{ch: make(chan struct{})}
}

// Do implements policy.Policy.
func (s *authorizedSignal) Do(req *policy.Request) (*http.Response, error) {
	if req.Raw().Header.Get("Authorization") != "" {
		s.once.Do(func() { close(s.ch) })
	}
	return req.Next()
}

// prefetch gets a token for the vault's resource while the first request
// elicits Key Vault's challenge, so that the token round trips overlap the
// challenge's. The credential (serialized) caches it; the challenge policy's
// request then gets it from the cache: still one token request. Errors are
// left to that request to report. The returned channel is closed when done.
func (f *fetcher) prefetch(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if f.cred == nil || f.scope == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		// EnableCAE as the bearer token policy sets it: the same cache.
		_, _ = f.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{f.scope}, EnableCAE: true})
	}()
	return done
}

// serialCredential lets one token request run at a time, so that concurrent
// callers (prefetch and the challenge) share one token from the credential's
// cache instead of each requesting one. azidentity's confidential clients do
// this already; the managed-identity client does not.
type serialCredential struct {
	mu   sync.Mutex
	cred azcore.TokenCredential
}

// GetToken implements azcore.TokenCredential.
func (s *serialCredential) GetToken(ctx context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cred.GetToken(ctx, tro)
}

// vaultScope is the token scope of a vault's resource, as Key Vault's
// challenge names it: https://myvault.vault.azure.net/ -> https://vault.azure.net/.default.
func vaultScope(vaultURL string) string {
	u, err := url.Parse(vaultURL)
	if err != nil {
		return ""
	}
	_, suffix, ok := strings.Cut(u.Hostname(), ".")
	if !ok || !strings.HasPrefix(suffix, "vault.") {
		return ""
	}
	return "https://" + suffix + "/.default"
}

// get reads one object.
func (f *fetcher) get(ctx context.Context, r objectRef, e agentconfig.Entry) (objectValue, error) {
	switch {
	case r.history > 0:
		return f.getHistory(ctx, r, e)
	case r.kind == agentconfig.ObjectCert:
		return f.getCertificate(ctx, r, e)
	case r.kind == agentconfig.ObjectKey:
		return f.getKey(ctx, r, e)
	}
	return f.getSecret(ctx, r.version, e)
}

// objectError wraps err, an error reading e's object (at version, "" for the
// latest), with what the explanation needs.
func (f *fetcher) objectError(e agentconfig.Entry, version string, err error) error {
	return &SecretError{Name: e.Name, Version: version, File: e.File, Vault: f.vault, Object: objectWord(e.Kind()), Err: err, OtherVault: e.Vault != ""}
}

// getSecret reads one version of a secret ("" for the latest).
func (f *fetcher) getSecret(ctx context.Context, version string, e agentconfig.Entry) (objectValue, error) {
	resp, err := f.secrets.GetSecret(ctx, e.Name, version, nil)
	if err != nil {
		return objectValue{}, f.objectError(e, version, err)
	}
	if resp.Value == nil {
		return objectValue{}, f.objectError(e, version, fmt.Errorf("Key Vault returned no value"))
	}
	v := objectValue{value: []byte(*resp.Value), certBacked: resp.KID != nil && *resp.KID != ""}
	if resp.ContentType != nil {
		v.contentType = *resp.ContentType
	}
	if resp.ID != nil {
		v.version = resp.ID.Version()
	}
	return v, nil
}
