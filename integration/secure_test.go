package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/cluster"
	"flotilla/internal/join"
)

// testServerToken is the shared server token every test server (and agent)
// is started with: each test's cluster is its own (own CA, own keys), the
// token only opens the first exchange.
var testServerToken = func() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "it-" + hex.EncodeToString(b)
}()

// serverish is a server or a node (which embeds one).
type serverish interface{ self() *server }

func (s *server) self() *server { return s }

func (s *server) kubeconfigPath() string { return filepath.Join(s.dataDir, "kubeconfig") }

// opArgs point `flotilla operator` at s with its admin kubeconfig.
func (s *server) opArgs() []string {
	return []string{"--server", s.apiAddr(), "--kubeconfig", s.kubeconfigPath()}
}

// adminCreds waits until s has the cluster's keys (its kubeconfig is
// written then) and returns the cluster CA and the admin token.
func adminCreds(t testing.TB, s *server) (ca []byte, token string) {
	t.Helper()
	tlsDir := filepath.Join(s.dataDir, "tls")
	waitFor(t, 90*time.Second, s.name+"'s credentials", func() (bool, string) {
		return fileExists(s.kubeconfigPath()) && fileExists(filepath.Join(tlsDir, "admin.token")), "not written yet"
	})
	ca, err := os.ReadFile(filepath.Join(tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(tlsDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return ca, strings.TrimSpace(string(tok))
}

// adminREST is an admin client configuration for s's API, dialled from
// inside h (nil: from the test process). It may be made before s has its
// credentials: the CA and the token are read at the first request (and
// again until they exist), so tests can build clients before they start
// servers, as they did when the API needed none.
func adminREST(t testing.TB, h *testHost, s *server) *rest.Config {
	t.Helper()
	tlsDir := filepath.Join(s.dataDir, "tls")
	lt := &lazyTLS{caFile: filepath.Join(tlsDir, "ca.crt"), tokenFile: filepath.Join(tlsDir, "admin.token")}
	if h != nil {
		lt.dial = h.dial
	}
	return &rest.Config{
		Host:      "https://" + s.apiAddr(),
		Transport: lt,
		QPS:       -1,
	}
}

// lazyTLS is an HTTPS transport trusting the CA in caFile and sending the
// bearer token in tokenFile, built at the first request once both exist.
// (client-go reads a BearerTokenFile when the client is made.)
type lazyTLS struct {
	caFile, tokenFile string
	dial              func(ctx context.Context, network, addr string) (net.Conn, error)

	mu    sync.Mutex
	rt    *http.Transport
	token string
}

func (l *lazyTLS) RoundTrip(r *http.Request) (*http.Response, error) {
	l.mu.Lock()
	if l.rt == nil {
		ca, err := os.ReadFile(l.caFile)
		if err != nil {
			l.mu.Unlock()
			return nil, fmt.Errorf("no cluster CA yet: %w", err)
		}
		tok, err := os.ReadFile(l.tokenFile)
		if err != nil {
			l.mu.Unlock()
			return nil, fmt.Errorf("no admin token yet: %w", err)
		}
		l.token = strings.TrimSpace(string(tok))
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		l.rt = &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			DialContext:         l.dial,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 64,
		}
	}
	rt, tok := l.rt, l.token
	l.mu.Unlock()
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	return rt.RoundTrip(r)
}

// clientIn is a client-go clientset that talks to s's API from inside h.
func clientIn(t testing.TB, h *testHost, s serverish) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(adminREST(t, h, s.self()))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// adminHTTP is an HTTP client with s's admin credentials (operator
// endpoints), dialling from inside h (nil: the test process).
func adminHTTP(t testing.TB, h *testHost, s *server, timeout time.Duration) *http.Client {
	t.Helper()
	c, err := rest.HTTPClientFor(adminREST(t, h, s))
	if err != nil {
		t.Fatal(err)
	}
	c.Timeout = timeout
	return c
}

// serverCertHTTP is an HTTP client holding s's server certificate: what
// the masters use for each other's internal endpoints and for agents'
// endpoints (which answer only masters).
func serverCertHTTP(t testing.TB, h *testHost, s *server, timeout time.Duration) *http.Client {
	t.Helper()
	adminCreds(t, s)
	tlsDir := filepath.Join(s.dataDir, "tls")
	cert, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "server.crt"), filepath.Join(tlsDir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}, DisableKeepAlives: true}
	if h != nil {
		tr.DialContext = h.dial
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// clusterGossipKeys waits until s's cluster has replaced the gossip key it
// started with (derived from the server token) with its own, and returns
// the keyring s applied: what an in-process gossip member needs to join.
func clusterGossipKeys(t testing.TB, s *server) [][]byte {
	t.Helper()
	path := filepath.Join(s.dataDir, "tls", "gossip.json")
	tokenKey := join.GossipKeyFromToken(testServerToken)
	var keys [][]byte
	waitFor(t, 90*time.Second, s.name+"'s own gossip key", func() (bool, string) {
		k, err := cluster.LoadKeyringFile(path)
		if err != nil {
			return false, err.Error()
		}
		keys = k
		return !slices.ContainsFunc(k, func(x []byte) bool { return bytes.Equal(x, tokenKey) }), fmt.Sprintf("%d keys, the token's among them", len(k))
	})
	return keys
}
