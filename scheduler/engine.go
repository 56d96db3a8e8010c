package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// Defaults for Options.
const (
	DefaultSchedulerName      = v1.DefaultSchedulerName // "default-scheduler"
	DefaultInitialBackoff     = 1 * time.Second
	DefaultMaxBackoff         = 10 * time.Second
	DefaultUnschedulableFlush = 60 * time.Second
	DefaultAssumeTTL          = 5 * time.Minute
	DefaultBindConcurrency    = 64
)

// Options tune the scheduling algorithm and queue. The zero value is the
// default everywhere.
type Options struct {
	// SchedulerName: the pods whose spec.schedulerName is this, or empty,
	// are this scheduler's (default "default-scheduler").
	SchedulerName string
	// PercentageOfNodesToScore: a cycle stops filtering once it has found
	// this share of the cluster's nodes feasible (never fewer than 100
	// nodes) and scores only those, as kube-scheduler does. 0 = kube's
	// adaptive default: 50 % minus 1 % per 125 nodes, at least 5 % (42 % of
	// 1,000 nodes, 10 % of 5,000). 100 = every node, every time.
	PercentageOfNodesToScore int
	// Weights of the scores; nil = DefaultScoreWeights().
	Weights *ScoreWeights
	// InitialBackoff and MaxBackoff bound the exponential delay before a
	// failed pod is retried (default 1 s doubling up to 10 s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// UnschedulableFlush: a pod that fitted nowhere is retried after this
	// long even if no event suggested it might fit now (default 60 s).
	UnschedulableFlush time.Duration
	// AssumeTTL: how long a pod whose bind succeeded may stay assumed
	// without the informer reporting it bound before the assumption is
	// dropped (default 5 min; negative = never).
	AssumeTTL time.Duration
	// BindConcurrency bounds the binds (and status reports) in flight; when
	// all are busy the scheduling loop waits (default 64).
	BindConcurrency int
	// Seed seeds the tie-break between equally scored nodes, so runs are
	// reproducible.
	Seed uint64
	// Now is the clock (nil = time.Now); for tests.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.SchedulerName == "" {
		o.SchedulerName = DefaultSchedulerName
	}
	if o.Weights == nil {
		w := DefaultScoreWeights()
		o.Weights = &w
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = DefaultInitialBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.UnschedulableFlush <= 0 {
		o.UnschedulableFlush = DefaultUnschedulableFlush
	}
	if o.AssumeTTL == 0 {
		o.AssumeTTL = DefaultAssumeTTL
	}
	if o.BindConcurrency <= 0 {
		o.BindConcurrency = DefaultBindConcurrency
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Binder binds a pod to a node: a pods/binding POST in production.
type Binder interface {
	Bind(ctx context.Context, pod *v1.Pod, nodeName string) error
}

// Reporter makes the outcome of scheduling visible: events, the PodScheduled
// condition. Calls may block on the API; the engine makes them off the
// scheduling loop, bounded by BindConcurrency.
type Reporter interface {
	// Scheduled: pod was bound to nodeName.
	Scheduled(ctx context.Context, pod *v1.Pod, nodeName string)
	// Unschedulable: the attempt failed. reason is v1.PodReasonUnschedulable
	// when the pod fits no node (message as kube words it, "0/5 nodes are
	// available: ...") or v1.PodReasonSchedulerError when binding failed.
	Unschedulable(ctx context.Context, pod *v1.Pod, reason, message string)
}

// EngineConfig configures an Engine.
type EngineConfig struct {
	Options
	// Binder is required.
	Binder Binder
	// Reporter: nil = report nothing.
	Reporter Reporter
	// Logger: nil = discard. The engine adds component=scheduler.
	Logger *slog.Logger
}

// Engine is the scheduler without client-go: it is fed node and pod events
// (AddNode, UpdatePod, ...), keeps the Cache and the Queue, and Run pops
// pods, places them (snapshot → filter chain → scores), assumes them and
// binds them through the Binder. The client-go adapter (Scheduler) wires
// informers to it; tests and benchmarks drive it directly.
type Engine struct {
	opts     Options
	log      *slog.Logger
	binder   Binder
	reporter Reporter
	cache    *Cache
	queue    *Queue

	// One scheduling cycle at a time; everything below belongs to it.
	cycleMu   sync.Mutex
	snap      *Snapshot
	cyc       cycle
	src       rotatingSource
	chain     *filterChain
	sel       *selector
	nextStart int
	feasible  []*NodeInfo

	slots chan struct{}
	work  sync.WaitGroup
}

// NewEngine returns an engine with an empty cache and queue.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if cfg.Binder == nil {
		return nil, errors.New("scheduler engine: no binder")
	}
	o := cfg.Options.withDefaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rep := cfg.Reporter
	if rep == nil {
		rep = nopReporter{}
	}
	ttl := o.AssumeTTL
	if ttl < 0 {
		ttl = 0
	}
	e := &Engine{
		opts:     o,
		log:      log.With("component", "scheduler"),
		binder:   cfg.Binder,
		reporter: rep,
		cache:    NewCache(ttl, o.Now),
		queue:    NewQueue(o.InitialBackoff, o.MaxBackoff, o.UnschedulableFlush, o.Now),
		snap:     NewSnapshot(),
		slots:    make(chan struct{}, o.BindConcurrency),
	}
	e.chain = newFilterChain(&e.cyc, &e.src)
	e.sel = newSelector(&e.cyc, *o.Weights, o.Seed)
	return e, nil
}

