package injector

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kvinject/kvinject/internal/version"
	"github.com/kvinject/kvinject/internal/version/agentimage"
	"github.com/kvinject/kvinject/pkg/agentconfig"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// Options are the webhook's settings of what it injects, bound to command-line flags.
type Options struct {
	Defaults      mapping.Defaults
	Mutate        mutate.Config
	LookupTimeout time.Duration
	// HubCAFile is the PEM bundle agents trust for the hub (--hub-ca-file);
	// with Mutate.HubURL set and HubCAFile empty, CertDir's ca.crt.
	HubCAFile string

	// AgentImageDefault is this build's default agent image (see
	// agentimage.Default), set by BindFlags; AgentImageFromFlag, set by
	// Complete, tells whether --agent-image was given instead.
	AgentImageDefault  agentimage.Agent
	AgentImageFromFlag bool

	rotation, pullPolicy, volumeSize                 string
	cpuRequest, memoryRequest, cpuLimit, memoryLimit string
	allowedVaults, managedNamespaces                 string
	// agentImageErr is why this build has no usable default agent image, and
	// fs the flag set BindFlags defined the flags on (for Complete to tell
	// whether --agent-image was given).
	agentImageErr error
	fs            *flag.FlagSet
}

// BindFlags defines the flags on fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	d := &o.Defaults
	fs.StringVar(&d.Vault, "default-vault", "", "vault for pods and namespaces that name none (name or https URL)")
	fs.StringVar(&d.Identity, "default-identity", "", "identity for pods that choose none and whose ServiceAccount has no workload identity: managed:<client-id>, managed or system")
	fs.StringVar(&d.ManagedIdentityClientID, "managed-identity-client-id", "", "client ID used for identity \"managed\" without one, e.g. the AKS Key Vault add-on's identity")
	fs.StringVar(&d.TenantID, "default-tenant-id", "", "Azure AD tenant for identities that name none")
	fs.StringVar(&d.Cloud, "default-cloud", agentconfig.AzurePublicCloud.Name, "Azure cloud: AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud")
	fs.StringVar(&d.MountPath, "default-mount-path", mapping.DefaultMountPath, "where app containers see the secret files")
	fs.StringVar(&o.rotation, "default-rotation", agentconfig.DefaultRotation.String(), "polling interval for pods that set none, or \"off\"")

	fs.StringVar(&o.allowedVaults, "allowed-vaults", "", "policy: the only vaults any pod may use (comma-separated names, globs such as team-a-*, or vault URLs); empty allows all")
	fs.StringVar(&o.managedNamespaces, "managed-identity-namespaces", "", "policy: globs of the namespaces whose pods may use a managed identity (managed or system); empty allows all")

	m := &o.Mutate
	o.fs = fs
	o.AgentImageDefault, o.agentImageErr = agentimage.Default()
	fs.StringVar(&m.AgentImage, "agent-image", o.AgentImageDefault.Image, agentImageUsage(o.AgentImageDefault))
	fs.StringVar(&o.pullPolicy, "agent-image-pull-policy", string(corev1.PullIfNotPresent), "agent pull policy: Always, IfNotPresent or Never")
	fs.BoolVar(&m.NativeSidecars, "native-sidecars", true, "run the rotating agent as a native sidecar (Kubernetes 1.29+); otherwise an init container plus a regular sidecar")
	fs.StringVar(&o.volumeSize, "volume-size-limit", "16Mi", "size limit of the in-memory secrets volume")
	fs.Int64Var(&m.TokenExpirationSeconds, "token-expiration-seconds", 3600, "lifetime of the projected workload-identity token (3600-86400)")
	fs.StringVar(&o.cpuRequest, "agent-cpu-request", "10m", "agent CPU request (empty for none)")
	fs.StringVar(&o.memoryRequest, "agent-memory-request", "24Mi", "agent memory request (empty for none)")
	fs.StringVar(&o.cpuLimit, "agent-cpu-limit", "", "agent CPU limit (empty for none)")
	fs.StringVar(&o.memoryLimit, "agent-memory-limit", "64Mi", "agent memory limit (empty for none)")
	fs.StringVar(&m.HubURL, "hub-url", "", "the version hub's https URL (kvinject-hub Service); rotating agents then watch it instead of polling Key Vault (empty: they poll)")
	fs.BoolVar(&m.RestartAction, "restart-action", false, "a restart controller (kvinject-restarter) is installed, so kvinject.dev/on-change: restart is admitted (with --hub-url); the restarter's install sets it")
	fs.StringVar(&o.HubCAFile, "hub-ca-file", "", "PEM CA bundle that agents trust for the hub's certificate, re-read when it changes (default: ca.crt in --cert-dir, the webhook's own CA)")
	fs.DurationVar(&o.LookupTimeout, "lookup-timeout", 3*time.Second, "bound on reading a pod's Namespace and ServiceAccount")
}

