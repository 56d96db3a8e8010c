package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnreachable is the error of a dial across a cut link, or to or from
// a crashed host.
var ErrUnreachable = errors.New("faultnet: host unreachable")

// networks numbers Networks so that two in one process use different
// address ranges, which keeps logs readable.
var networks atomic.Uint32

// Network is a set of hosts whose links can be cut. The zero value is not
// usable; call New.
type Network struct {
	id uint32

	mu    sync.Mutex
	hosts map[string]*Host // by IP string
	// changed is closed and replaced on every fault change, waking every
	// blocked read, write, dial and accept to look again.
	changed chan struct{}
}

// New returns an empty Network.
func New() *Network {
	return &Network{
		id:      networks.Add(1) % 250,
		hosts:   make(map[string]*Host),
		changed: make(chan struct{}),
	}
}

// Host is one machine on the Network: an address of its own, and the
// faults set on it. It implements cluster.Network.
type Host struct {
	n    *Network
	name string
	ip   net.IP

	// Guarded by n.mu.
	cut     map[*Host]bool
	cutAll  bool
	crashed bool
	paused  bool
	latency time.Duration
	conns   map[*conn]struct{}
}

// NewHost adds a host named name (for messages) with the next free
// loopback address.
func (n *Network) NewHost(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := len(n.hosts) + 1
	if k > 254 {
		panic("faultnet: too many hosts")
	}
	h := &Host{
		n:     n,
		name:  name,
		ip:    net.IPv4(127, 77, byte(n.id), byte(k)).To4(),
		cut:   make(map[*Host]bool),
		conns: make(map[*conn]struct{}),
	}
	n.hosts[h.ip.String()] = h
	return h
}

// HealAll removes every cut, pause and latency of every host.
func (n *Network) HealAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, h := range n.hosts {
		clear(h.cut)
		h.cutAll, h.crashed, h.paused, h.latency = false, false, false, 0
	}
	n.notifyLocked()
}

// notifyLocked wakes every waiter. Caller holds n.mu.
func (n *Network) notifyLocked() {
	close(n.changed)
	n.changed = make(chan struct{})
}

// hostOf returns the host with the address's IP, nil for an address
// outside the Network.
func (n *Network) hostOf(addr string) *Host {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hosts[ip.String()]
}

// cutLocked reports whether traffic between a and b (nil: outside the
// Network) is dropped. Caller holds n.mu.
func cutLocked(a, b *Host) bool {
	if a.cutAll || a.cut[b] {
		return true
	}
	return b != nil && (b.cutAll || b.cut[a])
}

// unreachableLocked reports whether a connection between a and b (nil:
// outside the Network) cannot be made: the link is cut or one of them
// crashed. The connections a crash closed are not held up: their peers see
// the close at once, as they would see a dead process's sockets reset.
// Caller holds n.mu.
func unreachableLocked(a, b *Host) bool {
	return cutLocked(a, b) || a.crashed || (b != nil && b.crashed)
}

// Name is the name given to NewHost.
func (h *Host) Name() string { return h.name }

// IP is the host's address, to use as the node's bind and advertise address.
func (h *Host) IP() string { return h.ip.String() }

func (h *Host) String() string { return h.name + "(" + h.ip.String() + ")" }

// Isolate cuts the links between h and each of peers, in both directions;
// with no peers it cuts h off from everything, inside the Network or not.
func (h *Host) Isolate(peers ...*Host) {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	if len(peers) == 0 {
		h.cutAll = true
	}
	for _, p := range peers {
		if p != h {
			h.cut[p] = true
		}
	}
	h.n.notifyLocked()
}

// Heal restores every link of h: the cuts h made and the cuts its peers
// made toward h.
func (h *Host) Heal() {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	clear(h.cut)
	h.cutAll = false
	for _, p := range h.n.hosts {
		delete(p.cut, h)
	}
	h.n.notifyLocked()
}

