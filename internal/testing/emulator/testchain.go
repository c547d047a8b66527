package emulator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"
)

// TestChain is a certificate chain made for tests: a root CA, an intermediate CA and a
// leaf, each with its own key.
type TestChain struct {
	// LeafKey is the leaf's private key.
	LeafKey crypto.Signer
	// Leaf, Intermediate and Root are the certificates; Leaf is signed by
	// Intermediate, which is signed by Root.
	Leaf, Intermediate, Root *x509.Certificate
}

// Chain returns the certificates from the leaf to the root.
func (c TestChain) Chain() []*x509.Certificate {
	return []*x509.Certificate{c.Leaf, c.Intermediate, c.Root}
}

// NewTestChain generates a three-certificate chain for commonName, valid from an
// hour ago for a year. keyType is "RSA" (2048 bits, the default) or "EC" (P-256) for
// the leaf; the CAs use P-256. It is for tests and the emulator's demos only.
func NewTestChain(commonName, keyType string) (TestChain, error) {
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	newEC := func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	rootKey, err := newEC()
	if err != nil {
		return TestChain{}, err
	}
	interKey, err := newEC()
	if err != nil {
		return TestChain{}, err
	}
	var leafKey crypto.Signer
	switch keyType {
	case "", "RSA":
		leafKey, err = rsa.GenerateKey(rand.Reader, 2048)
	case "EC":
		leafKey, err = newEC()
	default:
		return TestChain{}, fmt.Errorf("emulator: unknown key type %q (RSA or EC)", keyType)
	}
	if err != nil {
		return TestChain{}, err
	}
	serial := int64(0)
	issue := func(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer) (*x509.Certificate, error) {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now, now.Add(365*24*time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			return nil, fmt.Errorf("emulator: %w", err)
		}
		return x509.ParseCertificate(der)
	}
	ca := func(name string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	}
	root, err := issue(ca(commonName+" Test Root CA"), rootKey.Public(), nil, rootKey)
	if err != nil {
		return TestChain{}, err
	}
	inter, err := issue(ca(commonName+" Test Intermediate CA"), interKey.Public(), root, rootKey)
	if err != nil {
		return TestChain{}, err
	}
	leaf, err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: commonName}, DNSNames: []string{commonName},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		leafKey.Public(), inter, interKey)
	if err != nil {
		return TestChain{}, err
	}
	return TestChain{LeafKey: leafKey, Leaf: leaf, Intermediate: inter, Root: root}, nil
}
