package agentconfig

import (
	"bytes"
	"errors"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The fuzz targets check the parsers against oracles written independently of the
// product's own validators: a regression in a validator shows up as an accepted
// input that breaks a rule below.
var (
	fuzzSecretNameRE = regexp.MustCompile(`^[0-9A-Za-z-]{1,127}$`)
	fuzzVersionRE    = regexp.MustCompile(`^[0-9a-f]{32}$`)
	fuzzFileCharsRE  = regexp.MustCompile(`^[A-Za-z0-9._/-]+$`)
	fuzzVaultNameRE  = regexp.MustCompile(`^[a-z][a-z0-9-]{1,22}[a-z0-9]$`)
)

// checkFuzzEntries fails t if accepted entries break the mapping's rules.
func checkFuzzEntries(t *testing.T, entries []Entry) {
	t.Helper()
	if len(entries) == 0 || len(entries) > maxEntries {
		t.Fatalf("accepted %d entries, want 1-%d", len(entries), maxEntries)
	}
	// paths maps every path an entry writes to whether it is a directory whose
	// content is only known at run time (history, JSON).
	paths := map[string]bool{}
	for _, e := range entries {
		f := e.File
		switch {
		case !fuzzFileCharsRE.MatchString(f):
			t.Errorf("entry %+v: file has characters outside [A-Za-z0-9._-/]", e)
		case strings.HasPrefix(f, "/"):
			t.Errorf("entry %+v: file is absolute", e)
		case len(f) > maxFileLen:
			t.Errorf("entry %+v: file is longer than %d", e, maxFileLen)
		}
		for _, seg := range strings.Split(f, "/") {
			if seg == "" || seg == "." || strings.HasPrefix(seg, "..") {
				t.Errorf("entry %+v: file has the segment %q", e, seg)
			}
		}
		if !fuzzSecretNameRE.MatchString(e.Name) {
			t.Errorf("entry %+v: name is not 1-127 of [0-9A-Za-z-]", e)
		}
		if e.Version != "" && !fuzzVersionRE.MatchString(e.Version) {
			t.Errorf("entry %+v: version is neither empty nor 32 lowercase hex digits", e)
		}
		checkFuzzTyped(t, e)
		dir := e.History > 0 || e.Format == FormatJSON
		var mine []string
		switch {
		case dir:
			mine = []string{f}
		case e.Split:
			mine = []string{f + ".key", f + ".crt"}
		default:
			mine = []string{f}
		}
		for _, p := range mine {
			if _, dup := paths[p]; dup {
				t.Errorf("file %q is used twice", p)
			}
			paths[p] = dir
		}
	}
	// No path is inside a file, or inside the directory of a history or JSON entry.
	for p := range paths {
		for i := range len(p) {
			if p[i] != '/' {
				continue
			}
			if isDir, ok := paths[p[:i]]; ok {
				t.Errorf("%q (directory: %v) also holds %q", p[:i], isDir, p)
			}
		}
	}
}

// checkFuzzTyped checks the typed fields of an accepted entry: known values
// only, and only the combinations docs/contract.md documents.
func checkFuzzTyped(t *testing.T, e Entry) {
	t.Helper()
	switch e.Type {
	case "", ObjectSecret:
		if e.Split && e.Format != FormatPEM {
			t.Errorf("entry %+v: split without format=pem", e)
		}
		if e.Encoding != "" && e.Format != "" {
			t.Errorf("entry %+v: encoding with a format", e)
		}
	case ObjectCert, ObjectKey:
		if (e.Format != "" && e.Format != FormatPEM) || e.Split || e.Encoding != "" || e.History != 0 {
			t.Errorf("entry %+v: a %s entry with secret options", e, e.Type)
		}
	default:
		t.Errorf("entry %+v: unknown type", e)
	}
	switch e.Format {
	case "", FormatPEM, FormatPFX, FormatJSON:
	default:
		t.Errorf("entry %+v: unknown format", e)
	}
	switch e.Encoding {
	case "", EncodingBase64, EncodingHex:
	default:
		t.Errorf("entry %+v: unknown encoding", e)
	}
	if e.History < 0 || e.History > MaxHistory || (e.History > 0 && e.Version != "") {
		t.Errorf("entry %+v: history out of range or with a pinned version", e)
	}
	if e.Optional && e.Version != "" {
		t.Errorf("entry %+v: optional with a pinned version", e)
	}
	if e.Mode != 0 && (e.Mode&0o400 == 0 || e.Mode&^0o666 != 0) {
		t.Errorf("entry %+v: mode %04o", e, e.Mode)
	}
	if e.History > 0 {
		// The longest version file must fit: <file>/<History-1>[.crt].
		longest := e.File + "/" + strconv.Itoa(e.History-1)
		if e.Split {
			longest += ".crt"
		}
		if len(longest) > maxFileLen {
			t.Errorf("entry %+v: writes %q, longer than %d", e, longest, maxFileLen)
		}
	}
	if e.Split && e.History == 0 && len(e.File)+len(".crt") > maxFileLen {
		t.Errorf("entry %+v: writes %q.crt, longer than %d", e, e.File, maxFileLen)
	}
}

func joinEntries(entries []Entry) string {
	parts := make([]string, len(entries))
	for i, e := range entries {
		parts[i] = e.String()
	}
	return strings.Join(parts, ",")
}

func FuzzParseEntries(f *testing.F) {
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	for _, s := range []string{
		"connectionstring.txt=DATABASE-CONNECTION-STRING, apikey.txt=API-KEY",
		"a.txt=A",
		"API-KEY",
		"API-KEY@" + strings.ToUpper(v),
		"db/password=DB-PASSWORD@" + v,
		"a=A\nb=B\r\nc/d/e.f_g-h=C",
		" , ,\n a = A ,",
		"db=A,db/password=B",
		"a=A,a=B",
		"../x=A",
		"x/..data=A",
		"./x=A",
		"x//y=A",
		"/abs=A",
		"cert=certificate:mycert;format=pem",
		"tls=secret:web-cert;format=pem;split",
		"tls=secret:web-cert;format=pem;split,tls.key=x",
		"ca.crt=cert:web-cert",
		"ca.crt=cert:web-cert@" + v + ";format=pem",
		"signing.pub=key:signing-key",
		"blob.bin=secret:blob;encoding=base64",
		"hex=blob;encoding=hex;mode=0400",
		"db=secret:db-pass;history=3",
		"db=secret:db-pass;history=3,db/0=x",
		"cfg=secret:app-config;format=json",
		"cfg=secret:app-config;format=json,cfg/a=x",
		"h=secret:c;format=pem;split;history=2;mode=0440",
		"f=secret:flag;optional,g=cert:c;optional;mode=0400",
		"a=B;vault=OtherVault,b=B;vault=https://other.vault.azure.cn,c=B",
		"a=B;vault=https://x.example.com/;optional",
		"a=B@" + v + ";optional",
		" t = Secret:c ; FORMAT = Pfx ; mode = 0o600 ",
		"a=cert:B;split",
		"a=B;history=2@" + v,
		"a=B@" + v + ";history=2",
		"a=B;;",
		"a=key:B:C",
		"cert:web",
		"web;format=json",
		strings.Repeat("a", 249) + "=B;history=16",
		"a=A@",
		"a=A@xyz",
		"=A",
		"a=",
		"a=b=c",
		"ü=A",
		strings.Repeat("a", 254) + "=A",
		strings.Repeat("a", 253) + "=" + strings.Repeat("B", 127),
		strings.Repeat("x=X,", 257),
		"",
		"\x00=A",
		"a.=A",
		"...=A",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := ParseEntries(s)
		if err != nil {
			if entries != nil {
				t.Errorf("ParseEntries(%q) returned entries %+v with the error %v", s, entries, err)
			}
			if err.Error() == "" {
				t.Errorf("ParseEntries(%q): empty error message", s)
			}
			return
		}
		checkFuzzEntries(t, entries)
		canon := joinEntries(entries)
		again, err := ParseEntries(canon)
		if err != nil {
			t.Fatalf("ParseEntries(%q) accepted, but its canonical form %q is refused: %v", s, canon, err)
		}
		if d := cmp.Diff(entries, again); d != "" {
			t.Errorf("re-parsing the canonical form %q of %q differs (-first +second):\n%s", canon, s, d)
		}
		for _, e := range entries {
			one, err := ParseEntry(e.String())
			if err != nil || one != e {
				t.Errorf("ParseEntry(%q) = %+v, %v; want %+v", e.String(), one, err, e)
			}
		}
	})
}

