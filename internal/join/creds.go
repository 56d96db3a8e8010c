package join

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"flotilla/internal/pki"
)

// renewBefore: EnsureServerCert reissues a certificate with less left.
const renewBefore = 30 * 24 * time.Hour

// ServerCreds are a server's live credentials. Reads are lock-free (TLS
// handshakes call CA and Certificate); Install and EnsureServerCert
// serialise on a mutex and swap a new immutable state in.
type ServerCreds struct {
	tlsDir  string
	mu      sync.Mutex // serialises writers
	state   atomic.Pointer[credState]
	loadErr error
}

// credState is one immutable set of credentials.
type credState struct {
	bundle *Bundle
	ca     *pki.CA
	pool   *x509.CertPool
	caHash string
	cert   *tls.Certificate // nil until a server certificate exists
}

var _ pki.Source = (*ServerCreds)(nil)

// NewServerCreds loads whatever credentials exist under dataDir/tls. It
// never fails: a server without credentials gets them later through Install.
// A bundle or certificate that exists but cannot be used is reported by
// LoadError.
func NewServerCreds(dataDir string) *ServerCreds {
	c := &ServerCreds{tlsDir: filepath.Join(dataDir, "tls")}
	st := &credState{}
	b, err := LoadBundle(c.tlsDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		c.loadErr = err
	default:
		if st, err = newCredState(b); err != nil {
			c.loadErr = err
			st = &credState{}
			break
		}
		cert, err := loadKeyPair(c.tlsDir, FileServerCert, FileServerKey, st.pool)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			c.loadErr = err
		default:
			st.cert = cert
		}
	}
	c.state.Store(st)
	return c
}

func newCredState(b *Bundle) (*credState, error) {
	ca, err := pki.ParseCA(b.CACert, b.CAKey)
	if err != nil {
		return nil, err
	}
	pool, err := pki.Pool(b.CACert)
	if err != nil {
		return nil, err
	}
	hash, err := pki.Hash(b.CACert)
	if err != nil {
		return nil, err
	}
	return &credState{bundle: b, ca: ca, pool: pool, caHash: hash}, nil
}

// loadKeyPair reads a certificate and key and checks the certificate
// against pool (any usage: the caller knows what it is for).
func loadKeyPair(dir, certName, keyName string, pool *x509.CertPool) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, certName))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, keyName))
	if err != nil {
		return nil, err
	}
	return keyPair(certPEM, keyPEM, pool)
}

func keyPair(certPEM, keyPEM []byte, pool *x509.CertPool) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("certificate %q: %w", cert.Leaf.Subject.CommonName, err)
	}
	return &cert, nil
}

// LoadError is why credentials found on disk could not be used (nil when
// they were absent or fine). A server should stop rather than make a new CA
// over a damaged one.
func (c *ServerCreds) LoadError() error { return c.loadErr }

// Ready reports whether a bundle and a server certificate are installed.
func (c *ServerCreds) Ready() bool {
	st := c.state.Load()
	return st.bundle != nil && st.cert != nil
}

// Install saves b, issues and saves this server's certificate, and swaps
// both in.
func (c *ServerCreds) Install(b *Bundle, name string, ips []net.IP, dns []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := newCredState(b)
	if err != nil {
		return fmt.Errorf("install bundle: %w", err)
	}
	if err := b.Save(c.tlsDir); err != nil {
		return err
	}
	if err := c.issue(st, name, ips, dns); err != nil {
		return err
	}
	c.state.Store(st)
	return nil
}

// EnsureServerCert reissues this server's certificate when it is missing,
// was not issued by the current CA, names other SANs than wanted, or has
// less than 30 days left.
func (c *ServerCreds) EnsureServerCert(name string, ips []net.IP, dns []string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.state.Load()
	if old.bundle == nil {
		return errors.New("ensure server certificate: no bundle installed")
	}
	if old.cert != nil && certFits(old.cert.Leaf, old.pool, pki.ServerCertRequest(name, ips, dns)) {
		return nil
	}
	st := *old
	if err := c.issue(&st, name, ips, dns); err != nil {
		return err
	}
	c.state.Store(&st)
	return nil
}

