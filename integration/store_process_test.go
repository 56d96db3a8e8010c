package integration

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// startThree starts three masters on 127.0.<net>.1-3 that bootstrap by
// gossip with --bootstrap-expect 3, and waits for a leader.
func startThree(t *testing.T, net int) []*server {
	t.Helper()
	seed := fmt.Sprintf("127.0.%d.1:7946", net)
	var servers []*server
	for i := 1; i <= 3; i++ {
		s := newServer(t, fmt.Sprintf("m%d", i), fmt.Sprintf("127.0.%d.%d", net, i),
			"--bootstrap-expect", "3", "--join", seed)
		servers = append(servers, s)
	}
	dumpOnFailure(t, servers...)
	for _, s := range servers {
		s.start()
	}
	waitFor(t, 30*time.Second, "a leader and three voters", func() (bool, string) {
		id, peers, err := leaderOf(servers[0])
		if err != nil {
			return false, err.Error()
		}
		voters := 0
		for _, p := range peers {
			if p.Voter {
				voters++
			}
		}
		return id != "" && voters == 3, fmt.Sprintf("leader %q peers %+v", id, peers)
	})
	return servers
}

// TestProcessLeaderKill: three real server processes; kill -9 the leader; a
// survivor elects a new leader within 5 s and list-peers shows it.
func TestProcessLeaderKill(t *testing.T) {
	servers := startThree(t, 1)
	old, _, err := leaderOf(servers[0])
	if err != nil {
		t.Fatal(err)
	}
	var leader, survivor *server
	for _, s := range servers {
		if s.name == old {
			leader = s
		} else if survivor == nil {
			survivor = s
		}
	}
	leader.kill()
	killed := time.Now()
	// The bound: a new leader within 5 s of the kill.
	waitFor(t, 5*time.Second, "a new leader", func() (bool, string) {
		id, peers, err := leaderOf(survivor)
		if err != nil {
			return false, err.Error()
		}
		return id != "" && id != old, fmt.Sprintf("leader %q peers %+v", id, peers)
	})
	t.Logf("new leader %s after kill -9", time.Since(killed).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := flotilla(ctx, append([]string{"operator", "raft", "list-peers"}, survivor.opArgs()...)...)
	if err != nil {
		t.Fatalf("list-peers: %v: %s", err, out)
	}
	if !strings.Contains(out, "leader") || strings.Count(out, "\n") != 4 {
		t.Fatalf("list-peers table should show 3 peers and a leader:\n%s", out)
	}
	t.Logf("list-peers:\n%s", out)

	// The killed server restarts on its data dir and rejoins without
	// bootstrapping again.
	leader.start()
	waitFor(t, 30*time.Second, old+" back as a follower", func() (bool, string) {
		id, peers, err := leaderOf(leader)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range peers {
			if p.ID == old && p.State == "follower" && p.LastIndex > 0 {
				return id != "", fmt.Sprintf("peers %+v", peers)
			}
		}
		return false, fmt.Sprintf("peers %+v", peers)
	})

	operator := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := flotilla(ctx, append([]string{"operator"}, append(args, survivor.opArgs()...)...)...)
		if err != nil {
			t.Fatalf("operator %v: %v: %s", args, err, out)
		}
		return out
	}
	// Hand leadership back to the restarted server, through a follower's API.
	operator("raft", "transfer-leader", old)
	waitFor(t, 10*time.Second, old+" to lead again", func() (bool, string) {
		id, _, err := leaderOf(survivor)
		if err != nil {
			return false, err.Error()
		}
		return id == old, "leader " + id
	})

	// Save and restore a snapshot through the CLI.
	snap := filepath.Join(t.TempDir(), "cluster.snap")
	if out := operator("snapshot", "save", snap); !strings.Contains(out, "saved snapshot") {
		t.Fatalf("snapshot save: %s", out)
	}
	if out := operator("snapshot", "restore", snap); !strings.Contains(out, "restored snapshot") {
		t.Fatalf("snapshot restore: %s", out)
	}

	// Stop a follower for good and remove it.
	var gone *server
	for _, s := range servers {
		if s.name != old && s != survivor {
			gone = s
		}
	}
	gone.kill()
	operator("raft", "remove-peer", gone.name)
	waitFor(t, 10*time.Second, "two peers left", func() (bool, string) {
		peers, err := listPeers(survivor)
		if err != nil {
			return false, err.Error()
		}
		return len(peers) == 2, fmt.Sprintf("peers %+v", peers)
	})
}

// dirDigest lists every file under dir with a hash of its contents so a test
// can show that a refused start touched nothing.
func dirDigest(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "LOCK" {
			// The lock file holds the pid of whoever took the lock last,
			// for people; it is not data.
			return nil
		}
		if d.IsDir() {
			files[rel+"/"] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// sameDir fails the test naming every file a refused start added, removed or
// changed.
func sameDir(t *testing.T, before, after map[string]string) {
	t.Helper()
	var diffs []string
	for f, h := range before {
		if a, ok := after[f]; !ok {
			diffs = append(diffs, "removed "+f)
		} else if a != h {
			diffs = append(diffs, "changed "+f)
		}
	}
	for f := range after {
		if _, ok := before[f]; !ok {
			diffs = append(diffs, "added "+f)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Fatalf("a refused start touched the data dir: %s", strings.Join(diffs, ", "))
	}
}
