package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// templates checks templates against entries as the webhook does and
// returns them for the agent's configuration.
func templates(t *testing.T, entries []agentconfig.Entry, ts ...agentconfig.Template) []agentconfig.Template {
	t.Helper()
	if _, probs := agentconfig.CheckTemplates(ts, entries); len(probs) > 0 {
		t.Fatalf("templates refused: %v", probs)
	}
	return ts
}

// setFiles lists the files of the current set, with their modes.
func (h *harness) setFiles() map[string]os.FileMode {
	h.t.Helper()
	set, err := filepath.EvalSymlinks(filepath.Join(h.dir, atomicdir.DataLink))
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]os.FileMode{}
	err = filepath.Walk(set, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(set, p)
		out[filepath.ToSlash(rel)] = fi.Mode().Perm()
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// TestTemplates renders files from several entries, through the unmodified
// SDK: a JSON config, a .env with its own mode and a JDBC URL, reading plain
// entries, a ;nofile password and a key of a ;nofile JSON secret. The
// ;nofile entries write no file of their own.
func TestTemplates(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	h.setSecretValue("db-host", "db.contoso.example\n")
	h.setSecretValue("db-user", "orders")
	pw := `p"w\` + randHex(8) + "&="
	h.setSecretValue("db-password", pw)
	port := "54" + randHex(2)
	h.setSecretValue("app-config", `{"port":"`+port+`","flags":"a,b"}`)
	entries := []agentconfig.Entry{
		entry(t, "db/host=db-host"),
		entry(t, "db/user=db-user"),
		entry(t, "db/password=db-password;nofile"),
		entry(t, "cfg=secret:app-config;format=json;nofile"),
	}
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, entries...)
	cfg.Templates = templates(t, entries,
		agentconfig.Template{File: "appsettings.json", Text: `{"Db": {"Host": {{ file "db/host" | trim | jsonQuote }}, "Password": {{ secret "DB-PASSWORD" | jsonQuote }}}}` + "\n"},
		agentconfig.Template{File: ".env", Mode: 0o400, Text: "DB_PASSWORD={{ file \"db/password\" | base64 }}\nFLAGS={{ file \"cfg/flags\" }}\n"},
		agentconfig.Template{File: "jdbc.url", Text: `jdbc:postgresql://{{ file "db/host" | trim }}:{{ file "cfg/port" }}/orders?user={{ file "db/user" }}&password={{ file "db/password" | urlQuery }}`},
	)
	// The command line the webhook writes, read back as the agent reads it.
	cfg, err := agentconfig.ParseArgs(cfg.Args(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.run(context.Background(), cfg, h.options()); err != nil {
		t.Fatal(err)
	}
	wantJSON := `{"Db": {"Host": "db.contoso.example", "Password": "p\"w\\` + pw[4:] + `"}}` + "\n"
	if got := h.read("appsettings.json"); got != wantJSON {
		t.Errorf("appsettings.json = %q, want %q", got, wantJSON)
	}
	if got, want := h.read("jdbc.url"), "jdbc:postgresql://db.contoso.example:"+port+"/orders?user=orders&password=p%22w%5C"+pw[4:len(pw)-2]+"%26%3D"; got != want {
		t.Errorf("jdbc.url = %q, want %q", got, want)
	}
	if got := h.read(".env"); !strings.HasPrefix(got, "DB_PASSWORD=") || !strings.HasSuffix(got, "\nFLAGS=a,b\n") {
		t.Errorf(".env = %q", got)
	}
	want := map[string]os.FileMode{"appsettings.json": 0o440, ".env": 0o400, "jdbc.url": 0o440, "db/host": 0o440, "db/user": 0o440}
	if d := cmp.Diff(want, h.setFiles()); d != "" {
		t.Errorf("the set's files and modes (-want +got):\n%s", d)
	}
	names, _ := os.ReadDir(h.dir)
	var visible []string
	for _, n := range names {
		if !strings.HasPrefix(n.Name(), "..") {
			visible = append(visible, n.Name())
		}
	}
	sort.Strings(visible)
	if d := cmp.Diff([]string{".env", "appsettings.json", "db", "jdbc.url"}, visible); d != "" {
		t.Errorf("visible names (-want +got), no cfg and no db/password:\n%s", d)
	}
	if got, want := h.termination(), "kvinject-agent: wrote 5 file(s) from vault "+h.vaultURL(); got != want {
		t.Errorf("termination message %q, want %q (2 entries with files, 3 templates)", got, want)
	}
	if !strings.Contains(h.logs.String(), `"templates":3`) {
		t.Errorf("the start is not logged with the templates' count:\n%s", h.logs)
	}
}

// TestTemplateRotation: a new version of an entry a template reads is
// rendered into the next set, which swaps the entry's file and the
// template's together; every set read whole is consistent.
func TestTemplateRotation(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
		t.Fatal(err)
	}
	p1, _ := h.setSecret("db-pass")
	h.setSecretValue("db-host", "host-one-primary")
	entries := []agentconfig.Entry{entry(t, "password=db-pass"), entry(t, "host=db-host;nofile")}
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, entries...)
	cfg.Templates = templates(t, entries, agentconfig.Template{File: "dsn", Text: `postgres://app:{{ file "password" }}@{{ file "host" }}/orders`})
	stop := h.runSidecar(cfg, h.options())
	h.waitFor("the first set", 10*time.Second, func() bool { return h.fileIs("dsn", "postgres://app:"+p1+"@host-one-primary/orders") })
	from := len(h.logs.String())

	// A reader that resolves ..data once sees the password file and the DSN
	// of one set, before, during and after the swap.
	p2, _ := h.setSecret("db-pass")
	consistent := func() bool {
		set, err := filepath.EvalSymlinks(filepath.Join(h.dir, atomicdir.DataLink))
		if err != nil {
			return false
		}
		pw, err1 := os.ReadFile(filepath.Join(set, "password"))
		dsn, err2 := os.ReadFile(filepath.Join(set, "dsn"))
		if err1 != nil || err2 != nil {
			return false // the set was replaced while reading: start over
		}
		if string(dsn) != "postgres://app:"+string(pw)+"@host-one-primary/orders" {
			t.Fatalf("one set holds a password and a DSN of different versions")
		}
		return string(pw) == p2
	}
	h.waitFor("the new set", 10*time.Second, consistent)
	h.setSecretValue("db-host", "host-two-replica")
	h.waitFor("the new host", 10*time.Second, func() bool { return h.fileIs("dsn", "postgres://app:"+p2+"@host-two-replica/orders") })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(h.logs.String()[from:], logMsg(msgChanged)); n != 2 {
		t.Errorf("%d sets written for two changes, want 2", n)
	}
}

