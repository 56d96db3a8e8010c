package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// Source gives the current CA pool and this member's certificate. Either
// may be nil while the member has no credentials yet.
type Source interface {
	CA() *x509.CertPool
	Certificate() *tls.Certificate
}

// Errors a handshake fails with while a Source has no credentials yet.
var (
	ErrNoCertificate = errors.New("no TLS certificate installed yet")
	ErrNoCA          = errors.New("no cluster CA installed yet")
)

// MutualTLS builds the two sides of a connection between members that must
// both hold a CA certificate with O = requireOrg. The server side requires
// and verifies a client certificate; the client side verifies the server's
// chain against the CA without checking the host name (peers are dialled by
// address), then checks requireOrg. Credentials are read from src on every
// handshake.
func MutualTLS(src Source, requireOrg string) (server, client *tls.Config) {
	server = &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := src.Certificate(), src.CA()
			if cert == nil {
				return nil, ErrNoCertificate
			}
			if pool == nil {
				return nil, ErrNoCA
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool,
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
						return errors.New("peer presented no verified certificate")
					}
					return requireOrgOf(cs.VerifiedChains[0][0], requireOrg)
				},
			}, nil
		},
	}
	client = &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified in VerifyConnection against the live CA,
		// without a host name; InsecureSkipVerify only turns off the
		// built-in check that would need one.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert := src.Certificate()
			if cert == nil {
				return nil, ErrNoCertificate
			}
			return cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			pool := src.CA()
			if pool == nil {
				return ErrNoCA
			}
			leaf, err := VerifyPeer(cs.PeerCertificates, pool, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			return requireOrgOf(leaf, requireOrg)
		},
	}
	return server, client
}

// VerifyPeer verifies a peer's chain (leaf first) against pool for usage,
// without a host name, and returns the leaf.
func VerifyPeer(certs []*x509.Certificate, pool *x509.CertPool, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, errors.New("peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return nil, fmt.Errorf("peer certificate %q: %w", certs[0].Subject.CommonName, err)
	}
	return certs[0], nil
}

func requireOrgOf(cert *x509.Certificate, org string) error {
	if !HasOrg(cert, org) {
		return fmt.Errorf("peer certificate %q (O=%v) is not in organisation %q", cert.Subject.CommonName, cert.Subject.Organization, org)
	}
	return nil
}
