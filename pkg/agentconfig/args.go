package agentconfig

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Agent modes: the first argument of the agent's command line.
const (
	// ModeInit fetches every secret once, writes the set and exits.
	ModeInit = "init"
	// ModeSidecar fetches, writes, then keeps polling and swaps in changes.
	ModeSidecar = "sidecar"
	// ModeProbe exits 0 once a complete set is written (the startup probe).
	ModeProbe = "probe"
)

// The flags of the agent's command line that the webhook writes (Args), without
// their leading "--".
const (
	// FlagDir is the directory of the in-memory volume inside the agent container.
	FlagDir = "dir"
	// FlagVault is the vault's canonical URL.
	FlagVault = "vault"
	// FlagIdentity is the identity kind (the client ID and tenant are in the environment).
	FlagIdentity = "identity"
	// FlagFileMode is the octal mode of the files.
	FlagFileMode = "file-mode"
	// FlagRotation is the polling interval of sidecar mode.
	FlagRotation = "rotation"
	// FlagSecret is one entry of the mapping, repeated for each.
	FlagSecret = "secret"
	// FlagTemplate is one file rendered from the entries, repeated for each:
	// <file>[;mode=<octal>]=<template text> (see Template).
	FlagTemplate = "template"
	// FlagHub is the version hub's URL (sidecar mode only; optional): the agent
	// watches it for new versions instead of polling Key Vault.
	FlagHub = "hub"
	// FlagOnChange is the action after a new set is swapped in (sidecar mode
	// only; optional), in OnChange's canonical form.
	FlagOnChange = "on-change"
)

// Defaults of what the command line may leave out.
const (
	// DefaultRotation is the polling interval of sidecar mode without --rotation
	// (and of a pod without kvinject.dev/rotation).
	DefaultRotation = 2 * time.Minute
	// ModeWorldReadable is the file mode without --file-mode (and without an fsGroup).
	ModeWorldReadable = 0o444
)

// TerminationLog is the file where the agent explains a failure by default, and
// where the webhook tells Kubernetes to read a container's termination message.
const TerminationLog = "/dev/termination-log"

// Config is what the webhook tells the agent on its command line. Args and
// ParseArgs are the only writer and reader of that format.
type Config struct {
	Mode     string
	VaultURL string
	Entries  []Entry
	// Dir is the directory of the in-memory volume inside the agent container.
	Dir      string
	FileMode uint32
	// Rotation is the polling interval of sidecar mode.
	Rotation time.Duration
	Identity IdentityKind
	// Hub is the version hub's https URL (sidecar mode only); empty: poll.
	Hub string
	// OnChange is the action after each new set (sidecar mode only); zero: none.
	OnChange OnChange
	// Templates are files rendered from the entries' values, written in the
	// same set as the entries' files.
	Templates []Template
}

// Args renders the configuration as the agent's arguments.
func (c Config) Args() []string {
	f := func(name, value string) string { return "--" + name + "=" + value }
	args := []string{c.Mode, f(FlagDir, c.Dir)}
	if c.Mode == ModeProbe {
		return args
	}
	args = append(args,
		f(FlagVault, c.VaultURL),
		f(FlagIdentity, string(c.Identity)),
		f(FlagFileMode, fmt.Sprintf("%04o", c.FileMode)),
	)
	if c.Mode == ModeSidecar {
		args = append(args, f(FlagRotation, c.Rotation.String()))
		if c.Hub != "" {
			args = append(args, f(FlagHub, c.Hub))
		}
		if !c.OnChange.IsZero() {
			args = append(args, f(FlagOnChange, c.OnChange.String()))
		}
	}
	for _, e := range c.Entries {
		args = append(args, f(FlagSecret, e.String()))
	}
	for _, t := range c.Templates {
		args = append(args, f(FlagTemplate, t.String()))
	}
	return args
}

