package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/cluster"
)

// These tests check the test-host helpers themselves, so that a failure in
// an end-to-end test points at flotilla, not at the lab.

// echoServer serves TCP echo on a listener inside h until the test ends.
func echoServer(t *testing.T, h *testHost) string {
	t.Helper()
	ln, err := h.listen("tcp", net.JoinHostPort(h.ip, "0"))
	if err != nil {
		t.Fatalf("listen in %s: %v", h.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip dials addr from h and checks one echoed message.
func roundTrip(h *testHost, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return echoOn(c, "ping from "+h.name, timeout)
}

func echoOn(c net.Conn, msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo: got %q, want %q", buf, msg)
	}
	return nil
}

func rootInterfaces(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	sort.Strings(names)
	return names
}

func TestTestHostReach(t *testing.T) {
	before := rootInterfaces(t)
	l := newLab(t)
	a, b := l.host("a"), l.host("b")
	if after := rootInterfaces(t); strings.Join(after, ",") != strings.Join(before, ",") {
		t.Fatalf("the lab changed the root namespace's interfaces: %v -> %v", before, after)
	}
	if a.ip == b.ip || !strings.HasPrefix(a.nsPath, "/run/netns/flt-") {
		t.Fatalf("hosts: a %s %s, b %s %s", a.ip, a.nsPath, b.ip, b.nsPath)
	}
	addr := echoServer(t, a)
	if err := roundTrip(b, addr, 5*time.Second); err != nil {
		t.Fatalf("b -> a tcp: %v", err)
	}
	if err := roundTrip(a, addr, 5*time.Second); err != nil {
		t.Fatalf("a -> a tcp: %v", err)
	}

	// UDP, and the ip tool inside a host sees only the host's interfaces.
	pc, err := a.listenPacket("udp", net.JoinHostPort(a.ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	uc, err := b.dial(ctx, "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if err := echoOn(uc, "datagram", 5*time.Second); err != nil {
		t.Fatalf("b -> a udp: %v", err)
	}
	out, err := a.run(ctx, "ip", "-o", "addr", "show")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, a.ip+"/24") || strings.Contains(out, b.ip) || strings.Count(out, "inet ") != 2 {
		t.Fatalf("a's addresses should be lo and its eth0 only:\n%s", out)
	}
}

func TestTestHostFaults(t *testing.T) {
	l := newLab(t)
	a, b, c := l.host("a"), l.host("b"), l.host("c")
	addr := echoServer(t, a)
	for _, h := range []*testHost{b, c} {
		if err := roundTrip(h, addr, 5*time.Second); err != nil {
			t.Fatalf("%s -> a: %v", h.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	held, err := b.dial(ctx, "tcp", addr) // established before the cut
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	l.cut(a, b)
	l.cut(a, b) // idempotent: one heal must undo both
	// Proving an absence needs a bounded wait; 1s is far above the
	// sub-millisecond round trip on a veth.
	if err := roundTrip(b, addr, time.Second); err == nil {
		t.Fatal("b reached a across a cut")
	}
	if err := echoOn(held, "through the cut", time.Second); err == nil {
		t.Fatal("an established connection survived the cut")
	}
	if err := roundTrip(c, addr, 5*time.Second); err != nil {
		t.Fatalf("c -> a during the a/b cut: %v", err)
	}
	l.heal(a, b)
	waitFor(t, 10*time.Second, "b to reach a after heal", func() (bool, string) {
		if err := roundTrip(b, addr, time.Second); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	out, err := a.run(ctx, "iptables", "-w", "-t", "raw", "-S", "PREROUTING")
	if err != nil || strings.Contains(out, "DROP") {
		t.Fatalf("rules left in a after heal: %v\n%s", err, out)
	}

	b.linkDown()
	if err := roundTrip(b, addr, time.Second); err == nil {
		t.Fatal("b reached a with its link down")
	}
	if err := roundTrip(c, addr, 5*time.Second); err != nil {
		t.Fatalf("c -> a while b's link is down: %v", err)
	}
	b.linkUp()
	waitFor(t, 10*time.Second, "b to reach a after link up", func() (bool, string) {
		if err := roundTrip(b, addr, time.Second); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

func TestTestHostServer(t *testing.T) {
	l := newLab(t)
	a, b := l.host("a"), l.host("b")
	s := newServerIn(t, a, "m1", "--bootstrap-expect", "1")
	dumpOnFailure(t, s)
	s.start()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	pid := cmd.Process.Pid

	// nsenter must have exec'd flotilla in place, in a's namespace only.
	waitFor(t, 10*time.Second, "nsenter to exec flotilla", func() (bool, string) {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		return err == nil && exe == flotillaBin, fmt.Sprintf("exe %q %v", exe, err)
	})
	if got := pidsInNetns(a.nsPath); len(got) != 1 || got[0] != pid {
		t.Fatalf("processes in a: %v, want [%d]", got, pid)
	}
	for _, ns := range []string{"mnt", "pid"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		if mine != its {
			t.Fatalf("flotilla's %s namespace %s differs from the test's %s", ns, its, mine)
		}
	}

	// Its API answers at a's address from b.
	waitFor(t, 30*time.Second, "m1 to lead, asked from b", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := b.flotilla(ctx, append([]string{"operator", "raft", "list-peers", "-o", "json"}, s.opArgs()...)...)
		if err != nil {
			return false, err.Error()
		}
		var peers []cluster.Peer
		if err := json.Unmarshal([]byte(out), &peers); err != nil {
			return false, out
		}
		return len(peers) == 1 && peers[0].ID == "m1" && peers[0].State == "leader", out
	})

	// SIGTERM reaches flotilla itself: it shuts down cleanly (exit 0), where
	// a signal stuck in nsenter would have ended it by the signal.
	s.stop()
	if st := cmd.ProcessState; st == nil || !st.Exited() || st.ExitCode() != 0 {
		t.Fatalf("after SIGTERM: %v, want a clean exit", cmd.ProcessState)
	}

	s.start()
	s.mu.Lock()
	cmd = s.cmd
	s.mu.Unlock()
	waitFor(t, 30*time.Second, "m1 back, asked from b", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := b.flotilla(ctx, append([]string{"operator", "raft", "list-peers"}, s.opArgs()...)...)
		return err == nil, out
	})
	s.kill()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("after kill: %v", cmd.ProcessState)
	}
	if got := pidsInNetns(a.nsPath); len(got) != 0 {
		t.Fatalf("processes left in a after kill: %v", got)
	}
}

func TestTestHostCleanup(t *testing.T) {
	var prefix, lockPath string
	var stray *exec.Cmd
	strayDone := make(chan struct{})
	var orphan int
	t.Run("lab", func(t *testing.T) {
		l := newLab(t)
		h := l.host("a")
		prefix, lockPath = l.prefix, l.lock.Name()
		// One process the test started and forgot, one orphan no test
		// could know about: both must go with the lab.
		stray = h.cmd("sleep", "600")
		if err := stray.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = stray.Wait(); close(strayDone) }()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := h.run(ctx, "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!")
		if err != nil {
			t.Fatal(err)
		}
		if orphan, err = strconv.Atoi(strings.TrimSpace(out)); err != nil {
			t.Fatalf("orphan pid %q: %v", out, err)
		}
		if !alive(orphan) {
			t.Fatalf("orphan %d not running", orphan)
		}
	})
	checkNoLeakedNetns(t, prefix)
	checkNoLeakedMounts(t, filepath.Join(netnsDir, prefix+"a"))
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the process started in the host outlived the lab")
	}
	if alive(orphan) {
		t.Fatalf("orphan %d outlived the lab", orphan)
	}
	if fileExists(lockPath) {
		t.Fatalf("lab lock %s left", lockPath)
	}
}

func TestTestHostSweep(t *testing.T) {
	requireNetAdmin(t)
	live := newLab(t)
	liveHost := live.host("a")

	// A lab as a crashed run leaves it: namespaces, a process inside, and a
	// lock file nobody holds.
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	stale := []string{"flt-" + id + "-sw", "flt-" + id + "-x"}
	t.Cleanup(func() {
		for _, n := range stale {
			_ = removeNetns(n)
		}
		os.Remove(filepath.Join(labLockDir, id+".lock"))
	})
	for _, n := range stale {
		if out, err := exec.Command("ip", "netns", "add", n).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", n, err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(labLockDir, id+".lock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("nsenter", "--net="+filepath.Join(netnsDir, stale[1]), "--", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(done) }()

	sweepStaleLabs()

	checkNoLeakedNetns(t, "flt-"+id+"-")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the sweep left the stale lab's process running")
	}
	if fileExists(filepath.Join(labLockDir, id+".lock")) {
		t.Fatal("the sweep left the stale lab's lock file")
	}
	if !fileExists(liveHost.nsPath) || !fileExists(filepath.Join(netnsDir, live.sw)) {
		t.Fatal("the sweep removed a live lab")
	}
}

func TestTestHostContainerd(t *testing.T) {
	requireContainerd(t)
	requireCtr(t)
	addr := sharedContainerd(t)
	out, err := ctr(addr, "", 10*time.Second, "version")
	if err != nil || !strings.Contains(out, "Server:") {
		t.Fatalf("ctr version: %v\n%s", err, out)
	}
	if again := sharedContainerd(t); again != addr {
		t.Fatalf("second sharedContainerd: %s, want the same %s", again, addr)
	}
	if !strings.HasPrefix(addr, filepath.Join(os.TempDir(), containerdDirPrefix)) && !strings.HasPrefix(addr, "/tmp/"+containerdDirPrefix) {
		t.Fatalf("shared containerd address %s is not private", addr)
	}
}

// TestTestHostContainerdCleanup runs a real container on a private
// containerd and checks that both a normal stop and, after the owning test
// binary "crashed", the next run's sweep leave nothing behind.
func TestTestHostContainerdCleanup(t *testing.T) {
	requireContainerd(t)
	requireCtr(t)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	buildSleeper(t, rootfs)

	for _, tc := range []struct {
		name string
		end  func(t *testing.T, p *containerdProc, log *lockedWriter)
	}{
		{"stop", func(t *testing.T, p *containerdProc, log *lockedWriter) {
			// containerdproc deletes the task and undoes the mount itself;
			// what the test's own check then finds is a bonus report.
			if problems := p.stop(); len(problems) > 0 {
				t.Logf("stop reported: %v", problems)
			}
			log.mu.Lock()
			logged := log.w.String()
			log.mu.Unlock()
			if !strings.Contains(logged, "left running") {
				t.Errorf("stop should report the task it had to delete; log:\n%s", logged)
			}
		}},
		{"crash then sweep", func(t *testing.T, p *containerdProc, _ *lockedWriter) {
			// The owner dies: its lock goes, containerd and the shims live
			// on (containerdproc does not tie them to its parent).
			p.lock.Close()
			sweepStaleContainerd()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log := &lockedWriter{w: &bytes.Buffer{}}
			p, err := startContainerd(slog.New(slog.NewTextHandler(log, nil)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.stop() }) // harmless once the case has run
			b := make([]byte, 3)
			_, _ = rand.Read(b)
			ns := "flt-st-" + hex.EncodeToString(b)
			t.Cleanup(func() { removeEmptyNamespaceDirs(ns) })
			if out, err := ctr(p.address, ns, 30*time.Second, "run", "-d", "--null-io", "--rootfs", rootfs, "c1", "/sleeper"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			out, err := ctr(p.address, ns, 10*time.Second, "tasks", "ls")
			if err != nil {
				t.Fatal(err)
			}
			var pid int
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) >= 3 && f[0] == "c1" {
					pid, _ = strconv.Atoi(f[1])
				}
			}
			if pid == 0 || !alive(pid) {
				t.Fatalf("container not running:\n%s", out)
			}
			cgs := cgroupDirs(pid)
			if len(cgs) == 0 {
				t.Fatalf("no cgroups for container pid %d", pid)
			}
			// Something mounted under the containerd dir, as a snapshot
			// would be.
			mnt := filepath.Join(p.dir, "root", "extra")
			if err := os.MkdirAll(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
			sock := shimSocket(p.address, ns, "c1")
			if !fileExists(sock) {
				t.Fatalf("shim socket %s missing: the shim socket path formula is wrong", sock)
			}

			tc.end(t, p, log)

			if alive(pid) {
				t.Errorf("container %d still running", pid)
			}
			for _, pr := range listProcs() {
				if cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pr.pid)); !pr.zombie && bytes.Contains(cl, []byte(p.dir)) {
					t.Errorf("process %d still uses %s: %q", pr.pid, p.dir, cl)
				}
			}
			checkNoLeakedMounts(t, p.dir)
			for _, left := range append([]string{p.dir, sock, filepath.Join(runcRoot, ns, "c1")}, cgs...) {
				if fileExists(left) {
					t.Errorf("%s left", left)
				}
			}
		})
	}
}

func requireCtr(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ctr"); err != nil {
		t.Skipf("this test drives containerd with ctr: %v", err)
	}
}

// buildSleeper puts a static Go program at rootfs/sleeper that sleeps an
// hour: a container needs no image then (ctr run --rootfs).
func buildSleeper(t *testing.T, rootfs string) {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module sleeper\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	prog := "package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(time.Hour) }\n"
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(rootfs, "sleeper"), ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sleeper: %v\n%s", err, out)
	}
}
