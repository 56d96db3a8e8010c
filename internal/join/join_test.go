package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/fsm"
	"flotilla/internal/pki"
)

func createToken(t *testing.T, ts *testServer, role string) string {
	t.Helper()
	tok, info, err := CreateToken(context.Background(), ts.store, role, time.Hour, "test")
	if err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if info.Role != role || !info.Expires.After(time.Now()) {
		t.Fatalf("token info %+v", info)
	}
	return tok
}

func agentConfig(ts *testServer, token string) JoinConfig {
	return JoinConfig{
		APIAddrs: []string{ts.addr},
		Token:    token,
		CAHash:   ts.creds.CAHash(),
		Name:     "node-1",
		IPs:      []net.IP{net.ParseIP("127.0.0.1")},
		Timeout:  10 * time.Second,
	}
}

func TestJoinAgentEndToEnd(t *testing.T) {
	ts := newTestServer(t, true)
	// The first address is unreachable: the joiner moves on to the next.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := agentConfig(ts, createToken(t, ts, RoleAgent))
	cfg.APIAddrs = []string{deadAddr, ts.addr}

	n, err := JoinAgent(context.Background(), cfg)
	if err != nil {
		t.Fatalf("JoinAgent: %v", err)
	}
	kp, err := tls.X509KeyPair(n.Cert, n.Key)
	if err != nil {
		t.Fatal(err)
	}
	if cn := kp.Leaf.Subject.CommonName; cn != "system:node:node-1" || !pki.HasOrg(kp.Leaf, pki.OrgNodes) || pki.HasOrg(kp.Leaf, pki.GroupMasters) {
		t.Fatalf("node certificate CN=%q O=%v", cn, kp.Leaf.Subject.Organization)
	}
	if len(kp.Leaf.IPAddresses) != 1 || !kp.Leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Fatalf("node certificate IPs %v", kp.Leaf.IPAddresses)
	}
	if !bytes.Equal(n.CACert, ts.bundle.CACert) || !slices.EqualFunc(n.GossipKeys, ts.bundle.GossipKeys, bytes.Equal) {
		t.Fatal("node got another CA or other gossip keys")
	}

	dir := filepath.Join(t.TempDir(), "tls")
	if _, err := LoadNodeCreds(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadNodeCreds of nothing: %v, want ErrNotExist", err)
	}
	if err := n.Save(dir); err != nil {
		t.Fatal(err)
	}
	checkMode(t, filepath.Join(dir, FileNodeKey), 0o600)
	n2, err := LoadNodeCreds(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(n2.Cert, n.Cert) || !bytes.Equal(n2.Key, n.Key) || !slices.EqualFunc(n2.GossipKeys, n.GossipKeys, bytes.Equal) {
		t.Fatal("node credentials changed in a save/load round trip")
	}

	// The agent endpoint answers the servers and nobody else.
	stls, err := n.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	agentSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	agentSrv.TLS = stls
	agentSrv.StartTLS()
	defer agentSrv.Close()
	if got, err := get(ts.creds.ClientTLS(), agentSrv.URL); err != nil || got != "flotilla:server:s1" {
		t.Fatalf("server -> agent endpoint: %q, %v", got, err)
	}
	ctls, err := n.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get(ctls, agentSrv.URL); err == nil {
		t.Fatalf("agent -> agent endpoint accepted: %q", got)
	}

	// The agent's client config verifies the server (host name included).
	apiSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	apiSrv.TLS = &tls.Config{Certificates: []tls.Certificate{*ts.creds.Certificate()}, ClientAuth: tls.RequireAnyClientCert}
	apiSrv.StartTLS()
	defer apiSrv.Close()
	if got, err := get(ctls, apiSrv.URL); err != nil || got != "system:node:node-1" {
		t.Fatalf("agent -> API: %q, %v", got, err)
	}
}

func get(tc *tls.Config, url string) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Fatalf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
	}
}

