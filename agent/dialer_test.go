package agent

import (
	"context"
	"errors"
	"net"
	"testing"
)

// listen starts a TCP listener on loopback that accepts and holds
// connections, and returns its address and a stop function.
func listen(t *testing.T) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), func() { ln.Close() }
}

func TestAPIDialerFailsOverBetweenMasters(t *testing.T) {
	a, stopA := listen(t)
	b, _ := listen(t)
	gossiped := []string{b}
	d := newAPIDialer([]string{a}, func() []string { return gossiped })
	ctx := context.Background()

	c, err := d.DialContext(ctx, "tcp", "ignored:80")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := c.RemoteAddr().String(); got != a {
		t.Fatalf("first dial reached %s, want the static master %s", got, a)
	}

	stopA()
	c, err = d.DialContext(ctx, "tcp", "ignored:80")
	if err != nil {
		t.Fatalf("dial after the first master died: %v", err)
	}
	c.Close()
	if got := c.RemoteAddr().String(); got != b {
		t.Fatalf("after failover reached %s, want the gossiped master %s", got, b)
	}
	// The master that answered last is tried first from now on.
	if cands := d.candidates(); cands[0] != b {
		t.Fatalf("candidates %v: want %s first", cands, b)
	}
}

func TestAPIDialerNoMasters(t *testing.T) {
	d := newAPIDialer(nil, func() []string { return nil })
	if _, err := d.DialContext(context.Background(), "tcp", "x:1"); !errors.Is(err, ErrNoAPIServer) {
		t.Fatalf("err = %v, want ErrNoAPIServer", err)
	}
	dead, stop := listen(t)
	stop()
	d = newAPIDialer([]string{dead}, nil)
	if _, err := d.DialContext(context.Background(), "tcp", "x:1"); !errors.Is(err, ErrNoAPIServer) {
		t.Fatalf("err = %v, want ErrNoAPIServer", err)
	}
}