// fuzzAgentArgs builds an agent command line; empty values leave their flag out
// and secrets holds one --secret per comma- or newline-separated part.
func fuzzAgentArgs(mode, dir, vault, identity, secrets, fileMode, rotation, hub, onChange string) []string {
	args := []string{mode}
	for _, fl := range []struct{ name, value string }{
		{"dir", dir}, {"vault", vault}, {"identity", identity}, {"file-mode", fileMode}, {"rotation", rotation},
		{"hub", hub}, {"on-change", onChange},
	} {
		if fl.value != "" {
			args = append(args, "--"+fl.name+"="+fl.value)
		}
	}
	for _, s := range strings.FieldsFunc(secrets, func(r rune) bool { return r == ',' || r == '\n' }) {
		args = append(args, "--secret="+s)
	}
	return args
}

// canonicalConfig is what Args can express of c: probe mode carries only the
// directory, and init mode has no polling interval.
func canonicalConfig(c Config) Config {
	switch c.Mode {
	case ModeProbe:
		return Config{Mode: c.Mode, Dir: c.Dir, FileMode: ModeWorldReadable}
	case ModeInit:
		c.Rotation = 0
	}
	return c
}

func FuzzAgentArgs(f *testing.F) {
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	type seed struct{ mode, dir, vault, identity, secrets, fileMode, rotation, hub, onChange string }
	for _, s := range []seed{
		{"init", "/var/run/kvinject/secrets", "https://myvault.vault.azure.net/", "workload", "connectionstring.txt=DATABASE-CONNECTION-STRING,db/api=API-KEY@" + v, "0440", "", "", ""},
		{"sidecar", "/s", "https://v.vault.azure.cn/", "system", "a=A", "0444", "90s", "", ""},
		{"sidecar", "/s", "https://v.vault.usgovcloudapi.net/", "managed", "a=A\nb=B", "", "", "", ""},
		{"sidecar", "/s", "https://v/", "managed", "a=A", "0o600", "1h2m3.5s", "", ""},
		{"sidecar", "/s", "https://v/", "managed", "a=A", "600", "1.5us", "", ""},
		{"init", "/s", "https://v/", "workload", "a=A", "", "5m", "", ""},
		{"probe", "/var/run/kvinject/secrets", "", "", "", "", "", "", ""},
		{"probe", "/d", "http://x", "pod", "../a=B", "0440", "1m", "", ""},
		{"init", "/d/", "https://v/", "workload", "a=A", "", "", "", ""},
		{"init", "/d", "http://v/", "workload", "a=A", "", "", "", ""},
		{"init", "/d", "https://v/", "workload", "a=A,a=B", "", "", "", ""},
		{"init", "/d", "https://v/", "workload", "a=A,a/b=B", "", "", "", ""},
		{"init", "/d", "https://v/", "workload", "a=A", "999", "", "", ""},
		{"sidecar", "/d", "https://v/", "workload", "a=A", "", "0s", "", ""},
		{"sidecar", "/d", "https://v/", "workload", "a=A", "", "-1m", "", ""},
		{"run", "/d", "https://v/", "workload", "a=A", "", "", "", ""},
		{"", "", "", "", "", "", "", "", ""},
		{"sidecar", "/s", "https://v/", "system", "a=A", "", "", "", "http:8080/-/reload"},
		{"sidecar", "/s", "https://v/", "system", "a=A", "", "", "", "HTTP:9090/r?x=1 ; method=put;timeout=1500ms;retries=0"},
		{"sidecar", "/s", "https://v/", "system", "a=A", "", "", "https://kvinject-hub.kvinject-system.svc", "restart"},
		{"sidecar", "/s", "https://v/", "system", "a=A", "", "", "", "restart"},
		{"init", "/s", "https://v/", "system", "a=A", "", "", "", "http:8080/-/reload"},
		{"sidecar", "/s", "https://v/", "system", "a=A", "", "", "", "http:8080/r#x"},
		{"sidecar", "/d", "https://main.vault.azure.net/", "workload", "a=A;vault=other,b=B;vault=https://main.vault.azure.net,c=C;vault=https://x1.vault.azure.cn/", "", "", "", ""},
		{"init", "/d", "https://v/", "workload", "a=A;vault=other", "", "", "", ""},
	} {
		f.Add(s.mode, s.dir, s.vault, s.identity, s.secrets, s.fileMode, s.rotation, s.hub, s.onChange)
	}
	f.Fuzz(func(t *testing.T, mode, dir, vault, identity, secrets, fileMode, rotation, hub, onChange string) {
		args := fuzzAgentArgs(mode, dir, vault, identity, secrets, fileMode, rotation, hub, onChange)
		cfg, err := ParseArgs(args, nil)
		if err != nil {
			return
		}
		switch cfg.Mode {
		case ModeInit, ModeSidecar, ModeProbe:
		default:
			t.Fatalf("ParseArgs(%q) accepted the mode %q", args, cfg.Mode)
		}
		if !strings.HasPrefix(cfg.Dir, "/") {
			t.Errorf("ParseArgs(%q) accepted the relative dir %q", args, cfg.Dir)
		}
		if cfg.Mode != ModeProbe {
			checkFuzzEntries(t, cfg.Entries)
			if u, err := url.Parse(cfg.VaultURL); err != nil || u.Scheme != "https" || u.Host == "" {
				t.Errorf("ParseArgs(%q) accepted the vault %q", args, cfg.VaultURL)
			}
			if cfg.FileMode&0o400 == 0 || cfg.FileMode&^0o666 != 0 {
				t.Errorf("ParseArgs(%q) accepted the file mode %04o", args, cfg.FileMode)
			}
			if cfg.Mode == ModeSidecar && cfg.Rotation <= 0 {
				t.Errorf("ParseArgs(%q): sidecar rotation %v", args, cfg.Rotation)
			}
			if !cfg.OnChange.IsZero() && (cfg.Mode != ModeSidecar || cfg.OnChange.Kind == OnChangeRestart && cfg.Hub == "") {
				t.Errorf("ParseArgs(%q) accepted --on-change=%s in mode %s with --hub=%q", args, cfg.OnChange, cfg.Mode, cfg.Hub)
			}
			for _, e := range cfg.Entries {
				if e.Vault == "" {
					continue
				}
				cloud, canon, ok := CloudOfVault(e.Vault)
				mainCloud, main, _ := CloudOfVault(cfg.VaultURL)
				if !ok || canon != e.Vault || cloud != mainCloud || e.Vault == main {
					t.Errorf("ParseArgs(%q): entry %q reads vault %q, not a canonical URL of --vault's cloud other than --vault", args, e.File, e.Vault)
				}
			}
		}

		rendered := cfg.Args()
		got, err := ParseArgs(rendered, nil)
		if err != nil {
			t.Fatalf("ParseArgs(%q) accepted, but its rendering %q is refused: %v", args, rendered, err)
		}
		if d := cmp.Diff(canonicalConfig(cfg), got); d != "" {
			t.Errorf("round trip of %q through %q (-first +second):\n%s", args, rendered, d)
		}
		if again := got.Args(); !cmp.Equal(rendered, again) {
			t.Errorf("Args is not a fixed point: %q, then %q", rendered, again)
		}
	})
}

