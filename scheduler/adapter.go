package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
)

// This file is the thin client-go layer: informers feed an Engine, and the
// Engine's Binder and Reporter write back through the API. Nothing here
// decides anything.

// bindTimeout bounds one pods/binding call so a hung request cannot hold a
// bind slot for ever; the pod is retried after backoff.
const bindTimeout = 30 * time.Second

// Config configures a Scheduler. Zero value = defaults, except Client.
type Config struct {
	// Client talks to the API (required).
	Client kubernetes.Interface
	// Logger: nil = discard.
	Logger *slog.Logger
	// Options tune the algorithm and queue.
	Options
	// ResyncPeriod of the informers; 0 (the default) = never: the cache is
	// kept by events, and the queue has its own periodic retry.
	ResyncPeriod time.Duration
}

// Scheduler is the scheduler as a leader service: Run watches nodes and pods
// through client-go informers, binds pending pods through pods/binding, and
// reports outcomes as Events and the PodScheduled condition.
type Scheduler struct {
	cfg     Config
	log     *slog.Logger // with component=scheduler, for the adapter's own lines
	running atomic.Bool
}

// New checks cfg and returns a Scheduler; nothing runs until Run.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Client == nil {
		return nil, errors.New("scheduler: no client")
	}
	cfg.Options = cfg.Options.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Scheduler{cfg: cfg, log: cfg.Logger.With("component", "scheduler")}, nil
}

// ErrRunning is returned by Run while another Run of the same Scheduler is
// still going.
var ErrRunning = errors.New("scheduler already running")

// Run schedules until ctx is cancelled (leadership lost, shutdown) and
// returns nil once everything it started has stopped. Each call starts from
// scratch — fresh informers, cache and queue — so a new term never trusts
// the previous one's assumptions; calls must not overlap.
func (s *Scheduler) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)

	ctx, cancel := context.WithCancel(ctx)
	client := s.cfg.Client
	factory := informers.NewSharedInformerFactory(client, s.cfg.ResyncPeriod)
	events := record.NewBroadcaster(record.WithContext(ctx))
	// Stop in reverse: cancelling ends the engine's work and the informers'
	// watches; Shutdown then waits for the informer goroutines.
	defer func() {
		cancel()
		factory.Shutdown()
		events.Shutdown()
	}()
	events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := events.NewRecorder(scheme.Scheme, v1.EventSource{Component: s.cfg.SchedulerName})

	eng, err := NewEngine(EngineConfig{
		Options:  s.cfg.Options,
		Binder:   apiBinder{client: client},
		Reporter: &apiReporter{client: client, recorder: recorder, log: s.log, now: s.cfg.Now},
		Logger:   s.cfg.Logger, // the engine adds component=scheduler itself
	})
	if err != nil {
		return err
	}

	podInformer := factory.Core().V1().Pods().Informer()
	// The scheduler never reads managedFields; dropping them roughly
	// halves what the pod cache holds.
	if err := podInformer.SetTransform(stripManagedFields); err != nil {
		return fmt.Errorf("scheduler: pod informer transform: %w", err)
	}
	podReg, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p, ok := obj.(*v1.Pod); ok {
				eng.AddPod(p)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*v1.Pod)
			n, ok2 := newObj.(*v1.Pod)
			if ok1 && ok2 {
				eng.UpdatePod(o, n)
			}
		},
		DeleteFunc: func(obj any) {
			if p := podFromTombstone(obj); p != nil {
				eng.DeletePod(p)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("scheduler: pod informer handler: %w", err)
	}
	nodeInformer := factory.Core().V1().Nodes().Informer()
	if err := nodeInformer.SetTransform(stripManagedFields); err != nil {
		return fmt.Errorf("scheduler: node informer transform: %w", err)
	}
	nodeReg, err := nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*v1.Node); ok {
				eng.AddNode(n)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*v1.Node)
			n, ok2 := newObj.(*v1.Node)
			if ok1 && ok2 {
				eng.UpdateNode(o, n)
			}
		},
		DeleteFunc: func(obj any) {
			if n := nodeFromTombstone(obj); n != nil {
				eng.DeleteNode(n)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("scheduler: node informer handler: %w", err)
	}

	factory.Start(ctx.Done())
	// Scheduling before every bound pod is in the cache would overcommit
	// nodes, so wait until both handlers have seen the initial lists.
	if !cache.WaitForCacheSync(ctx.Done(), podReg.HasSynced, nodeReg.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("scheduler: informers did not sync")
	}
	nodes, pods := eng.Cache().Counts()
	s.log.Info("scheduler caches synced", "nodes", nodes, "pods", pods, "pending", eng.Queue().Stats().Active)
	return eng.Run(ctx)
}

