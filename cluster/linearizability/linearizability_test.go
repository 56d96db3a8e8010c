package linearizability_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"flotilla/cluster"
	lin "flotilla/cluster/linearizability"
	"flotilla/fsm"
)

// Workload shape. A few keys so clients collide; a handful of clients so
// there is concurrency without drowning two cores.
const (
	numKeys    = 4
	numClients = 5
	// opTimeout bounds one operation; longer than a failover
	// (TestTiming's leaderWait is 1.8 s), so most operations during a
	// fault wait for the next leader rather than time out.
	opTimeout = 3 * time.Second
	// checkTimeout bounds porcupine. Histories here check in well under a
	// second; a timeout means the history grew pathological.
	checkTimeout = 60 * time.Second
)

// TestLinearizability runs concurrent clients against a three-master
// cluster while a nemesis kills, isolates and pauses masters, then checks
// the history with porcupine. make test runs a few short seeds;
// FLOTILLA_SOAK=1 (make soak) runs many. FLOTILLA_SEED=n replays one seed's
// schedule of choices (the timing of a real cluster is not replayable).
func TestLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster fault test")
	}
	seeds, dur, long := 3, 8*time.Second, false
	if os.Getenv("FLOTILLA_SOAK") != "" {
		seeds, dur, long = 50, 15*time.Second, true
	}
	base := uint64(time.Now().UnixNano())
	if s := os.Getenv("FLOTILLA_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("FLOTILLA_SEED=%q: %v", s, err)
		}
		base, seeds = v, 1
	}
	for i := range seeds {
		seed := base + uint64(i)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runWorkload(t, seed, dur, long) })
	}
}

// runWorkload runs one seed for dur; long allows faults longer than the
// Raft transport's 10 s I/O timeout.
func runWorkload(t *testing.T, seed uint64, dur time.Duration, long bool) {
	// Snapshots every few hundred entries, and few logs kept behind them:
	// restarted masters restore from snapshots and lagging ones are sent
	// one, so those paths run under the faults too.
	c := newTestCluster(t, 3, func(cfg *cluster.Config) {
		cfg.SnapshotThreshold = 100
		cfg.SnapshotInterval = 200 * time.Millisecond
		cfg.TrailingLogs = 20
	})
	w := &workload{
		t:    t,
		c:    c,
		h:    lin.NewHistory(),
		errs: make(map[string]int),
		long: long,
	}
	for i := range numKeys {
		w.keys = append(w.keys, fmt.Sprintf("/test/lin/default/k%d", i))
	}

	clientCtx, stopClients := context.WithCancel(context.Background())
	nemesisCtx, stopNemesis := context.WithTimeout(context.Background(), dur)
	defer stopNemesis()
	var clients, nemesis sync.WaitGroup
	defer func() { // also on a t.Fatal below
		stopClients()
		clients.Wait()
	}()
	for i := range numClients {
		clients.Add(1)
		go func() {
			defer clients.Done()
			w.client(clientCtx, rand.New(rand.NewPCG(seed, uint64(i+1))))
		}()
	}
	nemesis.Add(1)
	go func() {
		defer nemesis.Done()
		w.nemesis(nemesisCtx, rand.New(rand.NewPCG(seed, 0)))
	}()
	nemesis.Wait()

	// Heal everything, bring every master back (but one whose stop hung:
	// that is already an error), and let the clients see a healthy cluster
	// for a moment before they stop.
	c.net.HealAll()
	for _, tn := range c.nodes {
		if tn.current() == nil && !tn.isHung() {
			if err := tn.restart(); err != nil {
				t.Fatalf("restart %s after the faults: %v", tn.name, err)
			}
		}
	}
	c.waitLeader(20 * time.Second)
	time.Sleep(500 * time.Millisecond) // pacing: healthy traffic at the end
	stopClients()
	clients.Wait()

	// Every master must serve a linearizable read of every key now; those
	// reads join the history, so a lost acknowledged write shows there.
	for _, tn := range c.nodes {
		if tn.isHung() {
			continue
		}
		for _, k := range w.keys {
			if !w.get(tn, k, -1, 10*time.Second) {
				t.Errorf("linearizable read of %s on %s failed after healing", k, tn.name)
			}
		}
	}

	ops := w.h.Operations()
	stats := lin.Count(ops)
	t.Logf("seed %d: %d operations: %s; %d faults; longest wait for an acknowledgement %s",
		seed, len(ops), stats, w.faults.Load(), longestGap(ops).Round(time.Millisecond))
	w.logErrors()
	if stats.Puts+stats.CASes-stats.Unknown == 0 || stats.Gets == 0 {
		t.Errorf("the workload did no acknowledged writes or no reads: %s", stats)
	}

	start := time.Now()
	res, path, err := w.h.Check(checkTimeout, "")
	if err != nil {
		t.Errorf("visualization: %v", err)
	}
	switch res {
	case porcupine.Ok:
		t.Logf("linearizable (checked in %s)", time.Since(start).Round(time.Millisecond))
	case porcupine.Illegal:
		t.Errorf("history is NOT linearizable (seed %d); visualization: %s", seed, path)
	default:
		// Not a verdict: the checker ran out of time. Say so loudly but do
		// not fail, the cluster did nothing wrong that we know of.
		t.Logf("checker timed out after %s: history neither proven nor refuted; visualization: %s", checkTimeout, path)
	}
}

