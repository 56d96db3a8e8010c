package api

import (
	"context"
	"fmt"
	"strings"

	"flotilla/fsm"
)

// Secrets at rest. With Config.Seal set, the value stored under every
// Secret's key is sealed: commit encrypts each put under secretsPrefix just
// before Cluster.Apply, and open decrypts on the way out of the store
// (decodeKV, getCurrent), so every verb and every watch event sees the
// object and only the FSM, its snapshots and the Raft log hold ciphertext.
// Sealing at those two seams, rather than in each handler, keeps a future
// write or read path from forgetting it. getCurrent hands back the opened
// value, so an update that changes nothing still compares equal to what is
// stored and is skipped (no new resourceVersion), as without a Seal.
// Values written before Seal was set are plaintext; the Sealer passes them
// through and ReencryptSecrets seals them.

// secretsPrefix is the FSM prefix of every Secret (core group "core").
const secretsPrefix = "/core/secrets/"

// sealedKey reports whether the value under key goes through Config.Seal.
func (s *Server) sealedKey(key string) bool {
	return s.cfg.Seal != nil && strings.HasPrefix(key, secretsPrefix)
}

// open returns kv with its value decrypted when it is a Secret (a copy;
// the store's KeyValue is shared and never modified), else kv itself.
func (s *Server) open(kv *fsm.KeyValue) (*fsm.KeyValue, error) {
	if kv == nil || !s.sealedKey(kv.Key) {
		return kv, nil
	}
	plain, err := s.cfg.Seal.Decrypt(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("decrypt stored %s: %w", kv.Key, err)
	}
	out := *kv
	out.Value = plain
	return &out, nil
}

// sealTxn returns txn with the value of every Secret put encrypted. txn
// itself is not modified (callers retry with it).
func (s *Server) sealTxn(txn *fsm.Txn) (*fsm.Txn, error) {
	if s.cfg.Seal == nil {
		return txn, nil
	}
	var out *fsm.Txn
	for i, op := range txn.Ops {
		if op.Type != fsm.OpPut || !s.sealedKey(op.Key) {
			continue
		}
		if out == nil {
			out = &fsm.Txn{Compares: txn.Compares, Ops: append([]fsm.Op(nil), txn.Ops...)}
		}
		sealed, err := s.cfg.Seal.Encrypt(op.Value)
		if err != nil {
			return nil, fmt.Errorf("encrypt %s: %w", op.Key, err)
		}
		out.Ops[i].Value = sealed
	}
	if out == nil {
		return txn, nil
	}
	return out, nil
}

// ReencryptSecrets rewrites every Secret sealed with the current primary
// key of Config.Seal (plaintext ones included) and returns how many it
// wrote. Each rewrite is an ordinary write of the unchanged object: it
// compares the key's modRevision (a Secret changed meanwhile is read again
// and retried; one deleted meanwhile is skipped), gets a new
// resourceVersion and a MODIFIED watch event. With no Seal it does nothing.
func (s *Server) ReencryptSecrets(ctx context.Context) (int, error) {
	if s.cfg.Seal == nil {
		return 0, nil
	}
	if err := s.cfg.Cluster.ReadIndex(ctx); err != nil {
		return 0, err
	}
	r, err := s.store().List(secretsPrefix, fsm.ListOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, kv := range r.KVs {
		wrote, err := s.reencrypt(ctx, kv)
		if err != nil {
			return n, err
		}
		if wrote {
			n++
		}
	}
	return n, nil
}

// reencrypt rewrites one Secret; false when it was deleted first.
func (s *Server) reencrypt(ctx context.Context, kv *fsm.KeyValue) (bool, error) {
	for attempt := 0; attempt < maxRetries; attempt++ {
		plain, err := s.open(kv)
		if err != nil {
			return false, err
		}
		txn := &fsm.Txn{
			Compares: []fsm.Compare{{Key: kv.Key, Target: fsm.CompareModRevision, ModRevision: kv.ModRevision}},
			Ops:      []fsm.Op{{Type: fsm.OpPut, Key: kv.Key, Value: plain.Value, ExpiresAt: kv.ExpiresAt}},
		}
		res, err := s.commit(ctx, txn)
		if err != nil {
			return false, fmt.Errorf("re-encrypt %s: %w", kv.Key, err)
		}
		if res.Succeeded {
			return true, nil
		}
		if kv = res.Current; kv == nil {
			return false, nil
		}
	}
	return false, fmt.Errorf("re-encrypt %s: still changing after %d attempts", kv.Key, maxRetries)
}
