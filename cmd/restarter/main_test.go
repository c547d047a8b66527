package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

// TestParseFlags: the defaults, what POD_NAMESPACE fills in, and that every
// mistake names its flag and the fix, all at once.
func TestParseFlags(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "kvinject-system")
	f, err := parseFlags([]string{"--hub-url=https://kvinject-hub.kvinject-system.svc", "--hub-ca-file=/etc/kvinject-hub/ca.crt"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if f.ServiceAccount != "kvinject-system/kvinject-restarter" || f.LeaderElectionNamespace != "kvinject-system" || !f.LeaderElection ||
		f.Debounce != 10*time.Second || f.Cooldown != 2*time.Minute || f.TokenFile != DefaultTokenFile {
		t.Fatalf("defaults: %+v", f)
	}

	_, err = parseFlags([]string{"--hub-url=http://hub", "--debounce=10ms", "--cooldown=48h", "--log-level=loud", "--service-account=restarter"}, io.Discard)
	if err == nil {
		t.Fatal("bad flags accepted")
	}
	for _, want := range []string{
		`--hub-url "http://hub": give the hub's https URL`,
		"--hub-ca-file is empty",
		"--debounce 10ms: use a duration from 1s to 10m",
		"--cooldown 48h0m0s: use a duration from 0 to 24h",
		`--log-level "loud"`,
		`--service-account: "restarter" is not <namespace>/<serviceaccount>`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error lacks %q:\n%v", want, err)
		}
	}
	if _, ok := err.(usageError); !ok {
		t.Errorf("a mistake on the command line is a usageError (exit 2), got %T", err)
	}

	t.Setenv("POD_NAMESPACE", "")
	_, err = parseFlags([]string{"--hub-url=https://h", "--hub-ca-file=/ca"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--leader-elect needs the Lease's namespace") {
		t.Fatalf("leader election without a namespace: %v", err)
	}
	if _, err := parseFlags([]string{"--hub-url=https://h", "--hub-ca-file=/ca", "--leader-elect=false"}, io.Discard); err != nil {
		t.Fatalf("one replica without leader election: %v", err)
	}
}
