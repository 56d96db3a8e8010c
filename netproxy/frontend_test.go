package netproxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Every test here talks to loopback only: endpoints are small servers on
// 127.0.0.x, frontends listen on 127.0.0.1 (or, in the tests' own network
// namespace, on a ClusterIP added to lo).

var testSPN = ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: "web"}, Port: "http"}

// feTimeout bounds every wait in these tests; reaching it is a failure.
const feTimeout = 10 * time.Second

// testFE is a frontend under test with its own metrics registry.
type testFE struct {
	fe   frontend
	addr netip.AddrPort // where it really listens
	reg  *prometheus.Registry
}

// startTestFE starts a frontend for testSPN on 127.0.0.1 and an ephemeral
// port. Unset timeouts in opts are made short, so a test that forgets a
// connection does not keep goroutines for the 30s default drain.
func startTestFE(t *testing.T, proto corev1.Protocol, set BackendSet, opts dataplaneOptions) *testFE {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Metrics = NewMetrics(reg)
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 200 * time.Millisecond
	}
	spec := frontendSpec{Service: testSPN, Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: proto}
	fe, err := startFrontend(spec, set, &opts)
	if err != nil {
		t.Fatalf("start frontend: %v", err)
	}
	t.Cleanup(fe.Close)
	return &testFE{fe: fe, addr: fe.(interface{ localAddr() netip.AddrPort }).localAddr(), reg: reg}
}

// metric is the value of the series of name whose labels include want
// (the service and port labels are added); found is false when there is
// no such series.
func (f *testFE) metric(t *testing.T, name string, want map[string]string) (v float64, found bool) {
	t.Helper()
	labels := map[string]string{"service": "default/web", "port": "http"}
	for k, v := range want {
		labels[k] = v
	}
	return gatheredValue(t, f.reg, name, labels)
}

func gatheredValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
	series:
		for _, m := range fam.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch fam.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

// waitMetric waits until the series has value want.
func (f *testFE) waitMetric(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	feWait(t, fmt.Sprintf("%s%v = %v", name, labels, want), func() bool {
		v, _ := f.metric(t, name, labels)
		return v == want
	})
}

