package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/atomicdir"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// addVault adds a second vault to the emulator (testenv's dial override
// sends every *.vault.azure.net name to it) and returns its name and URL.
func (h *harness) addVault() (name, url string) {
	h.t.Helper()
	name = "kv2-" + randHex(4)
	if err := h.emu.AddVault(name, emulator.VaultOptions{}); err != nil {
		h.t.Fatal(err)
	}
	return name, "https://" + name + ".vault.azure.net/"
}

// setSecretIn stores a distinctive value in another vault and remembers it
// for the leak check.
func (h *harness) setSecretIn(vault, name string) string {
	value := "VALUE-" + vault + "-" + name + "-" + randHex(12)
	h.secretish(value)
	h.emu.SetSecret(vault, name, value)
	return value
}

// TestVaultsPerEntry: entries of two vaults (the same secret name in both,
// a certificate of the second) are read with one identity, each from its
// vault, and written as one set; the termination log names both vaults.
func TestVaultsPerEntry(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	id, _ := h.workload()
	other, otherURL := h.addVault()
	for _, v := range []string{h.vault, other} {
		if err := h.emu.Grant(v, id, emulator.PermGet); err != nil {
			t.Fatal(err)
		}
	}
	mine, _ := h.setSecret("shared-name")
	theirs := h.setSecretIn(other, "shared-name")
	only := h.setSecretIn(other, "only-there")
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload,
		agentconfig.Entry{File: "mine", Name: "shared-name"},
		agentconfig.Entry{File: "theirs", Name: "shared-name", Vault: otherURL},
		agentconfig.Entry{File: "only", Name: "only-there", Vault: otherURL},
	)
	if err := h.run(context.Background(), cfg, h.options()); err != nil {
		t.Fatalf("init: %v", err)
	}
	for file, want := range map[string]string{"mine": mine, "theirs": theirs, "only": only} {
		if got := h.read(file); got != want {
			t.Errorf("%s holds the value of another secret (len %d, want len %d)", file, len(got), len(want))
		}
	}
	if n := rl.count("/secrets/shared-name"); n != 2 {
		t.Errorf("shared-name read %d times, want once in each vault", n)
	}
	wantTerm := "kvinject-agent: wrote 3 file(s) from vaults " + h.vaultURL() + ", " + otherURL
	if got := h.termination(); got != wantTerm {
		t.Errorf("termination log %q, want %q", got, wantTerm)
	}
	if st := h.emu.Stats(); st.TokenRequests != 1 {
		t.Errorf("%d token requests, want 1 (one credential for both vaults)", st.TokenRequests)
	}
}

// TestVaultsPerEntryExplainsItsVault: a refusal by an entry's own vault is
// explained with that vault's name, in the message and its fixes, and
// logged with secretVault.
func TestVaultsPerEntryExplainsItsVault(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	other, otherURL := h.addVault()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet) // not on the other vault
	h.setSecret("a")
	h.setSecretIn(other, "b")
	cfg := h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload,
		agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b", Vault: otherURL})
	err := h.run(context.Background(), cfg, h.options())
	want := `kvinject-agent: cannot read secret "b" from vault ` + other + `: HTTP 403 Forbidden, Key Vault error Forbidden (inner error AccessDenied): the vault uses access policies and workload identity ` + id +
		` may not get its secrets. Fix: grant the identity ` + id + ` 'get' on secrets with an access policy (az keyvault set-policy --name ` + other + ` --spn ` + id + ` --secret-permissions get)`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error\n%v\nwant it to start with\n%s", err, want)
	}
	if !strings.Contains(h.logs.String(), `"secretVault":"`+otherURL+`"`) {
		t.Errorf("the failure's log does not name the entry's vault:\n%s", h.logs.String())
	}
	if atomicdir.Check(h.dir) == nil {
		t.Error("a set was written although one vault refused")
	}
}

// TestVaultsPerEntryRotation: a polling sidecar notices a new version in an
// entry's own vault.
func TestVaultsPerEntryRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	other, otherURL := h.addVault()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	_ = h.emu.Grant(other, id, emulator.PermGet)
	h.setSecret("a")
	b1 := h.setSecretIn(other, "b")
	cfg := h.config(agentconfig.ModeSidecar, agentconfig.IdentityWorkload,
		agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b", Vault: otherURL})
	cfg.Rotation = 100 * time.Millisecond
	stop := h.runSidecar(cfg, h.options())
	h.waitFor("the first set", 5*time.Second, func() bool { return h.fileIs("b", b1) })
	b2 := h.setSecretIn(other, "b")
	h.waitFor("b's new value", 5*time.Second, func() bool { return h.fileIs("b", b2) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestHubVaultsPerEntry: with a hub the agent runs one watch per vault, each
// naming its vault and only its objects, and a change the hub reports in
// the second vault is read there and swapped in.
func TestHubVaultsPerEntry(t *testing.T) {
	t.Parallel()
	rl, eopts := newReadLog()
	h := newHarness(t, eopts)
	hub, _ := h.newHub()
	other, otherURL := h.addVault()
	hub.addVault(other)
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	_ = h.emu.Grant(other, id, emulator.PermGet)
	h.setSecret("a")
	b1 := h.setSecretIn(other, "b")
	hub.follow("a")
	hub.followIn(other, "b")
	cfg := h.hubConfig(agentconfig.Entry{File: "a", Name: "a"}, agentconfig.Entry{File: "b", Name: "b", Vault: otherURL})
	stop := h.runSidecar(cfg, h.hubOptions())
	h.waitFor("the first set", 5*time.Second, func() bool { return h.fileIs("b", b1) })
	byVault := func() map[string][]string {
		m := map[string][]string{}
		for _, r := range hub.requests() {
			for _, o := range r.body.Objects {
				m[r.body.Vault] = append(m[r.body.Vault], o.Name)
			}
		}
		return m
	}
	h.waitFor("a watch request for each vault", 5*time.Second, func() bool { return len(byVault()) == 2 })
	m := byVault()
	if strings.Join(m[h.vaultURL()], ",") != "a" || strings.Join(m[otherURL], ",") != "b" {
		t.Fatalf("watch requests by vault %v: want a at %s and b at %s", m, h.vaultURL(), otherURL)
	}
	readsB := rl.count("/secrets/b")
	b2 := h.setSecretIn(other, "b")
	hub.followIn(other, "b")
	h.waitFor("b's new value", 5*time.Second, func() bool { return h.fileIs("b", b2) })
	if got := rl.count("/secrets/b") - readsB; got != 1 {
		t.Errorf("b read %d times for the change, want once", got)
	}
	if n := len(h.records(0, msgSource, map[string]string{"source": "hub", "watchVault": otherURL})); n != 1 {
		t.Errorf("%d rotation source records of the second vault's watch, want 1:\n%s", n, h.logs.String())
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
