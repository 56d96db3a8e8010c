package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Gossip member metadata keys and roles. Metadata is a flat JSON object of
// strings of at most MaxMetaSize bytes (memberlist's limit).
const (
	MetaRole      = "role"    // RoleServer or RoleAgent
	MetaRaftAddr  = "raft"    // servers: Raft transport address
	MetaAPIAddr   = "api"     // servers: API address (host:port)
	MetaClusterID = "cluster" // the cluster ID once known
	// MetaNew is "1" while a server has no Raft state; MetaExpect is then
	// its BootstrapExpect. Bootstrap uses both.
	MetaNew    = "new"
	MetaExpect = "expect"
	// MetaLeaving is "1" in the metadata a member gossips just before it
	// leaves on purpose. memberlist tells a leave from a death only in
	// state its event callbacks do not see (the Node they get keeps its
	// old State), so the member says it itself.
	MetaLeaving = "leaving"
	// MetaKeys lists the fingerprints (KeyFingerprint) of the gossip keys
	// a member has installed, comma-separated, primary first: a rotation
	// moves on only once every alive member advertises its step.
	MetaKeys = "keys"

	RoleServer = "server"
	RoleAgent  = "agent"

	MaxMetaSize = memberlist.MetaMaxSize
)

// Member statuses.
const (
	StatusAlive = "alive"
	StatusDead  = "dead"
	StatusLeft  = "left"
)

// Member is one gossip member (server or agent).
type Member struct {
	Name   string            `json:"name"`
	Addr   string            `json:"addr"`
	Status string            `json:"status"` // alive, dead, left (see the package doc on suspect)
	Role   string            `json:"role"`   // server or agent
	Meta   map[string]string `json:"meta"`
}

// EncodeMeta encodes gossip metadata; agents use it for their own member.
func EncodeMeta(meta map[string]string) ([]byte, error) {
	buf, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("encode gossip metadata: %w", err)
	}
	if len(buf) > MaxMetaSize {
		return nil, fmt.Errorf("encode gossip metadata: %d bytes, limit %d", len(buf), MaxMetaSize)
	}
	return buf, nil
}

// DecodeMeta decodes what EncodeMeta made; empty input is empty metadata.
func DecodeMeta(buf []byte) (map[string]string, error) {
	meta := map[string]string{}
	if len(bytes.TrimSpace(buf)) == 0 {
		return meta, nil
	}
	if err := json.Unmarshal(buf, &meta); err != nil {
		return nil, fmt.Errorf("decode gossip metadata: %w", err)
	}
	return meta, nil
}

// memberState is a member as the event delegate last saw it. Copies are
// taken inside memberlist's callbacks: its *Node values change under its
// own lock, so reading them later would race.
type memberState struct {
	Member
	since time.Time // when Status last changed
}

// clusterConflict records a member refused for naming another cluster.
type clusterConflict struct {
	name, addr, theirs, ours string
}

// gossipState tracks the pool for this node; it also implements
// memberlist's Delegate, EventDelegate, AliveDelegate and MergeDelegate.
type gossipState struct {
	n *Node

	mu        sync.Mutex
	members   map[string]*memberState
	conflicts []clusterConflict

	// changed is signalled (without blocking) on every membership change;
	// the reconciler and the bootstrap loop listen.
	changed chan struct{}
	// subscribers are signalled the same way, one channel each (see
	// Node.MembershipChanges).
	subscribers []chan struct{}

	// keys is gossip encryption (keyring.go).
	keys keyringState
}

func newGossipState(n *Node) *gossipState {
	return &gossipState{n: n, members: map[string]*memberState{}, changed: make(chan struct{}, 1)}
}

func (g *gossipState) notify() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
	g.mu.Lock()
	subs := g.subscribers
	g.mu.Unlock()
	for _, c := range subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// memberlistConfig builds memberlist's configuration from ours.