func TestJoinTokenRefused(t *testing.T) {
	ts := newTestServer(t, true)
	ctx := context.Background()

	revoked := createToken(t, ts, RoleAgent)
	revokedID, _, _ := pki.ParseJoinToken(revoked)
	if err := DeleteToken(ctx, ts.store, revokedID); err != nil {
		t.Fatal(err)
	}

	// An expired record the expiry loop has not deleted yet.
	expiredID, expiredSecret := pki.NewJoinToken()
	past := time.Now().Add(-time.Minute)
	val, _ := json.Marshal(tokenRecord{ID: expiredID, SecretHash: pki.HashSecret(expiredSecret), Role: RoleAgent,
		Created: past.Add(-time.Hour), Expires: past})
	if _, err := ts.store.Apply(ctx, &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: TokenPrefix + expiredID, Value: val}}}); err != nil {
		t.Fatal(err)
	}

	good := createToken(t, ts, RoleAgent)
	goodID, _, _ := pki.ParseJoinToken(good)
	unknownID, unknownSecret := pki.NewJoinToken()
	_, wrongSecret := pki.NewJoinToken()

	otherCA, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	otherHash, _ := pki.Hash(otherCA.CertPEM)

	tests := []struct {
		name    string
		token   string
		server  bool // JoinServer instead of JoinAgent
		caHash  string
		want    error
		noToken bool // the token must never reach the server
	}{
		{name: "expired", token: expiredID + "." + expiredSecret, want: ErrUnauthorized},
		{name: "revoked", token: revoked, want: ErrUnauthorized},
		{name: "unknown", token: unknownID + "." + unknownSecret, want: ErrUnauthorized},
		{name: "wrong secret", token: goodID + "." + wrongSecret, want: ErrUnauthorized},
		{name: "agent token asks for a server", token: good, server: true, want: ErrForbidden},
		{name: "wrong CA hash", token: good, caHash: otherHash, want: ErrCAHashMismatch, noToken: true},
		{name: "wrong CA hash (server)", token: good, server: true, caHash: otherHash, want: ErrCAHashMismatch, noToken: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := agentConfig(ts, tt.token)
			if tt.caHash != "" {
				cfg.CAHash = tt.caHash
			}
			before := ts.sawTokens()
			start := time.Now()
			var err error
			if tt.server {
				_, err = JoinServer(ctx, cfg)
			} else {
				_, err = JoinAgent(ctx, cfg)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v: a refusal must not be retried", d)
			}
			if tt.noToken && ts.sawTokens() != before {
				t.Fatal("the joiner sent its token to a cluster with the wrong CA")
			}
			if strings.Contains(err.Error(), strings.SplitN(tt.token, ".", 2)[1]) {
				t.Fatalf("error %q repeats the secret", err)
			}
		})
	}

	// The answer itself is a metav1.Status 401, the same for every failure.
	for _, tok := range []string{revoked, unknownID + "." + unknownSecret, "garbage", ""} {
		code, st := rawJoin(t, ts, tok, joinRequest{Role: RoleAgent, Name: "x", CSR: "-----BEGIN CERTIFICATE REQUEST-----"})
		if code != http.StatusUnauthorized || st.Code != http.StatusUnauthorized || st.Kind != "Status" || st.Message != msgBadToken {
			t.Fatalf("token %q: HTTP %d, status %+v", tok, code, st)
		}
	}
	// A valid token with a bad body: 400.
	for name, req := range map[string]joinRequest{
		"bad role": {Role: "admin", Name: "x"},
		"bad name": {Role: RoleAgent, Name: "Not_A_Name", CSR: "x"},
		"no CSR":   {Role: RoleAgent, Name: "x"},
		"bad CSR":  {Role: RoleAgent, Name: "x", CSR: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"},
		"bad IP":   {Role: RoleAgent, Name: "x", CSR: "CERTIFICATE REQUEST", IPs: []string{"1.2.3"}},
	} {
		if code, st := rawJoin(t, ts, good, req); code != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d %q, want 400", name, code, st.Message)
		}
	}
}

