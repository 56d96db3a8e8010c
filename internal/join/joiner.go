package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"flotilla/internal/pki"
)

// Errors the joiner stops at at once (no retry). Test with errors.Is.
var (
	// ErrCAHashMismatch: the cluster's CA is not the one --ca-hash names;
	// the joiner refuses that cluster before sending its token.
	ErrCAHashMismatch = errors.New("the cluster CA does not match the CA hash")
	// ErrUnauthorized: the server refused the token (401).
	ErrUnauthorized = errors.New("join refused: unauthorized")
	// ErrForbidden: the token may not join this role (403).
	ErrForbidden = errors.New("join refused: forbidden")
	// ErrRejected: the server refused the request as malformed (other 4xx),
	// or its answer did not hold up.
	ErrRejected = errors.New("join rejected")
)

const (
	defaultJoinTimeout = 30 * time.Second
	// attemptTimeout bounds one request to one server.
	attemptTimeout = 10 * time.Second
	maxAnswer      = 1 << 20
)

// JoinConfig says how to join a cluster.
type JoinConfig struct {
	// APIAddrs are host:port of servers' API ports, tried in order until
	// one answers.
	APIAddrs []string
	// Token is a join token (<id>.<secret>) or the shared server token.
	Token string
	// CAHash ("sha256:<hex>") is required with a join token; with the
	// server token it is ignored (the sealed exchange proves the cluster).
	CAHash string
	// Role is RoleAgent or RoleServer (JoinServer and JoinAgent set it).
	Role string
	Name string
	IPs  []net.IP
	// Timeout: keep retrying unreachable or not-yet-ready servers until
	// this long has passed (default 30s). A wrong CA hash, 401, 403 or 400
	// fail at once.
	Timeout time.Duration
}

func (c *JoinConfig) check() error {
	if len(c.APIAddrs) == 0 {
		return errors.New("join: no server address")
	}
	if c.Token == "" {
		return errors.New("join: no token")
	}
	if errs := validation.IsDNS1123Subdomain(c.Name); len(errs) > 0 {
		return fmt.Errorf("join: invalid name %q: %s", c.Name, strings.Join(errs, "; "))
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultJoinTimeout
	}
	return nil
}

func (c *JoinConfig) checkCAHash() error {
	h := strings.ToLower(strings.TrimSpace(c.CAHash))
	hexPart, ok := strings.CutPrefix(h, "sha256:")
	if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return fmt.Errorf("join: a join token needs --ca-hash sha256:<64 hex digits> (printed by `flotilla token create`), got %q", c.CAHash)
	}
	c.CAHash = h
	return nil
}

// JoinServer gets the cluster bundle for a server: with a join token
// through the join-token flow as role server, otherwise through the
// server-token exchange.
func JoinServer(ctx context.Context, cfg JoinConfig) (*Bundle, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.Role = RoleServer
	if _, _, err := pki.ParseJoinToken(cfg.Token); err == nil {
		if err := cfg.checkCAHash(); err != nil {
			return nil, err
		}
		return retry(ctx, cfg, func(ctx context.Context, addr string) (*Bundle, error) {
			resp, err := tokenJoin(ctx, cfg, addr, "")
			if err != nil {
				return nil, err
			}
			if resp.Bundle == nil {
				return nil, permanent(fmt.Errorf("%w: %s answered without a bundle", ErrRejected, addr))
			}
			if err := resp.Bundle.Validate(); err != nil {
				return nil, permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
			}
			if h, _ := pki.Hash(resp.Bundle.CACert); h != cfg.CAHash {
				return nil, permanent(fmt.Errorf("%w: the bundle from %s has another CA", ErrCAHashMismatch, addr))
			}
			return resp.Bundle, nil
		})
	}
	return retry(ctx, cfg, func(ctx context.Context, addr string) (*Bundle, error) {
		return serverTokenJoin(ctx, cfg, addr)
	})
}

