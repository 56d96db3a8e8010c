package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// source is a pki.Source whose certificate can be swapped.
type source struct {
	pool *x509.CertPool
	cert atomic.Pointer[tls.Certificate]
}

func (s *source) CA() *x509.CertPool            { return s.pool }
func (s *source) Certificate() *tls.Certificate { return s.cert.Load() }

func newSource(t testing.TB, ca, trust *CA, req *Request) *source {
	t.Helper()
	pool, err := Pool(trust.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	s := &source{pool: pool}
	if req != nil {
		certPEM, keyPEM, err := ca.Issue(*req)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		s.cert.Store(&kp)
	}
	return s
}

// connect runs one TLS connection over loopback TCP and returns the
// server's and the client's errors. The server writes "ok" after its
// handshake so a client refused by the server sees it (in TLS 1.3 the
// client finishes its handshake before the server checks its certificate).
func connect(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte("ok"))
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, client)
	clientErr = tc.Handshake()
	if clientErr == nil {
		buf := make([]byte, 2)
		if _, err := io.ReadFull(tc, buf); err != nil {
			clientErr = err
		}
	}
	tc.Close()
	return <-done, clientErr
}

func TestMutualTLS(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	serverReq := ServerCertRequest("s1", nil, nil)
	nodeReq := NodeCertRequest("n1", nil)
	good := newSource(t, ca, ca, &serverReq)

	tests := []struct {
		name         string
		server, peer *source // server side, client side
		wantServer   string  // substring of the server's error ("" = accepted)
		wantClient   string  // substring of the client's error
	}{
		{name: "both servers of the cluster", server: good, peer: newSource(t, ca, ca, &serverReq)},
		{name: "client cert from another CA", server: good, peer: newSource(t, other, ca, &serverReq), wantServer: "certificate"},
		{name: "client with an agent cert", server: good, peer: newSource(t, ca, ca, &nodeReq), wantServer: "not in organisation"},
		{name: "client without a cert", server: good, peer: newSource(t, ca, ca, nil), wantClient: ErrNoCertificate.Error()},
		{name: "server cert from another CA", server: newSource(t, other, other, &serverReq), peer: good, wantClient: "unknown authority"},
		{name: "server with an agent cert", server: newSource(t, ca, ca, &nodeReq), peer: good, wantClient: "not in organisation"},
		{name: "server without a cert yet", server: newSource(t, ca, ca, nil), peer: good, wantServer: ErrNoCertificate.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			scfg, _ := MutualTLS(tt.server, OrgServers)
			_, ccfg := MutualTLS(tt.peer, OrgServers)
			serr, cerr := connect(t, scfg, ccfg)
			if tt.wantServer == "" && tt.wantClient == "" {
				if serr != nil || cerr != nil {
					t.Fatalf("refused: server %v, client %v", serr, cerr)
				}
				return
			}
			if serr == nil || cerr == nil {
				t.Fatalf("accepted: server %v, client %v", serr, cerr)
			}
			if tt.wantServer != "" && !strings.Contains(serr.Error(), tt.wantServer) {
				t.Fatalf("server error %q, want it to mention %q", serr, tt.wantServer)
			}
			if tt.wantClient != "" && !strings.Contains(cerr.Error(), tt.wantClient) {
				t.Fatalf("client error %q, want it to mention %q", cerr, tt.wantClient)
			}
		})
	}
}

// A certificate installed after the configs were built is used at once.
func TestMutualTLSLateCertificate(t *testing.T) {
	ca := newTestCA(t)
	req := ServerCertRequest("s1", nil, nil)
	srv := newSource(t, ca, ca, &req)
	late := newSource(t, ca, ca, nil)
	scfg, _ := MutualTLS(srv, OrgServers)
	_, ccfg := MutualTLS(late, OrgServers)
	if serr, cerr := connect(t, scfg, ccfg); serr == nil && cerr == nil {
		t.Fatal("accepted a client without a certificate")
	}
	late.cert.Store(srv.Certificate())
	if serr, cerr := connect(t, scfg, ccfg); serr != nil || cerr != nil {
		t.Fatalf("after install: server %v, client %v", serr, cerr)
	}
}
