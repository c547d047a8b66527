// Package doctor is `kvinject-agent doctor`: it checks, one step at a time,
// what the agent needs to read a pod's secrets (its identity's configuration,
// the cloud, a token from Azure AD, then each object of the mapping) and
// prints a checklist with the precise fix of each failure.
//
// It builds the credential and the Key Vault clients with the agent's own
// code (agent.NewClients, from the same environment the webhook gives the
// agent), reads each object as the agent does (agent.Clients.Read: secrets
// get, certificates get for cert:, keys get for key:, secrets list then get
// for history=N), renders each entry with the agent's own code
// (agent.Object.Render), and phrases failures with the agent's own
// explanations (agent.Reason), so that the doctor and a failing pod say the
// same thing.
//
// It never prints a value: only its size, version, content type, whether it
// is enabled and its activation and expiry dates.
package doctor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/textdist"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Status is the outcome of one check.
type Status string

// Check outcomes. Only StatusFail makes the doctor exit 1.
const (
	StatusOK   Status = "ok"
	StatusFail Status = "FAIL"
	StatusWarn Status = "warn"
	StatusSkip Status = "skip"
)

// Kinds of checks, in the order they run.
const (
	CheckIdentity = "identity"
	CheckCloud    = "cloud"
	CheckToken    = "token"
	CheckSecret   = "secret"
	CheckList     = "list"
	CheckOnChange = "on-change"
	CheckTemplate = "template"
)

// Check is one line of the checklist.
type Check struct {
	// Kind is one of the Check constants.
	Kind   string
	Status Status
	// Subject names what was checked, e.g. `secret "API-KEY" (apikey.txt)`.
	Subject string
	// Detail is what was found, or why it failed.
	Detail string
	// Fix is the precise fix of a failure or warning.
	Fix string
	// Err is the underlying error of a failure, for tests; never printed.
	Err error `json:"-"`
}

// Report is the outcome of a run.
type Report struct {
	// Header describes the vault and the identity.
	Header []string
	Checks []Check
}

// Failed returns the number of failed checks.
func (r *Report) Failed() int {
	n := 0
	for _, c := range r.Checks {
		if c.Status == StatusFail {
			n++
		}
	}
	return n
}

func (r *Report) add(c Check) { r.Checks = append(r.Checks, c) }

// Print writes the checklist.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintln(w, "kvinject doctor")
	for _, h := range r.Header {
		fmt.Fprintln(w, "  "+h)
	}
	fmt.Fprintln(w)
	for _, c := range r.Checks {
		tag := "[" + string(c.Status) + "]"
		fmt.Fprintf(w, "%-6s %s: %s\n", tag, c.Subject, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(w, "       fix: %s\n", c.Fix)
		}
	}
	fmt.Fprintln(w)
	switch n := r.Failed(); n {
	case 0:
		fmt.Fprintf(w, "All %d checks passed.\n", len(r.Checks))
	default:
		fmt.Fprintf(w, "%d of %d checks failed.\n", n, len(r.Checks))
	}
}

// Config is what to check.
type Config struct {
	// VaultURL is the vault, e.g. https://myvault.vault.azure.net/.
	VaultURL string
	// Identity is the identity kind; its settings come from Env.
	Identity agentconfig.IdentityKind
	// Env is the agent's environment (identity, cloud, pod).
	Env agent.Env
	// Entries are the files and secrets of the mapping.
	Entries []agentconfig.Entry
	// Templates are files rendered from the entries; checked against them
	// already (agentconfig.CheckTemplates).
	Templates []agentconfig.Template
	// CheckList also checks that the identity may list the versions of each
	// secret (the 'list' permission, RBAC secrets/readMetadata/action).
	CheckList bool
	// OnChange is the agent's --on-change as given (empty: none); Hub its
	// --hub.
	OnChange, Hub string
}

