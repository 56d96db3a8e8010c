package network

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"
)

func TestPodNetworking(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	client := clientNS(t, dir)
	if err := m.SetPodCIDR("10.77.1.0/24"); err != nil {
		t.Fatal(err)
	}
	_, cidr, _ := net.ParseCIDR("10.77.1.0/24")
	// Egress to outside the cluster's pod range is masqueraded, pod to
	// pod is not; setting the same CIDR again adds nothing.
	wantMasq := []string{
		"-N FLOTILLA-POSTROUTING",
		"-A FLOTILLA-POSTROUTING -s 10.77.1.0/24 -d 10.244.0.0/16 -j RETURN",
		"-A FLOTILLA-POSTROUTING -s 10.77.1.0/24 ! -o flotilla0 -j MASQUERADE",
	}
	for range 2 {
		if err := m.ensureMasquerade(cidr); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("iptables", "-w", "-t", "nat", "-S", "FLOTILLA-POSTROUTING").CombinedOutput()
		if got := strings.Split(strings.TrimSpace(string(out)), "\n"); err != nil || !slices.Equal(got, wantMasq) {
			t.Fatalf("nat FLOTILLA-POSTROUTING = %q (%v), want %q", got, err, wantMasq)
		}
		out, _ = exec.Command("iptables", "-w", "-t", "nat", "-S", "POSTROUTING").CombinedOutput()
		if n := strings.Count(string(out), "-j FLOTILLA-POSTROUTING"); n != 1 {
			t.Fatalf("POSTROUTING jumps to FLOTILLA-POSTROUTING %d times:\n%s", n, out)
		}
	}
	ctx := context.Background()

	a := mustSetup(t, m, uidN(1), PortMapping{HostPort: 18080, ContainerPort: 8080})
	if !cidr.Contains(a.IP) || a.IP.Equal(net.ParseIP("10.77.1.1")) {
		t.Fatalf("pod IP %v not a pod address in %v", a.IP, cidr)
	}
	if a.NetNSPath != filepath.Join(dir, "node", "netns", uidN(1)) || !isNetNS(a.NetNSPath) {
		t.Fatalf("netns %q is not a mounted namespace file", a.NetNSPath)
	}
	links := linksIn(t, a.NetNSPath)
	if !links["lo"].up || !slices.Contains(links["lo"].addrs, "127.0.0.1/8") {
		t.Errorf("lo in pod: %+v", links["lo"])
	}
	if !links["eth0"].up || !slices.Contains(links["eth0"].addrs, a.IP.String()+"/24") {
		t.Errorf("eth0 in pod: %+v", links["eth0"])
	}
	if got, ok := m.Lookup(uidN(1)); !ok || !got.IP.Equal(a.IP) || got.NetNSPath != a.NetNSPath {
		t.Errorf("Lookup = %+v, %v", got, ok)
	}

	again := mustSetup(t, m, uidN(1), PortMapping{HostPort: 18080, ContainerPort: 8080})
	if !again.IP.Equal(a.IP) || again.NetNSPath != a.NetNSPath {
		t.Errorf("second SetupPod = %+v, want %+v", again, a)
	}

	b := mustSetup(t, m, uidN(2))
	if b.IP.Equal(a.IP) {
		t.Fatalf("two pods got %v", a.IP)
	}
	leases := ipamLeases(t, m.cfg.DataDir)
	sort.Strings(leases)
	if want := []string{a.IP.String(), b.IP.String()}; !sameSet(leases, want) {
		t.Errorf("leases = %v, want %v", leases, want)
	}
	if uids, err := m.Pods(); err != nil || !sameSet(uids, []string{uidN(1), uidN(2)}) {
		t.Errorf("Pods = %v, %v", uids, err)
	}

	listenIn(t, a.NetNSPath, "0.0.0.0:8080", "pod-a")
	listenIn(t, b.NetNSPath, "0.0.0.0:9000", "pod-b")
	gwLn, err := net.Listen("tcp4", "10.77.1.1:0") // the node, on the pods' gateway
	if err != nil {
		t.Fatal(err)
	}
	serve(t, gwLn, "node")

	t.Run("port-forward to localhost in the pod", func(t *testing.T) {
		c, err := m.DialContext(ctx, uidN(1), "tcp", "localhost:8080")
		if got := readReply(t, c, err); got != "pod-a" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("pod reaches its gateway", func(t *testing.T) {
		if got := dialFrom(t, a.NetNSPath, gwLn.Addr().String()); got != "node" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("pod reaches another pod by IP", func(t *testing.T) {
		c, err := m.DialContext(ctx, uidN(1), "tcp", net.JoinHostPort(b.IP.String(), "9000"))
		if got := readReply(t, c, err); got != "pod-b" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("node reaches a pod", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(b.IP.String(), "9000"), 5*time.Second)
		if got := readReply(t, c, err); got != "pod-b" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("hostPort from the node itself", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", "10.77.1.1:18080", 5*time.Second)
		if got := readReply(t, c, err); got != "pod-a" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("hostPort on the node's localhost", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", "127.0.0.1:18080", 5*time.Second)
		if got := readReply(t, c, err); got != "pod-a" {
			t.Fatalf("got %q", got)
		}
	})
	t.Run("hostPort from another machine", func(t *testing.T) {
		if got := dialFrom(t, client, "192.168.77.1:18080"); got != "pod-a" {
			t.Fatalf("got %q", got)
		}
	})

	mustTeardown(t, m, uidN(1))
	if _, err := os.Stat(a.NetNSPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netns file after teardown: %v", err)
	}
	if mps := mountsUnder(t, a.NetNSPath); len(mps) > 0 {
		t.Errorf("netns still mounted: %v", mps)
	}
	if slices.Contains(ipamLeases(t, m.cfg.DataDir), a.IP.String()) {
		t.Errorf("IP %v still leased after teardown", a.IP)
	}
	if _, ok := m.Lookup(uidN(1)); ok {
		t.Error("Lookup finds a torn-down pod")
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c, err := dialInNetNS(dctx, client, "tcp", "192.168.77.1:18080"); err == nil {
		c.Close()
		t.Error("hostPort still forwarded after teardown")
	}
	mustTeardown(t, m, uidN(1)) // idempotent
	mustTeardown(t, m, uidN(2))
}

func TestIPReuseAndFailedSetupUndone(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	// A /29 holds 5 pods: .2 to .6 (.0 network, .1 gateway, .7 broadcast).
	if err := m.SetPodCIDR("10.77.2.0/29"); err != nil {
		t.Fatal(err)
	}
	ips := map[string]net.IP{}
	for i := 1; i <= 5; i++ {
		ips[uidN(i)] = mustSetup(t, m, uidN(i)).IP
	}
	ctx := context.Background()
	_, err := m.SetupPod(ctx, PodNetwork{UID: uidN(6), Name: "sixth"})
	if err == nil {
		t.Fatal("a sixth pod got an address from a /29")
	}
	t.Logf("sixth pod: %v", err)
	if _, err := os.Stat(m.netnsPath(uidN(6))); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed setup left its netns file: %v", err)
	}
	if _, err := os.Stat(m.recordPath(uidN(6))); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed setup left its record: %v", err)
	}
	if uids, _ := m.Pods(); len(uids) != 5 {
		t.Errorf("Pods = %v after a failed setup", uids)
	}
	if _, err := m.SetupPod(ctx, PodNetwork{UID: uidN(7), Ports: []PortMapping{{HostPort: 80, Protocol: "icmp"}}}); err == nil {
		t.Error("bad port mapping accepted")
	}
	if _, err := m.SetupPod(ctx, PodNetwork{UID: "../../etc"}); err == nil {
		t.Error("bad UID accepted")
	}

	mustTeardown(t, m, uidN(3))
	got := mustSetup(t, m, uidN(6))
	if !got.IP.Equal(ips[uidN(3)]) {
		t.Errorf("new pod got %v, want the freed %v", got.IP, ips[uidN(3)])
	}
	for _, i := range []int{1, 2, 4, 5, 6} {
		mustTeardown(t, m, uidN(i))
	}
}

func TestAgentRestart(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m1 := newTestManager(t, dir, "node")
	if err := m1.SetPodCIDR("10.77.3.0/24"); err != nil {
		t.Fatal(err)
	}
	a := mustSetup(t, m1, uidN(1), PortMapping{HostPort: 18081, ContainerPort: 8080})
	listenIn(t, a.NetNSPath, "0.0.0.0:8080", "pod-a")

	m2, err := New(Config{DataDir: m1.cfg.DataDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m2.Lookup(uidN(1)); !ok || !got.IP.Equal(a.IP) || got.NetNSPath != a.NetNSPath {
		t.Fatalf("after restart Lookup = %+v, %v; want %+v", got, ok, a)
	}
	if uids, err := m2.Pods(); err != nil || !sameSet(uids, []string{uidN(1)}) {
		t.Errorf("after restart Pods = %v, %v", uids, err)
	}
	c, err := net.DialTimeout("tcp", "10.77.3.1:18081", 5*time.Second)
	if got := readReply(t, c, err); got != "pod-a" {
		t.Fatalf("pod not reachable after restart: %q", got)
	}
	if err := m2.Ready(); !errors.Is(err, ErrNotReady) {
		t.Errorf("Ready before SetPodCIDR = %v", err)
	}
	if err := m2.SetPodCIDR("10.77.4.0/24"); err == nil || !strings.Contains(err.Error(), "still attached") {
		t.Errorf("changing the CIDR under a running pod: %v", err)
	}
	if err := m2.SetPodCIDR("10.77.3.0/24"); err != nil {
		t.Fatal(err)
	}
	mustTeardown(t, m2, uidN(1))
	if slices.Contains(ipamLeases(t, m1.cfg.DataDir), a.IP.String()) {
		t.Errorf("IP %v still leased", a.IP)
	}

	t.Run("setup cut short by a crash", func(t *testing.T) {
		// What a run that died during CNI ADD leaves: the record without an
		// IP, the namespace, maybe a lease.
		rec := record{UID: uidN(2), NetNS: m2.netnsPath(uidN(2)), Conflist: m2.confRaw}
		if err := m2.writeRecord(rec); err != nil {
			t.Fatal(err)
		}
		if err := createNetNS(rec.NetNS); err != nil {
			t.Fatal(err)
		}
		if _, err := m2.cni.AddNetworkList(context.Background(), m2.confList, runtimeConf(rec, rec.NetNS, nil)); err != nil {
			t.Fatal(err)
		}
		m3, err := New(Config{DataDir: m1.cfg.DataDir, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m3.Lookup(uidN(2)); ok {
			t.Error("Lookup returns a half set-up pod")
		}
		if uids, _ := m3.Pods(); !sameSet(uids, []string{uidN(2)}) {
			t.Errorf("Pods = %v", uids)
		}
		mustTeardown(t, m3, uidN(2))
	})
}

func TestTeardownWhenNetNSGone(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	if err := m.SetPodCIDR("10.77.5.0/24"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := mustSetup(t, m, uidN(1), PortMapping{HostPort: 18082, ContainerPort: 80})
	// As after a reboot: the mount is gone, the file and the records stay.
	if err := unmountOnly(a.NetNSPath); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup(uidN(1)); ok {
		t.Error("Lookup finds a pod whose namespace is gone")
	}
	if uids, _ := m.Pods(); !sameSet(uids, []string{uidN(1)}) {
		t.Errorf("Pods = %v", uids)
	}
	// Setting it up again starts over and works.
	b := mustSetup(t, m, uidN(1), PortMapping{HostPort: 18082, ContainerPort: 80})
	if !isNetNS(b.NetNSPath) || !linksIn(t, b.NetNSPath)["eth0"].up {
		t.Fatal("redone pod has no working namespace")
	}
	if leases := ipamLeases(t, m.cfg.DataDir); len(leases) != 1 || leases[0] != b.IP.String() {
		t.Errorf("leases = %v, want only %v", leases, b.IP)
	}
	if err := removeNetNS(b.NetNSPath); err != nil {
		t.Fatal(err)
	}
	mustTeardown(t, m, uidN(1))
	mustTeardown(t, m, uidN(1))
	mustTeardown(t, m, "never-set-up")
	if err := m.TeardownPod(ctx, "a/../../b"); err == nil {
		t.Error("TeardownPod accepted a bad UID")
	}
}

// unmountOnly drops a namespace's mount and keeps the file.
func unmountOnly(path string) error {
	if err := removeNetNS(path); err != nil {
		return err
	}
	return os.WriteFile(path, nil, 0o444)
}

func TestReadyAndPodCIDR(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	ctx := context.Background()
	if err := m.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "pod CIDR") {
		t.Errorf("Ready before SetPodCIDR = %v", err)
	}
	if _, err := m.SetupPod(ctx, PodNetwork{UID: uidN(1)}); !errors.Is(err, ErrNotReady) {
		t.Errorf("SetupPod before SetPodCIDR = %v", err)
	}
	for _, bad := range []string{"", "nonsense", "10.0.0.5/24", "10.0.0.0/31", "10.0.0.0/33"} {
		if err := m.SetPodCIDR(bad); err == nil {
			t.Errorf("SetPodCIDR(%q) accepted", bad)
		}
	}
	if err := m.Ready(); !errors.Is(err, ErrNotReady) {
		t.Errorf("Ready after only bad CIDRs = %v", err)
	}
	if err := m.SetPodCIDR("10.77.6.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := m.Ready(); err != nil {
		t.Errorf("Ready = %v", err)
	}
	list, err := libcni.ConfListFromFile(filepath.Join(m.cfg.DataDir, conflistName))
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := conflistSubnet(list.Bytes); s != "10.77.6.0/24" {
		t.Errorf("conflist subnet %q", s)
	}
	if mtu := conflistMTU(t, list.Bytes); mtu != 1500 {
		t.Errorf("MTU without a default route = %d, want 1500", mtu)
	}
	if err := m.SetPodCIDR("10.77.6.0/24"); err != nil {
		t.Errorf("same CIDR again: %v", err)
	}
	if err := m.SetPodCIDR("10.77.7.0/24"); err != nil {
		t.Errorf("changing the CIDR with no pods: %v", err)
	}
	a := mustSetup(t, m, uidN(1))
	if !strings.HasPrefix(a.IP.String(), "10.77.7.") {
		t.Errorf("pod IP %v not from the new CIDR", a.IP)
	}
	if err := m.SetPodCIDR("10.77.6.0/24"); err == nil || !strings.Contains(err.Error(), "still attached") {
		t.Errorf("changing the CIDR with a pod attached: %v", err)
	}
	mustTeardown(t, m, uidN(1))
	if err := m.SetPodCIDR("10.77.6.0/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName("flotilla0"); err == nil {
		t.Error("bridge with the old gateway kept after a CIDR change")
	}
	b := mustSetup(t, m, uidN(2))
	ifc, err := net.InterfaceByName("flotilla0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := ifc.Addrs()
	var v4 []string
	for _, a := range addrs {
		if a.(*net.IPNet).IP.To4() != nil {
			v4 = append(v4, a.String())
		}
	}
	if !slices.Equal(v4, []string{"10.77.6.1/24"}) {
		t.Errorf("bridge IPv4 addresses %v, want only 10.77.6.1/24", v4)
	}
	if !strings.HasPrefix(b.IP.String(), "10.77.6.") {
		t.Errorf("pod IP %v", b.IP)
	}
	mustTeardown(t, m, uidN(2))

	t.Run("missing plugins", func(t *testing.T) {
		m, err := New(Config{DataDir: filepath.Join(dir, "noplugins"), PluginDirs: []string{t.TempDir()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.SetPodCIDR("10.77.8.0/24"); err != nil {
			t.Fatal(err)
		}
		if err := m.Ready(); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "CNI plugin bridge not found") {
			t.Errorf("Ready = %v", err)
		}
	})
	t.Run("MTU of the default route's interface", func(t *testing.T) {
		clientNS(t, dir)
		run(t, "ip", "link", "set", "fl-node", "mtu", "1400")
		run(t, "ip", "route", "add", "default", "via", "192.168.77.2")
		m, err := New(Config{DataDir: filepath.Join(dir, "mtu")})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.SetPodCIDR("10.77.9.0/24"); err != nil {
			t.Fatal(err)
		}
		if mtu := conflistMTU(t, m.confRaw); mtu != 1400 {
			t.Errorf("MTU = %d, want 1400", mtu)
		}
	})
}

func conflistMTU(t *testing.T, raw []byte) int {
	t.Helper()
	var c struct {
		Plugins []struct {
			MTU int `json:"mtu"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c.Plugins[0].MTU
}

func TestSyncRoutes(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	clientNS(t, dir)                                                    // the node is 192.168.77.1/24; .2 and .3 are other nodes
	run(t, "ip", "route", "add", "10.99.0.0/24", "via", "192.168.77.2") // someone else's
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	route := func(cidr, via string) Route {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		return Route{CIDR: n, Via: net.ParseIP(via)}
	}
	want := func(ours map[string]string) {
		t.Helper()
		all := kernelRoutes(t)
		got := map[string]string{}
		for dst, r := range all {
			if r.protocol == strconv.Itoa(routeProtocol) {
				got[dst] = r.gateway
			}
		}
		if !mapsEqual(got, ours) {
			t.Errorf("our routes = %v, want %v", got, ours)
		}
		if r := all["10.99.0.0/24"]; r.gateway != "192.168.77.2" || r.protocol == strconv.Itoa(routeProtocol) {
			t.Errorf("foreign route changed: %+v", r)
		}
	}

	if err := m.SyncRoutes([]Route{route("10.20.0.0/24", "192.168.77.2"), route("10.21.0.0/24", "192.168.77.2")}); err != nil {
		t.Fatal(err)
	}
	want(map[string]string{"10.20.0.0/24": "192.168.77.2", "10.21.0.0/24": "192.168.77.2"})
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q", b)
	}

	if err := m.SyncRoutes([]Route{route("10.21.0.0/24", "192.168.77.3"), route("10.22.0.0/24", "192.168.77.2")}); err != nil {
		t.Fatal(err)
	}
	want(map[string]string{"10.21.0.0/24": "192.168.77.3", "10.22.0.0/24": "192.168.77.2"})

	err := m.SyncRoutes([]Route{route("10.99.0.0/24", "192.168.77.3"), route("10.22.0.0/24", "192.168.77.2")})
	if err == nil || !strings.Contains(err.Error(), "10.99.0.0/24") {
		t.Errorf("colliding with a foreign route: %v", err)
	}
	want(map[string]string{"10.22.0.0/24": "192.168.77.2"})

	for name, bad := range map[string][]Route{
		"nil CIDR":         {{Via: net.ParseIP("192.168.77.2")}},
		"no next hop":      {{CIDR: route("10.30.0.0/24", "192.168.77.2").CIDR}},
		"mixed families":   {route("10.30.0.0/24", "fd00::2")},
		"default route":    {route("0.0.0.0/0", "192.168.77.2")},
		"two next hops":    {route("10.30.0.0/24", "192.168.77.2"), route("10.30.0.0/24", "192.168.77.3")},
		"unreachable next": {route("10.31.0.0/24", "10.200.0.1")},
	} {
		if err := m.SyncRoutes(bad); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}

	// Own podCIDR is served by the bridge, never routed away.
	if err := m.SetPodCIDR("10.77.10.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := m.SyncRoutes([]Route{route("10.77.10.0/24", "192.168.77.2"), route("10.22.0.0/24", "192.168.77.2")}); err != nil {
		t.Fatal(err)
	}
	want(map[string]string{"10.22.0.0/24": "192.168.77.2"})

	// A restarted agent finds and removes what the previous run installed.
	m2, err := New(Config{DataDir: m.cfg.DataDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.SyncRoutes(nil); err != nil {
		t.Fatal(err)
	}
	want(map[string]string{})
}

type ipRoute struct {
	Dst      string `json:"dst"`
	Gateway  string `json:"gateway"`
	Protocol string `json:"protocol"`
}

type routeView struct{ gateway, protocol string }

// kernelRoutes reads the main table through iproute2, independently of the
// code under test; -N keeps protocols numeric.
func kernelRoutes(t *testing.T) map[string]routeView {
	t.Helper()
	var rs []ipRoute
	if err := json.Unmarshal([]byte(run(t, "ip", "-N", "-j", "-4", "route", "show", "table", "main")), &rs); err != nil {
		t.Fatal(err)
	}
	out := map[string]routeView{}
	for _, r := range rs {
		out[r.Dst] = routeView{r.Gateway, r.Protocol}
	}
	return out
}

func TestDialContext(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	if err := m.SetPodCIDR("10.77.11.0/24"); err != nil {
		t.Fatal(err)
	}
	a := mustSetup(t, m, uidN(1))
	defer mustTeardown(t, m, uidN(1))
	listenIn(t, a.NetNSPath, "127.0.0.1:7000", "loopback-only")
	ctx := context.Background()

	for _, tc := range []struct{ network, addr string }{
		{"tcp", "localhost:7000"},
		{"tcp4", "127.0.0.1:7000"},
		{"tcp", ":7000"},
	} {
		c, err := m.DialContext(ctx, uidN(1), tc.network, tc.addr)
		if got := readReply(t, c, err); got != "loopback-only" {
			t.Errorf("%s %s: %q", tc.network, tc.addr, got)
		}
	}
	// The same port on the node's own loopback is not the pod's.
	if c, err := net.DialTimeout("tcp", "127.0.0.1:7000", time.Second); err == nil {
		c.Close()
		t.Error("the pod's loopback listener is reachable from the node")
	}
	if c, err := m.DialContext(ctx, uidN(1), "udp", "127.0.0.1:7000"); err != nil {
		t.Errorf("udp: %v", err)
	} else {
		c.Close()
	}

	t.Run("parallel dials", func(t *testing.T) {
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				c, err := m.DialContext(ctx, uidN(1), "tcp", "localhost:7000")
				if err != nil {
					t.Error(err)
					return
				}
				c.Close()
			})
		}
		wg.Wait()
	})

	for _, tc := range []struct{ name, uid, network, addr, err string }{
		{"unknown pod", uidN(9), "tcp", "localhost:80", "no network namespace"},
		{"bad uid", "../x", "tcp", "localhost:80", "bad pod UID"},
		{"unix socket", uidN(1), "unix", "/tmp/x", "unsupported network"},
		{"hostname", uidN(1), "tcp", "example.com:80", "not an IP address"},
		{"no port", uidN(1), "tcp", "localhost", "missing port"},
		{"port zero", uidN(1), "tcp", "localhost:0", "bad port"},
		{"family mismatch", uidN(1), "tcp6", "127.0.0.1:7000", "does not match"},
		{"refused", uidN(1), "tcp", "localhost:7001", "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := m.DialContext(ctx, tc.uid, tc.network, tc.addr)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %q does not say %q", err, tc.err)
			}
		})
	}
	if _, err := m.DialContext(ctx, uidN(9), "tcp", "localhost:80"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unknown pod: %v does not wrap fs.ErrNotExist", err)
	}

	t.Run("deadline", func(t *testing.T) {
		// Nobody answers ARP for .200, so only the deadline ends the dial.
		dctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		c, err := m.DialContext(dctx, uidN(1), "tcp", "10.77.11.200:80")
		if err == nil {
			c.Close()
			t.Fatal("dial to a silent address succeeded")
		}
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Errorf("after %v: %v", time.Since(start), err)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := m.DialContext(cctx, uidN(1), "tcp", "localhost:7000"); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled context: %v", err)
		}
	})

	t.Run("no thread left in a pod namespace", func(t *testing.T) {
		node := netnsInode(t, "/proc/self/ns/net")
		var wg sync.WaitGroup
		for range 4 * runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				if ino := netnsInode(t, "/proc/thread-self/ns/net"); ino != node {
					t.Errorf("thread in netns %d, want the node's %d", ino, node)
				}
			})
		}
		wg.Wait()
	})
}

func TestHostNetNSPath(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		dir = t.TempDir()
	}
	m, err := New(Config{DataDir: filepath.Join(dir, "hostns")})
	if err != nil {
		t.Fatal(err)
	}
	want := "/proc/" + strconv.Itoa(os.Getpid()) + "/ns/net"
	var init unix.Stat_t
	if !child && unix.Stat("/proc/1/ns/net", &init) == nil && init.Ino == netnsInode(t, "/proc/self/ns/net") {
		want = "" // the agent in the init namespace: containers need nothing
	}
	if got := m.HostNetNSPath(); got != want {
		t.Errorf("HostNetNSPath = %q, want %q", got, want)
	}
}

// TestSetupTeardownLatency reports SetupPod/TeardownPod times; it asserts
// nothing about them (benchmarks are not assertions).
func TestSetupTeardownLatency(t *testing.T) {
	dir, child := inNode(t)
	if !child {
		return
	}
	m := newTestManager(t, dir, "node")
	if err := m.SetPodCIDR("10.77.12.0/24"); err != nil {
		t.Fatal(err)
	}
	const n = 10
	// Parallel first, so the pods race to create the bridge.
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := m.SetupPod(context.Background(), PodNetwork{UID: uidN(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	up := time.Since(start)
	start = time.Now()
	for i := range n {
		wg.Go(func() {
			if err := m.TeardownPod(context.Background(), uidN(i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d pods in parallel: all set up in %v, all torn down in %v", n, up.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	var setups, teardowns []time.Duration
	for i := range n {
		start := time.Now()
		mustSetup(t, m, uidN(i), PortMapping{HostPort: int32(20000 + i), ContainerPort: 80})
		setups = append(setups, time.Since(start))
	}
	for i := range n {
		start := time.Now()
		mustTeardown(t, m, uidN(i))
		teardowns = append(teardowns, time.Since(start))
	}
	t.Logf("sequential, with a hostPort each: SetupPod %s; TeardownPod %s", summary(setups), summary(teardowns))
	setups, teardowns = nil, nil
	for i := range n {
		start := time.Now()
		mustSetup(t, m, uidN(i))
		setups = append(setups, time.Since(start))
	}
	for i := range n {
		start := time.Now()
		mustTeardown(t, m, uidN(i))
		teardowns = append(teardowns, time.Since(start))
	}
	t.Logf("sequential, no hostPort: SetupPod %s; TeardownPod %s", summary(setups), summary(teardowns))

}

func summary(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return "min " + s[0].Round(time.Millisecond).String() + " median " + s[len(s)/2].Round(time.Millisecond).String() +
		" max " + s[len(s)-1].Round(time.Millisecond).String()
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
