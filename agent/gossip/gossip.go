package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"flotilla/cluster"
)

// Config configures an agent's gossip membership.
type Config struct {
	// Name is the member name: the Node's name, which is how the node
	// lifecycle controller finds this node's health.
	Name string
	// Bind is the address to listen on; Port the gossip port (TCP and
	// UDP, 0 picks a free one).
	Bind string
	Port int
	// Advertise is the address other members reach this one at (default:
	// memberlist picks from Bind).
	Advertise string
	// Join lists members' gossip addresses (host:port); one reachable is
	// enough.
	Join []string
	// Timing is "lan" (the default, memberlist's LAN profile) or "local"
	// (loopback-fast, for tests).
	Timing string
	// Keys encrypt gossip (cluster.GossipKeySize bytes each, primary
	// first), as the servers' cluster.Config.GossipKeys; nil = in the clear,
	// and then SetKeys cannot turn encryption on later.
	Keys [][]byte
	// FetchKeys, when set with Keys, is asked for the cluster's current
	// keys after every failed join attempt in Start (e.g. GET
	// /flotilla/v1/gossip/keyring on a known API address): an agent that
	// was down during a rotation starts with keys nobody accepts any more,
	// and could otherwise never join. Its errors are logged and retried.
	FetchKeys func(ctx context.Context) ([][]byte, error)
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Pool is this agent's place in the gossip pool.
type Pool struct {
	ml     *memberlist.Memberlist
	meta   *delegate
	events *events
	// stop ends the reconnect loop; done closes when it has.
	stop, done chan struct{}
	stopOnce   sync.Once
	log        *slog.Logger
}

// ErrNoMembers means no address given to join answered.
var ErrNoMembers = errors.New("no member reachable")

// Start creates the member and joins the pool, retrying every few seconds
// until one of cfg.Join answers or ctx ends: an agent started before its
// masters (a common boot order) waits for them rather than failing.
func Start(ctx context.Context, cfg Config) (*Pool, error) {
	if cfg.Name == "" || cfg.Bind == "" {
		return nil, errors.New("gossip: Name and Bind are required")
	}
	if len(cfg.Join) == 0 {
		return nil, errors.New("gossip: nothing to join: give the gossip address of any server or agent")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Pool{meta: &delegate{}, events: &events{members: map[string]cluster.Member{}}, log: cfg.Logger.With("component", "gossip")}
	if len(cfg.Keys) > 0 {
		ring, err := cluster.NewGossipKeyring(cfg.Keys)
		if err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
		p.meta.ring = ring
	}
	if err := p.meta.setMeta(""); err != nil {
		return nil, err
	}
	mc := memberlist.DefaultLANConfig()
	if cfg.Timing == "local" {
		mc = memberlist.DefaultLocalConfig()
	}
	mc.Name = cfg.Name
	mc.BindAddr = cfg.Bind
	mc.BindPort = cfg.Port
	mc.AdvertisePort = cfg.Port
	if cfg.Advertise != "" {
		mc.AdvertiseAddr = cfg.Advertise
	}
	mc.Delegate = p.meta
	mc.Events = p.events
	mc.Logger = cluster.NewStdLogger(p.log.With("component", "memberlist"))
	if p.meta.ring != nil {
		// As the servers: nothing in the clear either way.
		mc.Keyring = p.meta.ring
		mc.GossipVerifyIncoming = true
		mc.GossipVerifyOutgoing = true
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.Port)), err)
	}
	p.ml = ml
	backoff := time.Second
	for {
		n, err := ml.Join(cfg.Join)
		if n > 0 {
			break
		}
		p.log.Warn("join gossip pool failed; retrying", "join", cfg.Join, "err", err, "in", backoff)
		if cfg.FetchKeys != nil && p.meta.ring != nil {
			p.fetchKeys(ctx, cfg.FetchKeys)
		}
		select {
		case <-ctx.Done():
			_ = ml.Shutdown()
			return nil, fmt.Errorf("join %v: %w (%v)", cfg.Join, ErrNoMembers, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
	p.adoptClusterID()
	p.log.Info("joined gossip pool", "addr", p.Addr(), "members", ml.NumMembers())
	p.stop = make(chan struct{})
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		cluster.Reconnect(p.stop, ml, cfg.Timing, func() []string { return p.reconnectAddrs(cfg.Join) }, p.log)
	}()
	return p, nil
}

func (p *Pool) stopReconnect() {
	p.stopOnce.Do(func() {
		close(p.stop)
		<-p.done
	})
}

// reconnectAddrs are the members gossip declared dead, and the --join
// addresses while no live server is known: after every master restarted
// (or a partition longer than memberlist keeps talking to the dead),
// nothing else would bring the agent and the masters together again.
func (p *Pool) reconnectAddrs(join []string) []string {
	var addrs []string
	server := false
	for _, m := range p.Members() {
		switch {
		case m.Status == cluster.StatusDead:
			addrs = append(addrs, m.Addr)
		case m.Status == cluster.StatusAlive && m.Role == cluster.RoleServer:
			server = true
		}
	}
	if !server {
		addrs = append(addrs, join...)
	}
	return addrs
}

// adoptClusterID advertises the cluster's ID once a server told us: a member
// that names its cluster cannot be mistaken for one of another cluster.
func (p *Pool) adoptClusterID() {
	for _, m := range p.Members() {
		if m.Role == cluster.RoleServer && m.Meta[cluster.MetaClusterID] != "" {
			if err := p.meta.setMeta(m.Meta[cluster.MetaClusterID]); err == nil {
				_ = p.ml.UpdateNode(time.Second)
			}
			return
		}
	}
}

// SetKeys makes this member's gossip keyring exactly keys (primary first),
// as the servers' keyring record says (GET /flotilla/v1/gossip/keyring):
// new keys are added before the primary changes and old ones removed last,
// and the new fingerprints are advertised, which is what a rotation waits
// for. A member cut off because it missed a rotation gets back in by
// itself once it has the new keys (the reconnect loop calls the members it
// saw die). It fails on a pool started without keys: encryption cannot be
// turned on under a running pool.
func (p *Pool) SetKeys(keys [][]byte) error {
	ring := p.meta.ring
	if ring == nil {
		return fmt.Errorf("gossip: set keys: %w", cluster.ErrGossipNotEncrypted)
	}
	changed, err := cluster.ApplyGossipKeys(ring, keys)
	if err != nil {
		return fmt.Errorf("gossip: set keys: %w", err)
	}
	if !changed {
		return nil
	}
	p.log.Info("gossip keyring changed", "keys", cluster.KeyFingerprints(ring.GetKeys()))
	if err := p.meta.refresh(); err != nil {
		return err
	}
	if err := p.ml.UpdateNode(time.Second); err != nil {
		// The change is local already; the next probe or push/pull
		// carries the metadata anyway.
		p.log.Warn("advertise gossip keys", "err", err)
	}
	return nil
}

// fetchKeys applies the keys fetch returns, before a join is retried.
func (p *Pool) fetchKeys(ctx context.Context, fetch func(context.Context) ([][]byte, error)) {
	keys, err := fetch(ctx)
	if err == nil {
		_, err = cluster.ApplyGossipKeys(p.meta.ring, keys)
	}
	if err != nil {
		p.log.Warn("fetch gossip keys", "err", err)
		return
	}
	if err := p.meta.refresh(); err != nil {
		p.log.Warn("fetch gossip keys", "err", err)
		return
	}
	// Nobody to tell yet; this puts the new fingerprints in our own state,
	// which the join's push/pull carries.
	_ = p.ml.UpdateNode(time.Second)
}

// Keys returns this member's gossip keys, primary first (nil when gossip
// is not encrypted).
func (p *Pool) Keys() [][]byte {
	if p.meta.ring == nil {
		return nil
	}
	keys := p.meta.ring.GetKeys()
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = append([]byte(nil), k...)
	}
	return out
}