// rawJoin posts a join request with token and returns the code and Status.
func rawJoin(t *testing.T, ts *testServer, token string, req joinRequest) (int, metav1.Status) {
	t.Helper()
	body, _ := json.Marshal(req)
	r, _ := http.NewRequest(http.MethodPost, ts.srv.URL+PathJoin, bytes.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := ts.srv.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st metav1.Status
	json.NewDecoder(resp.Body).Decode(&st)
	return resp.StatusCode, st
}

func TestJoinServerWithJoinToken(t *testing.T) {
	ts := newTestServer(t, true)
	cfg := agentConfig(ts, createToken(t, ts, RoleServer))
	cfg.Name = "s2"
	b, err := JoinServer(context.Background(), cfg)
	if err != nil {
		t.Fatalf("JoinServer: %v", err)
	}
	if !bytes.Equal(b.CACert, ts.bundle.CACert) || !bytes.Equal(b.CAKey, ts.bundle.CAKey) || b.AdminToken != ts.bundle.AdminToken {
		t.Fatal("got another bundle")
	}
	// A server token may join an agent too.
	if _, err := JoinAgent(context.Background(), agentConfig(ts, cfg.Token)); err != nil {
		t.Fatalf("agent with a server token: %v", err)
	}
	// Installing the bundle gives the new server its own certificate.
	creds := NewServerCreds(t.TempDir())
	if creds.Ready() {
		t.Fatal("fresh creds are ready")
	}
	if err := creds.Install(b, "s2", nil, []string{"s2.example"}); err != nil {
		t.Fatal(err)
	}
	if !creds.Ready() || creds.CAHash() != ts.creds.CAHash() {
		t.Fatal("installed creds not ready or of another CA")
	}
	if cn := creds.Certificate().Leaf.Subject.CommonName; cn != "flotilla:server:s2" {
		t.Fatalf("server certificate CN %q", cn)
	}
}

func TestServerTokenExchange(t *testing.T) {
	ts := newTestServer(t, true)
	ctx := context.Background()
	cfg := JoinConfig{APIAddrs: []string{ts.addr}, Token: testServerToken, Name: "s2", Timeout: 10 * time.Second}

	b, err := JoinServer(ctx, cfg)
	if err != nil {
		t.Fatalf("JoinServer: %v", err)
	}
	want, _ := json.Marshal(ts.bundle)
	got, _ := json.Marshal(b)
	if !bytes.Equal(got, want) {
		t.Fatal("the sealed exchange gave another bundle")
	}

	bad := cfg
	bad.Token = "another-token"
	if _, err := JoinServer(ctx, bad); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v, want ErrUnauthorized", err)
	}

	// Replays: a captured request, sent again, and one with an old time.
	post := func(req serverJoinRequest) (int, serverJoinResponse) {
		body, _ := json.Marshal(req)
		resp, err := ts.srv.Client().Post(ts.srv.URL+PathServer, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out serverJoinResponse
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	signed := func(at time.Time) serverJoinRequest {
		nonce := pki.RandomKey()
		return serverJoinRequest{Name: "s3", Nonce: nonce, Time: at.Unix(),
			MAC: computeMAC(derive(testServerToken, infoMAC), nonce, at.Unix(), "s3")}
	}
	fresh := signed(time.Now())
	if code, resp := post(fresh); code != http.StatusOK || len(resp.Sealed) == 0 {
		t.Fatalf("fresh request: HTTP %d", code)
	}
	if code, _ := post(fresh); code != http.StatusUnauthorized {
		t.Fatalf("replayed request: HTTP %d, want 401", code)
	}
	for _, at := range []time.Time{time.Now().Add(-10 * time.Minute), time.Now().Add(10 * time.Minute)} {
		if code, _ := post(signed(at)); code != http.StatusUnauthorized {
			t.Fatalf("request at %v: HTTP %d, want 401", at, code)
		}
	}
	// A name changed after signing breaks the MAC.
	forged := signed(time.Now())
	forged.Name = "evil"
	if code, _ := post(forged); code != http.StatusUnauthorized {
		t.Fatalf("forged name: HTTP %d, want 401", code)
	}
}

// A server that does not hold the token cannot hand a joiner a bundle.
func TestServerTokenImpostor(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sealed, _ := seal(derive("not-the-token", infoSeal), []byte(`{}`), nil)
		writeJSON(w, http.StatusOK, serverJoinResponse{Sealed: sealed})
	}))
	defer srv.Close()
	cfg := JoinConfig{APIAddrs: []string{srv.Listener.Addr().String()}, Token: testServerToken, Name: "s2", Timeout: 10 * time.Second}
	if _, err := JoinServer(context.Background(), cfg); !errors.Is(err, ErrRejected) {
		t.Fatalf("impostor: %v, want ErrRejected", err)
	}
}

