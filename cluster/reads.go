package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ReadIndex returns once this node's store has applied every write committed
// before the call, so local reads after it are linearizable.
//
// On the leader: note the commit index, confirm leadership with a quorum
// (VerifyLeader), wait until the store has applied the noted index. On a
// follower: ask the leader for its read index (GET /internal/v1/readindex,
// which does the same there) and wait until the local store has applied it.
// Concurrent callers share one VerifyLeader (or one request to the leader).
func (n *Node) ReadIndex(ctx context.Context) error {
	start := time.Now()
	var idx uint64
	err := n.withLeader(ctx,
		func(ctx context.Context, _ *raft.Raft) (err error) {
			idx, err = n.leaderReads.get(ctx)
			return err
		},
		func(ctx context.Context, _ string) (err error) {
			idx, err = n.followerReads.get(ctx)
			return err
		})
	if err == nil {
		err = n.waitApplied(ctx, idx)
	}
	n.metrics.observeReadIndex(time.Since(start), err)
	return err
}

// leaderReadIndex is one batch's read index on the leader.
func (n *Node) leaderReadIndex(ctx context.Context) (uint64, error) {
	r, err := n.raft()
	if err != nil {
		return 0, err
	}
	if r.State() != raft.Leader {
		return 0, &errRetry{ErrNotLeader}
	}
	if n.readyTerm.Load() != r.CurrentTerm() {
		// Until the Barrier of this term commits, the commit index may be
		// behind what earlier leaders committed.
		return 0, &errRetry{fmt.Errorf("%w: new leader not ready yet", ErrNoLeader)}
	}
	idx := r.CommitIndex()
	// raft never answers a VerifyLeader still queued when it shuts down, so
	// wait for it under ctx (bounded by the batch timeout and the node's
	// life) rather than block this batch for good.
	verify := r.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- verify.Error() }()
	select {
	case err := <-done:
		if err != nil {
			// Whatever raft says, nothing was written: ask again.
			return 0, &errRetry{fmt.Errorf("%w: verify leadership: %w", ErrNotLeader, err)}
		}
	case <-ctx.Done():
		return 0, &errRetry{fmt.Errorf("%w: verify leadership: %w", ErrNotLeader, ctx.Err())}
	}
	return idx, nil
}

// remoteReadIndex is one batch's read index asked of the leader.
func (n *Node) remoteReadIndex(ctx context.Context) (uint64, error) {
	id, addr := n.Leader()
	if id == "" || addr == "" {
		return 0, &errRetry{ErrNoLeader}
	}
	if id == n.cfg.Name {
		// We became leader meanwhile; the caller retries locally.
		return 0, &errRetry{ErrNotLeader}
	}
	var out readIndexBody
	if err := n.call(ctx, http.MethodGet, addr, "/internal/v1/readindex", nil, &out, false); err != nil {
		var rerr *errRetry
		if errors.As(err, &rerr) || ctx.Err() != nil {
			return 0, err
		}
		// A read has no side effect: any failure may be retried.
		return 0, &errRetry{err}
	}
	return out.Index, nil
}

type readIndexBody struct {
	Index uint64 `json:"index"`
}

// readBatcher coalesces concurrent read-index requests: callers queue, one
// fetch runs at a time and answers everyone who queued before it started.
// Those who arrive during a fetch form the next batch; their read index
// must be noted after they arrived.
type readBatcher struct {
	base  context.Context
	fetch func(context.Context) (uint64, error)

	mu      sync.Mutex
	waiting []chan readResult
	running bool
}

type readResult struct {
	index uint64
	err   error
}

// batchTimeout bounds one fetch (a VerifyLeader, or a request to the leader).
const batchTimeout = 10 * time.Second

func newReadBatcher(base context.Context, fetch func(context.Context) (uint64, error)) *readBatcher {
	return &readBatcher{base: base, fetch: fetch}
}