// Addr is this member's gossip address (host:port).
func (p *Pool) Addr() string { return p.ml.LocalNode().Address() }

// Members lists the pool as this member's gossip has seen it, dead and
// left members included (memberlist's own list holds only the live ones),
// sorted by name. A suspect member still counts as alive, as the servers
// count it.
func (p *Pool) Members() []cluster.Member {
	p.events.mu.Lock()
	out := make([]cluster.Member, 0, len(p.events.members))
	for _, m := range p.events.members {
		out = append(out, m)
	}
	p.events.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// events records every member's last known state from memberlist's
// callbacks, which run with memberlist's lock held: it copies and returns.
type events struct {
	mu      sync.Mutex
	members map[string]cluster.Member
}

func (e *events) set(n *memberlist.Node, status string) {
	meta, err := cluster.DecodeMeta(n.Meta)
	if err != nil {
		return
	}
	m := cluster.Member{Name: n.Name, Addr: n.Address(), Status: status, Role: meta[cluster.MetaRole], Meta: meta}
	e.mu.Lock()
	e.members[n.Name] = m
	e.mu.Unlock()
}

func (e *events) NotifyJoin(n *memberlist.Node)   { e.set(n, cluster.StatusAlive) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.set(n, cluster.StatusAlive) }
func (e *events) NotifyLeave(n *memberlist.Node)  { e.set(n, cluster.LeaveStatus(n)) }

// Leave tells the pool this member is going away on purpose, then stops.
// It first gossips MetaLeaving, so the others record it as left (an agent
// restarting, its containers serving on) rather than dead.
func (p *Pool) Leave(timeout time.Duration) {
	p.stopReconnect() // or it could join again while leaving
	if err := p.meta.setLeaving(); err == nil {
		if err := p.ml.UpdateNode(timeout / 2); err != nil {
			p.log.Warn("announce leaving", "err", err)
		}
	}
	if err := p.ml.Leave(timeout); err != nil {
		p.log.Warn("leave gossip pool", "err", err)
	}
	p.Shutdown()
}

// Shutdown stops gossiping without leaving: the pool sees this member fail,
// as it would a node that lost power.
func (p *Pool) Shutdown() {
	p.stopReconnect()
	if err := p.ml.Shutdown(); err != nil {
		p.log.Warn("shut down gossip", "err", err)
	}
}

// APIAddrs returns the API addresses of the servers that gossip reports
// alive, from a member list (of a Pool or of a server's cluster.Node).
func APIAddrs(members []cluster.Member) []string {
	var out []string
	for _, m := range members {
		if m.Role != cluster.RoleServer || m.Status != cluster.StatusAlive {
			continue
		}
		if a := m.Meta[cluster.MetaAPIAddr]; a != "" {
			out = append(out, a)
		}
	}
	return out
}

// delegate gives memberlist this member's metadata; the rest of
// memberlist.Delegate is unused.
type delegate struct {
	meta atomic.Pointer[[]byte]
	// ring is the gossip keyring (nil = in the clear); set before the
	// member starts, never replaced.
	ring *memberlist.Keyring

	mu        sync.Mutex
	clusterID string // set before the member joins, then only by adoptClusterID
	leaving   bool
}

func (d *delegate) NodeMeta(limit int) []byte {
	p := d.meta.Load()
	if p == nil || len(*p) > limit {
		return nil
	}
	return *p
}

func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}

// setMeta encodes the agent metadata with the cluster ID, "" while unknown
// (servers accept a member without one).
func (d *delegate) setMeta(clusterID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.clusterID = clusterID
	return d.storeLocked()
}

// setLeaving adds MetaLeaving to the metadata.
func (d *delegate) setLeaving() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.leaving = true
	return d.storeLocked()
}

// refresh re-encodes the metadata (the keys changed).
func (d *delegate) refresh() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.storeLocked()
}

func (d *delegate) storeLocked() error {
	meta := map[string]string{cluster.MetaRole: cluster.RoleAgent}
	if d.clusterID != "" {
		meta[cluster.MetaClusterID] = d.clusterID
	}
	if d.ring != nil {
		meta[cluster.MetaKeys] = cluster.KeyFingerprints(d.ring.GetKeys())
	}
	if d.leaving {
		meta[cluster.MetaLeaving] = "1"
	}
	buf, err := cluster.EncodeMeta(meta)
	if err != nil {
		return err
	}
	d.meta.Store(&buf)
	return nil
}