func stripManagedFields(obj any) (any, error) {
	if acc, err := meta.Accessor(obj); err == nil {
		acc.SetManagedFields(nil)
	}
	return obj, nil
}

// podFromTombstone unwraps the DeletedFinalStateUnknown an informer hands
// over when it missed the delete itself (a relist after a broken watch).
func podFromTombstone(obj any) *v1.Pod {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, _ := obj.(*v1.Pod)
	return p
}

func nodeFromTombstone(obj any) *v1.Node {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	n, _ := obj.(*v1.Node)
	return n
}

// apiBinder POSTs pods/<name>/binding. The binding carries the pod's UID so
// the API refuses it if the pod was replaced by a namesake meanwhile.
type apiBinder struct {
	client kubernetes.Interface
}

func (b apiBinder) Bind(ctx context.Context, pod *v1.Pod, nodeName string) error {
	ctx, cancel := context.WithTimeout(ctx, bindTimeout)
	defer cancel()
	binding := &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     v1.ObjectReference{Kind: "Node", Name: nodeName},
	}
	if err := b.client.CoreV1().Pods(pod.Namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("bind pod %s/%s to %s: %w", pod.Namespace, pod.Name, nodeName, err)
	}
	return nil
}

// apiReporter emits kube's scheduler events (Scheduled, FailedScheduling)
// through client-go's recorder, which aggregates repeats and rate-limits per
// object, and sets PodScheduled=False on pods that could not be placed.
// PodScheduled=True on success is the binding's job (the API sets it).
type apiReporter struct {
	client   kubernetes.Interface
	recorder record.EventRecorder
	log      *slog.Logger
	now      func() time.Time
}

func (r *apiReporter) Scheduled(_ context.Context, pod *v1.Pod, nodeName string) {
	r.recorder.Eventf(pod, v1.EventTypeNormal, "Scheduled", "Successfully assigned %s/%s to %s", pod.Namespace, pod.Name, nodeName)
}

func (r *apiReporter) Unschedulable(ctx context.Context, pod *v1.Pod, reason, message string) {
	r.recorder.Event(pod, v1.EventTypeWarning, "FailedScheduling", message)
	if err := r.setUnschedulable(ctx, pod, reason, message); err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		r.log.Warn("set PodScheduled condition", "pod", podKey(pod), "err", err)
	}
}

// setUnschedulable writes PodScheduled=False with reason and message, only
// if that is not already what the pod says, so a pod retried every few
// seconds does not turn into a stream of writes.
func (r *apiReporter) setUnschedulable(ctx context.Context, pod *v1.Pod, reason, message string) error {
	cur := pod
	first := true
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if !first {
			fresh, err := r.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if fresh.UID != pod.UID || fresh.Spec.NodeName != "" {
				return nil // replaced or bound meanwhile: nothing to say
			}
			cur = fresh
		}
		first = false
		updated := cur.DeepCopy()
		if !setPodScheduledFalse(&updated.Status, reason, message, metav1.NewTime(r.now())) {
			return nil
		}
		_, err := r.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
		return err
	})
}

// setPodScheduledFalse sets the PodScheduled condition to False and reports
// whether anything changed. The transition time moves only when the status
// does, as kube keeps it.
func setPodScheduledFalse(st *v1.PodStatus, reason, message string, now metav1.Time) bool {
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type != v1.PodScheduled {
			continue
		}
		if c.Status == v1.ConditionFalse && c.Reason == reason && c.Message == message {
			return false
		}
		if c.Status != v1.ConditionFalse {
			c.LastTransitionTime = now
		}
		c.Status, c.Reason, c.Message = v1.ConditionFalse, reason, message
		return true
	}
	st.Conditions = append(st.Conditions, v1.PodCondition{
		Type:               v1.PodScheduled,
		Status:             v1.ConditionFalse,
		Reason:             reason,
		Message:            message,
		LastTransitionTime: now,
	})
	return true
}
