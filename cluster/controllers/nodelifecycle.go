package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
)

// NodeHealth is the gossip view of the node agents, which the cluster
// package implements over its memberlist pool (agents join it with
// role=agent under their node name).
type NodeHealth interface {
	// Alive reports whether gossip sees the agent of nodeName alive, and
	// whether gossip knows that member at all. A dead member is
	// (false, true); a name gossip has never heard of, or a member that
	// left on purpose (an agent restarting), is (false, false) and gets
	// NodeUnknownGracePeriod.
	Alive(nodeName string) (alive, known bool)
	// Changes delivers a value whenever some member's status may have
	// changed. Sends must not block (a buffer of one is enough): the
	// controller re-reads every node on each value and every
	// NodeMonitorPeriod anyway, so a dropped value only delays it.
	Changes() <-chan struct{}
}

// Reasons and messages of the node lifecycle, as Kubernetes words them.
const (
	reasonNodeStatusUnknown = "NodeStatusUnknown"
	reasonNeverUpdated      = "NodeStatusNeverUpdated"
	msgNodeUnreachable      = "Node agent stopped gossiping."
	msgNodeNeverUpdated     = "Node agent never posted node status."
)

// nodeLifecycleController turns gossip health into Node state: an
// unreachable node's conditions become Unknown, it gets the
// node.kubernetes.io/unreachable:NoExecute taint and its pods are marked not
// ready; after PodEvictionTimeout (or a matching toleration's
// tolerationSeconds) its pods are deleted so their owners replace them
// elsewhere. A node that is reachable again loses the taint; its agent
// writes Ready=True itself.
//
// Evictions are rate-limited (NodeEvictionRate nodes per second) and stop
// altogether while more than half the nodes look unreachable: then the
// likelier story is that this leader is the one cut off.
//
// The time a node became unreachable is the taint's timeAdded, stored on
// the Node, so a new leader continues the countdown where the old one was.
type nodeLifecycleController struct {
	*base
	log        *slog.Logger
	rec        record.EventRecorder
	evictRec   record.EventRecorder
	health     NodeHealth
	nodeLister corelisters.NodeLister
	podIndexer cache.Indexer
	loop       *loop[string]
	limiter    flowcontrol.PassiveRateLimiter
	now        func() time.Time

	// disrupted: more than half the nodes are unreachable (evictions stop).
	disrupted atomic.Bool

	mu           sync.Mutex
	unknownSince map[string]time.Time // nodes gossip has never heard of, since when
	// taintedAt is when this controller tainted a node: exact, where the
	// taint's timeAdded is stored to the second.
	taintedAt map[string]time.Time
}

func newNodeLifecycleController(b *base) *nodeLifecycleController {
	c := &nodeLifecycleController{
		base:         b,
		log:          b.logger(NodeLifecycle),
		rec:          b.recorder("node-controller"),
		evictRec:     b.recorder("taint-eviction-controller"),
		health:       b.cfg.NodeHealth,
		limiter:      flowcontrol.NewTokenBucketPassiveRateLimiter(float32(b.cfg.NodeEvictionRate), 1),
		now:          time.Now,
		unknownSince: map[string]time.Time{},
		taintedAt:    map[string]time.Time{},
	}
	c.loop = newLoop(NodeLifecycle, c.log, c.sync)
	nodeInf := b.factory.Core().V1().Nodes().Informer()
	c.nodeLister = corelisters.NewNodeLister(nodeInf.GetIndexer())
	c.podIndexer = b.podInformer().GetIndexer()
	nodeInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
		DeleteFunc: c.loop.enqueueObj,
	})
	return c
}

func (c *nodeLifecycleController) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.monitor(ctx)
	}()
	c.loop.run(ctx, c.cfg.Workers)
	wg.Wait()
}

