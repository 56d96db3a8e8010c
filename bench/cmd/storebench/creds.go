package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// clusterCreds are what the benchmark's clients present to the servers of
// one Flotilla cluster, read from a server's data dir (docs/security.md,
// "Files") once the cluster has made its keys.
type clusterCreds struct {
	ca *x509.CertPool
	// cert is a server's own certificate (O=flotilla:servers): the only
	// kind of client certificate the masters' /internal endpoints answer,
	// and system:masters on the API.
	cert tls.Certificate
	// adminToken is the bootstrap admin's bearer token, what the data dir's
	// kubeconfig carries: client-go uses it, as kubectl would.
	adminToken string
}

// certTLS verifies the server against the cluster CA (its certificate
// carries its bind IP, so the usual host check works on the IP URLs) and
// presents the server certificate: raw HTTP clients (/internal, /metrics,
// raw GETs and watches).
func (c *clusterCreds) certTLS() *tls.Config {
	return &tls.Config{RootCAs: c.ca, Certificates: []tls.Certificate{c.cert}}
}

// tokenTLS verifies the server and presents no certificate, so the bearer
// token is what authenticates (the API prefers a client certificate when
// one is given).
func (c *clusterCreds) tokenTLS() *tls.Config {
	return &tls.Config{RootCAs: c.ca}
}

// newServerToken is the shared --token of one bench cluster: every server
// of a cluster gets the same, fresh per cluster (the product's own form,
// 32 random bytes in hex, which never parses as a join token).
func newServerToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// loadCreds reads a server's credentials from its data dir. A missing file
// wraps os.ErrNotExist: a new cluster writes them only once its servers
// have met.
func loadCreds(dataDir string) (*clusterCreds, error) {
	dir := filepath.Join(dataDir, "tls")
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		return b, nil
	}
	caPEM, err := read("ca.crt")
	if err != nil {
		return nil, err
	}
	certPEM, err := read("server.crt")
	if err != nil {
		return nil, err
	}
	keyPEM, err := read("server.key")
	if err != nil {
		return nil, err
	}
	tok, err := read("admin.token")
	if err != nil {
		return nil, err
	}
	c := &clusterCreds{ca: x509.NewCertPool(), adminToken: strings.TrimSpace(string(tok))}
	if !c.ca.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s/ca.crt: no certificate", dir)
	}
	if c.adminToken == "" {
		return nil, fmt.Errorf("%s/admin.token is empty", dir)
	}
	// The server writes its key, then its certificate: a pair read in
	// between does not match, and the caller reads again.
	if c.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("%s/server.crt and server.key: %w", dir, err)
	}
	if _, err := c.cert.Leaf.Verify(x509.VerifyOptions{Roots: c.ca, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("%s/server.crt as a client certificate: %w", dir, err)
	}
	return c, nil
}

// waitCreds waits until every server of c holds the cluster CA, its own
// certificate and the admin token, and returns the first server's
// credentials: one server certificate is good for talking to all of them.
func (c *flotillaCluster) waitCreds(ctx context.Context, timeout time.Duration) (*clusterCreds, error) {
	var creds *clusterCreds
	err := waitFor(ctx, timeout, 100*time.Millisecond, "flotilla credentials", func(context.Context) error {
		for i, s := range c.servers {
			if s.proc != nil && s.proc.exited() {
				return &exitError{s}
			}
			cr, err := loadCreds(s.dataDir)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if i == 0 {
				creds = cr
			}
		}
		return nil
	})
	return creds, err
}