// feWait polls cond until it holds, failing the test after feTimeout.
func feWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(feTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serveTCP runs handle for every connection to a listener on host. The
// listener and any open connection are closed when the test ends.
func serveTCP(t *testing.T, host string, handle func(*net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// namedEcho answers each line with "name line".
func namedEcho(t *testing.T, host, name string) netip.AddrPort {
	return serveTCP(t, host, func(c *net.TCPConn) {
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, name+" "+line); err != nil {
				return
			}
		}
	})
}

// refusedAddr is an address on host where nothing listens.
func refusedAddr(t *testing.T, host string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return a
}

// lineConn is a client connection that sends lines and reads one back.
type lineConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func dialLines(t *testing.T, addr netip.AddrPort, from string) *lineConn {
	t.Helper()
	d := net.Dialer{Timeout: feTimeout}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{TCPConn: c.(*net.TCPConn), r: bufio.NewReader(c)}
}

// dialTo opens a connection and checks that the endpoint named want
// answers it. The answer also means the proxy has picked for this
// connection, so the next one gets the next endpoint in turn.
func dialTo(t *testing.T, addr netip.AddrPort, want string) *lineConn {
	t.Helper()
	c := dialLines(t, addr, "")
	if got, err := c.ask("x"); got != want+" x" || err != nil {
		t.Fatalf("answer %q, %v; want %q", got, err, want+" x")
	}
	return c
}

// ask sends msg and returns the answer without its newline.
func (c *lineConn) ask(msg string) (string, error) {
	c.SetDeadline(time.Now().Add(feTimeout))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// whoAnswers opens one connection, asks once, and returns the name of the
// endpoint that answered.
func whoAnswers(t *testing.T, addr netip.AddrPort, from string) string {
	t.Helper()
	c := dialLines(t, addr, from)
	defer c.Close()
	got, err := c.ask("hi")
	if err != nil {
		t.Fatalf("ask through %s: %v", addr, err)
	}
	name, ok := strings.CutSuffix(got, " hi")
	if !ok {
		t.Fatalf("answer %q, want \"<name> hi\"", got)
	}
	return name
}

// expectReset checks that a connection to addr is reset at once: the
// proxy accepts, finds no endpoint and resets (not a FIN, which would look
// like an empty answer; not nothing, which would hang the client).
func expectReset(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if errors.Is(err, syscall.ECONNRESET) {
		return // the reset came before connect returned
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(feTimeout))
	_, err = c.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection hung instead of being reset")
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read with no endpoint: %v, want a reset", err)
	}
}

func endpoints(addrs ...netip.AddrPort) []Endpoint {
	var eps []Endpoint
	for _, a := range addrs {
		eps = append(eps, Endpoint{Addr: a})
	}
	return eps
}

func TestFrontendRejectsOtherProtocols(t *testing.T) {
	spec := frontendSpec{Service: testSPN, Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: corev1.ProtocolSCTP}
	if fe, err := startFrontend(spec, BackendSet{}, &dataplaneOptions{}); err == nil {
		fe.Close()
		t.Fatal("SCTP frontend started, want an error")
	}
}

func TestTCPRoundRobin(t *testing.T) {
	a := namedEcho(t, "127.0.0.2", "a")
	b := namedEcho(t, "127.0.0.3", "b")
	c := namedEcho(t, "127.0.0.4", "c")
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(a, b, c)}, dataplaneOptions{})

	var got []string
	for range 9 {
		got = append(got, whoAnswers(t, f.addr, ""))
	}
	if want := "a b c a b c a b c"; strings.Join(got, " ") != want {
		t.Errorf("answers %v, want %s", got, want)
	}
	tcp := map[string]string{"protocol": "TCP"}
	f.waitMetric(t, "flotilla_netproxy_connections_total", tcp, 9)
	f.waitMetric(t, "flotilla_netproxy_active_connections", tcp, 0)
	// "hi\n" one way, "x hi\n" back, nine times.
	f.waitMetric(t, "flotilla_netproxy_bytes_total", map[string]string{"protocol": "TCP", "direction": "to_endpoint"}, 9*3)
	f.waitMetric(t, "flotilla_netproxy_bytes_total", map[string]string{"protocol": "TCP", "direction": "to_client"}, 9*5)
}

func TestTCPSkipsEndpointsOnDeadNodes(t *testing.T) {
	a := namedEcho(t, "127.0.0.2", "a")
	b := namedEcho(t, "127.0.0.3", "b")
	c := namedEcho(t, "127.0.0.4", "c")
	var dead sync.Map // node name -> true
	alive := func(node string) bool { _, d := dead.Load(node); return !d }
	dead.Store("n2", true)
	set := BackendSet{Endpoints: []Endpoint{{Addr: a, Node: "n1"}, {Addr: b, Node: "n2"}, {Addr: c}}}
	f := startTestFE(t, corev1.ProtocolTCP, set, dataplaneOptions{NodeAlive: alive})

	for range 6 {
		if got := whoAnswers(t, f.addr, ""); got == "b" {
			t.Fatal("endpoint on dead node n2 answered")
		}
	}

	// Every endpoint on a dead node: as good as none.
	f.fe.Update(BackendSet{Endpoints: set.Endpoints[:2]})
	dead.Store("n1", true)
	expectReset(t, f.addr)
	f.waitMetric(t, "flotilla_netproxy_rejected_total", map[string]string{"protocol": "TCP", "reason": "no_endpoints"}, 1)

	// Health is asked on every connection: a node back is used at once.
	dead.Delete("n1")
	if got := whoAnswers(t, f.addr, ""); got != "a" {
		t.Errorf("answer from %q after n1 came back, want a", got)
	}
}