// monitor re-reads every node's health on each gossip change and every
// NodeMonitorPeriod, keeps the disruption verdict, and enqueues the nodes
// whose health changed (all unreachable ones when evictions resume).
func (c *nodeLifecycleController) monitor(ctx context.Context) {
	t := time.NewTicker(c.cfg.NodeMonitorPeriod)
	defer t.Stop()
	last := map[string]bool{}
	for {
		nodes, _ := c.nodeLister.List(labels.Everything())
		now := c.now()
		unhealthy := 0
		seen := make(map[string]bool, len(nodes))
		var changed []string
		for _, n := range nodes {
			seen[n.Name] = true
			ok := c.healthy(n.Name, now)
			if !ok {
				unhealthy++
			}
			if prev, known := last[n.Name]; !known || prev != ok {
				changed = append(changed, n.Name)
			}
			last[n.Name] = ok
		}
		for name := range last {
			if !seen[name] {
				delete(last, name)
			}
		}
		disrupted := len(nodes) > 0 && unhealthy*2 > len(nodes)
		if was := c.disrupted.Swap(disrupted); was != disrupted {
			if disrupted {
				c.log.Warn("more than half the nodes are unreachable; evictions stop", "unreachable", unhealthy, "nodes", len(nodes))
			} else {
				c.log.Info("node disruption over; evictions resume", "unreachable", unhealthy, "nodes", len(nodes))
				for name, ok := range last {
					if !ok {
						changed = append(changed, name)
					}
				}
			}
		}
		for _, name := range changed {
			c.loop.add(name)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.health.Changes():
		}
	}
}

// healthy is the gossip verdict on a node; a node gossip does not know is
// given NodeUnknownGracePeriod (an agent registers its Node before it joins).
func (c *nodeLifecycleController) healthy(name string, now time.Time) bool {
	alive, known := c.health.Alive(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	if known {
		delete(c.unknownSince, name)
		return alive
	}
	since, ok := c.unknownSince[name]
	if !ok {
		c.unknownSince[name] = now
		since = now
	}
	return now.Sub(since) < c.cfg.NodeUnknownGracePeriod
}

func unreachableTaint(n *corev1.Node) *corev1.Taint {
	for i := range n.Spec.Taints {
		t := &n.Spec.Taints[i]
		if t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute {
			return t
		}
	}
	return nil
}

func (c *nodeLifecycleController) sync(ctx context.Context, name string) error {
	node, err := c.nodeLister.Get(name)
	if apierrors.IsNotFound(err) {
		c.mu.Lock()
		delete(c.unknownSince, name)
		delete(c.taintedAt, name)
		c.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	now := c.now()
	if c.healthy(name, now) {
		return c.untaint(ctx, node)
	}
	node, err = c.markUnreachable(ctx, node, now)
	if err != nil {
		return err
	}
	if err := c.markPodsNotReady(ctx, name); err != nil {
		return err
	}
	taint := unreachableTaint(node)
	if taint == nil {
		node, err = c.taint(ctx, node, now)
		if err != nil {
			return err
		}
		taint = unreachableTaint(node)
	}
	since := now
	if taint != nil && taint.TimeAdded != nil {
		// Written by this leader or an earlier one: the countdown goes on.
		since = taint.TimeAdded.Time
	}
	c.mu.Lock()
	if at, ok := c.taintedAt[name]; ok && !at.Before(since) && at.Sub(since) < time.Second {
		since = at
	}
	c.mu.Unlock()
	return c.evict(ctx, name, since, now)
}

// markUnreachable sets every node condition to Unknown (Ready first of all).
func (c *nodeLifecycleController) markUnreachable(ctx context.Context, node *corev1.Node, now time.Time) (*corev1.Node, error) {
	cp := node.DeepCopy()
	changed := false
	hasReady := false
	for i := range cp.Status.Conditions {
		cond := &cp.Status.Conditions[i]
		if cond.Type == corev1.NodeReady {
			hasReady = true
		}
		if cond.Status == corev1.ConditionUnknown {
			continue
		}
		cond.Status = corev1.ConditionUnknown
		cond.Reason = reasonNodeStatusUnknown
		cond.Message = msgNodeUnreachable
		cond.LastTransitionTime = metav1.NewTime(now)
		changed = true
	}
	if !hasReady {
		cp.Status.Conditions = append(cp.Status.Conditions, corev1.NodeCondition{
			Type: corev1.NodeReady, Status: corev1.ConditionUnknown, Reason: reasonNeverUpdated, Message: msgNodeNeverUpdated,
			LastHeartbeatTime: cp.CreationTimestamp, LastTransitionTime: metav1.NewTime(now),
		})
		changed = true
	}
	if !changed {
		return node, nil
	}
	out, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, cp, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("mark node %s unreachable: %w", node.Name, err)
	}
	c.log.Warn("node unreachable", "node", node.Name)
	c.rec.Eventf(node, corev1.EventTypeNormal, "NodeNotReady", "Node %s status is now: NodeNotReady", node.Name)
	return out, nil
}

func (c *nodeLifecycleController) taint(ctx context.Context, node *corev1.Node, now time.Time) (*corev1.Node, error) {
	cp := node.DeepCopy()
	added := metav1.NewTime(now)
	cp.Spec.Taints = append(cp.Spec.Taints, corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute, TimeAdded: &added})
	out, err := c.client.CoreV1().Nodes().Update(ctx, cp, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("taint node %s unreachable: %w", node.Name, err)
	}
	c.mu.Lock()
	c.taintedAt[node.Name] = now
	c.mu.Unlock()
	return out, nil
}

