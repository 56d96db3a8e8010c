package fsm

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
)

// Defaults for the zero Config.
const (
	DefaultHistoryMaxEvents = 100_000
	DefaultHistoryMaxAge    = 10 * time.Minute
	DefaultWatcherBuffer    = 10_000
	DefaultViewTTL          = 5 * time.Minute
)

const (
	// maxRetainedViews bounds the list views kept for continue tokens; the
	// one closest to expiry goes first. Each pins the tree nodes that changed
	// since it was taken.
	maxRetainedViews = 64
	// btreeDegree: nodes of up to 63 items keep the tree shallow (4 levels
	// for 150,000 keys) and a copy-on-write path copy small.
	btreeDegree = 32
)

// Config configures a Store. Zero value = defaults.
type Config struct {
	// HistoryMaxEvents bounds the watch history (default 100,000 events).
	HistoryMaxEvents int
	// HistoryMaxAge bounds the watch history by age (default 10 minutes).
	// Ages are measured on this master's clock; history is local, not replicated state.
	HistoryMaxAge time.Duration
	// WatcherBuffer is the number of events a watcher may lag before it is
	// closed with ErrWatcherTooSlow (default 10,000).
	WatcherBuffer int
	// ViewTTL is how long a paginated list's view stays for its continue
	// token (default 5 minutes).
	ViewTTL time.Duration
	// Now is the clock for history age and view expiry only (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.HistoryMaxEvents <= 0 {
		c.HistoryMaxEvents = DefaultHistoryMaxEvents
	}
	if c.HistoryMaxAge <= 0 {
		c.HistoryMaxAge = DefaultHistoryMaxAge
	}
	if c.WatcherBuffer <= 0 {
		c.WatcherBuffer = DefaultWatcherBuffer
	}
	if c.ViewTTL <= 0 {
		c.ViewTTL = DefaultViewTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Store is the revisioned key/value state machine; it implements raft.FSM
// and raft.BatchingFSM.
//
// Locking: mu guards the live tree, the expiry index, the history's write
// side and the watcher set. Apply holds it for writing only while it changes
// them; readers hold it only for a point lookup or to take a copy-on-write
// clone of the tree, then walk the clone without any lock.
type Store struct {
	cfg Config
	log *slog.Logger

	// rev is the applied revision; written under mu, read lock-free.
	rev atomic.Uint64

	mu     sync.RWMutex
	tree   *btree.BTreeG[*KeyValue]
	expiry *btree.BTreeG[expiryItem]
	// cur is a read-only clone of tree at rev, shared by readers until the
	// next write (nil when stale).
	cur  *view
	hist *history
	// watchers by prefix; the slices are replaced, never changed in place,
	// so Apply can use them after releasing mu.
	watchers  map[string][]*Watcher
	nwatchers int
	// revCh is closed by the next apply batch (nil when nobody waits).
	revCh chan struct{}
	// batchKeys collects the keys of the current batch's events (reused).
	batchKeys []string
	// skipped remembers unknown skippable command types already logged.
	skipped map[CommandType]bool

	viewsMu sync.Mutex
	views   map[uint64]*retainedView
}

var _ raft.BatchingFSM = (*Store)(nil)

// New returns an empty store.
func New(cfg Config) *Store {
	cfg = cfg.withDefaults()
	return &Store{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "fsm"),
		tree:     newTree(),
		expiry:   newExpiryIndex(),
		hist:     newHistory(0),
		watchers: make(map[string][]*Watcher),
		skipped:  make(map[CommandType]bool),
		views:    make(map[uint64]*retainedView),
	}
}

func newTree() *btree.BTreeG[*KeyValue] {
	return btree.NewG(btreeDegree, func(a, b *KeyValue) bool { return a.Key < b.Key })
}

// probe is a search key for the tree.
func probe(key string) *KeyValue { return &KeyValue{Key: key} }