func TestTCPDialFailureMovesOn(t *testing.T) {
	refused := refusedAddr(t, "127.0.0.5")
	a := namedEcho(t, "127.0.0.2", "a")
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(refused, a)}, dataplaneOptions{})

	// Round robin puts the refused endpoint first for every connection
	// (each resumes after a, the last one that worked).
	for range 4 {
		if got := whoAnswers(t, f.addr, ""); got != "a" {
			t.Fatalf("answer from %q, want a", got)
		}
	}
	f.waitMetric(t, "flotilla_netproxy_dial_failures_total", nil, 4)
	f.waitMetric(t, "flotilla_netproxy_connections_total", map[string]string{"protocol": "TCP"}, 4)

	// Every endpoint failing resets the client too.
	f.fe.Update(BackendSet{Endpoints: endpoints(refused)})
	expectReset(t, f.addr)
	f.waitMetric(t, "flotilla_netproxy_rejected_total", map[string]string{"protocol": "TCP", "reason": "dial_failed"}, 1)
	f.waitMetric(t, "flotilla_netproxy_dial_failures_total", nil, 5)
}

func TestTCPNoEndpointsResets(t *testing.T) {
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{}, dataplaneOptions{})
	start := time.Now()
	expectReset(t, f.addr)
	if d := time.Since(start); d > time.Second {
		t.Errorf("reset took %v", d)
	}
	f.waitMetric(t, "flotilla_netproxy_rejected_total", map[string]string{"protocol": "TCP", "reason": "no_endpoints"}, 1)
	if v, _ := f.metric(t, "flotilla_netproxy_connections_total", map[string]string{"protocol": "TCP"}); v != 0 {
		t.Errorf("connections_total %v, want 0", v)
	}
}

func TestTCPSessionAffinity(t *testing.T) {
	a := namedEcho(t, "127.0.0.2", "a")
	b := namedEcho(t, "127.0.0.3", "b")
	c := namedEcho(t, "127.0.0.4", "c")
	set := BackendSet{Endpoints: endpoints(a, b, c), AffinityTimeout: time.Hour}
	f := startTestFE(t, corev1.ProtocolTCP, set, dataplaneOptions{})

	first := whoAnswers(t, f.addr, "127.0.0.1")
	other := whoAnswers(t, f.addr, "127.0.0.9")
	if other == first {
		t.Errorf("second client got %s too: round robin should move on", first)
	}
	for range 4 {
		if got := whoAnswers(t, f.addr, "127.0.0.1"); got != first {
			t.Fatalf("client moved from %s to %s", first, got)
		}
	}

	// The endpoint leaves: the client gets another and keeps it.
	left := map[string]netip.AddrPort{"a": a, "b": b, "c": c}
	delete(left, first)
	var rest []netip.AddrPort
	for _, ep := range left {
		rest = append(rest, ep)
	}
	f.fe.Update(BackendSet{Endpoints: endpoints(rest...), AffinityTimeout: time.Hour})
	second := whoAnswers(t, f.addr, "127.0.0.1")
	if second == first {
		t.Fatalf("client still on removed endpoint %s", first)
	}
	for range 4 {
		if got := whoAnswers(t, f.addr, "127.0.0.1"); got != second {
			t.Fatalf("client moved from %s to %s", second, got)
		}
	}
	// The other client's endpoint survived, and so did its affinity.
	if other != first {
		if got := whoAnswers(t, f.addr, "127.0.0.9"); got != other {
			t.Errorf("second client moved from %s to %s", other, got)
		}
	}
}