// Pause freezes the host's network until Resume (see the package comment).
func (h *Host) Pause() { h.setPaused(true) }

// Resume ends a Pause.
func (h *Host) Resume() { h.setPaused(false) }

func (h *Host) setPaused(p bool) {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	h.paused = p
	h.n.notifyLocked()
}

// SetLatency delays each write of h's connections by d (0 = none).
func (h *Host) SetLatency(d time.Duration) {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	h.latency = d
	h.n.notifyLocked()
}

// Crash makes h look like a machine whose process died: every connection
// of h is closed, and until Restart every dial to or from h fails with
// ErrUnreachable and its listeners drop what they accept. Stopping the node
// that runs on h is the caller's business; with Crash first, the node's own
// retries fail at once instead of waiting on peers.
func (h *Host) Crash() {
	h.n.mu.Lock()
	h.crashed = true
	h.n.notifyLocked()
	h.n.mu.Unlock()
	h.CloseConns()
}

// Restart ends a Crash.
func (h *Host) Restart() {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	h.crashed = false
	h.n.notifyLocked()
}

// CloseConns closes every open connection of h (not its listeners), as its
// peers would see a crash. Later dials and accepts work as before.
func (h *Host) CloseConns() {
	h.n.mu.Lock()
	conns := make([]*conn, 0, len(h.conns))
	for c := range h.conns {
		conns = append(conns, c)
	}
	h.n.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Listen listens on addr; an empty or unspecified IP in addr means the
// host's own address.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen on %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		addr = net.JoinHostPort(h.IP(), port)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return &listener{Listener: ln, h: h, closed: make(chan struct{})}, nil
}

// DialContext dials addr from the host's address. A paused host's dial
// waits for Resume (or ctx); a dial across a cut link fails with
// ErrUnreachable.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	peer := h.n.hostOf(addr)
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Source: &net.TCPAddr{IP: h.ip}, Err: fmt.Errorf("%s to %s: %w", h, addr, err)}
	}
	for {
		h.n.mu.Lock()
		paused, cut, changed := h.paused, unreachableLocked(h, peer), h.n.changed
		h.n.mu.Unlock()
		if cut {
			return nil, opErr(ErrUnreachable)
		}
		if !paused {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, opErr(ctx.Err())
		}
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: h.ip}}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return h.wrap(c, peer), nil
}

// wrap registers c as a connection of h with peer (nil: outside).
func (h *Host) wrap(c net.Conn, peer *Host) *conn {
	fc := &conn{
		Conn:   c,
		h:      h,
		peer:   peer,
		kick:   make(chan struct{}),
		closed: make(chan struct{}),
	}
	h.n.mu.Lock()
	h.conns[fc] = struct{}{}
	h.n.mu.Unlock()
	return fc
}

// blocked reports whether traffic on a conn of h with peer must wait, and
// the channel that is closed when that may have changed. Reads wait while
// the host is paused or the link is cut. Writes wait while the host is
// paused; across a cut link they go on into the socket buffers (as TCP
// keeps sending into a black hole until its window fills), and the peer's
// reads hold the bytes until the heal. A peer outside the Network has no
// such reads, so writes to it wait too.
func (h *Host) blocked(peer *Host, read bool) (bool, time.Duration, <-chan struct{}) {
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	cut := cutLocked(h, peer) && (read || peer == nil)
	return h.paused || cut, h.latency, h.n.changed
}

type listener struct {
	net.Listener
	h         *Host
	closeOnce sync.Once
	closed    chan struct{}
}

// Accept returns the next connection. A paused host accepts nothing until
// it resumes (the kernel still completes the handshakes, as it would for a
// stopped process). A connection from a host cut off from this one is
// dropped: it raced with the cut, and its SYN would have been lost.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := l.h.n.hostOf(c.RemoteAddr().String())
		for {
			l.h.n.mu.Lock()
			paused, cut, changed := l.h.paused, unreachableLocked(l.h, peer), l.h.n.changed
			l.h.n.mu.Unlock()
			if cut {
				c.Close()
				break
			}
			if !paused {
				return l.h.wrap(c, peer), nil
			}
			select {
			case <-changed:
			case <-l.closed:
				c.Close()
				return nil, net.ErrClosed
			}
		}
	}
}

