package agentconfig

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestArgsRoundTrip(t *testing.T) {
	entries := []Entry{{File: "connectionstring.txt", Name: "DATABASE-CONNECTION-STRING"}, {File: "db/api", Name: "API-KEY", Version: "4387e9f3d6e14c459867679a90fd0f79"}}
	for _, c := range []Config{
		{Mode: ModeInit, VaultURL: "https://myvault.vault.azure.net/", Entries: entries, Dir: "/var/run/kvinject/secrets", FileMode: 0o440, Identity: IdentityWorkload},
		{Mode: ModeSidecar, VaultURL: "https://v.vault.azure.cn/", Entries: entries[:1], Dir: "/s", FileMode: 0o444, Rotation: 90 * time.Second, Identity: IdentitySystem},
		{Mode: ModeSidecar, VaultURL: "https://v.vault.azure.net/", Entries: entries, Dir: "/s", FileMode: 0o444, Rotation: 2 * time.Minute, Identity: IdentityWorkload, Hub: "https://kvinject-hub.kvinject-system.svc"},
		{Mode: ModeProbe, Dir: "/s"},
	} {
		got, err := ParseArgs(c.Args(), nil)
		if err != nil {
			t.Fatalf("ParseArgs(%q): %v", c.Args(), err)
		}
		if c.Mode == ModeProbe {
			c.FileMode = ModeWorldReadable
		}
		if d := cmp.Diff(c, got); d != "" {
			t.Errorf("round trip of %q (-want +got):\n%s", c.Args(), d)
		}
	}
}

