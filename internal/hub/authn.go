package hub

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// The user.extra keys of a TokenReview that name the pod a projected
// ServiceAccount token is bound to.
const (
	ExtraPodName = "authentication.kubernetes.io/pod-name"
	ExtraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// Token cache bounds (see authenticator).
const (
	// maxTokenCacheTTL caps how long an accepted token's review is reused.
	maxTokenCacheTTL = 10 * time.Minute
	// noExpiryTokenCacheTTL is how long the review of an accepted token whose
	// payload has no readable exp is reused.
	noExpiryTokenCacheTTL = time.Minute
	// negativeTokenCacheTTL is how long a refused token's review is reused.
	negativeTokenCacheTTL = 10 * time.Second
	// maxTokenCacheEntries bounds the cache (a few hundred bytes each).
	maxTokenCacheEntries = 100_000
	// maxTokenBytes bounds the bearer token (projected tokens are 1-2 KiB).
	maxTokenBytes = 16 << 10
	// reviewTimeout bounds one TokenReview, whoever waits for it.
	reviewTimeout = 15 * time.Second
)

// identity is the pod an accepted token is bound to.
type identity struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         types.UID
	// Expires is the token's exp (zero when its payload has none): no request
	// is held beyond it, so every token is reviewed again before it expires.
	Expires time.Time
}

// Pod returns "<namespace>/<name>".
func (id identity) Pod() string { return id.Namespace + "/" + id.PodName }

// authResult is a cached review: an identity, or the refusal.
type authResult struct {
	id  identity
	ref *refusal
}

// authenticator turns bearer tokens into pod identities with TokenReview.
//
// Reviews are cached by the SHA-256 of the token (the token itself is never
// kept, logged or returned): an accepted token until its exp, at most
// maxTokenCacheTTL; a refused one for negativeTokenCacheTTL. Concurrent
// requests with the same token share one review. An agent therefore costs one
// TokenReview per token the kubelet projects for it (every 8 of the token's 10
// minutes), not one per request; and when a hub replica restarts, the
// TokenReviews follow the agents' own jittered reconnects (one per agent,
// spread over the agents' reconnect jitter), never a burst of one per agent
// per request.
type authenticator struct {
	kube    kubernetes.Interface
	cache   *lru[[sha256.Size]byte, authResult]
	flight  flight[[sha256.Size]byte, authResult]
	metrics *metrics
	now     func() time.Time
	// answered is called whenever the API server answered a review.
	answered func()
}

func newAuthenticator(kube kubernetes.Interface, m *metrics, now func() time.Time, answered func()) *authenticator {
	return &authenticator{
		kube:     kube,
		cache:    newLRU[[sha256.Size]byte, authResult](maxTokenCacheEntries, now),
		metrics:  m,
		now:      now,
		answered: answered,
	}
}

// bearerToken returns the request's bearer token, or a refusal.
func bearerToken(r *http.Request) (string, *refusal) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	token = strings.TrimSpace(token)
	if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", refuse(hubapi.ReasonUnauthenticated, "no bearer token: the agent must send its projected ServiceAccount token of audience "+hubapi.Audience+" (the file named by $KVINJECT_HUB_TOKEN_FILE) as Authorization: Bearer <token>")
	}
	if len(token) > maxTokenBytes {
		return "", refuse(hubapi.ReasonUnauthenticated, fmt.Sprintf("the bearer token is longer than %d bytes: it is not a projected ServiceAccount token", maxTokenBytes))
	}
	return token, nil
}

// authenticate returns the identity of token, from the cache or a TokenReview.
func (a *authenticator) authenticate(ctx context.Context, token string) (identity, *refusal) {
	key := sha256.Sum256([]byte(token))
	if res, ok := a.cache.get(key); ok {
		a.metrics.review(resultLabel(res), true)
		return res.id, res.ref
	}
	res, led, err := a.flight.do(ctx, key, func() authResult {
		// The review outlives a waiter that gives up: others may wait for it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reviewTimeout)
		defer cancel()
		res, ttl := a.review(rctx, token)
		a.cache.add(key, res, ttl)
		return res
	})
	if err != nil {
		return identity{}, unavailable("the request ended while its token was being reviewed", defaultRetryAfter)
	}
	a.metrics.review(resultLabel(res), !led)
	return res.id, res.ref
}

