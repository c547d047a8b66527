package hub

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// Pod cache bounds (see authorizer).
const (
	// DefaultPodCacheTTL is how long a pod's lookup is reused: a pod's spec is
	// immutable, so this only bounds how long a deleted pod keeps its watch.
	DefaultPodCacheTTL = time.Minute
	// negativePodCacheTTL is how long a failed lookup (pod gone or replaced)
	// is reused.
	negativePodCacheTTL = 10 * time.Second
	// maxPodCacheEntries bounds the cache.
	maxPodCacheEntries = 100_000
	// podGetTimeout bounds one GET of a pod, whoever waits for it.
	podGetTimeout = 15 * time.Second
)

// podAgent is what the hub keeps of a pod: who it is and what its rotating
// agent watches, parsed from the agent's own arguments (the webhook wrote
// them, so webhook and hub cannot disagree). Not the pod itself.
type podAgent struct {
	Namespace, Name, ServiceAccount string
	UID                             types.UID
	// Vault is the agent's --vault in canonical form; empty when Problem is set.
	Vault string
	// Objects are the agent's entries without a pinned version, by vault
	// (canonical: --vault, or the entry's own vault=) and then by kind and
	// lower-cased name (watchKey): the objects the pod may watch.
	Objects map[string]map[string]bool
	// Problem says why the pod has nothing to watch; empty when it has.
	Problem string
	// Restart: the agent runs with --on-change=restart, so the hub keeps its
	// reports of swapped sets for the restart controller.
	Restart bool
}

// agentOf reads the rotating agent of pod: the container named
// mutate.AgentContainerName among the init containers (a native sidecar) or
// the containers, whose arguments parse with agentconfig.ParseArgs in sidecar
// mode.
func agentOf(pod *corev1.Pod) podAgent {
	a := podAgent{Namespace: pod.Namespace, Name: pod.Name, ServiceAccount: pod.Spec.ServiceAccountName, UID: pod.UID}
	var c *corev1.Container
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == mutate.AgentContainerName {
				c = &cs[i]
			}
		}
	}
	if c == nil {
		a.Problem = fmt.Sprintf("the pod has no container %s: kvinject did not inject it", mutate.AgentContainerName)
		return a
	}
	cfg, err := agentconfig.ParseArgs(c.Args, nil)
	if err != nil {
		a.Problem = fmt.Sprintf("the arguments of its container %s do not parse (%s)", mutate.AgentContainerName, oneLine(err.Error()))
		return a
	}
	if cfg.Mode != agentconfig.ModeSidecar {
		a.Problem = fmt.Sprintf("its agent runs in %s mode: only a rotating (sidecar) agent watches the hub; set kvinject.dev/rotation on the pod", cfg.Mode)
		return a
	}
	_, vault, ok := agentconfig.CloudOfVault(cfg.VaultURL)
	if !ok {
		a.Problem = fmt.Sprintf("its agent's --vault %q is not a Key Vault URL of a known cloud", cfg.VaultURL)
		return a
	}
	a.Vault = vault
	a.Restart = cfg.OnChange.Kind == agentconfig.OnChangeRestart
	a.Objects = map[string]map[string]bool{vault: {}}
	for _, e := range cfg.Entries {
		// ParseArgs resolved the entry's vault to a canonical URL.
		v := cmp.Or(e.Vault, vault)
		if a.Objects[v] == nil {
			a.Objects[v] = map[string]bool{}
		}
		if kind := hubKind(e.Kind()); kind != "" && e.Version == "" {
			a.Objects[v][watchKey(kind, e.Name)] = true
		}
	}
	return a
}

// vaults lists the pod's vaults for messages: --vault first, then the
// entries' own, sorted.
func (a podAgent) vaults() string {
	var others []string
	for v := range a.Objects {
		if v != a.Vault {
			others = append(others, v)
		}
	}
	slices.Sort(others)
	return strings.Join(append([]string{a.Vault}, others...), ", ")
}

// hubKind is the hubapi kind of an entry's object type; "" for none.
func hubKind(t agentconfig.ObjectType) string {
	switch t {
	case agentconfig.ObjectSecret:
		return hubapi.KindSecret
	case agentconfig.ObjectCert:
		return hubapi.KindCertificate
	case agentconfig.ObjectKey:
		return hubapi.KindKey
	}
	return ""
}

