package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"flotilla/cluster"
	"flotilla/cluster/clustertest"
	"flotilla/fsm"
)

const waitTimeout = 20 * time.Second

func newTestCluster(t *testing.T, n int, opts ...clustertest.Options) *clustertest.Cluster {
	t.Helper()
	var o clustertest.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	return clustertest.New(t, n, o)
}

func waitFor(t *testing.T, cond func() bool, what string, args ...any) {
	t.Helper()
	clustertest.WaitFor(t, waitTimeout, cond, what, args...)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func putTxn(key, value string) *fsm.Txn {
	return &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: key, Value: []byte(value)}}}
}

func mustApply(t *testing.T, n *cluster.Node, txn *fsm.Txn) *fsm.TxnResult {
	t.Helper()
	res, err := n.Apply(ctxT(t), txn)
	if err != nil {
		t.Fatalf("apply on %s: %v", n.ID(), err)
	}
	return res
}

// putRetry applies an unconditional put, retrying while the outcome is
// unknown or no leader is known: a put is idempotent, and on a loaded 2-core
// CI machine a short-timed test cluster may change leaders under the test.
func putRetry(ctx context.Context, n *cluster.Node, key, value string) (*fsm.TxnResult, error) {
	for {
		res, err := n.Apply(ctx, putTxn(key, value))
		if err == nil || ctx.Err() != nil || !(errors.Is(err, cluster.ErrOutcomeUnknown) ||
			errors.Is(err, cluster.ErrNoLeader) || errors.Is(err, cluster.ErrNotLeader)) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func mustPut(t *testing.T, n *cluster.Node, key, value string) *fsm.TxnResult {
	t.Helper()
	res, err := putRetry(ctxT(t), n, key, value)
	if err != nil {
		t.Fatalf("put %s on %s: %v", key, n.ID(), err)
	}
	if !res.Succeeded {
		t.Fatalf("put %s on %s: not succeeded: %+v", key, n.ID(), res)
	}
	return res
}

// linearGet is a linearizable read on n.
func linearGet(t *testing.T, n *cluster.Node, key string) (string, bool) {
	t.Helper()
	if err := n.ReadIndex(ctxT(t)); err != nil {
		t.Fatalf("read index on %s: %v", n.ID(), err)
	}
	kv, _ := n.Store().Get(key)
	if kv == nil {
		return "", false
	}
	return string(kv.Value), true
}

func voters(t *testing.T, n *cluster.Node) []string {
	t.Helper()
	peers, err := n.Peers(ctxT(t))
	if err != nil {
		t.Fatalf("peers on %s: %v", n.ID(), err)
	}
	var out []string
	for _, p := range peers {
		if p.Voter {
			out = append(out, p.ID)
		}
	}
	return out
}

// converged waits until every running server's store has the same
// revision and hash.
func converged(t *testing.T, c *clustertest.Cluster) {
	t.Helper()
	waitFor(t, func() bool {
		var rev0, h0 uint64
		for i, s := range c.Running() {
			rev, h := s.Node.Store().Hash()
			if i == 0 {
				rev0, h0 = rev, h
			} else if rev != rev0 || h != h0 {
				return false
			}
		}
		return true
	}, "stores to converge")
}

// termCounter is a leader service that records, per server, how often it
// started and stopped, and whether two ever ran at once on one server.
type termCounter struct {
	mu      sync.Mutex
	starts  map[string]int
	stops   map[string]int
	running map[string]bool
	overlap []string
}

func newTermCounter() *termCounter {
	return &termCounter{starts: map[string]int{}, stops: map[string]int{}, running: map[string]bool{}}
}

func (c *termCounter) service(server string) cluster.LeaderService {
	return cluster.LeaderService{Name: "counter", Run: func(ctx context.Context) error {
		c.mu.Lock()
		if c.running[server] {
			c.overlap = append(c.overlap, server)
		}
		c.running[server] = true
		c.starts[server]++
		c.mu.Unlock()
		<-ctx.Done()
		c.mu.Lock()
		c.running[server] = false
		c.stops[server]++
		c.mu.Unlock()
		return nil
	}}
}

func (c *termCounter) get(server string) (starts, stops int, overlap []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.starts[server], c.stops[server], append([]string(nil), c.overlap...)
}

func key(i int) string { return fmt.Sprintf("/test/k/%05d", i) }
