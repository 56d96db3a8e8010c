package fsm

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// model is the obvious map implementation of the store's semantics.
type model struct {
	kvs    map[string]KeyValue
	rev    uint64
	events []modelEvent
}

type modelEvent struct{ key, desc string }

func (m *model) get(k string) *KeyValue {
	if kv, ok := m.kvs[k]; ok {
		return &kv
	}
	return nil
}

func (m *model) apply(t *Txn, rev uint64) *TxnResult {
	m.rev = rev
	for i, c := range t.Compares {
		kv := m.get(c.Key)
		var ok bool
		switch c.Target {
		case CompareExists:
			ok = kv != nil
		case CompareAbsent:
			ok = kv == nil
		case CompareModRevision:
			mod := uint64(0)
			if kv != nil {
				mod = kv.ModRevision
			}
			ok = mod == c.ModRevision
		}
		if !ok {
			return &TxnResult{Revision: rev, FailedCompare: i, Current: kv}
		}
	}
	res := &TxnResult{Succeeded: true, Revision: rev, FailedCompare: -1}
	for _, op := range t.Ops {
		prev := m.get(op.Key)
		res.Prev = append(res.Prev, prev)
		switch op.Type {
		case OpPut:
			kv := KeyValue{Key: op.Key, Value: op.Value, CreateRevision: rev, ModRevision: rev, ExpiresAt: op.ExpiresAt}
			if prev != nil {
				kv.CreateRevision = prev.CreateRevision
			}
			m.kvs[op.Key] = kv
			m.events = append(m.events, modelEvent{op.Key, fmt.Sprintf("%d put %s=%s c%d", rev, op.Key, op.Value, kv.CreateRevision)})
		case OpDelete:
			if prev != nil {
				delete(m.kvs, op.Key)
				m.events = append(m.events, modelEvent{op.Key, fmt.Sprintf("%d del %s=%s c%d", rev, op.Key, prev.Value, prev.CreateRevision)})
			}
		}
	}
	return res
}

// program turns fuzz bytes into a sequence of small transactions on a few keys.
type program struct {
	data []byte
	off  int
}

func (p *program) next(n int) int {
	if p.off >= len(p.data) {
		return 0
	}
	b := p.data[p.off]
	p.off++
	return int(b) % n
}

func (p *program) done() bool { return p.off >= len(p.data) }

var modelKeys = []string{"/m/a", "/m/b", "/m/c", "/n/a", "/m/a/x"}

func (p *program) txn(m *model) *Txn {
	t := &Txn{}
	for range p.next(3) {
		c := Compare{Key: modelKeys[p.next(len(modelKeys))], Target: CompareTarget(1 + p.next(3))}
		if c.Target == CompareModRevision {
			switch p.next(3) {
			case 0:
				if kv := m.get(c.Key); kv != nil {
					c.ModRevision = kv.ModRevision
				}
			case 1:
				c.ModRevision = uint64(p.next(20))
			}
		}
		t.Compares = append(t.Compares, c)
	}
	for range p.next(5) {
		op := Op{Type: OpType(1 + p.next(2)), Key: modelKeys[p.next(len(modelKeys))]}
		if op.Type == OpPut {
			op.Value = []byte(fmt.Sprint(p.next(10)))
			if p.next(3) == 0 {
				op.ExpiresAt = int64(1 + p.next(50))
			}
		}
		t.Ops = append(t.Ops, op)
	}
	return t
}

func describe(ev Event) string {
	kind := "put"
	if ev.Type == EventDelete {
		kind = "del"
	}
	return fmt.Sprintf("%d %s %s=%s c%d", ev.Revision, kind, ev.KV.Key, ev.KV.Value, ev.KV.CreateRevision)
}

