package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// Identities. Certificates carry the user name in CN and the groups in O.
const (
	// OrgServers is the O of every server (master) certificate; Raft, the
	// agent endpoint and /internal/... accept only certificates with it.
	OrgServers = "flotilla:servers"
	// GroupMasters is Kubernetes' superuser group (servers and the admin).
	GroupMasters = "system:masters"
	// OrgNodes is the O of every agent (node) certificate.
	OrgNodes = "system:nodes"
	// NodeUserPrefix + node name is an agent's user name (certificate CN).
	NodeUserPrefix = "system:node:"
	// ServerUserPrefix + server name is a server's user name (certificate CN).
	ServerUserPrefix = "flotilla:server:"
	// AdminUser is the user name of the bootstrap admin token.
	AdminUser = "flotilla:admin"
)

const (
	caValidity      = 10 * 365 * 24 * time.Hour
	defaultValidity = 365 * 24 * time.Hour
	// backdate covers clock skew between the CA's machine and its peers.
	backdate = time.Hour
)

// PEM block types.
const (
	blockCert  = "CERTIFICATE"
	blockECKey = "EC PRIVATE KEY"
	blockCSR   = "CERTIFICATE REQUEST"
)

// CA is the cluster certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA makes a self-signed CA: ECDSA P-256, valid 10 years.
func NewCA(commonName string) (*CA, error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: encodePEM(blockCert, der), KeyPEM: keyPEM}, nil
}

// ParseCA parses a CA certificate and its key and checks that they belong
// together and that the certificate is a CA.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate: not a CA")
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// ParseCert parses the first CERTIFICATE block of certPEM.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	rest := certPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if b.Type == blockCert {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// ParseKey parses an ECDSA private key in PEM, SEC 1 ("EC PRIVATE KEY")
// or PKCS #8 ("PRIVATE KEY").
func ParseKey(keyPEM []byte) (*ecdsa.PrivateKey, error) {
	rest := keyPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no private key PEM block")
		}
		switch b.Type {
		case blockECKey:
			return x509.ParseECPrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("private key is %T, want ECDSA", k)
			}
			return ek, nil
		}
	}
}

// NewKeyPEM makes an ECDSA P-256 key and returns it PEM-encoded (SEC 1).
func NewKeyPEM() ([]byte, error) {
	_, p, err := newKey()
	return p, err
}

// Hash is kubeadm's discovery CA hash of the first certificate in certPEM:
// "sha256:" + hex sha256 of its DER SubjectPublicKeyInfo.
func Hash(certPEM []byte) (string, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Usage says what a certificate may be used for.
type Usage int

const (
	UsageServer Usage = 1 << iota // TLS server authentication
	UsageClient                   // TLS client authentication
)

// Request is what the CA puts into a certificate.
type Request struct {
	CommonName    string
	Organizations []string
	DNSNames      []string
	IPs           []net.IP
	Usage         Usage
	TTL           time.Duration // 0 = 1 year; never beyond the CA's own expiry
}

// Issue makes a new P-256 key and a certificate for it.
func (ca *CA) Issue(req Request) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.sign(&key.PublicKey, req)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// NewCSR makes a key and a certificate request for it. The key stays with
// the caller; only the CSR is sent.
func NewCSR(commonName string) (csrPEM, keyPEM []byte, err error) {
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return encodePEM(blockCSR, der), keyPEM, nil
}

// SignCSR checks the CSR's signature (proof that the requester holds the
// key) and issues a certificate for its public key. Everything else in the
// certificate comes from req: the CA decides, not the requester.
func (ca *CA) SignCSR(csrPEM []byte, req Request) ([]byte, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != blockCSR {
		return nil, errors.New("no CERTIFICATE REQUEST PEM block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	if err := acceptablePublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return ca.sign(csr.PublicKey, req)
}

func acceptablePublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("CSR key: ECDSA curve %s not accepted (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("CSR key: RSA %d bits not accepted (want at least 2048)", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("CSR key: %T not accepted", pub)
	}
	return nil
}

func (ca *CA) sign(pub crypto.PublicKey, req Request) ([]byte, error) {
	if req.CommonName == "" {
		return nil, errors.New("certificate request: empty common name")
	}
	if req.Usage&(UsageServer|UsageClient) == 0 {
		return nil, errors.New("certificate request: no usage")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ttl := req.TTL
	if ttl <= 0 {
		ttl = defaultValidity
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   req.CommonName,
			Organization: slices.Clone(req.Organizations),
		},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		DNSNames:              slices.Clone(req.DNSNames),
		IPAddresses:           slices.Clone(req.IPs),
	}
	if _, ok := pub.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	if req.Usage&UsageServer != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if req.Usage&UsageClient != 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", req.CommonName, err)
	}
	return encodePEM(blockCert, der), nil
}

// Pool is a pool of every certificate in caPEM (at least one).
func Pool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	rest := caPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != blockCert {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA bundle: %w", err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("CA bundle: no certificate")
	}
	return pool, nil
}

// serverDNSNames are the names clients use for the API inside and outside
// the cluster (as kube-apiserver's serving certificate has).
var serverDNSNames = []string{
	"localhost",
	"kubernetes",
	"kubernetes.default",
	"kubernetes.default.svc",
	"kubernetes.default.svc.cluster.local",
}

// ServerCertRequest is the request for a server's certificate: it serves the
// API and Raft and is the server's client identity towards peers and agents.
func ServerCertRequest(name string, ips []net.IP, dns []string) Request {
	names := append([]string{name}, serverDNSNames...)
	names = appendUnique(names, dns...)
	return Request{
		CommonName:    ServerUserPrefix + name,
		Organizations: []string{OrgServers, GroupMasters},
		DNSNames:      names,
		IPs:           appendUniqueIPs([]net.IP{net.IPv4(127, 0, 0, 1).To4(), net.IPv6loopback}, ips...),
		Usage:         UsageServer | UsageClient,
	}
}

// NodeCertRequest is the request for an agent's certificate: it serves the
// agent endpoint and is the node's client identity towards the API.
func NodeCertRequest(name string, ips []net.IP) Request {
	return Request{
		CommonName:    NodeUserPrefix + name,
		Organizations: []string{OrgNodes},
		DNSNames:      []string{name},
		IPs:           appendUniqueIPs(nil, ips...),
		Usage:         UsageServer | UsageClient,
	}
}

func appendUnique(dst []string, add ...string) []string {
	for _, s := range add {
		if s != "" && !slices.Contains(dst, s) {
			dst = append(dst, s)
		}
	}
	return dst
}

func appendUniqueIPs(dst []net.IP, add ...net.IP) []net.IP {
	for _, ip := range add {
		if ip == nil {
			continue
		}
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		if !slices.ContainsFunc(dst, ip.Equal) {
			dst = append(dst, ip)
		}
	}
	return dst
}

// HasOrg reports whether cert's Subject.Organization contains org.
func HasOrg(cert *x509.Certificate, org string) bool {
	return cert != nil && slices.Contains(cert.Subject.Organization, org)
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return key, encodePEM(blockECKey, der), nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never 0
}

func encodePEM(typ string, der []byte) []byte {
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: typ, Bytes: der}) // writes to memory cannot fail
	return buf.Bytes()
}
