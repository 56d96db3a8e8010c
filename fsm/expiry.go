package fsm

import (
	"time"

	"github.com/google/btree"
)

// The expiry index orders keys that carry an ExpiresAt by (ExpiresAt, key).
// Apply keeps it in step with the tree: a put indexes the new ExpiresAt and
// unindexes the old one, a delete unindexes. The store never deletes an
// expired key by itself (that would need a clock in Apply); the leader asks
// Expired and commits ordinary guarded deletes.

type expiryItem struct {
	at  int64
	key string
}

func newExpiryIndex() *btree.BTreeG[expiryItem] {
	return btree.NewG(btreeDegree, func(a, b expiryItem) bool {
		if a.at != b.at {
			return a.at < b.at
		}
		return a.key < b.key
	})
}

// indexExpiry and unindexExpiry: caller holds mu.
func (s *Store) indexExpiry(kv *KeyValue) {
	if kv.ExpiresAt != 0 {
		s.expiry.ReplaceOrInsert(expiryItem{at: kv.ExpiresAt, key: kv.Key})
	}
}

func (s *Store) unindexExpiry(kv *KeyValue) {
	if kv.ExpiresAt != 0 {
		s.expiry.Delete(expiryItem{at: kv.ExpiresAt, key: kv.Key})
	}
}

// Expired returns up to limit keys whose ExpiresAt is set and <= now, oldest
// first (limit <= 0: all of them). The leader turns them into ordinary
// guarded deletes (CompareModRevision on the returned ModRevision), so a key
// rewritten meanwhile survives.
func (s *Store) Expired(now time.Time, limit int) []*KeyValue {
	deadline := now.UnixNano()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*KeyValue
	s.expiry.Ascend(func(it expiryItem) bool {
		if it.at > deadline || (limit > 0 && len(out) >= limit) {
			return false
		}
		if kv, ok := s.tree.Get(probe(it.key)); ok {
			out = append(out, kv)
		}
		return true
	})
	return out
}