// certFits reports whether leaf is still good for req.
func certFits(leaf *x509.Certificate, pool *x509.CertPool, req pki.Request) bool {
	if leaf == nil || time.Until(leaf.NotAfter) < renewBefore {
		return false
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false
	}
	if leaf.Subject.CommonName != req.CommonName || !sameSet(leaf.Subject.Organization, req.Organizations) {
		return false
	}
	if !sameSet(leaf.DNSNames, req.DNSNames) {
		return false
	}
	have := make([]string, len(leaf.IPAddresses))
	for i, ip := range leaf.IPAddresses {
		have[i] = ip.String()
	}
	want := make([]string, len(req.IPs))
	for i, ip := range req.IPs {
		want[i] = ip.String()
	}
	return sameSet(have, want)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// issue makes, saves and sets st.cert.
func (c *ServerCreds) issue(st *credState, name string, ips []net.IP, dns []string) error {
	certPEM, keyPEM, err := st.ca.Issue(pki.ServerCertRequest(name, ips, dns))
	if err != nil {
		return err
	}
	cert, err := keyPair(certPEM, keyPEM, st.pool)
	if err != nil {
		return err
	}
	// Key first: a certificate without its key is useless, a key without
	// its certificate is simply reissued.
	if err := pki.WriteFile(filepath.Join(c.tlsDir, FileServerKey), keyPEM, 0o600); err != nil {
		return err
	}
	if err := pki.WriteFile(filepath.Join(c.tlsDir, FileServerCert), certPEM, 0o644); err != nil {
		return err
	}
	st.cert = cert
	return nil
}

// Bundle is the installed bundle (nil before Install). Its gossip keys and
// secrets keyring are re-read from gossip.json and secrets.json, which the
// gossip and seal rotations keep current, so a server joining later gets
// today's keys. The result is a copy the caller may keep.
func (c *ServerCreds) Bundle() *Bundle {
	st := c.state.Load()
	if st.bundle == nil {
		return nil
	}
	b := *st.bundle
	if keys, err := loadGossipKeys(filepath.Join(c.tlsDir, FileGossip)); err == nil {
		b.GossipKeys = keys
	}
	if ring, err := os.ReadFile(filepath.Join(c.tlsDir, FileSecrets)); err == nil && len(ring) > 0 {
		b.SecretsKeyring = ring
	}
	return &b
}

// CA is the cluster CA pool (nil before Install).
func (c *ServerCreds) CA() *x509.CertPool { return c.state.Load().pool }

// Certificate is this server's certificate (nil before Install).
func (c *ServerCreds) Certificate() *tls.Certificate { return c.state.Load().cert }

// CAPEM is the CA certificate (nil before Install).
func (c *ServerCreds) CAPEM() []byte {
	if b := c.state.Load().bundle; b != nil {
		return b.CACert
	}
	return nil
}

// CAHash is pki.Hash of the CA ("" before Install).
func (c *ServerCreds) CAHash() string { return c.state.Load().caHash }

// authority is the parsed CA (nil before Install).
func (c *ServerCreds) authority() *pki.CA { return c.state.Load().ca }

// ClientTLS is the TLS config of this server's HTTPS clients (to other
// servers, to agents and to its own API): the server's certificate as
// client certificate (read on every handshake) and the CA as the only
// root, with normal host name checks. The root pool is the one installed
// when ClientTLS is called (the cluster CA never changes once installed);
// called before Install it trusts nothing, so build clients after Ready.
func (c *ServerCreds) ClientTLS() *tls.Config {
	pool := c.CA()
	if pool == nil {
		pool = x509.NewCertPool()
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert := c.Certificate(); cert != nil {
				return cert, nil
			}
			return &tls.Certificate{}, nil // no certificate: the peer decides
		},
	}
}