// RegisterFlags defines the webhook-written flags on fs, storing into c. ParseArgs
// uses it; a command that accepts the agent's command line (the doctor) can use it
// to learn the flags' names.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, FlagDir, "", "directory of the in-memory secrets volume")
	fs.StringVar(&c.VaultURL, FlagVault, "", "vault URL, e.g. https://myvault.vault.azure.net/")
	fs.Func(FlagIdentity, "identity kind: workload, managed or system", func(s string) (err error) {
		c.Identity, err = ParseIdentityKind(s)
		return err
	})
	c.FileMode = ModeWorldReadable
	fs.Func(FlagFileMode, "octal mode of the files (default 0444)", func(s string) (err error) {
		c.FileMode, err = ParseFileMode(s)
		return err
	})
	fs.Func(FlagRotation, "polling interval in sidecar mode (default 2m)", func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return fmt.Errorf("%q is not a positive duration such as 2m", s)
		}
		c.Rotation = d
		return nil
	})
	fs.StringVar(&c.Hub, FlagHub, "", "the version hub's https URL (sidecar mode): watch it for new versions instead of polling Key Vault")
	fs.Func(FlagOnChange, "sidecar mode: what to do after each new set (never the first): http:<port><path>[;method=<M>][;timeout=<d>][;retries=<n>] or restart (needs --hub)", func(s string) (err error) {
		c.OnChange, err = ParseOnChange(s)
		return err
	})
	fs.Func(FlagSecret, "an entry of the mapping, <file>=[<kind>:]<name>[@<version>][;<option>...]; repeat for each entry", func(s string) error {
		e, err := ParseEntry(s)
		if err != nil {
			return err
		}
		c.Entries = append(c.Entries, e)
		return nil
	})
	fs.Func(FlagTemplate, "a file rendered from the entries, <file>[;mode=<octal>]=<template text>; repeat for each template", func(s string) error {
		if len(c.Templates) >= MaxTemplates {
			return fmt.Errorf("more than the limit of %d templates", MaxTemplates)
		}
		t, err := ParseTemplateFlag(s)
		if err != nil {
			return err
		}
		c.Templates = append(c.Templates, t)
		return nil
	})
}

// Validate checks a parsed configuration, naming the flag at fault. In sidecar
// mode it sets a missing Rotation to DefaultRotation.
func (c *Config) Validate() error {
	switch c.Mode {
	case ModeInit, ModeSidecar, ModeProbe:
	default:
		return fmt.Errorf("mode %q: the first argument must be %s, %s or %s", c.Mode, ModeInit, ModeSidecar, ModeProbe)
	}
	if c.Dir == "" || !path.IsAbs(c.Dir) || path.Clean(c.Dir) != c.Dir {
		return fmt.Errorf("--dir %q must be a clean absolute path", c.Dir)
	}
	if c.Mode == ModeProbe {
		return nil
	}
	if u, err := url.Parse(c.VaultURL); err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("--vault %q must be an https URL such as https://myvault.vault.azure.net/", c.VaultURL)
	}
	if c.Identity == "" {
		return fmt.Errorf("--identity is required: workload, managed or system")
	}
	if len(c.Entries) == 0 {
		return fmt.Errorf("no --secret given: pass --secret=<entry> for each entry of the mapping, e.g. --secret=<file>=<secret-name>[@<version>]")
	}
	if p := fileProblems(c.Entries, nil); len(p) > 0 {
		return fmt.Errorf("--secret: %s", strings.Join(p, "; "))
	}
	if err := c.resolveVaults(); err != nil {
		return err
	}
	if _, probs := CheckTemplates(c.Templates, c.Entries); len(probs) > 0 {
		msgs := make([]string, 0, len(probs))
		for _, p := range probs {
			if p.File == "" {
				msgs = append(msgs, "--secret: "+p.Msg)
			} else {
				msgs = append(msgs, fmt.Sprintf("--template %s: %s", p.File, p.Msg))
			}
		}
		return &InvalidError{Problems: msgs}
	}
	if c.Hub != "" {
		if c.Mode != ModeSidecar {
			return fmt.Errorf("--hub is only for sidecar mode (an init agent reads once and never watches)")
		}
		if err := CheckHubURL(c.Hub); err != nil {
			return fmt.Errorf("--hub %q: %w", c.Hub, err)
		}
	}
	if !c.OnChange.IsZero() {
		switch {
		case c.Mode != ModeSidecar:
			return fmt.Errorf("--on-change is only for sidecar mode (an init agent writes one set and exits)")
		case c.OnChange.Kind == OnChangeRestart && c.Hub == "":
			return fmt.Errorf("--on-change=restart needs --hub: the agent reports each new set to the version hub, whose restart controller restarts the pod's owner")
		}
	}
	if c.Mode == ModeSidecar && c.Rotation == 0 {
		c.Rotation = DefaultRotation
	}
	return nil
}

