package scheduler

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEngineRunBindsPendingPods(t *testing.T) {
	h := newHarness(t, Options{Now: time.Now}, makeNode("a"), makeNode("b"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.e.Run(ctx) }()
	for i := range 20 {
		h.e.AddPod(makePod(fmt.Sprintf("p%d", i), requests("100m", "100Mi")))
	}
	waitFor(t, 10*time.Second, "20 pods bound", func() bool { return h.binder.numBound() == 20 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	h.reporter.mu.Lock()
	defer h.reporter.mu.Unlock()
	if len(h.reporter.scheduled) != 20 {
		t.Errorf("%d Scheduled reports, want 20", len(h.reporter.scheduled))
	}
}

func TestEngineFailedBindDropsAssumptionAndRetries(t *testing.T) {
	h := newHarness(t, Options{}, makeNode("a", nodeAllocatable("1", "1Gi", "110")))
	p := makePod("p", requests("1", ""))
	failures := 1
	h.binder.setFail(func(*v1.Pod, string) error {
		if failures > 0 {
			failures--
			return errors.New("conflict")
		}
		return nil
	})
	h.e.AddPod(p)
	h.cycleOnce()

	if h.e.Cache().IsAssumed(p) {
		t.Fatal("assumption kept after a failed bind")
	}
	if ni := h.e.Cache().NodeInfo("a"); ni.Requested.MilliCPU != 0 || ni.NumPods != 0 {
		t.Fatalf("resources not freed: %dm cpu, %d pods", ni.Requested.MilliCPU, ni.NumPods)
	}
	if s := h.e.Queue().Stats(); s.Backoff != 1 {
		t.Fatalf("queue %+v, want the pod backing off", s)
	}
	if r := h.reporter.reports(); len(r) != 1 || r[0].Reason != v1.PodReasonSchedulerError {
		t.Fatalf("reports %+v, want one SchedulerError", r)
	}

	h.clock.Step(time.Second)
	h.e.Queue().Flush()
	h.cycleOnce()
	if got := h.binder.boundTo("default/p"); got != "a" {
		t.Fatalf("bound to %q after retry, want a", got)
	}
	if ni := h.e.Cache().NodeInfo("a"); ni.Requested.MilliCPU != 1000 {
		t.Fatalf("requested %dm after bind, want 1000m", ni.Requested.MilliCPU)
	}
}

func TestEngineUnschedulableUntilNodeAdded(t *testing.T) {
	h := newHarness(t, Options{}, makeNode("small", nodeAllocatable("1", "1Gi", "110")))
	h.e.AddPod(makePod("p", requests("2", "")))
	h.cycleOnce()
	r := h.reporter.reports()
	if len(r) != 1 || r[0].Reason != v1.PodReasonUnschedulable || r[0].Message != "0/1 nodes are available: 1 Insufficient cpu." {
		t.Fatalf("reports %+v", r)
	}
	if s := h.e.Queue().Stats(); s.Unschedulable != 1 {
		t.Fatalf("queue %+v, want parked", s)
	}

	h.e.AddNode(makeNode("big"))
	h.clock.Step(time.Second) // its backoff
	h.e.Queue().Flush()
	h.cycleOnce()
	if got := h.binder.boundTo("default/p"); got != "big" {
		t.Fatalf("bound to %q, want big", got)
	}
}

func TestEngineRetriesWhenPodDeleted(t *testing.T) {
	h := newHarness(t, Options{}, makeNode("a", nodeAllocatable("2", "4Gi", "110")))
	hog := makePod("hog", boundTo("a"), requests("2", ""))
	h.e.AddPod(hog)
	h.e.AddPod(makePod("p", requests("1", "")))
	h.cycleOnce()
	if s := h.e.Queue().Stats(); s.Unschedulable != 1 {
		t.Fatalf("queue %+v, want parked", s)
	}
	h.e.DeletePod(hog)
	h.clock.Step(time.Second)
	h.e.Queue().Flush()
	if s := h.e.Queue().Stats(); s.Active != 1 {
		t.Fatalf("queue %+v, want the pod active again", s)
	}
	h.cycleOnce()
	if h.binder.boundTo("default/p") != "a" {
		t.Fatal("not bound after the hog left")
	}
}

func TestEngineNodeUpdatesThatMatter(t *testing.T) {
	ready := makeNode("a")
	heartbeat := ready.DeepCopy()
	heartbeat.Status.Conditions[0].LastHeartbeatTime = metav1.Now()
	relabelled := ready.DeepCopy()
	relabelled.Labels["zone"] = "z1"
	tainted := ready.DeepCopy()
	tainted.Spec.Taints = []v1.Taint{{Key: "k", Effect: v1.TaintEffectNoSchedule}}
	grown := makeNode("a", nodeAllocatable("8", "8Gi", "110"))
	tests := []struct {
		name     string
		old, new *v1.Node
		move     bool
	}{
		{"uncordoned", makeNode("a", cordoned()), ready, true},
		{"cordoned", ready, makeNode("a", cordoned()), false},
		{"became ready", makeNode("a", nodeReady(v1.ConditionFalse)), ready, true},
		{"became not ready", ready, makeNode("a", nodeReady(v1.ConditionFalse)), false},
		{"labels", ready, relabelled, true},
		{"taints", ready, tainted, true},
		{"allocatable", ready, grown, true},
		{"heartbeat only", ready, heartbeat, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nodeMayNowFit(tt.old, tt.new); got != tt.move {
				t.Errorf("nodeMayNowFit = %v, want %v", got, tt.move)
			}
		})
	}

	// And through the engine: uncordoning retries the parked pod.
	h := newHarness(t, Options{}, makeNode("a", cordoned()))
	h.e.AddPod(makePod("p"))
	h.cycleOnce()
	h.e.UpdateNode(makeNode("a", cordoned()), heartbeat)
	h.clock.Step(time.Second)
	h.e.Queue().Flush()
	if s := h.e.Queue().Stats(); s.Active != 1 {
		t.Fatalf("queue %+v after uncordon, want active", s)
	}
}

func TestEngineOnlyQueuesItsPendingPods(t *testing.T) {
	h := newHarness(t, Options{}, makeNode("a"))
	now := metav1.Now()
	deleting := makePod("deleting")
	deleting.DeletionTimestamp = &now
	failed := makePod("failed")
	failed.Status.Phase = v1.PodFailed
	gated := makePod("gated")
	gated.Spec.SchedulingGates = []v1.PodSchedulingGate{{Name: "wait"}}
	for _, p := range []*v1.Pod{
		makePod("other", schedulerName("my-scheduler")),
		deleting, failed, gated,
		makePod("bound", boundTo("a")),
	} {
		h.e.AddPod(p)
	}
	if s := h.e.Queue().Stats(); s != (QueueStats{}) {
		t.Fatalf("queue %+v, want empty", s)
	}
	h.e.AddPod(makePod("mine", schedulerName("")))
	if s := h.e.Queue().Stats(); s.Active != 1 {
		t.Fatalf("queue %+v, want the pod with no schedulerName", s)
	}

	// The gate lifted: queued.
	ungated := gated.DeepCopy()
	ungated.Spec.SchedulingGates = nil
	h.e.UpdatePod(gated, ungated)
	if s := h.e.Queue().Stats(); s.Active != 2 {
		t.Fatalf("queue %+v after ungating, want 2 active", s)
	}
}

func TestEngineInformerConfirmsBind(t *testing.T) {
	h := newHarness(t, Options{}, makeNode("a"))
	p := makePod("p", requests("1", ""))
	h.e.AddPod(p)
	h.cycleOnce()
	if !h.e.Cache().IsAssumed(p) {
		t.Fatal("not assumed after a successful bind")
	}
	bound := p.DeepCopy()
	bound.Spec.NodeName = "a"
	h.e.UpdatePod(p, bound)
	if h.e.Cache().IsAssumed(p) {
		t.Fatal("still assumed after the informer saw it bound")
	}
	if ni := h.e.Cache().NodeInfo("a"); ni.NumPods != 1 || ni.Requested.MilliCPU != 1000 {
		t.Fatalf("counted %d pods, %dm", ni.NumPods, ni.Requested.MilliCPU)
	}
	// Deleted later: resources come back.
	h.e.DeletePod(bound)
	if ni := h.e.Cache().NodeInfo("a"); ni.NumPods != 0 {
		t.Fatal("deleted pod still counted")
	}
}

// blockingBinder holds every bind until its context ends.
type blockingBinder struct{ started chan struct{} }

func (b blockingBinder) Bind(ctx context.Context, _ *v1.Pod, _ string) error {
	b.started <- struct{}{}
	<-ctx.Done()
	return ctx.Err()
}

func TestEngineStopsWithBindsInFlight(t *testing.T) {
	b := blockingBinder{started: make(chan struct{}, 10)}
	e, err := NewEngine(EngineConfig{Binder: b})
	if err != nil {
		t.Fatal(err)
	}
	e.AddNode(makeNode("a"))
	e.AddPod(makePod("p"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	<-b.started
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return with a bind in flight")
	}
}
