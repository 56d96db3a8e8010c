package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

const (
	// maxAppendEntries bounds one AppendEntries and one FSM batch. With
	// BatchApplyCh the leader takes up to this many queued applies into one
	// log write (one fsync), so throughput grows with concurrency.
	maxAppendEntries = 256
	notifyBuffer     = 16
)

// restartJoinTimeout bounds the synchronous join of a server that already
// has Raft state.
const restartJoinTimeout = 3 * time.Second

// Node is one master: Raft member, gossip member, store.
type Node struct {
	cfg   Config
	log   *slog.Logger
	hclog hclog.Logger

	st       *storage
	peers    []string // remembered server gossip addresses (peersfile.go)
	store    *fsm.Store
	fsm      *fsmAdapter
	trans    *raft.NetworkTransport
	raftAddr string
	apiAddr  string
	http     *http.Client
	ownHTTP  bool

	raftPtr    atomic.Pointer[raft.Raft]
	ml         atomic.Pointer[memberlist.Memberlist]
	gossipAddr string // set by Start before any reader
	gossip     *gossipState
	meta       atomic.Pointer[[]byte]
	metaMu     sync.Mutex

	idMu      sync.Mutex
	clusterID atomic.Pointer[string]
	// fresh: no Raft state yet (advertised as MetaNew).
	fresh    atomic.Bool
	hadState bool

	ctx      context.Context // cancelled by Shutdown
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	started  atomic.Bool
	closing  atomic.Bool
	stopOnce sync.Once
	stopErr  error

	notifyCh chan bool
	observer *raft.Observer

	leaderMu      sync.Mutex
	leaderChanged chan struct{} // closed and replaced on every leader change

	// readyTerm is the term whose leadership Barrier completed on this node
	// (0 when not leading): a new leader's commit index is only current
	// after an entry of its own term is committed.
	readyTerm atomic.Uint64

	// warnedExpect: members the bootstrap loop warned about (its own).
	warnedExpect map[string]bool

	// removed: servers this node removed from Raft as leader, and when.
	removedMu sync.Mutex
	removed   map[string]time.Time

	leaderReads   *readBatcher
	followerReads *readBatcher
	applied       *appliedWaiter
	metrics       *metrics
}

// New opens the data dir (locked against a second server), stores and
// transport. It does not join or bootstrap yet. Errors name the file.
func New(cfg Config) (_ *Node, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("component", "cluster", "server", cfg.Name)
	n := &Node{
		cfg:           cfg,
		log:           log,
		hclog:         newHCLog(cfg.Logger.With("server", cfg.Name), "raft"),
		notifyCh:      make(chan bool, notifyBuffer),
		leaderChanged: make(chan struct{}),
	}
	// Check the timings before touching the data dir.
	if err := raft.ValidateConfig(n.raftConfig()); err != nil {
		return nil, fmt.Errorf("config: raft: %w", err)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			n.cancel()
			if n.trans != nil {
				n.trans.Close()
			}
			if n.st != nil {
				n.st.close()
			}
		}
	}()

	if n.st, err = openStorage(cfg.DataDir, n.hclog.Named("snapshots")); err != nil {
		return nil, err
	}
	id, err := readClusterID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if id != "" {
		n.clusterID.Store(&id)
	}
	if n.peers, err = readPeers(cfg.DataDir); err != nil {
		return nil, err
	}
	if n.hadState, err = n.st.hasState(); err != nil {
		return nil, fmt.Errorf("read raft state in %s: %w", n.st.raftDir, err)
	}
	n.fresh.Store(!n.hadState)
	var stream *streamLayer
	if n.trans, stream, err = newTransport(cfg, n.hclog.Named("net")); err != nil {
		return nil, err
	}
	n.raftAddr = stream.Addr().String()
	n.apiAddr = net.JoinHostPort(cfg.AdvertiseAddr, strconv.Itoa(cfg.APIPort))

	storeCfg := cfg.Store
	if storeCfg.Logger == nil {
		storeCfg.Logger = cfg.Logger.With("component", "fsm", "server", cfg.Name)
	}
	n.store = fsm.New(storeCfg)
	n.fsm = &fsmAdapter{Store: n.store}

	n.http = cfg.HTTPClient
	if n.http == nil {
		n.http, n.ownHTTP = newHTTPClient(cfg.Network), true
	}
	n.gossip = newGossipState(n)
	n.leaderReads = newReadBatcher(n.ctx, n.leaderReadIndex)
	n.followerReads = newReadBatcher(n.ctx, n.remoteReadIndex)
	n.applied = newAppliedWaiter(n)
	if n.metrics, err = newMetrics(n, cfg.Registerer); err != nil {
		return nil, err
	}
	return n, nil
}

