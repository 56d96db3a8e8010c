package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/agent/gossip"
	"flotilla/cluster"
	"flotilla/internal/join"
	"flotilla/internal/pki"
)

// TestSecurity runs one real server (secure by default: nothing is
// configured for security here) and tries every way in that the issue
// names, each of which must be refused: Raft without a certificate, with
// another CA's, with an agent's; the API without credentials and with
// credentials that have no role; a node's credentials writing another
// node; gossip without the key or with a wrong one; joins with expired,
// revoked, unknown tokens or a wrong CA hash. Secrets must not be readable
// in raft.db or a snapshot, and mutations land in the audit log.
func TestSecurity(t *testing.T) {
	audit := filepath.Join(t.TempDir(), "audit.log")
	s := newServer(t, "sec1", "127.0.9.1", "--bootstrap-expect", "1", "--audit-log", audit)
	dumpOnFailure(t, s)
	s.start()
	waitFor(t, 30*time.Second, "sec1 to lead", func() (bool, string) {
		id, _, err := leaderOf(s)
		if err != nil {
			return false, err.Error()
		}
		return id == "sec1", "no leader"
	})
	caPEM, _ := adminCreds(t, s)
	ca := readCA(t, s)
	caHash, err := pki.Hash(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	admin := clientIn(t, nil, s)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	t.Run("raft refuses peers without a server certificate of this cluster", func(t *testing.T) {
		other, err := pki.NewCA("another-ca")
		if err != nil {
			t.Fatal(err)
		}
		otherCert, otherKey, err := other.Issue(pki.ServerCertRequest("sec1", []net.IP{net.ParseIP("127.0.9.2")}, nil))
		if err != nil {
			t.Fatal(err)
		}
		agentCert, agentKey, err := ca.Issue(pki.NodeCertRequest("n1", []net.IP{net.ParseIP("127.0.9.2")}))
		if err != nil {
			t.Fatal(err)
		}
		pool, err := pki.Pool(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name      string
			cert, key []byte
		}{
			{"no certificate", nil, nil},
			{"another CA's certificate", otherCert, otherKey},
			{"an agent's certificate", agentCert, agentKey},
		}
		for _, c := range cases {
			cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
			if c.cert != nil {
				kp, err := tls.X509KeyPair(c.cert, c.key)
				if err != nil {
					t.Fatal(err)
				}
				cfg.Certificates = []tls.Certificate{kp}
			}
			if err := raftExchange(net.JoinHostPort(s.ip, "6444"), cfg); err == nil {
				t.Errorf("%s: the Raft port accepted the connection and answered", c.name)
			} else {
				t.Logf("%s: refused: %v", c.name, err)
			}
		}
		// Plain TCP speaking Raft's framing gets nothing back either.
		if err := raftExchange(net.JoinHostPort(s.ip, "6444"), nil); err == nil {
			t.Error("plain TCP: the Raft port answered")
		}
	})

	t.Run("the API wants credentials and authorizes them", func(t *testing.T) {
		anon := anonymousHTTP(t, caPEM)
		for path, want := range map[string]int{
			"/api/v1/namespaces":        401,
			"/apis/apps/v1/deployments": 401,
			"/flotilla/v1/tokens":       401,
			"/healthz":                  200,
			"/version":                  200,
			"/readyz":                   200,
		} {
			resp, err := anon.Get("https://" + s.apiAddr() + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("anonymous GET %s: %d, want %d", path, resp.StatusCode, want)
			}
		}
		// Plain HTTP is not served: Go's TLS server answers it 400.
		plain := &http.Client{Timeout: 5 * time.Second}
		if resp, err := plain.Get("http://" + s.apiAddr() + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Error("the API port served plain HTTP")
			}
		}

		// A ServiceAccount with no role: authenticated, allowed nothing.
		mustCreateNS(t, ctx, admin, "sec")
		if _, err := admin.CoreV1().ServiceAccounts("sec").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tok := saToken(t, ctx, admin, "sec", "nobody")
		nobody := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://" + s.apiAddr(), BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: caPEM}})
		_, err := nobody.CoreV1().ConfigMaps("sec").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("a role-less ServiceAccount created a ConfigMap: %v", err)
		}
		if _, err := nobody.CoreV1().Secrets("sec").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("a role-less ServiceAccount listed Secrets: %v", err)
		}
		if err := nobody.CoreV1().Namespaces().Delete(ctx, "sec", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("a role-less ServiceAccount deleted a namespace: %v", err)
		}
		// Given a Role through kubectl, it may do exactly that.
		kubectl := func(args ...string) string {
			out, err := flotilla(ctx, append([]string{"kubectl", "--kubeconfig", s.kubeconfigPath()}, args...)...)
			if err != nil {
				t.Fatalf("kubectl %v: %v\n%s", args, err, out)
			}
			return out
		}
		if who := kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); who != pki.AdminUser {
			t.Errorf("kubectl auth whoami with the admin kubeconfig: %q", who)
		}
		if yes := kubectl("auth", "can-i", "delete", "nodes", "--all-namespaces"); strings.TrimSpace(yes) != "yes" {
			t.Errorf("kubectl auth can-i delete nodes as the admin: %q", yes)
		}
		kubectl("-n", "sec", "create", "role", "cm-writer", "--verb=create,get,list", "--resource=configmaps")
		kubectl("-n", "sec", "create", "rolebinding", "nobody-cm", "--role=cm-writer", "--serviceaccount=sec:nobody")
		waitFor(t, 10*time.Second, "the RoleBinding to take effect", func() (bool, string) {
			_, err := nobody.CoreV1().ConfigMaps("sec").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "x-"}}, metav1.CreateOptions{})
			return err == nil, fmt.Sprint(err)
		})
		if _, err := nobody.CoreV1().Secrets("sec").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the cm-writer role listed Secrets: %v", err)
		}
		if _, err := nobody.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("the cm-writer role (namespace sec) listed ConfigMaps in default: %v", err)
		}
	})

	t.Run("flotilla kubeconfig prints a working admin kubeconfig", func(t *testing.T) {
		out, err := flotilla(ctx, "kubeconfig", "--server", s.apiAddr(), "--data-dir", s.dataDir)
		if err != nil {
			t.Fatalf("kubeconfig: %v\n%s", err, out)
		}
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := os.WriteFile(kc, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := flotilla(ctx, "kubectl", "--kubeconfig", kc, "get", "namespace", "default", "-o", "name"); err != nil || strings.TrimSpace(out) != "namespace/default" {
			t.Fatalf("kubectl with the printed kubeconfig: %v\n%s", err, out)
		}
	})

	t.Run("a node writes only its own Node and its own pods", func(t *testing.T) {
		n1 := nodeClient(t, s, ca, caPEM, "sec-n1")
		n2 := nodeClient(t, s, ca, caPEM, "sec-n2")
		for name, cs := range map[string]kubernetes.Interface{"sec-n1": n1, "sec-n2": n2} {
			if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
				t.Fatalf("%s registers itself: %v", name, err)
			}
		}
		patch := []byte(`{"metadata":{"labels":{"stolen":"yes"}}}`)
		if _, err := n1.CoreV1().Nodes().Patch(ctx, "sec-n2", "application/merge-patch+json", patch, metav1.PatchOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("sec-n1 patched sec-n2's Node: %v", err)
		}
		if _, err := n1.CoreV1().Nodes().Patch(ctx, "sec-n1", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
			t.Errorf("sec-n1 patching its own Node: %v", err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "on-n2", Namespace: "sec"},
			Spec:       corev1.PodSpec{NodeName: "sec-n2", Containers: []corev1.Container{{Name: "c", Image: "toolbox"}}},
		}
		if _, err := admin.CoreV1().Pods("sec").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		status := []byte(`{"status":{"phase":"Failed"}}`)
		if _, err := n1.CoreV1().Pods("sec").Patch(ctx, "on-n2", "application/merge-patch+json", status, metav1.PatchOptions{}, "status"); !apierrors.IsForbidden(err) {
			t.Errorf("sec-n1 wrote the status of a pod on sec-n2: %v", err)
		}
		if _, err := n2.CoreV1().Pods("sec").Patch(ctx, "on-n2", "application/merge-patch+json", []byte(`{"status":{"message":"mine"}}`), metav1.PatchOptions{}, "status"); err != nil {
			t.Errorf("sec-n2 writing its own pod's status: %v", err)
		}
		if _, err := n1.CoreV1().Secrets("sec").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("a node listed Secrets: %v", err)
		}
		if err := n1.CoreV1().Nodes().Delete(ctx, "sec-n2", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("sec-n1 deleted sec-n2's Node: %v", err)
		}
	})

	t.Run("gossip without the key or with a wrong one does not get in", func(t *testing.T) {
		// The server token's key opened gossip only while the cluster
		// formed: its own key replaced it at once.
		keys := clusterGossipKeys(t, s)
		wrong := [][]byte{pki.RandomKey()}
		good := startPool(t, ctx, "sec-good", "127.0.9.11", keys, s)
		bad1 := startPool(t, ctx, "sec-nokey", "127.0.9.12", nil, s)
		bad2 := startPool(t, ctx, "sec-wrongkey", "127.0.9.13", wrong, s)
		bad3 := startPool(t, ctx, "sec-tokenkey", "127.0.9.14", [][]byte{join.GossipKeyFromToken(testServerToken)}, s)
		for _, p := range []*gossip.Pool{good, bad1, bad2, bad3} {
			if p != nil {
				defer p.Leave(time.Second)
			}
		}
		waitFor(t, 20*time.Second, "the keyed member in the server's pool", func() (bool, string) {
			ms, err := members(t, s)
			if err != nil {
				return false, err.Error()
			}
			return hasMember(ms, "sec-good"), fmt.Sprint(ms)
		})
		// The keyed member has been seen; the others had as long, and gossip
		// converges within a few probe rounds on loopback. Look once more
		// after a full round of the good member's gossip.
		ms, err := members(t, s)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"sec-nokey", "sec-wrongkey", "sec-tokenkey"} {
			if hasMember(ms, name) {
				t.Errorf("%s is in the server's gossip pool: %v", name, ms)
			}
		}
		for _, p := range []*gossip.Pool{bad1, bad2, bad3} {
			if p == nil {
				continue
			}
			for _, m := range p.Members() {
				if m.Name == "sec1" {
					t.Errorf("a member without the key sees the server: %+v", m)
				}
			}
		}
	})

	t.Run("joins with bad tokens or a wrong CA hash are refused", func(t *testing.T) {
		create := func(args ...string) (token, hash string) {
			out, err := flotilla(ctx, append([]string{"token", "create", "--kubeconfig", s.kubeconfigPath()}, args...)...)
			if err != nil {
				t.Fatalf("token create: %v\n%s", err, out)
			}
			lines := strings.Fields(out)
			if len(lines) != 2 {
				t.Fatalf("token create printed %q, want a token and a CA hash", out)
			}
			return lines[0], lines[1]
		}
		good, hash := create("--ttl", "1h")
		if hash != caHash {
			t.Fatalf("token create printed CA hash %s, the CA's is %s", hash, caHash)
		}
		expired, _ := create("--ttl", "1s")
		revoked, _ := create("--ttl", "1h")
		id, _, _ := strings.Cut(revoked, ".")
		if out, err := flotilla(ctx, "token", "revoke", id, "--kubeconfig", s.kubeconfigPath()); err != nil {
			t.Fatalf("token revoke: %v\n%s", err, out)
		}
		unknownID, unknownSecret := pki.NewJoinToken()
		tryJoin := func(token, hash string) error {
			jctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			_, err := join.JoinAgent(jctx, join.JoinConfig{
				APIAddrs: []string{s.apiAddr()}, Token: token, CAHash: hash, Role: "agent",
				Name: "sec-joiner", IPs: []net.IP{net.ParseIP("127.0.9.20")}, Timeout: 10 * time.Second,
			})
			return err
		}
		// Past its expiry; the leader's expiry loop deletes the record
		// too, but an expired one must be refused even before that.
		waitFor(t, 10*time.Second, "the short token to expire", func() (bool, string) {
			err := tryJoin(expired, caHash)
			return err != nil, "still accepted"
		})
		for name, c := range map[string][2]string{
			"expired":       {expired, caHash},
			"revoked":       {revoked, caHash},
			"unknown":       {unknownID + "." + unknownSecret, caHash},
			"wrong secret":  {strings.SplitN(good, ".", 2)[0] + "." + unknownSecret, caHash},
			"wrong CA hash": {good, "sha256:" + strings.Repeat("ab", 32)},
		} {
			if err := tryJoin(c[0], c[1]); err == nil {
				t.Errorf("join with the %s token was accepted", name)
			} else {
				t.Logf("%s: refused: %v", name, err)
			}
		}
		if err := tryJoin(good, caHash); err != nil {
			t.Errorf("join with a good token: %v", err)
		}
	})

	t.Run("Secrets are not stored in plaintext", func(t *testing.T) {
		marker := "flotilla-plaintext-marker-" + randomSuffix()
		if _, err := admin.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "marked"},
			StringData: map[string]string{"v": marker},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := admin.CoreV1().Secrets("default").Get(ctx, "marked", metav1.GetOptions{})
		if err != nil || string(got.Data["v"]) != marker {
			t.Fatalf("the Secret reads back as %v, %v", got, err)
		}
		// A key rotation re-encrypts every Secret; it still reads back.
		if out, err := flotilla(ctx, append([]string{"operator", "secrets", "rotate"}, s.opArgs()...)...); err != nil {
			t.Fatalf("secrets rotate: %v\n%s", err, out)
		}
		got, err = admin.CoreV1().Secrets("default").Get(ctx, "marked", metav1.GetOptions{})
		if err != nil || string(got.Data["v"]) != marker {
			t.Fatalf("after a key rotation the Secret reads back as %v, %v", got, err)
		}
		snap := filepath.Join(t.TempDir(), "snap")
		if out, err := flotilla(ctx, append([]string{"operator", "snapshot", "save", snap}, s.opArgs()...)...); err != nil {
			t.Fatalf("snapshot save: %v\n%s", err, out)
		}
		files := []string{snap, filepath.Join(s.dataDir, "raft", "raft.db")}
		snaps, _ := filepath.Glob(filepath.Join(s.dataDir, "raft", "snapshots", "*", "state.bin"))
		files = append(files, snaps...)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(b, []byte(marker)) {
				t.Errorf("%s holds the Secret's value in plaintext", f)
			}
		}
	})

	t.Run("mutations are audited", func(t *testing.T) {
		b, err := os.ReadFile(audit)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			var e map[string]any
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatalf("audit line %q: %v", line, err)
			}
			if e["verb"] == "get" || e["verb"] == "list" || e["verb"] == "watch" {
				t.Errorf("a read was audited: %s", line)
			}
			// A create names no object in its URL; the line has the
			// namespace, the resource and the result.
			if e["verb"] == "create" && e["resource"] == "secrets" && e["namespace"] == "default" && e["user"] == pki.AdminUser && e["code"] == float64(201) {
				found = true
			}
		}
		if !found {
			t.Errorf("no audit line for the admin creating a Secret in default in:\n%s", b)
		}
	})
}