func (n *Node) memberlistConfig() *memberlist.Config {
	var mc *memberlist.Config
	if n.cfg.Timing.GossipProfile == "local" {
		mc = memberlist.DefaultLocalConfig()
		// Loopback: fail fast so dead servers are noticed within seconds.
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.GossipInterval = 20 * time.Millisecond
		mc.PushPullInterval = 2 * time.Second
		mc.SuspicionMult = 3
		mc.TCPTimeout = time.Second
		mc.GossipToTheDeadTime = 2 * time.Second
		mc.DeadNodeReclaimTime = 2 * time.Second
	} else {
		mc = memberlist.DefaultLANConfig()
		// A server that comes back on another address (a new IP) may take
		// its name back once it has been dead this long.
		mc.DeadNodeReclaimTime = 30 * time.Second
	}
	mc.Name = n.cfg.Name
	mc.BindAddr = n.cfg.BindAddr
	port := n.cfg.GossipPort
	if port == AnyPort {
		port = 0
	}
	mc.BindPort = port
	mc.AdvertiseAddr = n.cfg.AdvertiseAddr
	mc.AdvertisePort = port
	mc.Delegate = n.gossip
	mc.Events = n.gossip
	mc.Alive = n.gossip
	mc.Merge = n.gossip
	mc.Logger = NewStdLogger(n.log.With("component", "memberlist"))
	if ring := n.gossip.keys.ring.Load(); ring != nil {
		// Refuse anything not encrypted with a key of the ring, both ways:
		// a member without the key can neither join nor be heard.
		mc.Keyring = ring
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	return mc
}

// checkClusterID refuses a member whose metadata names another cluster.
// Members without an ID (fresh servers, agents that never joined) pass.
func (g *gossipState) checkClusterID(node *memberlist.Node) error {
	meta, err := DecodeMeta(node.Meta)
	if err != nil {
		return fmt.Errorf("member %s: %w", node.Name, err)
	}
	theirs, ours := meta[MetaClusterID], g.n.ClusterID()
	if theirs == "" || ours == "" || theirs == ours {
		return nil
	}
	addr := net.JoinHostPort(node.Addr.String(), strconv.Itoa(int(node.Port)))
	g.mu.Lock()
	if len(g.conflicts) < 16 {
		g.conflicts = append(g.conflicts, clusterConflict{name: node.Name, addr: addr, theirs: theirs, ours: ours})
	}
	g.mu.Unlock()
	return fmt.Errorf("member %s (%s) belongs to cluster %s, this is cluster %s", node.Name, addr, theirs, ours)
}

// conflict returns the first refusal recorded since the last call.
func (g *gossipState) takeConflict() (clusterConflict, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.conflicts) == 0 {
		return clusterConflict{}, false
	}
	c := g.conflicts[0]
	g.conflicts = nil
	return c, true
}

// NotifyAlive implements memberlist.AliveDelegate.
func (g *gossipState) NotifyAlive(node *memberlist.Node) error { return g.checkClusterID(node) }

// NotifyMerge implements memberlist.MergeDelegate: a push/pull with a member
// of another cluster is cancelled as a whole.
func (g *gossipState) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if err := g.checkClusterID(p); err != nil {
			return err
		}
	}
	return nil
}

// NodeMeta implements memberlist.Delegate.
func (g *gossipState) NodeMeta(limit int) []byte {
	buf := g.n.metaBytes()
	if len(buf) > limit {
		// Cannot happen with our keys (EncodeMeta checks the limit).
		return nil
	}
	return buf
}

// NotifyMsg, GetBroadcasts, LocalState and MergeRemoteState implement
// memberlist.Delegate; servers exchange nothing beyond metadata.
func (g *gossipState) NotifyMsg([]byte)                       {}
func (g *gossipState) GetBroadcasts(int, int) [][]byte        { return nil }
func (g *gossipState) LocalState(bool) []byte                 { return nil }
func (g *gossipState) MergeRemoteState(buf []byte, join bool) {}

// NotifyJoin implements memberlist.EventDelegate.
func (g *gossipState) NotifyJoin(node *memberlist.Node) { g.update(node, StatusAlive) }

// NotifyUpdate implements memberlist.EventDelegate.
func (g *gossipState) NotifyUpdate(node *memberlist.Node) { g.update(node, StatusAlive) }

// NotifyLeave implements memberlist.EventDelegate (dead or left).
func (g *gossipState) NotifyLeave(node *memberlist.Node) {
	g.update(node, LeaveStatus(node))
}

