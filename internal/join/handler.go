package join

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"

	"flotilla/fsm"
	"flotilla/internal/pki"
)

// Paths of the join endpoints.
const (
	PathJoin   = "/flotilla/v1/join"
	PathCA     = PathJoin + "/ca"
	PathServer = PathJoin + "/server"
)

// Roles a joiner asks for and a join token grants.
const (
	RoleAgent  = "agent"
	RoleServer = "server"
)

const (
	// maxClockSkew bounds the difference between a server-token request's
	// time and this server's clock.
	maxClockSkew = 5 * time.Minute
	// maxNonces bounds the replay cache; beyond it requests get 503 until
	// old nonces age out (an attacker holding the token has won anyway).
	maxNonces = 8192
	nonceSize = 32
	macSize   = sha256.Size
	// infoMAC and infoSeal separate the keys derived from the server token.
	infoMAC  = "flotilla join mac v1"
	infoSeal = "flotilla join seal v1"
)

// Store is what the join and token handlers need from the cluster node.
type Store interface {
	// ReadIndex waits until the local store has every write committed
	// before the call (a linearizable read follows).
	ReadIndex(ctx context.Context) error
	// Store is the local FSM.
	Store() *fsm.Store
	// Apply commits txn through Raft (forwarded to the leader if needed).
	Apply(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error)
}

// Wire types of the join endpoints.
type (
	serverJoinRequest struct {
		Name  string `json:"name"`
		Nonce []byte `json:"nonce"`
		Time  int64  `json:"time"`
		MAC   []byte `json:"mac"`
		// Role RoleAgent: an agent joining with the server token (as k3s
		// agents may) sends its CSR and addresses and gets a node
		// certificate, never the bundle. Empty: a server.
		Role string   `json:"role,omitempty"`
		CSR  string   `json:"csr,omitempty"`
		IPs  []string `json:"ips,omitempty"`
	}
	serverJoinResponse struct {
		// Sealed is a 12-byte GCM nonce chosen by the server, then
		// AES-256-GCM(seal key, that nonce, JSON(Bundle), AAD = the
		// request's MAC input).
		Sealed []byte `json:"sealed"`
	}
	caResponse struct {
		CA string `json:"ca"`
	}
	joinRequest struct {
		Role string   `json:"role"`
		Name string   `json:"name"`
		CSR  string   `json:"csr,omitempty"`
		IPs  []string `json:"ips,omitempty"`
	}
	joinResponse struct {
		CA         string   `json:"ca"`
		Cert       string   `json:"cert,omitempty"`
		GossipKeys [][]byte `json:"gossipKeys"`
		Bundle     *Bundle  `json:"bundle,omitempty"`
	}
)

type handler struct {
	creds   *ServerCreds
	st      Store
	log     *slog.Logger
	now     func() time.Time
	macKey  []byte // nil: no server token, the server-token exchange is off
	sealKey []byte
	nonces  nonceCache
}