// Cache is the engine's cache (read it; the engine's event methods write it).
func (e *Engine) Cache() *Cache { return e.cache }

// Queue is the engine's queue.
func (e *Engine) Queue() *Queue { return e.queue }

// Run schedules until ctx is cancelled, then waits for the binds in flight
// and returns nil. An Engine runs once: the leader builds a fresh one per
// term, from fresh informers.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	bg.Go(func() {
		<-ctx.Done()
		e.queue.Close()
	})
	bg.Go(func() { e.housekeeping(ctx) })
	e.log.Info("scheduler started")
	for e.ScheduleOne(ctx) {
	}
	cancel()
	bg.Wait()
	e.work.Wait()
	e.log.Info("scheduler stopped")
	return nil
}

// housekeeping moves pods out of backoff when their delay is over, retries
// long-parked unschedulable pods and expires stale assumptions.
func (e *Engine) housekeeping(ctx context.Context) {
	// Ten flushes per initial backoff keeps a 1 s backoff within 10 %.
	tick := time.NewTicker(min(max(e.opts.InitialBackoff/10, 10*time.Millisecond), time.Second))
	defer tick.Stop()
	lastCleanup := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		e.queue.FlushBackoff()
		if time.Since(lastCleanup) >= time.Second {
			lastCleanup = time.Now()
			e.queue.FlushUnschedulable()
			if expired := e.cache.CleanupExpired(); len(expired) > 0 {
				for _, p := range expired {
					e.log.Warn("assumed pod expired: bound but never seen bound", "pod", podKey(p))
				}
				e.queue.MoveAll()
			}
		}
	}
}

// ScheduleOne pops one pod and tries to place it; the bind runs in the
// background. It returns false when the queue is closed.
func (e *Engine) ScheduleOne(ctx context.Context) bool {
	qp, ok := e.queue.Pop()
	if !ok || ctx.Err() != nil {
		return false
	}
	pod := qp.Pod
	if e.cache.Contains(pod) {
		// Bound or assumed already: a stale entry.
		e.queue.Done(qp)
		return true
	}
	pi := newPodInfo(pod)
	node, err := e.schedule(pi)
	if err != nil {
		msg := err.Error()
		e.log.Debug("pod unschedulable", "pod", qp.key, "attempts", qp.Attempts+1, "reason", msg)
		e.queue.Requeue(qp, true)
		e.async(ctx, func(ctx context.Context) {
			e.reporter.Unschedulable(ctx, pod, v1.PodReasonUnschedulable, msg)
		})
		return true
	}
	if err := e.cache.assume(pi, node); err != nil {
		e.log.Error("assume pod", "pod", qp.key, "err", err)
		e.queue.Done(qp)
		return true
	}
	e.log.Debug("pod assumed", "pod", qp.key, "node", node)
	e.async(ctx, func(ctx context.Context) { e.bind(ctx, qp, node) })
	return true
}

func (e *Engine) bind(ctx context.Context, qp *QueuedPod, node string) {
	pod := qp.Pod
	if err := e.binder.Bind(ctx, pod, node); err != nil {
		if e.cache.ForgetPod(pod) {
			e.queue.MoveAll() // what it held may let another pod fit
		}
		e.queue.Requeue(qp, false)
		if ctx.Err() != nil {
			return
		}
		e.log.Warn("bind failed", "pod", qp.key, "node", node, "err", err)
		e.reporter.Unschedulable(ctx, pod, v1.PodReasonSchedulerError, "Binding rejected: "+err.Error())
		return
	}
	e.cache.ConfirmPod(pod)
	e.queue.Done(qp)
	e.reporter.Scheduled(ctx, pod, node)
}

// async runs f in the background once one of the BindConcurrency slots is
// free; the caller waits for a slot, which is the loop's back-pressure.
func (e *Engine) async(ctx context.Context, f func(context.Context)) {
	select {
	case e.slots <- struct{}{}:
	case <-ctx.Done():
		return
	}
	e.work.Go(func() {
		defer func() { <-e.slots }()
		f(ctx)
	})
}

// Schedule picks a node for pod from the current cache without assuming or
// binding anything. The error is a *FitError when no node fits.
func (e *Engine) Schedule(pod *v1.Pod) (string, error) {
	return e.schedule(newPodInfo(pod))
}

