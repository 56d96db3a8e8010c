package fsm

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestTxnCompares(t *testing.T) {
	// /a exists, written at revision 1; /b does not.
	const rev = 1
	cases := []struct {
		name     string
		compares []Compare
		ok       bool
		failed   int
		current  bool // Current is /a
	}{
		{"exists holds", []Compare{{Key: "/a", Target: CompareExists}}, true, -1, false},
		{"exists fails on absent", []Compare{{Key: "/b", Target: CompareExists}}, false, 0, false},
		{"absent holds", []Compare{{Key: "/b", Target: CompareAbsent}}, true, -1, false},
		{"absent fails on present", []Compare{{Key: "/a", Target: CompareAbsent}}, false, 0, true},
		{"modRevision holds", []Compare{{Key: "/a", Target: CompareModRevision, ModRevision: rev}}, true, -1, false},
		{"modRevision fails", []Compare{{Key: "/a", Target: CompareModRevision, ModRevision: rev + 7}}, false, 0, true},
		{"modRevision 0 holds on absent", []Compare{{Key: "/b", Target: CompareModRevision}}, true, -1, false},
		{"modRevision 0 fails on present", []Compare{{Key: "/a", Target: CompareModRevision}}, false, 0, true},
		{"modRevision N fails on absent", []Compare{{Key: "/b", Target: CompareModRevision, ModRevision: rev}}, false, 0, false},
		{"second compare fails", []Compare{
			{Key: "/a", Target: CompareExists},
			{Key: "/a", Target: CompareModRevision, ModRevision: 99},
			{Key: "/b", Target: CompareExists},
		}, false, 1, true},
		{"no compares", nil, true, -1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			put(t, s, "/a", "1")
			w, err := s.Watch("/", 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			res := apply(t, s, &Txn{Compares: tc.compares, Ops: []Op{{Type: OpPut, Key: "/c", Value: []byte("x")}}})
			if res.Succeeded != tc.ok || res.FailedCompare != tc.failed {
				t.Fatalf("result %+v, want ok=%v failed=%d", res, tc.ok, tc.failed)
			}
			if res.Revision != 2 || s.Revision() != 2 {
				t.Fatalf("result revision %d, store %d, want 2", res.Revision, s.Revision())
			}
			if got := res.Current != nil; got != tc.current {
				t.Fatalf("Current = %+v, want /a: %v", res.Current, tc.current)
			}
			if tc.current && res.Current.Key != "/a" {
				t.Fatalf("Current = %+v", res.Current)
			}
			kv, _ := s.Get("/c")
			if (kv != nil) != tc.ok {
				t.Fatalf("/c = %+v after ok=%v", kv, tc.ok)
			}
			if tc.ok {
				if len(res.Prev) != 1 || res.Prev[0] != nil {
					t.Fatalf("Prev = %v", res.Prev)
				}
				recv(t, w, 1, 5*time.Second)
			} else if res.Prev != nil {
				t.Fatalf("Prev on failure: %v", res.Prev)
			}
		})
	}
}

