// Package clustertest runs in-process Flotilla master clusters for tests:
// real Raft, gossip and forwarding on 127.0.0.1 with short timings, one
// small HTTP server per master serving its cluster handler (so forwarding
// works), t.TempDir data dirs and t.Cleanup shutdown.
//
// Set FLOTILLA_TEST_LOG=1 to see the masters' logs.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"flotilla/cluster"
)

// Options tweak a test cluster. The zero value is a cluster that
// bootstraps with every initial server.
type Options struct {
	// BootstrapExpect for the initial servers (default: all of them).
	BootstrapExpect int
	// Configure adjusts server i's configuration before New; name, data
	// dir, addresses, ports, timing and join are already set.
	Configure func(i int, cfg *cluster.Config)
	// Handler wraps each server's HTTP handler (the cluster handler by
	// default), e.g. to mount an API next to it.
	Handler func(s *Server) http.Handler
	// StartTimeout bounds forming the cluster (default 30s).
	StartTimeout time.Duration
}

// Cluster is a set of in-process masters.
type Cluster struct {
	t    testing.TB
	opts Options

	mu      sync.Mutex
	servers []*Server
}

// Server is one master of a test cluster.
type Server struct {
	Index  int
	Name   string
	Config cluster.Config // as last started, with the ports actually used
	Node   *cluster.Node  // nil while stopped

	c       *Cluster
	httpSrv *http.Server
	stopped bool
}

// New starts n masters that bootstrap a cluster together and waits until
// it has a leader whose API address every master knows.
func New(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	if opts.BootstrapExpect == 0 {
		opts.BootstrapExpect = n
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	c := &Cluster{t: t, opts: opts}
	// Cleanups run last-registered first: the temp dir root must be
	// registered before the shutdown so the servers stop before their
	// data dirs are removed.
	_ = t.TempDir()
	t.Cleanup(c.shutdownAll)
	for i := 0; i < n; i++ {
		c.start(c.newConfig(i, opts.BootstrapExpect))
	}
	c.WaitLeader()
	return c
}

// Logger is the logger test masters use: discarded unless
// FLOTILLA_TEST_LOG is set.
func Logger(name string) *slog.Logger {
	if os.Getenv("FLOTILLA_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test_server", name)
}

func (c *Cluster) newConfig(i int, expect int) cluster.Config {
	name := fmt.Sprintf("server-%d", i)
	cfg := cluster.Config{
		Name:              name,
		DataDir:           c.t.TempDir(),
		BindAddr:          "127.0.0.1",
		AdvertiseAddr:     "127.0.0.1",
		RaftPort:          cluster.AnyPort,
		GossipPort:        cluster.AnyPort,
		BootstrapExpect:   expect,
		Join:              c.gossipAddrs(),
		JoinTimeout:       10 * time.Second,
		DeadServerCleanup: time.Hour,
		Timing:            cluster.TestTiming(),
		Logger:            Logger(name),
	}
	if c.opts.Configure != nil {
		c.opts.Configure(i, &cfg)
	}
	return cfg
}

// gossipAddrs are the running servers' gossip addresses.
func (c *Cluster) gossipAddrs() []string {
	var out []string
	for _, s := range c.Running() {
		out = append(out, s.Node.GossipAddr())
	}
	return out
}

// start creates and starts a server from cfg (APIPort 0 = pick one).
func (c *Cluster) start(cfg cluster.Config) *Server {
	c.t.Helper()
	s, err := c.tryStart(cfg, -1)
	if err != nil {
		c.t.Fatalf("start %s: %v", cfg.Name, err)
	}
	return s
}

// tryStart starts a server; index -1 appends a new one.
func (c *Cluster) tryStart(cfg cluster.Config, index int) (*Server, error) {
	ln, err := listenAPI(cfg)
	if err != nil {
		return nil, err
	}
	cfg.APIPort = ln.Addr().(*net.TCPAddr).Port
	node, err := cluster.New(cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	c.mu.Lock()
	var s *Server
	if index < 0 {
		s = &Server{Index: len(c.servers), Name: cfg.Name, c: c}
		c.servers = append(c.servers, s)
	} else {
		s = c.servers[index]
	}
	s.Node, s.stopped = node, false
	c.mu.Unlock()
	var h http.Handler = node.Handler()
	if c.opts.Handler != nil {
		h = c.opts.Handler(s)
	}
	s.httpSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.httpSrv.Serve(ln) }()

	ctx, cancel := context.WithTimeout(context.Background(), c.opts.StartTimeout)
	defer cancel()
	if err := node.Start(ctx); err != nil {
		c.stopServer(s, false)
		return s, err
	}
	// Remember the ports actually used, so a restart reuses them.
	cfg.RaftPort = port(node.RaftAddr())
	cfg.GossipPort = port(node.GossipAddr())
	s.Config = cfg
	return s, nil
}

// listenAPI listens for the server's HTTP endpoints on its advertise
// address, through cfg.Network when one is set (so its faults apply to
// forwarding too).
func listenAPI(cfg cluster.Config) (net.Listener, error) {
	addr := net.JoinHostPort(cfg.AdvertiseAddr, strconv.Itoa(max(cfg.APIPort, 0)))
	listen := net.Listen
	if cfg.Network != nil {
		listen = cfg.Network.Listen
	}
	var err error
	// A port freed by a stopped server may be briefly unavailable.
	for i := 0; i < 50; i++ {
		var ln net.Listener
		if ln, err = listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, fmt.Errorf("listen for the API on %s: %w", addr, err)
}

func port(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Servers returns every server, running or not.
func (c *Cluster) Servers() []*Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Server(nil), c.servers...)
}

// Server returns server i.
func (c *Cluster) Server(i int) *Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// Running returns the servers that are running.
func (c *Cluster) Running() []*Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Server
	for _, s := range c.servers {
		if !s.stopped && s.Node != nil {
			out = append(out, s)
		}
	}
	return out
}