// JoinAgent exchanges a join token for a node certificate. The key is made
// here and never leaves this process.
func JoinAgent(ctx context.Context, cfg JoinConfig) (*NodeCreds, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.Role = RoleAgent
	csr, key, err := pki.NewCSR(pki.NodeUserPrefix + cfg.Name)
	if err != nil {
		return nil, err
	}
	if _, _, err := pki.ParseJoinToken(cfg.Token); err != nil {
		// The shared server token (k3s's habit: one token for every
		// node): the sealed exchange proves the cluster, no CA hash.
		return retry(ctx, cfg, func(ctx context.Context, addr string) (*NodeCreds, error) {
			return serverTokenAgentJoin(ctx, cfg, addr, csr, key)
		})
	}
	if err := cfg.checkCAHash(); err != nil {
		return nil, err
	}
	return retry(ctx, cfg, func(ctx context.Context, addr string) (*NodeCreds, error) {
		resp, err := tokenJoin(ctx, cfg, addr, string(csr))
		if err != nil {
			return nil, err
		}
		n := &NodeCreds{CACert: []byte(resp.CA), Cert: []byte(resp.Cert), Key: key, GossipKeys: resp.GossipKeys}
		if err := n.check(cfg.Name); err != nil {
			return nil, permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
		}
		return n, nil
	})
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ error }

func (p permanentError) Unwrap() error { return p.error }

func permanent(err error) error { return permanentError{err} }

// retry calls f for each address in turn until one succeeds, a permanent
// error occurs, or cfg.Timeout passes; between rounds it waits a little
// longer each time (up to 2s).
func retry[T any](ctx context.Context, cfg JoinConfig, f func(context.Context, string) (T, error)) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	wait := 200 * time.Millisecond
	var last error
	for {
		for _, addr := range cfg.APIAddrs {
			actx, acancel := context.WithTimeout(ctx, attemptTimeout)
			v, err := f(actx, addr)
			acancel()
			if err == nil {
				return v, nil
			}
			var p permanentError
			if errors.As(err, &p) {
				return zero, p.error
			}
			last = err
			if ctx.Err() != nil {
				break
			}
		}
		select {
		case <-ctx.Done():
			return zero, fmt.Errorf("join: no server answered within %v: %w", cfg.Timeout, last)
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// httpClient makes a one-shot client for tc (no keep-alives, no proxy: a
// join talks to the cluster directly).
func httpClient(tc *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     tc,
		DisableKeepAlives:   true,
		TLSHandshakeTimeout: attemptTimeout,
	}}
}

// do sends one request and classifies the answer: 2xx returns the body;
// 401/403/other 4xx are permanent; anything else may be retried.
func do(ctx context.Context, client *http.Client, method, u string, header http.Header, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, permanent(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		// A CA hash or peer check refused inside the handshake is final.
		var p permanentError
		if errors.As(err, &p) {
			return nil, p
		}
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return data, nil
	case code == http.StatusUnauthorized:
		return nil, permanent(fmt.Errorf("%w: %s: %s", ErrUnauthorized, u, statusFromBody(code, data)))
	case code == http.StatusForbidden:
		return nil, permanent(fmt.Errorf("%w: %s: %s", ErrForbidden, u, statusFromBody(code, data)))
	case code >= 400 && code < 500 && code != http.StatusTooManyRequests && code != http.StatusNotFound:
		// 404: a server of an older version; another may answer.
		return nil, permanent(fmt.Errorf("%w: %s: %s", ErrRejected, u, statusFromBody(code, data)))
	default:
		return nil, fmt.Errorf("%s %s: %s", method, u, statusFromBody(code, data))
	}
}

func endpoint(addr, path string) string {
	return (&url.URL{Scheme: "https", Host: addr, Path: path}).String()
}

// serverTokenJoin is the server-token exchange with one server. TLS here
// does not authenticate the server (the joiner has no CA yet): the answer
// is sealed with a key only holders of the token can derive, and bound to
// this request's nonce, so a stranger can neither read nor forge it.
// serverTokenAgentJoin is the server-token exchange for an agent: its CSR
// goes in under the MAC, a node certificate comes back sealed.
func serverTokenAgentJoin(ctx context.Context, cfg JoinConfig, addr string, csr, key []byte) (*NodeCreds, error) {
	ips := make([]string, len(cfg.IPs))
	for i, ip := range cfg.IPs {
		ips[i] = ip.String()
	}
	var jr joinResponse
	if err := sealedExchange(ctx, cfg, addr, serverJoinRequest{Role: RoleAgent, CSR: string(csr), IPs: ips}, &jr); err != nil {
		return nil, err
	}
	n := &NodeCreds{CACert: []byte(jr.CA), Cert: []byte(jr.Cert), Key: key, GossipKeys: jr.GossipKeys}
	if err := n.check(cfg.Name); err != nil {
		return nil, permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
	}
	return n, nil
}

