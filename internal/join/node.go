package join

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"

	"flotilla/internal/pki"
)

// NodeCreds are an agent's credentials.
type NodeCreds struct {
	CACert     []byte   // PEM
	Cert       []byte   // PEM, CN system:node:<name>, O system:nodes
	Key        []byte   // PEM
	GossipKeys [][]byte // primary first
}

// check verifies that the certificate is the CA's, matches the key and
// names node name.
func (n *NodeCreds) check(name string) error {
	pool, err := pki.Pool(n.CACert)
	if err != nil {
		return err
	}
	cert, err := keyPair(n.Cert, n.Key, pool)
	if err != nil {
		return err
	}
	if name != "" && cert.Leaf.Subject.CommonName != pki.NodeUserPrefix+name {
		return fmt.Errorf("certificate is for %q, want %q", cert.Leaf.Subject.CommonName, pki.NodeUserPrefix+name)
	}
	if !pki.HasOrg(cert.Leaf, pki.OrgNodes) {
		return fmt.Errorf("certificate %q is not a node certificate", cert.Leaf.Subject.CommonName)
	}
	return validGossipKeys(n.GossipKeys)
}

// Save writes the credentials into tlsDir (the key and gossip keys 0600);
// the CA certificate last, as the marker that the set is complete.
func (n *NodeCreds) Save(tlsDir string) error {
	if err := n.check(""); err != nil {
		return fmt.Errorf("save node credentials: %w", err)
	}
	gossip, err := marshalGossipKeys(n.GossipKeys)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{FileNodeKey, n.Key, 0o600},
		{FileNodeCert, n.Cert, 0o644},
		{FileGossip, gossip, 0o600},
		{FileCACert, n.CACert, 0o644},
	} {
		if err := pki.WriteFile(filepath.Join(tlsDir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("save node credentials: %w", err)
		}
	}
	return nil
}

// LoadNodeCreds reads what Save wrote; the error wraps os.ErrNotExist when
// a file is missing.
func LoadNodeCreds(tlsDir string) (*NodeCreds, error) {
	n := &NodeCreds{}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{{FileCACert, &n.CACert}, {FileNodeCert, &n.Cert}, {FileNodeKey, &n.Key}} {
		b, err := os.ReadFile(filepath.Join(tlsDir, f.name))
		if err != nil {
			return nil, fmt.Errorf("load node credentials: %w", err)
		}
		*f.dst = b
	}
	keys, err := loadGossipKeys(filepath.Join(tlsDir, FileGossip))
	if err != nil {
		return nil, fmt.Errorf("load node credentials: %w", err)
	}
	n.GossipKeys = keys
	if err := n.check(""); err != nil {
		return nil, fmt.Errorf("load node credentials from %s: %w", tlsDir, err)
	}
	return n, nil
}

// staticSource is a pki.Source that never changes.
type staticSource struct {
	pool *x509.CertPool
	cert *tls.Certificate
}

func (s staticSource) CA() *x509.CertPool            { return s.pool }
func (s staticSource) Certificate() *tls.Certificate { return s.cert }

func (n *NodeCreds) source() (staticSource, error) {
	pool, err := pki.Pool(n.CACert)
	if err != nil {
		return staticSource{}, err
	}
	cert, err := keyPair(n.Cert, n.Key, pool)
	if err != nil {
		return staticSource{}, err
	}
	return staticSource{pool: pool, cert: cert}, nil
}

// ServerTLS is the agent endpoint's config: the node certificate, and only
// clients with a CA certificate of organisation flotilla:servers (the API
// servers) are accepted.
func (n *NodeCreds) ServerTLS() (*tls.Config, error) {
	src, err := n.source()
	if err != nil {
		return nil, err
	}
	server, _ := pki.MutualTLS(src, pki.OrgServers)
	return server, nil
}

// ClientTLS is the agent's config towards the API: the CA as the only root
// (with host name checks) and the node certificate as client certificate.
func (n *NodeCreds) ClientTLS() (*tls.Config, error) {
	src, err := n.source()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		RootCAs:      src.pool,
		Certificates: []tls.Certificate{*src.cert},
	}, nil
}
