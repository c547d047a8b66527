package doctor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Command is the agent's subcommand that runs Main.
const Command = "doctor"

// DefaultTimeout bounds a whole run.
const DefaultTimeout = time.Minute

// Main runs `kvinject-agent doctor` with the arguments after "doctor" and
// returns the exit code: 0 when every check passed, 1 when one failed, 2 for
// bad usage. The checklist goes to opts.Stdout.
//
// The identity comes from the agent's environment (AZURE_CLIENT_ID,
// AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST), which
// flags may override for runs outside a pod. The mapping is given as the
// agent gets it (--secret, repeated) or as the pod's annotation
// (--secrets). The agent's own arguments are accepted as they are, so that
// `doctor` can be put in front of an injected agent's command line.
func Main(ctx context.Context, args []string, opts Options) int {
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.Stderr == nil {
		opts.Stderr = os.Stderr
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	cfg, timeout, err := parseArgs(args, getenv, opts.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(opts.Stderr, "kvinject-agent %s: %v\nRun kvinject-agent %s --help for the flags.\n", Command, err, Command)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := Run(ctx, cfg, opts)
	r.Print(opts.Stdout)
	if r.Failed() > 0 {
		return 1
	}
	return 0
}

// parseArgs parses the doctor's command line into a Config.
func parseArgs(args []string, getenv func(string) string, stderr io.Writer) (Config, time.Duration, error) {
	var cfg Config
	// `doctor init --dir=... --vault=...`: the agent's command line with doctor in front.
	if len(args) > 0 && (args[0] == agentconfig.ModeInit || args[0] == agentconfig.ModeSidecar) {
		args = args[1:]
	}
	fs := flag.NewFlagSet("kvinject-agent "+Command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		vault, cloudName, identity       string
		clientID, tenantID, tokenFile    string
		authority, namespace, svcAccount string
		timeout                          time.Duration
		entries                          []agentconfig.Entry
	)
	fs.StringVar(&vault, agentconfig.FlagVault, "", "the vault: a name (in --cloud) or its https URL (required)")
	fs.StringVar(&cloudName, "cloud", "", "the cloud of a vault name, and of Azure AD when AZURE_AUTHORITY_HOST is unset: AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud (default: AZURE_AUTHORITY_HOST's, else AzurePublicCloud)")
	fs.Func(agentconfig.FlagSecret, "<file>=<secret-name>[@<version>] or <secret-name>, as the agent gets it (repeatable)", func(s string) error {
		e, err := agentconfig.ParseEntry(s)
		if err != nil {
			return err
		}
		entries = append(entries, e)
		return nil
	})
	fs.Func("secrets", "the mapping as in the pod's annotation "+agentconfig.AnnotationSecrets+", entries separated by commas or newlines", func(s string) error {
		es, err := agentconfig.ParseEntries(s)
		if err != nil {
			return err
		}
		entries = append(entries, es...)
		return nil
	})
	fs.StringVar(&identity, agentconfig.FlagIdentity, "", "workload, managed, managed:<client-id> or system (default: workload when AZURE_FEDERATED_TOKEN_FILE is set, else managed when AZURE_CLIENT_ID is)")
	fs.StringVar(&clientID, "client-id", "", "the identity's client ID (default $"+agentconfig.EnvClientID+")")
	fs.StringVar(&tenantID, "tenant-id", "", "the identity's tenant (default $"+agentconfig.EnvTenantID+")")
	fs.StringVar(&tokenFile, "token-file", "", "workload identity: the service account token, e.g. from kubectl create token <sa> --audience api://AzureADTokenExchange (default $"+agentconfig.EnvTokenFile+")")
	fs.StringVar(&authority, "authority-host", "", "Azure AD, e.g. https://login.microsoftonline.com/ (default $"+agentconfig.EnvAuthorityHost+")")
	fs.StringVar(&namespace, "namespace", "", "the pod's namespace, for the federated credential's subject (default $"+agentconfig.EnvPodNamespace+", else the token's subject)")
	fs.StringVar(&svcAccount, "service-account", "", "the pod's ServiceAccount, for the federated credential's subject (default $"+agentconfig.EnvServiceAccount+", else the token's subject)")
	fs.BoolVar(&cfg.CheckList, "list", false, "also check that the identity may list each secret's versions (permission 'list', RBAC secrets/readMetadata/action)")
	fs.DurationVar(&timeout, "timeout", DefaultTimeout, "bound on the whole run")
	fs.StringVar(&cfg.OnChange, agentconfig.FlagOnChange, "", "the action after each new set, as the agent gets it (http:<port><path>[;<option>...] or restart): checked without running it")
	fs.StringVar(&cfg.Hub, agentconfig.FlagHub, "", "the version hub's URL, as the agent gets it (with --on-change=restart)")
	// The agent's other flags (agent.Flags: the webhook's and the agent's own),
	// accepted and ignored.
	agent.Flags().VisitAll(func(f *flag.Flag) {
		if fs.Lookup(f.Name) != nil {
			return
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			fs.Bool(f.Name, false, "ignored (an argument of the agent)")
			return
		}
		fs.String(f.Name, "", "ignored (an argument of the agent)")
	})
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: kvinject-agent %s --vault=<name|url> --secret=<file>=<secret> ... | --secrets='<annotation value>' [flags]\n\n"+
			"Checks the agent's identity, a token, and each secret (get, and list when needed), and prints\n"+
			"a checklist with the fix of each failure. Secret values are never printed.\n"+
			"Exit code: 0 all checks passed, 1 a check failed, 2 bad usage.\n\nFlags:\n", Command)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, 0, err
	}
	if fs.NArg() > 0 {
		return cfg, 0, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if timeout <= 0 {
		return cfg, 0, fmt.Errorf("--timeout %s: must be positive", timeout)
	}

	env := agent.ReadEnv(getenv)
	override := func(dst *string, v string) {
		if v = strings.TrimSpace(v); v != "" {
			*dst = v
		}
	}
	override(&env.ClientID, clientID)
	override(&env.TenantID, tenantID)
	override(&env.TokenFile, tokenFile)
	override(&env.AuthorityHost, authority)
	override(&env.PodNamespace, namespace)
	override(&env.ServiceAccount, svcAccount)

	cloud := agentconfig.AzurePublicCloud
	if cloudName != "" {
		c, err := agentconfig.ParseCloud(cloudName)
		if err != nil {
			return cfg, 0, fmt.Errorf("--cloud: %w", err)
		}
		cloud = c
		if env.AuthorityHost == "" {
			env.AuthorityHost = c.AuthorityHost
		}
	} else if c, known := agentconfig.CloudOfAuthority(env.AuthorityHost); known {
		cloud = c
	}

	if vault == "" {
		return cfg, 0, errors.New("--vault is required: the vault's name or https URL")
	}
	var err error
	if cfg.VaultURL, err = vaultURL(vault, cloud); err != nil {
		return cfg, 0, fmt.Errorf("--vault: %w", err)
	}
	if len(entries) == 0 {
		return cfg, 0, errors.New("no secrets: give --secret=<file>=<secret-name> (repeatable) or --secrets='<the " + agentconfig.AnnotationSecrets + " annotation>'")
	}
	cfg.Entries = entries

	switch {
	case identity == "" && env.TokenFile != "":
		cfg.Identity = agentconfig.IdentityWorkload
	case identity == "" && env.ClientID != "":
		cfg.Identity = agentconfig.IdentityManaged
	case identity == "":
		return cfg, 0, fmt.Errorf("--identity is required: neither %s nor %s is set (workload, managed, managed:<client-id> or system)", agentconfig.EnvTokenFile, agentconfig.EnvClientID)
	default:
		kind, id, err := agentconfig.ParseIdentity(identity)
		if err != nil {
			return cfg, 0, fmt.Errorf("--identity %w", err)
		}
		cfg.Identity = kind
		override(&env.ClientID, id)
	}
	cfg.Env = env
	return cfg, timeout, nil
}

// vaultURL resolves a vault name in cloud, or a vault URL in whichever cloud
// it belongs to (the cloud check then compares it with Azure AD's).
func vaultURL(v string, cloud agentconfig.Cloud) (string, error) {
	u, err := agentconfig.VaultURL(v, cloud)
	if err == nil {
		return u, nil
	}
	if strings.Contains(v, "/") {
		if _, u, ok := agentconfig.CloudOfVault(v); ok {
			return u, nil
		}
	}
	return "", err
}
