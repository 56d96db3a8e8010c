package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runServerExpectFailure runs `flotilla server` with args and expects it to
// exit non-zero within the timeout with every one of wants in its output.
func runServerExpectFailure(t *testing.T, timeout time.Duration, args []string, wants ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := flotilla(ctx, append([]string{"server"}, args...)...)
	if ctx.Err() != nil {
		t.Fatalf("flotilla server %v did not exit within %s; output:\n%s", args, timeout, out)
	}
	var ee *exec.ExitError
	if err == nil || !asExitError(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("flotilla server %v: want a non-zero exit, got %v; output:\n%s", args, err, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("flotilla server %v: output should mention %q:\n%s", args, w, out)
		}
	}
	return out
}

func asExitError(err error, target **exec.ExitError) bool {
	ee, ok := err.(*exec.ExitError)
	if ok {
		*target = ee
	}
	return ok
}

// singleServer starts a one-server cluster at ip, waits for it to lead, and
// stops it gracefully, leaving a data dir with real Raft state.
func singleServer(t *testing.T, name, ip string, beforeStop func(*server)) *server {
	t.Helper()
	s := newServer(t, name, ip, "--bootstrap-expect", "1")
	dumpOnFailure(t, s)
	s.start()
	waitFor(t, 20*time.Second, name+" to lead", func() (bool, string) {
		id, peers, err := leaderOf(s)
		if err != nil {
			return false, err.Error()
		}
		return id == name, fmt.Sprintf("peers %+v", peers)
	})
	if beforeStop != nil {
		beforeStop(s)
	}
	s.stop()
	return s
}

func TestServerBadInput(t *testing.T) {
	t.Run("unknown flag", func(t *testing.T) {
		runServerExpectFailure(t, 10*time.Second, []string{"--no-such-flag"}, "unknown flag: --no-such-flag")
	})
	t.Run("unwritable data dir", func(t *testing.T) {
		// Root can write almost anywhere; /proc refuses even root.
		runServerExpectFailure(t, 10*time.Second,
			[]string{"--name", "x", "--data-dir", "/proc/flotilla-test", "--bind", "127.0.2.1", "--bootstrap-expect", "1"},
			"/proc/flotilla-test")
	})
	t.Run("join reaches nobody", func(t *testing.T) {
		runServerExpectFailure(t, 90*time.Second,
			[]string{"--name", "x", "--data-dir", t.TempDir(), "--bind", "127.0.2.2", "--join", "127.0.2.3:7946", "--token", testServerToken},
			"127.0.2.3")
	})
	t.Run("data dir in use", func(t *testing.T) {
		s := newServer(t, "locked", "127.0.2.4", "--bootstrap-expect", "1")
		dumpOnFailure(t, s)
		s.start()
		waitFor(t, 20*time.Second, "first server up", func() (bool, string) {
			id, _, err := leaderOf(s)
			if err != nil {
				return false, err.Error()
			}
			return id != "", "no leader"
		})
		runServerExpectFailure(t, 20*time.Second,
			[]string{"--name", "second", "--data-dir", s.dataDir, "--bind", "127.0.2.5", "--bootstrap-expect", "1"},
			"in use", s.dataDir)
	})
	t.Run("corrupt raft.db", func(t *testing.T) {
		s := singleServer(t, "corruptdb", "127.0.2.6", nil)
		db := filepath.Join(s.dataDir, "raft", "raft.db")
		// Everything after bolt's two meta pages: the root and every data
		// page. (Garbage in a free page alone would be harmless to bolt.)
		corruptFile(t, db, 2*4096)
		before := dirDigest(t, s.dataDir)
		runServerExpectFailure(t, 30*time.Second, s.args[1:], "raft.db")
		sameDir(t, before, dirDigest(t, s.dataDir))
	})
	t.Run("corrupt snapshot", func(t *testing.T) {
		s := singleServer(t, "corruptsnap", "127.0.2.7", func(s *server) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			out, err := flotilla(ctx, append([]string{"operator", "snapshot", "save", filepath.Join(t.TempDir(), "snap")}, s.opArgs()...)...)
			if err != nil {
				t.Fatalf("snapshot save: %v: %s", err, out)
			}
		})
		states, _ := filepath.Glob(filepath.Join(s.dataDir, "raft", "snapshots", "*", "state.bin"))
		if len(states) == 0 {
			t.Fatalf("no snapshot under %s", filepath.Join(s.dataDir, "raft", "snapshots"))
		}
		for _, st := range states {
			corruptFile(t, st, 0)
		}
		before := dirDigest(t, s.dataDir)
		runServerExpectFailure(t, 20*time.Second, s.args[1:], "snapshot")
		sameDir(t, before, dirDigest(t, s.dataDir))
	})
	t.Run("cluster state without the cluster's keys", func(t *testing.T) {
		// A data dir from before security (or whose tls/ was removed):
		// the server must not make a second CA for a cluster that has one.
		s := singleServer(t, "nokeys", "127.0.2.10", nil)
		if err := os.RemoveAll(filepath.Join(s.dataDir, "tls")); err != nil {
			t.Fatal(err)
		}
		runServerExpectFailure(t, 20*time.Second, s.args[1:], "no cluster keys")
		if fileExists(filepath.Join(s.dataDir, "tls", "ca.crt")) {
			t.Error("a new CA was made over the existing cluster state")
		}
	})
	t.Run("server of another cluster", func(t *testing.T) {
		a := newServer(t, "ca", "127.0.2.8", "--bootstrap-expect", "1")
		dumpOnFailure(t, a)
		a.start()
		waitFor(t, 20*time.Second, "cluster A up", func() (bool, string) {
			id, _, err := leaderOf(a)
			if err != nil {
				return false, err.Error()
			}
			return id == "ca", "no leader"
		})
		b := singleServer(t, "cb", "127.0.2.9", nil)
		// B's gossip is encrypted with its own cluster's key: A cannot even
		// read its join, so nothing of A reaches B's state (nor B's A's).
		// B, which has Raft state, keeps running as its own cluster and
		// keeps trying, as a server cut off from its peers would.
		b.args = []string{"server", "--name", "cb", "--data-dir", b.dataDir, "--bind", "127.0.2.9", "--join", a.gossipAddr()}
		b.start()
		waitFor(t, 60*time.Second, "cb's join refused", func() (bool, string) {
			out := b.output()
			return strings.Contains(out, "no installed keys") || strings.Contains(out, "another cluster"), lastLine(out)
		})
		waitFor(t, 30*time.Second, "cb leading its own cluster", func() (bool, string) {
			id, _, err := leaderOf(b)
			return err == nil && id == "cb", fmt.Sprint(id, err)
		})
		b.stop()
		// Cluster A is untouched: still one voter, still led by ca.
		id, peers, err := leaderOf(a)
		if err != nil || id != "ca" || len(peers) != 1 {
			t.Fatalf("cluster A changed: leader %q peers %+v err %v", id, peers, err)
		}
	})
}

// corruptFile overwrites a file with garbage from offset from to its end,
// keeping its size.
func corruptFile(t *testing.T, path string, from int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if from >= st.Size() {
		t.Fatalf("%s is %d bytes, nothing to corrupt from %d", path, st.Size(), from)
	}
	junk := []byte(strings.Repeat("\xde\xad\xbe\xef", int(st.Size()-from+3)/4))
	if _, err := f.WriteAt(junk[:st.Size()-from], from); err != nil {
		t.Fatal(err)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
