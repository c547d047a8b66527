package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvinject/kvinject/pkg/mapping"
)

// secretRef identifies one secret read: a name (Key Vault names are
// case-insensitive) and a pinned version, or "" for the latest.
type secretRef struct {
	name    string
	version string
}

func refOf(e mapping.Entry) secretRef {
	return secretRef{name: strings.ToLower(e.Name), version: strings.ToLower(e.Version)}
}

// secretValue is one fetched secret. The value never leaves the agent except
// into the files.
type secretValue struct {
	value   []byte
	version string
}

// fetcher reads secrets from one vault through one client.
type fetcher struct {
	client *azsecrets.Client
	// cred is the client's credential; prefetch asks it for a token while the
	// first request pays the 401 challenge.
	cred        azcore.TokenCredential
	scope       string
	vault       string
	concurrency int
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
	// not one per secret.
	cautious bool
}

// fetchResult is the outcome of reading a list of secrets.
type fetchResult struct {
	values map[secretRef]secretValue
	errs   map[secretRef]error
}

// fetch reads refs. A cold client sends one request first, which pays the 401
// challenge and the single token request (prefetched while the challenge is
// answered); as soon as that request goes out again with the token, the client
// knows everything the others need, and they follow concurrently (at most
// f.concurrency at a time) over the same HTTP/2 connection, one round trip
// after the token instead of two. After a failed cold fetch the next one is
// cautious: the others wait for the first read's answer and are not tried
// when it failed for a reason other than its secret being gone (they then
// have neither a value nor an error in the result). names maps a ref to the
// name as the user wrote it, for errors.
func (f *fetcher) fetch(ctx context.Context, refs []secretRef, names map[secretRef]mapping.Entry) fetchResult {
	res := fetchResult{values: make(map[secretRef]secretValue, len(refs)), errs: map[secretRef]error{}}
	if len(refs) == 0 {
		return res
	}
	var mu sync.Mutex
	get := func(r secretRef) {
		v, err := f.get(ctx, r, names[r])
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res.errs[r] = err
			return
		}
		res.values[r] = v
	}
	firstFailed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		err := res.errs[refs[0]]
		// A failure of that one secret only (deleted, disabled) says nothing
		// about the others; any other failure would repeat for each of them.
		return err != nil && !gone(err)
	}
	rest := refs
	var firstDone chan struct{}
	if !f.warm {
		prefetched := f.prefetch(ctx)
		firstDone = make(chan struct{})
		go func() {
			defer close(firstDone)
			get(refs[0])
		}()
		authorized := f.authorized
		if f.cautious {
			authorized = nil
		}
		select {
		case <-authorized:
		case <-firstDone:
		}
		select {
		case <-firstDone:
			if firstFailed() {
				<-prefetched
				f.cautious = true
				return res
			}
		default:
		}
		rest = refs[1:]
		defer func() {
			<-firstDone
			<-prefetched
			if firstFailed() {
				f.cautious = true
				return
			}
			f.warm = true
		}()
	}
	sem := make(chan struct{}, max(1, f.concurrency))
	var wg sync.WaitGroup
	for _, r := range rest {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			get(r)
		})
	}
	wg.Wait()
	return res
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

// get reads one secret.
func (f *fetcher) get(ctx context.Context, r secretRef, e mapping.Entry) (secretValue, error) {
	wrap := func(err error) error {
		return &SecretError{Name: e.Name, Version: e.Version, File: e.File, Vault: f.vault, Err: err}
	}
	resp, err := f.client.GetSecret(ctx, e.Name, r.version, nil)
	if err != nil {
		return secretValue{}, wrap(err)
	}
	if resp.Value == nil {
		return secretValue{}, wrap(fmt.Errorf("Key Vault returned no value"))
	}
	v := secretValue{value: []byte(*resp.Value)}
	if resp.ID != nil {
		v.version = resp.ID.Version()
	}
	return v, nil
}
