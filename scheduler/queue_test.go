package scheduler

import (
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func newTestQueue() (*Queue, *fakeClock) {
	c := newFakeClock()
	return NewQueue(0, 0, 0, c.Now), c
}

func popName(t *testing.T, q *Queue) string {
	t.Helper()
	if q.Stats().Active == 0 {
		t.Fatal("pop: queue has no active pod")
	}
	qp, ok := q.Pop()
	if !ok {
		t.Fatal("pop: queue closed")
	}
	return qp.Pod.Name
}

func TestQueueOrder(t *testing.T) {
	q, _ := newTestQueue()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	q.Add(makePod("new-low", created(t0.Add(2*time.Minute))))
	q.Add(makePod("old-low", created(t0)))
	q.Add(makePod("high", priority(1000), created(t0.Add(time.Hour))))
	q.Add(makePod("same-time-first", created(t0.Add(time.Minute))))
	q.Add(makePod("same-time-second", created(t0.Add(time.Minute))))
	q.Add(makePod("negative", priority(-5), created(t0.Add(-time.Hour))))
	var got []string
	for range 6 {
		got = append(got, popName(t, q))
	}
	want := []string{"high", "old-low", "same-time-first", "same-time-second", "new-low", "negative"}
	if !slices.Equal(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
}

func TestQueueBackoffGrowsAndCaps(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(makePod("p"))
	want := []time.Duration{1, 2, 4, 8, 10, 10}
	for i, w := range want {
		qp, _ := q.Pop()
		q.Requeue(qp, false) // a bind error: backoff, never parked
		if s := q.Stats(); s.Backoff != 1 {
			t.Fatalf("attempt %d: stats %+v, want 1 in backoff", i+1, s)
		}
		clock.Step(w*time.Second - time.Millisecond)
		q.Flush()
		if q.Stats().Active != 0 {
			t.Fatalf("attempt %d: active before %v backoff was over", i+1, w*time.Second)
		}
		clock.Step(time.Millisecond)
		q.Flush()
		if q.Stats().Active != 1 {
			t.Fatalf("attempt %d: not active after %v", i+1, w*time.Second)
		}
	}
}

func TestQueueUnschedulableWaitsForAnEvent(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(makePod("p"))
	qp, _ := q.Pop()
	q.Requeue(qp, true)
	clock.Step(30 * time.Second) // backoff long over, but nothing changed
	q.Flush()
	if s := q.Stats(); s.Unschedulable != 1 || s.Active != 0 {
		t.Fatalf("stats %+v, want parked", s)
	}
	q.MoveAll() // e.g. a node was added
	if s := q.Stats(); s.Active != 1 {
		t.Fatalf("after MoveAll: stats %+v, want active", s)
	}
}

func TestQueueMoveAllRespectsBackoff(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(makePod("p"))
	qp, _ := q.Pop()
	q.Requeue(qp, true)
	q.MoveAll() // at once: still within its 1 s backoff
	if s := q.Stats(); s.Backoff != 1 {
		t.Fatalf("stats %+v, want backing off", s)
	}
	clock.Step(time.Second)
	q.Flush()
	if s := q.Stats(); s.Active != 1 {
		t.Fatalf("stats %+v, want active", s)
	}
}

func TestQueuePeriodicFlush(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(makePod("p"))
	qp, _ := q.Pop()
	q.Requeue(qp, true)
	clock.Step(59 * time.Second)
	q.Flush()
	if q.Stats().Unschedulable != 1 {
		t.Fatal("flushed before 60 s")
	}
	clock.Step(time.Second)
	q.Flush()
	if q.Stats().Active != 1 {
		t.Fatal("not flushed after 60 s")
	}
}

// An event during the attempt may be the very one that makes the pod fit, so
// a failure sent after it goes to backoff instead of waiting for another.
func TestQueueEventDuringAttempt(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(makePod("p"))
	qp, _ := q.Pop()
	q.MoveAll()
	q.Requeue(qp, true)
	if s := q.Stats(); s.Backoff != 1 || s.Unschedulable != 0 {
		t.Fatalf("stats %+v, want backoff", s)
	}
	clock.Step(time.Second)
	q.Flush()
	if popName(t, q) != "p" {
		t.Fatal("wrong pod")
	}
}

func TestQueueUpdateOfParkedPod(t *testing.T) {
	q, _ := newTestQueue()
	p := makePod("p")
	q.Add(p)
	qp, _ := q.Pop()
	q.Requeue(qp, true)

	// Our own status write comes back as an update: stays parked.
	withStatus := p.DeepCopy()
	withStatus.Status.Conditions = []v1.PodCondition{{Type: v1.PodScheduled, Status: v1.ConditionFalse}}
	q.Update(withStatus)
	if s := q.Stats(); s.Unschedulable != 1 {
		t.Fatalf("status update moved the pod: %+v", s)
	}

	// A new toleration may change everything: retried (after backoff).
	tolerant := withStatus.DeepCopy()
	tolerant.Spec.Tolerations = []v1.Toleration{{Operator: v1.TolerationOpExists}}
	q.Update(tolerant)
	if s := q.Stats(); s.Unschedulable != 0 {
		t.Fatalf("spec update left the pod parked: %+v", s)
	}
}

func TestQueueDeleteWhileInFlight(t *testing.T) {
	q, _ := newTestQueue()
	p := makePod("p")
	q.Add(p)
	qp, _ := q.Pop()
	q.Delete(p)
	q.Requeue(qp, false)
	if s := q.Stats(); s != (QueueStats{}) {
		t.Errorf("deleted pod came back: %+v", s)
	}
}

func TestQueueRecreatedPodReplacesOld(t *testing.T) {
	q, _ := newTestQueue()
	old := makePod("p")
	q.Add(old)
	qp, _ := q.Pop()
	q.Requeue(qp, true)
	fresh := makePod("p") // same name, new UID
	q.Add(fresh)
	if s := q.Stats(); s.Active != 1 || s.Unschedulable != 0 {
		t.Fatalf("stats %+v", s)
	}
	got, _ := q.Pop()
	if got.Pod.UID != fresh.UID || got.Attempts != 0 {
		t.Errorf("popped %s attempts %d, want the new pod afresh", got.Pod.UID, got.Attempts)
	}
}

func TestQueuePopBlocksUntilAddOrClose(t *testing.T) {
	q, _ := newTestQueue()
	got := make(chan string)
	go func() {
		qp, ok := q.Pop()
		if !ok {
			got <- "closed"
			return
		}
		got <- qp.Pod.Name
	}()
	q.Add(makePod("p"))
	if name := <-got; name != "p" {
		t.Fatalf("Pop = %s", name)
	}
	go func() {
		_, ok := q.Pop()
		if !ok {
			got <- "closed"
		}
	}()
	q.Close()
	if r := <-got; r != "closed" {
		t.Fatalf("Pop after Close = %s", r)
	}
}

func TestQueueUpdateWhileInFlight(t *testing.T) {
	q, _ := newTestQueue()
	p := makePod("p")
	q.Add(p)
	qp, _ := q.Pop()
	newer := p.DeepCopy()
	newer.Spec.Tolerations = []v1.Toleration{{Operator: v1.TolerationOpExists}}
	q.Update(newer)
	if qp.Pod != p {
		t.Fatal("in-flight pod object changed under the scheduler")
	}
	q.Requeue(qp, true)
	if qp.Pod != newer {
		t.Fatal("update seen in flight was not applied on requeue")
	}
	if s := q.Stats(); s.Unschedulable != 0 || s.Backoff != 1 {
		t.Fatalf("stats %+v: a pod whose spec changed mid-attempt must not be parked", s)
	}
}
