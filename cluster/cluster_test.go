package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla/cluster"
	"flotilla/cluster/clustertest"
	"flotilla/fsm"
)

// TestCluster runs one three-server cluster through its life: bootstrap,
// writes and reads from any server, leader services, expiry, operator
// endpoints, losing the leader and bringing it back.
func TestCluster(t *testing.T) {
	counter := newTermCounter()
	c := newTestCluster(t, 3, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
		cfg.LeaderServices = []cluster.LeaderService{counter.service(cfg.Name)}
	}})

	t.Run("bootstrap", func(t *testing.T) {
		leader := c.Leader()
		if got := voters(t, leader.Node); len(got) != 3 {
			t.Fatalf("voters = %v, want 3", got)
		}
		waitFor(t, func() bool {
			id := leader.Node.ClusterID()
			for _, s := range c.Running() {
				if s.Node.ClusterID() == "" || s.Node.ClusterID() != id {
					return false
				}
			}
			return true
		}, "every server to know the same cluster ID")
		for _, s := range c.Running() {
			buf, err := os.ReadFile(filepath.Join(s.Config.DataDir, "cluster-id"))
			if err != nil || strings.TrimSpace(string(buf)) != s.Node.ClusterID() {
				t.Errorf("%s: cluster-id file = %q, %v", s.Name, buf, err)
			}
			alive := 0
			for _, m := range s.Node.Members() {
				if m.Role == cluster.RoleServer && m.Status == cluster.StatusAlive {
					alive++
				}
			}
			if alive != 3 {
				t.Errorf("%s sees %d alive servers, want 3: %+v", s.Name, alive, s.Node.Members())
			}
		}
	})

	t.Run("writes through a follower", func(t *testing.T) {
		fs := c.Followers()
		res := mustPut(t, fs[0].Node, "/test/a", "1")
		if res.Revision == 0 {
			t.Errorf("revision 0 in %+v", res)
		}
		if v, ok := linearGet(t, fs[1].Node, "/test/a"); !ok || v != "1" {
			t.Errorf("read on the other follower = %q, %v", v, ok)
		}
		// A failed compare is a result, not an error.
		res = mustApply(t, fs[1].Node, &fsm.Txn{
			Compares: []fsm.Compare{{Key: "/test/a", Target: fsm.CompareAbsent}},
			Ops:      []fsm.Op{{Type: fsm.OpPut, Key: "/test/a", Value: []byte("2")}},
		})
		if res.Succeeded || res.FailedCompare != 0 || res.Current == nil || string(res.Current.Value) != "1" {
			t.Errorf("compare failure result = %+v", res)
		}
		// Validation errors come back as such.
		_, err := fs[0].Node.Apply(ctxT(t), &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpPut, Key: ""}}})
		if !errors.Is(err, fsm.ErrInvalidTxn) {
			t.Errorf("invalid txn: err = %v", err)
		}
	})

	t.Run("linearizable read on a follower", func(t *testing.T) {
		servers := c.Running()
		for i := 0; i < 30; i++ {
			w, r := servers[i%3], servers[(i+1)%3]
			mustPut(t, w.Node, "/test/lin", strings.Repeat("x", i+1))
			if v, _ := linearGet(t, r.Node, "/test/lin"); len(v) != i+1 {
				t.Fatalf("write %d acknowledged by %s, %s read %q", i, w.Name, r.Name, v)
			}
		}
		// Many concurrent readers share read-index rounds.
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := 0; i < 64; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := servers[i%3].Node.ReadIndex(ctxT(t)); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent read index: %v", err)
		}
	})

	t.Run("leader services once per term", func(t *testing.T) {
		old := c.Leader()
		waitFor(t, func() bool { s, st, _ := counter.get(old.Name); return s == st+1 }, "services on the leader")
		oldStarts, _, _ := counter.get(old.Name)
		if err := c.Followers()[0].Node.TransferLeadership(ctxT(t), ""); err != nil {
			t.Fatalf("transfer leadership: %v", err)
		}
		waitFor(t, func() bool { return !old.Node.IsLeader() }, "the old leader to step down")
		leader := c.Leader()
		waitFor(t, func() bool { s, st, _ := counter.get(leader.Name); return s == st+1 }, "services on the new leader")
		waitFor(t, func() bool { s, st, _ := counter.get(old.Name); return s == st && s == oldStarts }, "services on the old leader to stop once")
		for _, s := range c.Running() {
			if _, _, overlap := counter.get(s.Name); len(overlap) > 0 {
				t.Errorf("leader services overlapped on %v", overlap)
			}
		}
	})

	t.Run("expiry", func(t *testing.T) {
		f := c.Followers()[0]
		mustApply(t, f.Node, &fsm.Txn{Ops: []fsm.Op{
			{Type: fsm.OpPut, Key: "/test/ttl", Value: []byte("x"), ExpiresAt: time.Now().Add(200 * time.Millisecond).UnixNano()},
			{Type: fsm.OpPut, Key: "/test/keep", Value: []byte("x")},
		}})
		waitFor(t, func() bool {
			_, ok := linearGet(t, f.Node, "/test/ttl")
			return !ok
		}, "the expired key to be deleted")
		if _, ok := linearGet(t, f.Node, "/test/keep"); !ok {
			t.Error("a key without expiry was deleted")
		}
	})

	t.Run("operator endpoints", func(t *testing.T) {
		f := c.Followers()[0]
		base := "http://" + f.Node.APIAddr()
		var peers []cluster.Peer
		getJSON(t, base+"/flotilla/v1/operator/raft/peers", &peers)
		states := map[string]int{}
		for _, p := range peers {
			states[p.State]++
			if p.LastIndex == 0 || !p.Voter {
				t.Errorf("peer %+v", p)
			}
		}
		if states["leader"] != 1 || states["follower"] != 2 {
			t.Errorf("peer states = %v", states)
		}
		var members []cluster.Member
		getJSON(t, base+"/flotilla/v1/operator/members", &members)
		if len(members) != 3 {
			t.Errorf("members = %+v", members)
		}

		// Save through a follower, change things, restore through the other.
		mustPut(t, f.Node, "/test/snap", "before")
		resp, err := http.Get(base + "/flotilla/v1/operator/snapshot")
		if err != nil {
			t.Fatal(err)
		}
		archive, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("snapshot save: %s %v: %s", resp.Status, err, archive)
		}
		mustApply(t, f.Node, &fsm.Txn{Ops: []fsm.Op{{Type: fsm.OpDelete, Key: "/test/snap"}, {Type: fsm.OpPut, Key: "/test/after", Value: []byte("x")}}})

		damaged := bytes.Clone(archive)
		damaged[len(damaged)/2] ^= 0xff
		other := c.Followers()[1]
		resp, err = http.Post("http://"+other.Node.APIAddr()+"/flotilla/v1/operator/snapshot", "application/x-tar", bytes.NewReader(damaged))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("restore of a damaged archive: %s, want 400", resp.Status)
		}
		resp, err = http.Post("http://"+other.Node.APIAddr()+"/flotilla/v1/operator/snapshot", "application/x-tar", bytes.NewReader(archive))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("restore: %s: %s", resp.Status, body)
		}
		for _, s := range c.Running() {
			waitFor(t, func() bool {
				v, ok := linearGet(t, s.Node, "/test/snap")
				_, after := linearGet(t, s.Node, "/test/after")
				return ok && v == "before" && !after
			}, "%s to have the restored state", s.Name)
		}
		// The cluster still takes writes after the restore.
		mustPut(t, f.Node, "/test/post-restore", "x")

		// Transfer leadership to a named server through a follower.
		target := c.Followers()[1]
		req, _ := http.NewRequest(http.MethodPost, base+"/flotilla/v1/operator/raft/transfer-leader?id="+target.Name, nil)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("transfer-leader: %s: %s", resp.Status, body)
		}
		waitFor(t, func() bool { return c.Leader() == target }, "%s to lead", target.Name)
	})

	var killed int
	var acked []string
	t.Run("kill the leader", func(t *testing.T) {
		leader := c.Leader()
		killed = leader.Index
		var (
			mu       sync.Mutex
			n        atomic.Int64
			stop     atomic.Bool
			wg       sync.WaitGroup
			servers  = c.Running()
			newLeads atomic.Int64
		)
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					// Writes through the killed server may fail in any way.
					s := servers[(w+i)%len(servers)]
					k := key(int(n.Add(1)))
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					res, err := s.Node.Apply(ctx, putTxn(k, "v"))
					cancel()
					if err == nil && res.Succeeded {
						mu.Lock()
						acked = append(acked, k)
						mu.Unlock()
						if s != leader {
							newLeads.Add(1)
						}
					} else if s != leader && err != nil && !errors.Is(err, cluster.ErrOutcomeUnknown) && !errors.Is(err, cluster.ErrNoLeader) && !errors.Is(err, cluster.ErrShutdown) {
						t.Errorf("write via %s: unexpected error %v", s.Name, err)
					}
				}
			}()
		}
		waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 50 }, "writes before the kill")
		c.Kill(killed)
		before := newLeads.Load()
		newLeader := c.WaitLeader()
		if newLeader.Index == killed {
			t.Fatal("the killed server leads")
		}
		waitFor(t, func() bool { return newLeads.Load() >= before+50 }, "writes after the failover")
		stop.Store(true)
		wg.Wait()
		for _, s := range c.Running() {
			if err := s.Node.ReadIndex(ctxT(t)); err != nil {
				t.Fatalf("read index on %s: %v", s.Name, err)
			}
			for _, k := range acked {
				if kv, _ := s.Node.Store().Get(k); kv == nil {
					t.Fatalf("acknowledged write %s lost on %s", k, s.Name)
				}
			}
		}
	})

	t.Run("restart catches up", func(t *testing.T) {
		s := c.Restart(killed)
		waitFor(t, func() bool {
			for _, k := range acked {
				if kv, _ := s.Node.Store().Get(k); kv == nil {
					return false
				}
			}
			return true
		}, "the restarted server to catch up")
		mustPut(t, s.Node, "/test/after-restart", "x")
		converged(t, c)
		if got := voters(t, c.Leader().Node); len(got) != 3 {
			t.Errorf("voters = %v", got)
		}
	})
}

