package faultnet_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"flotilla/cluster/faultnet"
)

// network is cluster.Network, repeated so these tests do not build the
// cluster package; the linearizability tests use a Host as the real thing.
type network interface {
	Listen(network, addr string) (net.Listener, error)
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

var _ network = (*faultnet.Host)(nil)

// stall is how long a test waits to see that traffic does NOT flow. Only
// absence is asserted with it; presence is always awaited without a bound
// shorter than the test's.
const stall = 150 * time.Millisecond

// echo serves on h: every line a client sends comes back. It returns the
// listener's address.
func echo(t *testing.T, h *faultnet.Host) string {
	t.Helper()
	ln, err := h.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, h *faultnet.Host, addr string) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, h, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *client) send(line string) {
	c.t.Helper()
	c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, line+"\n"); err != nil {
		c.t.Fatalf("write %q: %v", line, err)
	}
}

// expect reads one line within timeout and compares it.
func (c *client) expect(line string, timeout time.Duration) {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(timeout))
	got, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read, want %q: %v", line, err)
	}
	if got != line+"\n" {
		c.t.Fatalf("read %q, want %q", got, line)
	}
}

// expectStall checks that nothing arrives for a while.
func (c *client) expectStall() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(stall))
	got, err := c.r.ReadString('\n')
	if err == nil {
		c.t.Fatalf("read %q through a blocked link", got)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("read through a blocked link: %v, want a deadline error", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("read error %v is not a net.Error timeout", err)
	}
}

func dialErr(h *faultnet.Host, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

func TestAddresses(t *testing.T) {
	n := faultnet.New()
	a, b := n.NewHost("a"), n.NewHost("b")
	if a.IP() == b.IP() {
		t.Fatalf("two hosts share %s", a.IP())
	}
	addr := echo(t, b)
	if host, _, _ := net.SplitHostPort(addr); host != b.IP() {
		t.Fatalf("listen on :0 gave %s, want the host's address %s", addr, b.IP())
	}
	c := dial(t, a, addr)
	if host, _, _ := net.SplitHostPort(c.c.LocalAddr().String()); host != a.IP() {
		t.Fatalf("dial came from %s, want %s", c.c.LocalAddr(), a.IP())
	}
	c.send("hello")
	c.expect("hello", 5*time.Second)
}

func TestIsolateAndHeal(t *testing.T) {
	for _, tc := range []struct {
		name    string
		isolate func(a, b *faultnet.Host)
	}{
		{"from peer", func(a, b *faultnet.Host) { a.Isolate(b) }},
		{"peer from us", func(a, b *faultnet.Host) { b.Isolate(a) }},
		{"from all", func(a, b *faultnet.Host) { a.Isolate() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := faultnet.New()
			a, b, c := n.NewHost("a"), n.NewHost("b"), n.NewHost("c")
			addrA, addrB := echo(t, a), echo(t, b)
			ab := dial(t, a, addrB) // a → b
			ba := dial(t, b, addrA) // b → a
			ab.send("before")
			ab.expect("before", 5*time.Second)

			tc.isolate(a, b)
			// Existing connections stall in both directions; the bytes
			// sent meanwhile are not lost.
			ab.send("during-ab")
			ab.expectStall()
			ba.send("during-ba")
			ba.expectStall()
			// New dials across the cut fail at once, both ways.
			for _, d := range []struct {
				from *faultnet.Host
				to   string
			}{{a, addrB}, {b, addrA}} {
				if err := dialErr(d.from, d.to, 5*time.Second); !errors.Is(err, faultnet.ErrUnreachable) {
					t.Fatalf("dial %s from %s across a cut: %v, want ErrUnreachable", d.to, d.from, err)
				}
			}
			// A third host still reaches b.
			if tc.name != "from all" {
				cb := dial(t, c, addrB)
				cb.send("third")
				cb.expect("third", 5*time.Second)
			} else if err := dialErr(c, addrA, 5*time.Second); !errors.Is(err, faultnet.ErrUnreachable) {
				t.Fatalf("dial a from c when a is cut from all: %v", err)
			}

			b.Heal() // healing either side restores the link
			a.Heal()
			ab.expect("during-ab", 5*time.Second)
			ba.expect("during-ba", 5*time.Second)
			ab.send("after")
			ab.expect("after", 5*time.Second)
			dial(t, a, addrB).send("new")
		})
	}
}

func TestPauseAndResume(t *testing.T) {
	n := faultnet.New()
	a, b := n.NewHost("a"), n.NewHost("b")
	addrB := echo(t, b)
	ab := dial(t, a, addrB)
	ab.send("before")
	ab.expect("before", 5*time.Second)

	b.Pause()
	ab.send("during")
	ab.expectStall()
	// A dial to a paused host connects (the kernel answers) but nobody
	// serves it.
	fresh := dial(t, a, addrB)
	fresh.send("fresh")
	fresh.expectStall()
	// The paused host's own dials wait.
	if err := dialErr(b, echo(t, a), stall); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial from a paused host: %v, want it to wait until the context ends", err)
	}

	b.Resume()
	ab.expect("during", 5*time.Second)
	fresh.expect("fresh", 5*time.Second)
}

