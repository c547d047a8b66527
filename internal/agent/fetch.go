package agent

import (
	"context"
	"fmt"
	"net/url"
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
	// warm is set once a request succeeded: the client knows the challenge's
	// scope and tenant and holds a token.
	warm bool
}

// fetchResult is the outcome of reading a list of secrets.
type fetchResult struct {
	values map[secretRef]secretValue
	errs   map[secretRef]error
}

// fetch reads refs. A cold client sends one request first, which pays the 401
// challenge and the single token request, then the rest concurrently (at most
// f.concurrency at a time) over the same HTTP/2 connection; when that first
// request fails for a reason other than its secret being gone, the rest are
// not tried (they have neither a value nor an error in the result). names
// maps a ref to the name as the user wrote it, for errors.
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
	rest := refs
	if !f.warm {
		done := f.prefetch(ctx)
		get(refs[0])
		<-done
		// A failure of that one secret only (deleted, disabled) says nothing
		// about the others; any other failure would repeat for each of them.
		if err := res.errs[refs[0]]; err != nil && !gone(err) {
			return res
		}
		f.warm = true
		rest = refs[1:]
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