// Fresh servers started together: the joiner retries (503) until the first
// one has made its bundle.
func TestServerTokenWaitsForBundle(t *testing.T) {
	ts := newTestServer(t, false)
	b, err := NewBundle(testServerToken)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var got *Bundle
	go func() {
		var err error
		got, err = JoinServer(context.Background(), JoinConfig{APIAddrs: []string{ts.addr}, Token: testServerToken, Name: "s2", Timeout: 20 * time.Second})
		done <- err
	}()
	waitFor(t, 10*time.Second, "a 503", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return slices.Contains(ts.codes, http.StatusServiceUnavailable)
	})
	if err := ts.creds.Install(b, "s1", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("JoinServer: %v", err)
	}
	if !bytes.Equal(got.CAKey, b.CAKey) {
		t.Fatal("got another bundle")
	}

	// Unreachable servers: give up after the timeout.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	_, err = JoinServer(context.Background(), JoinConfig{APIAddrs: []string{addr}, Token: testServerToken, Name: "s2", Timeout: 500 * time.Millisecond})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("unreachable: %v after %v", err, time.Since(start))
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTokensHandler(t *testing.T) {
	ts := newTestServer(t, true)
	c := ts.srv.Client()
	do := func(method, path, body string) (int, []byte) {
		t.Helper()
		r, _ := http.NewRequest(method, ts.srv.URL+path, strings.NewReader(body))
		resp, err := c.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	code, body := do(http.MethodPost, PathTokens, `{"role":"server","ttl":"2h","description":"s4"}`)
	if code != http.StatusCreated {
		t.Fatalf("create: HTTP %d %s", code, body)
	}
	var created CreateTokenResponse
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	id, _, err := pki.ParseJoinToken(created.Token)
	if err != nil || created.CAHash != ts.creds.CAHash() || created.Info.ID != id || created.Info.Role != RoleServer ||
		created.Info.Expires.Sub(created.Info.Created) != 2*time.Hour {
		t.Fatalf("create answered %+v (%v)", created, err)
	}
	// Only the hash of the secret is stored.
	kv, _ := ts.store.Store().Get(TokenPrefix + id)
	if kv == nil || bytes.Contains(kv.Value, []byte(strings.Split(created.Token, ".")[1])) {
		t.Fatalf("stored record %+v", kv)
	}
	if kv.ExpiresAt != created.Info.Expires.UnixNano() {
		t.Fatalf("FSM expiry %d, want %d", kv.ExpiresAt, created.Info.Expires.UnixNano())
	}
	code, body = do(http.MethodPost, PathTokens, `{}`)
	if code != http.StatusCreated || !strings.Contains(string(body), `"role":"agent"`) {
		t.Fatalf("create with defaults: HTTP %d %s", code, body)
	}

	code, body = do(http.MethodGet, PathTokens, "")
	var list []TokenInfo
	if code != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list) != 2 || !slices.ContainsFunc(list, func(i TokenInfo) bool { return i.ID == id }) {
		t.Fatalf("list: HTTP %d %s", code, body)
	}

	if code, body = do(http.MethodDelete, PathTokens+"/"+id, ""); code != http.StatusOK {
		t.Fatalf("delete: HTTP %d %s", code, body)
	}
	if code, _ = do(http.MethodDelete, PathTokens+"/"+id, ""); code != http.StatusNotFound {
		t.Fatalf("delete again: HTTP %d, want 404", code)
	}
	if list, _ := ListTokens(ts.store); len(list) != 1 {
		t.Fatalf("after delete: %d tokens", len(list))
	}

	for _, body := range []string{`{"role":"admin"}`, `{"ttl":"forever"}`, `{"ttl":"-1h"}`, `{"x":1}`, `not json`} {
		if code, b := do(http.MethodPost, PathTokens, body); code != http.StatusBadRequest {
			t.Errorf("create %s: HTTP %d %s, want 400", body, code, b)
		}
	}
	if code, _ := do(http.MethodPut, PathTokens, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT: HTTP %d, want 405", code)
	}
}

