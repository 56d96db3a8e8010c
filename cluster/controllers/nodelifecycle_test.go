package controllers

import (
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeHealth is a NodeHealth the test drives.
type fakeHealth struct {
	mu    sync.Mutex
	alive map[string]bool // missing = unknown to gossip
	ch    chan struct{}
}

func newFakeHealth(alive ...string) *fakeHealth {
	f := &fakeHealth{alive: map[string]bool{}, ch: make(chan struct{}, 1)}
	for _, n := range alive {
		f.alive[n] = true
	}
	return f
}

func (f *fakeHealth) Alive(name string) (bool, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.alive[name]
	return a, ok
}

func (f *fakeHealth) Changes() <-chan struct{} { return f.ch }

func (f *fakeHealth) set(name string, alive bool) {
	f.mu.Lock()
	f.alive[name] = alive
	f.mu.Unlock()
	select {
	case f.ch <- struct{}{}:
	default:
	}
}

func nodeLifecycleConfig(h NodeHealth) Config {
	return Config{
		Controllers:            []string{NodeLifecycle},
		NodeHealth:             h,
		PodEvictionTimeout:     time.Second,
		NodeMonitorPeriod:      50 * time.Millisecond,
		NodeUnknownGracePeriod: 300 * time.Millisecond,
	}
}

// runningPod creates a pod bound to node, Running and Ready.
func (e *env) runningPod(name, node string, tolerations ...corev1.Toleration) {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: node, Tolerations: tolerations, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	out, err := e.client.CoreV1().Pods("default").Create(e.ctx, pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	out.Status.Phase = corev1.PodRunning
	out.Status.PodIP = "10.244.0.9"
	setCond(&out.Status, corev1.PodReady, true)
	if _, err := e.client.CoreV1().Pods("default").UpdateStatus(e.ctx, out, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) node(name string) *corev1.Node {
	e.t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

func (e *env) pod(name string) *corev1.Pod {
	e.t.Helper()
	p, err := e.client.CoreV1().Pods("default").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

func (e *env) waitTainted(name string, tainted bool) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, "node "+name+" taint", func() (bool, error) {
		return (unreachableTaint(e.node(name)) != nil) == tainted, nil
	})
}

func (e *env) evicted(name string) bool { return e.pod(name).DeletionTimestamp != nil }

// consistently fails the test if cond turns false within d.
func consistently(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if !cond() {
			t.Fatalf("no longer %s", what)
		}
	}
}

func TestNodeLifecycleUnreachableNode(t *testing.T) {
	h := newFakeHealth("n1", "n2", "n3")
	e := newEnv(t, nodeLifecycleConfig(h))
	for _, n := range []string{"n1", "n2", "n3"} {
		ensureNode(t, e.client, n)
	}
	hour, zero := int64(3600), int64(0)
	e.runningPod("plain", "n1")
	e.runningPod("tolerant", "n1", corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &hour})
	e.runningPod("impatient", "n1", corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &zero})
	e.runningPod("forever", "n1", corev1.Toleration{Operator: corev1.TolerationOpExists})
	e.runningPod("elsewhere", "n2")

	h.set("n1", false)
	e.waitTainted("n1", true)
	start := time.Now()
	n1 := e.node("n1")
	var ready *corev1.NodeCondition
	for i := range n1.Status.Conditions {
		if n1.Status.Conditions[i].Type == corev1.NodeReady {
			ready = &n1.Status.Conditions[i]
		}
	}
	if ready == nil || ready.Status != corev1.ConditionUnknown || ready.Reason != reasonNodeStatusUnknown {
		t.Errorf("Ready = %+v, want Unknown/NodeStatusUnknown", ready)
	}
	e.waitEvent("default", "NodeNotReady")
	waitFor(t, 10*time.Second, "pods of n1 not ready", func() (bool, error) { return !isPodReady(e.pod("forever")), nil })
	waitFor(t, 10*time.Second, "impatient evicted at once", func() (bool, error) { return e.evicted("impatient"), nil })
	waitFor(t, 10*time.Second, "plain evicted", func() (bool, error) { return e.evicted("plain"), nil })
	if time.Since(start) < 300*time.Millisecond {
		t.Errorf("plain evicted %v after the taint, before the 1s eviction timeout", time.Since(start))
	}
	e.waitEvent("default", "TaintManagerEviction")
	if e.evicted("tolerant") || e.evicted("forever") || e.evicted("elsewhere") {
		t.Error("a pod that tolerates the taint, or runs elsewhere, was evicted")
	}
	if !isPodReady(e.pod("elsewhere")) {
		t.Error("pod on a healthy node marked not ready")
	}

	h.set("n1", true)
	e.waitTainted("n1", false)
	if e.evicted("tolerant") || e.evicted("forever") {
		t.Error("tolerating pods evicted")
	}
}

func TestNodeLifecycleStopsEvictingWhenMostNodesAreDown(t *testing.T) {
	h := newFakeHealth("n1", "n2", "n3")
	e := newEnv(t, nodeLifecycleConfig(h))
	for _, n := range []string{"n1", "n2", "n3"} {
		ensureNode(t, e.client, n)
	}
	e.runningPod("p1", "n1")
	e.runningPod("p2", "n2")
	h.set("n1", false)
	h.set("n2", false)
	e.waitTainted("n1", true)
	e.waitTainted("n2", true)
	// Two of three unreachable: perhaps it is this leader that is cut off.
	consistently(t, 2500*time.Millisecond, "keeping pods of unreachable nodes", func() bool {
		return !e.evicted("p1") && !e.evicted("p2")
	})
	// n2 comes back: one of three is a node failure; evictions resume.
	h.set("n2", true)
	e.waitTainted("n2", false)
	waitFor(t, 10*time.Second, "p1 evicted", func() (bool, error) { return e.evicted("p1"), nil })
	if e.evicted("p2") {
		t.Error("pod of the recovered node evicted")
	}
}

func TestNodeLifecycleUnknownNode(t *testing.T) {
	// Gossip never heard of n2: unreachable once the grace period is over.
	h := newFakeHealth("n1", "n3")
	e := newEnv(t, nodeLifecycleConfig(h))
	for _, n := range []string{"n1", "n2", "n3"} {
		ensureNode(t, e.client, n)
	}
	e.waitTainted("n2", true)
	if unreachableTaint(e.node("n1")) != nil {
		t.Error("a live node was tainted")
	}
	h.set("n2", true)
	e.waitTainted("n2", false)
}

func TestToleratesUnreachable(t *testing.T) {
	ten := int64(10)
	for _, tc := range []struct {
		name string
		tol  corev1.Toleration
		ok   bool
		secs *int64
	}{
		{"exists on the key", corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &ten}, true, &ten},
		{"equal without value", corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpEqual}, true, nil},
		{"everything", corev1.Toleration{Operator: corev1.TolerationOpExists}, true, nil},
		{"other effect", corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}, false, nil},
		{"other key", corev1.Toleration{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists}, false, nil},
		{"wrong value", corev1.Toleration{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpEqual, Value: "x"}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, secs := toleratesUnreachable(&corev1.Pod{Spec: corev1.PodSpec{Tolerations: []corev1.Toleration{tc.tol}}})
			if ok != tc.ok || (secs == nil) != (tc.secs == nil) || (secs != nil && *secs != *tc.secs) {
				t.Errorf("toleratesUnreachable = %v, %v; want %v, %v", ok, secs, tc.ok, tc.secs)
			}
		})
	}
}