func getJSON(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", url, resp.Status, body)
	}
	if err := jsonDecode(resp.Body, out); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// TestSnapshotInstall: a server that missed more than the trailing logs
// catches up by installing the leader's snapshot.
func TestSnapshotInstall(t *testing.T) {
	c := newTestCluster(t, 3, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
		cfg.SnapshotThreshold = 32
		cfg.TrailingLogs = 16
		cfg.SnapshotInterval = 50 * time.Millisecond
	}})
	f := c.Followers()[0]
	mustPut(t, c.Leader().Node, "/test/first", "x")
	waitFor(t, func() bool { kv, _ := f.Node.Store().Get("/test/first"); return kv != nil }, "the follower to apply")
	lastIndex := parseUint(f.Node.Stats()["last_log_index"])
	c.Kill(f.Index)

	leader := c.Leader()
	writeMany(t, leader.Node, 0, 200)
	// Both live servers, not only this leader: on a loaded machine the
	// other may take over before the follower returns, and it must not
	// still hold the log the follower needs.
	waitFor(t, func() bool {
		for _, r := range c.Running() {
			if parseUint(r.Node.Stats()["last_snapshot_index"]) <= lastIndex+64 {
				return false
			}
		}
		return true
	}, "the live servers to snapshot past the follower")

	s := c.Restart(f.Index)
	waitFor(t, func() bool { kv, _ := s.Node.Store().Get(key(199)); return kv != nil }, "the restarted follower to catch up")
	if got := parseUint(s.Node.Stats()["last_snapshot_index"]); got <= lastIndex+16 {
		t.Errorf("follower's last snapshot index %d: no snapshot installed (was at %d)", got, lastIndex)
	}
	converged(t, c)
}

