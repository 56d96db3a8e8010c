package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"flotilla/api"
	"flotilla/cluster"
	"flotilla/internal/join"
	"flotilla/internal/pki"
)

// serverToken resolves the shared server token: --token, else the one in
// <data-dir>/token, else (a server that bootstraps a new cluster) a new one
// written there, as k3s does. A join token (id.secret) given as --token is
// returned as is and never written: it is single-purpose.
func serverToken(dataDir, flag string, bootstrapping, haveCreds bool, log *slog.Logger) (string, error) {
	path := filepath.Join(dataDir, "token")
	if flag != "" {
		if _, _, err := pki.ParseJoinToken(flag); err == nil {
			return flag, nil
		}
		old, err := os.ReadFile(path)
		if err == nil && strings.TrimSpace(string(old)) == flag {
			return flag, nil
		}
		if err == nil {
			log.Warn("--token differs from the stored server token; storing the new one", "path", path)
		}
		return flag, pki.WriteFile(path, []byte(flag+"\n"), 0o600)
	}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("server token: %w", err)
	}
	if haveCreds {
		// A restarted server needs no token: it has the cluster's keys.
		return "", nil
	}
	if !bootstrapping {
		return "", errors.New("--token is required to join a cluster: the server token (the file token in a server's data dir) or a join token from `flotilla token create --role server` (with --ca-hash)")
	}
	t := pki.NewServerToken()
	if err := pki.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("server token: %w", err)
	}
	log.Info("generated the server token; give it as --token to the other servers", "path", path)
	return t, nil
}

// certNames are the names and addresses a server's certificate carries
// besides the built-in ones (pki.ServerCertRequest adds localhost and the
// in-cluster Service names).
type certNames struct {
	ips []net.IP
	dns []string
}

func serverCertNames(name, bind, advertise string, sans []string, serviceIP net.IP) (certNames, error) {
	n := certNames{dns: []string{name}, ips: []net.IP{serviceIP}}
	for _, a := range []string{bind, advertise} {
		if ip := net.ParseIP(a); ip != nil && !ip.IsUnspecified() {
			n.ips = append(n.ips, ip)
		}
	}
	if advertise == "" {
		if ip, err := nodeAddress(bind, ""); err == nil {
			n.ips = append(n.ips, net.ParseIP(ip))
		}
	}
	for _, s := range sans {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
		case net.ParseIP(s) != nil:
			n.ips = append(n.ips, net.ParseIP(s))
		default:
			n.dns = append(n.dns, s)
		}
	}
	return n, nil
}

// apiTLS serves the API port: the server's certificate once it has one
// (before that, while a new cluster forms, a throwaway self-signed one: the
// only thing served then is the token-sealed join exchange, which does not
// rely on TLS to prove anything), client certificates from the cluster CA
// verified when given.
type apiTLS struct {
	creds *join.ServerCreds

	mu       sync.Mutex
	cert     *tls.Certificate // the one cached is built for
	cached   *tls.Config
	fallback *tls.Config
}

func newAPITLS(creds *join.ServerCreds) (*apiTLS, error) {
	c, err := selfSigned()
	if err != nil {
		return nil, err
	}
	return &apiTLS{creds: creds, fallback: &tls.Config{
		Certificates: []tls.Certificate{*c},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}}, nil
}

func (a *apiTLS) config() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return a.current(), nil },
	}
}

