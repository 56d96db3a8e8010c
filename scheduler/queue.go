package scheduler

import (
	"container/heap"
	"reflect"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
)

// Queue holds the pods waiting to be scheduled, in three places:
//
//   - active: ready to try, highest spec.priority first, then oldest
//     (creationTimestamp), then first come;
//   - backoff: failed recently, waiting out an exponential delay
//     (InitialBackoff doubling per failed attempt up to MaxBackoff);
//   - unschedulable: fitted no node; parked until an event that could make
//     them fit (MoveAll: a node added or made schedulable, a pod gone) or,
//     as a safety net, until UnschedulableFlush has passed.
//
// A popped pod is "in flight" until Done (bound) or Requeue (failed). If a
// MoveAll happens while it is in flight, a failure sends it to backoff rather
// than unschedulable: the event it missed may be the one that makes it fit.
// Queue is safe for concurrent use.
type Queue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    func() time.Time
	closed bool

	initialBackoff time.Duration
	maxBackoff     time.Duration
	flushAfter     time.Duration

	pods          map[string]*QueuedPod // by namespace/name, in flight included
	active        podHeap
	backoff       podHeap
	unschedulable map[string]*QueuedPod
	seq           uint64
	moveCycle     uint64
}

// QueuedPod is a pod with its queueing state. While it is in flight (popped,
// not yet Done or requeued) Pod does not change, so the scheduler may read
// it without the queue's lock; updates arriving meanwhile are kept aside and
// applied when it is requeued.
type QueuedPod struct {
	Pod *v1.Pod
	// Attempts counts the failed scheduling attempts so far.
	Attempts int

	updated      *v1.Pod // newest object seen while in flight
	key          string
	seq          uint64
	where        queuePlace
	index        int // in its heap
	backoffUntil time.Time
	parkedAt     time.Time // entered unschedulable
	poppedAt     uint64    // moveCycle when popped
}

type queuePlace uint8

const (
	inActive queuePlace = iota + 1
	inBackoff
	inUnschedulable
	inFlight
)

// NewQueue returns an empty queue; zero durations take the defaults (1 s,
// 10 s, 60 s); now is the clock (nil: time.Now).
func NewQueue(initialBackoff, maxBackoff, flushAfter time.Duration, now func() time.Time) *Queue {
	if initialBackoff <= 0 {
		initialBackoff = DefaultInitialBackoff
	}
	if maxBackoff <= 0 {
		maxBackoff = DefaultMaxBackoff
	}
	if maxBackoff < initialBackoff {
		maxBackoff = initialBackoff
	}
	if flushAfter <= 0 {
		flushAfter = DefaultUnschedulableFlush
	}
	if now == nil {
		now = time.Now
	}
	q := &Queue{
		now:            now,
		initialBackoff: initialBackoff,
		maxBackoff:     maxBackoff,
		flushAfter:     flushAfter,
		pods:           make(map[string]*QueuedPod),
		unschedulable:  make(map[string]*QueuedPod),
	}
	q.active.less = activeLess
	q.backoff.less = func(a, b *QueuedPod) bool { return a.backoffUntil.Before(b.backoffUntil) }
	q.cond = sync.NewCond(&q.mu)
	return q
}

func activeLess(a, b *QueuedPod) bool {
	pa, pb := corev1helpers.PodPriority(a.Pod), corev1helpers.PodPriority(b.Pod)
	if pa != pb {
		return pa > pb
	}
	ta, tb := a.Pod.CreationTimestamp.Time, b.Pod.CreationTimestamp.Time
	if !ta.Equal(tb) {
		return ta.Before(tb)
	}
	return a.seq < b.seq
}

func podKey(pod *v1.Pod) string { return pod.Namespace + "/" + pod.Name }

// Add queues a new pending pod; a pod already queued is updated instead.
func (q *Queue) Add(pod *v1.Pod) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(pod)
}

func (q *Queue) addLocked(pod *v1.Pod) {
	key := podKey(pod)
	if qp := q.pods[key]; qp != nil {
		q.updateLocked(qp, pod)
		return
	}
	q.seq++
	qp := &QueuedPod{Pod: pod, key: key, seq: q.seq}
	q.pods[key] = qp
	q.pushActiveLocked(qp)
}

// Update records a change to a pending pod. A pod parked as unschedulable
// whose spec or labels changed is retried: the change may make it fit.
// Status-only changes (such as the PodScheduled condition this scheduler
// writes) do not move it.
func (q *Queue) Update(pod *v1.Pod) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(pod)
}

func (q *Queue) updateLocked(qp *QueuedPod, pod *v1.Pod) {
	if qp.Pod.UID != pod.UID {
		// Deleted and re-created under the same name: start afresh.
		q.removeLocked(qp)
		q.seq++
		nqp := &QueuedPod{Pod: pod, key: qp.key, seq: q.seq}
		q.pods[qp.key] = nqp
		q.pushActiveLocked(nqp)
		return
	}
	if qp.where == inFlight {
		qp.updated = pod
		return
	}
	old := qp.Pod
	qp.Pod = pod
	switch qp.where {
	case inActive:
		heap.Fix(&q.active, qp.index)
	case inUnschedulable:
		if schedulingInputsChanged(old, pod) {
			delete(q.unschedulable, qp.key)
			q.requeueLocked(qp)
		}
	}
}

