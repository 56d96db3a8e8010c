package pki

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func TestCARoundTrip(t *testing.T) {
	ca := newTestCA(t)
	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate: IsCA=%v KeyUsage=%v", ca.Cert.IsCA, ca.Cert.KeyUsage)
	}
	if d := time.Until(ca.Cert.NotAfter); d < 9*365*24*time.Hour {
		t.Fatalf("CA valid for %v, want about 10 years", d)
	}
	got, err := ParseCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatalf("ParseCA: %v", err)
	}
	if !got.Cert.Equal(ca.Cert) || !got.Key.Equal(ca.Key) {
		t.Fatal("ParseCA returned another CA")
	}

	other := newTestCA(t)
	leafPEM, leafKey, err := ca.Issue(NodeCertRequest("n1", nil))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ cert, key []byte }{
		"key of another CA": {ca.CertPEM, other.KeyPEM},
		"not a CA":          {leafPEM, leafKey},
		"garbage cert":      {[]byte("nope"), ca.KeyPEM},
		"garbage key":       {ca.CertPEM, []byte("nope")},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseCA(c.cert, c.key); err == nil {
				t.Fatal("ParseCA accepted it")
			}
		})
	}
}

func TestHash(t *testing.T) {
	ca := newTestCA(t)
	h, err := Hash(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(ca.Cert.RawSubjectPublicKeyInfo)
	if want := "sha256:" + hex.EncodeToString(sum[:]); h != want {
		t.Fatalf("Hash = %s, want %s", h, want)
	}
	if !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(h) {
		t.Fatalf("Hash %q is not in kubeadm's form", h)
	}
	if h2, _ := Hash(newTestCA(t).CertPEM); h2 == h {
		t.Fatal("two CAs have the same hash")
	}
	if _, err := Hash([]byte("junk")); err == nil {
		t.Fatal("Hash of junk succeeded")
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t)
	pool, err := Pool(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	ip := net.ParseIP("10.0.0.7")
	tests := []struct {
		name     string
		req      Request
		cn       string
		orgs     []string
		dns      []string
		ips      []string
		validFor time.Duration
	}{
		{
			name:     "server",
			req:      ServerCertRequest("m1", []net.IP{ip}, []string{"api.example.com", "m1"}),
			cn:       "flotilla:server:m1",
			orgs:     []string{OrgServers, GroupMasters},
			dns:      []string{"m1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "api.example.com"},
			ips:      []string{"127.0.0.1", "::1", "10.0.0.7"},
			validFor: 365 * 24 * time.Hour,
		},
		{
			name:     "node",
			req:      NodeCertRequest("n1", []net.IP{ip}),
			cn:       "system:node:n1",
			orgs:     []string{OrgNodes},
			dns:      []string{"n1"},
			ips:      []string{"10.0.0.7"},
			validFor: 365 * 24 * time.Hour,
		},
		{
			name:     "short ttl",
			req:      Request{CommonName: "x", Usage: UsageClient, TTL: time.Hour},
			cn:       "x",
			validFor: time.Hour,
		},
		{
			name:     "ttl beyond the CA is clamped",
			req:      Request{CommonName: "x", Usage: UsageClient, TTL: 100 * 365 * 24 * time.Hour},
			cn:       "x",
			validFor: time.Until(ca.Cert.NotAfter),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tt.req)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			kp, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatalf("key pair: %v", err)
			}
			c := kp.Leaf
			usage := x509.ExtKeyUsageClientAuth
			if tt.req.Usage&UsageServer != 0 {
				usage = x509.ExtKeyUsageServerAuth
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Fatalf("verify: %v", err)
			}
			if c.Subject.CommonName != tt.cn || !sameSet(c.Subject.Organization, tt.orgs) {
				t.Fatalf("subject CN=%q O=%v, want %q %v", c.Subject.CommonName, c.Subject.Organization, tt.cn, tt.orgs)
			}
			if !slices.Equal(c.DNSNames, tt.dns) {
				t.Fatalf("DNS SANs %v, want %v", c.DNSNames, tt.dns)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.ips) {
				t.Fatalf("IP SANs %v, want %v", ips, tt.ips)
			}
			if c.IsCA {
				t.Fatal("leaf is a CA")
			}
			if d := time.Until(c.NotAfter); d > tt.validFor || d < tt.validFor-time.Minute {
				t.Fatalf("valid for %v more, want about %v", d, tt.validFor)
			}
		})
	}
	if _, _, err := ca.Issue(Request{Usage: UsageClient}); err == nil {
		t.Fatal("Issue without a common name succeeded")
	}
	if _, _, err := ca.Issue(Request{CommonName: "x"}); err == nil {
		t.Fatal("Issue without a usage succeeded")
	}
}