// Apply implements raft.FSM. It returns *TxnResult for CmdTxn and nil for
// anything else. Like ApplyBatch it must not be called concurrently.
func (s *Store) Apply(l *raft.Log) interface{} {
	return s.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch implements raft.BatchingFSM: one lock and one watcher
// notification per batch. Raft calls it from a single goroutine; so must
// anyone else.
//
// Every entry advances Revision to its index: failed transactions, skipped
// unknown commands and non-command entries (configuration) too. Entries are
// decoded before anything changes, so a corrupt entry panics (STYLE.md 3)
// with the store untouched.
func (s *Store) ApplyBatch(logs []*raft.Log) []interface{} {
	resps := make([]interface{}, len(logs))
	if len(logs) == 0 {
		return resps
	}
	txns, skipped := s.decodeBatch(logs)

	// The only clock read on the apply path: it stamps the local watch
	// history for age-based trimming and never reaches replicated state.
	now := s.cfg.Now().UnixNano()

	s.mu.Lock()
	for _, t := range skipped {
		if !s.skipped[t] {
			s.skipped[t] = true
			s.log.Warn("skipping entries of unknown command type (newer server?)", "type", uint8(t))
		}
	}
	firstSeq := s.hist.end
	s.batchKeys = s.batchKeys[:0]
	mutated := false
	for i, t := range txns {
		if t == nil {
			continue
		}
		r := s.applyTxn(t, logs[i].Index, now)
		mutated = mutated || (r.Succeeded && len(t.Ops) > 0)
		resps[i] = r
	}
	rev := logs[len(logs)-1].Index
	s.rev.Store(rev)
	if mutated {
		s.cur = nil
	} else if s.cur != nil {
		// Same data, newer revision: readers may keep the clone.
		s.cur = &view{tree: s.cur.tree, rev: rev}
	}
	s.hist.publish()
	s.hist.trim(s.cfg.HistoryMaxEvents, now-int64(s.cfg.HistoryMaxAge))
	n := s.pendingNotifications(firstSeq)
	if s.revCh != nil {
		close(s.revCh)
		s.revCh = nil
	}
	s.mu.Unlock()

	s.notify(n)
	return resps
}

// decodeBatch checks indexes and decodes every command, panicking on
// corruption. txns[i] is nil for an entry that changes nothing.
func (s *Store) decodeBatch(logs []*raft.Log) (txns []*Txn, skipped []CommandType) {
	txns = make([]*Txn, len(logs))
	prev := s.rev.Load()
	for i, l := range logs {
		if l.Index <= prev {
			panic(fmt.Sprintf("fsm: log index %d is not after revision %d", l.Index, prev))
		}
		prev = l.Index
		if l.Type != raft.LogCommand {
			continue
		}
		if len(l.Data) == 0 {
			panic(fmt.Sprintf("fsm: empty command at index %d", l.Index))
		}
		switch t := CommandType(l.Data[0]); {
		case t == CmdTxn:
			txn, err := DecodeTxn(l.Data[1:])
			if err != nil {
				panic(fmt.Sprintf("fsm: corrupt txn at index %d: %v", l.Index, err))
			}
			txns[i] = txn
		case t&SkipIfUnknown != 0:
			skipped = append(skipped, t)
		default:
			panic(fmt.Sprintf("fsm: unknown command type %d at index %d", t, l.Index))
		}
	}
	return txns, skipped
}

// applyTxn applies t at revision rev. Caller holds mu.
func (s *Store) applyTxn(t *Txn, rev uint64, now int64) *TxnResult {
	for i := range t.Compares {
		c := &t.Compares[i]
		kv, _ := s.tree.Get(probe(c.Key))
		if !c.holds(kv) {
			// rev, not the previous revision: Revision() is rev now and the
			// data at rev is what Current shows.
			return &TxnResult{Revision: rev, FailedCompare: i, Current: kv}
		}
	}
	res := &TxnResult{Succeeded: true, Revision: rev, FailedCompare: -1, Prev: make([]*KeyValue, len(t.Ops))}
	for i := range t.Ops {
		op := &t.Ops[i]
		switch op.Type {
		case OpPut:
			kv := &KeyValue{Key: op.Key, Value: op.Value, CreateRevision: rev, ModRevision: rev, ExpiresAt: op.ExpiresAt}
			prev, had := s.tree.ReplaceOrInsert(kv)
			if had {
				kv.CreateRevision = prev.CreateRevision
				s.unindexExpiry(prev)
				res.Prev[i] = prev
			}
			s.indexExpiry(kv)
			s.addEvent(Event{Type: EventPut, KV: kv, PrevKV: res.Prev[i], Revision: rev}, now)
		case OpDelete:
			prev, had := s.tree.Delete(probe(op.Key))
			if !had {
				continue
			}
			s.unindexExpiry(prev)
			res.Prev[i] = prev
			gone := &KeyValue{Key: prev.Key, Value: prev.Value, CreateRevision: prev.CreateRevision, ModRevision: rev, ExpiresAt: prev.ExpiresAt}
			s.addEvent(Event{Type: EventDelete, KV: gone, PrevKV: prev, Revision: rev}, now)
		}
	}
	return res
}

func (s *Store) addEvent(ev Event, now int64) {
	s.hist.append(ev, now)
	if s.nwatchers > 0 {
		s.batchKeys = append(s.batchKeys, ev.KV.Key)
	}
}

func (c *Compare) holds(kv *KeyValue) bool {
	switch c.Target {
	case CompareExists:
		return kv != nil
	case CompareAbsent:
		return kv == nil
	case CompareModRevision:
		var mod uint64
		if kv != nil {
			mod = kv.ModRevision
		}
		return mod == c.ModRevision
	}
	return false // DecodeTxn rejects unknown targets
}

// Revision is the Raft index of the last applied entry.
func (s *Store) Revision() uint64 { return s.rev.Load() }

// WaitRevision blocks until Revision() >= rev or ctx ends.
func (s *Store) WaitRevision(ctx context.Context, rev uint64) error {
	for {
		if s.rev.Load() >= rev {
			return nil
		}
		s.mu.Lock()
		if s.rev.Load() >= rev {
			s.mu.Unlock()
			return nil
		}
		if s.revCh == nil {
			s.revCh = make(chan struct{})
		}
		ch := s.revCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (at %d): %w", rev, s.rev.Load(), ctx.Err())
		}
	}
}

