package agent_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kvinject/kvinject/internal/agent"
	"github.com/kvinject/kvinject/internal/testing/emulator"
	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// entries maps n secrets s0..s(n-1) to files of the same names and stores a
// value for each; it returns the entries and the values.
func (h *harness) entries(n int) ([]agentconfig.Entry, []string) {
	var es []agentconfig.Entry
	var values []string
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		v, _ := h.setSecret(name)
		es = append(es, agentconfig.Entry{File: name, Name: name})
		values = append(values, v)
	}
	return es, values
}

// TestColdFetchOneChallengeOneToken: a cold client reads many secrets with one
// 401 challenge and one token request; the reads that follow the first one
// start only once the client holds the token, so none of them is challenged.
func TestColdFetchOneChallengeOneToken(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	es, values := h.entries(40)
	h.emu.ResetStats()
	if err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, es...), h.options()); err != nil {
		t.Fatal(err)
	}
	for i, e := range es {
		if !h.fileIs(e.File, values[i]) {
			t.Errorf("%s: content differs from the secret", e.File)
		}
	}
	st := h.emu.Stats()
	if st.Challenges != 1 || st.TokenRequests != 1 || st.Gets != 40 {
		t.Errorf("challenges, token requests, gets = %d, %d, %d; want 1, 1, 40", st.Challenges, st.TokenRequests, st.Gets)
	}
}

// TestFirstSetRetriesOnlyMissing: when some reads of the first set are
// throttled, the retry reads only those; Key Vault's 429s are left to the
// agent's own backoff (with the SDK's default retries, which would otherwise
// resend them three times), which honours Retry-After.
func TestFirstSetRetriesOnlyMissing(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	es, values := h.entries(10)
	if err := h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultThrottle, RetryAfterSeconds: 1, Count: 3, Match: emulator.OpGet}); err != nil {
		t.Fatal(err)
	}
	h.emu.ResetStats()
	opts := h.options()
	opts.SDKRetry.MaxRetries = 0 // the SDK's defaults, as shipped
	if err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, es...), opts); err != nil {
		t.Fatal(err)
	}
	for i, e := range es {
		if !h.fileIs(e.File, values[i]) {
			t.Errorf("%s: content differs from the secret", e.File)
		}
	}
	st := h.emu.Stats()
	if st.Throttled != 3 || st.Gets != 10 {
		t.Errorf("throttled, gets = %d, %d; want 3, 10 (each secret read once, the throttled ones retried)", st.Throttled, st.Gets)
	}
	logs := h.logs.String()
	// Once when the first attempt fanned out (3 of its reads throttled), up to 3
	// times when the first read's 429 was back before the others went out.
	if n := strings.Count(logs, `"msg":"attempt failed, retrying"`); n < 1 || n > 3 {
		t.Errorf("the agent retried %d times, want 1 to 3 (after the 429s)", n)
	}
	if !strings.Contains(logs, `"status":429`) || !strings.Contains(logs, `"retryAfter":"1s"`) {
		t.Errorf("logs lack the 429 and its Retry-After:\n%s", logs)
	}
}

// TestCautiousAfterFailedAttempt: after a cold fetch failed, each further
// attempt sends one read until one succeeds, so that a failing or throttling
// vault is not sent every secret again on every attempt.
func TestCautiousAfterFailedAttempt(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	const n = 8
	es, _ := h.entries(n)
	if err := h.emu.InjectFault(emulator.Fault{Kind: emulator.FaultStatus, Status: 503, Match: emulator.OpGet}); err != nil {
		t.Fatal(err)
	}
	h.emu.ResetStats()
	err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, es...), h.options())
	var gu *agent.GiveUpError
	if !errors.As(err, &gu) {
		t.Fatalf("err = %v, want a GiveUpError", err)
	}
	if gu.Attempts < 2 {
		t.Fatalf("only %d attempt(s) in the init timeout", gu.Attempts)
	}
	// The first attempt sends at most every read (the first, then the others
	// once it went out with the token, unless its failure was already back);
	// each later one a single read. Without that caution it would be n per attempt.
	if st := h.emu.Stats(); st.Faults < int64(gu.Attempts) || st.Faults > int64(n+gu.Attempts-1) {
		t.Errorf("%d reads in %d attempts, want %d to %d", st.Faults, gu.Attempts, gu.Attempts, n+gu.Attempts-1)
	}
}

// TestFormatAuto: format=auto, what a migrated SecretProviderClass asks for
// objectType secret, writes a certificate's secret as format=pem does (PKCS#12
// or PEM content type) and any other secret as stored, as the CSI driver's
// Azure provider does.
func TestFormatAuto(t *testing.T) {
	h := newHarness(t, emulator.Options{})
	id, _ := h.workload()
	_ = h.emu.Grant(h.vault, id, emulator.PermGet)
	h.importCert("web-cert", "RSA", nil)
	h.importCert("pem-cert", "EC", nil, emulator.WithPEMContentType())
	plain, _ := h.setSecret("plain")
	es := []agentconfig.Entry{
		entry(t, "web.auto=secret:web-cert;format=auto"),
		entry(t, "web.pem=secret:web-cert;format=pem"),
		entry(t, "pem.auto=secret:pem-cert;format=auto"),
		entry(t, "pem.pem=secret:pem-cert;format=pem"),
		entry(t, "plain.auto=plain;format=auto"),
	}
	if err := h.run(context.Background(), h.config(agentconfig.ModeInit, agentconfig.IdentityWorkload, es...), h.options()); err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{"web.auto", "web.pem"}, {"pem.auto", "pem.pem"}} {
		got, want := h.read(pair[0]), h.read(pair[1])
		if got != want || !strings.Contains(got, "-----BEGIN CERTIFICATE-----") {
			t.Errorf("%s differs from %s (or holds no PEM certificate)", pair[0], pair[1])
		}
	}
	if !h.fileIs("plain.auto", plain) {
		t.Error("plain.auto: a secret that is not a certificate's is not written as stored")
	}
}