// longestGap is the longest time between two consecutive operations that
// returned: how long the cluster was unavailable at worst.
func longestGap(ops []porcupine.Operation) time.Duration {
	var rets []int64
	for _, op := range ops {
		if op.Return != lin.Infinity {
			rets = append(rets, op.Return)
		}
	}
	slices.Sort(rets)
	var gap int64
	for i := 1; i < len(rets); i++ {
		gap = max(gap, rets[i]-rets[i-1])
	}
	return time.Duration(gap)
}

// workload is the clients and the nemesis of one run.
type workload struct {
	t    *testing.T
	c    *testCluster
	h    *lin.History
	keys []string
	long bool // see runWorkload

	ids    atomic.Int64 // next client id
	faults atomic.Int64

	mu   sync.Mutex
	errs map[string]int // unknown outcomes and failed operations, by error text
}

// newID gives a client a fresh id. A client whose operation's outcome is
// unknown takes a new id afterwards: its old id stays "busy" forever (the
// operation never returns), which keeps the visualization readable.
func (w *workload) newID() int { return int(w.ids.Add(1) - 1) }

func (w *workload) noteErr(kind string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs[kind+": "+trimErr(err)]++
}

// trimErr keeps an error's message short enough to group by.
func trimErr(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func (w *workload) logErrors() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for msg, n := range w.errs {
		w.t.Logf("%4d × %s", n, msg)
	}
}

// client runs random operations on random masters until ctx ends.
func (w *workload) client(ctx context.Context, rng *rand.Rand) {
	id := w.newID()
	seq := 0
	// lastRev is the ModRevision this client last saw per key: what its CAS
	// compares with. It comes only from this client's observations, which
	// the model relies on to stay exact.
	lastRev := make(map[string]uint64)
	for ctx.Err() == nil {
		tn := w.c.nodes[rng.IntN(len(w.c.nodes))]
		if tn.current() == nil {
			pace(ctx, 10*time.Millisecond) // down: pick another soon
			continue
		}
		key := w.keys[rng.IntN(len(w.keys))]
		switch r := rng.IntN(10); {
		case r < 4:
			w.get(tn, key, id, opTimeout)
		default:
			seq++
			value := fmt.Sprintf("c%d.%d", id, seq)
			in := lin.Input{Kind: lin.Put, Key: key, Value: value}
			if r >= 7 {
				in.Kind, in.Rev = lin.CAS, lastRev[key]
			}
			out, known := w.write(tn, in, id)
			switch {
			case !known:
			case out.Unknown:
				id = w.newID()
			case out.OK:
				lastRev[key] = out.Rev
			default:
				lastRev[key] = out.ModRev
			}
		}
	}
}

// get is one linearizable read: ReadIndex on the node, then its local
// store. It is recorded only when it succeeded (a failed read has no
// effect). client -1 is a fresh id. It reports whether the read succeeded.
func (w *workload) get(tn *testNode, key string, client int, timeout time.Duration) bool {
	n := tn.current()
	if n == nil {
		return false
	}
	if client < 0 {
		client = w.newID()
	}
	opCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	call := w.h.Now()
	if err := n.ReadIndex(opCtx); err != nil {
		w.noteErr("get failed (dropped)", err)
		return false
	}
	kv, _ := n.Store().Get(key)
	ret := w.h.Now()
	out := lin.Output{}
	if kv != nil {
		out.Exists, out.Value, out.ModRev = true, string(kv.Value), kv.ModRevision
	}
	w.h.Add(client, lin.Input{Kind: lin.Get, Key: key}, call, out, ret, tn.name)
	return true
}

