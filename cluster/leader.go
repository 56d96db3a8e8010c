package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

// runLeadership follows raft's leadership notifications and runs the leader
// services for each term: started after the term's Barrier, stopped (and
// waited for) when leadership is lost or the node shuts down, so there is
// exactly one start and one stop per term and never two terms' services at
// once on this node.
func (n *Node) runLeadership() {
	defer n.wg.Done()
	var term *leaderTerm
	for {
		select {
		case isLeader := <-n.notifyCh:
			n.signalLeaderChange()
			switch {
			case isLeader && term == nil:
				term = n.startTerm()
			case !isLeader && term != nil:
				term.stop(n)
				term = nil
			}
		case <-n.ctx.Done():
			if term != nil {
				term.stop(n)
			}
			return
		}
	}
}

type leaderTerm struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (t *leaderTerm) stop(n *Node) {
	n.readyTerm.Store(0)
	t.cancel()
	<-t.done
	n.log.Info("leader services stopped")
}

// leaderServices are the internal services followed by Config.LeaderServices.
func (n *Node) leaderServices() []LeaderService {
	return append([]LeaderService{
		{Name: "membership", Run: n.runMembership},
		{Name: "expiry", Run: n.runExpiry},
	}, n.cfg.LeaderServices...)
}

func (n *Node) startTerm() *leaderTerm {
	ctx, cancel := context.WithCancel(n.ctx)
	t := &leaderTerm{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		term, ok := n.leaderBarrier(ctx)
		if !ok {
			return
		}
		n.readyTerm.Store(term)
		n.log.Info("leading; starting leader services", "term", term)
		var wg sync.WaitGroup
		for _, s := range n.leaderServices() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.Run(ctx); err != nil && ctx.Err() == nil {
					n.log.Error("leader service ended", "service", s.Name, "err", err)
				}
			}()
		}
		wg.Wait()
	}()
	return t
}

// leaderBarrier commits a barrier of the new term, so the store has applied
// everything earlier leaders committed before any leader service reads it.
func (n *Node) leaderBarrier(ctx context.Context) (term uint64, ok bool) {
	for ctx.Err() == nil {
		r, err := n.raft()
		if err != nil || r.State() != raft.Leader {
			return 0, false
		}
		term = r.CurrentTerm()
		err = r.Barrier(n.cfg.Timing.ApplyTimeout).Error()
		if err == nil {
			return term, r.State() == raft.Leader && r.CurrentTerm() == term
		}
		n.log.Warn("leadership barrier", "err", err)
		if err == raft.ErrLeadershipLost || err == raft.ErrRaftShutdown || err == raft.ErrNotLeader {
			return 0, false
		}
		select {
		case <-ctx.Done():
		case <-time.After(n.cfg.Timing.HeartbeatTimeout):
		}
	}
	return 0, false
}

// expiryBatch bounds the keys one expiry pass deletes; expiryParallel the
// deletes in flight (raft batches them into few log writes).
const (
	expiryBatch    = 1000
	expiryParallel = 32
)

// runExpiry is the leader service that deletes expired keys: each becomes
// a delete guarded by the key's ModRevision, so a key rewritten meanwhile
// survives. Times come from the leader's clock, never the FSM's.
func (n *Node) runExpiry(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Timing.ExpiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			n.expireOnce(ctx)
		}
	}
}

func (n *Node) expireOnce(ctx context.Context) int {
	kvs := n.store.Expired(time.Now(), expiryBatch)
	if len(kvs) == 0 {
		return 0
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		deleted int
		sem     = make(chan struct{}, expiryParallel)
	)
	for _, kv := range kvs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return deleted
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			res, err := n.applyAsLeader(ctx, &fsm.Txn{
				Compares: []fsm.Compare{{Key: kv.Key, Target: fsm.CompareModRevision, ModRevision: kv.ModRevision}},
				Ops:      []fsm.Op{{Type: fsm.OpDelete, Key: kv.Key}},
			})
			if err != nil {
				if ctx.Err() == nil {
					n.log.Warn("delete expired key", "key", kv.Key, "err", err)
				}
				return
			}
			if res.Succeeded {
				mu.Lock()
				deleted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if deleted > 0 {
		n.log.Debug("deleted expired keys", "count", deleted)
	}
	return deleted
}
