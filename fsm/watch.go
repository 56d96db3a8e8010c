package fsm

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// The watch history is an append-only log of events in chunks. Apply writes
// events under Store.mu and then publishes how many there are with one
// atomic store; watcher goroutines read published events without any lock,
// each following its own cursor through the chunks. So:
//
//   - replay and live delivery are the same loop over the same log, and a
//     watcher sees every event after its start exactly once, in order;
//   - Apply never waits for a watcher: it appends, publishes, and wakes the
//     watchers whose prefix matched;
//   - trimming drops chunks from the history's list only; a watcher still
//     reading an old chunk keeps it alive until it moves on, and a watcher
//     that stops moving is closed (ErrWatcherTooSlow) so it cannot pin
//     memory for long.

// chunkSize is the number of events per history chunk (40 KiB).
const chunkSize = 1024

type chunk struct {
	start  uint64 // sequence number of events[0]
	events [chunkSize]Event
	at     [chunkSize]int64 // local apply time, Unix nanoseconds
	next   atomic.Pointer[chunk]
}

// history: write side under Store.mu; published is the lock-free read side.
type history struct {
	published atomic.Uint64 // events with seq < published are readable
	end       uint64        // next sequence number
	first     uint64        // oldest retained sequence number
	// compacted: events with Revision <= compacted may be gone. Trimming
	// drops whole revisions, so every event after it is retained.
	compacted uint64
	chunks    []*chunk // retained chunks, chunks[0] holds first
	tail      *chunk   // the chunk being written
}

// newHistory starts an empty history whose events before rev are gone.
func newHistory(rev uint64) *history {
	c := &chunk{}
	return &history{compacted: rev, chunks: []*chunk{c}, tail: c}
}

func (h *history) append(ev Event, at int64) {
	if h.end == h.tail.start+chunkSize {
		c := &chunk{start: h.end}
		h.tail.next.Store(c)
		h.tail = c
		h.chunks = append(h.chunks, c)
	}
	off := h.end - h.tail.start
	h.tail.events[off] = ev
	h.tail.at[off] = at
	h.end++
}

func (h *history) publish() { h.published.Store(h.end) }

// chunkFor returns the chunk holding seq (first <= seq <= end); for seq ==
// end on a chunk boundary, the tail, which the reader leaves through next.
func (h *history) chunkFor(seq uint64) *chunk {
	if len(h.chunks) == 0 {
		return h.tail
	}
	i := int((seq - h.chunks[0].start) / chunkSize)
	if i >= len(h.chunks) {
		return h.tail
	}
	return h.chunks[i]
}

func (h *history) at(seq uint64) (*Event, int64) {
	c := h.chunkFor(seq)
	return &c.events[seq-c.start], c.at[seq-c.start]
}

// trim drops the oldest events while there are more than maxEvents or they
// are older than minAt, then the rest of the last dropped revision.
func (h *history) trim(maxEvents int, minAt int64) {
	var last uint64
	trimmed := false
	for h.first < h.end {
		ev, at := h.at(h.first)
		if h.end-h.first > uint64(maxEvents) || at < minAt || (trimmed && ev.Revision == last) {
			last, trimmed = ev.Revision, true
			h.first++
			continue
		}
		break
	}
	if !trimmed {
		return
	}
	h.compacted = last
	for len(h.chunks) > 0 && h.chunks[0].start+chunkSize <= h.first {
		h.chunks[0] = nil
		h.chunks = h.chunks[1:]
	}
}

// search returns the first retained sequence number whose event is after rev.
func (h *history) search(rev uint64) uint64 {
	n := int(h.end - h.first)
	i := sort.Search(n, func(i int) bool {
		ev, _ := h.at(h.first + uint64(i))
		return ev.Revision > rev
	})
	return h.first + uint64(i)
}

// Watcher streams events for a prefix.
type Watcher struct {
	s      *Store
	prefix string
	hist   *history
	out    chan Event
	wake   chan struct{} // capacity 1: "there may be something new"
	done   chan struct{} // closed by finish
	once   sync.Once
	err    atomic.Pointer[error]

	// Owned by the goroutine.
	chunk *chunk
	seq   uint64
	// live: events from here on arrived after Watch returned; pending
	// counts those that matched and are not yet in out (Apply adds, the
	// goroutine subtracts), which is what WatcherBuffer bounds.
	live    uint64
	pending atomic.Int64
	// pos is the goroutine's cursor, published before it blocks, so Apply
	// can close a watcher stuck far behind the head of the history.
	pos atomic.Uint64
}

// outBuffer is the capacity of Events(); events in it count as lag.
const outBuffer = 32

