package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/fsm"
)

// errRetry: a compare of an unconditional write failed; read and try again.
var errRetry = errors.New("compare failed; retry")

// maxRetries bounds the read-modify-write loops of unconditional writes.
const maxRetries = 16

func (s *Server) store() *fsm.Store { return s.cfg.Cluster.Store() }

// decodeKV turns a stored value into an object with its resourceVersion,
// decrypting a sealed Secret first (seal.go).
func (s *Server) decodeKV(res *resource, kv *fsm.KeyValue) (object, error) {
	kv, err := s.open(kv)
	if err != nil {
		return nil, err
	}
	return decodeOpened(res, kv)
}

// decodeOpened is decodeKV for a value already through open.
func decodeOpened(res *resource, kv *fsm.KeyValue) (object, error) {
	obj := res.newObj()
	if err := json.Unmarshal(kv.Value, obj); err != nil {
		return nil, fmt.Errorf("decode stored %s: %w", kv.Key, err)
	}
	obj.SetResourceVersion(strconv.FormatUint(kv.ModRevision, 10))
	obj.GetObjectKind().SetGroupVersionKind(res.gvk)
	return obj, nil
}

// encodeForStore is the stored form: JSON with apiVersion and kind, and
// without resourceVersion (the key's ModRevision is the resourceVersion).
func encodeForStore(res *resource, obj object) ([]byte, error) {
	rv := obj.GetResourceVersion()
	obj.SetResourceVersion("")
	obj.GetObjectKind().SetGroupVersionKind(res.gvk)
	data, err := json.Marshal(obj)
	obj.SetResourceVersion(rv)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", res.plural, err)
	}
	return data, nil
}

func formatRV(rev uint64) string { return strconv.FormatUint(rev, 10) }

// parseRV parses a client resourceVersion ("" and "0" are not revisions).
func parseRV(rv string) (uint64, error) {
	n, err := strconv.ParseUint(rv, 10, 64)
	if err != nil {
		return 0, apierrors.NewBadRequest(fmt.Sprintf("invalid resource version %q", rv))
	}
	return n, nil
}

// waitRevision waits (briefly) until this master has applied rev; past
// FutureRevisionWait the client gets kube's "Too large resource version".
func (s *Server) waitRevision(ctx context.Context, rev uint64) error {
	st := s.store()
	if st.Revision() >= rev {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, s.cfg.FutureRevisionWait)
	defer cancel()
	if err := st.WaitRevision(wctx, rev); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errStatus(tooLargeRV())
	}
	return nil
}

// syncRead makes the local store fit for a read at resourceVersion rv:
// "" = linearizable (ReadIndex), "0" = whatever this master has, N = at
// least N.
func (s *Server) syncRead(ctx context.Context, rv string) error {
	switch rv {
	case "":
		return s.cfg.Cluster.ReadIndex(ctx)
	case "0":
		return nil
	}
	n, err := parseRV(rv)
	if err != nil {
		return err
	}
	return s.waitRevision(ctx, n)
}

// getCurrent reads one object from the local store. The KeyValue it
// returns holds the decrypted value (seal.go), so callers may compare it
// with encodeForStore's output.
func (s *Server) getCurrent(res *resource, ns, name string) (object, *fsm.KeyValue, error) {
	kv, _ := s.store().Get(res.key(ns, name))
	if kv == nil {
		return nil, nil, apierrors.NewNotFound(res.groupResource(), name)
	}
	kv, err := s.open(kv)
	if err != nil {
		return nil, nil, err
	}
	obj, err := decodeOpened(res, kv)
	if err != nil {
		return nil, nil, err
	}
	return obj, kv, nil
}

// getFresh reads one object; when it is missing locally it asks for a read
// index first, so a client that just created it on another master finds it.
func (s *Server) getFresh(ctx context.Context, res *resource, ns, name string) (object, *fsm.KeyValue, error) {
	obj, kv, err := s.getCurrent(res, ns, name)
	if err == nil || !apierrors.IsNotFound(err) {
		return obj, kv, err
	}
	if rerr := s.cfg.Cluster.ReadIndex(ctx); rerr != nil {
		return nil, nil, rerr
	}
	return s.getCurrent(res, ns, name)
}

// commit applies a transaction, sealing the values of Secrets on the way
// (seal.go); a failed compare is a result, not an error (the caller knows
// which compare matters). The TxnResult's Current and Prev hold stored,
// still sealed, values.
func (s *Server) commit(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	txn, err := s.sealTxn(txn)
	if err != nil {
		return nil, err
	}
	res, err := s.cfg.Cluster.Apply(ctx, txn)
	if err != nil {
		return nil, err
	}
	if res == nil {
		return nil, errors.New("apply returned no result")
	}
	return res, nil
}

func typesUID(s string) types.UID { return types.UID(s) }
