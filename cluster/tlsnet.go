package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
)

// TLSNetwork is a Network whose connections are TLS: listeners speak TLS
// with server and dials with client. Masters use it with the mutual TLS
// pair of internal/pki, so only a holder of a server certificate from this
// cluster's CA gets a Raft connection (or forwards a write).
//
// A dial completes the handshake before it returns, so a refused peer is an
// error at Dial (raft then tries again, as for any unreachable peer), not a
// broken stream later. An accepted connection hands its handshake to the
// first Read: doing it in Accept would let one silent client stall the
// accept loop, and raft's per-connection goroutine reads at once anyway.
func TLSNetwork(base Network, server, client *tls.Config) Network {
	if base == nil {
		base = &plainNetwork{}
	}
	return &tlsNetwork{base: base, server: server, client: client}
}

type tlsNetwork struct {
	base           Network
	server, client *tls.Config
}

func (t *tlsNetwork) Listen(network, addr string) (net.Listener, error) {
	ln, err := t.base.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, t.server), nil
}

func (t *tlsNetwork) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	raw, err := t.base.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, t.client)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return c, nil
}
