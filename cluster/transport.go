package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

const (
	raftMaxPool = 3
	// raftIOTimeout is the transport's I/O deadline per RPC (scaled up for
	// snapshot installs by raft).
	raftIOTimeout = 10 * time.Second
)

// streamLayer is raft's StreamLayer over Config.Network: the listener comes
// from Network.Listen and dials go through Network.DialContext, so TLS and
// fault injection apply to Raft traffic too.
type streamLayer struct {
	net.Listener
	network   Network
	advertise net.Addr
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.network.DialContext(ctx, "tcp", string(addr))
}

// Addr is the advertised address: raft puts it into configurations, so it
// must be reachable by the other masters, never 0.0.0.0.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// newTransport listens on the Raft port and wraps the listener in raft's
// NetworkTransport.
func newTransport(cfg Config, logger hclog.Logger) (*raft.NetworkTransport, *streamLayer, error) {
	port := cfg.RaftPort
	if port == AnyPort {
		port = 0
	}
	bind := net.JoinHostPort(cfg.BindAddr, strconv.Itoa(port))
	ln, err := cfg.Network.Listen("tcp", bind)
	if err != nil {
		return nil, nil, fmt.Errorf("listen for raft on %s: %w", bind, err)
	}
	tcp, ok := ln.Addr().(*net.TCPAddr)
	if !ok {
		ln.Close()
		return nil, nil, fmt.Errorf("listen for raft on %s: not a TCP listener (%T)", bind, ln.Addr())
	}
	stream := &streamLayer{
		Listener:  ln,
		network:   cfg.Network,
		advertise: &net.TCPAddr{IP: net.ParseIP(cfg.AdvertiseAddr), Port: tcp.Port},
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: raftMaxPool,
		Timeout: raftIOTimeout,
		Logger:  logger,
		// Below 2, raft does not pipeline AppendEntries. With raft v1.8.0's
		// pipeline a follower rejecting a send (a newer term) can leave the
		// send loop blocked for good: that follower is never replicated to
		// again while heartbeats keep it from calling an election, and
		// raft.Shutdown hangs (hashicorp/raft#612). The linearizability
		// nemesis hit it about one run in four; with this setting, none in
		// 50 soak seeds.
		MaxRPCsInFlight: 1,
	})
	return trans, stream, nil
}

// Forwarding connections: a leader cut off by a partition drops packets
// instead of refusing them, so without these bounds a dial waits for the
// kernel (minutes) and a pooled connection to it is never found dead.
const (
	// forwardDialTimeout bounds connecting to another master (including a
	// TLS handshake done by Network).
	forwardDialTimeout = 2 * time.Second
	// forwardKeepAlive is the idle time before TCP keep-alive probes and the
	// interval between them; three unanswered probes close the connection.
	forwardKeepAlive = 5 * time.Second
)

// newHTTPClient is the client for the other masters' internal endpoints:
// one shared transport, so forwarded writes reuse kept-alive connections,
// dialling through Network. It sets no overall response timeout: a
// snapshot restore may legitimately take long; forwardApply bounds writes.
func newHTTPClient(network Network) *http.Client {
	dial := func(ctx context.Context, nw, addr string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
		defer cancel()
		c, err := network.DialContext(ctx, nw, addr)
		if err != nil {
			return nil, err
		}
		// Only a bare TCP connection has the knob; a Network that wraps
		// connections keeps its own settings.
		if kc, ok := c.(interface {
			SetKeepAliveConfig(net.KeepAliveConfig) error
		}); ok {
			_ = kc.SetKeepAliveConfig(net.KeepAliveConfig{
				Enable: true, Idle: forwardKeepAlive, Interval: forwardKeepAlive, Count: 3,
			})
		}
		return c, nil
	}
	return &http.Client{Transport: &http.Transport{
		DialContext:         dial,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// Bodies are small binary transactions; compression costs more than it saves.
		DisableCompression: true,
	}}
}
