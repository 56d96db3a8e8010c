package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A lab is a small network made of network namespaces: one "switch"
// namespace holding a Linux bridge, and one namespace per test host with a
// veth from its eth0 to that bridge. Everything lives in namespaces the test
// created and removes; nothing is added to the root network namespace, and
// traffic only flows between the lab's own addresses.
//
// Names: the switch is flt-<id>-sw and a host flt-<id>-<name>, where id is
// random per lab so concurrent test binaries never collide. While a lab is
// alive its owner holds an flock on /run/flotilla-it/<id>.lock; a lab whose
// lock nobody holds was left by a crashed run, and sweepStaleLabs removes it.
type lab struct {
	t      testing.TB
	id     string // 6 hex digits
	octet  int    // hosts are 10.<octet>.0.<n>/24
	prefix string // flt-<id>-
	sw     string // switch namespace name
	lock   *os.File

	mu    sync.Mutex
	hosts []*testHost
	nss   []string // namespaces created, in order, for cleanup
}

// testHost is one node of a lab: a network namespace with eth0 on the lab's
// bridge and lo up. Processes join only its network namespace (nsenter
// --net), never a private mount namespace as `ip netns exec` would make:
// an agent's pod namespace bind mounts must stay visible to containerd,
// which runs in the root mount namespace.
type testHost struct {
	lab    *lab
	name   string
	ip     string // eth0's address
	mac    string // eth0's MAC, fixed so cut can match it
	nsPath string // /run/netns/flt-<id>-<name>
	peer   string // the veth end on the bridge, in the switch namespace
}

const labLockDir = "/run/flotilla-it"

// labName matches the namespaces a lab makes; group 1 is the lab id.
var labName = regexp.MustCompile(`^flt-([0-9a-f]{6})-`)

var hostName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// newLab makes an empty lab (the switch namespace with br0 up); it is torn
// down when t ends, whether t passed, failed or panicked.
func newLab(t testing.TB) *lab {
	t.Helper()
	requireNetAdmin(t)
	l := &lab{t: t}
	if err := os.MkdirAll(labLockDir, 0o755); err != nil {
		t.Fatalf("lab: %v", err)
	}
	for {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		l.id = hex.EncodeToString(b)[:6]
		// 10.128.0.0–10.199.255.255: clear of the default Service range
		// (10.96.0.0/12) and pod range (10.244.0.0/16), so a lab address
		// is never mistaken for either in a test's logs.
		l.octet = 128 + int(b[3])%72
		// O_EXCL makes the id unique among live labs on this machine.
		f, err := os.OpenFile(filepath.Join(labLockDir, l.id+".lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			t.Fatalf("lab lock: %v", err)
		}
		// Held before any namespace exists and released only after all are
		// gone, so a sweep never takes a live lab for a stale one.
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			os.Remove(f.Name())
			t.Fatalf("lab lock: %v", err)
		}
		l.lock = f
		break
	}
	l.prefix = "flt-" + l.id + "-"
	l.sw = l.prefix + "sw"
	t.Cleanup(l.destroy)

	l.addNetns(l.sw)
	l.ip(l.sw, "link", "add", "br0", "type", "bridge")
	l.ip(l.sw, "link", "set", "br0", "up")
	return l
}

// requireNetAdmin skips t where namespaces cannot be made.
func requireNetAdmin(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("test hosts need root (network namespaces, veth, iptables)")
	}
	for _, bin := range []string{"ip", "nsenter", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("test hosts need %s: %v", bin, err)
		}
	}
}

// host adds a node to the lab: namespace flt-<id>-<name>, eth0 at
// 10.<octet>.0.<n>/24 on the bridge, lo up, IPv4 forwarding on (a node
// prerequisite, as kubeadm checks, so host-gw pod routes work).
func (l *lab) host(name string) *testHost {
	l.t.Helper()
	if !hostName.MatchString(name) || name == "sw" {
		l.t.Fatalf("lab: bad host name %q", name)
	}
	l.mu.Lock()
	n := len(l.hosts) + 1
	if n > 250 {
		l.mu.Unlock()
		l.t.Fatalf("lab: too many hosts")
	}
	h := &testHost{
		lab:    l,
		name:   name,
		ip:     fmt.Sprintf("10.%d.0.%d", l.octet, n),
		mac:    fmt.Sprintf("02:f1:%02x:00:00:%02x", l.octet, n),
		nsPath: filepath.Join(netnsDir, l.prefix+name),
		peer:   fmt.Sprintf("v%d", n),
	}
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()

	ns := l.prefix + name
	l.addNetns(ns)
	// Created inside the host and with its peer placed straight into the
	// switch, so neither end ever exists in the root namespace.
	l.ip(ns, "link", "add", "eth0", "address", h.mac, "type", "veth", "peer", "name", h.peer, "netns", l.sw)
	l.ip(l.sw, "link", "set", h.peer, "master", "br0", "up")
	l.ip(ns, "addr", "add", h.ip+"/24", "dev", "eth0")
	l.ip(ns, "link", "set", "eth0", "up")
	l.ip(ns, "link", "set", "lo", "up")
	if err := h.do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		l.t.Fatalf("lab: %s: enable forwarding: %v", name, err)
	}
	return h
}