// Options are the doctor's settings that do not come from the command line.
type Options struct {
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Stdout receives the checklist and Stderr usage errors; nil means os.Stdout and os.Stderr.
	Stdout, Stderr io.Writer
	// SDKRetry configures the Azure SDK's retries; nil means one retry, at
	// most 5 seconds apart, 15 seconds per attempt: a diagnosis should not
	// wait out a throttled or unavailable service.
	SDKRetry *policy.RetryOptions
	// Now is the clock, for expiry warnings; nil means time.Now.
	Now func() time.Time
}

func (o *Options) retry() policy.RetryOptions {
	if o.SDKRetry != nil {
		return *o.SDKRetry
	}
	return policy.RetryOptions{MaxRetries: 1, RetryDelay: time.Second, MaxRetryDelay: 5 * time.Second, TryTimeout: 15 * time.Second}
}

// Run runs every check of cfg and returns the report. ctx bounds the run;
// checks that were not reached when it ends are reported as failed.
func Run(ctx context.Context, cfg Config, opts Options) *Report {
	r := run(ctx, cfg, opts)
	if cfg.OnChange != "" {
		r.add(checkOnChange(ctx, cfg))
	}
	return r
}

func run(ctx context.Context, cfg Config, opts Options) *Report {
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	r := &Report{}
	facts := agent.FactsFrom(agentconfig.Config{VaultURL: cfg.VaultURL, Identity: cfg.Identity}, cfg.Env)
	facts = withSubject(facts)
	vaultCloud, authCloud, authKnown := clouds(cfg.VaultURL, cfg.Env.AuthorityHost)
	r.Header = header(cfg, facts, vaultCloud)

	// 1. The identity's configuration, and the clients.
	clients, err := agent.NewClients(cfg.VaultURL, cfg.Identity, cfg.Env, opts.retry(), newLogger(opts.Stderr))
	if err != nil {
		why, fix := agent.Reason(err, facts)
		r.add(Check{Kind: CheckIdentity, Status: StatusFail, Subject: "identity", Detail: why, Fix: fix, Err: err})
		r.skipRest(cfg, "the identity is not configured")
		return r
	}
	defer clients.Transport.CloseIdleConnections()
	r.add(Check{Kind: CheckIdentity, Status: StatusOK, Subject: "identity", Detail: identityDetail(cfg, facts)})

	// 2. The cloud: the vault's and the one the identity signs in to.
	switch {
	case !authKnown:
		r.add(Check{Kind: CheckCloud, Status: StatusOK, Subject: "cloud", Detail: fmt.Sprintf("the vault is in %s; Azure AD is %s (AZURE_AUTHORITY_HOST), not a known cloud's", vaultCloud.Name, cfg.Env.AuthorityHost)})
	case authCloud.Name != vaultCloud.Name:
		r.add(Check{Kind: CheckCloud, Status: StatusFail, Subject: "cloud",
			Detail: fmt.Sprintf("the vault is in %s but the identity signs in to Azure AD of %s (%s)", vaultCloud.Name, authCloud.Name, authorityDesc(cfg.Env.AuthorityHost)),
			Fix: fmt.Sprintf("set %s=%s on the pod or its namespace (the webhook then sets AZURE_AUTHORITY_HOST=%s), or use a vault of %s",
				agentconfig.AnnotationCloud, vaultCloud.Name, vaultCloud.AuthorityHost, authCloud.Name)})
		r.skipRest(cfg, "the vault and the identity are in different clouds")
		return r
	default:
		r.add(Check{Kind: CheckCloud, Status: StatusOK, Subject: "cloud", Detail: fmt.Sprintf("the vault and Azure AD (%s) are both in %s", authorityDesc(cfg.Env.AuthorityHost), vaultCloud.Name)})
	}

	// 3. A token for the vault's resource.
	tok, err := clients.Credential.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{clients.Scope}, EnableCAE: true})
	if err != nil {
		why, fix := agent.Reason(err, facts)
		r.add(Check{Kind: CheckToken, Status: StatusFail, Subject: "token", Detail: why, Fix: fix, Err: err})
		r.skipRest(cfg, "no token")
		return r
	}
	r.add(Check{Kind: CheckToken, Status: StatusOK, Subject: "token",
		Detail: fmt.Sprintf("Azure AD issued a token for %s, valid for %s", strings.TrimSuffix(clients.Scope, "/.default"), tok.ExpiresOn.Sub(now()).Round(time.Minute))})

	// 4. Each object, read and rendered as the agent does, then the list
	// permission if asked.
	d := &secretChecker{r: r, clients: clients, client: clients.Secrets, facts: facts, vault: cfg.VaultURL, now: now, objects: map[string]*agent.Object{}}
	for _, s := range distinct(cfg.Entries) {
		if v := s.entries[0].Vault; v != "" && v != cfg.VaultURL {
			// Its own vault (vault=): another vault's checks, permissions and firewall.
			r.add(Check{Kind: CheckSecret, Status: StatusSkip, Subject: s.subject(),
				Detail: fmt.Sprintf("not checked: the entry reads vault %s; run the doctor with that vault for it", v)})
			continue
		}
		d.check(ctx, s)
	}
	d.checkTemplates(cfg)
	if cfg.CheckList {
		for _, s := range distinctNames(cfg.Entries) {
			d.checkList(ctx, s)
		}
	}
	return r
}

