package fsm

import (
	"errors"
)

// This file is the contract between the store and its users (cluster, api).
// Change it only together with every caller.

// Limits enforced by Txn.Validate before anything reaches Raft.
const (
	// MaxValueSize is etcd's default request limit: 1.5 MiB.
	MaxValueSize = 3 << 19
	// MaxTxnOps bounds the compares plus operations of one transaction.
	MaxTxnOps = 1000
	// MaxTxnBytes bounds the encoded size of one transaction (keys and values).
	MaxTxnBytes = 4 << 20
	// MaxKeySize bounds one key.
	MaxKeySize = 4096
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrCompacted: the asked revision is older than what the store still holds
	// (watch history or a retained list view).
	ErrCompacted = errors.New("required revision has been compacted")
	// ErrFutureRevision: the asked revision is ahead of this store's applied revision.
	ErrFutureRevision = errors.New("required revision is a future revision")
	// ErrWatcherTooSlow ends a watcher whose buffer filled up; its client re-lists.
	ErrWatcherTooSlow = errors.New("watcher fell behind and was closed")
	// ErrRestored ends every watcher when a snapshot replaces the whole state.
	ErrRestored = errors.New("store restored from a snapshot; watch again from a fresh list")
	// ErrWatcherStopped ends a watcher its owner stopped.
	ErrWatcherStopped = errors.New("watcher stopped")
	// ErrValueTooLarge: one value is over MaxValueSize.
	ErrValueTooLarge = errors.New("value too large")
	// ErrTxnTooLarge: a transaction has more than MaxTxnOps entries or MaxTxnBytes bytes.
	ErrTxnTooLarge = errors.New("transaction too large")
	// ErrInvalidTxn: a malformed transaction (empty key, unknown op or compare).
	ErrInvalidTxn = errors.New("invalid transaction")
)

// KeyValue is one stored key. Values returned by the store are shared and
// must not be modified.
type KeyValue struct {
	Key            string
	Value          []byte
	CreateRevision uint64 // Raft index of the write that created the key
	ModRevision    uint64 // Raft index of the last write to the key
	// ExpiresAt is a Unix time in nanoseconds stamped by the leader before
	// raft.Apply (0 = never). Apply only indexes it; it never reads a clock.
	ExpiresAt int64
}

// CompareTarget says what a Compare checks.
type CompareTarget uint8

const (
	CompareExists      CompareTarget = iota + 1 // the key exists
	CompareAbsent                               // the key does not exist
	CompareModRevision                          // the key's ModRevision == Compare.ModRevision (absent key: 0)
)

// Compare is one guard of a transaction.
type Compare struct {
	Key         string
	Target      CompareTarget
	ModRevision uint64
}

// OpType says what an Op does.
type OpType uint8

const (
	OpPut    OpType = iota + 1 // create or replace Key with Value
	OpDelete                   // delete Key; deleting an absent key is a no-op
)

// Op is one write of a transaction.
type Op struct {
	Type      OpType
	Key       string
	Value     []byte
	ExpiresAt int64 // OpPut only; see KeyValue.ExpiresAt
}

// Txn is the one write command: if every compare holds, apply every op, all
// or nothing, at one revision (the Raft index of the entry).
type Txn struct {
	Compares []Compare
	Ops      []Op
}

// TxnResult is what applying a Txn returns (as raft's future.Response()).
type TxnResult struct {
	Succeeded bool
	// Revision is the store revision after this entry: its Raft index, also
	// when a compare failed (every entry advances Store.Revision).
	Revision uint64
	// FailedCompare is the index of the first compare that failed, -1 on success.
	FailedCompare int
	// Current is the failed compare's key as it is now (nil when absent).
	Current *KeyValue
	// Prev holds, per op, the key before the op (nil when it was absent).
	// Filled only when Succeeded.
	Prev []*KeyValue
}

// EventType is the kind of a watch event.
type EventType uint8

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change seen by a watcher.
type Event struct {
	Type EventType
	// KV: for a put, the new key; for a delete, the key with its last value and
	// ModRevision set to the deleting revision.
	KV *KeyValue
	// PrevKV is the key before the change (nil on create).
	PrevKV *KeyValue
	// Revision is the Raft index of the transaction that made the change.
	Revision uint64
}
