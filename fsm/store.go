package fsm

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
)

// CONTRACT STUB: the fsm implementer replaces every body; signatures are the
// contract used by cluster and api.

// CommandType is the first byte of every Raft log entry the store applies.
// New types only at the end; the high bit means "skip if unknown".
type CommandType uint8

const (
	// CmdTxn carries an encoded Txn.
	CmdTxn CommandType = 1
	// SkipIfUnknown is the high bit: a store that does not know the type ignores the entry.
	SkipIfUnknown CommandType = 0x80
)

// EncodeTxn encodes a transaction as a Raft log entry (type byte then payload).
func EncodeTxn(t *Txn) ([]byte, error) { panic("unimplemented") }

// DecodeTxn decodes the payload EncodeTxn made (after the type byte).
func DecodeTxn(buf []byte) (*Txn, error) { panic("unimplemented") }

// Validate checks the limits and shape of a transaction before it reaches Raft.
func (t *Txn) Validate() error { panic("unimplemented") }

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

// Store is the revisioned key/value state machine; it implements raft.FSM
// and raft.BatchingFSM.
type Store struct{}

// New returns an empty store.
func New(cfg Config) *Store { panic("unimplemented") }

// Apply implements raft.FSM. It returns *TxnResult for CmdTxn.
func (s *Store) Apply(l *raft.Log) interface{} { panic("unimplemented") }

// ApplyBatch implements raft.BatchingFSM.
func (s *Store) ApplyBatch(logs []*raft.Log) []interface{} { panic("unimplemented") }

// Snapshot implements raft.FSM.
func (s *Store) Snapshot() (raft.FSMSnapshot, error) { panic("unimplemented") }

// Restore implements raft.FSM.
func (s *Store) Restore(rc io.ReadCloser) error { panic("unimplemented") }

// Revision is the Raft index of the last applied entry.
func (s *Store) Revision() uint64 { panic("unimplemented") }

// WaitRevision blocks until Revision() >= rev or ctx ends.
func (s *Store) WaitRevision(ctx context.Context, rev uint64) error { panic("unimplemented") }

// Get returns the key (nil when absent) and the store revision it was read at.
func (s *Store) Get(key string) (*KeyValue, uint64) { panic("unimplemented") }

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

// List returns the keys under prefix, in key order, from one consistent view.
func (s *Store) List(prefix string, opts ListOptions) (*ListResult, error) {
	panic("unimplemented")
}

// Count returns the number of keys under prefix and the revision.
func (s *Store) Count(prefix string) (int, uint64) { panic("unimplemented") }

// Watcher streams events for a prefix.
type Watcher struct{}

// Watch streams every change under prefix with Revision > fromRevision; 0
// means from now. Older than the history gives ErrCompacted.
func (s *Store) Watch(prefix string, fromRevision uint64) (*Watcher, error) {
	panic("unimplemented")
}

// Events is closed when the watcher ends; Err then says why.
func (w *Watcher) Events() <-chan Event { panic("unimplemented") }

// Err is why the watcher ended (nil while it runs).
func (w *Watcher) Err() error { panic("unimplemented") }

// Stop ends the watcher (Err = ErrWatcherStopped).
func (w *Watcher) Stop() { panic("unimplemented") }

// Expired returns up to limit keys whose ExpiresAt is set and <= now, oldest
// first. The leader turns them into ordinary guarded deletes.
func (s *Store) Expired(now time.Time, limit int) []*KeyValue { panic("unimplemented") }

// Hash returns the revision and a hash of the whole state at it, so tests can
// check that masters agree.
func (s *Store) Hash() (uint64, uint64) { panic("unimplemented") }

// Stats reports sizes for metrics.
type Stats struct {
	Keys     int
	Watchers int
	History  int
}

// Stats returns current sizes.
func (s *Store) Stats() Stats { panic("unimplemented") }