func TestPickerAffinity(t *testing.T) {
	a, b, c := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80"), netip.MustParseAddrPort("10.0.0.3:80")
	var dead atomic.Bool // node "n3"
	p := newPicker(BackendSet{
		Endpoints:       []Endpoint{{Addr: a}, {Addr: b}, {Addr: c, Node: "n3"}},
		AffinityTimeout: 10 * time.Second,
	}, func(node string) bool { return !(node == "n3" && dead.Load()) })
	now := time.Unix(1000, 0)
	p.now = func() time.Time { return now }
	client := netip.MustParseAddr("192.0.2.1")
	pick := func(from netip.Addr) netip.AddrPort {
		t.Helper()
		ep, ok := p.pick(from, nil)
		if !ok {
			t.Fatal("no endpoint picked")
		}
		return ep.Addr
	}

	if got := pick(client); got != a {
		t.Fatalf("first pick %s, want %s", got, a)
	}
	now = now.Add(9 * time.Second)
	if got := pick(client); got != a {
		t.Fatalf("pick within the timeout %s, want %s", got, a)
	}
	// Seen 9s ago: still within; then 11s of silence end it.
	now = now.Add(9 * time.Second)
	if got := pick(client); got != a {
		t.Fatalf("pick 9s after the last %s, want %s", got, a)
	}
	now = now.Add(11 * time.Second)
	if got := pick(client); got != b {
		t.Fatalf("pick after the timeout %s, want the next in turn, %s", got, b)
	}

	// An IPv4-mapped client is the same client.
	if got := pick(netip.AddrFrom16(client.As16())); got != b {
		t.Errorf("mapped client picked %s, want %s", got, b)
	}

	// A dead node's endpoint is left even when a client had it.
	other := netip.MustParseAddr("192.0.2.2")
	if got := pick(other); got != c {
		t.Fatalf("other client picked %s, want %s", got, c)
	}
	dead.Store(true)
	if got := pick(other); got == c {
		t.Fatalf("client kept %s on a dead node", c)
	}

	// Tried endpoints are skipped; none left is no endpoint.
	if _, ok := p.pick(other, []netip.AddrPort{a, b}); ok {
		t.Error("picked an endpoint with a and b tried and c's node dead")
	}

	// Entries expire: after two timeouts only the newest client is left.
	for i := range 100 {
		pick(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}))
	}
	now = now.Add(25 * time.Second)
	pick(client)
	p.mu.Lock()
	n := len(p.affinity)
	p.mu.Unlock()
	if n != 1 {
		t.Errorf("%d affinity entries after everyone else went quiet, want 1", n)
	}

	// Turning affinity off forgets it all.
	p.update(BackendSet{Endpoints: []Endpoint{{Addr: a}, {Addr: b}}})
	if p.affinity != nil {
		t.Error("affinity entries kept after affinity was turned off")
	}
}

func TestTCPUpdateDrainsRemovedEndpoints(t *testing.T) {
	a := namedEcho(t, "127.0.0.2", "a")
	b := namedEcho(t, "127.0.0.3", "b")
	const drain = 300 * time.Millisecond
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(a, b)}, dataplaneOptions{DrainTimeout: drain})
	ca, cb := dialTo(t, f.addr, "a"), dialTo(t, f.addr, "b")

	removed := time.Now()
	f.fe.Update(BackendSet{Endpoints: endpoints(a)})
	// Both go on for now: b's connection drains, it is not cut.
	for c, want := range map[*lineConn]string{ca: "a y", cb: "b y"} {
		if got, err := c.ask("y"); got != want || err != nil {
			t.Fatalf("answer right after the update %q, %v; want %q", got, err, want)
		}
	}
	feWait(t, "b's connection closed", func() bool { _, err := cb.ask("z"); return err != nil })
	if d := time.Since(removed); d < drain {
		t.Errorf("b's connection closed after %v, before the %v drain", d, drain)
	}
	if got, err := ca.ask("w"); got != "a w" || err != nil {
		t.Errorf("surviving connection: %q, %v", got, err)
	}
	f.waitMetric(t, "flotilla_netproxy_active_connections", map[string]string{"protocol": "TCP"}, 1)
	if got := whoAnswers(t, f.addr, ""); got != "a" {
		t.Errorf("new connection answered by %s, want a", got)
	}
}

func TestTCPEndpointBackBeforeDrainKeepsConnections(t *testing.T) {
	a := namedEcho(t, "127.0.0.2", "a")
	b := namedEcho(t, "127.0.0.3", "b")
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(a, b)}, dataplaneOptions{DrainTimeout: 300 * time.Millisecond})
	ca, cb := dialTo(t, f.addr, "a"), dialTo(t, f.addr, "b")

	// b leaves and comes back; then a leaves. a's drain started last, so
	// when it has closed a's connection, b's (had its drain gone on)
	// would be closed too.
	f.fe.Update(BackendSet{Endpoints: endpoints(a)})
	f.fe.Update(BackendSet{Endpoints: endpoints(a, b)})
	f.fe.Update(BackendSet{Endpoints: endpoints(b)})
	feWait(t, "a's connection closed", func() bool { _, err := ca.ask("z"); return err != nil })
	if got, err := cb.ask("y"); got != "b y" || err != nil {
		t.Errorf("b's connection after b came back: %q, %v", got, err)
	}
}

