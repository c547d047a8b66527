package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvinject/kvinject/internal/testing/emulator"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRun(t *testing.T) {
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", "emulator.example.json", "--ca-out", caPath, "--log", "json"}, &stdout, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stdout.String(), "export IDENTITY_HEADER=") {
		if time.Now().After(deadline) {
			t.Fatalf("no output; stderr: %s", stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v; stderr: %s", err, stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	out := stdout.String()
	addr := regexp.MustCompile(`(?m)^export KVEMULATOR_ADDR=(\S+)$`).FindStringSubmatch(out)
	token := regexp.MustCompile(`(?m)^export KVEMULATOR_ADMIN_TOKEN=(\S+)$`).FindStringSubmatch(out)
	if addr == nil || token == nil || !strings.Contains(out, "vault: https://demo-vault.vault.azure.net/") ||
		!strings.Contains(out, "export SSL_CERT_FILE="+caPath) {
		t.Fatalf("output:\n%s", out)
	}

	// The admin API answers with the printed token over TLS trusting the written CA.
	pem, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr[1]+"/_emulator/stats", nil)
	req.Header.Set(emulator.AdminTokenHeader, token[1])
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var st emulator.AdminStats
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
		t.Fatalf("stats: %d %s", resp.StatusCode, body)
	}
	if _, ok := st.VaultReads["rbac-vault"]; !ok {
		t.Errorf("stats lack the configured vault: %s", body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not stop")
	}
	if !strings.Contains(stderr.String(), `"path":"/_emulator/stats"`) {
		t.Errorf("request log missing: %s", stderr.String())
	}
}

func TestRunBadConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(p, []byte(`{"vaults":[{"name":"x"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--config", p, "--log", "none"}, io.Discard, io.Discard); err == nil {
		t.Error("an invalid vault name was accepted")
	}
	if err := run(context.Background(), []string{"--nope"}, io.Discard, io.Discard); err == nil {
		t.Error("an unknown flag was accepted")
	}
}
