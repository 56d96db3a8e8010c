package netproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// copyChunk is how much one io.CopyN moves before the byte counters are
// bumped. io.CopyN between two *net.TCPConn still splices in the kernel
// (TCPConn.ReadFrom sees through the io.LimitedReader), so chunking costs
// one extra system call per MiB and lets the metrics of a long stream
// advance while it runs. A slow trickle is counted per MiB or at its end.
const copyChunk = 1 << 20

// tcpFrontend accepts on one TCP address and splices each connection to
// an endpoint.
type tcpFrontend struct {
	opts   *dataplaneOptions
	log    *slog.Logger
	m      *frontendMetrics
	picker *picker
	ln     *net.TCPListener
	dialer net.Dialer

	mu     sync.Mutex
	conns  map[*tcpConn]struct{}
	closed bool

	wg sync.WaitGroup // the accept loop and every connection's goroutines
}

// tcpConn is one proxied connection.
type tcpConn struct {
	client, backend *net.TCPConn
	ep              netip.AddrPort
	// drain closes the connection when it fires; set (under the
	// frontend's mu) once its endpoint left the set or the frontend
	// closed.
	drain *time.Timer
}

func startTCP(spec frontendSpec, p *picker, opts *dataplaneOptions) (*tcpFrontend, error) {
	l, err := listenConfig.Listen(context.Background(), network("tcp", spec.Addr), spec.Addr.String())
	if err != nil {
		return nil, err
	}
	ln := l.(*net.TCPListener)
	f := &tcpFrontend{
		opts:   opts,
		log:    opts.Logger,
		m:      opts.Metrics.forFrontend(spec),
		picker: p,
		ln:     ln,
		dialer: net.Dialer{Timeout: opts.DialTimeout},
		conns:  map[*tcpConn]struct{}{},
	}
	f.wg.Add(1)
	go f.acceptLoop()
	return f, nil
}

// localAddr is where the frontend listens (the real port when spec.Addr
// had port 0).
func (f *tcpFrontend) localAddr() netip.AddrPort {
	return f.ln.Addr().(*net.TCPAddr).AddrPort()
}

func (f *tcpFrontend) Backends() BackendSet { return f.picker.backends() }

func (f *tcpFrontend) Update(set BackendSet) {
	f.picker.update(set)
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		f.setDrainLocked(c)
	}
}

func (f *tcpFrontend) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	for c := range f.conns {
		f.setDrainLocked(c)
	}
	f.mu.Unlock()
	f.ln.Close()
}

// setDrainLocked starts c's drain timer if c should no longer live: its
// endpoint left the set, or the frontend closed. An endpoint that came
// back before the timer fired keeps its connections.
func (f *tcpFrontend) setDrainLocked(c *tcpConn) {
	keep := !f.closed && f.picker.contains(c.ep)
	switch {
	case !keep && c.drain == nil:
		f.log.Debug("draining connection", "endpoint", c.ep, "client", c.client.RemoteAddr(), "timeout", f.opts.DrainTimeout)
		c.drain = time.AfterFunc(f.opts.DrainTimeout, c.abort)
	case keep && c.drain != nil:
		if c.drain.Stop() {
			c.drain = nil
		}
	}
}

// wait blocks until every goroutine of the frontend has returned (tests).
func (f *tcpFrontend) wait() { f.wg.Wait() }

func (f *tcpFrontend) acceptLoop() {
	defer f.wg.Done()
	var backoff time.Duration
	for {
		conn, err := f.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: the listener is
			// fine, so wait a little and go on (as net/http does).
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			f.log.Warn("accept; retrying", "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		f.wg.Add(1)
		go f.serve(conn)
	}
}

// serve connects client to an endpoint and copies until both directions
// are done, or resets client when no endpoint takes it.
func (f *tcpFrontend) serve(client *net.TCPConn) {
	defer f.wg.Done()
	backend, ep := f.dial(client)
	if backend == nil {
		// Reset, not FIN: the client learns at once that nobody is
		// there, instead of reading an empty answer or waiting.
		client.SetLinger(0)
		client.Close()
		return
	}
	c := &tcpConn{client: client, backend: backend, ep: ep}
	f.mu.Lock()
	f.conns[c] = struct{}{}
	f.setDrainLocked(c) // the endpoint may have left, or Close come, while dialing
	f.mu.Unlock()
	f.m.connections.Inc()
	f.m.active.Inc()

	// One direction in a goroutine, the other in this one; the
	// connection is over when both are.
	toEndpointDone := make(chan struct{})
	go func() {
		defer close(toEndpointDone)
		c.pipe(backend, client, f.m.toEndpoint.Add)
	}()
	c.pipe(client, backend, f.m.toClient.Add)
	<-toEndpointDone
	c.abort()

	f.mu.Lock()
	delete(f.conns, c)
	if c.drain != nil {
		c.drain.Stop()
	}
	f.mu.Unlock()
	f.m.active.Dec()
}

// dial connects to the first endpoint that answers, trying each at most
// once. It returns nil when there is none or all failed.
func (f *tcpFrontend) dial(client *net.TCPConn) (*net.TCPConn, netip.AddrPort) {
	clientIP := client.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
	var tried []netip.AddrPort
	for {
		ep, ok := f.picker.pick(clientIP, tried)
		if !ok {
			break
		}
		conn, err := f.dialer.Dial("tcp", ep.Addr.String())
		if err == nil {
			return conn.(*net.TCPConn), ep.Addr
		}
		f.m.dialFailed.Inc()
		f.log.Debug("dial endpoint failed; trying the next", "endpoint", ep.Addr, "node", ep.Node, "err", err)
		tried = append(tried, ep.Addr)
	}
	if len(tried) == 0 {
		f.m.noEndpoints.Inc()
		f.log.Debug("no endpoint; connection reset", "client", client.RemoteAddr())
	} else {
		f.m.allFailed.Inc()
		f.log.Debug("every endpoint failed; connection reset", "client", client.RemoteAddr(), "tried", len(tried))
	}
	return nil, netip.AddrPort{}
}

// pipe copies src to dst until src ends, counting bytes with count. A
// clean end half-closes dst (FIN), so a peer that shut down its writing
// still gets its answer through the other direction. Anything else (a
// reset, a drain closing the sockets) ends the whole connection, which
// also stops the other direction.
func (c *tcpConn) pipe(dst, src *net.TCPConn, count func(float64)) {
	for {
		n, err := io.CopyN(dst, src, copyChunk)
		if n > 0 {
			count(float64(n))
		}
		if err == nil {
			continue
		}
		if err != io.EOF || dst.CloseWrite() != nil {
			c.abort()
		}
		return
	}
}

// abort closes both sockets; the pipes blocked on them return.
func (c *tcpConn) abort() {
	c.client.Close()
	c.backend.Close()
}