// dialTimeout bounds the connection the on-change check tries.
const dialTimeout = 2 * time.Second

// checkOnChange checks the action on change without running it (a call
// would make the app reload): its grammar; for http, in the pod, that
// something accepts connections on 127.0.0.1:<port>; for restart, that the
// agent has the hub and its token.
func checkOnChange(ctx context.Context, cfg Config) Check {
	c := Check{Kind: CheckOnChange, Subject: "on-change"}
	oc, err := agentconfig.ParseOnChange(cfg.OnChange)
	if err != nil {
		c.Status, c.Detail, c.Err = StatusFail, err.Error(), err
		c.Fix = "the webhook writes --on-change from the pod's annotation " + agentconfig.AnnotationOnChange + "; check the annotation, and that the webhook and the agent image are the same kvinject version"
		return c
	}
	switch oc.Kind {
	case agentconfig.OnChangeRestart:
		if cfg.Hub == "" {
			c.Status, c.Detail = StatusFail, "restart needs the version hub, but the agent has no --hub: new sets cannot be reported, so the pod's owner is never restarted"
			c.Fix = "install the hub (Helm: --set hub.enabled=true) so that the webhook gives rotating agents --hub, then recreate the pod"
			return c
		}
		if f := cfg.Env.HubTokenFile; f != "" {
			if _, err := os.Stat(f); err != nil {
				c.Status, c.Detail, c.Err = StatusWarn, fmt.Sprintf("restart: the agent reports each new set to the hub %s, but cannot read its token %s: %v", cfg.Hub, f, err), err
				c.Fix = "run the doctor in the agent's container (kubectl exec -c kvinject-agent), where the hub token is mounted"
				return c
			}
		}
		c.Status, c.Detail = StatusOK, fmt.Sprintf("restart: the agent reports each new set to the hub %s, whose restart controller restarts the pod's owner", cfg.Hub)
		return c
	}
	what := fmt.Sprintf("%s %s after each new set (timeout %s, %d retries)", oc.Method, oc.URL(), oc.Timeout, oc.Retries)
	if cfg.Env.Pod() == "" {
		c.Status, c.Detail = StatusSkip, "the agent will call "+what+"; not checked: the doctor does not run in the pod (no "+agentconfig.EnvPodName+"), so 127.0.0.1 is not the app's"
		return c
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(oc.Port))
	conn, err := (&net.Dialer{Timeout: dialTimeout}).DialContext(ctx, "tcp", addr)
	if err != nil {
		c.Status, c.Detail, c.Err = StatusWarn, fmt.Sprintf("the agent will call %s, but nothing accepts connections on %s now (%v)", what, addr, err), err
		c.Fix = fmt.Sprintf("the app must serve its reload endpoint on port %d of the pod's loopback or of all its addresses; if it is still starting, run the doctor again", oc.Port)
		return c
	}
	_ = conn.Close()
	c.Status, c.Detail = StatusOK, "the agent will call "+what+"; something accepts connections on "+addr+" (the endpoint itself is not called: it would reload the app)"
	return c
}