// LeaveStatus is StatusLeft for a member that announced it was leaving
// (MetaLeaving), StatusDead for any other that gossip lost.
func LeaveStatus(node *memberlist.Node) string {
	if node.State == memberlist.StateLeft {
		return StatusLeft
	}
	if meta, err := DecodeMeta(node.Meta); err == nil && meta[MetaLeaving] == "1" {
		return StatusLeft
	}
	return StatusDead
}

// update runs inside memberlist's callbacks, with its lock held: it copies
// what it needs and must not call back into memberlist.
func (g *gossipState) update(node *memberlist.Node, status string) {
	meta, err := DecodeMeta(node.Meta)
	if err != nil {
		meta = map[string]string{}
	}
	m := Member{
		Name:   node.Name,
		Addr:   net.JoinHostPort(node.Addr.String(), strconv.Itoa(int(node.Port))),
		Status: status,
		Role:   meta[MetaRole],
		Meta:   meta,
	}
	g.mu.Lock()
	old, ok := g.members[node.Name]
	since := time.Now()
	if ok && old.Status == status {
		since = old.since
	}
	g.members[node.Name] = &memberState{Member: m, since: since}
	g.mu.Unlock()
	if !ok || old.Status != status {
		g.n.log.Debug("gossip member", "member", node.Name, "status", status, "role", m.Role)
	}
	g.notify()
}

// list returns copies of the members, sorted by name; role "" = all.
func (g *gossipState) list(role string) []memberState {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]memberState, 0, len(g.members))
	for _, m := range g.members {
		if role != "" && m.Role != role {
			continue
		}
		c := *m
		c.Meta = make(map[string]string, len(m.Meta))
		for k, v := range m.Meta {
			c.Meta[k] = v
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (g *gossipState) get(name string) (memberState, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[name]
	if !ok {
		return memberState{}, false
	}
	return *m, true
}

// Members lists the gossip pool, this node included, sorted by name.
func (n *Node) Members() []Member {
	ms := n.gossip.list("")
	out := make([]Member, len(ms))
	for i, m := range ms {
		out[i] = m.Member
	}
	return out
}

// buildMeta is this server's metadata.
func (n *Node) buildMeta() ([]byte, error) {
	meta := map[string]string{
		MetaRole:     RoleServer,
		MetaRaftAddr: n.raftAddr,
		MetaAPIAddr:  n.apiAddr,
	}
	if id := n.ClusterID(); id != "" {
		meta[MetaClusterID] = id
	}
	if ring := n.gossip.keys.ring.Load(); ring != nil {
		meta[MetaKeys] = KeyFingerprints(ring.GetKeys())
	}
	if n.fresh.Load() {
		meta[MetaNew] = "1"
		if n.cfg.BootstrapExpect > 0 {
			meta[MetaExpect] = strconv.Itoa(n.cfg.BootstrapExpect)
		}
	}
	return EncodeMeta(meta)
}

func (n *Node) metaBytes() []byte {
	if p := n.meta.Load(); p != nil {
		return *p
	}
	return nil
}

// refreshMeta recomputes the metadata and, once gossip runs, broadcasts it.
func (n *Node) refreshMeta() {
	n.metaMu.Lock()
	defer n.metaMu.Unlock()
	buf, err := n.buildMeta()
	if err != nil {
		n.log.Error("gossip metadata", "err", err)
		return
	}
	if old := n.metaBytes(); bytes.Equal(old, buf) {
		return
	}
	n.meta.Store(&buf)
	if ml := n.ml.Load(); ml != nil && !n.closing.Load() {
		if err := ml.UpdateNode(n.cfg.Timing.HeartbeatTimeout * 3); err != nil {
			n.log.Warn("broadcast gossip metadata", "err", err)
		}
	}
}

// startGossip creates the memberlist (listening on the gossip port).
// With gossip encryption it also starts following the store's keyring
// (keyring.go): a server that missed a rotation needs the new keys from
// Raft before it can gossip again.
func (n *Node) startGossip() error {
	if err := n.initKeyring(); err != nil {
		return err
	}
	n.refreshMeta()
	ml, err := memberlist.Create(n.memberlistConfig())
	if err != nil {
		return fmt.Errorf("start gossip on %s:%d: %w", n.cfg.BindAddr, n.cfg.GossipPort, err)
	}
	local := ml.LocalNode()
	n.gossipAddr = net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port)))
	n.ml.Store(ml) // publishes gossipAddr too
	n.wg.Add(1)
	go n.runGossipKeyring()
	return nil
}

