package cluster

import (
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

// fsmAdapter is the raft.BatchingFSM raft drives: the store, plus a note of
// the snapshot index each time raft restores the store from a snapshot.
// Everything up to that index is in the store, whatever the store's own
// revision says (its revision counts only the entries it was handed), so
// waitApplied never needs to look below it. The log may still hold stale
// entries there after a snapshot install.
type fsmAdapter struct {
	*fsm.Store
	snaps        raft.SnapshotStore
	restoreFloor atomic.Uint64
}

var _ raft.BatchingFSM = (*fsmAdapter)(nil)

// Restore implements raft.FSM. Raft writes the snapshot it restores (at
// start, installed from the leader, or an operator's restore) into the
// snapshot store first, as the newest one.
func (a *fsmAdapter) Restore(rc io.ReadCloser) error {
	if err := a.Store.Restore(rc); err != nil {
		return err
	}
	if list, err := a.snaps.List(); err == nil && len(list) > 0 {
		a.restoreFloor.Store(max(a.restoreFloor.Load(), list[0].Index))
	}
	return nil
}