func (l *lab) addNetns(name string) {
	l.t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		l.t.Fatalf("lab: ip netns add %s: %v: %s", name, err, out)
	}
	l.mu.Lock()
	l.nss = append(l.nss, name)
	l.mu.Unlock()
}

// ip runs `ip -n ns args...` and fails the test on error.
func (l *lab) ip(ns string, args ...string) {
	l.t.Helper()
	args = append([]string{"-n", ns}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("lab: ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// destroy kills what runs in the lab's namespaces, deletes them (which
// deletes the veths), checks nothing is left, and releases the lab id.
func (l *lab) destroy() {
	l.mu.Lock()
	nss := append([]string(nil), l.nss...)
	l.mu.Unlock()
	// Hosts first, newest first; the switch (created first) goes last.
	for i := len(nss) - 1; i >= 0; i-- {
		if err := removeNetns(nss[i]); err != nil {
			l.t.Errorf("lab: %v", err)
		}
	}
	checkNoLeakedNetns(l.t, l.prefix)
	os.Remove(l.lock.Name())
	l.lock.Close() // releases the flock
}

// removeNetns kills every process in the named namespace, then deletes it.
// Killing first matters: a process keeps the namespace, and with it the
// host's veth, alive after the name is gone.
func removeNetns(name string) error {
	p := filepath.Join(netnsDir, name)
	if _, err := os.Stat(p); os.IsNotExist(err) {
		return nil
	}
	if left := killAndWait(pidsInNetns(p), 10*time.Second); len(left) > 0 {
		return fmt.Errorf("processes %v in %s would not die", left, name)
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, out)
	}
	return nil
}

// sweepStalePodNetns unmounts the pod network namespaces that agents of a
// run killed mid-test (go test's timeout runs no cleanup) left mounted in
// their data dirs under the temp dir, so those dirs can be removed. It runs
// after the stale containerd is gone: a namespace a process still lives in
// belongs to a live run and is left alone. (A concurrent run's pod caught
// between its network setup and its first container has no process yet;
// such a pod fails to start and its test says so. CI runs one at a time.)
func sweepStalePodNetns() {
	prefix := filepath.Join(os.TempDir(), "Test")
	for _, m := range mountPoints() {
		if !strings.HasPrefix(m, prefix) || !strings.Contains(m, "/agent/network/netns/") {
			continue
		}
		if len(pidsInNetns(m)) > 0 {
			continue
		}
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			fmt.Fprintf(os.Stderr, "integration: sweep stale pod netns %s: %v\n", m, err)
			continue
		}
		fmt.Fprintf(os.Stderr, "integration: unmounted stale pod netns %s\n", m)
	}
}

// sweepStaleDataDisks unmounts the small tmpfs data disks (the disk-full
// scenario's) that a run killed mid-test left under the temp dir. A plain
// unmount, not a detach: one a live server of a concurrent run still has
// open is busy and stays.
func sweepStaleDataDisks() {
	prefix := filepath.Join(os.TempDir(), "TestHAMastersDiskFull")
	for _, m := range mountPoints() {
		if !strings.HasPrefix(m, prefix) {
			continue
		}
		if err := unix.Unmount(m, 0); err != nil {
			if !errors.Is(err, unix.EBUSY) {
				fmt.Fprintf(os.Stderr, "integration: sweep stale mount %s: %v\n", m, err)
			}
			continue
		}
		fmt.Fprintf(os.Stderr, "integration: unmounted stale mount %s\n", m)
	}
}

// sweepStaleLabs removes what an earlier crashed run left: lab namespaces
// whose owner no longer holds the lab lock (processes in them are killed
// first), and containerd directories nobody owns (see
// sweepStaleContainerd). Live labs of concurrent test binaries are left
// alone. Best effort: it reports problems on stderr and never fails the run.
func sweepStaleLabs() {
	if os.Geteuid() != 0 {
		return
	}
	ents, _ := os.ReadDir(netnsDir)
	byID := map[string][]string{}
	for _, e := range ents {
		if m := labName.FindStringSubmatch(e.Name()); m != nil {
			byID[m[1]] = append(byID[m[1]], e.Name())
		}
	}
	for id, names := range byID {
		lockPath := filepath.Join(labLockDir, id+".lock")
		f, err := os.OpenFile(lockPath, os.O_RDWR|syscall.O_CLOEXEC, 0)
		if err == nil {
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				f.Close() // held: a live lab
				continue
			}
		} else if !os.IsNotExist(err) {
			fmt.Fprintf(os.Stderr, "integration: sweep lab %s: %v\n", id, err)
			continue
		}
		// Any order will do: nothing in a stale lab is still wanted.
		for _, name := range names {
			if err := removeNetns(name); err != nil {
				fmt.Fprintf(os.Stderr, "integration: sweep stale lab: %v\n", err)
			}
		}
		fmt.Fprintf(os.Stderr, "integration: removed stale lab %s %v\n", id, names)
		if f != nil {
			os.Remove(lockPath)
			f.Close()
		}
	}
	sweepStaleContainerd()
	sweepStalePodNetns()
	sweepStaleDataDisks()
}