// TestTemplateErrors: a template that cannot be rendered from what Key Vault
// holds stops the agent at once, naming the template, the line and what is
// missing, never a value; in sidecar mode a failure on rotation keeps the
// last good set.
func TestTemplateErrors(t *testing.T) {
	cases := []struct {
		name     string
		entries  []string
		text     string
		setup    func(h *harness)
		want     string
		noSecret bool
	}{
		{
			name:    "a JSON key that the secret does not have",
			entries: []string{"cfg=secret:app-config;format=json;nofile"},
			text:    "host={{ file \"cfg/host\" }}\nport={{ file \"cfg/port\" }}\n",
			setup:   func(h *harness) { h.setSecretValue("app-config", `{"host":"VALUE-host-`+randHex(8)+`"}`) },
			want:    `kvinject-agent: cannot render template "app.env": line 2, column 9: file "cfg/port": entry "cfg=secret:app-config;format=json;nofile" has no file "cfg/port": the JSON object has no key "port". Fix: store the value the template expects in Key Vault (the next rotation picks it up), or change the pod's kvinject.dev/template.app.env annotation and recreate the pod`,
		},
		{
			name:    "a value that is not base64",
			entries: []string{"blob=blob;nofile"},
			text:    `{{ file "blob" | base64Decode }}`,
			setup:   func(h *harness) { h.setSecretValue("blob", "VALUE-not-base64-"+randHex(8)) },
			want:    `kvinject-agent: cannot render template "app.env": line 1, column 18: base64Decode: the value is not valid base64 (at byte 6 of 33). Fix: store the value the template expects in Key Vault (the next rotation picks it up), or change the pod's kvinject.dev/template.app.env annotation and recreate the pod`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, emulator.Options{})
			id, _ := h.workload()
			if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
				t.Fatal(err)
			}
			tc.setup(h)
			var entries []agentconfig.Entry
			for _, s := range tc.entries {
				entries = append(entries, entry(t, s))
			}
			for _, mode := range []string{agentconfig.ModeInit, agentconfig.ModeSidecar} {
				cfg := h.config(mode, agentconfig.IdentityWorkload, entries...)
				cfg.Templates = templates(t, entries, agentconfig.Template{File: "app.env", Text: tc.text})
				opts := h.options()
				opts.InitTimeout = 20 * time.Second // permanent errors must not wait for it
				err := h.run(context.Background(), cfg, opts)
				var f *agent.Failure
				if !errors.As(err, &f) {
					t.Fatalf("%s: Run returned %v, want a *agent.Failure", mode, err)
				}
				if d := cmp.Diff(tc.want, f.Message); d != "" {
					t.Errorf("%s: message (-want +got):\n%s", mode, d)
				}
				if strings.Contains(h.logs.String(), "retrying") {
					t.Errorf("%s: a permanent error was retried", mode)
				}
				if _, err := os.Lstat(filepath.Join(h.dir, atomicdir.DataLink)); err == nil {
					t.Errorf("%s: a set was written after a failure", mode)
				}
				_ = os.Remove(h.termLog)
			}
		})
	}

	t.Run("on rotation, the last good set stays", func(t *testing.T) {
		h := newHarness(t, emulator.Options{})
		id, _ := h.workload()
		if err := h.emu.Grant(h.vault, id, emulator.PermGet); err != nil {
			t.Fatal(err)
		}
		port := "VALUE-port-" + randHex(6)
		h.setSecretValue("app-config", `{"port":"`+port+`"}`)
		entries := []agentconfig.Entry{entry(t, "cfg=secret:app-config;format=json")}
		cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload, entries...)
		cfg.Templates = templates(t, entries, agentconfig.Template{File: "port", Text: `{{ file "cfg/port" }}`})
		stop := h.runSidecar(cfg, h.options())
		h.waitFor("the first set", 10*time.Second, func() bool { return h.fileIs("port", port) })
		h.setSecretValue("app-config", `{"host":"VALUE-host-`+randHex(6)+`"}`)
		h.waitFor("a failed poll", 10*time.Second, func() bool {
			return strings.Contains(h.logs.String(), `the JSON object has no key \"port\"`)
		})
		if !h.fileIs("port", port) || !h.fileIs("cfg/port", port) {
			t.Errorf("the last good set was not kept")
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
}