// raftConfig is raft's configuration from ours.
func (n *Node) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.Name)
	rc.HeartbeatTimeout = n.cfg.Timing.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.Timing.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.Timing.LeaderLeaseTimeout
	rc.CommitTimeout = n.cfg.Timing.CommitTimeout
	rc.MaxAppendEntries = maxAppendEntries
	rc.BatchApplyCh = true
	// A removed server stays up as a follower without a vote, so the leader
	// can add it back if it is alive; shutting it down would leave a voter
	// that never answers once re-added.
	rc.ShutdownOnRemove = false
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.SnapshotInterval = n.cfg.SnapshotInterval
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.NotifyCh = n.notifyCh
	rc.Logger = n.hclog
	rc.NoLegacyTelemetry = true
	return rc
}

// Start joins gossip and bootstraps or rejoins Raft. It returns once the
// node runs; the cluster may still be forming (see WaitLeader). After a
// failed Start, Shutdown still has to be called to release the data dir.
func (n *Node) Start(ctx context.Context) error {
	if !n.started.CompareAndSwap(false, true) {
		return errors.New("node already started")
	}
	if n.closing.Load() {
		return ErrShutdown
	}
	if err := n.startGossip(); err != nil {
		return err
	}
	if addrs := n.joinAddrs(); len(addrs) > 0 {
		timeout := n.cfg.JoinTimeout
		if n.hadState {
			// Its Raft configuration already knows the peers: a short try
			// (long enough to meet another cluster and refuse it), then the
			// rest in the background, so a whole cluster restarting at once
			// does not wait out the join timeout on each server.
			timeout = min(timeout, restartJoinTimeout)
		}
		if err := n.join(ctx, addrs, timeout); err != nil {
			if !n.hadState || errors.Is(err, ErrClusterIDMismatch) || ctx.Err() != nil {
				return err
			}
			// Its Raft configuration knows the peers; gossip can catch up.
			n.log.Warn("join failed; raft state exists, so starting anyway and retrying the join", "err", err)
			n.wg.Add(1)
			go n.retryJoin(addrs)
		}
	}

	// Only now, with the join accepted, is raft.db opened read-write.
	if err := n.st.openLog(n.hclog.Named("snapshots")); err != nil {
		return err
	}
	n.fsm.snaps = n.st.snaps
	rc := n.raftConfig()
	r, err := raft.NewRaft(rc, n.fsm, n.st.logs, n.st.bolt, n.st.snaps, n.trans)
	if err != nil {
		return fmt.Errorf("start raft in %s: %w", n.st.raftDir, err)
	}
	n.raftPtr.Store(r)

	obsCh := make(chan raft.Observation, 16)
	n.observer = raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(n.observer)

	n.wg.Add(5)
	go n.rememberPeers(n.MembershipChanges())
	go n.watchLeader(obsCh)
	go n.runLeadership()
	go n.runMaintenance()
	go n.runReconnect()
	if !n.hadState && n.cfg.BootstrapExpect > 0 {
		n.wg.Add(1)
		go n.runBootstrap()
	}
	n.log.Info("started", "raft", n.raftAddr, "gossip", n.gossipAddr, "api", n.apiAddr,
		"existing_state", n.hadState, "cluster_id", n.ClusterID())
	return nil
}

// Shutdown leaves gracefully: a leader transfers leadership first, then the
// node leaves gossip, stops Raft, closes the stores and releases the data
// dir. It is idempotent.
func (n *Node) Shutdown(ctx context.Context) error { return n.stop(ctx, true) }

// Close stops the node abruptly, as a crash would (no leadership transfer,
// no gossip leave: the others see it fail), but still closes the stores and
// releases the lock. Tests use it to kill a server; Shutdown after Close is
// a no-op.
func (n *Node) Close() error { return n.stop(context.Background(), false) }

func (n *Node) stop(ctx context.Context, graceful bool) error {
	n.stopOnce.Do(func() { n.stopErr = n.doStop(ctx, graceful) })
	return n.stopErr
}

func (n *Node) doStop(ctx context.Context, graceful bool) error {
	n.closing.Store(true)
	var errs []error
	r := n.raftPtr.Load()
	if graceful && r != nil && r.State() == raft.Leader {
		n.transferOnShutdown(ctx, r)
	}
	// Gossip goes before Raft: the others should see us leave rather than
	// fail, and nothing may re-add us meanwhile.
	if ml := n.ml.Load(); ml != nil {
		if graceful {
			timeout := 3 * n.cfg.Timing.HeartbeatTimeout
			if d, ok := ctx.Deadline(); ok {
				timeout = min(timeout, max(time.Until(d), 0))
			}
			if err := ml.Leave(timeout); err != nil {
				n.log.Warn("gossip leave", "err", err)
			}
		}
		if err := ml.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("stop gossip: %w", err))
		}
	}
	// Stop our loops; the leadership loop stops the leader services and
	// waits for them (they may still commit through Raft until then).
	n.cancel()
	n.wg.Wait()
	if r != nil {
		r.DeregisterObserver(n.observer)
		if err := r.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("stop raft: %w", err))
		}
	} else if n.trans != nil {
		n.trans.Close() // raft closes it when it ran
	}
	if n.ownHTTP {
		n.http.CloseIdleConnections()
	}
	n.metrics.unregister()
	if err := n.st.close(); err != nil {
		errs = append(errs, err)
	}
	n.log.Info("stopped", "graceful", graceful)
	return errors.Join(errs...)
}

