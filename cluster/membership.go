package cluster

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// runMembership is the leader service that keeps the Raft configuration in
// line with gossip: alive servers become voters, long-dead ones are removed
// while that is safe. It runs at Timing.ReconcileInterval and on every
// gossip change.
func (n *Node) runMembership(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Timing.ReconcileInterval)
	defer t.Stop()
	// missingSince remembers when a voter unknown to gossip was first seen
	// missing (a leader that started after the server died never heard of it).
	missingSince := map[string]time.Time{}
	for {
		n.reconcileClusterID(ctx)
		n.reconcile(ctx, missingSince)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-n.gossip.changed:
		}
	}
}

func (n *Node) reconcile(ctx context.Context, missingSince map[string]time.Time) {
	r, err := n.raft()
	if err != nil || r.State() != raft.Leader {
		return
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		n.log.Warn("reconcile: read configuration", "err", err)
		return
	}
	conf := f.Configuration()
	inConf := map[string]raft.Server{}
	for _, s := range conf.Servers {
		inConf[string(s.ID)] = s
	}
	members := map[string]memberState{}
	ours := n.ClusterID()
	for _, m := range n.gossip.list(RoleServer) {
		if cid := m.Meta[MetaClusterID]; cid != "" && ours != "" && cid != ours {
			continue // refused by gossip already; never let it into Raft
		}
		members[m.Name] = m
	}

	// Add alive servers that are missing, have moved, or are not voters.
	for _, m := range members {
		addr := m.Meta[MetaRaftAddr]
		if m.Status != StatusAlive || m.Name == n.cfg.Name || addr == "" {
			continue
		}
		s, ok := inConf[m.Name]
		if ok && string(s.Address) == addr && s.Suffrage == raft.Voter {
			continue
		}
		if !ok && n.removedWhileAlive(m) {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		n.log.Info("adding voter", "server", m.Name, "addr", addr)
		if err := r.AddVoter(raft.ServerID(m.Name), raft.ServerAddress(addr), 0, n.cfg.Timing.ApplyTimeout).Error(); err != nil {
			n.log.Warn("add voter", "server", m.Name, "err", err)
			return // the configuration changed under us; next pass
		}
		return // one change per pass, against a fresh configuration
	}

	// Remove a dead one if the rule allows.
	now := time.Now()
	var voters []string
	alive := map[string]bool{}
	downSince := map[string]time.Time{}
	for _, s := range conf.Servers {
		id := string(s.ID)
		if s.Suffrage == raft.Voter {
			voters = append(voters, id)
		}
		m, known := members[id]
		switch {
		case id == n.cfg.Name || (known && m.Status == StatusAlive):
			alive[id] = true
			delete(missingSince, id)
		case known:
			downSince[id] = m.since
			delete(missingSince, id)
		default:
			if _, ok := missingSince[id]; !ok {
				missingSince[id] = now
			}
			downSince[id] = missingSince[id]
		}
	}
	for id := range missingSince {
		if _, ok := inConf[id]; !ok {
			delete(missingSince, id)
		}
	}
	// Non-voters carry no quorum weight: remove them once down long enough.
	for _, s := range conf.Servers {
		id := string(s.ID)
		if s.Suffrage != raft.Voter && !alive[id] && now.Sub(downSince[id]) >= n.cfg.DeadServerCleanup {
			n.removeDead(r, id, "non-voter")
			return
		}
	}
	if id := deadServerToRemove(voters, n.cfg.Name, alive, downSince, now, n.cfg.DeadServerCleanup); id != "" {
		n.removeDead(r, id, "voter")
	}
}

func (n *Node) removeDead(r *raft.Raft, id, kind string) {
	n.log.Warn("removing dead server from raft", "server", id, "kind", kind, "dead_for_at_least", n.cfg.DeadServerCleanup)
	n.noteRemoved(id)
	if err := r.RemoveServer(raft.ServerID(id), 0, n.cfg.Timing.ApplyTimeout).Error(); err != nil {
		n.log.Warn("remove dead server", "server", id, "err", err)
	}
}

// noteRemoved remembers when this node (as leader) removed a server.
func (n *Node) noteRemoved(id string) {
	n.removedMu.Lock()
	defer n.removedMu.Unlock()
	if n.removed == nil {
		n.removed = map[string]time.Time{}
	}
	n.removed[id] = time.Now()
}

// removedWhileAlive: a removed server is added again only once gossip has
// seen it fail or leave and come back. Gossip takes a moment to notice a
// crash, so an operator removing a server that just died would otherwise
// see it re-added at once; and a live server an operator removes stays out
// until it restarts. The record lives on the leader that removed it: a new
// leader does not know it.
func (n *Node) removedWhileAlive(m memberState) bool {
	n.removedMu.Lock()
	defer n.removedMu.Unlock()
	at, ok := n.removed[m.Name]
	if !ok {
		return false
	}
	if m.since.After(at) {
		delete(n.removed, m.Name)
		return false
	}
	return true
}

// deadServerToRemove picks the voter to remove from Raft, if any. The rule:
//
//  1. Only a voter other than this leader that gossip has not seen alive
//     for at least cleanup. A server that comes back is added again.
//  2. The alive voters must be a strict majority of the current voters.
//     A leader that can commit sees a quorum through Raft; if gossip
//     nevertheless says half or more are down, gossip itself is suspect
//     (this leader may be cut off from the others' gossip), and a
//     configuration must never be shrunk on a view that could be the
//     minority's.
//  3. After the removal the alive voters must still be a majority of the
//     new configuration (follows from 2, checked anyway), so the removal
//     never leaves the cluster without a working quorum and never removes
//     an alive server.
//  4. One removal per pass; the next pass re-reads the configuration.
//
// So 3 voters with 1 dead → 2 voters (the fault tolerance is 0 either way,
// and the replacement server brings it back to 3); 5 with 2 dead → 3 (one
// per pass); 2 with 1 dead stays (Raft could not commit the change anyway).
func deadServerToRemove(voters []string, self string, alive map[string]bool,
	downSince map[string]time.Time, now time.Time, cleanup time.Duration) string {
	nAlive := 0
	for _, v := range voters {
		if alive[v] {
			nAlive++
		}
	}
	if 2*nAlive <= len(voters) { // rule 2
		return ""
	}
	var cands []string
	for _, v := range voters {
		if v == self || alive[v] {
			continue
		}
		since, ok := downSince[v]
		if !ok || now.Sub(since) < cleanup { // rule 1
			continue
		}
		cands = append(cands, v)
	}
	if len(cands) == 0 {
		return ""
	}
	// The longest dead first, then by ID, so the choice is deterministic.
	sort.Slice(cands, func(i, j int) bool {
		a, b := downSince[cands[i]], downSince[cands[j]]
		if !a.Equal(b) {
			return a.Before(b)
		}
		return cands[i] < cands[j]
	})
	remaining := len(voters) - 1
	if 2*nAlive <= remaining { // rule 3
		return ""
	}
	return cands[0]
}

// Peer is one Raft server as list-peers shows it.
type Peer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	State   string `json:"state"` // leader, follower, candidate, or unknown
	Voter   bool   `json:"voter"`
	// LastIndex is the server's last log index as it reports it (0 when it
	// could not be asked).
	LastIndex uint64 `json:"lastIndex"`
}