func (l *listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// conn is a connection of host h with peer (nil: outside the Network).
type conn struct {
	net.Conn
	h    *Host
	peer *Host

	rmu sync.Mutex // serialises Read: pending belongs to the reader
	// pending holds bytes (and an error) read from the socket but not yet
	// delivered because the link was blocked when they arrived.
	pending    []byte
	pendingErr error

	mu            sync.Mutex
	readDeadline  time.Time
	writeDeadline time.Time
	kick          chan struct{} // closed and replaced when a deadline changes

	closeOnce sync.Once
	closed    chan struct{}
}

// Read delivers bytes only while the link is open: bytes that arrive while
// it is blocked wait in pending until it opens again.
func (c *conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pending) == 0 && c.pendingErr == nil {
		n, err := c.Conn.Read(p)
		if isTimeout(err) {
			return n, err // the caller's own deadline: report it now
		}
		c.pending = append(c.pending, p[:n]...)
		c.pendingErr = err
	}
	if err := c.wait(true); err != nil {
		return 0, c.opErr("read", err)
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	if len(c.pending) > 0 {
		return n, nil
	}
	err := c.pendingErr
	c.pending, c.pendingErr = nil, nil
	return n, err
}

// Write waits while the host is paused (see Host.blocked), then for the
// host's latency, then writes.
func (c *conn) Write(p []byte) (int, error) {
	if err := c.wait(false); err != nil {
		return 0, c.opErr("write", err)
	}
	return c.Conn.Write(p)
}

// wait blocks while the conn's traffic is blocked, then, for writes, for
// the host's latency; it gives up at the deadline of that direction or on
// Close.
func (c *conn) wait(read bool) error {
	for {
		blocked, latency, changed := c.h.blocked(c.peer, read)
		if !blocked {
			if read || latency == 0 {
				return nil
			}
			return c.sleep(latency)
		}
		if err := c.until(read, changed, nil); err != nil {
			return err
		}
	}
}

// sleep waits d for a write, within its deadline.
func (c *conn) sleep(d time.Duration) error {
	end := time.Now().Add(d)
	for {
		left := time.Until(end)
		if left <= 0 {
			return nil
		}
		t := time.NewTimer(left)
		err := c.until(false, nil, t.C)
		t.Stop()
		if err != nil {
			return err
		}
	}
}

// until returns nil when changed or tick fires or a deadline is set, an
// error when the direction's deadline passes or the conn is closed.
func (c *conn) until(read bool, changed <-chan struct{}, tick <-chan time.Time) error {
	c.mu.Lock()
	deadline, kick := c.writeDeadline, c.kick
	if read {
		deadline = c.readDeadline
	}
	c.mu.Unlock()
	var expire <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-changed:
	case <-tick:
	case <-kick:
	case <-expire:
		return os.ErrDeadlineExceeded
	case <-c.closed:
		return net.ErrClosed
	}
	return nil
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func (c *conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.h.n.mu.Lock()
		delete(c.h.conns, c)
		c.h.n.mu.Unlock()
	})
	return c.Conn.Close()
}

func (c *conn) SetDeadline(t time.Time) error {
	c.setDeadlines(&t, &t)
	return c.Conn.SetDeadline(t)
}

func (c *conn) SetReadDeadline(t time.Time) error {
	c.setDeadlines(&t, nil)
	return c.Conn.SetReadDeadline(t)
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	c.setDeadlines(nil, &t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *conn) setDeadlines(read, write *time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if read != nil {
		c.readDeadline = *read
	}
	if write != nil {
		c.writeDeadline = *write
	}
	close(c.kick)
	c.kick = make(chan struct{})
}
