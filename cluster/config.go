package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla/fsm"
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
	// ReconcileInterval is how often the leader reconciles Raft membership
	// with gossip (it also reacts to gossip events at once).
	ReconcileInterval time.Duration
	// ExpiryInterval is how often the leader deletes expired keys.
	ExpiryInterval time.Duration
}

// ProductionTiming is the default: hashicorp/raft's defaults and
// memberlist's LAN profile.
//
// Heartbeat and election timeouts are half of raft's defaults: masters sit on
// one LAN, and with 1 s a follower noticed a dead leader 1–2 s late and the
// first vote was often refused by a follower still trusting the old leader,
// putting failover p99 near 3 s (BENCHMARKS.md). At 500 ms no spurious
// election was seen under 1,024 concurrent writers.
func ProductionTiming() Timing {
	return Timing{
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		CommitTimeout:      50 * time.Millisecond,
		GossipProfile:      "lan",
		ApplyTimeout:       10 * time.Second,
		ReconcileInterval:  5 * time.Second,
		ExpiryInterval:     time.Second,
	}
}

// TestTiming is short timings for in-process tests on loopback. They are a
// little longer than the shortest that work so that -race on a loaded
// two-core machine does not cause spurious elections.
func TestTiming() Timing {
	return Timing{
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 150 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		GossipProfile:      "local",
		ApplyTimeout:       5 * time.Second,
		ReconcileInterval:  200 * time.Millisecond,
		ExpiryInterval:     100 * time.Millisecond,
	}
}