func (e *Engine) schedule(pi *podInfo) (string, error) {
	e.cycleMu.Lock()
	defer e.cycleMu.Unlock()
	e.cache.UpdateSnapshot(e.snap)
	n := e.snap.Len()
	e.cyc.reset(pi, n)
	if n == 0 {
		return "", &FitError{Pod: pi.pod}
	}
	want := numFeasibleNodesToFind(n, e.opts.PercentageOfNodesToScore)
	e.src.reset(e.snap.nodes, e.nextStart)
	e.feasible = e.feasible[:0]
	feasible := e.chain.wire()
	for len(e.feasible) < want {
		ni := feasible.Next()
		if ni == nil {
			break
		}
		e.feasible = append(e.feasible, ni)
	}
	e.nextStart = (e.src.start + e.src.visited) % n
	if len(e.feasible) == 0 {
		return "", &FitError{Pod: pi.pod, Diagnosis: Diagnosis{
			NumAllNodes: n,
			Rejections:  slices.Clone(e.cyc.diag.Rejections),
		}}
	}
	return e.sel.pick(e.feasible).Name(), nil
}

// Below 100 nodes every node is checked; the floor keeps enough candidates
// for the scores to spread pods.
const minFeasibleNodesToFind = 100

// numFeasibleNodesToFind is how many feasible nodes a cycle looks for before
// it stops filtering; see Options.PercentageOfNodesToScore.
func numFeasibleNodesToFind(numNodes, percentage int) int {
	if numNodes <= minFeasibleNodesToFind || percentage >= 100 {
		return numNodes
	}
	if percentage <= 0 {
		percentage = max(50-numNodes/125, 5)
	}
	return max(numNodes*percentage/100, minFeasibleNodesToFind)
}

// The event methods below are what the informers (or a test) call. They
// route pods: bound ones to the cache, pending ones of this scheduler to the
// queue; and retry parked pods when a change could make them fit.

// AddNode records a new node; parked pods are retried.
func (e *Engine) AddNode(node *v1.Node) {
	e.cache.AddNode(node)
	e.queue.MoveAll()
}

// UpdateNode records a node change; parked pods are retried when the change
// can make room: the node became Ready or was uncordoned, its labels, taints
// or allocatable changed.
func (e *Engine) UpdateNode(old, node *v1.Node) {
	e.cache.UpdateNode(node)
	if old == nil || nodeMayNowFit(old, node) {
		e.queue.MoveAll()
	}
}

// DeleteNode forgets a node.
func (e *Engine) DeleteNode(node *v1.Node) { e.cache.RemoveNode(node.Name) }

func nodeMayNowFit(old, node *v1.Node) bool {
	return (old.Spec.Unschedulable && !node.Spec.Unschedulable) ||
		(readyStatus(old) != v1.ConditionTrue && readyStatus(node) == v1.ConditionTrue) ||
		!maps.Equal(old.Labels, node.Labels) ||
		!reflect.DeepEqual(old.Spec.Taints, node.Spec.Taints) ||
		!equality.Semantic.DeepEqual(old.Status.Allocatable, node.Status.Allocatable)
}

func readyStatus(node *v1.Node) v1.ConditionStatus {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == v1.NodeReady {
			return node.Status.Conditions[i].Status
		}
	}
	return ""
}

// AddPod records a new pod: bound → cache; pending and ours → queue.
func (e *Engine) AddPod(pod *v1.Pod) {
	if pod.Spec.NodeName != "" {
		e.queue.Delete(pod)
		if e.cache.AddPod(pod) {
			e.queue.MoveAll()
		}
		return
	}
	if e.pending(pod) {
		e.queue.Add(pod)
	}
}

// UpdatePod records a pod change. A pod that got bound leaves the queue and
// confirms its assumption; one that terminated frees its node.
func (e *Engine) UpdatePod(old, pod *v1.Pod) {
	if pod.Spec.NodeName != "" {
		e.queue.Delete(pod)
		if e.cache.UpdatePod(old, pod) {
			e.queue.MoveAll()
		}
		return
	}
	if e.pending(pod) {
		e.queue.Update(pod)
	} else {
		e.queue.Delete(pod)
	}
}

// DeletePod forgets a pod; what it held is free, so parked pods are retried.
func (e *Engine) DeletePod(pod *v1.Pod) {
	e.queue.Delete(pod)
	if e.cache.RemovePod(pod) {
		e.queue.MoveAll()
	}
}

// pending: the pod waits for this scheduler — no node yet, ours by
// schedulerName, not being deleted, not finished, no scheduling gates.
func (e *Engine) pending(pod *v1.Pod) bool {
	name := pod.Spec.SchedulerName
	return pod.Spec.NodeName == "" &&
		(name == "" || name == e.opts.SchedulerName) &&
		pod.DeletionTimestamp == nil &&
		!isTerminal(pod) &&
		len(pod.Spec.SchedulingGates) == 0
}

type nopReporter struct{}

func (nopReporter) Scheduled(context.Context, *v1.Pod, string)             {}
func (nopReporter) Unschedulable(context.Context, *v1.Pod, string, string) {}
