package mapping

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// Agent modes: the first argument of the agent's command line.
const (
	// AgentModeInit fetches every secret once, writes the set and exits.
	AgentModeInit = "init"
	// AgentModeSidecar fetches, writes, then keeps polling and swaps in changes.
	AgentModeSidecar = "sidecar"
	// AgentModeProbe exits 0 once a complete set is written (the startup probe).
	AgentModeProbe = "probe"
)

// AgentConfig is what the webhook tells the agent on its command line. Args and
// ParseAgentArgs are the only writer and reader of that format.
type AgentConfig struct {
	Mode     string
	VaultURL string
	Entries  []Entry
	// Dir is the directory of the in-memory volume inside the agent container.
	Dir      string
	FileMode uint32
	// Rotation is the polling interval of sidecar mode.
	Rotation time.Duration
	Identity IdentityKind
}

// Args renders the configuration as the agent's arguments.
func (c AgentConfig) Args() []string {
	args := []string{c.Mode, "--dir=" + c.Dir}
	if c.Mode == AgentModeProbe {
		return args
	}
	args = append(args,
		"--vault="+c.VaultURL,
		"--identity="+string(c.Identity),
		fmt.Sprintf("--file-mode=%04o", c.FileMode),
	)
	if c.Mode == AgentModeSidecar {
		args = append(args, "--rotation="+c.Rotation.String())
	}
	for _, e := range c.Entries {
		args = append(args, "--secret="+e.String())
	}
	return args
}

// RegisterFlags defines the webhook-written flags on fs, storing into c. The agent
// adds its own local flags to the same set.
func (c *AgentConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Dir, "dir", "", "directory of the in-memory secrets volume")
	fs.StringVar(&c.VaultURL, "vault", "", "vault URL, e.g. https://myvault.vault.azure.net/")
	fs.Func("identity", "identity kind: workload, managed or system", func(s string) error {
		switch k := IdentityKind(s); k {
		case IdentityWorkload, IdentityManaged, IdentitySystem:
			c.Identity = k
			return nil
		}
		return fmt.Errorf("%q: use workload, managed or system", s)
	})
	c.FileMode = ModeWorldReadable
	fs.Func("file-mode", "octal mode of the files (default 0444)", func(s string) (err error) {
		c.FileMode, err = parseFileMode(s)
		return err
	})
	fs.Func("rotation", "polling interval in sidecar mode (default 2m)", func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return fmt.Errorf("%q is not a positive duration such as 2m", s)
		}
		c.Rotation = d
		return nil
	})
	fs.Func("secret", "an entry of the mapping, <file>=[<kind>:]<name>[@<version>][;<option>...]; repeat for each entry", func(s string) error {
		e, err := ParseEntry(s)
		if err != nil {
			return err
		}
		c.Entries = append(c.Entries, e)
		return nil
	})
}

// Validate checks a parsed configuration, naming the flag at fault.
func (c *AgentConfig) Validate() error {
	switch c.Mode {
	case AgentModeInit, AgentModeSidecar, AgentModeProbe:
	default:
		return fmt.Errorf("mode %q: the first argument must be %s, %s or %s", c.Mode, AgentModeInit, AgentModeSidecar, AgentModeProbe)
	}
	if c.Dir == "" || !path.IsAbs(c.Dir) || path.Clean(c.Dir) != c.Dir {
		return fmt.Errorf("--dir %q must be a clean absolute path", c.Dir)
	}
	if c.Mode == AgentModeProbe {
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
	if c.Mode == AgentModeSidecar && c.Rotation == 0 {
		c.Rotation = DefaultRotation
	}
	return nil
}

// ParseAgentArgs parses an agent command line (mode first, then flags) on a fresh
// flag set; the agent itself uses RegisterFlags to add local flags.
func ParseAgentArgs(args []string) (AgentConfig, error) {
	var c AgentConfig
	if len(args) == 0 {
		return c, fmt.Errorf("missing mode: the first argument must be %s, %s or %s", AgentModeInit, AgentModeSidecar, AgentModeProbe)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	c.Mode = args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %s", strconv.Quote(fs.Arg(0)))
	}
	return c, c.Validate()
}
