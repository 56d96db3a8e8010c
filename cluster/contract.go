package cluster

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla/fsm"
)

// CONTRACT STUB: the cluster implementer replaces the bodies and may split
// this file by concern; the exported signatures are what cmd, api and the
// tests use. Changing one means changing its callers.

// Errors callers map (api: ErrNotLeader/ErrNoLeader → 503, ErrOutcomeUnknown → 504).
var (
	// ErrNotLeader: this node is not the leader and the operation needs the leader.
	ErrNotLeader = errors.New("not the leader")
	// ErrNoLeader: no leader is known (election in progress or no quorum).
	ErrNoLeader = errors.New("no leader")
	// ErrOutcomeUnknown: the write may or may not have been committed
	// (raft.ErrLeadershipLost, a forwarding connection lost after sending).
	ErrOutcomeUnknown = errors.New("outcome unknown")
	// ErrShutdown: the node is shutting down.
	ErrShutdown = errors.New("node is shutting down")
)

// Timing is the set of Raft and gossip timings.
type Timing struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// GossipProfile: "lan" (production) or "local" (tests).
	GossipProfile string
	// ApplyTimeout bounds one raft.Apply enqueue/commit wait.
	ApplyTimeout time.Duration
}

// ProductionTiming is the default.
func ProductionTiming() Timing { panic("unimplemented") }

// TestTiming is short timings for in-process tests on loopback.
func TestTiming() Timing { panic("unimplemented") }

// Network is the seam through which every connection between masters goes
// (Raft transport, write forwarding, read index). TLS (the security issue)
// and the tests' fault injection plug in here. nil = plain TCP.
type Network interface {
	Listen(network, addr string) (net.Listener, error)
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// LeaderService is leader-only work: Run is called once per term after the
// leadership Barrier, with a context cancelled when leadership is lost or the
// node shuts down; it must return soon after.
type LeaderService struct {
	Name string
	Run  func(ctx context.Context) error
}

// Config configures a Node. Zero value = defaults where a default exists.
type Config struct {
	Name            string // Raft server ID and gossip node name (required)
	DataDir         string // required; raft/ lives under it
	BindAddr        string // default 0.0.0.0
	AdvertiseAddr   string // default: first non-loopback address, or BindAddr when it is specific
	RaftPort        int    // default 6444
	GossipPort      int    // default 7946
	APIPort         int    // default 6443; advertised in gossip metadata; forwarding targets the leader's
	BootstrapExpect int    // servers to see before bootstrapping a new cluster (0 = do not bootstrap; join)
	Join            []string
	// DeadServerCleanup: a server dead this long is removed from Raft, only
	// while quorum stays safe (default 5m).
	DeadServerCleanup time.Duration
	Timing            Timing // zero = ProductionTiming()
	SnapshotThreshold uint64 // default 8192
	SnapshotInterval  time.Duration
	TrailingLogs      uint64 // default 10240
	Store             fsm.Config
	Network           Network
	// HTTPClient forwards to the leader's internal endpoints; nil = built from Network.
	HTTPClient *http.Client
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil = no metrics
	// LeaderServices run while this node leads.
	LeaderServices []LeaderService
}

// Node is one master: Raft member, gossip member, store.
type Node struct{}

// New opens the data dir (locked against a second server), stores and
// transport. It does not join or bootstrap yet. Errors name the file.
func New(cfg Config) (*Node, error) { panic("unimplemented") }

// Start joins gossip and bootstraps or rejoins Raft. It returns once the
// node runs; the cluster may still be forming (see WaitLeader).
func (n *Node) Start(ctx context.Context) error { panic("unimplemented") }

// Shutdown leaves gracefully: a leader transfers leadership first.
func (n *Node) Shutdown(ctx context.Context) error { panic("unimplemented") }

// Apply commits a transaction from any node; a follower forwards it to the
// leader. It validates limits first (fsm.Txn.Validate).
func (n *Node) Apply(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	panic("unimplemented")
}

// ReadIndex returns once this node's store has applied every write committed
// before the call, so local reads after it are linearizable.
func (n *Node) ReadIndex(ctx context.Context) error { panic("unimplemented") }

// Store is the local state machine, for local (possibly stale) reads and watches.
func (n *Node) Store() *fsm.Store { panic("unimplemented") }

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { panic("unimplemented") }

// Leader returns the leader's server ID and API address ("" when none).
func (n *Node) Leader() (id, apiAddr string) { panic("unimplemented") }

// WaitLeader blocks until a leader is known.
func (n *Node) WaitLeader(ctx context.Context) error { panic("unimplemented") }

// Peer is one Raft server as list-peers shows it.
type Peer struct {
	ID        string `json:"id"`
	Address   string `json:"address"`
	State     string `json:"state"` // leader, follower, candidate, or unknown
	Voter     bool   `json:"voter"`
	LastIndex uint64 `json:"lastIndex"`
}

// Peers lists the Raft configuration with each server's state.
func (n *Node) Peers(ctx context.Context) ([]Peer, error) { panic("unimplemented") }

// RemovePeer removes a server from Raft (leader only; forwarded).
func (n *Node) RemovePeer(ctx context.Context, id string) error { panic("unimplemented") }

// TransferLeadership hands leadership to id ("" = any).
func (n *Node) TransferLeadership(ctx context.Context, id string) error { panic("unimplemented") }

// Member is one gossip member (server or agent).
type Member struct {
	Name   string            `json:"name"`
	Addr   string            `json:"addr"`
	Status string            `json:"status"` // alive, suspect, dead, left
	Role   string            `json:"role"`   // server or agent
	Meta   map[string]string `json:"meta"`
}

// Members lists the gossip pool.
func (n *Node) Members() []Member { panic("unimplemented") }

// Handler serves the internal and operator endpoints, mounted on the API port:
// /internal/v1/apply, /internal/v1/readindex, /flotilla/v1/operator/...
func (n *Node) Handler() http.Handler { panic("unimplemented") }