// frontendGoroutines counts goroutines running the frontends' code.
func frontendGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		for _, fn := range []string{"netproxy.(*tcpFrontend)", "netproxy.(*tcpConn)", "netproxy.(*udpFrontend)", "netproxy.(*udpFlow)"} {
			if bytes.Contains(g, []byte(fn)) {
				count++
				break
			}
		}
	}
	return count
}

// waitGone waits for f's goroutines to end, and for the process to have
// no more frontend goroutines than before the test (timers' included).
func waitGone(t *testing.T, fe frontend, before int) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		fe.(interface{ wait() }).wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(feTimeout):
		t.Fatal("frontend goroutines still running after Close and the drain")
	}
	feWait(t, "no frontend goroutines left", func() bool { return frontendGoroutines() <= before })
}

func TestTCPCloseDrains(t *testing.T) {
	before := frontendGoroutines()
	a := namedEcho(t, "127.0.0.2", "a")
	const drain = 300 * time.Millisecond
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(a)}, dataplaneOptions{DrainTimeout: drain})
	c := dialLines(t, f.addr, "")
	if _, err := c.ask("x"); err != nil {
		t.Fatal(err)
	}

	closed := time.Now()
	f.fe.Close()
	if conn, err := net.Dial("tcp", f.addr.String()); err == nil {
		conn.Close()
		t.Fatal("dial after Close succeeded, want refused")
	}
	if got, err := c.ask("y"); got != "a y" || err != nil {
		t.Fatalf("open connection right after Close: %q, %v", got, err)
	}
	feWait(t, "connection closed by the drain", func() bool { _, err := c.ask("z"); return err != nil })
	if d := time.Since(closed); d < drain {
		t.Errorf("connection closed %v after Close, before the %v drain", d, drain)
	}
	waitGone(t, f.fe, before)
	f.waitMetric(t, "flotilla_netproxy_active_connections", map[string]string{"protocol": "TCP"}, 0)
	f.fe.Close() // twice is fine
}

func TestTCPHalfClose(t *testing.T) {
	// Reads the whole request, then answers: the client must be able to
	// shut down its writing and still read the answer.
	a := serveTCP(t, "127.0.0.2", func(c *net.TCPConn) {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d", n)
	})
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(a)}, dataplaneOptions{})
	c := dialLines(t, f.addr, "")
	c.SetDeadline(time.Now().Add(feTimeout))
	if _, err := c.Write(bytes.Repeat([]byte("q"), 1000)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got 1000" {
		t.Fatalf("answer %q, %v; want \"got 1000\"", got, err)
	}
	f.waitMetric(t, "flotilla_netproxy_active_connections", map[string]string{"protocol": "TCP"}, 0)
}

func TestTCPBulkCopy(t *testing.T) {
	const size = 32 << 20
	a := serveTCP(t, "127.0.0.2", func(c *net.TCPConn) {
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
		}
	})
	f := startTestFE(t, corev1.ProtocolTCP, BackendSet{Endpoints: endpoints(a)}, dataplaneOptions{})
	c := dialLines(t, f.addr, "")
	c.SetDeadline(time.Now().Add(60 * time.Second))

	sent := sha256.New()
	errc := make(chan error, 1)
	go func() {
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), sent)
		_, err := io.Copy(c, src)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("send: %v", err)
	}
	if n != size || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatalf("got %d bytes back, checksum equal %v; want %d, equal", n, bytes.Equal(got.Sum(nil), sent.Sum(nil)), size)
	}
	f.waitMetric(t, "flotilla_netproxy_bytes_total", map[string]string{"protocol": "TCP", "direction": "to_endpoint"}, size)
	f.waitMetric(t, "flotilla_netproxy_bytes_total", map[string]string{"protocol": "TCP", "direction": "to_client"}, size)
}

// udpEcho answers every datagram with "name|" and the datagram.
func udpEcho(t *testing.T, host, name string) netip.AddrPort {
	t.Helper()
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(host), 0)))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			conn.WriteToUDPAddrPort(append([]byte(name+"|"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// udpClient is a client socket on 127.0.0.1.
type udpClient struct {
	*net.UDPConn
	t *testing.T
}

func newUDPClient(t *testing.T) *udpClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpClient{UDPConn: conn, t: t}
}

// ask sends msg to fe and returns the reply, which must come from fe.
func (c *udpClient) ask(fe netip.AddrPort, msg string) string {
	c.t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(msg), fe); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(feTimeout))
	buf := make([]byte, maxDatagram)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		c.t.Fatalf("no reply to %.20q: %v", msg, err)
	}
	if from != fe {
		c.t.Errorf("reply from %s, want the frontend %s", from, fe)
	}
	return string(buf[:n])
}