// readCA loads the cluster CA (certificate and key) from s's data dir: the
// test plays a holder of stolen or forged credentials.
func readCA(t *testing.T, s *server) *pki.CA {
	t.Helper()
	c, err := os.ReadFile(filepath.Join(s.dataDir, "tls", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	k, err := os.ReadFile(filepath.Join(s.dataDir, "tls", "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// raftExchange connects to a Raft port (over TLS with cfg, or plain TCP
// when cfg is nil), sends the first bytes of a Raft RPC and waits for any
// answer: nil means the port talked back.
func raftExchange(addr string, cfg *tls.Config) error {
	raw, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	var c net.Conn = raw
	if cfg != nil {
		tc := tls.Client(raw, cfg)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		c = tc
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	// rpcAppendEntries (0) followed by garbage msgpack: a server that let us
	// in answers (an error response) or at least keeps reading; one that
	// refused the certificate has closed the connection.
	if _, err := c.Write([]byte{0, 0x80}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, 1)
	if _, err := c.Read(buf); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && cfg != nil {
			// Kept open and reading: TLS let us in.
			return nil
		}
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

// nodeClient is a clientset holding a node certificate for name, issued by
// the cluster CA (as a join would).
func nodeClient(t *testing.T, s *server, ca *pki.CA, caPEM []byte, name string) kubernetes.Interface {
	t.Helper()
	cert, key, err := ca.Issue(pki.NodeCertRequest(name, []net.IP{net.ParseIP("127.0.9.30")}))
	if err != nil {
		t.Fatal(err)
	}
	return kubernetes.NewForConfigOrDie(&rest.Config{
		Host:            "https://" + s.apiAddr(),
		TLSClientConfig: rest.TLSClientConfig{CAData: caPEM, CertData: cert, KeyData: key},
	})
}

func anonymousHTTP(t *testing.T, caPEM []byte) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 5 * time.Second}
}

func mustCreateNS(t *testing.T, ctx context.Context, cs kubernetes.Interface, name string) {
	t.Helper()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// saToken asks the API (TokenRequest) for a token of ServiceAccount ns/name.
func saToken(t *testing.T, ctx context.Context, cs kubernetes.Interface, ns, name string) string {
	t.Helper()
	var tok string
	waitFor(t, 10*time.Second, "a token for "+ns+"/"+name, func() (bool, string) {
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			return false, err.Error()
		}
		tok = tr.Status.Token
		return tok != "", "empty token"
	})
	return tok
}

// startPool starts a gossip member in the test process joining s.
func startPool(t *testing.T, ctx context.Context, name, ip string, keys [][]byte, s *server) *gossip.Pool {
	t.Helper()
	// A member without the key retries its join until this ends.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := gossip.Start(sctx, gossip.Config{Name: name, Bind: ip, Port: 7946, Join: []string{s.gossipAddr()}, Keys: keys, Timing: "local"})
	if err != nil {
		if !strings.HasPrefix(name, "sec-good") {
			// Refused at the join: as good as never seen. A stand-in
			// that is not a member keeps the rest of the test uniform.
			t.Logf("%s: join refused: %v", name, err)
			return nil
		}
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

func hasMember(ms []cluster.Member, name string) bool {
	for _, m := range ms {
		if m.Name == name && m.Status == "alive" {
			return true
		}
	}
	return false
}
