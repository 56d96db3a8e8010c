package main

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
	"os"
	"path/filepath"
	"strconv"
	"time"

	"flotilla/cluster"
	"flotilla/fsm"
)

// flotillaServer is one `flotilla server` process.
type flotillaServer struct {
	name       string
	ip         string
	raftPort   int
	gossipPort int
	apiPort    int
	dataDir    string
	logPath    string
	args       []string
	proc       *proc
	killed     bool // by the benchmark, on purpose
}

// exitError says that a server exited on its own, with the end of its log.
type exitError struct{ s *flotillaServer }

func (e *exitError) Error() string {
	b, _ := os.ReadFile(e.s.logPath)
	return fmt.Sprintf("%s exited (%v); its log ends: %s", e.s.name, e.s.proc.err, lastLines(string(b), 5))
}

func (s *flotillaServer) api() string { return net.JoinHostPort(s.ip, strconv.Itoa(s.apiPort)) }
func (s *flotillaServer) up() bool    { return s.proc != nil && !s.proc.exited() }

// flotillaCluster is three `flotilla server` processes on 127.0.0.1, .2 and
// .3 with production timings (the binary's defaults: no timing flags),
// secure as the product is by default: HTTPS and credentials.
type flotillaCluster struct {
	h       *harness
	bin     string
	servers []*flotillaServer
	creds   *clusterCreds // read from a data dir once the cluster made its keys
	client  *applyClient  // HTTPS with a server certificate; maxConns idle connections per server
}

// startFlotilla starts a cluster under dir and waits for its credentials
// and a leader. Its client keeps up to maxConns idle connections per server.
func startFlotilla(ctx context.Context, h *harness, bin, dir string, maxConns int) (*flotillaCluster, error) {
	c := &flotillaCluster{h: h, bin: bin}
	// One shared server token per cluster: the first server makes the
	// cluster's keys, the others fetch them sealed with it.
	token := newServerToken()
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		s := &flotillaServer{name: fmt.Sprintf("f%d", i), ip: ip,
			dataDir: filepath.Join(dir, fmt.Sprintf("f%d", i)),
			logPath: filepath.Join(dir, fmt.Sprintf("f%d.log", i))}
		var err error
		if s.raftPort, err = h.freePort(ip); err != nil {
			return nil, err
		}
		if s.gossipPort, err = h.freePort(ip); err != nil {
			return nil, err
		}
		if s.apiPort, err = h.freePort(ip); err != nil {
			return nil, err
		}
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		s.args = []string{"server",
			"--name", s.name,
			"--data-dir", s.dataDir,
			"--bind", s.ip,
			"--raft-port", strconv.Itoa(s.raftPort),
			"--gossip-port", strconv.Itoa(s.gossipPort),
			"--api-port", strconv.Itoa(s.apiPort),
			"--bootstrap-expect", "3",
			"--token", token,
		}
		// Every server knows the other two, so a restarted one finds the pool.
		for _, o := range c.servers {
			if o != s {
				s.args = append(s.args, "--join", net.JoinHostPort(o.ip, strconv.Itoa(o.gossipPort)))
			}
		}
	}
	for _, s := range c.servers {
		if err := c.startServer(s); err != nil {
			c.stop()
			return nil, err
		}
	}
	creds, err := c.waitCreds(ctx, 60*time.Second)
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("flotilla cluster made no credentials (logs in %s): %w", dir, err)
	}
	c.creds = creds
	c.client = newApplyClient(maxConns, creds.certTLS())
	if _, err := c.leader(ctx, 60*time.Second); err != nil {
		c.stop()
		return nil, fmt.Errorf("flotilla cluster did not elect a leader (logs in %s): %w", dir, err)
	}
	return c, nil
}

// startServer starts (or restarts, on its data dir) one server.
func (c *flotillaCluster) startServer(s *flotillaServer) error {
	p, err := c.h.start(s.name, c.bin, s.args, s.logPath)
	if err != nil {
		return err
	}
	s.proc = p
	return nil
}

func (c *flotillaCluster) stop() {
	if c.client != nil {
		c.client.closeIdle()
	}
	for _, s := range c.servers {
		if s.proc != nil {
			s.proc.stop(10 * time.Second)
		}
	}
}

// leader waits until a running server reports itself leader, every running
// server names it, and the configuration has three voters.
func (c *flotillaCluster) leader(ctx context.Context, timeout time.Duration) (*flotillaServer, error) {
	var leader *flotillaServer
	err := waitFor(ctx, timeout, 50*time.Millisecond, "flotilla leader", func(ctx context.Context) error {
		leader = nil
		var sts []serverStatus
		for _, s := range c.servers {
			if s.proc != nil && s.proc.exited() && !s.killed {
				return &exitError{s}
			}
			if !s.up() {
				continue
			}
			st, err := c.client.status(ctx, s.api())
			if err != nil {
				return err
			}
			if st.State == "leader" {
				leader = s
			}
			sts = append(sts, st)
		}
		if leader == nil {
			return errors.New("no server reports itself leader")
		}
		for _, st := range sts {
			if st.Leader != leader.name {
				return fmt.Errorf("%s names leader %q, %s leads", st.ID, st.Leader, leader.name)
			}
		}
		peers, err := c.client.peers(ctx, leader.api())
		if err != nil {
			return err
		}
		voters := 0
		for _, p := range peers {
			if p.Voter {
				voters++
			}
		}
		if voters != 3 {
			return fmt.Errorf("%d voters, want 3", voters)
		}
		return nil
	})
	return leader, err
}