func flowCount(fe frontend) int { return fe.(*udpFrontend).flowCount() }

func TestUDPFlows(t *testing.T) {
	a := udpEcho(t, "127.0.0.2", "a")
	b := udpEcho(t, "127.0.0.3", "b")
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{Endpoints: endpoints(a, b)}, dataplaneOptions{})
	c1, c2 := newUDPClient(t), newUDPClient(t)

	// Each client is one flow to one endpoint, and gets its own replies.
	for i := range 3 {
		for _, tc := range []struct {
			c         *udpClient
			msg, want string
		}{{c1, "one", "a|one"}, {c2, "two", "b|two"}} {
			if got := tc.c.ask(f.addr, tc.msg); got != tc.want {
				t.Fatalf("round %d: reply %q, want %q", i, got, tc.want)
			}
		}
	}
	if n := flowCount(f.fe); n != 2 {
		t.Errorf("%d flows, want 2", n)
	}
	udp := map[string]string{"protocol": "UDP"}
	f.waitMetric(t, "flotilla_netproxy_connections_total", udp, 2)
	f.waitMetric(t, "flotilla_netproxy_active_connections", udp, 2)
	f.waitMetric(t, "flotilla_netproxy_bytes_total", map[string]string{"protocol": "UDP", "direction": "to_endpoint"}, 3*(3+3))
	f.waitMetric(t, "flotilla_netproxy_bytes_total", map[string]string{"protocol": "UDP", "direction": "to_client"}, 3*(5+5))

	// Largest datagrams make it both ways.
	big := strings.Repeat("x", 60000)
	if got := c1.ask(f.addr, big); got != "a|"+big {
		t.Errorf("60000-byte datagram came back as %d bytes", len(got))
	}
}

func TestUDPSessionAffinity(t *testing.T) {
	a := udpEcho(t, "127.0.0.2", "a")
	b := udpEcho(t, "127.0.0.3", "b")
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{Endpoints: endpoints(a, b), AffinityTimeout: time.Hour}, dataplaneOptions{})
	// Two sockets of one client IP: two flows, one endpoint.
	for i := range 3 {
		if got := newUDPClient(t).ask(f.addr, "x"); got != "a|x" {
			t.Fatalf("client socket %d: reply %q, want a|x", i, got)
		}
	}
	if n := flowCount(f.fe); n != 3 {
		t.Errorf("%d flows, want 3", n)
	}
}

func TestUDPIdleTimeout(t *testing.T) {
	a := udpEcho(t, "127.0.0.2", "a")
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{Endpoints: endpoints(a)}, dataplaneOptions{UDPIdleTimeout: 200 * time.Millisecond})
	c := newUDPClient(t)
	start := time.Now()
	c.ask(f.addr, "x")
	feWait(t, "idle flow ended", func() bool { return flowCount(f.fe) == 0 })
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("flow ended after %v, before its idle timeout", d)
	}
	udp := map[string]string{"protocol": "UDP"}
	f.waitMetric(t, "flotilla_netproxy_active_connections", udp, 0)
	if got := c.ask(f.addr, "y"); got != "a|y" {
		t.Errorf("reply on a new flow %q", got)
	}
	f.waitMetric(t, "flotilla_netproxy_connections_total", udp, 2)
}

func TestUDPNoEndpointsDrops(t *testing.T) {
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{}, dataplaneOptions{})
	c := newUDPClient(t)
	if _, err := c.WriteToUDPAddrPort([]byte("x"), f.addr); err != nil {
		t.Fatal(err)
	}
	f.waitMetric(t, "flotilla_netproxy_rejected_total", map[string]string{"protocol": "UDP", "reason": "no_endpoints"}, 1)
	if n := flowCount(f.fe); n != 0 {
		t.Errorf("%d flows, want 0", n)
	}
}