func TestTxnAllOrNothing(t *testing.T) {
	s := New(Config{})
	put(t, s, "/a", "1")
	w, err := s.Watch("/", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	_, h0 := s.Hash()
	res := apply(t, s, &Txn{
		Compares: []Compare{{Key: "/a", Target: CompareExists}, {Key: "/zzz", Target: CompareExists}},
		Ops: []Op{
			{Type: OpPut, Key: "/b", Value: []byte("2")},
			{Type: OpDelete, Key: "/a"},
			{Type: OpPut, Key: "/a", Value: []byte("3")},
		},
	})
	if res.Succeeded || res.FailedCompare != 1 || res.Current != nil {
		t.Fatalf("result %+v", res)
	}
	if _, h1 := s.Hash(); h1 != h0 {
		t.Fatal("state changed by a failed txn")
	}
	if s.Revision() != 2 {
		t.Fatalf("revision %d, want 2 (failed txns advance it too)", s.Revision())
	}
	put(t, s, "/c", "x")
	if ev := recv(t, w, 1, 5*time.Second)[0]; ev.KV.Key != "/c" || ev.Revision != 3 {
		t.Fatalf("first event after failed txn: %+v", ev)
	}
}

func TestRevisions(t *testing.T) {
	s := New(Config{})
	steps := []struct {
		do             func() *TxnResult
		create, mod    uint64
		absent         bool
		prevMod        uint64 // of Prev[0], 0 = nil
		prevValue, val string
	}{
		{do: func() *TxnResult { return put(t, s, "/k", "a") }, create: 1, mod: 1, val: "a"},
		{do: func() *TxnResult { return put(t, s, "/k", "b") }, create: 1, mod: 2, val: "b", prevMod: 1, prevValue: "a"},
		{do: func() *TxnResult { return put(t, s, "/other", "x") }, create: 1, mod: 2, val: "b"},
		{do: func() *TxnResult { return del(t, s, "/k") }, absent: true},
		{do: func() *TxnResult { return del(t, s, "/k") }, absent: true}, // deleting an absent key: no-op, still succeeds
		{do: func() *TxnResult { return put(t, s, "/k", "c") }, create: 6, mod: 6, val: "c"},
	}
	for i, st := range steps {
		res := st.do()
		if !res.Succeeded || res.Revision != uint64(i+1) {
			t.Fatalf("step %d: %+v", i, res)
		}
		kv, rev := s.Get("/k")
		if rev != uint64(i+1) {
			t.Fatalf("step %d: Get revision %d", i, rev)
		}
		if st.absent {
			if kv != nil {
				t.Fatalf("step %d: /k = %+v, want absent", i, kv)
			}
			continue
		}
		if kv == nil || kv.CreateRevision != st.create || kv.ModRevision != st.mod || string(kv.Value) != st.val {
			t.Fatalf("step %d: /k = %+v, want create %d mod %d value %q", i, kv, st.create, st.mod, st.val)
		}
		if st.prevMod != 0 && (res.Prev[0] == nil || res.Prev[0].ModRevision != st.prevMod || string(res.Prev[0].Value) != st.prevValue) {
			t.Fatalf("step %d: Prev %+v", i, res.Prev[0])
		}
	}
}

func TestSameKeyOpsInOneTxn(t *testing.T) {
	s := New(Config{})
	put(t, s, "/b", "old")
	w, err := s.Watch("/", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	res := apply(t, s, &Txn{Ops: []Op{
		{Type: OpPut, Key: "/a", Value: []byte("1")},
		{Type: OpPut, Key: "/a", Value: []byte("2")},
		{Type: OpDelete, Key: "/b"},
		{Type: OpPut, Key: "/b", Value: []byte("new")},
		{Type: OpDelete, Key: "/a"},
		{Type: OpDelete, Key: "/a"},
	}})
	if !res.Succeeded {
		t.Fatalf("%+v", res)
	}
	prevVals := make([]string, len(res.Prev))
	for i, p := range res.Prev {
		if p != nil {
			prevVals[i] = string(p.Value)
		}
	}
	if want := []string{"", "1", "old", "", "2", ""}; !reflect.DeepEqual(prevVals, want) {
		t.Fatalf("Prev values %q, want %q", prevVals, want)
	}
	if kv, _ := s.Get("/a"); kv != nil {
		t.Fatalf("/a = %+v", kv)
	}
	kv, _ := s.Get("/b")
	if kv == nil || string(kv.Value) != "new" || kv.CreateRevision != 2 || kv.ModRevision != 2 {
		t.Fatalf("/b = %+v (delete then put re-creates)", kv)
	}
	evs := recv(t, w, 5, 5*time.Second)
	var got []string
	for _, ev := range evs {
		if ev.Revision != 2 {
			t.Fatalf("event %+v at revision %d", ev, ev.Revision)
		}
		got = append(got, fmt.Sprintf("%d %s %s", ev.Type, ev.KV.Key, ev.KV.Value))
	}
	want := []string{"1 /a 1", "1 /a 2", "2 /b old", "1 /b new", "2 /a 2"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if evs[1].KV.CreateRevision != 2 || evs[1].PrevKV != evs[0].KV {
		t.Fatalf("second put %+v prev %+v", evs[1].KV, evs[1].PrevKV)
	}
}

func TestApplyEntryKinds(t *testing.T) {
	valid := mustEncode(t, &Txn{Ops: []Op{{Type: OpPut, Key: "/x", Value: []byte("v")}}})
	cases := []struct {
		name  string
		log   raft.Log // Index is filled in
		panic string   // substring of the panic; "" = no panic
		hasKV bool
	}{
		{"txn", raft.Log{Type: raft.LogCommand, Data: valid}, "", true},
		{"unknown skippable", raft.Log{Type: raft.LogCommand, Data: []byte{byte(SkipIfUnknown | 5), 1, 2, 3}}, "", false},
		{"unknown skippable, no payload", raft.Log{Type: raft.LogCommand, Data: []byte{0xff}}, "", false},
		{"configuration entry", raft.Log{Type: raft.LogConfiguration, Data: []byte("whatever")}, "", false},
		{"unknown not skippable", raft.Log{Type: raft.LogCommand, Data: []byte{5, 1, 2}}, "unknown command type 5 at index 4", false},
		{"corrupt txn", raft.Log{Type: raft.LogCommand, Data: valid[:len(valid)-1]}, "corrupt txn at index 4", false},
		{"empty command", raft.Log{Type: raft.LogCommand}, "empty command at index 4", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			put(t, s, "/a", "1")
			put(t, s, "/b", "2")
			put(t, s, "/c", "3")
			rev0, h0 := s.Hash()
			l := tc.log
			l.Index = 4
			var res interface{}
			msg := func() (msg string) {
				defer func() {
					if r := recover(); r != nil {
						msg = fmt.Sprint(r)
					}
				}()
				res = s.Apply(&l)
				return ""
			}()
			if tc.panic != "" {
				if !strings.Contains(msg, tc.panic) {
					t.Fatalf("panic %q, want %q", msg, tc.panic)
				}
				// Decoding comes first: nothing changed and the store still works.
				if rev, h := s.Hash(); rev != rev0 || h != h0 {
					t.Fatal("a panicking entry changed the store")
				}
				put(t, s, "/d", "4")
				return
			}
			if msg != "" {
				t.Fatalf("unexpected panic %s", msg)
			}
			if s.Revision() != 4 {
				t.Fatalf("revision %d, want 4", s.Revision())
			}
			kv, _ := s.Get("/x")
			if (kv != nil) != tc.hasKV {
				t.Fatalf("/x = %+v", kv)
			}
			if _, isTxn := res.(*TxnResult); isTxn != tc.hasKV {
				t.Fatalf("result %#v", res)
			}
		})
	}
}

func TestApplyIndexMustIncrease(t *testing.T) {
	s := New(Config{})
	put(t, s, "/a", "1")
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "log index 1 is not after revision 1") {
			t.Fatalf("panic %v", r)
		}
	}()
	s.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: mustEncode(t, &Txn{})})
}