// writeMany puts keys [from, to) with a few concurrent writers.
func writeMany(t *testing.T, n *cluster.Node, from, to int) {
	t.Helper()
	var wg sync.WaitGroup
	next := atomic.Int64{}
	next.Store(int64(from))
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				if _, err := putRetry(ctxT(t), n, key(i), "v"); err != nil {
					t.Errorf("put %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestMembership: a fourth server joins by gossip and becomes a voter; a
// dead server is removed by an operator, another by the leader after
// DeadServerCleanup; a removed server that comes back is added again.
func TestMembership(t *testing.T) {
	c := newTestCluster(t, 3, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
		cfg.DeadServerCleanup = 2 * time.Second
	}})
	mustPut(t, c.Leader().Node, "/test/before-add", "x")

	fourth := c.Add()
	waitFor(t, func() bool { return len(voters(t, c.Leader().Node)) == 4 }, "4 voters")
	waitFor(t, func() bool { return fourth.Node.ClusterID() == c.Leader().Node.ClusterID() }, "the new server to learn the cluster ID")
	if v, ok := linearGet(t, fourth.Node, "/test/before-add"); !ok || v != "x" {
		t.Errorf("new server reads %q, %v", v, ok)
	}

	// The operator removes a dead server at once, through a follower.
	var victims []*clustertest.Server
	for _, s := range c.Followers() {
		if s != fourth {
			victims = append(victims, s)
		}
	}
	c.Kill(victims[0].Index)
	var other *clustertest.Server
	for _, s := range c.Followers() {
		other = s
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+other.Node.APIAddr()+"/flotilla/v1/operator/raft/peers/"+victims[0].Name, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("remove peer: %s: %s", resp.Status, body)
	}
	if got := voters(t, c.Leader().Node); len(got) != 3 || slices.Contains(got, victims[0].Name) {
		t.Fatalf("voters after remove-peer = %v", got)
	}
	if err := other.Node.RemovePeer(ctxT(t), "no-such-server"); !errors.Is(err, cluster.ErrUnknownPeer) {
		t.Errorf("remove unknown peer: %v", err)
	}

	// The leader removes one that stays dead past DeadServerCleanup.
	c.Kill(victims[1].Index)
	waitFor(t, func() bool {
		got := voters(t, c.Leader().Node)
		return len(got) == 2 && !slices.Contains(got, victims[1].Name)
	}, "the dead server to be removed")
	mustPut(t, c.Leader().Node, "/test/two-voters", "x")

	// It comes back: the leader adds it again and it catches up.
	s := c.Restart(victims[1].Index)
	waitFor(t, func() bool { return slices.Contains(voters(t, c.Leader().Node), s.Name) }, "the returning server to be a voter again")
	if _, ok := linearGet(t, s.Node, "/test/two-voters"); !ok {
		t.Error("returning server missed a write")
	}
}

// TestRefuseOtherCluster: a server of one cluster cannot join another.
func TestRefuseOtherCluster(t *testing.T) {
	a := newTestCluster(t, 1)
	b := newTestCluster(t, 1, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
		cfg.Name = "b-server"
	}})
	an, bn := a.Server(0), b.Server(0)
	waitFor(t, func() bool { return an.Node.ClusterID() != "" && bn.Node.ClusterID() != "" }, "cluster IDs")
	aID, bID := an.Node.ClusterID(), bn.Node.ClusterID()
	if aID == bID {
		t.Fatalf("two clusters share ID %s", aID)
	}
	b.Stop(0)
	_, err := b.TryRestart(0, func(cfg *cluster.Config) { cfg.Join = []string{an.Node.GossipAddr()} })
	if !errors.Is(err, cluster.ErrClusterIDMismatch) || !strings.Contains(err.Error(), aID) || !strings.Contains(err.Error(), bID) {
		t.Fatalf("start against another cluster: err = %v", err)
	}
	for _, m := range an.Node.Members() {
		if m.Name == "b-server" && m.Status == cluster.StatusAlive {
			t.Errorf("cluster A accepted %+v", m)
		}
	}
}

func TestJoinUnreachable(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Join = []string{"127.0.0.1:1"}
	cfg.JoinTimeout = 300 * time.Millisecond
	n, err := cluster.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	err = n.Start(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), "join: no member reachable at 127.0.0.1:1") {
		t.Fatalf("Start = %v", err)
	}
}

func testConfig(t *testing.T, dir string) cluster.Config {
	return cluster.Config{
		Name:          "solo",
		DataDir:       dir,
		BindAddr:      "127.0.0.1",
		AdvertiseAddr: "127.0.0.1",
		RaftPort:      cluster.AnyPort,
		GossipPort:    cluster.AnyPort,
		APIPort:       1,
		Timing:        cluster.TestTiming(),
		Logger:        clustertest.Logger("solo"),
	}
}