func TestUDPEndpointRemovedEndsFlow(t *testing.T) {
	a := udpEcho(t, "127.0.0.2", "a")
	b := udpEcho(t, "127.0.0.3", "b")
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{Endpoints: endpoints(a, b)}, dataplaneOptions{})
	c := newUDPClient(t)
	if got := c.ask(f.addr, "x"); got != "a|x" {
		t.Fatalf("reply %q, want a|x", got)
	}
	f.fe.Update(BackendSet{Endpoints: endpoints(b)})
	if n := flowCount(f.fe); n != 0 {
		t.Errorf("%d flows after their endpoint left, want 0", n)
	}
	if got := c.ask(f.addr, "y"); got != "b|y" {
		t.Errorf("reply %q, want b|y", got)
	}
}

func TestUDPRefusedEndpointEndsFlow(t *testing.T) {
	// Nothing listens: the ICMP error ends the flow, and the next
	// datagram picks again (here the working endpoint).
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 5)})
	if err != nil {
		t.Fatal(err)
	}
	refused := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	conn.Close()
	a := udpEcho(t, "127.0.0.2", "a")
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{Endpoints: endpoints(refused, a)}, dataplaneOptions{})
	c := newUDPClient(t)
	if _, err := c.WriteToUDPAddrPort([]byte("lost"), f.addr); err != nil {
		t.Fatal(err)
	}
	f.waitMetric(t, "flotilla_netproxy_connections_total", map[string]string{"protocol": "UDP"}, 1)
	feWait(t, "refused flow ended", func() bool { return flowCount(f.fe) == 0 })
	if got := c.ask(f.addr, "x"); got != "a|x" {
		t.Errorf("reply %q, want a|x", got)
	}
}

func TestUDPCloseEndsFlows(t *testing.T) {
	before := frontendGoroutines()
	a := udpEcho(t, "127.0.0.2", "a")
	f := startTestFE(t, corev1.ProtocolUDP, BackendSet{Endpoints: endpoints(a)}, dataplaneOptions{})
	c := newUDPClient(t)
	c.ask(f.addr, "x")
	f.fe.Close()
	if n := flowCount(f.fe); n != 0 {
		t.Errorf("%d flows after Close, want 0", n)
	}
	waitGone(t, f.fe, before)
	f.waitMetric(t, "flotilla_netproxy_active_connections", map[string]string{"protocol": "UDP"}, 0)
	// The address is free again at once.
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(f.addr))
	if err != nil {
		t.Fatalf("bind the closed frontend's address: %v", err)
	}
	conn.Close()
}