// settle waits for a leader, writes through it, and waits until every
// running server has applied that write.
func (c *flotillaCluster) settle(ctx context.Context, value []byte, run string) (*flotillaServer, error) {
	leader, err := c.leader(ctx, 60*time.Second)
	if err != nil {
		return nil, err
	}
	body, err := fsm.EncodeTxn(&fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: benchKey(run, 0, 0), Value: value}}})
	if err != nil {
		return nil, err
	}
	var rev uint64
	err = waitFor(ctx, 30*time.Second, 50*time.Millisecond, "write through "+leader.name, func(ctx context.Context) error {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		res, err := c.client.apply(wctx, leader.api(), body)
		if err == nil {
			rev = res.Revision
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, s := range c.servers {
		if !s.up() {
			continue
		}
		err := waitFor(ctx, 60*time.Second, 50*time.Millisecond, s.name+" applies "+strconv.FormatUint(rev, 10), func(ctx context.Context) error {
			st, err := c.client.status(ctx, s.api())
			if err != nil {
				return err
			}
			if st.AppliedIndex < rev || st.Leader != leader.name {
				return fmt.Errorf("%s: applied %d, leader %q", s.name, st.AppliedIndex, st.Leader)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return leader, nil
}

// applyClient sends transactions to /internal/v1/apply over keep-alive
// HTTPS/1.1 connections with a server certificate, as a forwarding follower
// does. That endpoint is the leader's side of forwarding: a follower answers
// it 503 not_leader. It also reads status, peers and metrics.
type applyClient struct {
	hc *http.Client
}

// newApplyClient: tlsConf verifies the servers and presents a server
// certificate (clusterCreds.certTLS). A custom TLS config keeps the
// transport on HTTP/1.1 (no ForceAttemptHTTP2), as before TLS.
func newApplyClient(maxConns int, tlsConf *tls.Config) *applyClient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConns:        maxConns * 4,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &applyClient{hc: &http.Client{Transport: tr}}
}

func (c *applyClient) closeIdle() { c.hc.CloseIdleConnections() }

// apply posts one encoded transaction to addr. A failed compare is an error
// here: every write of the benchmark is meant to succeed.
func (c *applyClient) apply(ctx context.Context, addr string, body []byte) (*fsm.TxnResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+"/internal/v1/apply", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("apply on %s: %s: %s", addr, resp.Status, bytes.TrimSpace(b))
	}
	res, err := decodeApplyResponse(b)
	if err != nil {
		return nil, fmt.Errorf("apply on %s: decode response: %w", addr, err)
	}
	if !res.Succeeded {
		return res, fmt.Errorf("apply on %s: compare %d failed", addr, res.FailedCompare)
	}
	return res, nil
}

// decodeApplyResponse reads the body of a 200 answer from /internal/v1/apply.
func decodeApplyResponse(b []byte) (*fsm.TxnResult, error) {
	var res fsm.TxnResult
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// serverStatus is the answer of GET /internal/v1/status.
type serverStatus struct {
	ID           string `json:"id"`
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"lastIndex"`
	CommitIndex  uint64 `json:"commitIndex"`
	AppliedIndex uint64 `json:"appliedIndex"`
	Leader       string `json:"leader"`
}

func (c *applyClient) status(ctx context.Context, addr string) (serverStatus, error) {
	var st serverStatus
	return st, c.getJSON(ctx, addr, "/internal/v1/status", &st)
}

func (c *applyClient) peers(ctx context.Context, addr string) ([]cluster.Peer, error) {
	var peers []cluster.Peer
	return peers, c.getJSON(ctx, addr, "/flotilla/v1/operator/raft/peers", &peers)
}

func (c *applyClient) getJSON(ctx context.Context, addr, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: %s: %s", addr, path, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	return nil
}

// flotillaWriter returns a writeFunc sending one-key transactions to addr.
// op "put" is a transaction with no compare; "create" guards the put with
// CompareAbsent, what the API sends for a create.
func flotillaWriter(c *applyClient, addr, op, run string, value []byte) writeFunc {
	return func(ctx context.Context, worker, seq int) error {
		key := benchKey(run, worker, seq)
		txn := &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: key, Value: value}}}
		if op == "create" {
			txn.Compares = []fsm.Compare{{Key: key, Target: fsm.CompareAbsent}}
		}
		body, err := fsm.EncodeTxn(txn)
		if err != nil {
			return err
		}
		_, err = c.apply(ctx, addr, body)
		return err
	}
}
