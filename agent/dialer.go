package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"
)

// ErrNoAPIServer means no master's API answered.
var ErrNoAPIServer = errors.New("no API server reachable")

// apiDialer connects the agent's API client to a live master. The client's
// URL names no master: every new connection asks the dialer, which tries
// the master that answered last, then the static ones, then every master
// gossip reports alive. When a master dies its connections break, client-go
// dials again, and the agent is on another master without a restart.
type apiDialer struct {
	static  []string          // --server addresses (all-in-one: the local API), tried early
	members func() []string   // API addresses of masters gossip reports alive
	dialer  net.Dialer        // per-address timeout; short, so a dead master costs little
	onDial  func(addr string) // tests and logs: which master we are on
	dialFn  func(ctx context.Context, network, addr string) (net.Conn, error)

	mu   sync.Mutex
	last string
}

func newAPIDialer(static []string, members func() []string) *apiDialer {
	d := &apiDialer{static: static, members: members, dialer: net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}}
	d.dialFn = d.dialer.DialContext
	return d
}

// candidates is the order to try masters in.
func (d *apiDialer) candidates() []string {
	d.mu.Lock()
	last := d.last
	d.mu.Unlock()
	var out []string
	add := func(a string) {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	add(last)
	for _, a := range d.static {
		add(a)
	}
	if d.members != nil {
		for _, a := range d.members() {
			add(a)
		}
	}
	return out
}

// DialContext ignores the address client-go asks for and dials a master.
func (d *apiDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	addrs := d.candidates()
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: gossip knows no master yet", ErrNoAPIServer)
	}
	var errs []error
	for _, a := range addrs {
		c, err := d.dialFn(ctx, network, a)
		if err == nil {
			d.mu.Lock()
			changed := d.last != a
			d.last = a
			d.mu.Unlock()
			if changed && d.onDial != nil {
				d.onDial(a)
			}
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	d.mu.Lock()
	if slices.Contains(addrs, d.last) {
		d.last = ""
	}
	d.mu.Unlock()
	return nil, fmt.Errorf("%w (tried %v): %w", ErrNoAPIServer, addrs, errors.Join(errs...))
}
