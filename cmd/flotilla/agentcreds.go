package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"

	"flotilla/cluster"
	"flotilla/internal/join"
	"flotilla/internal/pki"
)

// agentCredentials are the node's certificate, the CA and the gossip keys:
// the ones in the data dir, else a join with --token (once; the agent keeps
// them).
func agentCredentials(ctx context.Context, o *agentOptions, nodeIP string, log *slog.Logger) (*join.NodeCreds, error) {
	tlsDir := filepath.Join(o.dataDir, "tls")
	nc, err := join.LoadNodeCreds(tlsDir)
	if err == nil {
		if err := checkNodeCert(nc.Cert, o.nodeName); err != nil {
			return nil, fmt.Errorf("%s: %w", tlsDir, err)
		}
		return nc, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("node credentials: %w", err)
	}
	if o.token == "" {
		return nil, errors.New("--token is required to join: create one on a server with `flotilla token create` (and give its CA hash as --ca-hash)")
	}
	addrs := append([]string{}, o.server...)
	addrs = append(addrs, apiAddrsFor(o.join, defaultAPIPort)...)
	log.Info("joining the cluster", "via", addrs)
	nc, err = join.JoinAgent(ctx, join.JoinConfig{
		APIAddrs: addrs, Token: o.token, CAHash: o.caHash, Role: "agent",
		Name: o.nodeName, IPs: []net.IP{net.ParseIP(nodeIP)}, Timeout: 60 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	if err := nc.Save(tlsDir); err != nil {
		return nil, err
	}
	return nc, nil
}

// defaultAPIPort is where an agent looks for a server's API on the host of
// a --join address when no --server is given.
const defaultAPIPort = 6443

// checkNodeCert refuses a data dir whose certificate is another node's: the
// API would (rightly) refuse every write this agent makes.
func checkNodeCert(certPEM []byte, name string) error {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return errors.New("node.crt is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return err
	}
	if want := pki.NodeUserPrefix + name; c.Subject.CommonName != want {
		return fmt.Errorf("node.crt is for %q, not %q: remove the data dir's tls/ to join again under the new name", c.Subject.CommonName, want)
	}
	return nil
}

// keySetter is a gossip member whose keys can change: an agent's pool or
// a hollow node.
type keySetter interface{ SetKeys(keys [][]byte) error }

// keyringPoll is how often an agent asks the masters for the gossip keys.
// A rotation waits for every live member to hold the new key before using
// it, so this bounds how long a rotation takes.
const keyringPoll = 5 * time.Second

// followGossipKeys keeps the agent's gossip keyring equal to the cluster's:
// the masters rotate it (flotilla operator gossip rotate), and an agent
// that was down during a rotation gets back in by the next poll, over the
// API, which does not depend on gossip.
func followGossipKeys(ctx context.Context, cs kubernetes.Interface, pool keySetter, nc *join.NodeCreds, tlsDir string, log *slog.Logger) {
	t := time.NewTicker(keyringPoll)
	defer t.Stop()
	current := nc.GossipKeys
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, keyringPoll)
		body, err := cs.CoreV1().RESTClient().Get().AbsPath("/flotilla/v1/gossip/keyring").DoRaw(rctx)
		cancel()
		if err != nil {
			log.Debug("gossip keyring not fetched", "err", err)
			continue
		}
		var kr struct {
			Keys [][]byte `json:"keys"`
		}
		if err := json.Unmarshal(body, &kr); err != nil || len(kr.Keys) == 0 {
			log.Warn("gossip keyring: bad answer", "err", err)
			continue
		}
		if sameKeys(kr.Keys, current) {
			continue
		}
		if err := pool.SetKeys(kr.Keys); err != nil {
			log.Warn("gossip keyring: apply", "err", err)
			continue
		}
		current = kr.Keys
		saved := *nc
		saved.GossipKeys = kr.Keys
		if err := saved.Save(tlsDir); err != nil {
			log.Warn("gossip keyring: save", "err", err)
		}
		log.Info("gossip keys changed", "keys", strconv.Itoa(len(kr.Keys)))
	}
}

func sameKeys(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// fetchGossipKeys asks the masters at addrs for the gossip keyring with the
// node's certificate.
func fetchGossipKeys(nc *join.NodeCreds, addrs []string) func(ctx context.Context) ([][]byte, error) {
	return func(ctx context.Context) ([][]byte, error) {
		tc, err := nc.ClientTLS()
		if err != nil {
			return nil, err
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
		defer c.CloseIdleConnections()
		var errs []error
		for _, a := range addrs {
			keys, err := getGossipKeys(ctx, c, "https://"+a+"/flotilla/v1/gossip/keyring")
			if err == nil {
				return keys, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}

func getGossipKeys(ctx context.Context, c *http.Client, url string) ([][]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	var kr cluster.GossipKeyringBody
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&kr); err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if len(kr.Keys) == 0 {
		return nil, fmt.Errorf("%s: no keys", url)
	}
	return kr.Keys, nil
}