// Watch streams every change under prefix with Revision > fromRevision; 0
// means from now. Older than the history gives ErrCompacted; after
// Revision() gives ErrFutureRevision. Events come in revision order (op
// order within one revision), with no gaps and no duplicates from replay to
// live.
func (s *Store) Watch(prefix string, fromRevision uint64) (*Watcher, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rev := s.rev.Load()
	if fromRevision > rev {
		return nil, fmt.Errorf("watch from revision %d, applied %d: %w", fromRevision, rev, ErrFutureRevision)
	}
	h := s.hist
	// Apply trims too, but an idle store ages here.
	h.trim(s.cfg.HistoryMaxEvents, s.cfg.Now().UnixNano()-int64(s.cfg.HistoryMaxAge))
	seq := h.end
	if fromRevision != 0 {
		if fromRevision < h.compacted {
			return nil, fmt.Errorf("watch from revision %d, history starts after %d: %w", fromRevision, h.compacted, ErrCompacted)
		}
		seq = h.search(fromRevision)
	}
	w := &Watcher{
		s:      s,
		prefix: prefix,
		hist:   h,
		out:    make(chan Event, outBuffer),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		chunk:  h.chunkFor(seq),
		seq:    seq,
		live:   h.end,
	}
	w.pos.Store(seq)
	s.watchers[prefix] = append(s.watchers[prefix][:len(s.watchers[prefix]):len(s.watchers[prefix])], w)
	s.nwatchers++
	go w.run()
	return w, nil
}

// Events is closed when the watcher ends; Err then says why.
func (w *Watcher) Events() <-chan Event { return w.out }

// Err is why the watcher ended (nil while it runs).
func (w *Watcher) Err() error {
	if p := w.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Stop ends the watcher (Err = ErrWatcherStopped). It is idempotent and
// does not wait; Events is closed soon after.
func (w *Watcher) Stop() { w.finish(ErrWatcherStopped) }

// finish ends the watcher with err unless it already ended.
func (w *Watcher) finish(err error) {
	w.once.Do(func() {
		w.err.Store(&err)
		close(w.done)
	})
}

func (w *Watcher) run() {
	defer func() {
		close(w.out)
		w.chunk = nil // a Watcher kept after it ended must not pin history
		w.s.removeWatcher(w)
	}()
	for {
		for pub := w.hist.published.Load(); w.seq < pub; {
			off := w.seq - w.chunk.start
			if off == chunkSize {
				w.chunk = w.chunk.next.Load()
				continue
			}
			ev := w.chunk.events[off]
			seq := w.seq
			w.seq++
			if !strings.HasPrefix(ev.KV.Key, w.prefix) {
				continue
			}
			select {
			case <-w.done: // first, so an ended watcher stops sending promptly
				return
			default:
			}
			select {
			case w.out <- ev:
			default:
				w.pos.Store(seq)
				select {
				case <-w.done:
					return
				case w.out <- ev:
				}
			}
			if seq >= w.live {
				w.pending.Add(-1)
			}
		}
		w.pos.Store(w.seq)
		select {
		case <-w.done:
			return
		case <-w.wake:
		}
	}
}

func (s *Store) removeWatcher(w *Watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ws := s.watchers[w.prefix]
	for i, x := range ws {
		if x != w {
			continue
		}
		if len(ws) == 1 {
			delete(s.watchers, w.prefix)
		} else {
			nws := make([]*Watcher, 0, len(ws)-1)
			nws = append(nws, ws[:i]...)
			s.watchers[w.prefix] = append(nws, ws[i+1:]...)
		}
		s.nwatchers--
		return
	}
}

// notification is what one batch owes a group of watchers.
type notification struct {
	watchers []*Watcher
	matched  int64 // events of the batch under their prefix
	// all: the batch opened a history chunk, so every watcher is woken to
	// move its cursor off old chunks, and checked for lagging too far.
	all bool
	end uint64 // the history's end after the batch
}

// pendingNotifications works out, under mu, whom the events from firstSeq
// concern. notify acts on it after mu is released.
func (s *Store) pendingNotifications(firstSeq uint64) []notification {
	if s.nwatchers == 0 {
		return nil
	}
	h := s.hist
	newChunk := firstSeq/chunkSize != h.end/chunkSize
	if len(s.batchKeys) == 0 && !newChunk {
		return nil
	}
	var ns []notification
	for prefix, ws := range s.watchers {
		var n int64
		for _, k := range s.batchKeys {
			if strings.HasPrefix(k, prefix) {
				n++
			}
		}
		if n > 0 || newChunk {
			ns = append(ns, notification{watchers: ws, matched: n, all: newChunk, end: h.end})
		}
	}
	return ns
}

func (s *Store) notify(ns []notification) {
	if len(ns) == 0 {
		return
	}
	buf, maxBehind := int64(s.cfg.WatcherBuffer), uint64(s.cfg.HistoryMaxEvents+s.cfg.WatcherBuffer)
	for _, n := range ns {
		for _, w := range n.watchers {
			if n.matched > 0 && w.pending.Add(n.matched)+int64(len(w.out)) > buf {
				w.finish(ErrWatcherTooSlow)
				continue
			}
			if n.all && n.end-w.pos.Load() > maxBehind {
				w.finish(ErrWatcherTooSlow)
				continue
			}
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

// closeWatchers ends every watcher with err. Caller holds mu.
func (s *Store) closeWatchers(err error) {
	for _, ws := range s.watchers {
		for _, w := range ws {
			w.finish(err)
		}
	}
	s.watchers = make(map[string][]*Watcher)
	s.nwatchers = 0
}