// LocalFlags are flags of the agent's command line that the webhook does not
// write (the agent's own, such as --termination-log). ParseArgs parses them on
// the same flag set as the webhook's.
type LocalFlags interface {
	// Register defines the flags on fs.
	Register(fs *flag.FlagSet)
	// Check checks their values once every flag is parsed; ParseArgs calls it
	// before Config.Validate.
	Check() error
}

// FlagError is a flag that the flag set refused (unknown, or a bad value):
// parsing stopped there, so the flags after it were not read. Its message is
// the flag package's.
type FlagError struct {
	Err error
}

// Error returns the flag package's message.
func (e *FlagError) Error() string { return e.Err.Error() }

// Unwrap returns the flag package's error (flag.ErrHelp for -help).
func (e *FlagError) Unwrap() error { return e.Err }

// ParseArgs reads an agent command line as Args writes it: the mode, then flags.
// local, when not nil, adds the agent's own flags to the same flag set. The
// result is checked by local's Check, then by Validate; errors name the
// argument at fault, and a flag the flag set refuses is a *FlagError. The
// returned Config holds what was parsed, even with an error.
func ParseArgs(args []string, local LocalFlags) (Config, error) {
	var c Config
	if len(args) == 0 {
		return c, c.Validate()
	}
	c.Mode = args[0]
	fs := flag.NewFlagSet("kvinject-agent "+c.Mode, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if local != nil {
		local.Register(fs)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return c, &FlagError{Err: err}
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %s", strconv.Quote(fs.Arg(0)))
	}
	if local != nil {
		if err := local.Check(); err != nil {
			return c, err
		}
	}
	return c, c.Validate()
}

// IsFlagError reports whether err is (or wraps) a *FlagError.
func IsFlagError(err error) bool {
	var fe *FlagError
	return errors.As(err, &fe)
}

// CheckHubURL checks the version hub's URL (--hub, and the webhook's
// --hub-url): https, a host, no user, path or query.
func CheckHubURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("must be an https URL with no path, such as https://kvinject-hub.kvinject-system.svc")
	}
	return nil
}

// ParseFileMode parses an octal mode such as 0440 (a leading 0o is allowed): the
// owner must be able to read, and nothing may be executable or beyond 0777.
func ParseFileMode(raw string) (uint32, error) {
	s := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(raw), "0o"), "0O")
	m, err := strconv.ParseUint(s, 8, 32)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not an octal mode such as 0440", raw)
	case m > 0o777:
		return 0, fmt.Errorf("%q has bits beyond 0777 (setuid, setgid, sticky are not allowed)", raw)
	case m&0o400 == 0:
		return 0, fmt.Errorf("%q must let the owner read (0400)", raw)
	case m&0o111 != 0:
		return 0, fmt.Errorf("%q must not make secrets executable", raw)
	}
	return uint32(m), nil
}

// resolveVaults resolves the entries' own vaults (Entry.Vault) in the cloud
// of --vault, to canonical URLs; one that is --vault's becomes "".
func (c *Config) resolveVaults() error {
	for i, e := range c.Entries {
		if e.Vault == "" {
			continue
		}
		cloud, main, ok := CloudOfVault(c.VaultURL)
		if !ok {
			return fmt.Errorf("--secret %q: vault= needs --vault to be a Key Vault URL of a known cloud, not %q", e.String(), c.VaultURL)
		}
		v, err := ResolveEntryVault(e.Vault, cloud, main)
		if err != nil {
			return fmt.Errorf("--secret %q: %v", e.String(), err)
		}
		c.Entries[i].Vault = v
	}
	return nil
}

// VaultOf returns the URL of the vault that entry e reads: its own (after
// Validate, a canonical URL) or --vault.
func (c Config) VaultOf(e Entry) string {
	if e.Vault != "" {
		return e.Vault
	}
	return c.VaultURL
}

// Vaults returns the vaults the agent reads: --vault first, then the
// entries' own vaults in mapping order, each once.
func (c Config) Vaults() []string {
	vs := []string{c.VaultURL}
	for _, e := range c.Entries {
		if v := c.VaultOf(e); !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	return vs
}
