// Command kvemulator runs the local Azure Key Vault and Azure AD emulator of
// internal/testing/emulator as a standalone process, for demos and scripts.
//
//	kvemulator --config emulator.json [--ca-out ca.pem] [--port 8443]
//
// It prints the listener's address, the path of the CA certificate it wrote, the admin
// token and an environment snippet for clients, then serves until SIGINT or SIGTERM.
//
// The emulator routes requests by host name: clients keep the real URLs
// (https://NAME.vault.azure.net/, https://login.microsoftonline.com/) and must connect to
// the printed address for those names, with a dial override (the agent's test option) or
// a resolver entry such as /etc/hosts together with --port 443. Requests addressed to
// https://127.0.0.1:PORT/ are served as Azure AD (AZURE_AUTHORITY_HOST, with instance
// discovery disabled) and as the App Service managed-identity endpoint
// (IDENTITY_ENDPOINT, IDENTITY_HEADER).
//
// The config file is JSON: an emulator.Config (vaults with secrets and grants,
// workloadIdentities, managedIdentities, systemIdentity) plus optional settings tenantId,
// port, latency ("20ms"), throttleLimit, throttleWindow ("10s"), adminToken and
// identityHeader. Flags override the settings. See emulator.example.json.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kvinject/kvinject/internal/testing/emulator"
)

// fileConfig is the format of the --config file.
type fileConfig struct {
	emulator.Config
	TenantID       string `json:"tenantId,omitempty"`
	Port           int    `json:"port,omitempty"`
	Latency        string `json:"latency,omitempty"`
	ThrottleLimit  int    `json:"throttleLimit,omitempty"`
	ThrottleWindow string `json:"throttleWindow,omitempty"`
	AdminToken     string `json:"adminToken,omitempty"`
	IdentityHeader string `json:"identityHeader,omitempty"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "kvemulator:", err)
		os.Exit(1)
	}
}

// run starts the emulator, prints how to reach it to stdout and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kvemulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath     = fs.String("config", "", "JSON config file (vaults, secrets, grants, identities, settings)")
		caOut          = fs.String("ca-out", "", "write the CA certificate (PEM) here; default: a file in a new temporary directory, removed on exit")
		port           = fs.Int("port", 0, "port on 127.0.0.1 (default: config, else a free port)")
		tenant         = fs.String("tenant", "", "default tenant ID (default: config, else "+emulator.DefaultTenantID+")")
		latency        = fs.Duration("latency", 0, "latency added to every Key Vault and Azure AD request")
		throttleLimit  = fs.Int("throttle-limit", 0, "secret reads per vault per window (default 4000; negative disables)")
		throttleWindow = fs.Duration("throttle-window", 0, "throttle window (default 10s)")
		adminToken     = fs.String("admin-token", "", "admin API token (default: config, else random)")
		identityHeader = fs.String("identity-header", "", "expected X-Identity-Header of the managed-identity endpoint (default: config, else random)")
		logFormat      = fs.String("log", "text", "request log on stderr: text, json or none")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	var fc fileConfig
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err != nil {
			return err
		}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&fc); err != nil {
			return fmt.Errorf("%s: %w", *configPath, err)
		}
	}
	opts := emulator.Options{
		TenantID:       firstNonEmpty(*tenant, fc.TenantID),
		Port:           firstNonZero(*port, fc.Port),
		ThrottleLimit:  firstNonZero(*throttleLimit, fc.ThrottleLimit),
		AdminToken:     firstNonEmpty(*adminToken, fc.AdminToken),
		IdentityHeader: firstNonEmpty(*identityHeader, fc.IdentityHeader),
		Latency:        *latency,
		ThrottleWindow: *throttleWindow,
	}
	if opts.Latency == 0 && fc.Latency != "" {
		d, err := time.ParseDuration(fc.Latency)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		opts.Latency = d
	}
	if opts.ThrottleWindow == 0 && fc.ThrottleWindow != "" {
		d, err := time.ParseDuration(fc.ThrottleWindow)
		if err != nil {
			return fmt.Errorf("throttleWindow: %w", err)
		}
		opts.ThrottleWindow = d
	}
	switch *logFormat {
	case "text":
		opts.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	case "json":
		opts.Logger = slog.New(slog.NewJSONHandler(stderr, nil))
	case "none":
	default:
		return fmt.Errorf("unknown --log %q", *logFormat)
	}

	e, err := emulator.Start(opts)
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.Apply(fc.Config); err != nil {
		return err
	}

	caPath := *caOut
	if caPath == "" {
		dir, err := os.MkdirTemp("", "kvemulator-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		caPath = filepath.Join(dir, "ca.pem")
	}
	if err := os.WriteFile(caPath, e.CAPEM(), 0o644); err != nil {
		return err
	}
	if abs, err := filepath.Abs(caPath); err == nil {
		caPath = abs
	}
	printInfo(stdout, e, caPath)

	<-ctx.Done()
	fmt.Fprintln(stderr, "kvemulator: stopping")
	return e.Close()
}

func printInfo(w io.Writer, e *emulator.Emulator, caPath string) {
	fmt.Fprintf(w, "kvemulator listening on %s\n", e.Addr())
	fmt.Fprintf(w, "CA certificate: %s\n", caPath)
	fmt.Fprintf(w, "admin token: %s (header %s, API under https://%s/_emulator/)\n", e.AdminToken(), emulator.AdminTokenHeader, e.Addr())
	for _, v := range e.Vaults() {
		u, _ := e.VaultURLOf(v)
		fmt.Fprintf(w, "vault: %s\n", u)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "# Clients must connect to %s for the vault and login.microsoftonline.com host names\n", e.Addr())
	fmt.Fprintln(w, "# (dial override, or /etc/hosts with --port 443).")
	for _, kv := range [][2]string{
		{"KVEMULATOR_ADDR", e.Addr()},
		{"KVEMULATOR_ADMIN_TOKEN", e.AdminToken()},
		{"SSL_CERT_FILE", caPath},
		{"AZURE_TENANT_ID", e.TenantID()},
		{"AZURE_AUTHORITY_HOST", e.AuthorityHost()},
		{"IDENTITY_ENDPOINT", e.MSIEndpoint()},
		{"IDENTITY_HEADER", e.IdentityHeader()},
	} {
		fmt.Fprintf(w, "export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func firstNonZero(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}
