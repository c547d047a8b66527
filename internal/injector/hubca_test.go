package injector

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

func TestCheckCABundle(t *testing.T) {
	good, err := os.ReadFile("testdata/hub-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"one certificate", string(good), ""},
		{"two certificates", string(good) + "\n" + string(good), ""},
		{"empty", "  \n", "is empty"},
		{"not PEM", "hello", "not a PEM bundle of certificates after 0"},
		{"trailing junk", string(good) + "junk", "not a PEM bundle of certificates after 1"},
		{"private key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", `PEM "PRIVATE KEY" block`},
		{"bad certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate 1 does not parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkCABundle([]byte(tc.in))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestHubCAReload: the bundle is read again when the file changes, and a
// broken or missing bundle makes the handler inject agents that poll.
func TestHubCAReload(t *testing.T) {
	good, err := os.ReadFile("testdata/hub-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.crt")
	h := &Handler{HubCA: NewHubCA(path), Log: logr.Discard()}
	h.Mutate.HubURL = "https://kvinject-hub.kvinject-system.svc"

	if cfg := h.mutateConfig(); cfg.HubURL != "" {
		t.Fatalf("missing bundle: hub %q, want none (agents poll)", cfg.HubURL)
	}
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := h.mutateConfig()
	if cfg.HubURL == "" || cfg.HubCA != strings.TrimSpace(string(good))+"\n" {
		t.Fatalf("good bundle: hub %q, CA %q", cfg.HubURL, cfg.HubCA)
	}
	if err := os.WriteFile(path, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A later modification time, whatever the file system's granularity.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if cfg := h.mutateConfig(); cfg.HubURL != "" {
		t.Fatalf("broken bundle: hub %q, want none", cfg.HubURL)
	}
	if _, err := h.HubCA.Get(); err == nil || !strings.Contains(err.Error(), "--hub-ca-file "+path) {
		t.Fatalf("error %v, want one naming --hub-ca-file and the file", err)
	}
}

func TestCheckHubURL(t *testing.T) {
	for _, s := range []string{"https://kvinject-hub.kvinject-system.svc", "https://hub:8443", "https://hub/"} {
		if err := checkHubURL(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"http://hub", "hub", "https://", "https://hub/v1", "https://hub?x=1", "https://u:p@hub"} {
		if err := checkHubURL(s); err == nil || !strings.Contains(err.Error(), "--hub-url") {
			t.Errorf("%s: error %v, want one naming --hub-url", s, err)
		}
	}
}
