package linearizability_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"flotilla/cluster"
	"flotilla/cluster/faultnet"
)

// The in-process cluster these tests break. cluster/clustertest did not
// exist when this was written; the starter below is what these tests need
// and no more: fixed ports per node so a killed node restarts at the same
// addresses, and every master link through a faultnet.Host.

var _ cluster.Network = (*faultnet.Host)(nil)

// testCluster is three masters on one faultnet.Network.
type testCluster struct {
	t     *testing.T
	net   *faultnet.Network
	nodes []*testNode
	logs  *logBuffer
	// tweak, when set, adjusts every node's config before it starts.
	tweak func(*cluster.Config)
}

// testNode is one master that can be killed and restarted from its data dir.
type testNode struct {
	c       *testCluster
	name    string
	host    *faultnet.Host
	dataDir string
	// Ports, fixed after the first start so a restarted node keeps its
	// Raft address (the Raft configuration holds it) and gossip address.
	raftPort, gossipPort, apiPort int

	mu   sync.Mutex
	node *cluster.Node // nil while down
	srv  *http.Server
	// hung: a kill did not return; the node can neither run nor restart
	// (its data dir stays locked).
	hung bool
}

// newTestCluster starts n masters with TestTiming (and tweak, if not nil)
// and waits for a leader known to all. Everything stops at the end of the
// test.
func newTestCluster(t *testing.T, n int, tweak func(*cluster.Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, net: faultnet.New(), logs: &logBuffer{}, tweak: tweak}
	for i := range n {
		name := fmt.Sprintf("m%d", i+1)
		c.nodes = append(c.nodes, &testNode{
			c:          c,
			name:       name,
			host:       c.net.NewHost(name),
			dataDir:    filepath.Join(t.TempDir(), name),
			raftPort:   cluster.AnyPort,
			gossipPort: cluster.AnyPort,
		})
	}
	t.Cleanup(c.stop)
	for i, tn := range c.nodes {
		var join []string
		if i > 0 {
			join = []string{c.nodes[0].gossipAddr()}
		}
		if err := tn.start(n, join); err != nil {
			t.Fatalf("start %s: %v", tn.name, err)
		}
	}
	c.waitLeader(20 * time.Second)
	return c
}

// stop closes every node and, if the test failed, keeps the cluster's log.
func (c *testCluster) stop() {
	c.net.HealAll()
	var wg sync.WaitGroup
	for _, tn := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tn.kill(false); err != nil {
				c.t.Error(err)
			}
		}()
	}
	wg.Wait()
	if c.t.Failed() {
		c.keepLogs()
	}
}

// keepLogs writes the cluster's log to a file that outlives the test.
func (c *testCluster) keepLogs() {
	f, err := os.CreateTemp("", "flotilla-linearizability-*.log")
	if err != nil {
		c.t.Logf("keep cluster log: %v", err)
		return
	}
	defer f.Close()
	c.logs.writeTo(f)
	c.t.Logf("cluster log: %s", f.Name())
}

func (tn *testNode) gossipAddr() string {
	return net.JoinHostPort(tn.host.IP(), strconv.Itoa(tn.gossipPort))
}

func (tn *testNode) isHung() bool {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return tn.hung
}

// current is the running node, nil while it is down.
func (tn *testNode) current() *cluster.Node {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	return tn.node
}

