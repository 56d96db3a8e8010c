package netproxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"flotilla/api/apitest"
	"flotilla/internal/rtnl"
)

// nameServer accepts on addr and writes name to every connection: which
// endpoint answered is then the first line read.
func nameServer(t *testing.T, addr, name string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, name+"\n")
			c.Close()
		}
	}()
}

// ask dials addr and returns what the endpoint says, or the error.
func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	if len(b) == 0 {
		return "", io.ErrUnexpectedEOF
	}
	return strings.TrimSpace(string(b)), nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s", what, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answersFrom dials addr n times and returns the distinct answers.
func answersFrom(addr string, n int) ([]string, error) {
	var out []string
	for range n {
		s, err := ask(addr)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out, nil
}

func loAddrs(t *testing.T) []netip.Addr {
	t.Helper()
	ifc, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	pfs, err := rtnl.Addrs(ifc.Index)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, p := range pfs {
		out = append(out, p.Addr())
	}
	return out
}

func TestProxyFollowsServicesAndEndpoints(t *testing.T) {
	requireNetNS(t)
	srv := apitest.NewServer(t)
	cs := srv.Client
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	nameServer(t, "127.0.0.2:8080", "a")
	nameServer(t, "127.0.0.3:8080", "b")
	// Left by an earlier run: the proxy must take it away.
	ifc, _ := net.InterfaceByName("lo")
	stale := netip.MustParseAddr("10.96.5.5")
	if err := rtnl.AddAddr(ifc.Index, stale); err != nil {
		t.Fatal(err)
	}

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeNodePort,
			ClusterIP: "10.96.0.50",
			Ports:     []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: 30080, Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	na, nb := "node-a", "node-b"
	eps := &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: "127.0.0.2", NodeName: &na}, {IP: "127.0.0.3", NodeName: &nb}},
			Ports:     []corev1.EndpointPort{{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP}},
		}},
	}
	if eps, err := cs.CoreV1().Endpoints("default").Create(ctx, eps, metav1.CreateOptions{}); err != nil {
		t.Fatal(err, eps)
	}

	reg := prometheus.NewRegistry()
	applied := make(chan types.NamespacedName, 100)
	p, err := New(Config{
		Client:            cs,
		NodeName:          "node-a",
		NodePortAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Registerer:        reg,
		DrainTimeout:      time.Second,
		Applied: func(k types.NamespacedName) {
			select {
			case applied <- k:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()
	defer func() {
		stop()
		<-done
	}()

	eventually(t, "ClusterIP answering from both endpoints", func() (bool, string) {
		got, err := answersFrom("10.96.0.50:80", 6)
		return err == nil && slices.Equal(got, []string{"a", "b"}), strings.Join(got, ",") + errString(err)
	})
	if got, err := answersFrom("127.0.0.1:30080", 6); err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("NodePort answers %v, %v; want a and b", got, err)
	}
	addrs := loAddrs(t)
	if !slices.Contains(addrs, netip.MustParseAddr("10.96.0.50")) || slices.Contains(addrs, stale) {
		t.Errorf("lo addresses %v: want 10.96.0.50 and not the stale %v", addrs, stale)
	}

	// Endpoints shrink to b: only b answers.
	cur, err := cs.CoreV1().Endpoints("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Subsets[0].Addresses = cur.Subsets[0].Addresses[1:]
	if _, err := cs.CoreV1().Endpoints("default").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "only b answering", func() (bool, string) {
		got, err := answersFrom("10.96.0.50:80", 4)
		return err == nil && slices.Equal(got, []string{"b"}), strings.Join(got, ",") + errString(err)
	})
	// The gauges: web and the default kubernetes Service (which has no
	// Endpoints here), one endpoint left in all.
	if s, e := gaugeValue(t, reg, "flotilla_netproxy_services"), gaugeValue(t, reg, "flotilla_netproxy_endpoints"); s != 2 || e != 1 {
		t.Errorf("services %v, endpoints %v; want 2 and 1", s, e)
	}

	// externalTrafficPolicy Local: this is node-a and b is on node-b, so
	// the NodePort refuses while the ClusterIP still answers.
	cursvc, err := cs.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cursvc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	if _, err := cs.CoreV1().Services("default").Update(ctx, cursvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "NodePort refusing without a local endpoint", func() (bool, string) {
		_, err := ask("127.0.0.1:30080")
		return err != nil, "answering"
	})
	if got, err := ask("10.96.0.50:80"); err != nil || got != "b" {
		t.Errorf("ClusterIP after the Local policy: %q, %v; want b", got, err)
	}

	if n := testutil.CollectAndCount(reg, "flotilla_netproxy_sync_latency_seconds"); n == 0 {
		t.Error("no sync latency observed")
	}

	// The Service goes: its ClusterIP leaves lo and nothing answers.
	if err := cs.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ClusterIP removed", func() (bool, string) {
		return !slices.Contains(loAddrs(t), netip.MustParseAddr("10.96.0.50")), "still on lo"
	})
	if _, err := ask("127.0.0.1:30080"); err == nil {
		t.Error("NodePort of a deleted Service still answers")
	}

	// Stopping the proxy takes every ClusterIP it added away (the
	// default kubernetes Service's among them).
	stop()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	done <- nil
	for _, a := range loAddrs(t) {
		if DefaultServiceCIDR.Contains(a) {
			t.Errorf("ClusterIP %v left on lo after the proxy stopped", a)
		}
	}
}

// gaugeValue reads an unlabelled gauge from reg.
func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without Client and NodeName succeeded")
	}
	srv := apitest.NewServer(t, apitest.Options{SkipDefaults: true})
	_, err := New(Config{Client: srv.Client, NodeName: "n", Interface: "no-such-if0"})
	if err == nil || !strings.Contains(err.Error(), "interface") {
		t.Errorf("New with a missing interface: %v, want an error naming the interface", err)
	}
}
