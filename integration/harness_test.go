package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"flotilla/cluster"
)

// waitFor polls cond until it reports true or the timeout passes; the last
// message cond gave is in the failure.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// server is one `flotilla server` process on its own loopback address, or
// on a test host's address inside that host's network namespace.
type server struct {
	t       testing.TB
	name    string
	ip      string
	dataDir string
	args    []string
	netns   string // when set, the process runs in this network namespace

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *lockedWriter // the process writes it while the test reads it
}

func (s *server) apiAddr() string    { return net.JoinHostPort(s.ip, "6443") }
func (s *server) gossipAddr() string { return net.JoinHostPort(s.ip, "7946") }

// newServer describes a server at ip with a fresh data dir; extra flags are
// appended to the defaults.
func newServer(t testing.TB, name, ip string, extra ...string) *server {
	t.Helper()
	s := &server{t: t, name: name, ip: ip, dataDir: filepath.Join(t.TempDir(), name)}
	s.args = append([]string{"server", "--name", name, "--data-dir", s.dataDir, "--bind", ip}, extra...)
	if !slices.Contains(extra, "--token") {
		s.args = append(s.args, "--token", testServerToken)
	}
	t.Cleanup(s.kill)
	return s
}

// newServerIn describes a server inside test host h, bound to h's address.
func newServerIn(t testing.TB, h *testHost, name string, extra ...string) *server {
	t.Helper()
	s := newServer(t, name, h.ip, extra...)
	s.netns = h.nsPath
	return s
}

// start runs the process; it keeps running until kill or stop.
func (s *server) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(flotillaBin, s.args...)
	if s.netns != "" {
		// nsenter without --fork execs flotilla in place: the pid, and so
		// every signal, is flotilla's own.
		cmd = exec.Command("nsenter", append([]string{"--net=" + s.netns, "--", flotillaBin}, s.args...)...)
	}
	s.log = &lockedWriter{w: &bytes.Buffer{}}
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.name, err)
	}
	s.cmd = cmd
	done := make(chan struct{})
	s.done = done
	go func() { _ = cmd.Wait(); close(done) }()
}

// kill sends SIGKILL and waits for the process to go.
func (s *server) kill() { s.signal(syscall.SIGKILL) }

// stop sends SIGTERM (graceful shutdown) and waits.
func (s *server) stop() { s.signal(syscall.SIGTERM) }

func (s *server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	s.mu.Lock()
	s.cmd = nil
	s.mu.Unlock()
}

func (s *server) output() string {
	s.mu.Lock()
	lw := s.log
	s.mu.Unlock()
	if lw == nil {
		return ""
	}
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.String()
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// flotilla runs one CLI command to completion.
func flotilla(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, flotillaBin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// listPeers asks one server for the Raft peers.
func listPeers(s *server) ([]cluster.Peer, error) { return listPeersIn(nil, s, 3*time.Second) }

// listPeersIn is listPeers run inside test host h (nil: this namespace),
// for servers only a lab host can reach.
func listPeersIn(h *testHost, s *server, timeout time.Duration) ([]cluster.Peer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	args := append([]string{"operator", "raft", "list-peers", "-o", "json"}, s.opArgs()...)
	var out string
	var err error
	if h == nil {
		out, err = flotilla(ctx, args...)
	} else {
		out, err = h.flotilla(ctx, args...)
	}
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
	}
	var peers []cluster.Peer
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		return nil, fmt.Errorf("decode list-peers: %v: %s", err, out)
	}
	return peers, nil
}

// leaderOf returns the leader's ID as s sees it, with all its peers.
func leaderOf(s *server) (string, []cluster.Peer, error) {
	peers, err := listPeers(s)
	if err != nil {
		return "", nil, err
	}
	for _, p := range peers {
		if p.State == "leader" {
			return p.ID, peers, nil
		}
	}
	return "", peers, nil
}

// dumpOnFailure prints the servers' logs when the test failed.
func dumpOnFailure(t testing.TB, servers ...*server) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, s := range servers {
			out := s.output()
			if len(out) > 8000 {
				out = "...\n" + out[len(out)-8000:]
			}
			t.Logf("---- %s log ----\n%s", s.name, out)
		}
	})
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
