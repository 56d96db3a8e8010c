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
func (n *Node) MemberAlive(name string) (alive, known bool) {
	m, ok := n.gossip.get(name)
	if !ok {
		return false, false
	}
	return m.Status == StatusAlive, true
}
