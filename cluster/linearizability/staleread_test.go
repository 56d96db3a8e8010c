package linearizability_test

import (
	"context"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	lin "flotilla/cluster/linearizability"
	"flotilla/fsm"
)

// TestStaleReadIsCaught proves the check can fail: a read of a deposed
// leader's local store, skipping ReadIndex, returns a value the majority
// has already overwritten, and porcupine must call that history illegal.
// The same history with the read done properly (ReadIndex first) must pass.
func TestStaleReadIsCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster fault test")
	}
	c := newTestCluster(t, 3, nil)
	h := lin.NewHistory()
	const key = "/test/lin/default/stale"

	put := func(tn *testNode, value string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		call := h.Now()
		res, err := tn.current().Apply(ctx, &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: key, Value: []byte(value)}}})
		if err != nil {
			t.Fatalf("put %s on %s: %v", value, tn.name, err)
		}
		h.Add(0, lin.Input{Kind: lin.Put, Key: key, Value: value}, call, lin.Output{OK: true, Rev: res.Revision}, h.Now(), tn.name)
	}

	// v1 is committed and applied on the leader.
	old := c.waitLeader(20 * time.Second)
	put(old, "v1")

	// The leader is cut off; the other two elect a new one, which
	// commits v2 and acknowledges it.
	old.host.Isolate()
	newLeader := waitFor(20*time.Second, func() (*testNode, bool) {
		for _, tn := range c.nodes {
			if tn != old && tn.current().IsLeader() {
				return tn, true
			}
		}
		return nil, false
	})
	if newLeader == nil {
		t.Fatalf("no new leader after isolating %s", old.name)
	}
	put(newLeader, "v2")
	t.Logf("%s isolated, %s leads and committed v2", old.name, newLeader.name)

	// The bug under test: the deposed leader answers from its own state.
	call := h.Now()
	kv, _ := old.current().Store().Get(key)
	ret := h.Now()
	if kv == nil || string(kv.Value) != "v1" {
		t.Fatalf("the isolated %s's local store has %v, want v1: the setup did not isolate it", old.name, kv)
	}
	stale := porcupine.Operation{ClientId: 1, Input: lin.Input{Kind: lin.Get, Key: key}, Call: call,
		Output: lin.Output{Exists: true, Value: "v1", ModRev: kv.ModRevision}, Return: ret, Metadata: old.name + " local"}
	good := h.Operations()

	res, path, err := lin.Check(append(good, stale), nil, 30*time.Second, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if res != porcupine.Illegal {
		t.Fatalf("stale read from the deposed leader: checker said %s, want Illegal", res)
	}
	t.Logf("stale read caught; visualization was written to %s", path)

	// The real read path on the isolated node must not answer at all...
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := old.current().ReadIndex(ctx); err == nil {
		kv, _ := old.current().Store().Get(key)
		t.Fatalf("ReadIndex succeeded on the isolated former leader %s (local value %v)", old.name, kv)
	}
	// ...and, once healed, it must answer v2, which is linearizable.
	old.host.Heal()
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call = h.Now()
	if err := old.current().ReadIndex(ctx); err != nil {
		t.Fatalf("ReadIndex on %s after healing: %v", old.name, err)
	}
	kv, _ = old.current().Store().Get(key)
	out := lin.Output{}
	if kv != nil {
		out = lin.Output{Exists: true, Value: string(kv.Value), ModRev: kv.ModRevision}
	}
	h.Add(1, lin.Input{Kind: lin.Get, Key: key}, call, out, h.Now(), old.name)
	if res, path, err := h.Check(30*time.Second, ""); res != porcupine.Ok || err != nil {
		t.Fatalf("the history with a proper read is %s (%v), want Ok; visualization: %s", res, err, path)
	}
}