// schedulingInputsChanged: the pod's spec or labels (what the filters and
// scores read) differ; status, annotations, resourceVersion do not count.
func schedulingInputsChanged(old, pod *v1.Pod) bool {
	return !reflect.DeepEqual(old.Spec, pod.Spec) || !reflect.DeepEqual(old.Labels, pod.Labels)
}

// Delete forgets a pod: deleted, bound, or no longer ours. A pod in flight is
// forgotten too, so a failure reported for it later is dropped.
func (q *Queue) Delete(pod *v1.Pod) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if qp := q.pods[podKey(pod)]; qp != nil && (pod.UID == "" || qp.Pod.UID == pod.UID) {
		q.removeLocked(qp)
	}
}

func (q *Queue) removeLocked(qp *QueuedPod) {
	switch qp.where {
	case inActive:
		heap.Remove(&q.active, qp.index)
	case inBackoff:
		heap.Remove(&q.backoff, qp.index)
	case inUnschedulable:
		delete(q.unschedulable, qp.key)
	}
	qp.where = 0
	delete(q.pods, qp.key)
}

// Pop blocks until a pod is active and returns it, in flight; false once the
// queue is closed.
func (q *Queue) Pop() (*QueuedPod, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.active.Len() == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return nil, false
	}
	qp := heap.Pop(&q.active).(*QueuedPod)
	qp.where = inFlight
	qp.poppedAt = q.moveCycle
	return qp, true
}

// Done ends a successful attempt: the pod is bound and leaves the queue.
func (q *Queue) Done(qp *QueuedPod) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if cur := q.pods[qp.key]; cur == qp {
		q.removeLocked(qp)
	}
}

// Requeue ends a failed attempt. unschedulable says the pod fitted no node;
// otherwise (a bind error) it only backs off. A pod deleted meanwhile is
// dropped.
func (q *Queue) Requeue(qp *QueuedPod, unschedulable bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if cur := q.pods[qp.key]; cur != qp || qp.where != inFlight {
		return
	}
	changed := false
	if qp.updated != nil {
		changed = schedulingInputsChanged(qp.Pod, qp.updated)
		qp.Pod, qp.updated = qp.updated, nil
	}
	qp.Attempts++
	qp.backoffUntil = q.now().Add(q.backoffFor(qp.Attempts))
	// Park only if nothing happened during the attempt that could change
	// its outcome: no cluster event, no change to the pod itself.
	if unschedulable && qp.poppedAt == q.moveCycle && !changed {
		qp.where = inUnschedulable
		qp.parkedAt = q.now()
		q.unschedulable[qp.key] = qp
		return
	}
	q.requeueLocked(qp)
}

func (q *Queue) backoffFor(attempts int) time.Duration {
	d := q.initialBackoff
	for i := 1; i < attempts && d < q.maxBackoff; i++ {
		d *= 2
	}
	return min(d, q.maxBackoff)
}

// requeueLocked sends a pod to backoff if its delay is not over, else active.
func (q *Queue) requeueLocked(qp *QueuedPod) {
	if q.now().Before(qp.backoffUntil) {
		qp.where = inBackoff
		heap.Push(&q.backoff, qp)
		return
	}
	q.pushActiveLocked(qp)
}

func (q *Queue) pushActiveLocked(qp *QueuedPod) {
	qp.where = inActive
	heap.Push(&q.active, qp)
	q.cond.Signal()
}

// MoveAll retries every unschedulable pod (through backoff if its delay is
// not over): something changed that may make them fit.
func (q *Queue) MoveAll() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.moveCycle++
	for key, qp := range q.unschedulable {
		delete(q.unschedulable, key)
		q.requeueLocked(qp)
	}
}

// Flush moves backoff pods whose delay is over to active, and unschedulable
// pods parked longer than the flush interval back into play.
func (q *Queue) Flush() {
	q.FlushBackoff()
	q.FlushUnschedulable()
}

// FlushBackoff moves the pods whose backoff is over to active.
func (q *Queue) FlushBackoff() {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	for q.backoff.Len() > 0 && !now.Before(q.backoff.items[0].backoffUntil) {
		qp := heap.Pop(&q.backoff).(*QueuedPod)
		q.pushActiveLocked(qp)
	}
}

// FlushUnschedulable retries the pods parked longer than the flush interval.
func (q *Queue) FlushUnschedulable() {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := q.now()
	for key, qp := range q.unschedulable {
		if now.Sub(qp.parkedAt) >= q.flushAfter {
			delete(q.unschedulable, key)
			q.requeueLocked(qp)
		}
	}
}

// Close wakes every Pop, which returns false from then on.
func (q *Queue) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// QueueStats counts the pods in each part of the queue.
type QueueStats struct {
	Active, Backoff, Unschedulable, InFlight int
}

// Stats returns the current counts.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := QueueStats{Active: q.active.Len(), Backoff: q.backoff.Len(), Unschedulable: len(q.unschedulable)}
	s.InFlight = len(q.pods) - s.Active - s.Backoff - s.Unschedulable
	return s
}

// podHeap is a container/heap of queued pods keeping each one's index.
type podHeap struct {
	items []*QueuedPod
	less  func(a, b *QueuedPod) bool
}

func (h *podHeap) Len() int           { return len(h.items) }
func (h *podHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *podHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].index = i
	h.items[j].index = j
}
func (h *podHeap) Push(x any) {
	qp := x.(*QueuedPod)
	qp.index = len(h.items)
	h.items = append(h.items, qp)
}
func (h *podHeap) Pop() any {
	n := len(h.items) - 1
	qp := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	qp.index = -1
	return qp
}
