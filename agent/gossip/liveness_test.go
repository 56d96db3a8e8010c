package gossip

import (
	"sync"
	"testing"

	"flotilla/cluster"
)

func TestLiveness(t *testing.T) {
	var mu sync.Mutex
	members := []cluster.Member{
		{Name: "a", Status: cluster.StatusAlive},
		{Name: "b", Status: cluster.StatusDead},
		{Name: "c", Status: cluster.StatusLeft},
	}
	l := NewLiveness(func() []cluster.Member {
		mu.Lock()
		defer mu.Unlock()
		return members
	})
	check := func(when string, want map[string]bool) {
		t.Helper()
		for name, alive := range want {
			if got := l.Alive(name); got != alive {
				t.Errorf("%s: Alive(%q) = %v, want %v", when, name, got, alive)
			}
		}
	}
	// Left is a deliberate restart, not a death; unknown names are alive.
	check("start", map[string]bool{"a": true, "b": false, "c": true, "never-heard-of": true})

	// memberlist reaps b: it stays dead until it is seen alive again.
	mu.Lock()
	members = []cluster.Member{{Name: "a", Status: cluster.StatusDead}}
	mu.Unlock()
	l.refresh()
	check("b reaped, a dead", map[string]bool{"a": false, "b": false})

	mu.Lock()
	members = []cluster.Member{{Name: "a", Status: cluster.StatusAlive}, {Name: "b", Status: cluster.StatusAlive}}
	mu.Unlock()
	l.refresh()
	check("both back", map[string]bool{"a": true, "b": true})
}