// watchKey is the key of a watched object: its kind and lower-cased name.
func watchKey(kind, name string) string { return kind + "/" + strings.ToLower(name) }

// check authorizes req for the pod: same vault as its agent's, and every
// object one of the agent's unpinned entries of that kind (secret,
// certificate, key), whether the hub watches the kind or not. The messages
// name only what the request named and the pod's own vault.
func (a podAgent) check(req *watchRequest) *refusal {
	if a.Problem != "" {
		return refuse(hubapi.ReasonNotPodObject, fmt.Sprintf("pod %s/%s has no objects to watch: %s", a.Namespace, a.Name, a.Problem))
	}
	objs, ok := a.Objects[req.vault]
	if !ok {
		if len(a.Objects) == 1 {
			return refuse(hubapi.ReasonNotPodObject, fmt.Sprintf("pod %s/%s's agent reads vault %s, not %s", a.Namespace, a.Name, a.Vault, req.vault))
		}
		return refuse(hubapi.ReasonNotPodObject, fmt.Sprintf("pod %s/%s's agent reads vaults %s, not %s", a.Namespace, a.Name, a.vaults(), req.vault))
	}
	for _, o := range req.Objects {
		if !objs[watchKey(o.Kind, o.Name)] {
			return refuse(hubapi.ReasonNotPodObject, fmt.Sprintf("pod %s/%s's agent does not read %s %q of %s without a pinned version: the hub watches only the objects of the pod's own agent", a.Namespace, a.Name, o.Kind, o.Name, req.vault))
		}
	}
	return nil
}

// podResult is a cached lookup: the pod's agent, or the refusal.
type podResult struct {
	agent podAgent
	ref   *refusal
}

// authorizer looks up the pod of an identity through the API server (GET by
// name, then the UID must match), caching the result by UID: the agent's
// arguments never change (a pod's spec is immutable), so the cache only
// bounds how long a deleted pod keeps its watch (ttl) and how often the API
// server is asked. Concurrent lookups of one pod share one GET.
type authorizer struct {
	kube    kubernetes.Interface
	ttl     time.Duration
	cache   *lru[types.UID, podResult]
	flight  flight[types.UID, podResult]
	metrics *metrics
}

func newAuthorizer(kube kubernetes.Interface, ttl time.Duration, m *metrics, now func() time.Time) *authorizer {
	return &authorizer{kube: kube, ttl: ttl, cache: newLRU[types.UID, podResult](maxPodCacheEntries, now), metrics: m}
}

// podOf returns the agent of the identity's pod.
func (z *authorizer) podOf(ctx context.Context, id identity) (podAgent, *refusal) {
	if res, ok := z.cache.get(id.PodUID); ok && res.agent.Namespace == id.Namespace && res.agent.Name == id.PodName {
		z.metrics.podLookup(lookupLabel(res), true)
		return res.agent, res.ref
	}
	res, led, err := z.flight.do(ctx, id.PodUID, func() podResult {
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), podGetTimeout)
		defer cancel()
		res, ttl := z.get(gctx, id)
		z.cache.add(id.PodUID, res, ttl)
		return res
	})
	if err != nil {
		return podAgent{}, unavailable("the request ended while its pod was being looked up", defaultRetryAfter)
	}
	z.metrics.podLookup(lookupLabel(res), !led)
	return res.agent, res.ref
}

func lookupLabel(res podResult) string {
	switch {
	case res.ref == nil:
		return "found"
	case res.ref.reason == hubapi.ReasonUnavailable:
		return "error"
	default:
		return "mismatch"
	}
}

