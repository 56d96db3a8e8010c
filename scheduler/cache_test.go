package scheduler

import (
	"errors"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func requireRequested(t *testing.T, c *Cache, node string, milliCPU int64, pods int) {
	t.Helper()
	ni := c.NodeInfo(node)
	if ni == nil {
		t.Fatalf("node %s not in cache", node)
	}
	if ni.Requested.MilliCPU != milliCPU || ni.NumPods != pods {
		t.Fatalf("node %s: requested %dm cpu, %d pods; want %dm, %d", node, ni.Requested.MilliCPU, ni.NumPods, milliCPU, pods)
	}
}

func TestCacheAssumeForget(t *testing.T) {
	clock := newFakeClock()
	c := NewCache(time.Minute, clock.Now)
	c.AddNode(makeNode("a"))
	p := makePod("p", requests("1", "1Gi"))
	if err := c.AssumePod(p, "a"); err != nil {
		t.Fatal(err)
	}
	requireRequested(t, c, "a", 1000, 1)
	if err := c.AssumePod(p, "a"); !errors.Is(err, ErrPodKnown) {
		t.Fatalf("assume twice: %v, want ErrPodKnown", err)
	}
	if !c.ForgetPod(p) {
		t.Fatal("ForgetPod: not assumed")
	}
	requireRequested(t, c, "a", 0, 0)
}

func TestCacheConfirmedByInformer(t *testing.T) {
	clock := newFakeClock()
	c := NewCache(time.Minute, clock.Now)
	c.AddNode(makeNode("a"))
	p := makePod("p", requests("1", "1Gi"))
	_ = c.AssumePod(p, "a")
	c.ConfirmPod(p)
	bound := p.DeepCopy()
	bound.Spec.NodeName = "a"
	if freed := c.AddPod(bound); freed {
		t.Error("confirming on the assumed node freed something")
	}
	if c.IsAssumed(p) {
		t.Fatal("still assumed after the informer saw it bound")
	}
	clock.Step(2 * time.Minute)
	if exp := c.CleanupExpired(); len(exp) != 0 {
		t.Fatalf("a confirmed pod expired: %v", exp)
	}
	requireRequested(t, c, "a", 1000, 1)
	if c.ForgetPod(p) {
		t.Fatal("ForgetPod dropped a bound pod")
	}
}

func TestCacheAssumedExpires(t *testing.T) {
	clock := newFakeClock()
	c := NewCache(time.Minute, clock.Now)
	c.AddNode(makeNode("a"))
	p := makePod("p", requests("1", ""))
	_ = c.AssumePod(p, "a")
	clock.Step(time.Hour)
	if exp := c.CleanupExpired(); len(exp) != 0 {
		t.Fatal("expired while its bind was still in flight")
	}
	c.ConfirmPod(p) // bind returned OK; TTL starts now
	clock.Step(59 * time.Second)
	if exp := c.CleanupExpired(); len(exp) != 0 {
		t.Fatal("expired early")
	}
	clock.Step(2 * time.Second)
	if exp := c.CleanupExpired(); len(exp) != 1 {
		t.Fatalf("expired %d pods, want 1", len(exp))
	}
	requireRequested(t, c, "a", 0, 0)
}

func TestCacheInformerPlacesElsewhere(t *testing.T) {
	c := NewCache(time.Minute, nil)
	c.AddNode(makeNode("a"))
	c.AddNode(makeNode("b"))
	p := makePod("p", requests("1", ""))
	_ = c.AssumePod(p, "a")
	bound := p.DeepCopy()
	bound.Spec.NodeName = "b"
	if !c.AddPod(bound) {
		t.Error("moving the pod off a did not report freed resources")
	}
	requireRequested(t, c, "a", 0, 0)
	requireRequested(t, c, "b", 1000, 1)
}

func TestCacheTerminatedPodFreesNode(t *testing.T) {
	c := NewCache(time.Minute, nil)
	c.AddNode(makeNode("a"))
	p := makePod("p", boundTo("a"), requests("2", ""))
	c.AddPod(p)
	requireRequested(t, c, "a", 2000, 1)
	done := p.DeepCopy()
	done.Status.Phase = v1.PodSucceeded
	if !c.UpdatePod(p, done) {
		t.Error("termination did not report freed resources")
	}
	requireRequested(t, c, "a", 0, 0)
}

func TestCachePodBeforeNodeAndNodeRemoval(t *testing.T) {
	c := NewCache(time.Minute, nil)
	p := makePod("p", boundTo("a"), requests("1", ""))
	c.AddPod(p) // informer delivered the pod before its node
	if nodes, _ := c.Counts(); nodes != 0 {
		t.Fatalf("placeholder counted as a node")
	}
	s := NewSnapshot()
	c.UpdateSnapshot(s)
	if s.Len() != 0 {
		t.Fatal("placeholder in snapshot")
	}
	c.AddNode(makeNode("a"))
	requireRequested(t, c, "a", 1000, 1)
	c.UpdateSnapshot(s)
	if s.Len() != 1 || s.Get("a").NumPods != 1 {
		t.Fatal("node with its pod not in snapshot")
	}
	c.RemoveNode("a")
	c.UpdateSnapshot(s)
	if s.Len() != 0 {
		t.Fatal("removed node still in snapshot")
	}
	c.AddNode(makeNode("a")) // back under the same name: its pod still counts
	requireRequested(t, c, "a", 1000, 1)
	c.RemovePod(p)
	c.RemoveNode("a")
	if c.NodeInfo("a") != nil {
		t.Fatal("empty removed node kept")
	}
}

func TestSnapshotIsIncremental(t *testing.T) {
	c := NewCache(time.Minute, nil)
	for _, n := range []string{"a", "b", "c"} {
		c.AddNode(makeNode(n))
	}
	s := NewSnapshot()
	c.UpdateSnapshot(s)
	a, b := s.Get("a"), s.Get("b")
	_ = c.AssumePod(makePod("p", requests("1", "")), "a")
	c.UpdateSnapshot(s)
	if s.Get("b") != b {
		t.Error("unchanged node was cloned again")
	}
	if s.Get("a") == a {
		t.Fatal("changed node not refreshed")
	}
	if a.NumPods != 0 || s.Get("a").NumPods != 1 {
		t.Error("snapshot shares state with the cache")
	}
	c.RemoveNode("b")
	c.UpdateSnapshot(s)
	if s.Len() != 2 || s.Get("b") != nil || s.Get("c") == nil || s.Get("a") == nil {
		t.Errorf("after removal: len %d", s.Len())
	}
}