// statusBody is GET /internal/v1/status: a server's own view of itself.
type statusBody struct {
	ID           string `json:"id"`
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"lastIndex"`
	CommitIndex  uint64 `json:"commitIndex"`
	AppliedIndex uint64 `json:"appliedIndex"`
	Leader       string `json:"leader"`
	ClusterID    string `json:"clusterID"`
}

func (n *Node) status() (statusBody, error) {
	r, err := n.raft()
	if err != nil {
		return statusBody{}, err
	}
	leader, _ := n.Leader()
	return statusBody{
		ID:           n.cfg.Name,
		State:        strings.ToLower(r.State().String()),
		Term:         r.CurrentTerm(),
		LastIndex:    r.LastIndex(),
		CommitIndex:  r.CommitIndex(),
		AppliedIndex: r.AppliedIndex(),
		Leader:       leader,
		ClusterID:    n.ClusterID(),
	}, nil
}

// peerStatusTimeout bounds asking one server for its status.
const peerStatusTimeout = time.Second

// Peers lists the Raft configuration with each server's state. The
// configuration is this node's latest; each server's state and last index
// are its own answer to GET /internal/v1/status (hashicorp/raft does not
// expose the leader's view of its followers). A server that does not answer
// is "leader" if Raft names it leader, else "unknown", with LastIndex 0.
func (n *Node) Peers(ctx context.Context) ([]Peer, error) {
	r, err := n.raft()
	if err != nil {
		return nil, err
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", mapRaftError(err))
	}
	leaderID, _ := n.Leader()
	servers := f.Configuration().Servers
	peers := make([]Peer, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		p := &peers[i]
		*p = Peer{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == raft.Voter, State: "unknown"}
		if p.ID == leaderID {
			p.State = "leader"
		}
		if p.ID == n.cfg.Name {
			st, err := n.status()
			if err == nil {
				p.State, p.LastIndex = st.State, st.LastIndex
			}
			continue
		}
		m, ok := n.gossip.get(p.ID)
		if !ok || m.Status != StatusAlive || m.Meta[MetaAPIAddr] == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, peerStatusTimeout)
			defer cancel()
			var st statusBody
			if err := n.call(cctx, http.MethodGet, m.Meta[MetaAPIAddr], "/internal/v1/status", nil, &st, false); err == nil && st.ID == p.ID {
				p.State, p.LastIndex = st.State, st.LastIndex
			}
		}()
	}
	wg.Wait()
	return peers, nil
}

// RemovePeer removes a server from Raft (leader only; forwarded). The
// leader adds the server again once gossip has seen it fail or leave and
// come back (a restarted server rejoins); see removedWhileAlive.
func (n *Node) RemovePeer(ctx context.Context, id string) error {
	return n.withLeader(ctx,
		func(ctx context.Context, r *raft.Raft) error { return n.removePeerLocal(r, id) },
		func(ctx context.Context, addr string) error {
			return n.call(ctx, http.MethodDelete, addr, "/flotilla/v1/operator/raft/peers/"+url.PathEscape(id), nil, nil, false)
		})
}

func (n *Node) removePeerLocal(r *raft.Raft, id string) error {
	if r.State() != raft.Leader {
		return &errRetry{ErrNotLeader}
	}
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return mapRaftError(err)
	}
	found := false
	for _, s := range f.Configuration().Servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return fmt.Errorf("remove %q: %w", id, ErrUnknownPeer)
	}
	n.log.Info("removing server from raft (operator)", "server", id)
	n.noteRemoved(id)
	return mapRaftError(r.RemoveServer(raft.ServerID(id), 0, n.cfg.Timing.ApplyTimeout).Error())
}

// TransferLeadership hands leadership to id ("" = any).
func (n *Node) TransferLeadership(ctx context.Context, id string) error {
	return n.withLeader(ctx,
		func(ctx context.Context, r *raft.Raft) error { return n.transferLocal(ctx, r, id) },
		func(ctx context.Context, addr string) error {
			return n.call(ctx, http.MethodPost, addr, "/flotilla/v1/operator/raft/transfer-leader?id="+url.QueryEscape(id), nil, nil, false)
		})
}

func (n *Node) transferLocal(ctx context.Context, r *raft.Raft, id string) error {
	if r.State() != raft.Leader {
		return &errRetry{ErrNotLeader}
	}
	var f raft.Future
	if id == "" {
		f = r.LeadershipTransfer()
	} else {
		if id == n.cfg.Name {
			return nil // already leads
		}
		cf := r.GetConfiguration()
		if err := cf.Error(); err != nil {
			return mapRaftError(err)
		}
		var target *raft.Server
		for _, s := range cf.Configuration().Servers {
			if string(s.ID) == id {
				target = &s
			}
		}
		if target == nil {
			return fmt.Errorf("transfer leadership to %q: %w", id, ErrUnknownPeer)
		}
		f = r.LeadershipTransferToServer(target.ID, target.Address)
	}
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("transfer leadership: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("transfer leadership: %w", ctx.Err())
	}
}
