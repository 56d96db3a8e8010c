package scheduler

import (
	"context"
	"log/slog"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
)

var podsResource = v1.SchemeGroupVersion.WithResource("pods")

// newFakeAPI is a fake clientset whose pods/binding does what the API
// server's does: set spec.nodeName (once) and PodScheduled=True.
func newFakeAPI(t *testing.T, objs ...runtime.Object) *fake.Clientset {
	t.Helper()
	client := fake.NewClientset(objs...)
	client.PrependReactor("create", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "binding" {
			return false, nil, nil
		}
		b := action.(k8stesting.CreateAction).GetObject().(*v1.Binding)
		obj, err := client.Tracker().Get(podsResource, b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		pod := obj.(*v1.Pod).DeepCopy()
		if b.UID != "" && b.UID != pod.UID {
			return true, nil, apierrors.NewConflict(podsResource.GroupResource(), b.Name, nil)
		}
		if pod.Spec.NodeName != "" {
			return true, nil, apierrors.NewConflict(podsResource.GroupResource(), b.Name, nil)
		}
		pod.Spec.NodeName = b.Target.Name
		pod.Status.Conditions = append(pod.Status.Conditions, v1.PodCondition{Type: v1.PodScheduled, Status: v1.ConditionTrue})
		return true, b, client.Tracker().Update(podsResource, pod, b.Namespace)
	})
	return client
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func getPod(t *testing.T, client *fake.Clientset, name string) *v1.Pod {
	t.Helper()
	p, err := client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

func hasEvent(t *testing.T, client *fake.Clientset, pod, reason, message string) bool {
	t.Helper()
	list, err := client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	for _, ev := range list.Items {
		if ev.InvolvedObject.Name == pod && ev.Reason == reason && ev.Message == message &&
			ev.Source.Component == DefaultSchedulerName {
			return true
		}
	}
	return false
}

func startScheduler(t *testing.T, s *Scheduler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context was cancelled")
		}
	}
}

func TestSchedulerAgainstClientset(t *testing.T) {
	web := makePod("web", requests("500m", "256Mi"))
	huge := makePod("huge", requests("64", ""))
	other := makePod("other", schedulerName("someone-else"))
	client := newFakeAPI(t,
		makeNode("a"),
		makeNode("gpu", nodeTaint("dedicated", "gpu", v1.TaintEffectNoSchedule)),
		web, huge, other,
	)
	s, err := New(Config{Client: client, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := startScheduler(t, s)

	waitFor(t, 10*time.Second, "web bound", func() bool { return getPod(t, client, "web").Spec.NodeName == "a" })
	waitFor(t, 10*time.Second, "Scheduled event", func() bool {
		return hasEvent(t, client, "web", "Scheduled", "Successfully assigned default/web to a")
	})

	const msg = "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}."
	waitFor(t, 10*time.Second, "huge marked unschedulable", func() bool {
		for _, c := range getPod(t, client, "huge").Status.Conditions {
			if c.Type == v1.PodScheduled && c.Status == v1.ConditionFalse && c.Reason == v1.PodReasonUnschedulable && c.Message == msg {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "FailedScheduling event", func() bool {
		return hasEvent(t, client, "huge", "FailedScheduling", msg)
	})
	if got := getPod(t, client, "other"); got.Spec.NodeName != "" {
		t.Errorf("pod of another scheduler bound to %s", got.Spec.NodeName)
	}
	stop()

	// Leadership lost and regained: a fresh Run picks up new work.
	late := makePod("late")
	if _, err := client.CoreV1().Pods("default").Create(context.Background(), late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stop = startScheduler(t, s)
	defer stop()
	waitFor(t, 10*time.Second, "late bound in the next term", func() bool { return getPod(t, client, "late").Spec.NodeName == "a" })
}

func TestSchedulerRunTwiceAtOnce(t *testing.T) {
	s, err := New(Config{Client: newFakeAPI(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := startScheduler(t, s)
	defer stop()
	waitFor(t, 5*time.Second, "first Run started", func() bool { return s.running.Load() })
	if err := s.Run(context.Background()); err != ErrRunning {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
}

func TestTombstones(t *testing.T) {
	p := makePod("p")
	if got := podFromTombstone(cache.DeletedFinalStateUnknown{Key: "default/p", Obj: p}); got != p {
		t.Error("pod tombstone not unwrapped")
	}
	if got := podFromTombstone(p); got != p {
		t.Error("plain pod lost")
	}
	if got := podFromTombstone(cache.DeletedFinalStateUnknown{Key: "x", Obj: "junk"}); got != nil {
		t.Error("junk tombstone accepted")
	}
	n := makeNode("a")
	if got := nodeFromTombstone(cache.DeletedFinalStateUnknown{Key: "a", Obj: n}); got != n {
		t.Error("node tombstone not unwrapped")
	}
}

func TestSetPodScheduledFalse(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	var st v1.PodStatus
	if !setPodScheduledFalse(&st, v1.PodReasonUnschedulable, "m1", t0) {
		t.Fatal("adding the condition reported no change")
	}
	if setPodScheduledFalse(&st, v1.PodReasonUnschedulable, "m1", t1) {
		t.Fatal("same condition reported as a change")
	}
	if !setPodScheduledFalse(&st, v1.PodReasonUnschedulable, "m2", t1) {
		t.Fatal("new message not a change")
	}
	if c := st.Conditions[0]; c.Message != "m2" || !c.LastTransitionTime.Equal(&t0) || len(st.Conditions) != 1 {
		t.Fatalf("condition %+v: message must change, transition time must not", c)
	}
}