// start runs the node on its data dir; bootstrapExpect only matters for a
// fresh data dir.
func (tn *testNode) start(bootstrapExpect int, join []string) error {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	if tn.hung {
		return fmt.Errorf("%s cannot restart: its last stop hung", tn.name)
	}
	if tn.node != nil {
		return fmt.Errorf("%s already running", tn.name)
	}
	tn.host.Restart() // after a crash
	ln, err := tn.host.Listen("tcp", net.JoinHostPort(tn.host.IP(), strconv.Itoa(tn.apiPort)))
	if err != nil {
		return fmt.Errorf("listen for the API: %w", err)
	}
	tn.apiPort = ln.Addr().(*net.TCPAddr).Port
	cfg := cluster.Config{
		Name:            tn.name,
		DataDir:         tn.dataDir,
		BindAddr:        tn.host.IP(),
		AdvertiseAddr:   tn.host.IP(),
		RaftPort:        tn.raftPort,
		GossipPort:      tn.gossipPort,
		APIPort:         tn.apiPort,
		BootstrapExpect: bootstrapExpect,
		Join:            join,
		JoinTimeout:     5 * time.Second,
		Timing:          cluster.TestTiming(),
		Network:         tn.host,
		Logger:          slog.New(slog.NewTextHandler(tn.c.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if tn.c.tweak != nil {
		tn.c.tweak(&cfg)
	}
	n, err := cluster.New(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		srv.Close()
		n.Close()
		return err
	}
	tn.raftPort = portOf(n.RaftAddr())
	tn.gossipPort = portOf(n.GossipAddr())
	tn.node, tn.srv = n, srv
	return nil
}

// restart starts a node that was killed, joining the others that run.
func (tn *testNode) restart() error {
	var join []string
	for _, o := range tn.c.nodes {
		if o != tn && o.current() != nil {
			join = append(join, o.gossipAddr())
		}
	}
	return tn.start(0, join)
}

// killTimeout bounds one stop. Shutdown's leadership transfer is bounded
// by 5 s; the rest should take milliseconds.
const killTimeout = 30 * time.Second

// kill stops the node: gracefully (Shutdown: a leader hands leadership
// over first) or as a crash (its host crashes, see faultnet.Host.Crash,
// then Close). A stop that does not return
// within killTimeout is an error naming a file with every goroutine's
// stack; the node is then left hung.
func (tn *testNode) kill(graceful bool) error {
	tn.mu.Lock()
	n, srv := tn.node, tn.srv
	tn.node, tn.srv = nil, nil
	tn.mu.Unlock()
	if n == nil {
		return nil
	}
	if !graceful {
		// A crashed process's sockets die with it, and nobody answers at
		// its address. Without this, Close waits for Raft RPCs blocked on
		// a paused or cut-off peer, up to the transport's 10 s I/O timeout.
		tn.host.Crash()
	}
	done := make(chan error, 1)
	go func() {
		if graceful {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			done <- n.Shutdown(ctx)
		} else {
			done <- n.Close()
		}
	}()
	t := time.NewTimer(killTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			tn.c.t.Logf("stop %s: %v", tn.name, err)
		}
	case <-t.C:
		tn.mu.Lock()
		tn.hung = true
		tn.mu.Unlock()
		return fmt.Errorf("stopping %s (graceful %v) did not return within %s; goroutines: %s",
			tn.name, graceful, killTimeout, dumpGoroutines())
	}
	srv.Close()
	tn.host.CloseConns()
	return nil
}

// dumpGoroutines writes every goroutine's stack to a file that outlives
// the test and returns its name.
func dumpGoroutines() string {
	f, err := os.CreateTemp("", "flotilla-linearizability-*.goroutines")
	if err != nil {
		return fmt.Sprintf("(cannot create a file: %v)", err)
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 2); err != nil {
		return fmt.Sprintf("(cannot write %s: %v)", f.Name(), err)
	}
	return f.Name()
}

func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		panic(fmt.Sprintf("address %q: %v", addr, err))
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		panic(fmt.Sprintf("address %q: %v", addr, err))
	}
	return port
}

// leader returns the node that leads now, as the running nodes see it (nil
// when none).
func (c *testCluster) leader() *testNode {
	for _, tn := range c.nodes {
		if n := tn.current(); n != nil && n.IsLeader() {
			return tn
		}
	}
	return nil
}

// waitLeader polls until every running node knows the same leader and
// that leader says it leads.
func (c *testCluster) waitLeader(timeout time.Duration) *testNode {
	c.t.Helper()
	var last string
	l := waitFor(timeout, func() (*testNode, bool) {
		var lead *testNode
		seen := ""
		for _, tn := range c.nodes {
			n := tn.current()
			if n == nil {
				continue
			}
			id, addr := n.Leader()
			if id == "" || addr == "" || (seen != "" && id != seen) {
				last = fmt.Sprintf("%s sees leader %q at %q", tn.name, id, addr)
				return nil, false
			}
			seen = id
			if n.IsLeader() {
				lead = tn
			}
		}
		if lead == nil {
			last = fmt.Sprintf("%s is not leading yet", seen)
		}
		return lead, lead != nil
	})
	if l == nil {
		c.t.Fatalf("no leader within %s: %s", timeout, last)
	}
	return l
}

// waitFor polls cond every few milliseconds until it holds or timeout
// passes; it returns cond's value, the zero value on timeout.
func waitFor[T any](timeout time.Duration, cond func() (T, bool)) T {
	deadline := time.Now().Add(timeout)
	for {
		v, ok := cond()
		if ok {
			return v
		}
		if time.Now().After(deadline) {
			var zero T
			return zero
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logBuffer collects the cluster's log in memory, for a file when a test
// fails. Only the last maxLog bytes are kept.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const maxLog = 32 << 20

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > maxLog {
		b.buf.Next(b.buf.Len() / 2)
	}
	return b.buf.Write(p)
}

func (b *logBuffer) writeTo(f *os.File) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, err := f.Write(b.buf.Bytes()); err != nil {
		fmt.Fprintln(os.Stderr, "write cluster log:", err)
	}
}

// definitelyFailed reports an error after which a write certainly was not
// applied. Everything else that is not success is an unknown outcome.
func definitelyFailed(err error) bool {
	if errors.Is(err, cluster.ErrOutcomeUnknown) {
		return false
	}
	return errors.Is(err, cluster.ErrNoLeader) || errors.Is(err, cluster.ErrNotLeader)
}
