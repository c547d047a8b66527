// Package injector is the webhook's admission handler: it decodes a pod, looks up its
// Namespace and ServiceAccount, and hands them to the pure packages mapping (what
// to inject) and mutate (how), returning their patch, warnings or denial.
package injector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// Path is where the webhook serves pod admission.
const Path = "/mutate-v1-pod"

// Handler mutates opted-in pods.
type Handler struct {
	// Reader reads Namespaces and ServiceAccounts, normally from a cache.
	Reader client.Reader
	// APIReader, if set, is asked when Reader does not find a ServiceAccount (a
	// ServiceAccount created just before its pod may not be cached yet).
	APIReader client.Reader
	Defaults  mapping.Defaults
	Mutate    mutate.Config
	// LookupTimeout bounds the Namespace and ServiceAccount lookups.
	LookupTimeout time.Duration
	Log           logr.Logger
	// Metrics counts decisions; nil disables counting.
	Metrics *Metrics
	// HubCA supplies Mutate.HubCA when Mutate.HubURL is set; nil keeps
	// Mutate.HubCA as it is. When it fails, pods are injected without the hub
	// (their agents poll) and the failure is logged.
	HubCA *HubCA
}

// Decision results, as counted in metrics and logged.
const (
	ResultInjected  = "injected"
	ResultUnchanged = "unchanged"
	ResultSkipped   = "skipped"
	ResultDenied    = "denied"
	ResultError     = "error"
)

// Metrics are the handler's Prometheus metrics.
type Metrics struct {
	Decisions *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvinject_admission_decisions_total",
		Help: "Pod admission decisions by result: injected, unchanged, skipped, denied, error.",
	}, []string{"result"})}
	reg.MustRegister(m.Decisions)
	return m
}

// mutateConfig is Mutate with the hub's current CA bundle, or without the hub
// when that bundle cannot be read (agents then poll Key Vault themselves).
func (h *Handler) mutateConfig() mutate.Config {
	cfg := h.Mutate
	if cfg.HubURL == "" || h.HubCA == nil {
		return cfg
	}
	ca, err := h.HubCA.Get()
	if err != nil {
		h.Log.Error(err, "cannot read the hub's CA bundle; injecting agents that poll Key Vault instead of watching the hub")
		cfg.HubURL = ""
		return cfg
	}
	cfg.HubCA = ca
	return cfg
}

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	resp, result, pod := h.handle(ctx, req)
	if h.Metrics != nil {
		h.Metrics.Decisions.WithLabelValues(result).Inc()
	}
	log := h.Log.WithValues("uid", req.UID, "namespace", req.Namespace, "result", result)
	if pod != nil {
		log = log.WithValues("pod", podName(pod))
	}
	switch result {
	case ResultDenied, ResultError:
		reason := resp.Result.Message
		if len(reason) > 2048 {
			reason = reason[:2048] + "..."
		}
		log.Info("pod not admitted", "reason", reason)
	case ResultInjected:
		log.Info("pod injected", "operations", len(resp.Patches), "warnings", len(resp.Warnings))
	default:
		log.V(1).Info("pod admitted unchanged")
	}
	return resp
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string, *corev1.Pod) {
	gvk := req.Kind
	if req.UID == "" && gvk.Kind == "" && len(req.Object.Raw) == 0 {
		return admission.Errored(http.StatusBadRequest, errors.New("the AdmissionReview has no request: the body is empty or not an admission.k8s.io/v1 AdmissionReview")), ResultError, nil
	}
	if gvk.Group != "" || gvk.Kind != "Pod" || req.Resource.Resource != "pods" {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("kvinject mutates pods only, got kind %q in group %q (resource %q): check the MutatingWebhookConfiguration's rules", gvk.Kind, gvk.Group, req.Resource.Resource)), ResultError, nil
	}
	if req.Operation != admissionv1.Create || req.SubResource != "" {
		return admission.Allowed("kvinject mutates pods on create only"), ResultSkipped, nil
	}
	if len(req.Object.Raw) == 0 {
		return admission.Errored(http.StatusBadRequest, errors.New("the AdmissionReview request has no object")), ResultError, nil
	}
	pod := &corev1.Pod{}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the pod: %w", err)), ResultError, nil
	}
	if !OptedIn(pod) {
		return admission.Allowed("pod does not carry " + mapping.LabelInject + "=" + mapping.LabelInjectValue), ResultSkipped, pod
	}
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	// A pod being created may not carry its namespace yet; policy needs it.
	pod.Namespace = namespace
	ns, sa, err := h.lookup(ctx, namespace, ServiceAccountName(pod))
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err), ResultError, pod
	}
	var spc *mapping.SecretProviderClass
	if name, ok := pod.Annotations[mapping.AnnotationSecretProviderClass]; ok {
		lctx, cancel := h.lookupContext(ctx)
		spc, err = h.readSecretProviderClass(lctx, namespace, name)
		cancel()
		switch {
		case errors.Is(err, errNoSPCAPI):
			return admission.Denied(err.Error()), ResultDenied, pod
		case err != nil:
			return admission.Errored(http.StatusInternalServerError, err), ResultError, pod
		}
	}
	d := DecideWithClass(pod, ns, sa, spc, h.Defaults, h.mutateConfig())
	switch d.Result {
	case ResultDenied:
		return withWarnings(admission.Denied(d.Denial.Error()), d.Warnings), d.Result, pod
	case ResultUnchanged:
		return withWarnings(admission.Allowed("already injected"), d.Warnings), d.Result, pod
	}
	return withWarnings(admission.Patched("injected", d.Patch...), d.Warnings), d.Result, pod
}

// lookup reads the pod's Namespace and ServiceAccount; either is nil when it does not exist.
func (h *Handler) lookup(ctx context.Context, namespace, saName string) (*corev1.Namespace, *corev1.ServiceAccount, error) {
	ctx, cancel := h.lookupContext(ctx)
	defer cancel()
	ns := &corev1.Namespace{}
	found, err := h.get(ctx, client.ObjectKey{Name: namespace}, ns)
	if err != nil {
		return nil, nil, fmt.Errorf("reading namespace %q: %w", namespace, err)
	}
	if !found {
		ns = nil
	}
	sa := &corev1.ServiceAccount{}
	if found, err = h.get(ctx, client.ObjectKey{Namespace: namespace, Name: saName}, sa); err != nil {
		return nil, nil, fmt.Errorf("reading ServiceAccount %s/%s: %w", namespace, saName, err)
	}
	if !found {
		sa = nil
	}
	return ns, sa, nil
}

// lookupContext bounds a lookup by LookupTimeout (default 3s) instead of the
// request's context, which ends when the server starts shutting down and would
// refuse pods whose admission is already under way (the API server's own webhook
// timeout still bounds the whole call).
func (h *Handler) lookupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	timeout := h.LookupTimeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	return context.WithTimeout(context.WithoutCancel(ctx), timeout)
}

// get reads obj from the cache and, when the cache does not have it (an object
// created just before its pod may not be there yet), from the API server.
func (h *Handler) get(ctx context.Context, key client.ObjectKey, obj client.Object) (bool, error) {
	err := h.Reader.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) && h.APIReader != nil {
		err = h.APIReader.Get(ctx, key, obj)
	}
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName + "<generated>"
}

func withWarnings(r admission.Response, warnings []string) admission.Response {
	if len(warnings) > 0 {
		r.Warnings = append(r.Warnings, warnings...)
	}
	return r
}
