package join

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

const testServerToken = "test-server-token-0123456789abcdef"

// memStore is a one-member "cluster": Apply commits straight into a real
// fsm.Store.
type memStore struct {
	mu sync.Mutex
	s  *fsm.Store
}

func newMemStore() *memStore { return &memStore{s: fsm.New(fsm.Config{})} }

func (m *memStore) ReadIndex(context.Context) error { return nil }
func (m *memStore) Store() *fsm.Store               { return m.s }

func (m *memStore) Apply(_ context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	data, err := fsm.EncodeTxn(txn)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	res := m.s.Apply(&raft.Log{Index: m.s.Revision() + 1, Type: raft.LogCommand, Data: data})
	return res.(*fsm.TxnResult), nil
}

// testServer is one server's join and tokens endpoints on an HTTPS
// listener configured as the API port is.
type testServer struct {
	creds  *ServerCreds
	bundle *Bundle
	store  *memStore
	srv    *httptest.Server
	addr   string

	mu        sync.Mutex
	joinAuths int // POSTs to PathJoin that carried an Authorization header
	codes     []int
}

func (ts *testServer) sawTokens() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.joinAuths
}

// newTestServer starts a server; with install false it has no credentials
// until the test installs them.
func newTestServer(t *testing.T, install bool) *testServer {
	t.Helper()
	ts := &testServer{creds: NewServerCreds(t.TempDir()), store: newMemStore()}
	if install {
		b, err := NewBundle(testServerToken)
		if err != nil {
			t.Fatal(err)
		}
		ts.bundle = b
		if err := ts.creds.Install(b, "s1", []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	join := NewHandler(ts.creds, testServerToken, ts.store, nil)
	tokens := NewTokensHandler(ts.creds, ts.store)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == PathJoin && r.Header.Get("Authorization") != "" {
			ts.mu.Lock()
			ts.joinAuths++
			ts.mu.Unlock()
		}
		rec := &codeRecorder{ResponseWriter: w}
		switch {
		case strings.HasPrefix(r.URL.Path, PathJoin):
			join.ServeHTTP(rec, r)
		case strings.HasPrefix(r.URL.Path, PathTokens):
			tokens.ServeHTTP(rec, r)
		default:
			http.NotFound(rec, r)
		}
		ts.mu.Lock()
		ts.codes = append(ts.codes, rec.code)
		ts.mu.Unlock()
	})
	ts.srv = httptest.NewUnstartedServer(mux)
	ts.srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ts.creds.CA()}
	if c := ts.creds.Certificate(); c != nil {
		ts.srv.TLS.Certificates = []tls.Certificate{*c}
	} // else httptest's own: the server-token exchange does not rely on it
	ts.srv.StartTLS()
	t.Cleanup(ts.srv.Close)
	ts.addr = ts.srv.Listener.Addr().String()
	return ts
}

type codeRecorder struct {
	http.ResponseWriter
	code int
}

func (c *codeRecorder) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// computeMAC signs a server's (role-less) server-token request, as a
// joiner does.
func computeMAC(key []byte, nonce []byte, t int64, name string) []byte {
	return macOf(key, macInput(nonce, t, name))
}
