package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// Log messages of optional entries.
const (
	msgOptionalAbsent   = "optional object absent; its entries write no file until it appears"
	msgOptionalGone     = "optional object gone; removing its files from the set"
	msgOptionalAppeared = "optional objects appeared: the hub watches them now"
	msgOptionalVanished = "optional objects gone: polling them every rotation until they appear"
)

// exists reports whether a visible file exists in the secrets directory.
func (h *harness) exists(file string) bool {
	_, err := os.Lstat(filepath.Join(h.dir, file))
	return err == nil
}

// TestOptionalAbsentAtStart: an init agent whose optional objects do not
// exist (404) or are disabled (403 SecretDisabled) writes the other files,
// passes the probe, and logs and counts the absent ones; a required entry
// of the same mapping is written as usual.
func TestOptionalAbsentAtStart(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet, emulator.PermList, emulator.PermCertificatesGet)
	a, _ := h.setSecret("a")
	h.setSecret("disabled")
	if err := h.emu.DisableSecret(h.vault, "disabled"); err != nil {
		t.Fatal(err)
	}
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload,
		agentconfig.Entry{File: "a", Name: "a"},
		agentconfig.Entry{File: "missing.txt", Name: "missing", Optional: true},
		agentconfig.Entry{File: "disabled.txt", Name: "disabled", Optional: true},
		agentconfig.Entry{File: "hist", Name: "missing", History: 2, Optional: true},
		agentconfig.Entry{File: "dhist", Name: "disabled", History: 2, Optional: true}, // no enabled version
		agentconfig.Entry{File: "ca.crt", Name: "no-cert", Type: agentconfig.ObjectCert, Optional: true},
	)
	if err := h.run(context.Background(), cfg, h.options()); err != nil {
		t.Fatalf("init with absent optional objects failed: %v", err)
	}
	if h.read("a") != a {
		t.Error("the required file a does not hold its value")
	}
	for _, f := range []string{"missing.txt", "disabled.txt", "hist", "dhist", "ca.crt"} {
		if h.exists(f) {
			t.Errorf("the absent optional object's file %s was written", f)
		}
	}
	if err := h.run(context.Background(), agentconfig.Config{Mode: agentconfig.ModeProbe, Dir: h.dir}, h.options()); err != nil {
		t.Errorf("the startup probe fails with absent optional objects: %v", err)
	}
	wantTerm := "kvinject-agent: wrote 1 file(s) from vault " + h.vaultURL() +
		"; 3 optional object(s) absent, their entries wrote no file: secret/missing, secret/disabled, certificate/no-cert"
	if got := h.termination(); got != wantTerm {
		t.Errorf("termination log\n%s\nwant\n%s", got, wantTerm)
	}
	logs := h.logs.String()
	for _, want := range []string{
		`"msg":"` + msgOptionalAbsent + `","vault":"` + h.vaultURL() + `","pod":"` + testNamespace + "/" + testPod + `","secret":"missing","status":404,"code":"SecretNotFound"`,
		`"object":"secret","file":"hist"`,
		`: the secret has no enabled version. Fix: enable a version`,
		`"object":"secret","file":"dhist"`,
		`"versions":{"a":"`,
		`"ca.crt":"absent","dhist":"absent","disabled.txt":"absent","hist":"absent","missing.txt":"absent"}`,
		`"secret":"disabled","status":403,"code":"Forbidden","innerCode":"SecretDisabled"`,
		`"code":"CertificateNotFound"`,
		`"absent":3`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}

// TestOptionalAllAbsent: when every object is optional and absent, the set
// is empty, and the startup probe passes.
func TestOptionalAllAbsent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, agentconfig.Entry{File: "flag", Name: "flag", Optional: true})
	if err := h.run(context.Background(), cfg, h.options()); err != nil {
		t.Fatalf("init: %v", err)
	}
	if err := atomicdir.Check(h.dir); err != nil {
		t.Errorf("probe of the empty set: %v", err)
	}
	if h.exists("flag") {
		t.Error("the absent object's file exists")
	}
}