func TestParseArgsErrors(t *testing.T) {
	ok := []string{"--dir=/d", "--vault=https://v.vault.azure.net/", "--identity=workload", "--secret=a=B"}
	tests := []struct {
		args []string
		want string
	}{
		{nil, `mode "": the first argument must be init, sidecar or probe`},
		{append([]string{"run"}, ok...), `mode "run"`},
		{[]string{"init", "--dir=d"}, `--dir "d" must be a clean absolute path`},
		{[]string{"init", "--dir=/d/"}, "clean absolute path"},
		{[]string{"init", "--dir=/d", "--identity=workload", "--secret=a=B"}, "--vault"},
		{[]string{"init", "--dir=/d", "--vault=http://v/", "--identity=workload", "--secret=a=B"}, "must be an https URL"},
		{[]string{"init", "--dir=/d", "--vault=https://v/", "--secret=a=B"}, "--identity is required"},
		{[]string{"init", "--dir=/d", "--vault=https://v/", "--identity=pod"}, `"pod": use workload`},
		{[]string{"init", "--dir=/d", "--vault=https://v/", "--identity=system"}, "no --secret given"},
		{append([]string{"init", "--secret=a=C"}, ok...), `file "a" is already used by entry "a=C"`},
		{append([]string{"init", "--secret=../x=C"}, ok...), "must not start with '..'"},
		{append([]string{"init", "--file-mode=999"}, ok...), "not an octal mode"},
		{append([]string{"sidecar", "--rotation=fast"}, ok...), "not a positive duration"},
		{append([]string{"init", "--bogus"}, ok...), "flag provided but not defined: -bogus"},
		{append([]string{"init", "--hub=https://hub"}, ok...), "--hub is only for sidecar mode"},
		{append([]string{"sidecar", "--hub=http://hub"}, ok...), `--hub "http://hub": must be an https URL with no path`},
		{append([]string{"sidecar", "--hub=https://hub/v1/watch"}, ok...), "must be an https URL with no path"},
		{append([]string{"sidecar", "--hub=https://u:p@hub"}, ok...), "must be an https URL with no path"},
		{append(append([]string{"init"}, ok...), "extra"), `unexpected argument "extra"`},
		{append([]string{"init", "--secret=b=B;vault=other"}, "--dir=/d", "--vault=https://127.0.0.1:8443/", "--identity=workload"), `vault= needs --vault to be a Key Vault URL of a known cloud`},
		{[]string{"init", "--dir=/d", "--vault=https://main.vault.azure.net/", "--identity=workload", "--secret=b=B;vault=https://other.vault.azure.cn/"}, "vault https://other.vault.azure.cn/ is in AzureChinaCloud, but the pod's vault is in AzurePublicCloud"},
	}
	for _, tt := range tests {
		_, err := ParseArgs(tt.args, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseArgs(%q) = %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestSidecarDefaultRotation(t *testing.T) {
	c, err := ParseArgs([]string{"sidecar", "--dir=/d", "--vault=https://v.vault.azure.net/", "--identity=system", "--secret=a=B"}, nil)
	if err != nil || c.Rotation != DefaultRotation {
		t.Errorf("rotation = %v, %v; want %v", c.Rotation, err, DefaultRotation)
	}
}

func TestArgsTemplates(t *testing.T) {
	c := Config{
		Mode: ModeInit, VaultURL: "https://v.vault.azure.net/", Dir: "/s", FileMode: 0o440, Identity: IdentityWorkload,
		Entries: []Entry{{File: "db/password", Name: "DB-PASSWORD", NoFile: true}, {File: "host", Name: "HOST"}},
		Templates: []Template{
			{File: "app.json", Text: "{\n  \"url\": \"{{ file `host` }}\",\n  \"pw\": {{ file \"db/password\" | jsonQuote }}\n}\n"},
			{File: ".env", Mode: 0o400, Text: `PW={{ secret "DB-PASSWORD" | base64 }}`},
		},
	}
	got, err := ParseArgs(c.Args(), nil)
	if err != nil {
		t.Fatalf("ParseArgs(%q): %v", c.Args(), err)
	}
	if d := cmp.Diff(c, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	ok := []string{"init", "--dir=/d", "--vault=https://v.vault.azure.net/", "--identity=workload", "--secret=a=B"}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{append(ok, `--template=t={{ file "b" }}`), `--template t: line 1, column 4: no entry of kvinject.dev/secrets writes the file "b"`},
		{append(ok, `--template=a={{ file "a" }}`), `--template a: the file "a" is already written by entry "a=B"`},
		{append(ok, "--secret=c=C;nofile"), `--secret: entry "c=C;nofile" has nofile, but no template reads it`},
		{append(ok, "--template=t;mode=0200=x"), "must let the owner read"},
		{append(ok, strings.Split(strings.Repeat("--template=t=x ", MaxTemplates+1), " ")[:MaxTemplates+1]...), "more than the limit of 16 templates"},
	} {
		_, err := ParseArgs(tt.args, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseArgs(...%q) = %v, want an error containing %q", tt.args[len(tt.args)-1], err, tt.want)
		}
	}
}

// TestEntryVaults: entries' own vaults are resolved in --vault's cloud, the
// pod's own vault becomes "", and Vaults lists each vault once, --vault first.
func TestEntryVaults(t *testing.T) {
	c, err := ParseArgs([]string{"sidecar", "--dir=/d", "--vault=https://main.vault.usgovcloudapi.net/", "--identity=workload",
		"--secret=a=A", "--secret=b=B;vault=Other", "--secret=c=cert:C;vault=https://other.vault.usgovcloudapi.net", "--secret=d=D;vault=main",
		"--secret=e=E;vault=https://third.vault.usgovcloudapi.net:443/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range c.Entries {
		got = append(got, e.Vault)
	}
	want := []string{"", "https://other.vault.usgovcloudapi.net/", "https://other.vault.usgovcloudapi.net/", "", "https://third.vault.usgovcloudapi.net/"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("entry vaults (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"https://main.vault.usgovcloudapi.net/", "https://other.vault.usgovcloudapi.net/", "https://third.vault.usgovcloudapi.net/"}, c.Vaults()); d != "" {
		t.Errorf("Vaults (-want +got):\n%s", d)
	}
	if v := c.VaultOf(c.Entries[0]); v != c.VaultURL {
		t.Errorf("VaultOf the first entry = %q, want --vault", v)
	}
	again, err := ParseArgs(c.Args(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(c, again); d != "" {
		t.Errorf("round trip (-first +second):\n%s", d)
	}
}