// WaitLeader waits until exactly one running server leads and every running
// server knows the leader and its API address; it returns the leader.
func (c *Cluster) WaitLeader() *Server {
	c.t.Helper()
	var leader *Server
	WaitFor(c.t, c.opts.StartTimeout, func() bool {
		leader = nil
		running := c.Running()
		for _, s := range running {
			if s.Node.IsLeader() {
				if leader != nil {
					return false
				}
				leader = s
			}
		}
		if leader == nil {
			return false
		}
		for _, s := range running {
			if id, addr := s.Node.Leader(); id != leader.Name || addr == "" {
				return false
			}
		}
		return true
	}, "a single leader known to every running server")
	return leader
}

// Leader returns the current leader (waiting for one).
func (c *Cluster) Leader() *Server { return c.WaitLeader() }

// Followers returns the running servers that do not lead.
func (c *Cluster) Followers() []*Server {
	leader := c.WaitLeader()
	var out []*Server
	for _, s := range c.Running() {
		if s != leader {
			out = append(out, s)
		}
	}
	return out
}

// Add starts one more server that joins the running ones without
// bootstrapping; the leader adds it.
func (c *Cluster) Add() *Server {
	c.t.Helper()
	c.mu.Lock()
	i := len(c.servers)
	c.mu.Unlock()
	return c.start(c.newConfig(i, 0))
}

// Kill stops server i abruptly (no leadership transfer, no gossip leave).
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.stopServer(c.Server(i), false)
}

// Stop shuts server i down gracefully.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if err := c.stopServer(c.Server(i), true); err != nil {
		c.t.Errorf("stop %s: %v", c.Server(i).Name, err)
	}
}

func (c *Cluster) stopServer(s *Server, graceful bool) error {
	c.mu.Lock()
	if s.stopped || s.Node == nil {
		c.mu.Unlock()
		return nil
	}
	s.stopped = true
	c.mu.Unlock()
	var err error
	if graceful {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = s.Node.Shutdown(ctx)
		cancel()
		s.httpSrv.Close()
	} else {
		s.httpSrv.Close()
		err = s.Node.Close()
	}
	return err
}

// Restart starts a stopped server again from its data dir and ports,
// joining the running servers.
func (c *Cluster) Restart(i int) *Server {
	c.t.Helper()
	s, err := c.TryRestart(i, nil)
	if err != nil {
		c.t.Fatalf("restart %s: %v", c.Server(i).Name, err)
	}
	return s
}

// TryRestart is Restart that returns the error; configure may change the
// configuration first.
func (c *Cluster) TryRestart(i int, configure func(*cluster.Config)) (*Server, error) {
	s := c.Server(i)
	if !s.stopped {
		return nil, errors.New("server is running")
	}
	cfg := s.Config
	cfg.Join = c.gossipAddrs()
	if configure != nil {
		configure(&cfg)
	}
	return c.tryStart(cfg, i)
}

func (c *Cluster) shutdownAll() {
	var wg sync.WaitGroup
	for _, s := range c.Running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.stopServer(s, true); err != nil {
				c.t.Errorf("shutdown %s: %v", s.Name, err)
			}
		}()
	}
	wg.Wait()
}

// WaitFor polls cond until it holds or timeout passes, then fails the test
// with what it was waiting for.
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, what string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for "+what, append([]any{timeout}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