func (b *readBatcher) get(ctx context.Context) (uint64, error) {
	ch := make(chan readResult, 1)
	b.mu.Lock()
	b.waiting = append(b.waiting, ch)
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case res := <-ch:
		return res.index, res.err
	case <-ctx.Done():
		return 0, fmt.Errorf("read index: %w", ctx.Err())
	}
}

func (b *readBatcher) run() {
	for {
		b.mu.Lock()
		batch := b.waiting
		b.waiting = nil
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		ctx, cancel := context.WithTimeout(b.base, batchTimeout)
		idx, err := b.fetch(ctx)
		cancel()
		for _, ch := range batch {
			ch <- readResult{idx, err}
		}
	}
}

// waitApplied returns once the store reflects every entry up to index.
//
// The store's revision is the index of the last entry it applied, but raft
// hands it only commands and configurations: no-ops and barriers never
// reach it, so the revision may stay below index forever. raft's
// AppliedIndex counts every entry, but only says an entry was handed to
// the FSM goroutine, not that the store applied it. So: wait until
// AppliedIndex reaches index (everything up to it is on its way to the
// store), find the last command at or before index, and wait for the
// store's revision to reach that. Nothing at or below the index of the
// last snapshot raft restored into the store needs waiting for.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	if n.store.Revision() >= index {
		return nil
	}
	if err := n.applied.wait(ctx, index); err != nil {
		return err
	}
	floor := max(n.store.Revision(), n.fsm.restoreFloor.Load())
	target, err := n.lastCommandAtOrBefore(index, floor)
	if err != nil {
		return err
	}
	if target <= n.store.Revision() || target <= n.fsm.restoreFloor.Load() {
		return nil
	}
	if err := n.store.WaitRevision(ctx, target); err != nil {
		return fmt.Errorf("wait for revision %d: %w", target, err)
	}
	return nil
}

// lastCommandAtOrBefore scans the log down from index to floor (exclusive)
// for the last command entry. A missing entry was compacted into a snapshot
// the store already holds, so nothing below it needs waiting for.
func (n *Node) lastCommandAtOrBefore(index, floor uint64) (uint64, error) {
	for i := index; i > floor; i-- {
		var l raft.Log
		if err := n.st.logs.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				return floor, nil
			}
			return 0, fmt.Errorf("read raft log entry %d: %w", i, err)
		}
		if l.Type == raft.LogCommand {
			return i, nil
		}
	}
	return floor, nil
}

// appliedWaiter lets callers wait for raft's AppliedIndex, which has no
// notification: one goroutine polls it while anyone waits.
type appliedWaiter struct {
	n *Node

	mu      sync.Mutex
	waiters []appliedWait
	running bool
}

type appliedWait struct {
	index uint64
	ch    chan struct{}
}

const appliedPoll = time.Millisecond

func newAppliedWaiter(n *Node) *appliedWaiter { return &appliedWaiter{n: n} }

func (a *appliedWaiter) wait(ctx context.Context, index uint64) error {
	if a.n.AppliedIndex() >= index {
		return nil
	}
	ch := make(chan struct{})
	a.mu.Lock()
	a.waiters = append(a.waiters, appliedWait{index, ch})
	if !a.running {
		a.running = true
		go a.poll()
	}
	a.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for applied index %d: %w", index, ctx.Err())
	case <-a.n.ctx.Done():
		return ErrShutdown
	}
}

func (a *appliedWaiter) poll() {
	t := time.NewTicker(appliedPoll)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-a.n.ctx.Done():
			a.mu.Lock()
			a.waiters, a.running = nil, false
			a.mu.Unlock()
			return
		}
		applied := a.n.AppliedIndex()
		a.mu.Lock()
		keep := a.waiters[:0]
		for _, w := range a.waiters {
			if w.index <= applied {
				close(w.ch)
			} else {
				keep = append(keep, w)
			}
		}
		a.waiters = keep
		if len(keep) == 0 {
			a.running = false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
	}
}
