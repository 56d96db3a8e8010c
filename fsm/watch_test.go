package fsm

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

const waitTime = 10 * time.Second

func TestWatchReplayThenLive(t *testing.T) {
	s := New(Config{})
	for i := 1; i <= 10; i++ {
		put(t, s, fmt.Sprintf("/a/%d", i), fmt.Sprint(i))
	}
	cases := []struct {
		name  string
		from  uint64
		first uint64 // revision of the first event
	}{
		{"from 3 replays 4..10", 3, 4},
		{"from the start", 0, 11}, // 0 = from now
		{"from current", 10, 11},
		{"from 9", 9, 10},
	}
	var ws []*Watcher
	for _, tc := range cases {
		w, err := s.Watch("/a/", tc.from)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		defer w.Stop()
		ws = append(ws, w)
	}
	for i := 11; i <= 15; i++ {
		put(t, s, fmt.Sprintf("/a/%d", i), fmt.Sprint(i))
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			evs := recv(t, ws[i], int(15-tc.first+1), waitTime)
			for j, ev := range evs {
				want := tc.first + uint64(j)
				if ev.Revision != want || ev.KV.ModRevision != want || ev.Type != EventPut || string(ev.KV.Value) != fmt.Sprint(want) {
					t.Fatalf("event %d: %+v, want revision %d", j, ev, want)
				}
			}
		})
	}
}

