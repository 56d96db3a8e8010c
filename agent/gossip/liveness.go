package gossip

import (
	"context"
	"sync"
	"time"

	"flotilla/cluster"
)

// Liveness answers "does gossip believe node N dead?" cheaply, for the
// Service proxy, which asks on every connection. It refreshes from a
// member list every interval. A member gossip declared dead stays dead
// even after memberlist forgets it (it reaps dead members after a while),
// until it is seen alive again; a name gossip never knew is alive, so a
// node outside the pool (a hollow node, a proxy without gossip) is never
// skipped.
type Liveness struct {
	members func() []cluster.Member

	mu   sync.RWMutex
	dead map[string]bool
}

// NewLiveness reads members now; Run keeps it current.
func NewLiveness(members func() []cluster.Member) *Liveness {
	l := &Liveness{members: members, dead: map[string]bool{}}
	l.refresh()
	return l
}

// Alive reports whether gossip has not declared node dead.
func (l *Liveness) Alive(node string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return !l.dead[node]
}

// Run refreshes every interval until ctx ends.
func (l *Liveness) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.refresh()
		}
	}
}

func (l *Liveness) refresh() {
	members := l.members()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range members {
		switch m.Status {
		case cluster.StatusDead:
			l.dead[m.Name] = true
		default:
			// Alive, or left on purpose: an agent leaves when it
			// restarts, and its containers go on serving meanwhile.
			delete(l.dead, m.Name)
		}
	}
}