// transferOnShutdown hands leadership away so the cluster does not wait
// for an election timeout; bounded by raft (an election timeout) and ctx.
func (n *Node) transferOnShutdown(ctx context.Context, r *raft.Raft) {
	f := r.LeadershipTransfer()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			n.log.Warn("leadership transfer before shutdown", "err", err)
			return
		}
		n.log.Info("leadership transferred before shutdown")
	case <-ctx.Done():
		n.log.Warn("leadership transfer before shutdown", "err", ctx.Err())
	}
}

// raft returns the Raft instance, or an error before Start / after Shutdown.
func (n *Node) raft() (*raft.Raft, error) {
	if n.closing.Load() {
		return nil, ErrShutdown
	}
	r := n.raftPtr.Load()
	if r == nil {
		return nil, ErrNotStarted
	}
	return r, nil
}

// Store is the local state machine, for local (possibly stale) reads and watches.
func (n *Node) Store() *fsm.Store { return n.store }

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool {
	r, err := n.raft()
	return err == nil && r.State() == raft.Leader
}

// Leader returns the leader's server ID and API address ("" when none).
// The address comes from the leader's gossip metadata; until gossip has it
// the address is "".
func (n *Node) Leader() (id, apiAddr string) {
	r, err := n.raft()
	if err != nil {
		return "", ""
	}
	_, sid := r.LeaderWithID()
	id = string(sid)
	switch {
	case id == "":
		return "", ""
	case id == n.cfg.Name:
		return id, n.apiAddr
	}
	if m, ok := n.gossip.get(id); ok {
		return id, m.Meta[MetaAPIAddr]
	}
	return id, ""
}

// WaitLeader blocks until a leader and its API address are known.
func (n *Node) WaitLeader(ctx context.Context) error {
	for {
		changed := n.leaderChangedCh()
		if id, addr := n.Leader(); id != "" && addr != "" {
			return nil
		}
		if n.closing.Load() {
			return ErrShutdown
		}
		t := time.NewTimer(50 * time.Millisecond) // gossip metadata has no notification
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		}
		t.Stop()
	}
}

func (n *Node) leaderChangedCh() <-chan struct{} {
	n.leaderMu.Lock()
	defer n.leaderMu.Unlock()
	return n.leaderChanged
}

func (n *Node) signalLeaderChange() {
	n.leaderMu.Lock()
	close(n.leaderChanged)
	n.leaderChanged = make(chan struct{})
	n.leaderMu.Unlock()
}

// watchLeader turns raft's leader observations into leaderChanged signals.
func (n *Node) watchLeader(ch <-chan raft.Observation) {
	defer n.wg.Done()
	for {
		select {
		case <-ch:
			n.signalLeaderChange()
		case <-n.ctx.Done():
			return
		}
	}
}

// ID is this server's Raft ID and gossip name (Config.Name).
func (n *Node) ID() string { return n.cfg.Name }

// APIAddr is the API address this node advertises (host:port).
func (n *Node) APIAddr() string { return n.apiAddr }

// RaftAddr is the Raft transport address this node advertises.
func (n *Node) RaftAddr() string { return n.raftAddr }

// GossipAddr is the gossip address this node advertises ("" before Start).
func (n *Node) GossipAddr() string {
	if n.ml.Load() == nil {
		return ""
	}
	return n.gossipAddr
}

// ClusterID is the cluster's ID, "" until this node has learnt it.
func (n *Node) ClusterID() string {
	if p := n.clusterID.Load(); p != nil {
		return *p
	}
	return ""
}

// AppliedIndex is the last Raft index this node handed to its store.
func (n *Node) AppliedIndex() uint64 {
	if r := n.raftPtr.Load(); r != nil {
		return r.AppliedIndex()
	}
	return 0
}

// Stats is raft's statistics plus this node's identity.
func (n *Node) Stats() map[string]string {
	s := map[string]string{}
	if r := n.raftPtr.Load(); r != nil && !n.closing.Load() {
		s = r.Stats()
	}
	s["id"] = n.cfg.Name
	s["cluster_id"] = n.ClusterID()
	s["raft_addr"] = n.raftAddr
	s["api_addr"] = n.apiAddr
	s["gossip_addr"] = n.GossipAddr()
	s["store_revision"] = strconv.FormatUint(n.store.Revision(), 10)
	return s
}
