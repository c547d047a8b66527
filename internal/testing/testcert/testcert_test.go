package testcert

import (
	"crypto/x509"
	"testing"
)

func TestNewVerifiesForItsNames(t *testing.T) {
	s, err := New("test CA", "hub.example.svc", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(s.Cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"hub.example.svc", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: s.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "other.svc", Roots: s.Pool}); err == nil {
		t.Error("verified for a name it does not hold")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "hub.example.svc", Roots: x509.NewCertPool()}); err == nil {
		t.Error("verified without its CA")
	}
}