func (c *nodeLifecycleController) untaint(ctx context.Context, node *corev1.Node) error {
	c.mu.Lock()
	delete(c.taintedAt, node.Name)
	c.mu.Unlock()
	if unreachableTaint(node) == nil {
		return nil
	}
	cp := node.DeepCopy()
	var keep []corev1.Taint
	for _, t := range cp.Spec.Taints {
		if !(t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute) {
			keep = append(keep, t)
		}
	}
	cp.Spec.Taints = keep
	if _, err := c.client.CoreV1().Nodes().Update(ctx, cp, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("untaint node %s: %w", node.Name, err)
	}
	c.log.Info("node reachable again; taint removed", "node", node.Name)
	return nil
}

func (c *nodeLifecycleController) podsOn(node string) []*corev1.Pod {
	objs, _ := c.podIndexer.ByIndex(indexNodeName, node)
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.(*corev1.Pod))
	}
	return out
}

// markPodsNotReady takes the pods of an unreachable node out of Service
// endpoints until they are evicted or the agent reports again.
func (c *nodeLifecycleController) markPodsNotReady(ctx context.Context, node string) error {
	var errs []error
	for _, p := range c.podsOn(node) {
		if !isPodReady(p) || isTerminated(p) {
			continue
		}
		cp := p.DeepCopy()
		cond := podCondition(cp, corev1.PodReady)
		cond.Status = corev1.ConditionFalse
		cond.LastTransitionTime = metav1.NewTime(c.now())
		_, err := c.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("mark pod %s/%s not ready: %w", p.Namespace, p.Name, err))
		}
	}
	return errors.Join(errs...)
}

// toleratesUnreachable reports whether a pod tolerates the unreachable
// NoExecute taint, and for how long (nil = forever).
func toleratesUnreachable(p *corev1.Pod) (bool, *int64) {
	for _, t := range p.Spec.Tolerations {
		if t.Effect != "" && t.Effect != corev1.TaintEffectNoExecute {
			continue
		}
		switch {
		case t.Key == "" && t.Operator == corev1.TolerationOpExists:
		case t.Key == corev1.TaintNodeUnreachable && (t.Operator == corev1.TolerationOpExists || t.Value == ""):
		default:
			continue
		}
		return true, t.TolerationSeconds
	}
	return false, nil
}

// evict deletes the pods of an unreachable node whose time is up and
// schedules the next check for the others.
func (c *nodeLifecycleController) evict(ctx context.Context, node string, since, now time.Time) error {
	if c.disrupted.Load() {
		// The monitor enqueues the node again when the disruption ends.
		return nil
	}
	var due []*corev1.Pod
	var next time.Time
	for _, p := range c.podsOn(node) {
		if p.DeletionTimestamp != nil || isTerminated(p) {
			continue
		}
		wait := c.cfg.PodEvictionTimeout
		if ok, secs := toleratesUnreachable(p); ok {
			if secs == nil {
				continue
			}
			wait = time.Duration(max(*secs, 0)) * time.Second
		}
		at := since.Add(wait)
		if !at.After(now) {
			due = append(due, p)
		} else if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if len(due) > 0 {
		if !c.limiter.TryAccept() {
			c.loop.queue.AddAfter(node, 100*time.Millisecond)
			return nil
		}
		var errs []error
		for _, p := range due {
			err := c.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: metav1.NewUIDPreconditions(string(p.UID))})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				errs = append(errs, fmt.Errorf("evict pod %s/%s: %w", p.Namespace, p.Name, err))
				continue
			}
			c.evictRec.Eventf(p, corev1.EventTypeNormal, "TaintManagerEviction", "Marking for deletion Pod %s/%s", p.Namespace, p.Name)
		}
		c.log.Info("evicted pods of unreachable node", "node", node, "pods", len(due))
		if err := errors.Join(errs...); err != nil {
			return err
		}
	}
	if !next.IsZero() {
		c.loop.queue.AddAfter(node, next.Sub(now)+10*time.Millisecond)
	}
	return nil
}