func FuzzApply(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add(bytes.Repeat([]byte{2, 1, 0, 0, 1, 3, 0, 7, 1}, 20))
	f.Add([]byte{0, 4, 0, 0, 1, 0, 1, 0, 0, 1, 1, 2, 0, 4, 1, 1, 1, 1, 1, 2, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		p := &program{data: data}
		s := New(Config{WatcherBuffer: 1 << 20})
		m := &model{kvs: map[string]KeyValue{}}
		w, err := s.Watch("/m/", 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		var want []string
		for index := uint64(1); !p.done(); {
			// A batch of 1..3 entries, some of them not commands.
			var logs []*raft.Log
			var txns []*Txn
			for range 1 + p.next(3) {
				l := &raft.Log{Index: index, Type: raft.LogCommand}
				var txn *Txn
				switch p.next(8) {
				case 0:
					l.Type = raft.LogConfiguration
				case 1:
					l.Data = []byte{byte(SkipIfUnknown | 3)}
				default:
					txn = p.txn(m)
					l.Data = mustEncode(t, txn)
				}
				logs = append(logs, l)
				txns = append(txns, txn)
				index++
			}
			resps := s.ApplyBatch(logs)
			for i, txn := range txns {
				if txn == nil {
					m.rev = logs[i].Index
					if resps[i] != nil {
						t.Fatalf("entry %d: response %v", logs[i].Index, resps[i])
					}
					continue
				}
				wantRes := m.apply(txn, logs[i].Index)
				got := resps[i].(*TxnResult)
				if !sameResult(got, wantRes) {
					t.Fatalf("entry %d %+v:\n got %s\nwant %s", logs[i].Index, txn, fmtResult(got), fmtResult(wantRes))
				}
			}
		}
		if s.Revision() != m.rev {
			t.Fatalf("revision %d, model %d", s.Revision(), m.rev)
		}
		got := dump(t, s, "")
		if len(got) != len(m.kvs) {
			t.Fatalf("%d keys, model %d", len(got), len(m.kvs))
		}
		for k, kv := range m.kvs {
			if g, ok := got[k]; !ok || !sameKV(&g, &kv) {
				t.Fatalf("key %s: %+v, model %+v", k, g, kv)
			}
		}
		if exp, n := s.Expired(time.Unix(0, 1<<40), 0), countExpiring(m); len(exp) != n || s.expiry.Len() != n {
			t.Fatalf("expiry index %d/%d, model %d", len(exp), s.expiry.Len(), n)
		}
		for _, e := range m.events {
			if strings.HasPrefix(e.key, "/m/") {
				want = append(want, e.desc)
			}
		}
		if len(want) > 0 {
			var evs []string
			for _, ev := range recv(t, w, len(want), 10*time.Second) {
				evs = append(evs, describe(ev))
			}
			if !reflect.DeepEqual(evs, want) {
				t.Fatalf("events:\n got %q\nwant %q", evs, want)
			}
		}
		// And the state survives a snapshot.
		r := New(Config{})
		if err := r.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, s)))); err != nil {
			t.Fatal(err)
		}
		r1, h1 := s.Hash()
		if r2, h2 := r.Hash(); r1 != r2 || h1 != h2 {
			t.Fatal("restored hash differs")
		}
	})
}

func countExpiring(m *model) int {
	n := 0
	for _, kv := range m.kvs {
		if kv.ExpiresAt != 0 {
			n++
		}
	}
	return n
}

func sameKV(a, b *KeyValue) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Key == b.Key && bytes.Equal(a.Value, b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.ExpiresAt == b.ExpiresAt
}

func sameResult(a, b *TxnResult) bool {
	if a.Succeeded != b.Succeeded || a.Revision != b.Revision || a.FailedCompare != b.FailedCompare ||
		!sameKV(a.Current, b.Current) || len(a.Prev) != len(b.Prev) {
		return false
	}
	for i := range a.Prev {
		if !sameKV(a.Prev[i], b.Prev[i]) {
			return false
		}
	}
	return true
}

func fmtResult(r *TxnResult) string {
	s := fmt.Sprintf("ok=%v rev=%d failed=%d current=%+v prev=[", r.Succeeded, r.Revision, r.FailedCompare, r.Current)
	for _, p := range r.Prev {
		s += fmt.Sprintf("%+v ", p)
	}
	return s + "]"
}