func TestApplyBatch(t *testing.T) {
	s := New(Config{})
	w, err := s.Watch("/", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	enc := func(txn *Txn) []byte { return mustEncode(t, txn) }
	logs := []*raft.Log{
		{Index: 3, Type: raft.LogConfiguration},
		{Index: 4, Type: raft.LogCommand, Data: enc(&Txn{Ops: []Op{{Type: OpPut, Key: "/a", Value: []byte("1")}}})},
		{Index: 5, Type: raft.LogCommand, Data: enc(&Txn{Compares: []Compare{{Key: "/a", Target: CompareAbsent}}})},
		{Index: 6, Type: raft.LogCommand, Data: []byte{0x90}},
		{Index: 7, Type: raft.LogCommand, Data: enc(&Txn{
			Compares: []Compare{{Key: "/a", Target: CompareModRevision, ModRevision: 4}},
			Ops:      []Op{{Type: OpPut, Key: "/a", Value: []byte("2")}},
		})},
	}
	resps := s.ApplyBatch(logs)
	if len(resps) != len(logs) {
		t.Fatalf("%d responses for %d logs", len(resps), len(logs))
	}
	if resps[0] != nil || resps[3] != nil {
		t.Fatalf("non-command responses %v %v", resps[0], resps[3])
	}
	if r := resps[1].(*TxnResult); !r.Succeeded || r.Revision != 4 {
		t.Fatalf("resp 1 %+v", r)
	}
	if r := resps[2].(*TxnResult); r.Succeeded || r.Revision != 5 || r.Current == nil || r.Current.ModRevision != 4 {
		t.Fatalf("resp 2 %+v", r)
	}
	if r := resps[4].(*TxnResult); !r.Succeeded || r.Revision != 7 {
		t.Fatalf("resp 4 %+v", r)
	}
	if s.Revision() != 7 {
		t.Fatalf("revision %d", s.Revision())
	}
	evs := recv(t, w, 2, 5*time.Second)
	if evs[0].Revision != 4 || evs[1].Revision != 7 || evs[1].KV.CreateRevision != 4 {
		t.Fatalf("events %+v %+v", evs[0], evs[1])
	}
	if len(s.ApplyBatch(nil)) != 0 {
		t.Fatal("empty batch")
	}
}

func TestGetListCount(t *testing.T) {
	s := New(Config{})
	keys := []string{"/core/pods/a/p1", "/core/pods/a/p2", "/core/pods/b/p1", "/core/pods2/a/x", "/core/services/a/s"}
	for _, k := range keys {
		put(t, s, k, "v"+k)
	}
	rev := s.Revision()
	names := func(kvs []*KeyValue) []string {
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	cases := []struct {
		name      string
		prefix    string
		opts      ListOptions
		want      []string
		more      bool
		remaining int
	}{
		{"all", "", ListOptions{}, keys, false, 0},
		{"prefix", "/core/pods/", ListOptions{}, keys[:3], false, 0},
		{"namespace", "/core/pods/a/", ListOptions{}, keys[:2], false, 0},
		{"no match", "/apps/", ListOptions{}, nil, false, 0},
		{"limit", "/core/pods/", ListOptions{Limit: 2}, keys[:2], true, 1},
		{"limit exact", "/core/pods/", ListOptions{Limit: 3}, keys[:3], false, 0},
		{"after", "/core/pods/", ListOptions{After: "/core/pods/a/p1"}, keys[1:3], false, 0},
		{"after absent key", "/core/pods/", ListOptions{After: "/core/pods/a/p1x"}, keys[1:3], false, 0},
		{"after last", "/core/pods/", ListOptions{After: "/core/pods/b/p1"}, nil, false, 0},
		{"after before prefix", "/core/pods/", ListOptions{After: "/a"}, keys[:3], false, 0},
		{"after and limit", "", ListOptions{After: keys[0], Limit: 1}, keys[1:2], true, 3},
		{"at current revision", "/core/pods/", ListOptions{Revision: rev}, keys[:3], false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.List(tc.prefix, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := names(res.KVs); !reflect.DeepEqual(got, tc.want) || res.More != tc.more || res.Remaining != tc.remaining || res.Revision != rev {
				t.Fatalf("got %q more=%v remaining=%d rev=%d; want %q more=%v remaining=%d rev=%d",
					got, res.More, res.Remaining, res.Revision, tc.want, tc.more, tc.remaining, rev)
			}
		})
	}
	if n, r := s.Count("/core/pods/"); n != 3 || r != rev {
		t.Fatalf("Count = %d at %d", n, r)
	}
	if n, _ := s.Count(""); n != len(keys) {
		t.Fatalf("Count all = %d", n)
	}
	if kv, r := s.Get("/core/pods/a/p2"); kv == nil || string(kv.Value) != "v/core/pods/a/p2" || r != rev {
		t.Fatalf("Get = %+v at %d", kv, r)
	}
	if kv, _ := s.Get("/nope"); kv != nil {
		t.Fatalf("Get absent = %+v", kv)
	}
}

func TestListRevisions(t *testing.T) {
	clock := newFakeClock()
	s := New(Config{Now: clock.Now, ViewTTL: time.Minute})
	for i := range 10 {
		put(t, s, fmt.Sprintf("/k/%02d", i), "a")
	}
	page, err := s.List("/k/", ListOptions{Limit: 4})
	if err != nil || len(page.KVs) != 4 || !page.More || page.Remaining != 6 {
		t.Fatalf("page 1 %+v %v", page, err)
	}
	r1 := page.Revision
	// Writes move on; the paginated walk stays at r1.
	put(t, s, "/k/05", "b")
	del(t, s, "/k/06")
	put(t, s, "/k/99", "new")

	if _, err := s.List("/k/", ListOptions{Revision: r1 - 1}); !errors.Is(err, ErrCompacted) {
		t.Fatalf("unretained older revision: %v", err)
	}
	if _, err := s.List("/k/", ListOptions{Revision: s.Revision() + 1}); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("future revision: %v", err)
	}
	if res, err := s.List("/k/", ListOptions{Revision: s.Revision()}); err != nil || len(res.KVs) != 10 {
		t.Fatalf("current revision: %v %v", res, err)
	}

	var got []string
	after := page.KVs[3].Key
	for {
		clock.Advance(50 * time.Second) // each page refreshes the TTL
		p, err := s.List("/k/", ListOptions{Revision: r1, After: after, Limit: 4})
		if err != nil {
			t.Fatal(err)
		}
		if p.Revision != r1 {
			t.Fatalf("page at %d, want %d", p.Revision, r1)
		}
		for _, kv := range p.KVs {
			got = append(got, kv.Key+"="+string(kv.Value))
		}
		if !p.More {
			break
		}
		after = p.KVs[len(p.KVs)-1].Key
	}
	want := []string{"/k/04=a", "/k/05=a", "/k/06=a", "/k/07=a", "/k/08=a", "/k/09=a"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("pages %q, want %q", got, want)
	}

	// The view expires ViewTTL after its last page with More.
	page, _ = s.List("/k/", ListOptions{Limit: 1})
	if _, err := s.List("/k/", ListOptions{Revision: page.Revision, After: "/k/00", Limit: 1}); err != nil {
		t.Fatal(err)
	}
	put(t, s, "/k/x", "moves the revision on")
	clock.Advance(61 * time.Second)
	if _, err := s.List("/k/", ListOptions{Revision: page.Revision, After: "/k/01", Limit: 1}); !errors.Is(err, ErrCompacted) {
		t.Fatalf("expired view: %v", err)
	}
}

func TestRetainedViewsBounded(t *testing.T) {
	s := New(Config{})
	put(t, s, "/k/1", "a")
	put(t, s, "/k/2", "a")
	var revs []uint64
	for range maxRetainedViews + 10 {
		p, err := s.List("/k/", ListOptions{Limit: 1})
		if err != nil || !p.More {
			t.Fatalf("%+v %v", p, err)
		}
		revs = append(revs, p.Revision)
		put(t, s, "/k/3", "a")
	}
	s.viewsMu.Lock()
	n := len(s.views)
	s.viewsMu.Unlock()
	if n != maxRetainedViews {
		t.Fatalf("%d views retained, want %d", n, maxRetainedViews)
	}
	if _, err := s.List("/k/", ListOptions{Revision: revs[0], After: "/k/1"}); !errors.Is(err, ErrCompacted) {
		t.Fatalf("oldest view should be gone: %v", err)
	}
	if _, err := s.List("/k/", ListOptions{Revision: revs[len(revs)-1], After: "/k/1"}); err != nil {
		t.Fatalf("newest view: %v", err)
	}
}

// TestListDuringWrites walks paginated lists while a writer applies
// entries, and checks every walk sees exactly the state of its revision.
func TestListDuringWrites(t *testing.T) {
	s := New(Config{})
	const base = 500 // keys /w/a/000../w/a/499 written at revisions 1..500
	for i := range base {
		put(t, s, fmt.Sprintf("/w/a/%03d", i), "0")
	}
	// Entry at revision r > base: overwrite /w/a/(r%base) with value r,
	// create /w/n/r and delete /w/n/(r-20).
	stateAt := func(r uint64) map[string]string {
		m := make(map[string]string)
		for i := range base {
			m[fmt.Sprintf("/w/a/%03d", i)] = "0"
		}
		for x := uint64(base + 1); x <= r; x++ {
			m[fmt.Sprintf("/w/a/%03d", x%base)] = fmt.Sprint(x)
			m[fmt.Sprintf("/w/n/%06d", x)] = fmt.Sprint(x)
			delete(m, fmt.Sprintf("/w/n/%06d", x-20))
		}
		return m
	}
	const writes = 1500
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range writes {
			r := s.Revision() + 1
			data, err := EncodeTxn(&Txn{Ops: []Op{
				{Type: OpPut, Key: fmt.Sprintf("/w/a/%03d", r%base), Value: []byte(fmt.Sprint(r))},
				{Type: OpPut, Key: fmt.Sprintf("/w/n/%06d", r), Value: []byte(fmt.Sprint(r))},
				{Type: OpDelete, Key: fmt.Sprintf("/w/n/%06d", r-20)},
			}})
			if err != nil {
				t.Error(err)
				return
			}
			s.Apply(cmdLog(s, data))
		}
	}()
	walks := 0
	for running := true; running || walks < 3; walks++ {
		select {
		case <-done:
			running = false
		default:
		}
		got := make(map[string]string)
		var rev uint64
		after := ""
		for {
			p, err := s.List("/w/", ListOptions{Revision: rev, After: after, Limit: 37})
			if err != nil {
				t.Fatalf("walk %d: %v", walks, err)
			}
			if rev != 0 && p.Revision != rev {
				t.Fatalf("page at %d, walk at %d", p.Revision, rev)
			}
			rev = p.Revision
			for _, kv := range p.KVs {
				if kv.ModRevision > rev {
					t.Fatalf("key %s modified at %d in a list at %d", kv.Key, kv.ModRevision, rev)
				}
				got[kv.Key] = string(kv.Value)
			}
			if !p.More {
				break
			}
			after = p.KVs[len(p.KVs)-1].Key
		}
		if want := stateAt(rev); !reflect.DeepEqual(got, want) {
			t.Fatalf("walk %d at revision %d: %d keys, want %d", walks, rev, len(got), len(want))
		}
	}
	<-done
	t.Logf("%d consistent walks during %d writes", walks, writes)
}

