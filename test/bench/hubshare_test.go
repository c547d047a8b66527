//go:build integration

package bench

import (
	"net/http"

	"github.com/kvinject/kvinject/internal/agent"
)

// shareTransport makes an agent use t, its worker's one transport (built by
// agent.NewClients, the agent's own builder), for Azure AD and Key Vault:
// agent.Options.Transport. Its hub client stays its own.
func shareTransport(opts *agent.Options, t *http.Transport) bool {
	opts.Transport = t
	return true
}

// canShareTransport reports whether shareTransport works in this tree.
func canShareTransport() bool { return true }