func FuzzVaultURL(f *testing.F) {
	for _, s := range []struct {
		v     string
		cloud uint8
	}{
		{"myvault", 0},
		{"MyVault-01", 1},
		{"kv", 0},
		{"a-", 0},
		{"a--b", 0},
		{"1vault", 0},
		{strings.Repeat("a", 24), 2},
		{strings.Repeat("a", 25), 2},
		{"https://myvault.vault.azure.net/", 0},
		{"https://MyVault.Vault.Azure.Net", 0},
		{"https://myvault.vault.azure.net:443/", 0},
		{"https://myvault.vault.azure.net:8443/", 0},
		{"https://myvault.vault.azure.cn/", 0},
		{"https://myvault.vault.azure.cn/", 2},
		{"https://myvault.vault.usgovcloudapi.net/", 1},
		{"https://myvault.vault.azure.net/secrets", 0},
		{"https://myvault.vault.azure.net/?x=1", 0},
		{"https://myvault.vault.azure.net/?", 0},
		{"https://myvault.vault.azure.net/#f", 0},
		{"https://user@myvault.vault.azure.net/", 0},
		{"http://myvault.vault.azure.net/", 0},
		{"https://a.b.vault.azure.net/", 0},
		{"https://my%76ault.vault.azure.net/", 0},
		{"https://[myvault.vault.azure.net]/", 0},
		{"myvault.vault.azure.net", 0},
		{"https:myvault.vault.azure.net", 0},
		{"//myvault.vault.azure.net/", 0},
		{"", 0},
	} {
		f.Add(s.v, s.cloud)
	}
	f.Fuzz(func(t *testing.T, v string, cloudIndex uint8) {
		cloud := clouds[int(cloudIndex)%len(clouds)]
		got, err := VaultURL(v, cloud)
		if err != nil {
			if got != "" {
				t.Errorf("VaultURL(%q, %s) = %q with the error %v", v, cloud.Name, got, err)
			}
			return
		}
		prefix, suffix := "https://", "."+cloud.VaultSuffix+"/"
		name, ok := strings.CutPrefix(got, prefix)
		if ok {
			name, ok = strings.CutSuffix(name, suffix)
		}
		if !ok || !fuzzVaultNameRE.MatchString(name) || strings.Contains(name, "--") {
			t.Fatalf("VaultURL(%q, %s) = %q, want https://<vault-name>%s with a valid lowercase name", v, cloud.Name, got, suffix)
		}
		// The result names the vault the input named: the input's name, or its URL's
		// host, lowercased (ASCII only: no other character may turn into a letter).
		want := ""
		if !strings.ContainsAny(v, "/:") {
			want = prefix + asciiLower(v) + suffix
		} else if u, err := url.Parse(v); err == nil {
			want = prefix + asciiLower(u.Hostname()) + "/"
		}
		if got != want {
			t.Errorf("VaultURL(%q, %s) = %q, want %q", v, cloud.Name, got, want)
		}
		if again, err := VaultURL(got, cloud); err != nil || again != got {
			t.Errorf("VaultURL(%q, %s) = %q, %v; want it unchanged", got, cloud.Name, again, err)
		}
	})
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// fuzzOnChangePathRE is the http action's path as RFC 3986 allows it in a path
// and query, without ';' or '#'.
var fuzzOnChangePathRE = regexp.MustCompile(`^/([A-Za-z0-9\-._~!$&'()*+,=:@/?]|%[0-9A-Fa-f]{2})*$`)

// FuzzParseOnChange checks that an accepted action is within the grammar's
// bounds and that its canonical form parses back to the same action.
func FuzzParseOnChange(f *testing.F) {
	for _, s := range []string{
		"restart", "RESTART", "http:8080/-/reload", "http:9090/api/reload?source=kvinject;method=PUT;timeout=3s;retries=3",
		"http:1/;retries=0;timeout=1m", "http:65536/r", "http:8080/r#x", "http:8080/a%2F", "http:8080/a%2", "restart;x",
		"http:8080/r;method=get;method=put", "http://127.0.0.1:8080/r", "signal:HUP", "http:0080/r ; timeout = 1500ms ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		o, err := ParseOnChange(raw)
		if err != nil {
			if o != (OnChange{}) {
				t.Errorf("ParseOnChange(%q) failed but returned %+v", raw, o)
			}
			return
		}
		switch o.Kind {
		case OnChangeRestart:
			if o != (OnChange{Kind: OnChangeRestart}) {
				t.Errorf("ParseOnChange(%q) = %+v: restart with http fields", raw, o)
			}
		case OnChangeHTTP:
			if o.Port < 1 || o.Port > 65535 {
				t.Errorf("ParseOnChange(%q): port %d", raw, o.Port)
			}
			if len(o.Path) > MaxOnChangePath || !fuzzOnChangePathRE.MatchString(o.Path) {
				t.Errorf("ParseOnChange(%q): path %q is not an RFC 3986 path and query of at most %d characters without ';' and '#'", raw, o.Path, MaxOnChangePath)
			}
			if o.Method != "POST" && o.Method != "PUT" && o.Method != "PATCH" && o.Method != "GET" {
				t.Errorf("ParseOnChange(%q): method %q", raw, o.Method)
			}
			if o.Timeout < time.Second || o.Timeout > time.Minute {
				t.Errorf("ParseOnChange(%q): timeout %s", raw, o.Timeout)
			}
			if o.Retries < 0 || o.Retries > 10 {
				t.Errorf("ParseOnChange(%q): retries %d", raw, o.Retries)
			}
			if u, err := url.Parse(o.URL()); err != nil || u.Host != "127.0.0.1:"+strconv.Itoa(o.Port) || u.Fragment != "" || u.User != nil {
				t.Errorf("ParseOnChange(%q): URL %q does not stay on 127.0.0.1:%d (%v)", raw, o.URL(), o.Port, err)
			}
		default:
			t.Fatalf("ParseOnChange(%q) = %+v: no kind", raw, o)
		}
		again, err := ParseOnChange(o.String())
		if err != nil || again != o {
			t.Errorf("canonical form %q of %q parses to %+v, %v", o.String(), raw, again, err)
		}
	})
}