// resultLabel is the tokenreviews metric's result of res.
func resultLabel(res authResult) string {
	switch {
	case res.ref == nil:
		return reviewAuthenticated
	case res.ref.reason == hubapi.ReasonNotAPod:
		return reviewNotAPod
	case res.ref.reason == hubapi.ReasonUnavailable:
		return reviewError
	default:
		return reviewUnauthenticated
	}
}

// review asks the API server about token and returns the result and how long
// it may be cached (0: not at all).
func (a *authenticator) review(ctx context.Context, token string) (authResult, time.Duration) {
	tr, err := a.kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{hubapi.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return authResult{ref: unavailable(fmt.Sprintf("the hub could not review the token with the Kubernetes API server (%s); retry later", oneLine(err.Error())), defaultRetryAfter)}, 0
	}
	if a.answered != nil {
		a.answered()
	}
	id, ref := identityOf(tr.Status)
	if ref != nil {
		return authResult{ref: ref}, negativeTokenCacheTTL
	}
	ttl := noExpiryTokenCacheTTL
	if exp, ok := tokenExpiry(token); ok {
		id.Expires = exp
		ttl = min(exp.Sub(a.now()), maxTokenCacheTTL)
	}
	return authResult{id: id}, ttl
}

// identityOf checks a TokenReview's status: authenticated, for the hub's
// audience, a ServiceAccount's token bound to a pod.
func identityOf(st authenticationv1.TokenReviewStatus) (identity, *refusal) {
	if !st.Authenticated {
		msg := "the Kubernetes API server did not accept the token (expired, revoked, of another audience than " + hubapi.Audience + ", or its pod is gone)"
		if st.Error != "" {
			msg += ": " + oneLine(st.Error)
		}
		return identity{}, refuse(hubapi.ReasonUnauthenticated, msg)
	}
	if !slices.Contains(st.Audiences, hubapi.Audience) {
		return identity{}, refuse(hubapi.ReasonUnauthenticated, fmt.Sprintf("the token's audiences %q do not include %s: project the token with audience %s", st.Audiences, hubapi.Audience, hubapi.Audience))
	}
	parts := strings.Split(st.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" || parts[2] == "" || parts[3] == "" {
		return identity{}, refuse(hubapi.ReasonNotAPod, fmt.Sprintf("the token belongs to %q, not to a ServiceAccount: the agent must present its pod's projected ServiceAccount token", st.User.Username))
	}
	name, uid := extra(st.User.Extra, ExtraPodName), extra(st.User.Extra, ExtraPodUID)
	if name == "" || uid == "" {
		return identity{}, refuse(hubapi.ReasonNotAPod, fmt.Sprintf("the token of ServiceAccount %s/%s is not bound to a pod: the agent must present the projected token of its pod's %s volume, not a token from the TokenRequest API without a pod or a Secret", parts[2], parts[3], "kvinject-hub-token"))
	}
	return identity{Namespace: parts[2], ServiceAccount: parts[3], PodName: name, PodUID: types.UID(uid)}, nil
}

// extra returns the single value of key in a TokenReview's user.extra.
func extra(m map[string]authenticationv1.ExtraValue, key string) string {
	if v := m[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// tokenExpiry reads the exp claim of a JWT's payload without verifying the
// signature: the TokenReview did that. It reports false when the token is not
// a JWT or has no positive numeric exp.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *float64 `json:"exp"` // a NumericDate: a JSON number, never a string
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	f := *claims.Exp
	if f <= 0 || math.IsInf(f, 0) || f > float64(math.MaxInt64/int64(time.Second)) {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// oneLine returns s on one line, at most 300 bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = strings.ToValidUTF8(s[:297], "") + "..."
	}
	return s
}
