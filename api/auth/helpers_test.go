package auth_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/api/auth"
	"flotilla/fsm"
)

const adminToken = "admin-token-for-tests-0123456789"

// env is an API server on TLS over apitest's in-memory cluster, wrapped by
// auth's Middleware, with a CA of its own for client certificates.
type env struct {
	t       *testing.T
	cluster *apitest.Cluster
	auth    *auth.Auth
	srv     *httptest.Server
	caCert  *x509.Certificate
	caKey   *ecdsa.PrivateKey
	audit   *lockedBuffer

	mu     sync.Mutex
	tokens map[string]*auth.SAClaims
	seq    atomic.Int64
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	b.buf.Reset()
	return s
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, cluster: apitest.NewCluster(fsm.Config{}), audit: &lockedBuffer{}, tokens: map[string]*auth.SAClaims{}}
	discard := slog.New(slog.DiscardHandler)
	a, err := auth.New(auth.Config{
		Store:      e.cluster.Store(),
		AdminToken: adminToken,
		VerifySA:   e.verifySA,
		ReadIndex:  e.cluster.ReadIndex,
		AuditLog:   e.audit,
		Logger:     discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); a.Wait() })
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.auth = a
	srv, err := api.New(api.Config{Cluster: e.cluster, Logger: discard, Middleware: a.Middleware})
	if err != nil {
		t.Fatal(err)
	}
	ectx, ecancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ecancel()
	if err := srv.EnsureDefaults(ectx); err != nil {
		t.Fatalf("EnsureDefaults: %v", err)
	}
	e.newCA()
	pool := x509.NewCertPool()
	pool.AddCert(e.caCert)
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	e.srv = hs
	e.syncRBAC()
	e.audit.take()
	return e
}

func (e *env) newCA() {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.caCert, err = x509.ParseCertificate(der); err != nil {
		e.t.Fatal(err)
	}
	e.caKey = key
}

// cred is one identity and its HTTP client.
type cred struct {
	name   string
	token  string
	client *http.Client
}

// certCred is a client certificate from the env's CA.
func (e *env) certCred(cn string, orgs ...string) cred {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(e.seq.Add(1) + 1),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, e.caCert, &key.PublicKey, e.caKey)
	if err != nil {
		e.t.Fatal(err)
	}
	tr := e.srv.Client().Transport.(*http.Transport).Clone()
	tr.TLSClientConfig.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
	return cred{name: cn, client: &http.Client{Transport: tr}}
}

// tokenCred is a bearer token.
func (e *env) tokenCred(name, token string) cred {
	return cred{name: name, token: token, client: e.srv.Client()}
}

func (e *env) anonymous() cred { return cred{name: auth.UserAnonymous, client: e.srv.Client()} }

func (e *env) admin() cred { return e.tokenCred("flotilla:admin", adminToken) }

// saToken registers a ServiceAccount token the env's verifier accepts.
func (e *env) saToken(c auth.SAClaims) cred {
	tok := fmt.Sprintf("jwt.%d.sig", e.seq.Add(1))
	if c.Audiences == nil {
		c.Audiences = []string{auth.DefaultAudience}
	}
	if c.Expiry.IsZero() {
		c.Expiry = time.Now().Add(time.Hour)
	}
	e.mu.Lock()
	e.tokens[tok] = &c
	e.mu.Unlock()
	return e.tokenCred(auth.ServiceAccountUserName(c.Namespace, c.ServiceAccount), tok)
}

// verifySA stands in for satoken.Verify: the signature check is satoken's
// (tested there); here a token is valid when the env issued it.
func (e *env) verifySA(tok string) (*auth.SAClaims, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.tokens[tok]
	if !ok {
		return nil, errors.New("bad signature")
	}
	cp := *c
	return &cp, nil
}

// response is one answer, read whole.
type response struct {
	code   int
	body   []byte
	status metav1.Status
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.code, bytes.TrimSpace(r.body)) }

func (e *env) do(c cred, method, path string, body any) response {
	e.t.Helper()
	return e.doCtx(context.Background(), c, method, path, body)
}

func (e *env) doCtx(ctx context.Context, c cred, method, path string, body any) response {
	e.t.Helper()
	var rd io.Reader
	ctype := "application/json"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
		if strings.HasPrefix(b, "apiVersion:") {
			ctype = "application/yaml"
		}
	default:
		data, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	if method == http.MethodPatch {
		ctype = "application/merge-patch+json"
	}
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return response{code: -1}
		}
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && strings.Contains(path, "watch=1") {
		return response{code: resp.StatusCode} // a stream: its start is the answer
	}
	data, _ := io.ReadAll(resp.Body)
	r := response{code: resp.StatusCode, body: data}
	if resp.StatusCode >= 300 {
		_ = json.Unmarshal(data, &r.status)
	}
	return r
}

// must sends a request that must answer want; it returns the body.
func (e *env) must(c cred, want int, method, path string, body any) []byte {
	e.t.Helper()
	r := e.do(c, method, path, body)
	if r.code != want {
		e.t.Fatalf("%s %s as %s: %s, want %d", method, path, c.name, r, want)
	}
	return r.body
}

// put writes an object straight into the store (RBAC objects: they need
// no API handler) and returns the revision.
func (e *env) put(key string, obj any) uint64 {
	e.t.Helper()
	v, err := json.Marshal(obj)
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := e.cluster.Apply(context.Background(), &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: key, Value: v}}})
	if err != nil || !res.Succeeded {
		e.t.Fatalf("put %s: %v %+v", key, err, res)
	}
	return res.Revision
}

func (e *env) del(key string) uint64 {
	e.t.Helper()
	res, err := e.cluster.Apply(context.Background(), &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpDelete, Key: key}}})
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Revision
}

func (e *env) waitRBAC(rev uint64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.auth.WaitRBAC(ctx, rev); err != nil {
		e.t.Fatal(err)
	}
}

// syncRBAC writes a marker RBAC object and waits until the cache has it,
// so everything written before is in the cache too.
func (e *env) syncRBAC() {
	e.t.Helper()
	e.waitRBAC(e.put("/rbac.authorization.k8s.io/clusterroles/zz-sync-marker", &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "zz-sync-marker"}}))
}

// waitPods waits until the pod index has the write that returned body.
func (e *env) waitPods(body []byte) {
	e.t.Helper()
	var m metav1.PartialObjectMetadata
	if err := json.Unmarshal(body, &m); err != nil {
		e.t.Fatal(err)
	}
	rev, err := strconv.ParseUint(m.ResourceVersion, 10, 64)
	if err != nil {
		e.t.Fatalf("resourceVersion %q: %v", m.ResourceVersion, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.auth.WaitPods(ctx, rev); err != nil {
		e.t.Fatal(err)
	}
}

func clusterRole(name string, rules ...rbacv1.PolicyRule) *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
}

func bind(kind, ns, name, roleKind, role string, subjects ...rbacv1.Subject) any {
	meta := metav1.ObjectMeta{Namespace: ns, Name: name}
	ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: roleKind, Name: role}
	if kind == "ClusterRoleBinding" {
		return &rbacv1.ClusterRoleBinding{ObjectMeta: meta, RoleRef: ref, Subjects: subjects}
	}
	return &rbacv1.RoleBinding{ObjectMeta: meta, RoleRef: ref, Subjects: subjects}
}

func user(name string) rbacv1.Subject { return rbacv1.Subject{Kind: rbacv1.UserKind, Name: name} }

func uidOf(t *testing.T, body []byte) string {
	t.Helper()
	var m metav1.PartialObjectMetadata
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	return string(m.UID)
}
