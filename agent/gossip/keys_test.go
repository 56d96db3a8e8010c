package gossip

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"flotilla/cluster"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, cluster.GossipKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func startPool(t *testing.T, ctx context.Context, cfg Config) (*Pool, error) {
	t.Helper()
	cfg.Bind = "127.0.0.1"
	cfg.Timing = "local"
	p, err := Start(ctx, cfg)
	if err == nil {
		t.Cleanup(p.Shutdown)
	}
	return p, err
}

func waitUntil(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// advertised is what pool p sees member name advertise as its keys.
func advertised(p *Pool, name string) string {
	for _, m := range p.Members() {
		if m.Name == name && m.Status == cluster.StatusAlive {
			return m.Meta[cluster.MetaKeys]
		}
	}
	return "(not alive)"
}

// TestSetKeys: keys set on a member are advertised to the others, and two
// members moving to a new key stay together.
func TestSetKeys(t *testing.T) {
	k0, k1 := newKey(t), newKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A member needs someone to join: a first one joins itself.
	a, err := startPoolSelf(t, ctx, "a", [][]byte{k0})
	if err != nil {
		t.Fatal(err)
	}
	b, err := startPool(t, ctx, Config{Name: "b", Join: []string{a.Addr()}, Keys: [][]byte{k0}})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return advertised(a, "b") == cluster.KeyFingerprint(k0) }, "a to see b's key")

	for _, step := range []struct {
		name string
		keys [][]byte
	}{
		{"add", [][]byte{k0, k1}},
		{"switch", [][]byte{k1, k0}},
		{"drop", [][]byte{k1}},
	} {
		for _, p := range []*Pool{a, b} {
			if err := p.SetKeys(step.keys); err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
		}
		want := cluster.KeyFingerprints(step.keys)
		waitUntil(t, func() bool { return advertised(a, "b") == want && advertised(b, "a") == want }, step.name+": both to advertise "+want)
	}
	if got := cluster.KeyFingerprints(a.Keys()); got != cluster.KeyFingerprint(k1) {
		t.Errorf("Keys = %s", got)
	}
	if err := a.SetKeys([][]byte{[]byte("short")}); err == nil {
		t.Error("a short key was accepted")
	}

	plain, err := startPoolSelf(t, ctx, "plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.SetKeys([][]byte{k0}); !errors.Is(err, cluster.ErrGossipNotEncrypted) {
		t.Errorf("SetKeys on a pool without encryption: %v", err)
	}
}

// TestFetchKeys: a member that starts with a key nobody accepts any more
// joins once FetchKeys hands it the current one; without it, it does not.
func TestFetchKeys(t *testing.T) {
	stale, cur := newKey(t), newKey(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := startPoolSelf(t, ctx, "a", [][]byte{cur})
	if err != nil {
		t.Fatal(err)
	}

	short, cancelShort := context.WithTimeout(ctx, 2500*time.Millisecond)
	defer cancelShort()
	if _, err := startPool(t, short, Config{Name: "stale", Join: []string{a.Addr()}, Keys: [][]byte{stale}}); !errors.Is(err, ErrNoMembers) {
		t.Fatalf("join with a stale key: %v", err)
	}

	fetched := 0
	b, err := startPool(t, ctx, Config{
		Name: "b", Join: []string{a.Addr()}, Keys: [][]byte{stale},
		FetchKeys: func(context.Context) ([][]byte, error) {
			fetched++
			return [][]byte{cur}, nil
		},
	})
	if err != nil {
		t.Fatalf("join after fetching the keys: %v", err)
	}
	if fetched == 0 {
		t.Error("FetchKeys was never called")
	}
	waitUntil(t, func() bool { return advertised(a, "b") == cluster.KeyFingerprint(cur) }, "a to see b with the current key")
	if got := cluster.KeyFingerprints(b.Keys()); got != cluster.KeyFingerprint(cur) {
		t.Errorf("b's keys = %s", got)
	}
}

// startPoolSelf starts a pool member called name whose pool is only a
// bare memberlist seed with the same keys (a pool needs a member to join).
func startPoolSelf(t *testing.T, ctx context.Context, name string, keys [][]byte) (*Pool, error) {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name + "-seed"
	mc.BindAddr = "127.0.0.1"
	mc.BindPort = 0
	mc.Logger = log.New(io.Discard, "", 0)
	if len(keys) > 0 {
		ring, err := cluster.NewGossipKeyring(keys)
		if err != nil {
			t.Fatal(err)
		}
		mc.Keyring = ring
	}
	seed, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = seed.Shutdown() })
	return startPool(t, ctx, Config{Name: name, Join: []string{seed.LocalNode().Address()}, Keys: keys})
}