func TestWatchEventShapes(t *testing.T) {
	s := New(Config{})
	w, err := s.Watch("/k", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	put(t, s, "/k", "v1")
	put(t, s, "/k", "v2")
	del(t, s, "/k")
	evs := recv(t, w, 3, waitTime)

	create, update, remove := evs[0], evs[1], evs[2]
	if create.Type != EventPut || create.PrevKV != nil || create.KV.CreateRevision != 1 {
		t.Fatalf("create %+v", create)
	}
	if update.Type != EventPut || update.PrevKV != create.KV || string(update.KV.Value) != "v2" ||
		update.KV.CreateRevision != 1 || update.KV.ModRevision != 2 {
		t.Fatalf("update %+v", update)
	}
	if remove.Type != EventDelete || remove.Revision != 3 || remove.PrevKV != update.KV ||
		string(remove.KV.Value) != "v2" || remove.KV.ModRevision != 3 || remove.KV.CreateRevision != 1 {
		t.Fatalf("delete %+v kv %+v", remove, remove.KV)
	}
	// The tree and the history share one KeyValue.
	put(t, s, "/k", "v3")
	ev := recv(t, w, 1, waitTime)[0]
	if kv, _ := s.Get("/k"); kv != ev.KV {
		t.Fatal("event KV is a copy of the stored KeyValue")
	}
}

func TestWatchPrefixFilter(t *testing.T) {
	s := New(Config{})
	pods, err := s.Watch("/core/pods/", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pods.Stop()
	ns, err := s.Watch("/core/pods/ns1/", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Stop()
	all, err := s.Watch("", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Stop()
	keys := []string{"/core/pods/ns1/a", "/core/services/ns1/a", "/core/pods/ns2/b", "/core/podsx/ns1/c", "/core/pods/ns1/d"}
	for _, k := range keys {
		put(t, s, k, "v")
	}
	check := func(w *Watcher, want ...string) {
		t.Helper()
		evs := recv(t, w, len(want), waitTime)
		for i, ev := range evs {
			if ev.KV.Key != want[i] {
				t.Fatalf("event %d key %s, want %s", i, ev.KV.Key, want[i])
			}
		}
	}
	check(pods, keys[0], keys[2], keys[4])
	check(ns, keys[0], keys[4])
	check(all, keys...)
	// A later matching event proves nothing else was queued before it.
	put(t, s, "/core/pods/ns1/z", "v")
	check(pods, "/core/pods/ns1/z")
	check(ns, "/core/pods/ns1/z")
}

// TestWatchHandoff opens watchers while a writer runs and checks each sees
// every event after its start exactly once, in order, across replay → live.
func TestWatchHandoff(t *testing.T) {
	s := New(Config{})
	const total = 3000
	// Entry at revision r puts /h/(r%50); odd revisions also put /h/second.
	eventsOf := func(r uint64) []string {
		keys := []string{fmt.Sprintf("/h/%d", r%50)}
		if r%2 == 1 {
			keys = append(keys, "/h/second")
		}
		return keys
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range total {
			r := s.Revision() + 1
			var ops []Op
			for _, k := range eventsOf(r) {
				ops = append(ops, Op{Type: OpPut, Key: k, Value: []byte("v")})
			}
			data, err := EncodeTxn(&Txn{Ops: ops})
			if err != nil {
				t.Error(err)
				return
			}
			s.Apply(cmdLog(s, data))
		}
	}()
	type start struct {
		w        *Watcher
		from     uint64 // 0: from now, somewhere in [lo, hi]
		lo, hi   uint64
		received []Event
	}
	var starts []*start
	next := uint64(0)
	for i := 0; i < 30 && s.Revision() < total; i++ {
		// Spread the starts over the run without sleeping.
		for s.Revision() < next && s.Revision() < total {
			runtime.Gosched()
		}
		next = s.Revision() + total/40
		st := &start{lo: s.Revision()}
		switch i % 3 {
		case 0:
			st.from = st.lo
		case 1:
			st.from = st.lo - min(st.lo, 7) // replay some
		}
		w, err := s.Watch("/h/", st.from)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		st.w, st.hi = w, s.Revision()
		starts = append(starts, st)
	}
	<-done
	if len(starts) < 5 {
		t.Fatalf("only %d watchers started during the run", len(starts))
	}
	var wg sync.WaitGroup
	for i, st := range starts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			timeout := time.After(waitTime)
			var want []string
			expect := func(from uint64) {
				want = []string{}
				for r := from + 1; r <= total; r++ {
					for _, k := range eventsOf(r) {
						want = append(want, fmt.Sprintf("%d %s", r, k))
					}
				}
			}
			switch {
			case st.from != 0:
				if expect(st.from); len(want) == 0 {
					return
				}
			case st.hi == total:
				return // may have started after the last entry: nothing to see
			}
			for {
				var ev Event
				select {
				case e, ok := <-st.w.Events():
					if !ok {
						t.Errorf("watcher %d closed: %v", i, st.w.Err())
						return
					}
					ev = e
				case <-timeout:
					t.Errorf("watcher %d: timed out after %d events", i, len(st.received))
					return
				}
				if want == nil {
					from := ev.Revision - 1
					if from < st.lo || from > st.hi {
						t.Errorf("watcher %d from now: starts after %d, outside [%d, %d]", i, from, st.lo, st.hi)
						return
					}
					expect(from)
				}
				n := len(st.received)
				if got := fmt.Sprintf("%d %s", ev.Revision, ev.KV.Key); n >= len(want) || got != want[n] {
					t.Errorf("watcher %d event %d: %q, want %q", i, n, got, want[min(n, len(want)-1)])
					return
				}
				st.received = append(st.received, ev)
				if len(st.received) == len(want) {
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, st := range starts {
		select {
		case ev := <-st.w.Events():
			t.Fatalf("watcher %d: extra event %+v", i, ev)
		default:
		}
	}
}

func TestWatchCompacted(t *testing.T) {
	t.Run("by count", func(t *testing.T) {
		s := New(Config{HistoryMaxEvents: 10})
		for i := range 30 {
			put(t, s, fmt.Sprintf("/c/%d", i), "v")
		}
		if st := s.Stats(); st.History != 10 {
			t.Fatalf("history %d", st.History)
		}
		if _, err := s.Watch("/c/", 5); !errors.Is(err, ErrCompacted) {
			t.Fatalf("watch from 5: %v", err)
		}
		if _, err := s.Watch("/c/", 19); !errors.Is(err, ErrCompacted) {
			t.Fatalf("watch from 19 (needs event 20, trimmed): %v", err)
		}
		w, err := s.Watch("/c/", 20)
		if err != nil {
			t.Fatalf("watch from 20: %v", err)
		}
		defer w.Stop()
		if evs := recv(t, w, 10, waitTime); evs[0].Revision != 21 || evs[9].Revision != 30 {
			t.Fatalf("replay %d..%d", evs[0].Revision, evs[9].Revision)
		}
	})
	t.Run("whole revisions", func(t *testing.T) {
		s := New(Config{HistoryMaxEvents: 4})
		apply(t, s, &Txn{Ops: []Op{
			{Type: OpPut, Key: "/a", Value: []byte("1")},
			{Type: OpPut, Key: "/b", Value: []byte("1")},
			{Type: OpPut, Key: "/c", Value: []byte("1")},
		}})
		apply(t, s, &Txn{Ops: []Op{
			{Type: OpPut, Key: "/a", Value: []byte("2")},
			{Type: OpPut, Key: "/b", Value: []byte("2")},
		}})
		// 5 events; revision 1 had to go as a whole.
		if st := s.Stats(); st.History != 2 {
			t.Fatalf("history %d, want 2", st.History)
		}
		w, err := s.Watch("", 1)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		if evs := recv(t, w, 2, waitTime); evs[0].Revision != 2 || evs[1].Revision != 2 {
			t.Fatalf("replay %+v", evs)
		}
	})
	t.Run("by age", func(t *testing.T) {
		clock := newFakeClock()
		s := New(Config{Now: clock.Now, HistoryMaxAge: 10 * time.Minute})
		for i := range 5 {
			put(t, s, fmt.Sprintf("/c/%d", i), "v") // revisions 1..5 at t0
		}
		clock.Advance(5 * time.Minute)
		put(t, s, "/c/new", "v") // 6 at t0+5m
		clock.Advance(6 * time.Minute)
		// 1..5 are now 11 minutes old: an apply or a watch trims them.
		if _, err := s.Watch("/c/", 2); !errors.Is(err, ErrCompacted) {
			t.Fatalf("watch from 2: %v", err)
		}
		w, err := s.Watch("/c/", 5)
		if err != nil {
			t.Fatalf("watch from 5: %v", err)
		}
		defer w.Stop()
		if ev := recv(t, w, 1, waitTime)[0]; ev.Revision != 6 {
			t.Fatalf("replay %+v", ev)
		}
		clock.Advance(10 * time.Minute)
		put(t, s, "/c/newer", "v")
		if st := s.Stats(); st.History != 1 {
			t.Fatalf("history %d after aging", st.History)
		}
		if ev := recv(t, w, 1, waitTime)[0]; ev.Revision != 7 {
			t.Fatalf("live %+v", ev)
		}
	})
}

func TestWatchFutureRevision(t *testing.T) {
	s := New(Config{})
	put(t, s, "/a", "1")
	if _, err := s.Watch("/", 2); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("watch from 2 at 1: %v", err)
	}
	w, err := s.Watch("/", 1)
	if err != nil {
		t.Fatal(err)
	}
	w.Stop()
}

func TestWatchSlowWatcher(t *testing.T) {
	s := New(Config{WatcherBuffer: 8})
	slow, err := s.Watch("/s/", 0)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := s.Watch("/s/", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Stop()
	got := make(chan []Event)
	go func() {
		var evs []Event
		for ev := range fast.Events() {
			evs = append(evs, ev)
			if len(evs) == 200 {
				break
			}
		}
		got <- evs
	}()
	// Apply never waits for the slow watcher. The fast one keeps up only
	// when its reader gets scheduled, so give it room between entries.
	for i := range 200 {
		put(t, s, fmt.Sprintf("/s/%d", i), "v")
		waitFor(t, waitTime, "fast watcher to catch up", func() bool {
			return fast.pending.Load()+int64(len(fast.out)) < 4
		})
	}
	if err := expectClosed(t, slow, waitTime); !errors.Is(err, ErrWatcherTooSlow) {
		t.Fatalf("slow watcher ended with %v", err)
	}
	if evs := <-got; len(evs) != 200 || evs[199].Revision != 200 {
		t.Fatalf("fast watcher got %d events", len(evs))
	}
	if fast.Err() != nil {
		t.Fatalf("fast watcher: %v", fast.Err())
	}
	waitFor(t, waitTime, "slow watcher removed", func() bool { return s.Stats().Watchers == 1 })
}

// TestWatchStuckFarBehind: a watcher whose reader stopped, on a quiet
// prefix, is closed once it lags the whole store too far, so it cannot pin
// old history chunks.
func TestWatchStuckFarBehind(t *testing.T) {
	s := New(Config{HistoryMaxEvents: 100, WatcherBuffer: 1000})
	w, err := s.Watch("/quiet/", 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range outBuffer + 5 { // fill the channel; the goroutine blocks
		put(t, s, fmt.Sprintf("/quiet/%d", i), "v")
	}
	idle, err := s.Watch("/idle/", 0) // never matches: must stay open
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Stop()
	waitFor(t, waitTime, "watcher goroutine blocked", func() bool { return len(w.out) == outBuffer })
	for i := range 3 * chunkSize {
		put(t, s, fmt.Sprintf("/busy/%d", i%10), "v")
	}
	if err := expectClosed(t, w, waitTime); !errors.Is(err, ErrWatcherTooSlow) {
		t.Fatalf("stuck watcher ended with %v", err)
	}
	if idle.Err() != nil {
		t.Fatalf("idle watcher: %v", idle.Err())
	}
	waitFor(t, waitTime, "idle watcher's cursor to move", func() bool {
		return s.Revision()-uint64(idle.pos.Load()) < 2*chunkSize
	})
}

func TestWatchStop(t *testing.T) {
	s := New(Config{})
	w, err := s.Watch("/", 0)
	if err != nil {
		t.Fatal(err)
	}
	if w.Err() != nil {
		t.Fatalf("running watcher has Err %v", w.Err())
	}
	put(t, s, "/a", "1")
	w.Stop()
	w.Stop()
	if err := expectClosed(t, w, waitTime); !errors.Is(err, ErrWatcherStopped) {
		t.Fatalf("Err = %v", err)
	}
	w.Stop()
	waitFor(t, waitTime, "watcher removed", func() bool { return s.Stats().Watchers == 0 })
	put(t, s, "/a", "2") // nobody to notify
}

func TestWatchManyStopsAndStarts(t *testing.T) {
	s := New(Config{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				w, err := s.Watch(fmt.Sprintf("/m/%d", (g+i)%3), 0)
				if err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					select {
					case <-w.Events():
					case <-time.After(time.Millisecond):
					}
				}
				w.Stop()
			}
		}()
	}
	for i := range 300 {
		put(t, s, fmt.Sprintf("/m/%d", i%3), "v")
	}
	wg.Wait()
	waitFor(t, waitTime, "all watchers removed", func() bool { return s.Stats().Watchers == 0 })
}
