package fsm

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// cmdLog wraps an encoded command as the next entry for s.
func cmdLog(s *Store, data []byte) *raft.Log {
	return &raft.Log{Index: s.Revision() + 1, Type: raft.LogCommand, Data: data}
}

func mustEncode(t testing.TB, txn *Txn) []byte {
	t.Helper()
	data, err := EncodeTxn(txn)
	if err != nil {
		t.Fatalf("encode %+v: %v", txn, err)
	}
	return data
}

// apply commits txn as the next entry and returns its result.
func apply(t testing.TB, s *Store, txn *Txn) *TxnResult {
	t.Helper()
	res, ok := s.Apply(cmdLog(s, mustEncode(t, txn))).(*TxnResult)
	if !ok {
		t.Fatalf("apply %+v: result is not a *TxnResult", txn)
	}
	return res
}

func put(t testing.TB, s *Store, key, value string) *TxnResult {
	t.Helper()
	return apply(t, s, &Txn{Ops: []Op{{Type: OpPut, Key: key, Value: []byte(value)}}})
}

func del(t testing.TB, s *Store, key string) *TxnResult {
	t.Helper()
	return apply(t, s, &Txn{Ops: []Op{{Type: OpDelete, Key: key}}})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recv takes n events from w, failing if they do not come within timeout.
func recv(t testing.TB, w *Watcher, n int, timeout time.Duration) []Event {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	out := make([]Event, 0, n)
	for len(out) < n {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				t.Fatalf("watcher closed after %d of %d events: %v", len(out), n, w.Err())
			}
			out = append(out, ev)
		case <-timer.C:
			t.Fatalf("got %d of %d events within %v", len(out), n, timeout)
		}
	}
	return out
}

// expectClosed drains w until its channel closes and returns Err.
func expectClosed(t testing.TB, w *Watcher, timeout time.Duration) error {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return w.Err()
			}
		case <-timer.C:
			t.Fatalf("watcher not closed within %v", timeout)
		}
	}
}

// expectQuiet checks that w has no event ready (after the store settled).
func expectQuiet(t testing.TB, w *Watcher) {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		t.Fatalf("unexpected event %+v (open %v)", ev, ok)
	default:
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// memSink is an in-memory raft.SnapshotSink; failAfter > 0 makes writes
// fail once that many bytes were written.
type memSink struct {
	bytes.Buffer
	failAfter int
	closed    bool
	cancelled bool
}

var errSinkFull = errors.New("sink full")

func (m *memSink) Write(p []byte) (int, error) {
	if m.failAfter > 0 && m.Len()+len(p) > m.failAfter {
		return 0, errSinkFull
	}
	return m.Buffer.Write(p)
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Close() error  { m.closed = true; return nil }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// snapshotBytes persists a snapshot of s into memory.
func snapshotBytes(t testing.TB, s *Store) []byte {
	t.Helper()
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("persist: sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// dump lists every key under prefix with its value, at the current revision.
func dump(t testing.TB, s *Store, prefix string) map[string]KeyValue {
	t.Helper()
	res, err := s.List(prefix, ListOptions{})
	if err != nil {
		t.Fatalf("list %s: %v", prefix, err)
	}
	out := make(map[string]KeyValue, len(res.KVs))
	for _, kv := range res.KVs {
		out[kv.Key] = *kv
	}
	return out
}