// withDefaults fills zero fields from ProductionTiming.
func (t Timing) withDefaults() Timing {
	d := ProductionTiming()
	if t.HeartbeatTimeout <= 0 {
		t.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if t.ElectionTimeout <= 0 {
		t.ElectionTimeout = d.ElectionTimeout
	}
	if t.LeaderLeaseTimeout <= 0 {
		t.LeaderLeaseTimeout = min(d.LeaderLeaseTimeout, t.HeartbeatTimeout)
	}
	if t.CommitTimeout <= 0 {
		t.CommitTimeout = d.CommitTimeout
	}
	if t.GossipProfile == "" {
		t.GossipProfile = d.GossipProfile
	}
	if t.ApplyTimeout <= 0 {
		t.ApplyTimeout = d.ApplyTimeout
	}
	if t.ReconcileInterval <= 0 {
		t.ReconcileInterval = d.ReconcileInterval
	}
	if t.ExpiryInterval <= 0 {
		t.ExpiryInterval = d.ExpiryInterval
	}
	return t
}

// leaderWait bounds how long an operation waits for a usable leader before
// giving up with ErrNoLeader: long enough for a failover (failure detection
// plus a pre-vote and a vote round, with some unlucky split votes).
func (t Timing) leaderWait() time.Duration {
	return 2*t.HeartbeatTimeout + 4*t.ElectionTimeout
}

// Network is the seam through which every connection between masters goes
// (Raft transport, write forwarding, read index). TLS (the security issue)
// and the tests' fault injection plug in here. nil = plain TCP.
type Network interface {
	Listen(network, addr string) (net.Listener, error)
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// plainNetwork is the nil Network: net.Listen and a net.Dialer.
type plainNetwork struct{ d net.Dialer }

func (p *plainNetwork) Listen(network, addr string) (net.Listener, error) {
	return net.Listen(network, addr)
}

func (p *plainNetwork) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.d.DialContext(ctx, network, addr)
}

// LeaderService is leader-only work: Run is called once per term after the
// leadership Barrier, with a context cancelled when leadership is lost or the
// node shuts down; it must return soon after.
type LeaderService struct {
	Name string
	Run  func(ctx context.Context) error
}

// Default ports and sizes.
const (
	DefaultRaftPort          = 6444
	DefaultGossipPort        = 7946
	DefaultAPIPort           = 6443
	DefaultDeadServerCleanup = 5 * time.Minute
	DefaultSnapshotThreshold = 8192
	DefaultSnapshotInterval  = 120 * time.Second
	DefaultTrailingLogs      = 10240
	DefaultJoinTimeout       = 30 * time.Second

	// AnyPort, given as RaftPort or GossipPort, lets the system pick a free
	// port (tests); RaftAddr and GossipAddr tell which one it picked.
	AnyPort = -1
)

// Config configures a Node. Zero value = defaults where a default exists.
type Config struct {
	Name            string // Raft server ID and gossip node name (required)
	DataDir         string // required; raft/ lives under it
	BindAddr        string // default 0.0.0.0
	AdvertiseAddr   string // default: first non-loopback address, or BindAddr when it is specific
	RaftPort        int    // default 6444; AnyPort = pick a free one
	GossipPort      int    // default 7946; AnyPort = pick a free one
	APIPort         int    // default 6443; advertised in gossip metadata; forwarding targets the leader's
	BootstrapExpect int    // servers to see before bootstrapping a new cluster (0 = do not bootstrap; join)
	Join            []string
	// JoinTimeout bounds how long Start retries Join before giving up
	// (default 30s; see the package doc for servers with existing state).
	JoinTimeout time.Duration
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
	// APIScheme is the scheme of the masters' API endpoints: "http"
	// (default) or "https" (then HTTPClient carries the TLS config).
	APIScheme  string
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil = no metrics
	// LeaderServices run while this node leads.
	LeaderServices []LeaderService

	// GossipKeys encrypt gossip (AES-256-GCM, GossipKeySize bytes each,
	// primary first); nil = gossip in the clear. They seed the cluster's
	// keyring (keyring.go); after that the store's keyring rules.
	GossipKeys [][]byte
	// KeyringFile is where this server saves the gossip keyring it applied
	// from the store; when the file exists, Start uses it instead of
	// GossipKeys (it holds the newest keys this server knows). "" = not saved.
	KeyringFile string
	// Seal seals the gossip keyring in the store (the secrets-at-rest
	// keyring); nil = stored in the clear.
	Seal Sealer
	// PreBootstrap, when set, runs on a fresh server once BootstrapExpect
	// servers are seen, with those servers (self included, sorted by name),
	// just before it bootstraps Raft. An error is logged and the attempt is
	// made again on the next tick, so it may run more than once.
	PreBootstrap func(ctx context.Context, servers []Member) error
}

// Sealer encrypts and decrypts values at rest (satisfied by the secrets
// keyring).
type Sealer interface {
	Encrypt(plain []byte) ([]byte, error)
	Decrypt(sealed []byte) ([]byte, error)
}

// withDefaults validates cfg and fills defaults.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		return c, errors.New("config: Name is required")
	}
	if c.DataDir == "" {
		return c, errors.New("config: DataDir is required")
	}
	if c.BindAddr == "" {
		c.BindAddr = "0.0.0.0"
	}
	if net.ParseIP(c.BindAddr) == nil {
		return c, fmt.Errorf("config: BindAddr %q is not an IP address", c.BindAddr)
	}
	if c.AdvertiseAddr == "" {
		ip, err := defaultAdvertise(c.BindAddr)
		if err != nil {
			return c, err
		}
		c.AdvertiseAddr = ip
	}
	if ip := net.ParseIP(c.AdvertiseAddr); ip == nil || ip.IsUnspecified() {
		return c, fmt.Errorf("config: AdvertiseAddr %q is not a usable IP address", c.AdvertiseAddr)
	}
	if c.RaftPort == 0 {
		c.RaftPort = DefaultRaftPort
	}
	if c.GossipPort == 0 {
		c.GossipPort = DefaultGossipPort
	}
	if c.APIPort == 0 {
		c.APIPort = DefaultAPIPort
	}
	if c.BootstrapExpect < 0 {
		return c, fmt.Errorf("config: BootstrapExpect %d is negative", c.BootstrapExpect)
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.DeadServerCleanup <= 0 {
		c.DeadServerCleanup = DefaultDeadServerCleanup
	}
	c.Timing = c.Timing.withDefaults()
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotInterval <= 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.Network == nil {
		c.Network = &plainNetwork{}
	}
	switch c.APIScheme {
	case "":
		c.APIScheme = "http"
	case "http", "https":
	default:
		return c, fmt.Errorf("config: APIScheme %q is not http or https", c.APIScheme)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.GossipKeys) > 0 {
		if err := ValidateGossipKeys(c.GossipKeys); err != nil {
			return c, fmt.Errorf("config: GossipKeys: %w", err)
		}
	}
	for _, s := range c.LeaderServices {
		if s.Run == nil {
			return c, fmt.Errorf("config: leader service %q has no Run", s.Name)
		}
	}
	return c, nil
}

// defaultAdvertise picks the address other members reach us at: the bind
// address when it is specific, else the first non-loopback IPv4 address of
// an interface that is up, else loopback (a single machine).
func defaultAdvertise(bind string) (string, error) {
	if ip := net.ParseIP(bind); ip != nil && !ip.IsUnspecified() {
		return bind, nil
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("config: list interfaces for the advertise address: %w", err)
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
				continue
			}
			return ipn.IP.String(), nil
		}
	}
	return "127.0.0.1", nil
}