// TestOptionalStillFails: optional makes only absence acceptable; a refusal
// of the identity, and a value that cannot become the entry's file, still
// fail the agent with their explanation; and an object that both an optional
// and a required entry read is required.
func TestOptionalStillFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(h *harness, id string)
		entries []agentconfig.Entry
		want    string
	}{
		{
			name:    "access denied",
			setup:   func(h *harness, id string) { h.setSecret("opt") },
			entries: []agentconfig.Entry{{File: "opt", Name: "opt", Optional: true}},
			want:    "(inner error AccessDenied)",
		},
		{
			name: "not base64",
			setup: func(h *harness, id string) {
				_ = h.emu.Grant(h.vault, id, emulator.PermGet)
				h.setSecretValue("opt", "VALUE-not*base64-"+randHex(8))
			},
			entries: []agentconfig.Entry{{File: "opt", Name: "opt", Encoding: agentconfig.EncodingBase64, Optional: true}},
			want:    "base64",
		},
		{
			name:  "also required",
			setup: func(h *harness, id string) { _ = h.emu.Grant(h.vault, id, emulator.PermGet) },
			entries: []agentconfig.Entry{
				{File: "opt", Name: "shared", Optional: true},
				{File: "req", Name: "shared"},
			},
			want: `cannot read secret "shared"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, emulator.Options{})
			id, _ := h.workload()
			tc.setup(h, id)
			cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, tc.entries...)
			err := h.run(context.Background(), cfg, h.options())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if !strings.Contains(h.termination(), tc.want) {
				t.Errorf("termination log %q lacks %q", h.termination(), tc.want)
			}
			if atomicdir.Check(h.dir) == nil {
				t.Error("a set was written although the agent failed")
			}
		})
	}
}

// TestOptionalAppearsAndGoes: a polling sidecar writes an optional object's
// file in the first set after the object appears, removes it from the set
// when it is disabled or deleted (logged), and writes it again when it comes
// back; a required object gone meanwhile keeps its last value.
func TestOptionalAppearsAndGoes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		remove  func(e *emulator.Emulator, vault, name string) error
		logCode string
	}{
		{"disabled", (*emulator.Emulator).DisableSecret, `"innerCode":"SecretDisabled"`},
		{"deleted", (*emulator.Emulator).DeleteSecret, `"code":"SecretNotFound"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, emulator.Options{})
			id, _ := h.workload()
			_ = h.emu.Grant(h.vault, id, emulator.PermGet)
			a, _ := h.setSecret("a")
			cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload,
				agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "opt/value", Name: "opt", Optional: true})
			cfg.Rotation = 100 * time.Millisecond
			stop := h.runSidecar(cfg, h.options())
			h.waitFor("the first set", 5*time.Second, func() bool { return atomicdir.Check(h.dir) == nil })
			if h.exists("opt") {
				t.Fatal("the absent object's file exists")
			}

			v1, _ := h.setSecret("opt")
			h.waitFor("the optional object's file", 3*time.Second, func() bool { return h.fileIs("opt/value", v1) })

			mark := len(h.logs.String())
			if err := tc.remove(h.emu, h.vault, "opt"); err != nil {
				t.Fatal(err)
			}
			if err := tc.remove(h.emu, h.vault, "a"); err != nil {
				t.Fatal(err)
			}
			h.waitFor("the optional file to be removed", 3*time.Second, func() bool { return !h.exists("opt") })
			if !h.fileIs("a", a) {
				t.Error("the required object gone meanwhile lost its last value")
			}
			if err := atomicdir.Check(h.dir); err != nil {
				t.Errorf("probe after the removal: %v", err)
			}
			recs := h.records(mark, msgOptionalGone, map[string]string{"secret": "opt", "file": "opt/value"})
			if len(recs) != 1 {
				t.Errorf("%d records %q for opt, want 1:\n%s", len(recs), msgOptionalGone, h.logs.String()[mark:])
			}
			if !strings.Contains(h.logs.String()[mark:], `"opt":{"from":"`) || !strings.Contains(h.logs.String()[mark:], `"to":"absent"}`) {
				t.Errorf("the new set's log does not show opt going absent:\n%s", h.logs.String()[mark:])
			}
			if !strings.Contains(h.logs.String()[mark:], tc.logCode) {
				t.Errorf("logs lack %s", tc.logCode)
			}

			v2, _ := h.setSecret("opt")
			h.waitFor("the optional object's file again", 3*time.Second, func() bool { return h.fileIs("opt/value", v2) })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHubOptionalPolledUntilItAppears: with a hub, an absent optional object