// Complete parses the flag values that need it and validates everything, naming
// the flag at fault.
func (o *Options) Complete() error {
	var errs []error
	var err error
	if o.Defaults.Rotation, err = mapping.ParseRotation(o.rotation); err != nil {
		errs = append(errs, fmt.Errorf("--default-rotation: %w", err))
	}
	o.AgentImageFromFlag = o.fs != nil && flagSet(o.fs, "agent-image")
	switch {
	case o.Mutate.AgentImage != "":
	case o.agentImageErr != nil:
		errs = append(errs, fmt.Errorf("--agent-image: this build has no usable default, pass --agent-image=<image>: %w", o.agentImageErr))
	case o.AgentImageFromFlag:
		errs = append(errs, errors.New("--agent-image is empty: give the agent image, e.g. --agent-image="+exampleAgentImage))
	default:
		errs = append(errs, fmt.Errorf("--agent-image is required: this is a development build (version %s) with no agent image stamped in; "+
			"pass --agent-image=<image>, e.g. --agent-image=%s, or build with `make build`, which stamps %s/agent:<version>", version.Version, exampleAgentImage, version.Registry))
	}
	switch p := corev1.PullPolicy(o.pullPolicy); p {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		o.Mutate.AgentImagePullPolicy = p
	default:
		errs = append(errs, fmt.Errorf("--agent-image-pull-policy %q: use Always, IfNotPresent or Never", o.pullPolicy))
	}
	if o.Mutate.TokenExpirationSeconds < 3600 || o.Mutate.TokenExpirationSeconds > 86400 {
		errs = append(errs, fmt.Errorf("--token-expiration-seconds %d: must be between 3600 and 86400", o.Mutate.TokenExpirationSeconds))
	}
	o.Defaults.Policy = mapping.Policy{AllowedVaults: splitFlag(o.allowedVaults), ManagedIdentityNamespaces: splitFlag(o.managedNamespaces)}
	if o.Mutate.HubURL != "" {
		if err := checkHubURL(o.Mutate.HubURL); err != nil {
			errs = append(errs, err)
		}
	} else if o.HubCAFile != "" {
		errs = append(errs, errors.New("--hub-ca-file without --hub-url: give the hub's URL too, or drop --hub-ca-file"))
	}
	if o.LookupTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--lookup-timeout %s: must be positive", o.LookupTimeout))
	}
	quantity := func(flag, raw string, dst *resource.Quantity) bool {
		if raw == "" {
			return false
		}
		q, err := resource.ParseQuantity(raw)
		if err != nil || q.Sign() <= 0 {
			errs = append(errs, fmt.Errorf("--%s %q: not a positive quantity", flag, raw))
			return false
		}
		*dst = q
		return true
	}
	quantity("volume-size-limit", o.volumeSize, &o.Mutate.VolumeSizeLimit)
	res := corev1.ResourceRequirements{}
	put := func(flag, raw string, list *corev1.ResourceList, name corev1.ResourceName) {
		var q resource.Quantity
		if quantity(flag, raw, &q) {
			if *list == nil {
				*list = corev1.ResourceList{}
			}
			(*list)[name] = q
		}
	}
	put("agent-cpu-request", o.cpuRequest, &res.Requests, corev1.ResourceCPU)
	put("agent-memory-request", o.memoryRequest, &res.Requests, corev1.ResourceMemory)
	put("agent-cpu-limit", o.cpuLimit, &res.Limits, corev1.ResourceCPU)
	put("agent-memory-limit", o.memoryLimit, &res.Limits, corev1.ResourceMemory)
	o.Defaults.Resources = res
	if err := o.Defaults.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// exampleAgentImage is the agent image that messages give as an example.
const exampleAgentImage = version.Registry + "/agent:<version>"

// agentImageUsage is the help text of --agent-image, which says what this
// build's default is (the flag package adds the value itself).
func agentImageUsage(def agentimage.Agent) string {
	const what = "image of the fetcher agent injected into pods"
	switch {
	case def.Image == "":
		return what + "; required: this development build (version " + version.Version + ") has no default " +
			"(builds of `make build` and `make images` default to the agent of their own version, release images by digest)"
	case def.Pinned:
		return what + "; the default is this build's agent (version " + version.Version + "), pinned by digest"
	default:
		return what + "; the default is this build's agent (version " + version.Version + "), by tag"
	}
}

// AgentImageOrigin says, after Complete, where the agent image comes from, for
// logs and notes: "--agent-image", or this build's default and whether it is
// pinned by digest.
func (o *Options) AgentImageOrigin() string {
	switch {
	case o.AgentImageFromFlag || o.Mutate.AgentImage != o.AgentImageDefault.Image:
		return "--agent-image"
	case o.AgentImageDefault.Pinned:
		return "this build's default, pinned by digest"
	default:
		return "this build's default, by tag"
	}
}

// flagSet reports whether the flag called name was given on fs's command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

// NewHandler returns a handler configured by o.
func (o *Options) NewHandler() *Handler {
	h := &Handler{Defaults: o.Defaults, Mutate: o.Mutate, LookupTimeout: o.LookupTimeout}
	if o.Mutate.HubURL != "" && o.HubCAFile != "" {
		h.HubCA = NewHubCA(o.HubCAFile)
	}
	return h
}

// splitFlag splits a comma-separated flag value, dropping blanks.
func splitFlag(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