func serverTokenJoin(ctx context.Context, cfg JoinConfig, addr string) (*Bundle, error) {
	var b Bundle
	if err := sealedExchange(ctx, cfg, addr, serverJoinRequest{}, &b); err != nil {
		return nil, err
	}
	if err := b.Validate(); err != nil {
		return nil, permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
	}
	return &b, nil
}

// sealedExchange is one server-token exchange with addr: req (its role
// fields, if any) goes out with a fresh nonce, the time and cfg.Name under
// the token's MAC; the sealed answer is opened and decoded into out. A
// server that cannot seal with the token is refused for good.
func sealedExchange(ctx context.Context, cfg JoinConfig, addr string, req serverJoinRequest, out any) error {
	req.Name, req.Nonce, req.Time = cfg.Name, pki.RandomKey(), time.Now().Unix()
	aad := requestMACInput(&req)
	req.MAC = macOf(derive(cfg.Token, infoMAC), aad)
	client := httpClient(&tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true})
	data, err := do(ctx, client, http.MethodPost, endpoint(addr, PathServer), nil, req)
	if err != nil {
		return err
	}
	var resp serverJoinResponse
	if err := json.Unmarshal(data, &resp); err != nil {
		return permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
	}
	plain, err := open(derive(cfg.Token, infoSeal), resp.Sealed, aad)
	if err != nil {
		return permanent(fmt.Errorf("%w: %s could not prove it holds the server token (sealed answer does not open)", ErrRejected, addr))
	}
	if err := json.Unmarshal(plain, out); err != nil {
		return permanent(fmt.Errorf("%w: %s: answer: %v", ErrRejected, addr, err))
	}
	return nil
}

// tokenJoin is the join-token flow with one server: fetch the CA, check
// it against cfg.CAHash, then (only then) send the token over TLS verified
// against that CA, to a peer whose certificate is a server's.
func tokenJoin(ctx context.Context, cfg JoinConfig, addr, csr string) (*joinResponse, error) {
	insecure := httpClient(&tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true})
	data, err := do(ctx, insecure, http.MethodGet, endpoint(addr, PathCA), nil, nil)
	if err != nil {
		return nil, err
	}
	var ca caResponse
	if err := json.Unmarshal(data, &ca); err != nil {
		return nil, permanent(fmt.Errorf("%w: %s: CA answer: %v", ErrRejected, addr, err))
	}
	hash, err := pki.Hash([]byte(ca.CA))
	if err != nil {
		return nil, permanent(fmt.Errorf("%w: %s: CA answer: %v", ErrRejected, addr, err))
	}
	if hash != cfg.CAHash {
		return nil, permanent(fmt.Errorf("%w: %s has %s, want %s", ErrCAHashMismatch, addr, hash, cfg.CAHash))
	}
	pool, err := pki.Pool([]byte(ca.CA))
	if err != nil {
		return nil, permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
	}
	verified := httpClient(&tls.Config{
		MinVersion: tls.VersionTLS12,
		// Servers are reached by whatever address the user gave, so the
		// check is the CA chain plus the servers' organisation, not a name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf, err := pki.VerifyPeer(cs.PeerCertificates, pool, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return permanent(fmt.Errorf("%w: %v", ErrCAHashMismatch, err))
			}
			if !pki.HasOrg(leaf, pki.OrgServers) {
				return permanent(fmt.Errorf("%w: %s presented %q, not a server certificate", ErrRejected, addr, leaf.Subject.CommonName))
			}
			return nil
		},
	})
	ips := make([]string, len(cfg.IPs))
	for i, ip := range cfg.IPs {
		ips[i] = ip.String()
	}
	header := http.Header{"Authorization": {"Bearer " + cfg.Token}}
	data, err = do(ctx, verified, http.MethodPost, endpoint(addr, PathJoin), header,
		joinRequest{Role: cfg.Role, Name: cfg.Name, CSR: csr, IPs: ips})
	if err != nil {
		return nil, err
	}
	var resp joinResponse
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, permanent(fmt.Errorf("%w: %s: %v", ErrRejected, addr, err))
	}
	if h, err := pki.Hash([]byte(resp.CA)); err != nil || h != cfg.CAHash {
		return nil, permanent(fmt.Errorf("%w: %s answered with another CA", ErrCAHashMismatch, addr))
	}
	return &resp, nil
}