// skipRest reports the checks that were not run.
func (r *Report) skipRest(cfg Config, why string) {
	for _, s := range distinct(cfg.Entries) {
		r.add(Check{Kind: CheckSecret, Status: StatusSkip, Subject: s.subject(), Detail: "not checked: " + why})
	}
	for _, t := range cfg.Templates {
		r.add(Check{Kind: CheckTemplate, Status: StatusSkip, Subject: "template " + t.File, Detail: "not checked: " + why})
	}
}

// checkTemplates renders the templates from the objects read, as the agent
// does, once every entry was read and rendered.
func (d *secretChecker) checkTemplates(cfg Config) {
	if len(cfg.Templates) == 0 {
		return
	}
	objects := make([]*agent.Object, len(cfg.Entries))
	for i, e := range cfg.Entries {
		if objects[i] = d.objects[e.String()]; objects[i] == nil {
			for _, t := range cfg.Templates {
				d.r.add(Check{Kind: CheckTemplate, Status: StatusSkip, Subject: "template " + t.File, Detail: "not checked: an entry failed above"})
			}
			return
		}
	}
	sizes, err := agent.RenderTemplates(cfg.Templates, cfg.Entries, objects)
	if err != nil {
		why, fix := agent.Reason(err, d.facts)
		d.r.add(Check{Kind: CheckTemplate, Status: StatusFail, Subject: "templates", Detail: why, Fix: fix, Err: err})
		return
	}
	for i, t := range cfg.Templates {
		d.r.add(Check{Kind: CheckTemplate, Status: StatusOK, Subject: "template " + t.File, Detail: fmt.Sprintf("renders %d bytes", sizes[i])})
	}
}

// secret is one distinct read of the mapping (a secret, certificate or key,
// at a version or the latest, or a secret's history) and the entries it is for.
type secret struct {
	name, version string
	kind          agentconfig.ObjectType
	history       int
	entries       []agentconfig.Entry
}

func (s secret) subject() string {
	ref := fmt.Sprintf("%s %q", agent.ObjectWord(s.kind), s.name)
	if s.version != "" {
		ref += " version " + s.version
	}
	if s.history > 0 {
		ref += fmt.Sprintf(" history %d", s.history)
	}
	files := make([]string, len(s.entries))
	for i, e := range s.entries {
		files[i] = e.File
	}
	return ref + " (" + strings.Join(files, ", ") + ")"
}

// distinct groups the entries by what the agent reads for them (names are
// case-insensitive), in mapping order.
func distinct(entries []agentconfig.Entry) []secret {
	var out []secret
next:
	for _, e := range entries {
		for i := range out {
			if agent.SameObject(out[i].entries[0], e) {
				out[i].entries = append(out[i].entries, e)
				continue next
			}
		}
		out = append(out, secret{name: e.Name, version: e.Version, kind: e.Kind(), history: e.History, entries: []agentconfig.Entry{e}})
	}
	return out
}

// distinctNames returns the secrets of the mapping once per name, for the
// list check; entries of their own vault (vault=) are not checked.
func distinctNames(entries []agentconfig.Entry) []secret {
	var out []secret
	seen := map[string]bool{}
	for _, s := range distinct(entries) {
		if s.kind != agentconfig.ObjectSecret || seen[strings.ToLower(s.name)] || s.entries[0].Vault != "" {
			continue
		}
		seen[strings.ToLower(s.name)] = true
		out = append(out, s)
	}
	return out
}