func (a *apiTLS) current() *tls.Config {
	cert := a.creds.Certificate()
	if cert == nil || !a.creds.Ready() {
		return a.fallback
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cert != cert {
		a.cert = cert
		a.cached = &tls.Config{
			Certificates: []tls.Certificate{*cert},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    a.creds.CA(),
			NextProtos:   []string{"h2", "http/1.1"},
			MinVersion:   tls.VersionTLS12,
		}
	}
	return a.cached
}

// selfSigned makes the throwaway certificate of a server that has no
// cluster CA yet.
func selfSigned() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "flotilla-bootstrap"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// apiAddrsFor turns gossip join addresses into API addresses (same host,
// the API port): a joiner is given one address and finds the rest.
func apiAddrsFor(join []string, port int) []string {
	var out []string
	for _, j := range join {
		host, _, err := net.SplitHostPort(j)
		if err != nil {
			host = j
		}
		out = append(out, net.JoinHostPort(host, strconv.Itoa(port)))
	}
	return out
}

// preBootstrap runs when a new cluster's servers have all been seen and
// before Raft is bootstrapped: Raft speaks mutual TLS, so each needs the
// cluster's keys first. The server with the lowest name makes them; the
// others fetch them from it through the token-sealed exchange.
func preBootstrap(creds *join.ServerCreds, token string, names certNames, self string, log *slog.Logger) func(ctx context.Context, servers []cluster.Member) error {
	return func(ctx context.Context, servers []cluster.Member) error {
		if creds.Ready() {
			return nil
		}
		if len(servers) == 0 {
			return errors.New("no servers")
		}
		first := servers[0]
		if first.Name == self {
			b, err := join.NewBundle(token)
			if err != nil {
				return err
			}
			log.Info("made the cluster CA and keys")
			return creds.Install(b, self, names.ips, names.dns)
		}
		addr := first.Meta[cluster.MetaAPIAddr]
		if addr == "" {
			return fmt.Errorf("server %s advertises no API address", first.Name)
		}
		if err := fetchKeys(ctx, creds, token, "", names, self, []string{addr}, 5*time.Second); err != nil {
			return fmt.Errorf("fetch the cluster's keys from %s: %w", first.Name, err)
		}
		log.Info("received the cluster CA and keys", "from", first.Name)
		return nil
	}
}

// fetchKeys gets the cluster's keys from a server at one of addrs (the
// token-sealed exchange, or the join-token flow when token is one, checked
// against caHash) and installs them, issuing this server's certificate;
// trying for at most timeout. Nothing is installed over keys that arrived
// meanwhile by another way.
func fetchKeys(ctx context.Context, creds *join.ServerCreds, token, caHash string, names certNames, self string, addrs []string, timeout time.Duration) error {
	jctx, cancel := context.WithTimeout(ctx, timeout+2*time.Second)
	defer cancel()
	b, err := join.JoinServer(jctx, join.JoinConfig{
		APIAddrs: addrs, Token: token, CAHash: caHash, Role: "server", Name: self, IPs: names.ips, Timeout: timeout,
	})
	if err != nil {
		return err
	}
	if creds.Ready() {
		return nil
	}
	return creds.Install(b, self, names.ips, names.dns)
}

// fetchCreds keeps asking the known servers for the cluster's keys until
// this server has them: a server that starts fresh after its cluster was
// formed (a replacement, or one of the initial servers that was late)
// is added to Raft by the leader, and must hold a certificate by then.
func fetchCreds(ctx context.Context, creds *join.ServerCreds, token string, names certNames, self string, members func() []cluster.Member, log *slog.Logger) {
	if token == "" {
		return
	}
	if _, _, err := pki.ParseJoinToken(token); err == nil {
		return // a join token is spent by the first join; nothing to retry with
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for !creds.Ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var addrs []string
		for _, m := range members() {
			if m.Role == cluster.RoleServer && m.Name != self && m.Status == cluster.StatusAlive && m.Meta[cluster.MetaAPIAddr] != "" {
				addrs = append(addrs, m.Meta[cluster.MetaAPIAddr])
			}
		}
		if len(addrs) == 0 || creds.Ready() {
			continue
		}
		if err := fetchKeys(ctx, creds, token, "", names, self, addrs, 5*time.Second); err != nil {
			log.Debug("cluster keys not fetched yet", "err", err)
			continue
		}
		log.Info("received the cluster CA and keys")
	}
}

// switchHandler serves a fallback until the real handler is set: the API
// port must answer (joins, forwarding) before the API itself can be built.
type switchHandler struct {
	h        atomic.Pointer[http.Handler]
	fallback http.Handler
}

func (s *switchHandler) set(h http.Handler) { s.h.Store(&h) }

func (s *switchHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := s.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	s.fallback.ServeHTTP(w, r)
}

// notReady answers while the server waits for the cluster's keys.
func notReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Retry-After", "1")
	http.Error(w, "this server is joining its cluster and has no credentials yet", http.StatusServiceUnavailable)
}

// requireServerCert lets through only requests that present a server
// certificate of this cluster: the masters' internal endpoints.
func requireServerCert(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || !pki.HasOrg(r.TLS.VerifiedChains[0][0], pki.OrgServers) {
			http.Error(w, "forbidden: only the cluster's servers may call this endpoint", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// localNodeCreds issues the in-process agent of `server --agent` its node
// certificate from the server's own CA (the server holds it; no join).
func localNodeCreds(creds *join.ServerCreds, name string, ip net.IP) (*join.NodeCreds, error) {
	b := creds.Bundle()
	ca, err := pki.ParseCA(b.CACert, b.CAKey)
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.Issue(pki.NodeCertRequest(name, []net.IP{ip}))
	if err != nil {
		return nil, err
	}
	return &join.NodeCreds{CACert: b.CACert, Cert: cert, Key: key, GossipKeys: b.GossipKeys}, nil
}

// readPEM reads a file of the server's tls dir.
func readPEM(dataDir, name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "tls", name))
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(b, []byte("-----BEGIN")) {
		return nil, fmt.Errorf("%s: not PEM", name)
	}
	return b, nil
}

// serviceIP is the default/kubernetes Service's ClusterIP (the first
// address of the default Service range): in-cluster clients reach the API
// there, so every server's certificate carries it.
var serviceIP = net.ParseIP("10.96.0.1")

// loadGossipKeys is the gossip keyring to start with: the one last applied
// (saved by the cluster after every change), else the cluster's from its
// keys, else (a server of a new cluster, before it has them) the key every
// server derives from the shared server token.
func loadGossipKeys(dataDir string, creds *join.ServerCreds, token string) ([][]byte, error) {
	keys, err := cluster.LoadKeyringFile(filepath.Join(dataDir, "tls", "gossip.json"))
	switch {
	case err == nil && len(keys) > 0:
		return keys, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("gossip keyring: %w", err)
	}
	if creds.Ready() {
		return creds.Bundle().GossipKeys, nil
	}
	if token == "" {
		return nil, errors.New("no gossip key: this server has neither the cluster's keys nor a server token")
	}
	return [][]byte{join.GossipKeyFromToken(token)}, nil
}

// mastersClient is the HTTPS client for other masters' internal endpoints
// (forwarded writes, read index, key pushes): one shared transport with this
// server's certificate, the peer checked to be a server of this cluster.
func mastersClient(clientTLS *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 5 * time.Second}).DialContext,
		TLSClientConfig:     clientTLS,
		TLSHandshakeTimeout: 5 * time.Second,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}}
}