// NewHandler serves the join endpoints (PathJoin, PathCA, PathServer). It
// accepts the full paths or the same with PathJoin stripped. serverToken ""
// turns the server-token exchange off.
func NewHandler(creds *ServerCreds, serverToken string, st Store, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{
		creds: creds,
		st:    st,
		log:   log.With("component", "join"),
		now:   time.Now,
	}
	if serverToken != "" {
		h.macKey = derive(serverToken, infoMAC)
		h.sealKey = derive(serverToken, infoSeal)
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route := strings.TrimPrefix(r.URL.Path, PathJoin)
	var want string
	var serve func(http.ResponseWriter, *http.Request) *apierrors.StatusError
	switch route {
	case "", "/":
		want, serve = http.MethodPost, h.join
	case "/ca":
		want, serve = http.MethodGet, h.ca
	case "/server":
		want, serve = http.MethodPost, h.serverJoin
	default:
		writeStatus(w, apierrors.NewNotFound(schema.GroupResource{}, r.URL.Path))
		return
	}
	if r.Method != want {
		writeStatus(w, apierrors.NewMethodNotSupported(schema.GroupResource{Resource: "join"}, r.Method))
		return
	}
	if err := serve(w, r); err != nil {
		writeStatus(w, err)
	}
}

// ca answers the CA certificate to anyone: it is public, and the joiner
// checks it against the hash it was given before trusting it.
func (h *handler) ca(w http.ResponseWriter, _ *http.Request) *apierrors.StatusError {
	ca := h.creds.CAPEM()
	if ca == nil {
		return unavailable("this server has no cluster CA yet", 1)
	}
	writeJSON(w, http.StatusOK, caResponse{CA: string(ca)})
	return nil
}

// macInput is what the server-token MAC covers: nonce || time (8 bytes,
// big endian) || name. It is also the AAD of the sealed answer, which binds
// the answer to this one request.
func macInput(nonce []byte, t int64, name string) []byte {
	b := make([]byte, 0, len(nonce)+8+len(name))
	b = append(b, nonce...)
	b = binary.BigEndian.AppendUint64(b, uint64(t))
	return append(b, name...)
}

// requestMACInput is macInput for a request; an agent's also covers its
// role, CSR and addresses (NUL-separated), so nobody in the middle can
// swap in a key of their own.
func requestMACInput(req *serverJoinRequest) []byte {
	b := macInput(req.Nonce, req.Time, req.Name)
	if req.Role == "" {
		return b
	}
	b = append(b, 0)
	b = append(b, req.Role...)
	b = append(b, 0)
	b = append(b, req.CSR...)
	b = append(b, 0)
	return append(b, strings.Join(req.IPs, ",")...)
}

func macOf(key, input []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(input)
	return m.Sum(nil)
}

// serverJoin hands the bundle, sealed with a key derived from the server
// token, to a caller that proves it knows the token.
func (h *handler) serverJoin(w http.ResponseWriter, r *http.Request) *apierrors.StatusError {
	if h.macKey == nil {
		return unauthorized("this server does not accept the server token exchange")
	}
	var req serverJoinRequest
	if err := decodeJSON(r.Body, &req); err != nil {
		return apierrors.NewBadRequest(err.Error())
	}
	if errs := validation.IsDNS1123Subdomain(req.Name); len(errs) > 0 {
		return apierrors.NewBadRequest(fmt.Sprintf("invalid name %q: %s", req.Name, strings.Join(errs, "; ")))
	}
	if len(req.Nonce) != nonceSize || len(req.MAC) != macSize {
		return apierrors.NewBadRequest(fmt.Sprintf("nonce must be %d bytes and mac %d bytes", nonceSize, macSize))
	}
	if req.Role != "" && req.Role != RoleAgent {
		return apierrors.NewBadRequest(fmt.Sprintf("role %q: the server-token exchange takes %q or none", req.Role, RoleAgent))
	}
	aad := requestMACInput(&req)
	if !hmac.Equal(req.MAC, macOf(h.macKey, aad)) {
		h.log.Warn("server-token join refused: bad MAC", "name", req.Name, "remote", r.RemoteAddr)
		return unauthorized("server token mismatch")
	}
	now := h.now()
	if d := now.Sub(time.Unix(req.Time, 0)); d > maxClockSkew || d < -maxClockSkew {
		h.log.Warn("server-token join refused: time skew", "name", req.Name, "remote", r.RemoteAddr, "skew", d)
		return unauthorized(fmt.Sprintf("request time is %v away from this server's clock (at most %v allowed)", d.Round(time.Second), maxClockSkew))
	}
	switch h.nonces.add(req.Nonce, now) {
	case errReplay:
		h.log.Warn("server-token join refused: replayed nonce", "name", req.Name, "remote", r.RemoteAddr)
		return unauthorized("replayed request")
	case errNonceCacheFull:
		return unavailable("too many join requests; retry", 5)
	}
	b := h.creds.Bundle()
	ca := h.creds.authority()
	if b == nil || ca == nil {
		return unavailable("this server has no cluster credentials yet", 1)
	}
	var answer any = b
	if req.Role == RoleAgent {
		jr, ips, err := decodeJoinRequest(bytes.NewReader(mustJSON(joinRequest{Role: RoleAgent, Name: req.Name, CSR: req.CSR, IPs: req.IPs})))
		if err != nil {
			return apierrors.NewBadRequest(err.Error())
		}
		cert, err := ca.SignCSR([]byte(jr.CSR), pki.NodeCertRequest(jr.Name, ips))
		if err != nil {
			return apierrors.NewBadRequest(err.Error())
		}
		answer = joinResponse{CA: string(b.CACert), Cert: string(cert), GossipKeys: b.GossipKeys}
	}
	plain, err := json.Marshal(answer)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	sealed, err := seal(h.sealKey, plain, aad)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	what := "the cluster bundle to a server"
	if req.Role == RoleAgent {
		what = "a node certificate to an agent"
	}
	h.log.Info("handed "+what+" (server token)", "name", req.Name, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, serverJoinResponse{Sealed: sealed})
	return nil
}

// seal is a fresh 12-byte nonce then AES-256-GCM(key, nonce, plain, aad).
// The server picks the nonce so that no two answers ever share one, even
// when a request is replayed to several servers.
func seal(key, plain, aad []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	_, _ = rand.Read(nonce)
	return gcm.Seal(nonce, nonce, plain, aad), nil
}

func open(key, sealed, aad []byte) ([]byte, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < gcm.NonceSize()+gcm.Overhead() {
		return nil, errors.New("sealed answer too short")
	}
	n := gcm.NonceSize()
	return gcm.Open(nil, sealed[:n], sealed[n:], aad)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

var (
	errReplay         = errors.New("nonce already seen")
	errNonceCacheFull = errors.New("nonce cache full")
)

// nonceCache remembers server-token nonces for twice the allowed skew, the
// longest time a captured request stays acceptable.
type nonceCache struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func (c *nonceCache) add(nonce []byte, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = make(map[string]time.Time)
	}
	k := string(nonce)
	if _, ok := c.seen[k]; ok {
		return errReplay
	}
	if len(c.seen) >= maxNonces {
		for n, at := range c.seen {
			if now.Sub(at) > 2*maxClockSkew {
				delete(c.seen, n)
			}
		}
		if len(c.seen) >= maxNonces {
			return errNonceCacheFull
		}
	}
	c.seen[k] = now
	return nil
}

// join exchanges a join token for a node certificate (role agent) or the
// cluster bundle (role server).
func (h *handler) join(w http.ResponseWriter, r *http.Request) *apierrors.StatusError {
	rec, serr := h.authenticate(r)
	if serr != nil {
		return serr
	}
	req, ips, err := decodeJoinRequest(r.Body)
	if err != nil {
		return apierrors.NewBadRequest(err.Error())
	}
	if req.Role == RoleServer && rec.Role != RoleServer {
		h.log.Warn("join refused: agent token asked for role server", "token", rec.ID, "name", req.Name, "remote", r.RemoteAddr)
		return forbidden(fmt.Sprintf("join token %s may only join agents", rec.ID))
	}
	ca := h.creds.authority()
	b := h.creds.Bundle()
	if ca == nil || b == nil {
		return unavailable("this server has no cluster credentials yet", 1)
	}
	resp := joinResponse{CA: string(b.CACert), GossipKeys: b.GossipKeys}
	switch req.Role {
	case RoleAgent:
		cert, err := ca.SignCSR([]byte(req.CSR), pki.NodeCertRequest(req.Name, ips))
		if err != nil {
			return apierrors.NewBadRequest(err.Error())
		}
		resp.Cert = string(cert)
	case RoleServer:
		resp.Bundle = b
	}
	h.log.Info("join accepted", "token", rec.ID, "role", req.Role, "name", req.Name, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// authenticate checks the bearer join token against its record, after a
// linearizable read so that a token just created anywhere is found and a
// revoked one is not. Every failure gives the same 401.
func (h *handler) authenticate(r *http.Request) (*tokenRecord, *apierrors.StatusError) {
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return nil, unauthorized(msgBadToken)
	}
	id, secret, err := pki.ParseJoinToken(strings.TrimSpace(tok))
	if err != nil {
		return nil, unauthorized(msgBadToken)
	}
	if err := h.st.ReadIndex(r.Context()); err != nil {
		return nil, unavailable("cannot read the cluster state: "+err.Error(), 1)
	}
	rec, err := getToken(h.st.Store(), id)
	if err != nil || rec == nil {
		if err != nil {
			h.log.Error("read join token", "token", id, "err", err)
		}
		return nil, unauthorized(msgBadToken)
	}
	// Compare hashes in constant time, then check expiry: the leader deletes
	// expired records, but not at the instant they expire.
	good := subtle.ConstantTimeCompare([]byte(pki.HashSecret(secret)), []byte(rec.SecretHash)) == 1
	if !good || !h.now().Before(rec.Expires) {
		h.log.Warn("join refused: bad or expired token", "token", id, "remote", r.RemoteAddr)
		return nil, unauthorized(msgBadToken)
	}
	return rec, nil
}

// decodeJoinRequest reads and checks a join request: role, name (a DNS-1123
// subdomain, as a Node name), the CSR for agents, and the IPs.
func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func decodeJoinRequest(body io.Reader) (*joinRequest, []net.IP, error) {
	var req joinRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, nil, err
	}
	if req.Role != RoleAgent && req.Role != RoleServer {
		return nil, nil, fmt.Errorf("role %q: want %q or %q", req.Role, RoleAgent, RoleServer)
	}
	if errs := validation.IsDNS1123Subdomain(req.Name); len(errs) > 0 {
		return nil, nil, fmt.Errorf("invalid name %q: %s", req.Name, strings.Join(errs, "; "))
	}
	if req.Role == RoleAgent && !bytes.Contains([]byte(req.CSR), []byte("CERTIFICATE REQUEST")) {
		return nil, nil, errors.New("an agent must send a CSR (PEM)")
	}
	if len(req.IPs) > 64 {
		return nil, nil, fmt.Errorf("%d IPs: at most 64", len(req.IPs))
	}
	ips := make([]net.IP, 0, len(req.IPs))
	for _, s := range req.IPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, nil, fmt.Errorf("invalid IP %q", s)
		}
		ips = append(ips, ip)
	}
	return &req, ips, nil
}