func TestFrontendOnClusterIP(t *testing.T) {
	requireNetNS(t)
	if out, err := exec.Command("ip", "addr", "add", "10.96.0.10/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "addr", "del", "10.96.0.10/32", "dev", "lo").Run() })
	tcpEP := namedEcho(t, "127.0.0.2", "a")
	udpEP := udpEcho(t, "127.0.0.2", "a")
	addr := netip.MustParseAddrPort("10.96.0.10:80")
	opts := &dataplaneOptions{Metrics: NewMetrics(nil)}
	for _, fe := range []struct {
		proto corev1.Protocol
		ep    netip.AddrPort
	}{{corev1.ProtocolTCP, tcpEP}, {corev1.ProtocolUDP, udpEP}} {
		f, err := startFrontend(frontendSpec{Service: testSPN, Addr: addr, Protocol: fe.proto}, BackendSet{Endpoints: endpoints(fe.ep)}, opts)
		if err != nil {
			t.Fatalf("start %s frontend on %s: %v", fe.proto, addr, err)
		}
		t.Cleanup(f.Close)
		if got := f.Backends().Endpoints; len(got) != 1 || got[0].Addr != fe.ep {
			t.Errorf("%s Backends() = %v", fe.proto, got)
		}
	}
	if got := whoAnswers(t, addr, ""); got != "a" {
		t.Errorf("TCP answer from %q", got)
	}
	if got := newUDPClient(t).ask(addr, "x"); got != "a|x" {
		t.Errorf("UDP reply %q", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m1, m2 := NewMetrics(reg), NewMetrics(reg) // a second proxy: no panic, shared series
	web := frontendSpec{Service: testSPN, Protocol: corev1.ProtocolTCP}
	dns := frontendSpec{Service: ServicePortName{NamespacedName: types.NamespacedName{Namespace: "kube-system", Name: "dns"}, Port: "dns"}, Protocol: corev1.ProtocolUDP}
	m1.forFrontend(web).connections.Inc()
	m2.forFrontend(web).connections.Inc()
	draining := m1.forFrontend(web)
	m1.forFrontend(dns).connections.Inc()
	m1.ObserveSync(20 * time.Millisecond)
	m2.SetCounts(2, 5)

	val := func(name string, labels map[string]string) (float64, bool) {
		t.Helper()
		return gatheredValue(t, reg, name, labels)
	}
	webLabels := map[string]string{"service": "default/web", "port": "http", "protocol": "TCP"}
	dnsLabels := map[string]string{"service": "kube-system/dns", "port": "dns", "protocol": "UDP"}
	if v, _ := val("flotilla_netproxy_connections_total", webLabels); v != 2 {
		t.Errorf("web connections %v, want 2", v)
	}
	if v, _ := val("flotilla_netproxy_sync_latency_seconds", nil); v != 1 {
		t.Errorf("sync latency observations %v, want 1", v)
	}
	if v, _ := val("flotilla_netproxy_services", nil); v != 2 {
		t.Errorf("services %v, want 2", v)
	}
	if v, _ := val("flotilla_netproxy_endpoints", nil); v != 5 {
		t.Errorf("endpoints %v, want 5", v)
	}

	m2.Forget(testSPN)
	draining.active.Dec() // a frontend still draining must not bring the series back
	for _, name := range []string{"flotilla_netproxy_connections_total", "flotilla_netproxy_active_connections", "flotilla_netproxy_dial_failures_total", "flotilla_netproxy_rejected_total", "flotilla_netproxy_bytes_total"} {
		if _, found := val(name, map[string]string{"service": "default/web"}); found {
			t.Errorf("%s still has default/web after Forget", name)
		}
	}
	if v, _ := val("flotilla_netproxy_connections_total", dnsLabels); v != 1 {
		t.Errorf("dns connections %v after forgetting web, want 1", v)
	}
}

// benchPaths starts a TCP server on loopback that runs serve on each
// connection, and a frontend in front of it; it returns the two ways to
// reach the server, "direct" and "proxied", for sub-benchmarks.
func benchPaths(b *testing.B, serve func(net.Conn)) []struct {
	name string
	addr netip.AddrPort
} {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { serve(c); c.Close() }()
		}
	}()
	server := ln.Addr().(*net.TCPAddr).AddrPort()
	spec := frontendSpec{Service: testSPN, Addr: netip.MustParseAddrPort("127.0.0.1:0"), Protocol: corev1.ProtocolTCP}
	fe, err := startFrontend(spec, BackendSet{Endpoints: endpoints(server)}, &dataplaneOptions{DrainTimeout: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fe.Close)
	return []struct {
		name string
		addr netip.AddrPort
	}{{"direct", server}, {"proxied", fe.(*tcpFrontend).localAddr()}}
}

// BenchmarkTCPProxyRoundTrip is a 64-byte echo on one connection, straight
// to the server and through a frontend.
func BenchmarkTCPProxyRoundTrip(b *testing.B) {
	for _, bc := range benchPaths(b, func(c net.Conn) { io.Copy(c, c) }) {
		b.Run(bc.name, func(b *testing.B) {
			c, err := net.Dial("tcp", bc.addr.String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg, buf := make([]byte, 64), make([]byte, 64)
			for b.Loop() {
				if _, err := c.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTCPProxyThroughput streams from a server on loopback to a
// client, directly and through a frontend: what the proxy's copy costs
// without pods and bridges in the way.
func BenchmarkTCPProxyThroughput(b *testing.B) {
	const chunk = 1 << 20
	out := make([]byte, chunk)
	paths := benchPaths(b, func(c net.Conn) {
		for {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	})
	for _, bc := range paths {
		b.Run(bc.name, func(b *testing.B) {
			c, err := net.Dial("tcp", bc.addr.String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			for b.Loop() {
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