// secretChecker checks objects with the agent's clients.
type secretChecker struct {
	r       *Report
	clients *agent.Clients
	client  *azsecrets.Client
	facts   agent.Facts
	vault   string
	now     func() time.Time
	// objects are the objects read and rendered without a failure, by
	// entry (its written form), for the templates.
	objects map[string]*agent.Object
	// lastWhy and lastFix are those of the previous failure, to say "as
	// above" rather than repeat a long fix.
	lastWhy, lastFix, lastSubject string
}

func (d *secretChecker) fail(kind, subject string, err error, extra string) {
	why, fix := agent.Reason(err, d.facts)
	if extra != "" {
		fix = strings.TrimSuffix(fix, ".") + "; " + extra
	}
	c := Check{Kind: kind, Status: StatusFail, Subject: subject, Detail: why, Fix: fix, Err: err}
	if fix != "" && fix == d.lastFix && why == d.lastWhy {
		c.Fix = "as for " + d.lastSubject + " above"
	} else {
		d.lastWhy, d.lastFix, d.lastSubject = why, fix, subject
	}
	d.r.add(c)
}

// check reads one object as the agent does (the permission its kind needs:
// secrets get, certificates get, keys get, and secrets list for a history)
// and reports its properties, never its value; then renders each of its
// entries as the agent does and reports those that would fail.
func (d *secretChecker) check(ctx context.Context, s secret) {
	o, err := d.clients.Read(ctx, s.entries[0])
	if err != nil {
		d.fail(CheckSecret, s.subject(), err, d.hint(ctx, s, err))
		return
	}
	var b strings.Builder
	if len(o.Versions) > 0 {
		fmt.Fprintf(&b, "%d versions (%s, newest first)", len(o.Versions), strings.Join(o.Versions, ", "))
	} else if o.Version != "" {
		fmt.Fprintf(&b, "version %s", o.Version)
	}
	fmt.Fprintf(&b, ", %d bytes", o.Bytes)
	if o.ContentType != "" {
		fmt.Fprintf(&b, ", content type %s", o.ContentType)
	}
	status, fix := StatusOK, ""
	if o.Enabled != nil && *o.Enabled {
		b.WriteString(", enabled")
	}
	if o.Enabled != nil || o.NotBefore != nil || o.Expires != nil {
		now := d.now()
		if o.NotBefore != nil && o.NotBefore.After(now) {
			fmt.Fprintf(&b, ", not valid before %s", o.NotBefore.UTC().Format(time.RFC3339))
			status, fix = StatusWarn, fmt.Sprintf("Key Vault serves it, but it is not meant to be used yet; check its activation date (az keyvault %s set-attributes --not-before)", azNoun(s.kind))
		}
		switch {
		case o.Expires == nil:
			b.WriteString(", no expiry")
		case !o.Expires.After(now):
			fmt.Fprintf(&b, ", expired %s", o.Expires.UTC().Format(time.RFC3339))
			status, fix = StatusWarn, fmt.Sprintf("Key Vault still serves an expired %s, but it is due for rotation: %s", agent.ObjectWord(s.kind), d.renewal(s))
		default:
			left := o.Expires.Sub(now)
			fmt.Fprintf(&b, ", expires %s (in %s)", o.Expires.UTC().Format(time.RFC3339), days(left))
			if left < 7*24*time.Hour {
				status, fix = StatusWarn, "it expires soon: "+d.renewal(s)+" before then"
			}
		}
	}
	d.r.add(Check{Kind: CheckSecret, Status: status, Subject: s.subject(), Detail: b.String(), Fix: fix})
	// The content: what the agent would fail on after a successful read.
	for _, e := range s.entries {
		if _, err := o.Render(e); err != nil {
			d.fail(CheckSecret, fmt.Sprintf("entry %s", e.String()), err, "")
			continue
		}
		d.objects[e.String()] = o
	}
}

