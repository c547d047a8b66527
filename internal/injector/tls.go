package injector

import "crypto/tls"

// TLSOptions configures the webhook's server: TLS 1.2 at least with only AEAD,
// forward-secret cipher suites (TLS 1.3's are fixed and all modern), and HTTP/1.1
// only. The API server speaks HTTP/1.1 to webhooks anyway; turning HTTP/2 off
// closes the rapid-reset and stream-flood attacks on it (CVE-2023-44487,
// CVE-2023-39325) for anyone who can reach the webhook's port.
func TLSOptions() []func(*tls.Config) {
	return []func(*tls.Config){func(c *tls.Config) {
		c.MinVersion = tls.VersionTLS12
		c.CipherSuites = []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		}
		c.NextProtos = []string{"http/1.1"}
	}}
}
