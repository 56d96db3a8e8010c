package controllers

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// podGCController deletes pods nothing else will: finished pods beyond
// TerminatedPodGCThreshold (oldest first), pods bound to nodes that no
// longer exist (their agent will never finish them), and pods being
// deleted that were never scheduled.
//
// Unlike the other controllers it is a periodic scan of the informer
// caches, not a work queue: what it looks for is an absence (a node that is
// gone) or a count over all pods, which no single event announces.
type podGCController struct {
	*base
	log        *slog.Logger
	podLister  corelisters.PodLister
	nodeLister corelisters.NodeLister
	// suspects are the pods the previous scan found on missing nodes; a pod
	// is deleted when the next scan finds it so again and a live read
	// confirms the node is gone (an informer may lag behind a new node).
	suspects map[types.UID]bool
}

// podGCParallelism bounds concurrent deletions of one scan.
const podGCParallelism = 8

func newPodGCController(b *base) *podGCController {
	c := &podGCController{base: b, log: b.logger(PodGC), suspects: map[types.UID]bool{}}
	c.podLister = corelisters.NewPodLister(b.podInformer().GetIndexer())
	c.nodeLister = corelisters.NewNodeLister(b.factory.Core().V1().Nodes().Informer().GetIndexer())
	return c
}

func (c *podGCController) run(ctx context.Context) {
	t := time.NewTicker(c.cfg.PodGCPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.scan(ctx)
		}
	}
}

func (c *podGCController) scan(ctx context.Context) {
	pods, err := c.podLister.List(labels.Everything())
	if err != nil {
		return
	}
	var doomed []*corev1.Pod
	doomed = append(doomed, c.terminatedOverThreshold(pods)...)
	doomed = append(doomed, c.orphaned(ctx, pods)...)
	for _, p := range pods {
		if p.DeletionTimestamp != nil && p.Spec.NodeName == "" {
			doomed = append(doomed, p)
		}
	}
	c.deleteAll(ctx, doomed)
}

func isTerminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// terminatedOverThreshold: the oldest finished pods beyond the threshold.
func (c *podGCController) terminatedOverThreshold(pods []*corev1.Pod) []*corev1.Pod {
	limit := c.cfg.TerminatedPodGCThreshold
	if limit < 0 {
		return nil
	}
	var done []*corev1.Pod
	for _, p := range pods {
		if isTerminated(p) && p.DeletionTimestamp == nil {
			done = append(done, p)
		}
	}
	if len(done) <= limit {
		return nil
	}
	sort.Slice(done, func(i, j int) bool {
		a, b := done[i], done[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	c.log.Info("deleting finished pods over the threshold", "finished", len(done), "threshold", limit)
	return done[:len(done)-limit]
}

// orphaned: pods bound to a node that has been missing for two scans and
// is confirmed missing by a live read.
func (c *podGCController) orphaned(ctx context.Context, pods []*corev1.Pod) []*corev1.Pod {
	next := map[types.UID]bool{}
	var out []*corev1.Pod
	checked := map[string]bool{} // node → confirmed gone
	for _, p := range pods {
		if p.Spec.NodeName == "" {
			continue
		}
		if _, err := c.nodeLister.Get(p.Spec.NodeName); err == nil {
			continue
		}
		if !c.suspects[p.UID] {
			next[p.UID] = true
			continue
		}
		gone, ok := checked[p.Spec.NodeName]
		if !ok {
			_, err := c.client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
			gone = apierrors.IsNotFound(err)
			checked[p.Spec.NodeName] = gone
		}
		if gone {
			out = append(out, p)
		}
	}
	c.suspects = next
	if len(out) > 0 {
		c.log.Info("deleting pods of missing nodes", "pods", len(out))
	}
	return out
}

// deleteAll force-deletes (grace 0) the pods, a few at a time.
func (c *podGCController) deleteAll(ctx context.Context, pods []*corev1.Pod) {
	sem := make(chan struct{}, podGCParallelism)
	var wg sync.WaitGroup
	zero := int64(0)
	for _, p := range pods {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := c.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero, Preconditions: metav1.NewUIDPreconditions(string(p.UID))})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
				c.log.Warn("delete pod", "pod", p.Namespace+"/"+p.Name, "err", err)
			}
		}()
	}
	wg.Wait()
}