// join contacts the given members, retrying with backoff until one answers
// or timeout passes. A refusal because of another cluster ID ends it at once.
func (n *Node) join(ctx context.Context, addrs []string, timeout time.Duration) error {
	ml := n.ml.Load()
	deadline := time.Now().Add(timeout)
	backoff := 100 * time.Millisecond
	for {
		_, err := ml.Join(addrs)
		if c, ok := n.gossip.takeConflict(); ok {
			return n.conflictError(c)
		}
		if err == nil {
			n.log.Info("joined gossip", "via", strings.Join(addrs, ","))
			return nil
		}
		if time.Now().Add(backoff).After(deadline) {
			return fmt.Errorf("join: no member reachable at %s: %w", strings.Join(addrs, ", "), err)
		}
		n.log.Debug("join failed; retrying", "addrs", addrs, "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("join %s: %w (last error: %v)", strings.Join(addrs, ", "), ctx.Err(), err)
		case <-n.ctx.Done():
			t.Stop()
			return ErrShutdown
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (n *Node) conflictError(c clusterConflict) error {
	return fmt.Errorf("%w: this server belongs to cluster %s (data dir %s), but member %s at %s belongs to cluster %s; refusing to join another cluster",
		ErrClusterIDMismatch, c.ours, n.cfg.DataDir, c.name, c.addr, c.theirs)
}

// ReconnectInterval is how often a member tries to reach the members
// gossip declared dead (production timing; "local" timing uses a tenth).
const ReconnectInterval = 10 * time.Second

// Reconnect joins, every interval until stop closes, each address addrs
// returns: the members gossip declared dead, and whatever else the caller
// needs to reach again. memberlist stops talking to a dead member shortly
// after declaring it (GossipToTheDeadTime), so after a partition longer
// than that the two sides would never hear of each other again; a join (a
// push/pull with that address) lets a member that is back refute its
// death. Servers and agents both run it.
func Reconnect(stop <-chan struct{}, ml *memberlist.Memberlist, timing string, addrs func() []string, log *slog.Logger) {
	every := ReconnectInterval
	if timing == "local" {
		every /= 10
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		for _, a := range addrs() {
			if _, err := ml.Join([]string{a}); err == nil {
				log.Info("reconnected to a gossip member", "addr", a)
			}
		}
	}
}

// runReconnect is Reconnect for the members this server saw die (not
// those that left on purpose): a healthy master that was cut off for a
// while must not stay dead in the others' view until dead-server cleanup
// removes it from Raft.
func (n *Node) runReconnect() {
	defer n.wg.Done()
	Reconnect(n.ctx.Done(), n.ml.Load(), n.cfg.Timing.GossipProfile, func() []string {
		if n.closing.Load() {
			return nil
		}
		var out []string
		for _, m := range n.gossip.list("") {
			if m.Status == StatusDead && m.Name != n.cfg.Name {
				out = append(out, m.Addr)
			}
		}
		return out
	}, n.log)
}

// joinAddrs is cfg.Join plus the remembered server peers (peersfile.go),
// without this node's own gossip address.
func (n *Node) joinAddrs() []string {
	var out []string
	for _, a := range append(slices.Clone(n.cfg.Join), n.peers...) {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			host, port = a, strconv.Itoa(DefaultGossipPort)
			a = net.JoinHostPort(host, port)
		}
		if a == n.gossipAddr || (port == gossipPortOf(n.gossipAddr) && isLocalBind(host, n.cfg)) {
			continue
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func gossipPortOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// isLocalBind reports whether host names this node's own address.
func isLocalBind(host string, cfg Config) bool {
	return host == cfg.AdvertiseAddr || host == cfg.BindAddr
}

// retryJoin keeps trying to join in the background (servers with existing
// state whose join failed at Start).
func (n *Node) retryJoin(addrs []string) {
	defer n.wg.Done()
	for n.ctx.Err() == nil {
		err := n.join(n.ctx, addrs, 5*time.Minute)
		if err == nil || n.ctx.Err() != nil {
			return
		}
		n.log.Error("background join", "err", err)
	}
}
