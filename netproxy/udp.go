package netproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxDatagram is the largest UDP payload (over IPv4; IPv6 jumbograms are
// not proxied).
const maxDatagram = 64 << 10

// udpFrontend reads datagrams on one UDP socket and forwards each
// client's to its flow.
//
// Close closes every flow at once, not after DrainTimeout: replies go back
// through the frontend's own socket (so they come from the Service
// address), and once that is closed a flow could deliver nothing.
type udpFrontend struct {
	opts   *dataplaneOptions
	log    *slog.Logger
	m      *frontendMetrics
	picker *picker
	conn   *net.UDPConn

	mu     sync.Mutex
	flows  map[netip.AddrPort]*udpFlow // by client address
	closed bool

	wg sync.WaitGroup // the read loop and every flow's reply loop
}

// udpFlow carries one client's datagrams to one endpoint and the
// endpoint's replies back.
type udpFlow struct {
	client netip.AddrPort
	ep     netip.AddrPort
	conn   *net.UDPConn // connected to ep: the kernel filters replies
	raw    syscall.RawConn
	// lastActive (UnixNano) is when a datagram last went either way; the
	// reply loop ends the flow after UDPIdleTimeout without one.
	lastActive atomic.Int64
}

func startUDP(spec frontendSpec, p *picker, opts *dataplaneOptions) (*udpFrontend, error) {
	pc, err := listenConfig.ListenPacket(context.Background(), network("udp", spec.Addr), spec.Addr.String())
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	f := &udpFrontend{
		opts:   opts,
		log:    opts.Logger,
		m:      opts.Metrics.forFrontend(spec),
		picker: p,
		conn:   conn,
		flows:  map[netip.AddrPort]*udpFlow{},
	}
	f.wg.Add(1)
	go f.readLoop()
	return f, nil
}

// localAddr is where the frontend listens (the real port when spec.Addr
// had port 0).
func (f *udpFrontend) localAddr() netip.AddrPort {
	return f.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (f *udpFrontend) Backends() BackendSet { return f.picker.backends() }

// Update swaps set in and ends the flows whose endpoint left it at once:
// UDP has no connection to drain, and the client's next datagram picks
// an endpoint that is still there.
func (f *udpFrontend) Update(set BackendSet) {
	f.picker.update(set)
	f.mu.Lock()
	var gone []*udpFlow
	for _, fl := range f.flows {
		if !f.picker.contains(fl.ep) {
			gone = append(gone, fl)
		}
	}
	f.mu.Unlock()
	for _, fl := range gone {
		f.endFlow(fl, "endpoint removed")
	}
}

func (f *udpFrontend) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	flows := make([]*udpFlow, 0, len(f.flows))
	for _, fl := range f.flows {
		flows = append(flows, fl)
	}
	f.mu.Unlock()
	f.conn.Close()
	for _, fl := range flows {
		f.endFlow(fl, "frontend closed")
	}
}

// wait blocks until every goroutine of the frontend has returned (tests).
func (f *udpFrontend) wait() { f.wg.Wait() }

// flowCount is the number of open flows (tests).
func (f *udpFrontend) flowCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows)
}

func (f *udpFrontend) readLoop() {
	defer f.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, client, err := f.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Errors reported on an unconnected UDP socket are about
			// one peer (an ICMP error for an earlier reply), not the
			// socket: keep reading.
			f.log.Debug("read datagram", "err", err)
			continue
		}
		fl := f.flow(client)
		if fl == nil {
			continue
		}
		fl.touch()
		if _, err := fl.conn.Write(buf[:n]); err != nil {
			// Typically ECONNREFUSED left by an earlier datagram:
			// nothing listens there. A new flow may pick another
			// endpoint.
			f.log.Debug("forward datagram", "endpoint", fl.ep, "client", client, "err", err)
			f.endFlow(fl, "write failed")
			continue
		}
		f.m.toEndpoint.Add(float64(n))
	}
}

