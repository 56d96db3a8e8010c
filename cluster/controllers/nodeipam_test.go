package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func (e *env) podCIDR(node string) string {
	e.t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(e.ctx, node, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get node %s: %v", node, err)
	}
	if len(n.Spec.PodCIDRs) > 0 && n.Spec.PodCIDRs[0] != n.Spec.PodCIDR {
		e.t.Errorf("node %s: podCIDRs %v do not start with podCIDR %s", node, n.Spec.PodCIDRs, n.Spec.PodCIDR)
	}
	return n.Spec.PodCIDR
}

func (e *env) waitPodCIDR(node, want string) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, node+" gets pod CIDR "+want, func() (bool, error) {
		got := e.podCIDR(node)
		return got != "" && (want == "" || got == want), nil
	})
}

func TestNodeIPAM(t *testing.T) {
	// Room for two /24s only.
	cfg := Config{Controllers: []string{NodeIPAM}, ClusterCIDR: "10.100.0.0/23", NodeCIDRMaskSize: 24}
	e := newEnv(t, cfg)
	ensureNode(t, e.client, "n1")
	ensureNode(t, e.client, "n2")
	e.waitPodCIDR("n1", "")
	e.waitPodCIDR("n2", "")
	a, b := e.podCIDR("n1"), e.podCIDR("n2")
	if a == b || (a != "10.100.0.0/24" && a != "10.100.1.0/24") || (b != "10.100.0.0/24" && b != "10.100.1.0/24") {
		t.Fatalf("pod CIDRs %s and %s, want the two /24s of 10.100.0.0/23", a, b)
	}
	ensureNode(t, e.client, "n3")
	e.waitEvent("default", "CIDRNotAvailable")
	if got := e.podCIDR("n3"); got != "" {
		t.Fatalf("n3 got %s from a full range", got)
	}
	// Deleting n1 releases its range, which the waiting n3 gets.
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPodCIDR("n3", a)

	// A new Manager (a new leader) learns the allocation from the nodes.
	e.stop()
	if err := e.client.CoreV1().Nodes().Delete(e.ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ensureNode(t, e.client, "n4")
	e.startManager(cfg)
	e.waitPodCIDR("n4", b)
	if got := e.podCIDR("n3"); got != a {
		t.Errorf("n3 pod CIDR changed to %s", got)
	}
}

func TestNodeIPAMIndex(t *testing.T) {
	c := &nodeIPAMController{network: 0x0af40000, shift: 8, mask: 24, used: make([]string, 256)}
	for _, tc := range []struct {
		cidr string
		idx  int
		ok   bool
	}{
		{"10.244.0.0/24", 0, true},
		{"10.244.255.0/24", 255, true},
		{"10.245.0.0/24", 0, false},
		{"10.243.255.0/24", 0, false},
		{"10.244.1.0/25", 0, false},
		{"fd00::/64", 0, false},
	} {
		idx, ok := c.index(tc.cidr)
		if idx != tc.idx || ok != tc.ok {
			t.Errorf("index(%s) = %d, %v; want %d, %v", tc.cidr, idx, ok, tc.idx, tc.ok)
		}
		if ok && c.cidr(idx) != tc.cidr {
			t.Errorf("cidr(%d) = %s, want %s", idx, c.cidr(idx), tc.cidr)
		}
	}
}