func TestLatency(t *testing.T) {
	n := faultnet.New()
	a, b := n.NewHost("a"), n.NewHost("b")
	ab := dial(t, a, echo(t, b))
	const d = 100 * time.Millisecond
	a.SetLatency(d)
	start := time.Now()
	ab.send("slow")
	ab.expect("slow", 5*time.Second)
	if took := time.Since(start); took < d {
		t.Fatalf("round trip took %s with %s latency", took, d)
	}
	n.HealAll()
	ab.send("fast")
	ab.expect("fast", 5*time.Second)
}

func TestCloseConns(t *testing.T) {
	n := faultnet.New()
	a, b := n.NewHost("a"), n.NewHost("b")
	addrB := echo(t, b)
	ab := dial(t, a, addrB)
	a.CloseConns()
	ab.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := ab.r.ReadString('\n'); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after CloseConns: %v, want net.ErrClosed", err)
	}
	c := dial(t, a, addrB)
	c.send("again")
	c.expect("again", 5*time.Second)
}

func TestCrashAndRestart(t *testing.T) {
	n := faultnet.New()
	a, b, c := n.NewHost("a"), n.NewHost("b"), n.NewHost("c")
	addrA, addrB := echo(t, a), echo(t, b)
	ab := dial(t, a, addrB)
	ba := dial(t, b, addrA)

	a.Crash()
	for _, cl := range []*client{ab, ba} {
		cl.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := cl.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read on a connection of a crashed host: %v, want it closed", err)
		}
	}
	for _, d := range []struct {
		from *faultnet.Host
		to   string
	}{{a, addrB}, {b, addrA}, {c, addrA}} {
		if err := dialErr(d.from, d.to, 5*time.Second); !errors.Is(err, faultnet.ErrUnreachable) {
			t.Fatalf("dial %s from %s with a crashed: %v, want ErrUnreachable", d.to, d.from, err)
		}
	}
	cb := dial(t, c, addrB) // the others still talk
	cb.send("others")
	cb.expect("others", 5*time.Second)

	a.Restart()
	again := dial(t, b, addrA)
	again.send("back")
	again.expect("back", 5*time.Second)
}

// Blocked writes end at their deadline, when the deadline moves,
// and on Close.
func TestBlockedConnEnds(t *testing.T) {
	n := faultnet.New()
	a, b := n.NewHost("a"), n.NewHost("b")
	ab := dial(t, a, echo(t, b))
	a.Pause() // a paused host's writes block

	ab.c.SetWriteDeadline(time.Now().Add(stall))
	if _, err := ab.c.Write([]byte("x\n")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked write past its deadline: %v", err)
	}

	ab.c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := ab.c.Write([]byte("y\n"))
		done <- err
	}()
	ab.c.SetWriteDeadline(time.Now()) // moving the deadline wakes the writer
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked write after its deadline moved to now: %v", err)
	}

	ab.c.SetWriteDeadline(time.Time{})
	go func() {
		_, err := ab.c.Write([]byte("z\n"))
		done <- err
	}()
	ab.c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked write after Close: %v", err)
	}
}