// flow returns client's flow, starting one if there is none. It returns
// nil (the datagram is dropped) when no endpoint takes it.
func (f *udpFrontend) flow(client netip.AddrPort) *udpFlow {
	f.mu.Lock()
	fl := f.flows[client]
	f.mu.Unlock()
	if fl != nil {
		return fl
	}
	var tried []netip.AddrPort
	for {
		ep, ok := f.picker.pick(client.Addr(), tried)
		if !ok {
			break
		}
		conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(ep.Addr))
		if err != nil {
			f.m.dialFailed.Inc()
			f.log.Debug("dial endpoint failed; trying the next", "endpoint", ep.Addr, "node", ep.Node, "err", err)
			tried = append(tried, ep.Addr)
			continue
		}
		raw, err := conn.SyscallConn()
		if err != nil { // never, for a socket just made
			conn.Close()
			return nil
		}
		fl = &udpFlow{client: client, ep: ep.Addr, conn: conn, raw: raw}
		fl.touch()
		f.mu.Lock()
		// Close or an Update removing ep may have come in between; the
		// datagram is dropped then, as UDP allows.
		if f.closed || !f.picker.contains(ep.Addr) {
			f.mu.Unlock()
			conn.Close()
			return nil
		}
		f.flows[client] = fl
		f.wg.Add(1)
		f.mu.Unlock()
		f.m.connections.Inc()
		f.m.active.Inc()
		go f.replyLoop(fl)
		return fl
	}
	if len(tried) == 0 {
		f.m.noEndpoints.Inc()
		f.log.Debug("no endpoint; datagram dropped", "client", client)
	} else {
		f.m.allFailed.Inc()
		f.log.Debug("every endpoint failed; datagram dropped", "client", client, "tried", len(tried))
	}
	return nil
}

// replyLoop sends the endpoint's datagrams back to the client, from the
// frontend's socket, until the flow idles out or is ended elsewhere.
func (f *udpFrontend) replyLoop(fl *udpFlow) {
	defer f.wg.Done()
	for {
		idleAt := time.Unix(0, fl.lastActive.Load()).Add(f.opts.UDPIdleTimeout)
		if !time.Now().Before(idleAt) {
			f.endFlow(fl, "idle")
			return
		}
		// The deadline is re-read after it passes, as the client may have
		// sent something meanwhile.
		fl.conn.SetReadDeadline(idleAt)
		buf, n, err := fl.readReply()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			// Closed by endFlow, or ECONNREFUSED: nothing listens on
			// the endpoint, and the next datagram should pick anew.
			f.endFlow(fl, err.Error())
			return
		}
		fl.touch()
		_, err = f.conn.WriteToUDPAddrPort((*buf)[:n], fl.client)
		datagramPool.Put(buf)
		if err != nil {
			f.log.Debug("reply to client", "client", fl.client, "err", err)
			continue
		}
		f.m.toClient.Add(float64(n))
	}
}

// datagramPool holds maxDatagram buffers for replies.
var datagramPool = sync.Pool{New: func() any {
	b := make([]byte, maxDatagram)
	return &b
}}

// readReply waits for the endpoint's next datagram and reads it into a
// buffer from datagramPool. Waiting holds no buffer: a flow per client
// port (a resolver sends each DNS query from a new one) lives for the idle
// timeout, and 64 KiB parked in each would add up to gigabytes.
func (fl *udpFlow) readReply() (buf *[]byte, n int, err error) {
	var readErr error
	err = fl.raw.Read(func(fd uintptr) bool {
		b := datagramPool.Get().(*[]byte)
		for {
			n, readErr = syscall.Read(int(fd), *b)
			if readErr != syscall.EINTR {
				break
			}
		}
		if readErr == syscall.EAGAIN {
			datagramPool.Put(b)
			return false // wait until readable, then call again
		}
		buf = b
		return true
	})
	if err == nil && readErr != nil {
		datagramPool.Put(buf)
		err = readErr
	}
	return buf, n, err
}

// endFlow removes fl and closes its socket, which ends its reply loop.
// Only the call that removes it counts it; later ones do nothing.
func (f *udpFrontend) endFlow(fl *udpFlow, why string) {
	f.mu.Lock()
	mine := f.flows[fl.client] == fl
	if mine {
		delete(f.flows, fl.client)
	}
	f.mu.Unlock()
	if !mine {
		return
	}
	fl.conn.Close()
	f.m.active.Dec()
	f.log.Debug("flow ended", "client", fl.client, "endpoint", fl.ep, "why", why)
}

func (fl *udpFlow) touch() { fl.lastActive.Store(time.Now().UnixNano()) }