// FuzzTemplate checks that checking a template against a mapping never
// panics, that a template it accepts survives the --template flag, and that
// rendering an accepted template stays within its bounds: the output limit,
// and a *RenderError (never a panic) that quotes no value.
func FuzzTemplate(f *testing.F) {
	for _, s := range []string{
		`{{ file "db/password" }}`,
		`{"p": {{ file "db/password" | jsonQuote }}, "h": {{ file "cfg/host" | yamlQuote }}}`,
		`jdbc:postgresql://{{ file "db/host" | trim }}/x?password={{ secret "DB-PASSWORD" | urlQuery }}`,
		`{{ file "hist/1" | base64 | base64Decode | default "x" }}{{/* c */}}{{ "{{" }}`,
		`{{ file "tls.key" }}{{ file "tls.crt" }}{{ secret "db-host" }}`,
		`{{ file "db/password" | base64 | base64 | base64 | base64 | base64 | base64 | base64 }}`,
		`{{ printf "%999999999d" 1 }}`,
		`{{ range 1000000000 }}x{{ end }}`,
		`{{ call .F }}{{ index . 1 }}{{ slice "a" 0 }}{{ len "a" }}`,
		`{{ define "x" }}{{ template "x" }}{{ end }}{{ template "x" }}`,
		`{{ block "b" . }}x{{ end }}`,
		`{{ $x := file "db/password" }}{{ $x }}`,
		`{{ with file "db/password" }}{{ . }}{{ end }}{{ if 1 }}{{ else }}{{ end }}`,
		`{{ file (file "db/password") }}{{ file .X }}{{ file }}`,
		`{{ file "db/password" `,
		`{{- file "db/password" -}}` + "\n\t",
		`{{ file "cfg" }}{{ file "cfg/a/b" }}{{ file "hist/9" }}{{ file "../x" }}`,
	} {
		f.Add(s, []byte("v4lue\"\\\n\x00\xff"))
	}
	entries, err := ParseEntries("db/host=DB-HOST, db/password=DB-PASSWORD;nofile, cfg=secret:app;format=json, hist=secret:h;history=2, tls=secret:w;format=pem;split")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text string, value []byte) {
		tmpl := Template{File: "out.txt", Text: text}
		cs, probs := CheckTemplates([]Template{tmpl}, entries)
		if len(probs) > 0 {
			if cs != nil {
				t.Fatalf("problems and compiled templates at once: %v", probs)
			}
			return
		}
		if len(cs) != 1 {
			t.Fatalf("accepted, but %d compiled templates", len(cs))
		}
		back, err := ParseTemplateFlag(tmpl.String())
		if err != nil || back != tmpl {
			t.Fatalf("--template round trip of an accepted template: %+v, %v", back, err)
		}
		// Every file an entry may write holds value (the JSON keys and
		// versions a reference names included).
		if bytes.Contains(value, []byte("s3cr3t")) {
			return
		}
		secretValue := append([]byte("s3cr3t"), value...)
		for _, limit := range []int{MaxRendered, 64} {
			out, err := cs[0].Render(func(string) ([]byte, bool) { return secretValue, true }, limit)
			if err != nil {
				var re *RenderError
				if !errors.As(err, &re) {
					t.Fatalf("Render error %T %v, want a *RenderError", err, err)
				}
				if strings.Contains(err.Error(), "s3cr3t") {
					t.Fatalf("the error quotes the value: %v", err)
				}
				continue
			}
			if len(out) > limit {
				t.Fatalf("rendered %d bytes over the limit %d", len(out), limit)
			}
		}
		// A file no entry wrote is an error naming the reference, not a panic.
		if _, err := cs[0].Render(func(string) ([]byte, bool) { return nil, false }, MaxRendered); err != nil {
			var re *RenderError
			if !errors.As(err, &re) || strings.Contains(err.Error(), "s3cr3t") {
				t.Fatalf("Render of missing files: %T %v", err, err)
			}
		}
	})
}
