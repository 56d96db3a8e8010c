package cluster

// MembershipChanges returns a channel that receives (without blocking the
// gossip layer: one pending signal at most) after every change of the gossip
// pool. Each call makes a new channel for one consumer; it lives as long as
// the node.
func (n *Node) MembershipChanges() <-chan struct{} {
	c := make(chan struct{}, 1)
	n.gossip.mu.Lock()
	// Copy on write: notify reads the slice outside the lock.
	subs := make([]chan struct{}, len(n.gossip.subscribers), len(n.gossip.subscribers)+1)
	copy(subs, n.gossip.subscribers)
	n.gossip.subscribers = append(subs, c)
	n.gossip.mu.Unlock()
	return c
}

// MemberAlive reports whether the gossip member called name is alive, and
// whether gossip knows it at all. Node health travels this way, never as
// heartbeat writes through Raft.
//
// A member that left on purpose counts as not known rather than dead: an
// agent leaves when it restarts or stops, and its containers go on
// serving, so its node gets the grace a silent node gets (the node
// lifecycle controller's NodeUnknownGracePeriod, as a kubelet that stops
// posting status) instead of being declared unreachable at once.
func (n *Node) MemberAlive(name string) (alive, known bool) {
	m, ok := n.gossip.get(name)
	if !ok || m.Status == StatusLeft {
		return false, false
	}
	return m.Status == StatusAlive, true
}
