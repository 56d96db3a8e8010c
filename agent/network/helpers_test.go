package network

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests that change network state run in a "node": a network namespace
// made for the one test. The parent test re-executes this test binary under
// `unshare --net` (a new network namespace, the same mount namespace, so
// the pod namespaces' bind mounts are real and visible), running only that
// test; the child sees childEnv and runs the scenario. The namespace, and
// every interface, route and iptables rule in it, dies with the child.
const (
	childEnv    = "FLOTILLA_NETNS_CHILD"  // the test the child process runs
	childDirEnv = "FLOTILLA_NETNS_DIR"    // a directory the parent owns and cleans
	parentNSEnv = "FLOTILLA_NETNS_PARENT" // the parent's netns inode, which the child must not be in
)

// inNode reports whether the caller is the child that must run the
// scenario, and its scratch directory. In the parent it runs the child,
// checks it passed and that nothing stayed mounted, and returns false.
func inNode(t *testing.T) (string, bool) {
	t.Helper()
	if os.Getenv(childEnv) == t.Name() {
		if ino := netnsInode(t, "/proc/thread-self/ns/net"); strconv.FormatUint(ino, 10) == os.Getenv(parentNSEnv) {
			t.Fatal("the node namespace is the parent's: refusing to change it")
		}
		if err := loopbackUp(); err != nil { // a new namespace starts with lo down
			t.Fatal(err)
		}
		return os.Getenv(childDirEnv), true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, bin := range []string{"unshare", "nsenter", "ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Skip("CNI plugins not installed in /usr/lib/cni")
	}
	dir := t.TempDir()
	t.Cleanup(func() {
		// A child that died mid-test may leave mounts; remove them so the
		// temp dir can go, and fail the test for it.
		for _, mp := range mountsUnder(t, dir) {
			t.Errorf("mount left behind: %s", mp)
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	})
	ctx := context.Background()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-5*time.Second))
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", os.Args[0],
		"-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(),
		childEnv+"="+t.Name(), childDirEnv+"="+dir,
		parentNSEnv+"="+strconv.FormatUint(netnsInode(t, "/proc/self/ns/net"), 10))
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("scenario in node namespace failed (%v):\n%s", err, out)
	}
	if testing.Verbose() {
		t.Logf("node namespace run:\n%s", out)
	}
	return dir, false
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// mountsUnder lists mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// newTestManager makes a Manager under dir/name, and checks on cleanup that
// the test left nothing behind.
func newTestManager(t *testing.T, dir, name string) *Manager {
	t.Helper()
	cfg := Config{DataDir: filepath.Join(dir, name), Logger: testLogger(t)}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() { // best effort, so a failed run does not leak mounts
			uids, _ := m.Pods()
			for _, uid := range uids {
				m.TeardownPod(context.Background(), uid)
			}
		}
		checkNoLeaks(t, cfg.DataDir)
	})
	return m
}

// checkNoLeaks asserts no pod state survives: no mounts, namespace files,
// records, IP leases, veths or hostPort chains.
func checkNoLeaks(t *testing.T, dataDir string) {
	t.Helper()
	if mps := mountsUnder(t, dataDir); len(mps) > 0 {
		t.Errorf("mounts left: %v", mps)
	}
	for _, sub := range []string{"netns", "state", "cni/results"} {
		if entries, _ := os.ReadDir(filepath.Join(dataDir, sub)); len(entries) > 0 {
			t.Errorf("%s not empty: %v", sub, entries)
		}
	}
	if leases := ipamLeases(t, dataDir); len(leases) > 0 {
		t.Errorf("IP leases left: %v", leases)
	}
	waitFor(t, 10*time.Second, "veths to disappear", func() bool {
		ifs, _ := net.Interfaces()
		for _, ifc := range ifs {
			if strings.HasPrefix(ifc.Name, "veth") {
				return false
			}
		}
		return true
	})
	out, err := exec.Command("iptables", "-w", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		t.Errorf("iptables: %v: %s", err, out)
	} else if strings.Contains(string(out), "CNI-DN-") {
		t.Errorf("hostPort chains left:\n%s", out)
	}
}

// ipamLeases lists the IPs host-local holds (its files named by IP).
func ipamLeases(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(dataDir, "ipam"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && net.ParseIP(d.Name()) != nil {
			out = append(out, d.Name())
		}
		return nil
	})
	return out
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// listenIn opens a TCP listener inside the network namespace at nsPath
// that answers every connection with reply.
func listenIn(t *testing.T, nsPath, addr, reply string) net.Addr {
	t.Helper()
	var ln net.Listener
	err := inNetNS(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, nsPath, err)
	}
	serve(t, ln, reply)
	return ln.Addr()
}

// serve answers each connection on ln with reply until the test ends.
func serve(t *testing.T, ln net.Listener, reply string) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, reply)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// readReply reads what the server sends before closing.
func readReply(t *testing.T, c net.Conn, err error) string {
	t.Helper()
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}

// dialFrom connects to addr from the namespace at nsPath.
func dialFrom(t *testing.T, nsPath, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialInNetNS(ctx, nsPath, "tcp", addr)
	return readReply(t, c, err)
}

// linkIn describes the interfaces in a namespace: name → (up, addresses).
type linkInfo struct {
	up    bool
	addrs []string
}

func linksIn(t *testing.T, nsPath string) map[string]linkInfo {
	t.Helper()
	out := map[string]linkInfo{}
	err := inNetNS(nsPath, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, ifc := range ifs {
			li := linkInfo{up: ifc.Flags&net.FlagUp != 0}
			addrs, err := ifc.Addrs()
			if err != nil {
				return err
			}
			for _, a := range addrs {
				li.addrs = append(li.addrs, a.String())
			}
			out[ifc.Name] = li
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// clientNS makes a second namespace wired to the node by a veth:
// node 192.168.77.1/24 (fl-node) <-> client 192.168.77.2/24 (fl-client).
// It stands for another machine on the node's network.
func clientNS(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "client-netns")
	if err := createNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", "fl-node").Run()
		if err := removeNetNS(path); err != nil {
			t.Error(err)
		}
	})
	run(t, "ip", "link", "add", "fl-node", "type", "veth", "peer", "name", "fl-client", "netns", path)
	run(t, "ip", "addr", "add", "192.168.77.1/24", "dev", "fl-node")
	run(t, "ip", "link", "set", "fl-node", "up")
	run(t, "nsenter", "--net="+path, "ip", "addr", "add", "192.168.77.2/24", "dev", "fl-client")
	run(t, "nsenter", "--net="+path, "ip", "link", "set", "fl-client", "up")
	return path
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mustSetup(t *testing.T, m *Manager, uid string, ports ...PortMapping) Attachment {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	att, err := m.SetupPod(ctx, PodNetwork{UID: uid, Namespace: "default", Name: "pod-" + uid, Ports: ports})
	if err != nil {
		t.Fatalf("setup %s: %v", uid, err)
	}
	return att
}

func mustTeardown(t *testing.T, m *Manager, uid string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.TeardownPod(ctx, uid); err != nil {
		t.Fatalf("teardown %s: %v", uid, err)
	}
}

func uidN(i int) string { return fmt.Sprintf("0000000%d-aaaa-bbbb-cccc-dddddddddddd", i) }