func TestWaitRevision(t *testing.T) {
	s := New(Config{})
	put(t, s, "/a", "1")
	if err := s.WaitRevision(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 3)
	for range 3 {
		go func() { errc <- s.WaitRevision(context.Background(), 5) }()
	}
	for range 3 {
		put(t, s, "/a", "x")
	}
	select {
	case err := <-errc:
		t.Fatalf("returned early at revision %d: %v", s.Revision(), err)
	default:
	}
	s.Apply(&raft.Log{Index: 5, Type: raft.LogConfiguration})
	for range 3 {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("waiter not woken")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if err := s.WaitRevision(ctx, 100); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestHashAndStats(t *testing.T) {
	build := func(last string) *Store {
		s := New(Config{})
		put(t, s, "/a", "1")
		apply(t, s, &Txn{Ops: []Op{{Type: OpPut, Key: "/b", Value: []byte("2"), ExpiresAt: 10}}})
		put(t, s, "/c", last)
		return s
	}
	s1, s2, s3 := build("3"), build("3"), build("4")
	r1, h1 := s1.Hash()
	r2, h2 := s2.Hash()
	_, h3 := s3.Hash()
	if r1 != 3 || r1 != r2 || h1 != h2 {
		t.Fatalf("equal stores: %d/%x vs %d/%x", r1, h1, r2, h2)
	}
	if h1 == h3 {
		t.Fatal("different values, same hash")
	}
	// Same keys and values written at different revisions differ too.
	s4 := New(Config{})
	s4.Apply(&raft.Log{Index: 1, Type: raft.LogConfiguration})
	put(t, s4, "/a", "1")
	if _, h := s4.Hash(); h == func() uint64 { s := New(Config{}); put(t, s, "/a", "1"); _, h := s.Hash(); return h }() {
		t.Fatal("revisions not in the hash")
	}

	w, err := s1.Watch("/", 0)
	if err != nil {
		t.Fatal(err)
	}
	if st := s1.Stats(); st != (Stats{Keys: 3, Watchers: 1, History: 3}) {
		t.Fatalf("stats %+v", st)
	}
	w.Stop()
	waitFor(t, 5*time.Second, "watcher removed", func() bool { return s1.Stats().Watchers == 0 })
}

func TestConcurrentReadersAndWriter(t *testing.T) {
	s := New(Config{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				switch (g + i) % 5 {
				case 0:
					s.Get("/r/1")
				case 1:
					s.List("/r/", ListOptions{Limit: 5})
				case 2:
					s.Count("/r/")
				case 3:
					s.Hash()
				case 4:
					s.Stats()
					s.Expired(time.Unix(0, 50), 3)
				}
			}
		}()
	}
	for i := range 500 {
		apply(t, s, &Txn{Ops: []Op{{Type: OpPut, Key: fmt.Sprintf("/r/%d", i%40), Value: []byte("v"), ExpiresAt: int64(i)}}})
	}
	close(stop)
	wg.Wait()
}
