package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

// ClusterIDKey is where the cluster ID lives in the store.
const ClusterIDKey = "/flotilla/cluster/id"

// pollInterval paces the bootstrap and maintenance loops (they also react
// to gossip changes at once).
func (n *Node) pollInterval() time.Duration {
	return min(n.cfg.Timing.HeartbeatTimeout/2, time.Second)
}

// runBootstrap waits for BootstrapExpect fresh servers, then bootstraps
// Raft with all of them. See the package doc for the rule.
func (n *Node) runBootstrap() {
	defer n.wg.Done()
	t := time.NewTicker(n.pollInterval())
	defer t.Stop()
	n.warnedExpect = map[string]bool{}
	var lastReason string
	for {
		done, reason := n.tryBootstrap()
		if done {
			return
		}
		if reason != lastReason {
			n.log.Info("waiting to bootstrap", "reason", reason)
			lastReason = reason
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		case <-n.gossip.changed:
		}
	}
}

// tryBootstrap makes one attempt; it reports whether the loop is over and,
// if not, why it is waiting.
func (n *Node) tryBootstrap() (done bool, reason string) {
	r, err := n.raft()
	if err != nil {
		return true, ""
	}
	if r.LastIndex() > 0 {
		// Bootstrapped, or a leader added us.
		n.markNotFresh()
		return true, ""
	}
	expect := strconv.Itoa(n.cfg.BootstrapExpect)
	var cands []memberState
	for _, m := range n.gossip.list(RoleServer) {
		if m.Status != StatusAlive {
			continue
		}
		if m.Meta[MetaNew] != "1" || m.Meta[MetaClusterID] != "" {
			return false, fmt.Sprintf("server %s already has raft state; waiting for the leader to add this server", m.Name)
		}
		if m.Meta[MetaExpect] != expect {
			if m.Meta[MetaExpect] != "" && !n.warnedExpect[m.Name] {
				n.warnedExpect[m.Name] = true
				n.log.Warn("server expects a different bootstrap size; leaving it out", "member", m.Name, "its_expect", m.Meta[MetaExpect], "our_expect", expect)
			}
			continue
		}
		if m.Meta[MetaRaftAddr] == "" {
			continue
		}
		cands = append(cands, m)
	}
	self := false
	for _, m := range cands {
		self = self || m.Name == n.cfg.Name
	}
	if !self {
		return false, "this server is not in gossip yet"
	}
	if len(cands) < n.cfg.BootstrapExpect {
		return false, fmt.Sprintf("%d of %d servers seen", len(cands), n.cfg.BootstrapExpect)
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].Name < cands[j].Name })
	if n.cfg.PreBootstrap != nil {
		servers := make([]Member, len(cands))
		for i, m := range cands {
			servers[i] = m.Member
		}
		if err := n.cfg.PreBootstrap(n.ctx, servers); err != nil {
			return false, fmt.Sprintf("pre-bootstrap hook: %v", err)
		}
	}
	var conf raft.Configuration
	for _, m := range cands {
		conf.Servers = append(conf.Servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(m.Name),
			Address:  raft.ServerAddress(m.Meta[MetaRaftAddr]),
		})
	}
	err = r.BootstrapCluster(conf).Error()
	switch {
	case err == raft.ErrCantBootstrap:
		n.markNotFresh()
		return true, ""
	case err != nil:
		return false, fmt.Sprintf("bootstrap: %v", err)
	}
	n.log.Info("bootstrapped raft", "servers", fmt.Sprint(conf.Servers))
	n.markNotFresh()
	return true, ""
}

// markNotFresh stops advertising MetaNew once this server has Raft state.
func (n *Node) markNotFresh() {
	if n.fresh.CompareAndSwap(true, false) {
		n.refreshMeta()
	}
}

// runMaintenance clears the fresh flag once a leader added this server and
// adopts the cluster ID once it reaches the store; then it has nothing
// left to do.
func (n *Node) runMaintenance() {
	defer n.wg.Done()
	t := time.NewTicker(n.pollInterval())
	defer t.Stop()
	for {
		r, err := n.raft()
		if err != nil {
			return
		}
		if n.fresh.Load() && r.LastIndex() > 0 {
			n.markNotFresh()
		}
		if n.ClusterID() == "" {
			if kv, _ := n.store.Get(ClusterIDKey); kv != nil {
				n.adoptClusterID(string(kv.Value))
			}
		}
		if !n.fresh.Load() && n.ClusterID() != "" {
			return
		}
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// adoptClusterID persists and advertises the ID, unless one is already set.
func (n *Node) adoptClusterID(id string) bool {
	if !validClusterID(id) {
		n.log.Error("ignoring malformed cluster id in the store", "id", id)
		return false
	}
	n.idMu.Lock()
	defer n.idMu.Unlock()
	if n.ClusterID() != "" {
		return false
	}
	if err := writeClusterID(n.cfg.DataDir, id); err != nil {
		n.log.Error("persist cluster id", "err", err)
		return false
	}
	n.clusterID.Store(&id)
	n.log.Info("cluster id", "id", id)
	n.refreshMeta()
	return true
}

func newClusterID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// reconcileClusterID runs on the leader: the store must hold this server's
// cluster ID. A new cluster's first leader picks one; a leader that has none
// yet adopts the store's; a store that disagrees (a snapshot restored from
// another cluster) gets ours back.
func (n *Node) reconcileClusterID(ctx context.Context) {
	kv, _ := n.store.Get(ClusterIDKey)
	ours := n.ClusterID()
	switch {
	case ours == "" && kv != nil:
		n.adoptClusterID(string(kv.Value))
		return
	case ours != "" && kv != nil && string(kv.Value) == ours:
		return
	}
	id, cmp := ours, fsm.Compare{Key: ClusterIDKey, Target: fsm.CompareAbsent}
	if id == "" {
		id = newClusterID()
	}
	if kv != nil {
		cmp = fsm.Compare{Key: ClusterIDKey, Target: fsm.CompareModRevision, ModRevision: kv.ModRevision}
	}
	res, err := n.applyAsLeader(ctx, &fsm.Txn{
		Compares: []fsm.Compare{cmp},
		Ops:      []fsm.Op{{Type: fsm.OpPut, Key: ClusterIDKey, Value: []byte(id)}},
	})
	if err != nil {
		if ctx.Err() == nil {
			n.log.Warn("store cluster id", "err", err)
		}
		return
	}
	if res.Succeeded && ours == "" {
		n.adoptClusterID(id)
	}
}