// azNoun is the az keyvault command group of a kind of object.
func azNoun(kind agentconfig.ObjectType) string {
	switch kind {
	case agentconfig.ObjectCert:
		return "certificate"
	case agentconfig.ObjectKey:
		return "key"
	}
	return "secret"
}

// renewal says how to renew s.
func (d *secretChecker) renewal(s secret) string {
	switch s.kind {
	case agentconfig.ObjectCert:
		return fmt.Sprintf("renew the certificate (az keyvault certificate create or import --vault-name %s --name %s ...)", agent.VaultName(d.vault), s.name)
	case agentconfig.ObjectKey:
		return fmt.Sprintf("rotate the key (az keyvault key rotate --vault-name %s --name %s)", agent.VaultName(d.vault), s.name)
	}
	return fmt.Sprintf("set a new value (az keyvault secret set --vault-name %s --name %s ...)", agent.VaultName(d.vault), s.name)
}

// hint lists what the vault has when a secret or version is missing or
// disabled, if the identity may list; "" otherwise.
func (d *secretChecker) hint(ctx context.Context, s secret, err error) string {
	if s.kind != agentconfig.ObjectSecret || s.history > 0 {
		return ""
	}
	switch {
	case agent.IsSecretNotFound(err) && s.version == "":
		names, lerr := d.names(ctx)
		if lerr != nil {
			return ""
		}
		switch similar := closest(s.name, names); len(similar) {
		case 0:
			return ""
		case 1:
			return "the vault has " + quoteAll(similar) + ": did you mean it?"
		default:
			return "the vault has " + quoteAll(similar) + ": did you mean one of them?"
		}
	case agent.IsSecretNotFound(err), agent.IsSecretDisabled(err):
		versions, lerr := d.versions(ctx, s.name)
		if lerr != nil || len(versions) == 0 {
			return ""
		}
		newest := ""
		for _, v := range versions {
			if v.enabled {
				newest = v.id
			}
		}
		if newest == "" {
			return fmt.Sprintf("none of its %d versions is enabled", len(versions))
		}
		return fmt.Sprintf("its newest enabled version is %s (to pin it: %s=%s@%s)", newest, s.entries[0].File, s.name, newest)
	}
	return ""
}

// names lists the vault's secret names (metadata only).
func (d *secretChecker) names(ctx context.Context) ([]string, error) {
	var names []string
	pager := d.client.NewListSecretPropertiesPager(nil)
	for pager.More() && len(names) < 1000 {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, p := range page.Value {
			if p.ID != nil {
				names = append(names, p.ID.Name())
			}
		}
	}
	return names, nil
}

type versionInfo struct {
	id      string
	enabled bool
	created time.Time
}

// versions lists a secret's versions (metadata only), oldest first.
func (d *secretChecker) versions(ctx context.Context, name string) ([]versionInfo, error) {
	var out []versionInfo
	pager := d.client.NewListSecretPropertiesVersionsPager(name, nil)
	for pager.More() && len(out) < 1000 {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, p := range page.Value {
			v := versionInfo{}
			if p.ID != nil {
				v.id = p.ID.Version()
			}
			if p.Attributes != nil {
				v.enabled = p.Attributes.Enabled != nil && *p.Attributes.Enabled
				if p.Attributes.Created != nil {
					v.created = *p.Attributes.Created
				}
			}
			out = append(out, v)
		}
	}
	sortVersions(out)
	return out, nil
}

// checkList checks that the identity may list a secret's versions.
func (d *secretChecker) checkList(ctx context.Context, s secret) {
	subject := fmt.Sprintf("list versions of %q", s.name)
	versions, err := d.versions(ctx, s.name)
	if err != nil {
		err = &agent.SecretError{Name: s.name, File: s.entries[0].File, Vault: d.vault, List: true, Err: err}
		d.fail(CheckList, subject, err, "")
		return
	}
	d.r.add(Check{Kind: CheckList, Status: StatusOK, Subject: subject, Detail: fmt.Sprintf("%d versions", len(versions))})
}