// write runs a put or a CAS through node tn. known is false when the
// operation certainly did not happen (not recorded).
func (w *workload) write(tn *testNode, in lin.Input, client int) (out lin.Output, known bool) {
	n := tn.current()
	if n == nil {
		return out, false
	}
	txn := &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: in.Key, Value: []byte(in.Value)}}}
	if in.Kind == lin.CAS {
		txn.Compares = []fsm.Compare{{Key: in.Key, Target: fsm.CompareModRevision, ModRevision: in.Rev}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	call := w.h.Now()
	res, err := n.Apply(ctx, txn)
	ret := w.h.Now()
	meta := tn.name
	switch {
	case err == nil && res.Succeeded:
		out.OK, out.Rev = true, res.Revision
	case err == nil && in.Kind == lin.CAS:
		if res.Current != nil {
			out.Exists, out.Value, out.ModRev = true, string(res.Current.Value), res.Current.ModRevision
		}
	case err == nil:
		w.t.Errorf("put %s on %s: not succeeded without an error: %+v", in.Key, tn.name, res)
		return out, false
	case definitelyFailed(err):
		w.noteErr("write failed (dropped)", err)
		return out, false
	default:
		w.noteErr("write outcome unknown (kept)", err)
		out.Unknown = true
		meta += ": " + trimErr(err)
	}
	w.h.Add(client, in, call, out, ret, meta)
	return out, true
}

// nemesis injects faults until ctx ends, mostly on the leader: one at a
// time, sometimes two at once (then a majority may be gone and nothing can
// commit until one heals). Each lasts 50 ms to 1.5 s (with w.long, one in
// eight lasts 11 s), with healthy gaps in between. When it returns every fault is undone, though a node it
// restarted may still be catching up.
func (w *workload) nemesis(ctx context.Context, rng *rand.Rand) {
	for {
		pace(ctx, between(rng, 100*time.Millisecond, 600*time.Millisecond)) // healthy gap
		if ctx.Err() != nil {
			return
		}
		start := w.h.Now()
		targets := []*testNode{w.c.leader()}
		if targets[0] == nil || rng.IntN(4) == 0 {
			targets[0] = w.c.nodes[rng.IntN(len(w.c.nodes))]
		}
		if rng.IntN(5) == 0 {
			for {
				other := w.c.nodes[rng.IntN(len(w.c.nodes))]
				if other != targets[0] {
					targets = append(targets, other)
					break
				}
			}
		}
		var whats []string
		var undos []func()
		for _, tn := range targets {
			what, undo, err := w.fault(rng, tn)
			if err != nil {
				// A node that cannot stop cannot be faulted again: end the
				// faults and let the test check what it has.
				w.t.Errorf("%s: %v", what, err)
				for _, undo := range undos {
					undo()
				}
				return
			}
			whats, undos = append(whats, what), append(undos, undo)
		}
		d := between(rng, 50*time.Millisecond, 1500*time.Millisecond)
		if w.long && rng.IntN(8) == 0 {
			// Past the transport's I/O timeout: RPCs to the faulted node
			// time out mid-stream and Raft's error paths run.
			d = 11 * time.Second
		}
		pace(context.Background(), d) // a fault runs its course even past the end
		for _, undo := range undos {
			undo()
		}
		w.faults.Add(int64(len(targets)))
		w.h.Note("nemesis", start, w.h.Now(), strings.Join(whats, " + "))
	}
}

// fault starts one random fault on tn and returns what it did and how to
// undo it; an error when tn did not stop.
func (w *workload) fault(rng *rand.Rand, tn *testNode) (string, func(), error) {
	role := "follower"
	if n := tn.current(); n == nil {
		role = "stopped"
	} else if n.IsLeader() {
		role = "leader"
	}
	name := role + " " + tn.name
	restart := func() {
		if err := tn.restart(); err != nil {
			w.t.Errorf("restart %s: %v", tn.name, err)
		}
	}
	switch rng.IntN(5) {
	case 0:
		return "crash " + name, restart, tn.kill(false)
	case 1:
		return "shut down " + name, restart, tn.kill(true)
	case 2:
		tn.host.Isolate()
		return "isolate " + name, tn.host.Heal, nil
	case 3:
		var other *testNode
		for other == nil || other == tn {
			other = w.c.nodes[rng.IntN(len(w.c.nodes))]
		}
		tn.host.Isolate(other.host)
		return "cut " + name + " from " + other.name, tn.host.Heal, nil
	default:
		tn.host.Pause()
		return "pause " + name, tn.host.Resume, nil
	}
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// pace sleeps d or until ctx ends: the nemesis' and clients' pacing, not
// synchronisation.
func pace(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