func TestBundleAndServerCreds(t *testing.T) {
	data := t.TempDir()
	tlsDir := filepath.Join(data, "tls")
	if _, err := LoadBundle(tlsDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadBundle of nothing: %v", err)
	}
	b, err := NewBundle(testServerToken)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.GossipKeys[0], GossipKeyFromToken(testServerToken)) || len(b.GossipKeys[0]) != 32 {
		t.Fatal("first gossip key is not derived from the token")
	}
	var ring struct {
		Primary string            `json:"primary"`
		Keys    map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(b.SecretsKeyring, &ring); err != nil || ring.Keys[ring.Primary] == "" {
		t.Fatalf("secrets keyring %s: %v", b.SecretsKeyring, err)
	}

	creds := NewServerCreds(data)
	ips := []net.IP{net.ParseIP("10.1.2.3")}
	if err := creds.Install(b, "m1", ips, nil); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{FileCACert: 0o644, FileCAKey: 0o600, FileSAKey: 0o600, FileAdminToken: 0o600,
		FileSecrets: 0o600, FileGossip: 0o600, FileServerCert: 0o644, FileServerKey: 0o600} {
		checkMode(t, filepath.Join(tlsDir, name), mode)
	}
	loaded, err := LoadBundle(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	lj, _ := json.Marshal(loaded)
	bj, _ := json.Marshal(b)
	if !bytes.Equal(lj, bj) {
		t.Fatal("bundle changed in a save/load round trip")
	}

	// A restart finds everything; the same SANs keep the same certificate.
	again := NewServerCreds(data)
	if !again.Ready() || again.LoadError() != nil {
		t.Fatalf("reloaded creds: ready %v, %v", again.Ready(), again.LoadError())
	}
	first := again.Certificate().Leaf.SerialNumber
	if err := again.EnsureServerCert("m1", ips, nil); err != nil {
		t.Fatal(err)
	}
	if again.Certificate().Leaf.SerialNumber.Cmp(first) != 0 {
		t.Fatal("EnsureServerCert reissued an unchanged certificate")
	}
	if err := again.EnsureServerCert("m1", append(ips, net.ParseIP("10.9.9.9")), nil); err != nil {
		t.Fatal(err)
	}
	if again.Certificate().Leaf.SerialNumber.Cmp(first) == 0 || len(again.Certificate().Leaf.IPAddresses) != 4 {
		t.Fatal("EnsureServerCert kept a certificate with old SANs")
	}

	// A rotated gossip keyring on disk is what Bundle hands out.
	rotated := [][]byte{pki.RandomKey(), b.GossipKeys[0]}
	raw, _ := json.Marshal(gossipFile{Primary: 1, Keys: [][]byte{rotated[1], rotated[0]}})
	if err := pki.WriteFile(filepath.Join(tlsDir, FileGossip), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := again.Bundle().GossipKeys; !slices.EqualFunc(got, rotated, bytes.Equal) {
		t.Fatal("Bundle does not carry the rotated gossip keys, primary first")
	}

	// A damaged CA key is reported, not silently replaced.
	if err := os.WriteFile(filepath.Join(tlsDir, FileCAKey), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if broken := NewServerCreds(data); broken.Ready() || broken.LoadError() == nil {
		t.Fatal("damaged credentials: no LoadError")
	}
}

func TestServerCredsClientTLS(t *testing.T) {
	ts := newTestServer(t, true)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*ts.creds.Certificate()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ts.creds.CA()}
	srv.StartTLS()
	defer srv.Close()
	if got, err := get(ts.creds.ClientTLS(), srv.URL); err != nil || got != "flotilla:server:s1" {
		t.Fatalf("server -> server: %q, %v", got, err)
	}
	// Another cluster's server is not trusted.
	other := newTestServer(t, true)
	if _, err := get(other.creds.ClientTLS(), srv.URL); err == nil {
		t.Fatal("a server of another cluster was trusted")
	}
}

func FuzzDecodeJoinRequest(f *testing.F) {
	for _, s := range []string{
		`{"role":"agent","name":"n1","csr":"-----BEGIN CERTIFICATE REQUEST-----","ips":["10.0.0.1","::1"]}`,
		`{"role":"server","name":"s1"}`,
		`{"role":"agent"}`, `{}`, `[]`, `null`, `{"ips":[1]}`, `{"role":"server","name":"s1"} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		req, ips, err := decodeJoinRequest(bytes.NewReader(in))
		if err != nil {
			return
		}
		if req.Role != RoleAgent && req.Role != RoleServer || req.Name == "" || len(ips) != len(req.IPs) {
			t.Fatalf("accepted %q as %+v", in, req)
		}
	})
}

// An agent may join with the server token (as k3s agents do): it gets a
// node certificate for its own key, never the bundle; a swapped CSR breaks
// the MAC.
func TestServerTokenAgent(t *testing.T) {
	ts := newTestServer(t, true)
	ctx := context.Background()
	cfg := JoinConfig{APIAddrs: []string{ts.addr}, Token: testServerToken, Name: "n1",
		IPs: []net.IP{net.ParseIP("10.0.0.7")}, Timeout: 10 * time.Second}
	nc, err := JoinAgent(ctx, cfg)
	if err != nil {
		t.Fatalf("JoinAgent with the server token: %v", err)
	}
	cert, err := pki.ParseCert(nc.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != pki.NodeUserPrefix+"n1" || !pki.HasOrg(cert, pki.OrgNodes) || pki.HasOrg(cert, pki.OrgServers) {
		t.Fatalf("agent got %q %v", cert.Subject.CommonName, cert.Subject.Organization)
	}
	if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.7")) {
		t.Fatalf("agent cert IPs %v", cert.IPAddresses)
	}
	if _, err := tls.X509KeyPair(nc.Cert, nc.Key); err != nil {
		t.Fatalf("the certificate is not for the agent's own key: %v", err)
	}
	bad := cfg
	bad.Token = "another-token"
	if _, err := JoinAgent(ctx, bad); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v, want ErrUnauthorized", err)
	}

	// Someone in the middle swapping in their own CSR breaks the MAC.
	csr, _, _ := pki.NewCSR(pki.NodeUserPrefix + "n1")
	other, _, _ := pki.NewCSR(pki.NodeUserPrefix + "n1")
	req := serverJoinRequest{Name: "n1", Nonce: pki.RandomKey(), Time: time.Now().Unix(), Role: RoleAgent, CSR: string(csr)}
	req.MAC = macOf(derive(testServerToken, infoMAC), requestMACInput(&req))
	req.CSR = string(other)
	body, _ := json.Marshal(req)
	resp, err := ts.srv.Client().Post(ts.srv.URL+PathServer, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("swapped CSR: HTTP %d, want 401", resp.StatusCode)
	}
}