// header describes the vault and the identity.
func header(cfg Config, f agent.Facts, vaultCloud agentconfig.Cloud) []string {
	return []string{
		fmt.Sprintf("vault:    %s (%s)", cfg.VaultURL, vaultCloud.Name),
		"identity: " + identityDesc(cfg, f),
		"azure ad: " + authorityDesc(cfg.Env.AuthorityHost) + suffixIf(cfg.Env.AuthorityHost == "", " (AZURE_AUTHORITY_HOST unset)"),
	}
}

func identityDesc(cfg Config, f agent.Facts) string {
	switch cfg.Identity {
	case agentconfig.IdentityWorkload:
		return fmt.Sprintf("workload identity %s in tenant %s", orUnset(f.ClientID), orUnset(f.TenantID))
	case agentconfig.IdentityManaged:
		return "user-assigned managed identity " + orUnset(f.ClientID)
	case agentconfig.IdentitySystem:
		return "the node's system-assigned managed identity"
	}
	return string(cfg.Identity)
}

// identityDetail describes a usable identity configuration.
func identityDetail(cfg Config, f agent.Facts) string {
	d := identityDesc(cfg, f)
	if cfg.Identity == agentconfig.IdentityWorkload {
		d += ", service account token " + cfg.Env.TokenFile
		if f.Issuer != "" || f.Subject != "" {
			d += fmt.Sprintf(" (issuer %s, subject %s)", orUnset(f.Issuer), orUnset(f.Subject))
		}
	}
	return d
}

// authorityDesc is the Azure AD that the identity signs in to.
func authorityDesc(host string) string {
	if host == "" {
		return agentconfig.AzurePublicCloud.AuthorityHost
	}
	return host
}

func suffixIf(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

func orUnset(s string) string {
	if s == "" {
		return "<unset>"
	}
	return s
}

// clouds returns the vault's cloud (the public one when the URL is no cloud's)
// and the cloud of the Azure AD authority host (empty: public), and whether the
// authority is a known cloud's.
func clouds(vaultURL, authority string) (vault, auth agentconfig.Cloud, authKnown bool) {
	vault, _, ok := agentconfig.CloudOfVault(vaultURL)
	if !ok {
		vault = agentconfig.AzurePublicCloud
	}
	auth, authKnown = agentconfig.CloudOfAuthority(authority)
	return vault, auth, authKnown
}

// withSubject completes the pod's namespace and ServiceAccount, which the
// explanations use, from the token's subject when the environment has none
// (the doctor run outside the pod).
func withSubject(f agent.Facts) agent.Facts {
	rest, ok := strings.CutPrefix(f.Subject, "system:serviceaccount:")
	if !ok {
		return f
	}
	ns, sa, ok := strings.Cut(rest, ":")
	if !ok {
		return f
	}
	if f.Namespace == "" {
		f.Namespace = ns
	}
	if f.ServiceAccount == "" {
		f.ServiceAccount = sa
	}
	return f
}

// days renders a duration in days, or hours when shorter than two days.
func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Round(time.Hour).String()
	}
	return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
}

// closest returns at most five names that may be what want meant: equal but
// for case, one containing the other, or within a small edit distance.
func closest(want string, names []string) []string {
	var out []string
	lw := strings.ToLower(want)
	for _, n := range names {
		ln := strings.ToLower(n)
		contains := strings.Contains(ln, lw) && len(lw) >= 4 || strings.Contains(lw, ln) && len(ln) >= 4
		if ln == lw || contains || textdist.Levenshtein(ln, lw) <= max(1, len(lw)/5) {
			out = append(out, n)
		}
		if len(out) == 5 {
			break
		}
	}
	return out
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// sortVersions orders versions by creation, oldest first.
func sortVersions(vs []versionInfo) {
	slices.SortStableFunc(vs, func(a, b versionInfo) int { return a.created.Compare(b.created) })
}

// newLogger returns the logger of the agent's client construction: its
// warnings (the test-only settings) go to w.
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