// Get returns the key (nil when absent) and the store revision it was read at.
func (s *Store) Get(key string) (*KeyValue, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	kv, _ := s.tree.Get(probe(key))
	return kv, s.rev.Load()
}

// view is an immutable tree at a revision. Its tree is a clone that nobody
// writes, so it is walked without locks.
type view struct {
	tree *btree.BTreeG[*KeyValue]
	rev  uint64
}

type retainedView struct {
	v       *view
	expires time.Time
}

// currentView returns a clone of the tree at the current revision. The clone
// is O(1) and shared by every reader until the next write.
func (s *Store) currentView() *view {
	s.mu.RLock()
	v := s.cur
	s.mu.RUnlock()
	if v != nil {
		return v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		// Clone writes the tree's copy-on-write context: exclusive lock.
		s.cur = &view{tree: s.tree.Clone(), rev: s.rev.Load()}
	}
	return s.cur
}

// viewAt returns the view for a ListOptions.Revision.
func (s *Store) viewAt(rev uint64) (*view, error) {
	if rev == 0 {
		return s.currentView(), nil
	}
	if v := s.retained(rev); v != nil {
		return v, nil
	}
	cur := s.currentView()
	switch {
	case rev == cur.rev:
		return cur, nil
	case rev > cur.rev:
		return nil, fmt.Errorf("list at revision %d, applied %d: %w", rev, cur.rev, ErrFutureRevision)
	default:
		return nil, fmt.Errorf("list at revision %d, current %d and no view retained: %w", rev, cur.rev, ErrCompacted)
	}
}