// cmd returns, unstarted, a command that runs inside h's network namespace
// (and only that namespace). nsenter execs args[0] in place, so the
// command's pid is the target's own and signals reach it directly.
func (h *testHost) cmd(args ...string) *exec.Cmd {
	c := exec.Command("nsenter", append([]string{"--net=" + h.nsPath, "--"}, args...)...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return c
}

// run runs a command inside h to completion and returns its combined output.
func (h *testHost) run(ctx context.Context, args ...string) (string, error) {
	c := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + h.nsPath, "--"}, args...)...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.WaitDelay = 5 * time.Second // a grandchild holding the pipe must not hang the test
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if err != nil {
		err = fmt.Errorf("%s: %s: %w: %s", h.name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), err
}

// flotilla runs one flotilla CLI command inside h (lab addresses are only
// reachable from inside the lab).
func (h *testHost) flotilla(ctx context.Context, args ...string) (string, error) {
	return h.run(ctx, append([]string{flotillaBin}, args...)...)
}

// do runs fn on an OS thread switched into h's network namespace, so the
// sockets fn opens belong to h. Only fn's own goroutine is inside: fn must
// open its sockets itself, and by IP literal (a name lookup may run on
// other threads).
func (h *testHost) do(fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine, so the caller's own thread lock (if any) is not
	// disturbed.
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(h.nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open %s: %w", h.nsPath, err)
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", h.name, err)
			return
		}
		ferr := fn()
		// Switch back and unlock rather than let the thread die with the
		// goroutine: a child started with Pdeathsig from a thread is killed
		// when that thread exits (golang/go#27505), even if the process
		// lives on. Only if switching back fails is the thread left locked,
		// so Go discards it instead of reusing it in the wrong namespace.
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leave %s: %w", h.name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listen opens a listener inside h (addr like h.ip+":0").
func (h *testHost) listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// listenPacket opens a UDP (or other packet) socket inside h.
func (h *testHost) listenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.do(func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// dial connects from inside h. Its signature fits http.Transport.DialContext
// and rest.Config.Dial, so any client can talk from h.
func (h *testHost) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// linkDown pulls h's cable: the veth end on the bridge goes down, so eth0
// loses carrier and nothing passes either way. Doing it on the switch side
// keeps eth0 administratively up, so its addresses and any routes an agent
// added through it survive, as they would on a real cable pull.
func (h *testHost) linkDown() {
	h.lab.t.Helper()
	h.lab.ip(h.lab.sw, "link", "set", h.peer, "down")
}

// linkUp plugs the cable back in.
func (h *testHost) linkUp() {
	h.lab.t.Helper()
	h.lab.ip(h.lab.sw, "link", "set", h.peer, "up")
}

// cut partitions a from b: each drops every frame arriving on eth0 from the
// other's MAC, in the raw table before conntrack. Matching the MAC rather
// than the node IP also drops forwarded pod traffic between the two and
// flows already established; dropping on arrival (not on send) makes
// packets vanish silently, as on a real partition. Idempotent.
func (l *lab) cut(a, b *testHost) {
	l.t.Helper()
	for _, p := range [][2]*testHost{{a, b}, {b, a}} {
		if p[0].cutRuleFor(p[1], "-C") == nil {
			continue // already cut
		}
		if err := p[0].cutRuleFor(p[1], "-I"); err != nil {
			l.t.Fatalf("lab: cut %s from %s: %v", p[0].name, p[1].name, err)
		}
	}
}

// heal undoes cut(a, b).
func (l *lab) heal(a, b *testHost) {
	l.t.Helper()
	for _, p := range [][2]*testHost{{a, b}, {b, a}} {
		for p[0].cutRuleFor(p[1], "-C") == nil {
			if err := p[0].cutRuleFor(p[1], "-D"); err != nil {
				l.t.Fatalf("lab: heal %s and %s: %v", p[0].name, p[1].name, err)
			}
		}
	}
}

// cutRuleFor checks (-C), inserts (-I) or deletes (-D) h's rule dropping
// frames from peer.
func (h *testHost) cutRuleFor(peer *testHost, op string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := h.run(ctx, "iptables", "-w", "-t", "raw", op, "PREROUTING", "-i", "eth0",
		"-m", "mac", "--mac-source", peer.mac, "-m", "comment", "--comment", "flotilla-test-cut", "-j", "DROP")
	return err
}
