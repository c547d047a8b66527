package injector

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// HubCA reads the PEM bundle that rotating agents trust for the version hub's
// certificate (--hub-ca-file), again whenever the file's size or modification
// time changes, so that pods admitted after a CA rotation (the kubelet updates
// the mounted Secret) get the new bundle. In builtin certificate mode the file
// appears only once the webhook has written its certificate.
type HubCA struct {
	path string

	mu      sync.Mutex
	size    int64
	modTime time.Time
	pem     string
	err     error
}

// NewHubCA returns a reader of the bundle at path.
func NewHubCA(path string) *HubCA { return &HubCA{path: path} }

// Get returns the bundle, or an error naming the file and what is wrong.
func (c *HubCA) Get() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(c.path)
	if err != nil {
		return "", fmt.Errorf("--hub-ca-file %s: %w", c.path, err)
	}
	if fi.Size() == c.size && fi.ModTime().Equal(c.modTime) && (c.pem != "" || c.err != nil) {
		return c.pem, c.err
	}
	b, err := os.ReadFile(c.path)
	if err != nil {
		return "", fmt.Errorf("--hub-ca-file %s: %w", c.path, err)
	}
	c.size, c.modTime = fi.Size(), fi.ModTime()
	c.pem, c.err = "", nil
	if err := checkCABundle(b); err != nil {
		c.err = fmt.Errorf("--hub-ca-file %s: %w", c.path, err)
		return "", c.err
	}
	c.pem = string(bytes.TrimSpace(b)) + "\n"
	return c.pem, nil
}

// checkCABundle checks that b holds PEM certificates and nothing else.
func checkCABundle(b []byte) error {
	n := 0
	for rest := bytes.TrimSpace(b); len(rest) > 0; rest = bytes.TrimSpace(rest) {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return fmt.Errorf("not a PEM bundle of certificates after %d certificate(s)", n)
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("holds a PEM %q block; only CERTIFICATE blocks belong in a CA bundle", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("certificate %d does not parse: %v", n+1, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("is empty: it must hold the PEM CA certificate(s) of the hub's serving certificate")
	}
	return nil
}

// checkHubURL checks --hub-url: the agent's rule for --hub.
func checkHubURL(s string) error {
	if err := agentconfig.CheckHubURL(s); err != nil {
		return fmt.Errorf("--hub-url %q: %w", s, err)
	}
	return nil
}