// get reads the pod and returns its agent and how long to cache the answer.
func (z *authorizer) get(ctx context.Context, id identity) (podResult, time.Duration) {
	pod, err := z.kube.CoreV1().Pods(id.Namespace).Get(ctx, id.PodName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return podResult{ref: refuse(hubapi.ReasonPodMismatch, fmt.Sprintf("pod %s no longer exists: the token belongs to a deleted pod", id.Pod()))}, negativePodCacheTTL
	case err != nil:
		return podResult{ref: unavailable(fmt.Sprintf("the hub could not read pod %s from the Kubernetes API server (%s); retry later", id.Pod(), oneLine(err.Error())), defaultRetryAfter)}, 0
	case pod.UID != id.PodUID:
		return podResult{ref: refuse(hubapi.ReasonPodMismatch, fmt.Sprintf("pod %s has UID %s but the token was issued for UID %s: the token's pod was deleted and replaced", id.Pod(), pod.UID, id.PodUID))}, negativePodCacheTTL
	case pod.Spec.ServiceAccountName != id.ServiceAccount:
		return podResult{ref: refuse(hubapi.ReasonPodMismatch, fmt.Sprintf("pod %s runs as ServiceAccount %s but the token is of %s", id.Pod(), pod.Spec.ServiceAccountName, id.ServiceAccount))}, negativePodCacheTTL
	}
	return podResult{agent: agentOf(pod)}, z.ttl
}

// watchRequest is a decoded, validated hubapi.WatchRequest.
type watchRequest struct {
	hubapi.WatchRequest
	// vault is Vault in canonical form.
	vault string
}

// bodyTimeout bounds reading a request's body.
const bodyTimeout = 30 * time.Second

// readRequest decodes and validates the body of a watch request.
func readRequest(w http.ResponseWriter, r *http.Request) (*watchRequest, *refusal) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return nil, refuse(hubapi.ReasonBadRequest, fmt.Sprintf("Content-Type %q: send the hubapi.WatchRequest as application/json", ct))
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, hubapi.MaxRequestBytes))
	_ = rc.SetReadDeadline(time.Time{})
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, refuse(hubapi.ReasonBadRequest, fmt.Sprintf("the body is larger than %d bytes", hubapi.MaxRequestBytes))
		}
		return nil, refuse(hubapi.ReasonBadRequest, "reading the body: "+oneLine(err.Error()))
	}
	var req watchRequest
	if err := json.Unmarshal(body, &req.WatchRequest); err != nil {
		return nil, refuse(hubapi.ReasonBadRequest, "the body is not a JSON hubapi.WatchRequest: "+oneLine(err.Error()))
	}
	if ref := req.validate(); ref != nil {
		return nil, ref
	}
	return &req, nil
}

// validate checks the request's fields and sets vault.
func (req *watchRequest) validate() *refusal {
	_, vault, ok := agentconfig.CloudOfVault(req.Vault)
	if !ok {
		return refuse(hubapi.ReasonBadRequest, fmt.Sprintf("vault %q is not a Key Vault URL such as https://myvault.vault.azure.net/: send the agent's --vault", req.Vault))
	}
	req.vault = vault
	if len(req.Objects) == 0 || len(req.Objects) > hubapi.MaxObjects {
		return refuse(hubapi.ReasonBadRequest, fmt.Sprintf("%d objects: a watch names 1 to %d objects", len(req.Objects), hubapi.MaxObjects))
	}
	seen := make(map[string]bool, len(req.Objects))
	for i, o := range req.Objects {
		switch {
		case !hubapi.IsKind(o.Kind):
			return refuse(hubapi.ReasonBadRequest, fmt.Sprintf("objects[%d]: kind %q: use %q, %q or %q", i, o.Kind, hubapi.KindSecret, hubapi.KindCertificate, hubapi.KindKey))
		case !agentconfig.IsObjectName(o.Name):
			return refuse(hubapi.ReasonBadRequest, fmt.Sprintf("objects[%d]: %q is not a Key Vault object name (1-127 letters, digits and hyphens)", i, o.Name))
		case !agentconfig.IsVersion(o.Version):
			return refuse(hubapi.ReasonBadRequest, fmt.Sprintf("objects[%d] (%s): version %q is not a version id (32 hexadecimal characters): send the version the agent holds", i, o.Name, o.Version))
		case seen[watchKey(o.Kind, o.Name)]:
			return refuse(hubapi.ReasonBadRequest, fmt.Sprintf("objects[%d]: %s %q is named twice", i, o.Kind, o.Name))
		}
		seen[watchKey(o.Kind, o.Name)] = true
	}
	return nil
}