// lateSealer is the cluster's sealer for the gossip keyring record: the
// Secrets keys arrive with the cluster's keys, after the node is built.
// The record is only written and read once Raft runs, which needs them.
type lateSealer struct{ s atomic.Pointer[api.Sealer] }

func (l *lateSealer) set(s api.Sealer) { l.s.Store(&s) }

var errNoSealKeys = errors.New("the Secrets encryption keys are not loaded yet")

func (l *lateSealer) Encrypt(b []byte) ([]byte, error) {
	if s := l.s.Load(); s != nil {
		return (*s).Encrypt(b)
	}
	return nil, errNoSealKeys
}

func (l *lateSealer) Decrypt(b []byte) ([]byte, error) {
	if s := l.s.Load(); s != nil {
		return (*s).Decrypt(b)
	}
	return nil, errNoSealKeys
}

// waitCreds waits until the server has the cluster's keys.
func waitCreds(ctx context.Context, creds *join.ServerCreds) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !creds.Ready() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// sealPeers lists the API addresses of every server in the Raft
// configuration, for pushing Secrets keys to all of them: a server that is
// down must stop a rotation (it would come back unable to read Secrets
// written after it), so it is listed whether gossip sees it or not.
func sealPeers(node *cluster.Node, apiPort int) func() []string {
	return func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		peers, err := node.Peers(ctx)
		if err != nil {
			return nil
		}
		api := map[string]string{}
		for _, m := range node.Members() {
			if m.Role == cluster.RoleServer && m.Meta[cluster.MetaAPIAddr] != "" {
				api[m.Name] = m.Meta[cluster.MetaAPIAddr]
			}
		}
		var out []string
		for _, p := range peers {
			if a, ok := api[p.ID]; ok {
				out = append(out, a)
				continue
			}
			// Unknown to gossip: its Raft host on the API port, where a
			// push fails if it is really gone.
			host, _, err := net.SplitHostPort(p.Address)
			if err != nil {
				host = p.Address
			}
			out = append(out, net.JoinHostPort(host, strconv.Itoa(apiPort)))
		}
		return out
	}
}

// joinRunning asks the --join hosts once, briefly, whether a cluster with
// this server token already runs there; if so the server takes its keys
// and joins like any new server. A new cluster's servers all start at
// about the same time and find nobody with keys (or nobody at all), and go
// on to bootstrap together.
func joinRunning(ctx context.Context, o *serverOptions, token string, names certNames, creds *join.ServerCreds, log *slog.Logger) bool {
	if token == "" || o.bootstrapExpect == 0 {
		return false
	}
	if err := fetchKeys(ctx, creds, token, "", names, o.name, apiAddrsFor(o.join, o.apiPort), time.Second); err != nil {
		log.Debug("no running cluster answered at the join addresses; bootstrapping", "err", err)
		return false
	}
	log.Info("joined a running cluster's keys")
	return true
}

// takeOverGossipKey replaces the gossip key a new cluster started with
// (derived from the server token, so that its servers could find each
// other) with a random one, once, by an ordinary rotation: from then on the
// token opens nothing in gossip, and the key is handed out only in joins.
func takeOverGossipKey(ctx context.Context, node *cluster.Node, token string, log *slog.Logger) error {
	if token == "" {
		return nil
	}
	tokenKey := join.GossipKeyFromToken(token)
	backoff := time.Second
	for {
		keys, err := node.GossipKeyring()
		if err == nil {
			if !slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, tokenKey) }) {
				return nil
			}
			if err = node.RotateGossipKey(ctx); err == nil {
				log.Info("the cluster's own gossip key replaced the one derived from the server token")
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		log.Debug("gossip key take-over: retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