func TestSignCSR(t *testing.T) {
	ca := newTestCA(t)
	// The requester asks to be an admin; the CA decides otherwise.
	csrPEM, keyPEM, err := NewCSR("system:masters-wannabe")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCSR(csrPEM, NodeCertRequest("n2", nil))
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("the certificate is not for the CSR's key: %v", err)
	}
	if kp.Leaf.Subject.CommonName != "system:node:n2" || !HasOrg(kp.Leaf, OrgNodes) || HasOrg(kp.Leaf, GroupMasters) {
		t.Fatalf("subject %v: want the CA's request", kp.Leaf.Subject)
	}

	block, _ := pem.Decode(csrPEM)
	tampered := slices.Clone(block.Bytes)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	for name, in := range map[string][]byte{
		"tampered signature": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}),
		"not PEM":            []byte("hello"),
		"a certificate":      ca.CertPEM,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ca.SignCSR(in, NodeCertRequest("n2", nil)); err == nil {
				t.Fatal("SignCSR accepted it")
			}
		})
	}
}

func TestPool(t *testing.T) {
	a, b := newTestCA(t), newTestCA(t)
	pool, err := Pool(append(slices.Clone(a.CertPEM), b.CertPEM...))
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*CA{a, b} {
		cert, _, err := ca.Issue(Request{CommonName: "c", Usage: UsageClient})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := ParseCert(cert)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("pool of both CAs: %v", err)
		}
	}
	if _, err := Pool([]byte("none")); err == nil {
		t.Fatal("Pool without certificates succeeded")
	}
}

func TestJoinTokens(t *testing.T) {
	form := regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	seen := map[string]bool{}
	for range 100 {
		id, secret := NewJoinToken()
		tok := id + "." + secret
		if !form.MatchString(tok) {
			t.Fatalf("token %q not in kubeadm's form", tok)
		}
		if seen[tok] {
			t.Fatalf("token %q made twice", tok)
		}
		seen[tok] = true
		gid, gsecret, err := ParseJoinToken(tok)
		if err != nil || gid != id || gsecret != secret {
			t.Fatalf("ParseJoinToken(%q) = %q, %q, %v", tok, gid, gsecret, err)
		}
	}
	for _, bad := range []string{
		"", "abcdef.0123456789abcdef0", "abcdef0123456789abcdef", "ABCDEF.0123456789abcdef",
		"abcde.0123456789abcdefg", "abcdef.0123456789abcde!", " abcdef.0123456789abcde", NewServerToken(),
	} {
		if _, _, err := ParseJoinToken(bad); err == nil {
			t.Errorf("ParseJoinToken(%q) accepted it", bad)
		}
	}
	if h := HashSecret("0123456789abcdef"); len(h) != 64 || h == HashSecret("0123456789abcdeg") {
		t.Fatalf("HashSecret = %q", h)
	}
	if s := NewServerToken(); len(s) != 64 || strings.Trim(s, "0123456789abcdef") != "" {
		t.Fatalf("NewServerToken = %q", s)
	}
	if k := RandomKey(); len(k) != 32 {
		t.Fatalf("RandomKey is %d bytes", len(k))
	}
}

func FuzzParseJoinToken(f *testing.F) {
	for _, s := range []string{"abcdef.0123456789abcdef", "", ".", "abcdef.", "ABCDEF.0123456789ABCDEF", "abcdef.0123456789abcde\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, err := ParseJoinToken(s)
		if err != nil {
			if id != "" || secret != "" {
				t.Fatalf("error with parts %q %q", id, secret)
			}
			return
		}
		if id+"."+secret != s || !ValidTokenID(id) || len(secret) != 16 {
			t.Fatalf("ParseJoinToken(%q) = %q, %q", s, id, secret)
		}
	})
}

func TestWriteFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	path := filepath.Join(dir, "k.key")
	for _, data := range []string{"first", "second"} {
		if err := WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Fatalf("read back %q, %v; want %q", got, err, data)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v, want 0700", di.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