func (s *Store) retained(rev uint64) *view {
	s.viewsMu.Lock()
	defer s.viewsMu.Unlock()
	rv := s.views[rev]
	if rv == nil {
		return nil
	}
	if s.cfg.Now().After(rv.expires) {
		delete(s.views, rev)
		return nil
	}
	return rv.v
}

// retain keeps v for a continue token for ViewTTL from now.
func (s *Store) retain(v *view) {
	now := s.cfg.Now()
	s.viewsMu.Lock()
	defer s.viewsMu.Unlock()
	for rev, rv := range s.views {
		if now.After(rv.expires) {
			delete(s.views, rev)
		}
	}
	s.views[v.rev] = &retainedView{v: v, expires: now.Add(s.cfg.ViewTTL)}
	for len(s.views) > maxRetainedViews {
		var oldest uint64
		var first time.Time
		for rev, rv := range s.views {
			if first.IsZero() || rv.expires.Before(first) || (rv.expires.Equal(first) && rev < oldest) {
				oldest, first = rev, rv.expires
			}
		}
		delete(s.views, oldest)
	}
}

// ListOptions selects a page of a prefix list.
type ListOptions struct {
	// Revision 0 lists the current state. Otherwise it must be the revision
	// of a view retained for a continue token (or the current revision);
	// anything else gives ErrCompacted (older) or ErrFutureRevision (newer).
	Revision uint64
	// After lists keys strictly greater than After (the continue key).
	After string
	// Limit bounds the page (0 = all). A page with More retains its view
	// for Config.ViewTTL so the next page reads the same revision.
	Limit int
}

// ListResult is one page.
type ListResult struct {
	KVs      []*KeyValue
	Revision uint64
	More     bool
	// Remaining is the number of keys after this page (0 when !More).
	Remaining int
}

// List returns the keys under prefix, in key order, from one consistent
// view. The walk holds no lock, so a long list never delays Apply.
func (s *Store) List(prefix string, opts ListOptions) (*ListResult, error) {
	v, err := s.viewAt(opts.Revision)
	if err != nil {
		return nil, err
	}
	res := &ListResult{Revision: v.rev}
	start := prefix
	if opts.After >= start {
		start = opts.After + "\x00" // the smallest key after After
	}
	v.tree.AscendGreaterOrEqual(probe(start), func(kv *KeyValue) bool {
		if !strings.HasPrefix(kv.Key, prefix) {
			return false
		}
		if opts.Limit > 0 && len(res.KVs) >= opts.Limit {
			res.Remaining++
		} else {
			res.KVs = append(res.KVs, kv)
		}
		return true
	})
	res.More = res.Remaining > 0
	if res.More {
		s.retain(v)
	}
	return res, nil
}

// Count returns the number of keys under prefix and the revision.
func (s *Store) Count(prefix string) (int, uint64) {
	v := s.currentView()
	n := 0
	v.tree.AscendGreaterOrEqual(probe(prefix), func(kv *KeyValue) bool {
		if !strings.HasPrefix(kv.Key, prefix) {
			return false
		}
		n++
		return true
	})
	return n, v.rev
}

// Hash returns the revision and a hash of the whole state at it, so tests can
// check that masters agree. It is FNV-64a over every key, value, revisions
// and expiry, in key order; equal states hash equal on every platform.
func (s *Store) Hash() (uint64, uint64) {
	v := s.currentView()
	h := fnv.New64a()
	var buf []byte
	v.tree.Ascend(func(kv *KeyValue) bool {
		buf = appendRecordHead(buf[:0], kv)
		h.Write(buf)
		h.Write(kv.Value)
		buf = appendRecordTail(buf[:0], kv)
		h.Write(buf)
		return true
	})
	return v.rev, h.Sum64()
}

// Stats reports sizes for metrics.
type Stats struct {
	Keys     int
	Watchers int
	History  int
}

// Stats returns current sizes.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Stats{Keys: s.tree.Len(), Watchers: s.nwatchers, History: int(s.hist.end - s.hist.first)}
}