// is not named in watch requests (the hub watches versions held); it is
// polled every --rotation, and once it appears its file is written and the
// next watch request names it. When a read finds it gone again (here the
// safety re-read: the hub reports no deletions), its file leaves the set and
// it is polled again.
func TestHubOptionalPolledUntilItAppears(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	hub.setMaxWait(300 * time.Millisecond)
	opts := h.hubOptions()
	opts.SafetyInterval = time.Second
	startHubAgent(t, h, hub, opts, agentconfig.Entry{File: "opt", Name: "opt", Optional: true})
	h.waitFor("a watch request", 5*time.Second, func() bool { return len(hub.requests()) >= 1 })
	if r := hub.requests()[0]; len(r.body.Objects) != 2 || r.held("opt") != "" {
		t.Fatalf("first watch request %+v: want a and b only", r.body)
	}
	time.Sleep(3 * hubTestRotation)
	if h.exists("opt") {
		t.Fatal("the absent object's file exists")
	}

	v1, ver := h.setSecret("opt")
	hub.follow("opt")
	h.waitFor("the optional object's file", 5*time.Second, func() bool { return h.fileIs("opt", v1) })
	h.waitFor("a watch request naming opt", 5*time.Second, func() bool {
		r := hub.requests()
		return strings.EqualFold(r[len(r)-1].held("opt"), ver)
	})
	if len(h.records(0, msgOptionalAppeared, map[string]string{"objects": "opt"})) != 1 {
		t.Errorf("no record %q:\n%s", msgOptionalAppeared, h.logs.String())
	}
	// A change the hub reports is read as for any watched object.
	v2, _ := h.setSecret("opt")
	hub.follow("opt")
	h.waitFor("the optional object's new value", 5*time.Second, func() bool { return h.fileIs("opt", v2) })

	if err := h.emu.DeleteSecret(h.vault, "opt"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("the optional file to be removed", 5*time.Second, func() bool { return !h.exists("opt") })
	h.waitFor("the switch to polling", 5*time.Second, func() bool {
		return len(h.records(0, msgOptionalVanished, map[string]string{"objects": "opt"})) == 1
	})
	mark := len(hub.requests())
	v3, _ := h.setSecret("opt")
	h.waitFor("the optional object's file again", 5*time.Second, func() bool { return h.fileIs("opt", v3) })
	for _, r := range hub.requests()[mark:] {
		if len(r.body.Objects) != 2 && r.held("opt") == "" {
			t.Errorf("a watch request named opt without a version: %+v", r.body)
		}
	}
}

// TestHubOnlyOptionalAbsent: when the only watchable object is an absent
// optional one, the agent sends no watch request (it has no version to
// hold) until the object appears.
func TestHubOnlyOptionalAbsent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	hub, _ := h.newHub()
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	cfg := h.hubConfig(agentconfig.Entry{File: "opt", Name: "opt", Optional: true})
	h.runSidecar(cfg, h.hubOptions())
	h.waitFor("the first (empty) set", 5*time.Second, func() bool { return atomicdir.Check(h.dir) == nil })
	time.Sleep(3 * hubTestRotation)
	if n := len(hub.requests()); n != 0 {
		t.Fatalf("%d watch requests without an object to watch", n)
	}
	v1, ver := h.setSecret("opt")
	hub.follow("opt")
	h.waitFor("the optional object's file", 5*time.Second, func() bool { return h.fileIs("opt", v1) })
	h.waitFor("a watch request naming opt", 5*time.Second, func() bool {
		r := hub.requests()
		return len(r) > 0 && strings.EqualFold(r[0].held("opt"), ver)
	})
}
