package netproxy

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// Defaults for the zero values of dataplaneOptions.
const (
	defaultDialTimeout    = time.Second
	defaultDrainTimeout   = 30 * time.Second
	defaultUDPIdleTimeout = 60 * time.Second
)

// startFrontend binds spec.Addr and serves it until Close, spreading
// traffic over set.
func startFrontend(spec frontendSpec, set BackendSet, opts *dataplaneOptions) (frontend, error) {
	var o dataplaneOptions
	if opts != nil {
		o = *opts // a copy: opts is shared by every frontend of a proxy
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = defaultDrainTimeout
	}
	if o.UDPIdleTimeout <= 0 {
		o.UDPIdleTimeout = defaultUDPIdleTimeout
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	o.Logger = o.Logger.With("service", spec.Service.String(), "protocol", string(spec.Protocol), "addr", spec.Addr.String())
	p := newPicker(set, o.NodeAlive)
	switch spec.Protocol {
	case corev1.ProtocolTCP:
		return startTCP(spec, p, &o)
	case corev1.ProtocolUDP:
		return startUDP(spec, p, &o)
	default:
		return nil, fmt.Errorf("netproxy: protocol %q is not proxied", spec.Protocol)
	}
}

// listenConfig binds with IP_FREEBIND, so a frontend can listen on its
// ClusterIP before the address is on lo: the control plane adds the
// address only once the listener is there, and a connection never finds
// the address without it (which the kernel would refuse).
var listenConfig = net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if strings.HasSuffix(network, "6") {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}}

// network is "tcp4"/"udp4" or "tcp6"/"udp6" for addr: a frontend listens
// in its address's own family only, so an unspecified IPv4 address does
// not turn into a dual-stack socket.
func network(proto string, addr netip.AddrPort) string {
	if addr.Addr().Unmap().Is4() {
		return proto + "4"
	}
	return proto + "6"
}

// picker chooses the endpoint for a new connection or flow: round robin
// over the endpoints whose node is alive, and, when the set asks for
// ClientIP affinity, the same endpoint for a client as last time.
//
// One mutex guards it all. A choice is a few map and slice reads, made
// once per connection (not per packet), so the lock is never held long
// and an atomic copy-on-write set would buy little but complexity.
type picker struct {
	alive func(node string) bool // nil: every node is
	now   func() time.Time       // time.Now; tests move it

	mu    sync.Mutex
	set   BackendSet
	index map[netip.AddrPort]Endpoint // set.Endpoints by address
	next  int                         // round-robin position in set.Endpoints
	// affinity maps a client IP to its endpoint, when the set has an
	// AffinityTimeout. Entries not seen for the timeout are dead and are
	// swept at most once per timeout, so the map holds at most the
	// clients of the last two timeouts.
	affinity  map[netip.Addr]affinityEntry
	lastSweep time.Time
}

type affinityEntry struct {
	ep   netip.AddrPort
	seen time.Time
}

func newPicker(set BackendSet, alive func(string) bool) *picker {
	p := &picker{alive: alive, now: time.Now}
	p.update(set)
	return p
}

// update swaps set in. Affinity entries survive if their endpoint does.
func (p *picker) update(set BackendSet) {
	set.Endpoints = slices.Clone(set.Endpoints) // the caller may reuse its slice
	index := make(map[netip.AddrPort]Endpoint, len(set.Endpoints))
	for _, e := range set.Endpoints {
		index[e.Addr] = e
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.set, p.index = set, index
	if set.AffinityTimeout <= 0 {
		p.affinity = nil
		return
	}
	if p.affinity == nil {
		p.affinity = map[netip.Addr]affinityEntry{}
	}
	for client, e := range p.affinity {
		if _, ok := index[e.ep]; !ok {
			delete(p.affinity, client)
		}
	}
}

// backends is the set in use.
func (p *picker) backends() BackendSet {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.set
	s.Endpoints = slices.Clone(s.Endpoints)
	return s
}

// contains reports whether addr is in the current set (alive or not: a
// dead node's connections are left to fail or finish by themselves).
func (p *picker) contains(addr netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.index[addr]
	return ok
}

// pick returns the endpoint for a connection from client, skipping those
// in tried (already failed for this connection). ok is false when no
// endpoint on a live node is left.
func (p *picker) pick(client netip.Addr, tried []netip.AddrPort) (ep Endpoint, ok bool) {
	client = client.Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	timeout := p.set.AffinityTimeout
	if timeout <= 0 {
		return p.roundRobinLocked(tried)
	}
	now := p.now()
	if now.Sub(p.lastSweep) >= timeout {
		for c, e := range p.affinity {
			if now.Sub(e.seen) > timeout {
				delete(p.affinity, c)
			}
		}
		p.lastSweep = now
	}
	if e, found := p.affinity[client]; found && now.Sub(e.seen) <= timeout {
		if ep, inSet := p.index[e.ep]; inSet && p.usableLocked(ep, tried) {
			p.affinity[client] = affinityEntry{ep: e.ep, seen: now}
			return ep, true
		}
	}
	if ep, ok = p.roundRobinLocked(tried); ok {
		p.affinity[client] = affinityEntry{ep: ep.Addr, seen: now}
	}
	return ep, ok
}

func (p *picker) roundRobinLocked(tried []netip.AddrPort) (Endpoint, bool) {
	eps := p.set.Endpoints
	for i := range eps {
		j := (p.next + i) % len(eps)
		if p.usableLocked(eps[j], tried) {
			p.next = (j + 1) % len(eps)
			return eps[j], true
		}
	}
	return Endpoint{}, false
}

func (p *picker) usableLocked(ep Endpoint, tried []netip.AddrPort) bool {
	if slices.Contains(tried, ep.Addr) {
		return false
	}
	return ep.Node == "" || p.alive == nil || p.alive(ep.Node)
}
