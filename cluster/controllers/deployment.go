package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

var deploymentKind = appsv1.SchemeGroupVersion.WithKind("Deployment")

// deploymentController rolls Deployments out through ReplicaSets, one per
// pod template (named <deployment>-<template hash>), and keeps the
// Deployment's status the way kubectl rollout status reads it.
type deploymentController struct {
	*base
	log        *slog.Logger
	rec        record.EventRecorder
	dLister    appslisters.DeploymentLister
	rsLister   appslisters.ReplicaSetLister
	rsIndexer  cache.Indexer
	podIndexer cache.Indexer
	loop       *loop[string]
	now        func() time.Time
}

func newDeploymentController(b *base) *deploymentController {
	c := &deploymentController{
		base: b,
		log:  b.logger(Deployment),
		rec:  b.recorder("deployment-controller"),
		now:  time.Now,
	}
	c.loop = newLoop(Deployment, c.log, c.sync)
	dInf := b.factory.Apps().V1().Deployments().Informer()
	rsInf := b.replicaSetInformer()
	podInf := b.podInformer()
	c.dLister = appslisters.NewDeploymentLister(dInf.GetIndexer())
	c.rsLister = appslisters.NewReplicaSetLister(rsInf.GetIndexer())
	c.rsIndexer = rsInf.GetIndexer()
	c.podIndexer = podInf.GetIndexer()
	dInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
		DeleteFunc: c.loop.enqueueObj,
	})
	rsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addReplicaSet,
		UpdateFunc: c.updateReplicaSet,
		DeleteFunc: c.deleteReplicaSet,
	})
	// Recreate waits for the old pods to be gone, which only a pod
	// deletion tells.
	podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{DeleteFunc: c.deletePod})
	return c
}

func (c *deploymentController) run(ctx context.Context) { c.loop.run(ctx, c.cfg.Workers) }

func dKey(d *appsv1.Deployment) string { return d.Namespace + "/" + d.Name }

func (c *deploymentController) resolve(ns string, ref *metav1.OwnerReference) *appsv1.Deployment {
	if ref == nil || ref.Kind != deploymentKind.Kind {
		return nil
	}
	d, err := c.dLister.Deployments(ns).Get(ref.Name)
	if err != nil || d.UID != ref.UID {
		return nil
	}
	return d
}

// selecting returns the Deployments whose selector matches an orphan ReplicaSet.
func (c *deploymentController) selecting(rs *appsv1.ReplicaSet) []*appsv1.Deployment {
	list, err := c.dLister.Deployments(rs.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	return matchingSelectors(list, func(d *appsv1.Deployment) *metav1.LabelSelector { return d.Spec.Selector }, rs.Labels)
}

func (c *deploymentController) addReplicaSet(obj any) {
	rs := obj.(*appsv1.ReplicaSet)
	if rs.DeletionTimestamp != nil {
		c.deleteReplicaSet(rs)
		return
	}
	if ref := metav1.GetControllerOfNoCopy(rs); ref != nil {
		if d := c.resolve(rs.Namespace, ref); d != nil {
			c.loop.add(dKey(d))
		}
		return
	}
	for _, d := range c.selecting(rs) {
		c.loop.add(dKey(d))
	}
}

func (c *deploymentController) updateReplicaSet(oldObj, curObj any) {
	old, cur := oldObj.(*appsv1.ReplicaSet), curObj.(*appsv1.ReplicaSet)
	if old.ResourceVersion == cur.ResourceVersion {
		return
	}
	oldRef, curRef := metav1.GetControllerOfNoCopy(old), metav1.GetControllerOfNoCopy(cur)
	refChanged := !reflect.DeepEqual(oldRef, curRef)
	if refChanged && oldRef != nil {
		if d := c.resolve(old.Namespace, oldRef); d != nil {
			c.loop.add(dKey(d))
		}
	}
	if curRef != nil {
		if d := c.resolve(cur.Namespace, curRef); d != nil {
			c.loop.add(dKey(d))
		}
		return
	}
	if refChanged || !reflect.DeepEqual(old.Labels, cur.Labels) {
		for _, d := range c.selecting(cur) {
			c.loop.add(dKey(d))
		}
	}
}

func (c *deploymentController) deleteReplicaSet(obj any) {
	rs, ok := tombstone(obj).(*appsv1.ReplicaSet)
	if !ok {
		return
	}
	if d := c.resolve(rs.Namespace, metav1.GetControllerOfNoCopy(rs)); d != nil {
		c.loop.add(dKey(d))
	}
}

func (c *deploymentController) deletePod(obj any) {
	pod, ok := tombstone(obj).(*corev1.Pod)
	if !ok {
		return
	}
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil || ref.Kind != replicaSetKind.Kind {
		return
	}
	rs, err := c.rsLister.ReplicaSets(pod.Namespace).Get(ref.Name)
	if err != nil || rs.UID != ref.UID {
		return
	}
	if d := c.resolve(rs.Namespace, metav1.GetControllerOfNoCopy(rs)); d != nil && d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		c.loop.add(dKey(d))
	}
}

func (c *deploymentController) sync(ctx context.Context, key string) error {
	err := c.syncDeployment(ctx, key)
	if errors.Is(err, errSpecChanged) {
		// The update event of the new spec has queued the key again.
		return nil
	}
	return err
}

func (c *deploymentController) syncDeployment(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	cached, err := c.dLister.Deployments(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	d := cached.DeepCopy()
	// The API defaults these; guard the arithmetic below anyway.
	if d.Spec.Replicas == nil {
		one := int32(1)
		d.Spec.Replicas = &one
	}
	if d.Spec.Strategy.Type == "" {
		d.Spec.Strategy.Type = appsv1.RollingUpdateDeploymentStrategyType
	}
	selector, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || selector.Empty() {
		c.rec.Eventf(d, corev1.EventTypeWarning, "SelectingAll", "This deployment is selecting all pods. A non-empty selector is required.")
		return nil
	}
	rsList, err := c.claimReplicaSets(ctx, d, selector)
	if err != nil {
		return err
	}
	if d.DeletionTimestamp == nil {
		if err := c.checkPausedConditions(ctx, d); err != nil {
			return err
		}
	}
	// Once per sync: the cached ReplicaSets are not updated by our writes.
	newRS, old, err := c.replicaSetsAndSyncRevision(ctx, d, rsList, false)
	if err != nil {
		return err
	}
	switch {
	case d.DeletionTimestamp != nil:
		return c.syncDeploymentStatus(ctx, d, withNew(old, newRS), newRS)
	case d.Spec.Paused || isScalingEvent(d, newRS, old):
		return c.syncScale(ctx, d, newRS, old)
	case d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType:
		return c.rolloutRecreate(ctx, d, rsList, newRS, old)
	default:
		return c.rolloutRolling(ctx, d, rsList, newRS, old)
	}
}

// claimReplicaSets returns the ReplicaSets the deployment controls, after
// adopting matching orphans and releasing those that stopped matching.
func (c *deploymentController) claimReplicaSets(ctx context.Context, d *appsv1.Deployment, selector labels.Selector) ([]*appsv1.ReplicaSet, error) {
	cl := &claimer{
		owner: d, gvk: deploymentKind, selector: selector,
		live: func(ctx context.Context) (metav1.Object, error) {
			return c.client.AppsV1().Deployments(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
		},
		patch: func(ctx context.Context, ns, name string, data []byte) error {
			_, err := c.client.AppsV1().ReplicaSets(ns).Patch(ctx, name, strategicPatch, data, metav1.PatchOptions{})
			return err
		},
	}
	owned, _ := c.rsIndexer.ByIndex(indexOwnerUID, string(d.UID))
	orphans, _ := c.rsIndexer.ByIndex(indexOrphan, d.Namespace)
	seen := map[string]bool{}
	var out []*appsv1.ReplicaSet
	for _, list := range [][]any{owned, orphans} {
		for _, o := range list {
			rs := o.(*appsv1.ReplicaSet)
			if seen[rs.Name] || rs.Namespace != d.Namespace {
				continue
			}
			seen[rs.Name] = true
			ok, err := cl.claim(ctx, rs)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			if rs.Spec.Replicas == nil {
				rs = rs.DeepCopy()
				one := int32(1)
				rs.Spec.Replicas = &one
			}
			out = append(out, rs)
		}
	}
	return out, nil
}

// checkPausedConditions keeps the Progressing condition's pause reasons: a
// paused deployment says DeploymentPaused, a resumed one DeploymentResumed
// (and its progress deadline starts over).
func (c *deploymentController) checkPausedConditions(ctx context.Context, d *appsv1.Deployment) error {
	if !hasProgressDeadline(d) {
		return nil
	}
	cond := getDeploymentCondition(d.Status, appsv1.DeploymentProgressing)
	if cond != nil && cond.Reason == reasonTimedOut {
		return nil
	}
	pausedSet := cond != nil && cond.Reason == reasonPaused
	var next *appsv1.DeploymentCondition
	switch {
	case d.Spec.Paused && !pausedSet:
		next = newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionUnknown, reasonPaused, "Deployment is paused", c.now())
	case !d.Spec.Paused && pausedSet:
		next = newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionUnknown, reasonResumed, "Deployment is resumed", c.now())
	default:
		return nil
	}
	setDeploymentCondition(&d.Status, *next)
	return c.writeStatus(ctx, d)
}

// writeStatus writes d.Status, and refreshes d from the answer.
func (c *deploymentController) writeStatus(ctx context.Context, d *appsv1.Deployment) error {
	out, err := c.client.AppsV1().Deployments(d.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update status of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	*d = *out
	return nil
}

// replicaSetsAndSyncRevision splits the deployment's ReplicaSets into the
// new one (the template's; created when create is true and missing) and the
// old ones, and makes the new one carry the next revision.
func (c *deploymentController) replicaSetsAndSyncRevision(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet, create bool) (*appsv1.ReplicaSet, []*appsv1.ReplicaSet, error) {
	existing := findNewReplicaSet(d, rsList)
	var old []*appsv1.ReplicaSet
	for _, rs := range rsList {
		if existing == nil || rs.UID != existing.UID {
			old = append(old, rs)
		}
	}
	newRS, err := c.newReplicaSet(ctx, d, existing, old, create)
	if err != nil {
		return nil, nil, err
	}
	return newRS, old, nil
}

// newReplicaSet brings the existing new ReplicaSet's revision and
// annotations up to date, or creates it.
func (c *deploymentController) newReplicaSet(ctx context.Context, d *appsv1.Deployment, existing *appsv1.ReplicaSet, old []*appsv1.ReplicaSet, create bool) (*appsv1.ReplicaSet, error) {
	newRevision := fmt.Sprint(maxRevision(old) + 1)
	if existing != nil {
		rs := existing.DeepCopy()
		changed := setNewReplicaSetAnnotations(d, rs, newRevision, true)
		if changed || rs.Spec.MinReadySeconds != d.Spec.MinReadySeconds {
			rs.Spec.MinReadySeconds = d.Spec.MinReadySeconds
			out, err := c.client.AppsV1().ReplicaSets(rs.Namespace).Update(ctx, rs, metav1.UpdateOptions{})
			if err != nil {
				return nil, fmt.Errorf("update replicaset %s: %w", rs.Name, err)
			}
			rs = out
		}
		if err := c.setDeploymentRevision(ctx, d, rs.Annotations[annRevision]); err != nil {
			return nil, err
		}
		if hasProgressDeadline(d) && getDeploymentCondition(d.Status, appsv1.DeploymentProgressing) == nil {
			msg := fmt.Sprintf("Found new replica set %q", rs.Name)
			setDeploymentCondition(&d.Status, *newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonFoundNewRS, msg, c.now()))
			if err := c.writeStatus(ctx, d); err != nil {
				return nil, err
			}
		}
		return rs, nil
	}
	if !create {
		return nil, nil
	}

	hash := templateHash(&d.Spec.Template, d.Status.CollisionCount)
	tmpl := *d.Spec.Template.DeepCopy()
	tmpl.Labels = copyMap(tmpl.Labels)
	if tmpl.Labels == nil {
		tmpl.Labels = map[string]string{}
	}
	tmpl.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
	sel := d.Spec.Selector.DeepCopy()
	if sel.MatchLabels == nil {
		sel.MatchLabels = map[string]string{}
	}
	sel.MatchLabels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
	zero := int32(0)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Name:            d.Name + "-" + hash,
			Namespace:       d.Namespace,
			Labels:          tmpl.Labels,
			OwnerReferences: []metav1.OwnerReference{controllerRef(d, deploymentKind)},
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas:        &zero,
			MinReadySeconds: d.Spec.MinReadySeconds,
			Selector:        sel,
			Template:        tmpl,
		},
	}
	replicas := newRSReplicas(d, append(append([]*appsv1.ReplicaSet(nil), old...), rs), rs)
	rs.Spec.Replicas = &replicas
	setNewReplicaSetAnnotations(d, rs, newRevision, false)

	created, err := c.client.AppsV1().ReplicaSets(d.Namespace).Create(ctx, rs, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		// Our cache is behind, or another template hashes the same.
		live, gerr := c.client.AppsV1().ReplicaSets(d.Namespace).Get(ctx, rs.Name, metav1.GetOptions{})
		if gerr != nil {
			return nil, gerr
		}
		if metav1.IsControlledBy(live, d) && equalIgnoreHash(&live.Spec.Template, &d.Spec.Template) {
			return live, nil
		}
		// A hash collision: bump collisionCount so the next name differs.
		n := int32(0)
		if d.Status.CollisionCount != nil {
			n = *d.Status.CollisionCount
		}
		n++
		d.Status.CollisionCount = &n
		if err := c.writeStatus(ctx, d); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("replicaset name %s collides; collisionCount now %d", rs.Name, n)
	case err != nil:
		msg := fmt.Sprintf("Failed to create new replica set %q: %v", rs.Name, err)
		if hasProgressDeadline(d) {
			setDeploymentCondition(&d.Status, *newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionFalse, reasonRSCreateError, msg, c.now()))
			_ = c.writeStatus(ctx, d)
		}
		c.rec.Eventf(d, corev1.EventTypeWarning, reasonRSCreateError, "%s", msg)
		return nil, err
	}
	if replicas > 0 {
		c.rec.Eventf(d, corev1.EventTypeNormal, "ScalingReplicaSet", "Scaled up replica set %s from 0 to %d", created.Name, replicas)
	}
	if err := c.setDeploymentRevision(ctx, d, newRevision); err != nil {
		return nil, err
	}
	if hasProgressDeadline(d) {
		msg := fmt.Sprintf("Created new replica set %q", created.Name)
		setDeploymentCondition(&d.Status, *newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonNewRSCreated, msg, c.now()))
		if err := c.writeStatus(ctx, d); err != nil {
			return nil, err
		}
	}
	return created, nil
}

// setDeploymentRevision writes the revision annotation on the deployment.
// The status subresource keeps only status, so this is a metadata patch.
func (c *deploymentController) setDeploymentRevision(ctx context.Context, d *appsv1.Deployment, revision string) error {
	if revision == "" || d.Annotations[annRevision] == revision {
		return nil
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%q}}}`, annRevision, revision)
	out, err := c.client.AppsV1().Deployments(d.Namespace).Patch(ctx, d.Name, mergePatch, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("set revision of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	if out.Generation != d.Generation {
		// The spec moved on meanwhile: start over from the new one.
		return errSpecChanged
	}
	d.Annotations = out.Annotations
	d.ResourceVersion = out.ResourceVersion
	return nil
}

var errSpecChanged = errors.New("deployment spec changed during sync")

// scaleReplicaSet sets a ReplicaSet's replicas and its desired/max replica
// annotations, recording a ScalingReplicaSet event when the size changes.
func (c *deploymentController) scaleReplicaSet(ctx context.Context, rs *appsv1.ReplicaSet, size int32, d *appsv1.Deployment) (bool, *appsv1.ReplicaSet, error) {
	cur := *rs.Spec.Replicas
	cp := rs.DeepCopy()
	annChanged := setReplicasAnnotations(cp, *d.Spec.Replicas, *d.Spec.Replicas+maxSurge(d))
	if cur == size && !annChanged {
		return false, rs, nil
	}
	cp.Spec.Replicas = &size
	out, err := c.client.AppsV1().ReplicaSets(cp.Namespace).Update(ctx, cp, metav1.UpdateOptions{})
	if err != nil {
		return false, nil, fmt.Errorf("scale replicaset %s to %d: %w", rs.Name, size, err)
	}
	if cur != size {
		dir := "up"
		if size < cur {
			dir = "down"
		}
		c.rec.Eventf(d, corev1.EventTypeNormal, "ScalingReplicaSet", "Scaled %s replica set %s from %d to %d", dir, rs.Name, cur, size)
	}
	return cur != size, out, nil
}

// syncScale is the sync of a paused deployment or of a scaling event: no
// rollout progress, only sizes.
func (c *deploymentController) syncScale(ctx context.Context, d *appsv1.Deployment, newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) error {
	if err := c.scale(ctx, d, newRS, old); err != nil {
		return err
	}
	if d.Spec.Paused {
		if err := c.cleanup(ctx, d, old); err != nil {
			return err
		}
	}
	return c.syncDeploymentStatus(ctx, d, withNew(old, newRS), newRS)
}

func withNew(old []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) []*appsv1.ReplicaSet {
	all := append([]*appsv1.ReplicaSet(nil), old...)
	if newRS != nil {
		all = append(all, newRS)
	}
	return all
}

// syncDeploymentStatus writes the computed status if it changed.
func (c *deploymentController) syncDeploymentStatus(ctx context.Context, d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) error {
	st := c.calculateStatus(d, all, newRS)
	if apiequality.Semantic.DeepEqual(d.Status, st) {
		return nil
	}
	d.Status = st
	return c.writeStatus(ctx, d)
}

// scale sizes the ReplicaSets to spec.replicas: the only active one takes
// it all; with a saturated new one the old go to zero; otherwise (a scale
// during a rolling update) every active one grows or shrinks in proportion.
func (c *deploymentController) scale(ctx context.Context, d *appsv1.Deployment, newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) error {
	want := *d.Spec.Replicas
	if rs := activeOrLatest(newRS, old); rs != nil {
		// Also when the size is right already: the replica annotations
		// must catch up, or every sync would look like a scaling event.
		_, _, err := c.scaleReplicaSet(ctx, rs, want, d)
		return err
	}
	if isSaturated(d, newRS) {
		for _, rs := range activeReplicaSets(old) {
			if _, _, err := c.scaleReplicaSet(ctx, rs, 0, d); err != nil {
				return err
			}
		}
		return nil
	}
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		return nil
	}
	active := activeReplicaSets(withNew(old, newRS))
	allowed := want
	if want > 0 {
		allowed = want + maxSurge(d)
	}
	toAdd := allowed - totalReplicas(active)
	if toAdd == 0 {
		return nil
	}
	// Grow the biggest (newest on ties) first, shrink the smallest (oldest)
	// first, so rounding leftovers land where they hurt least.
	if toAdd > 0 {
		sort.SliceStable(active, func(i, j int) bool { return bySizeNewer(active[i], active[j]) })
	} else {
		sort.SliceStable(active, func(i, j int) bool { return bySizeOlder(active[i], active[j]) })
	}
	sizes := make([]int32, len(active))
	added := int32(0)
	for i, rs := range active {
		p := proportion(rs, d, toAdd, added)
		sizes[i] = *rs.Spec.Replicas + p
		added += p
	}
	if left := toAdd - added; left != 0 && len(active) > 0 {
		sizes[0] += left
	}
	for i, rs := range active {
		if sizes[i] < 0 {
			sizes[i] = 0
		}
		if _, _, err := c.scaleReplicaSet(ctx, rs, sizes[i], d); err != nil {
			return err
		}
	}
	return nil
}

// cleanup deletes the oldest unused ReplicaSets beyond revisionHistoryLimit.
func (c *deploymentController) cleanup(ctx context.Context, d *appsv1.Deployment, old []*appsv1.ReplicaSet) error {
	if d.Spec.RevisionHistoryLimit == nil {
		return nil
	}
	var cleanable []*appsv1.ReplicaSet
	for _, rs := range old {
		if rs.DeletionTimestamp == nil {
			cleanable = append(cleanable, rs)
		}
	}
	diff := len(cleanable) - int(*d.Spec.RevisionHistoryLimit)
	if diff <= 0 {
		return nil
	}
	sort.SliceStable(cleanable, func(i, j int) bool {
		ri, rj := revisionOf(cleanable[i]), revisionOf(cleanable[j])
		if ri != rj {
			return ri < rj
		}
		return cleanable[i].CreationTimestamp.Before(&cleanable[j].CreationTimestamp)
	})
	for _, rs := range cleanable[:diff] {
		if rs.Status.Replicas != 0 || *rs.Spec.Replicas != 0 || rs.Generation > rs.Status.ObservedGeneration {
			continue
		}
		err := c.client.AppsV1().ReplicaSets(rs.Namespace).Delete(ctx, rs.Name, metav1.DeleteOptions{Preconditions: metav1.NewUIDPreconditions(string(rs.UID))})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete old replicaset %s: %w", rs.Name, err)
		}
	}
	return nil
}

// rolloutRolling moves one step of a rolling update: scale the new
// ReplicaSet up within maxSurge, else the old ones down within
// maxUnavailable, then write the status.
func (c *deploymentController) rolloutRolling(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) error {
	var err error
	if newRS == nil {
		if newRS, old, err = c.replicaSetsAndSyncRevision(ctx, d, rsList, true); err != nil {
			return err
		}
	}
	all := withNew(old, newRS)
	scaledUp, err := c.reconcileNewReplicaSet(ctx, d, all, newRS)
	if err != nil {
		return err
	}
	if scaledUp {
		return c.syncRolloutStatus(ctx, d, all, newRS)
	}
	scaledDown, err := c.reconcileOldReplicaSets(ctx, d, all, activeReplicaSets(old), newRS)
	if err != nil {
		return err
	}
	if scaledDown {
		return c.syncRolloutStatus(ctx, d, all, newRS)
	}
	if deploymentComplete(d, c.calculateStatus(d, all, newRS)) {
		if err := c.cleanup(ctx, d, old); err != nil {
			return err
		}
	}
	return c.syncRolloutStatus(ctx, d, all, newRS)
}

func (c *deploymentController) reconcileNewReplicaSet(ctx context.Context, d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) (bool, error) {
	want := *d.Spec.Replicas
	if *newRS.Spec.Replicas == want {
		return false, nil
	}
	size := want
	if *newRS.Spec.Replicas < want {
		size = newRSReplicas(d, all, newRS)
	}
	scaled, out, err := c.scaleReplicaSet(ctx, newRS, size, d)
	if err == nil {
		*newRS = *out
	}
	return scaled, err
}

// availableOf is a ReplicaSet's available replicas as far as a scale-down
// may count on them: no more than spec.replicas, because a status written
// before the last scale-down still counts pods being deleted (Kubernetes
// counts them, and can briefly dip below minAvailable).
func availableOf(rs *appsv1.ReplicaSet) int32 {
	return min(rs.Status.AvailableReplicas, *rs.Spec.Replicas)
}

// reconcileOldReplicaSets scales old ReplicaSets down as far as
// maxUnavailable allows: first their unavailable pods (which cost no
// availability), then available ones, oldest ReplicaSet first.
func (c *deploymentController) reconcileOldReplicaSets(ctx context.Context, d *appsv1.Deployment, all, oldActive []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) (bool, error) {
	if totalReplicas(oldActive) == 0 {
		return false, nil
	}
	minAvailable := *d.Spec.Replicas - maxUnavailable(d)
	newUnavailable := *newRS.Spec.Replicas - availableOf(newRS)
	maxScaledDown := totalReplicas(all) - minAvailable - newUnavailable
	if maxScaledDown <= 0 {
		return false, nil
	}
	sort.SliceStable(oldActive, func(i, j int) bool { return byCreation(oldActive[i], oldActive[j]) })

	// Unhealthy replicas first.
	cleaned := int32(0)
	for i, rs := range oldActive {
		if cleaned >= maxScaledDown {
			break
		}
		if *rs.Spec.Replicas == 0 {
			continue
		}
		unhealthy := *rs.Spec.Replicas - availableOf(rs)
		if unhealthy <= 0 {
			continue
		}
		down := min(maxScaledDown-cleaned, unhealthy)
		_, out, err := c.scaleReplicaSet(ctx, rs, *rs.Spec.Replicas-down, d)
		if err != nil {
			return cleaned > 0, err
		}
		oldActive[i] = out
		cleaned += down
	}

	// Then available ones, keeping minAvailable.
	available := int32(0)
	for _, rs := range all {
		available += availableOf(rs)
	}
	// (The unhealthy replicas just removed were not available anyway.)
	scaledDown := int32(0)
	if total := available - minAvailable; total > 0 {
		for _, rs := range oldActive {
			if scaledDown >= total {
				break
			}
			if *rs.Spec.Replicas == 0 {
				continue
			}
			down := min(*rs.Spec.Replicas, total-scaledDown)
			if _, _, err := c.scaleReplicaSet(ctx, rs, *rs.Spec.Replicas-down, d); err != nil {
				return true, err
			}
			scaledDown += down
		}
	}
	return cleaned+scaledDown > 0, nil
}

// rolloutRecreate scales every old ReplicaSet to zero, waits until their
// pods are gone, then scales the new one up.
func (c *deploymentController) rolloutRecreate(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) error {
	var err error
	scaled := false
	for _, rs := range activeReplicaSets(old) {
		s, _, err := c.scaleReplicaSet(ctx, rs, 0, d)
		if err != nil {
			return err
		}
		scaled = scaled || s
	}
	if scaled {
		return c.syncRolloutStatus(ctx, d, withNew(old, newRS), newRS)
	}
	if c.oldPodsRunning(newRS, old) {
		return c.syncRolloutStatus(ctx, d, withNew(old, newRS), newRS)
	}
	if newRS == nil {
		if newRS, old, err = c.replicaSetsAndSyncRevision(ctx, d, rsList, true); err != nil {
			return err
		}
	}
	_, newRS, err = c.scaleReplicaSet(ctx, newRS, *d.Spec.Replicas, d)
	if err != nil {
		return err
	}
	all := withNew(old, newRS)
	if deploymentComplete(d, c.calculateStatus(d, all, newRS)) {
		if err := c.cleanup(ctx, d, old); err != nil {
			return err
		}
	}
	return c.syncRolloutStatus(ctx, d, all, newRS)
}

// oldPodsRunning: some pod of an old ReplicaSet has not finished (being
// deleted counts as running: its containers may still be up).
func (c *deploymentController) oldPodsRunning(newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) bool {
	for _, rs := range old {
		if rs.Status.Replicas > 0 {
			return true
		}
		pods, _ := c.podIndexer.ByIndex(indexOwnerUID, string(rs.UID))
		for _, o := range pods {
			p := o.(*corev1.Pod)
			if newRS != nil && metav1.IsControlledBy(p, newRS) {
				continue
			}
			if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				return true
			}
		}
	}
	return false
}

// syncRolloutStatus writes the status with the Progressing condition moved
// along (progressing, complete or timed out) and, while the rollout is
// under way, requeues the deployment for its progress deadline.
func (c *deploymentController) syncRolloutStatus(ctx context.Context, d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) error {
	st := c.calculateStatus(d, all, newRS)
	now := c.now()
	if !hasProgressDeadline(d) {
		removeDeploymentCondition(&st, appsv1.DeploymentProgressing)
	}
	cur := getDeploymentCondition(d.Status, appsv1.DeploymentProgressing)
	complete := st.Replicas == st.UpdatedReplicas && cur != nil && cur.Reason == reasonNewRSAvailable
	if hasProgressDeadline(d) && !complete {
		rsName := ""
		if newRS != nil {
			rsName = newRS.Name
		}
		switch {
		case deploymentComplete(d, st):
			msg := fmt.Sprintf("ReplicaSet %q has successfully progressed.", rsName)
			setDeploymentCondition(&st, *newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonNewRSAvailable, msg, now))
		case deploymentProgressing(d, st):
			msg := fmt.Sprintf("ReplicaSet %q is progressing.", rsName)
			next := newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonRSUpdated, msg, now)
			// Progress refreshes lastUpdateTime; the transition time stays.
			if cur != nil && cur.Status == corev1.ConditionTrue {
				next.LastTransitionTime = cur.LastTransitionTime
			}
			removeDeploymentCondition(&st, appsv1.DeploymentProgressing)
			setDeploymentCondition(&st, *next)
		case deploymentTimedOut(d, st, now):
			msg := fmt.Sprintf("ReplicaSet %q has timed out progressing.", rsName)
			setDeploymentCondition(&st, *newDeploymentCondition(appsv1.DeploymentProgressing, corev1.ConditionFalse, reasonTimedOut, msg, now))
		}
	}
	// Surface a ReplicaSet's failure to create or delete pods.
	var failure *appsv1.ReplicaSetCondition
	for _, rs := range all {
		for i := range rs.Status.Conditions {
			if rs.Status.Conditions[i].Type == appsv1.ReplicaSetReplicaFailure {
				failure = &rs.Status.Conditions[i]
			}
		}
	}
	if failure != nil {
		setDeploymentCondition(&st, appsv1.DeploymentCondition{
			Type: appsv1.DeploymentReplicaFailure, Status: failure.Status, Reason: failure.Reason, Message: failure.Message,
			LastUpdateTime: failure.LastTransitionTime, LastTransitionTime: failure.LastTransitionTime,
		})
	} else {
		removeDeploymentCondition(&st, appsv1.DeploymentReplicaFailure)
	}

	if apiequality.Semantic.DeepEqual(d.Status, st) {
		c.requeueStuck(d, st, now)
		return nil
	}
	d.Status = st
	if err := c.writeStatus(ctx, d); err != nil {
		return err
	}
	c.requeueStuck(d, st, now)
	return nil
}

// requeueStuck brings the deployment back when its progress deadline
// passes, since nothing else would.
func (c *deploymentController) requeueStuck(d *appsv1.Deployment, st appsv1.DeploymentStatus, now time.Time) {
	cond := getDeploymentCondition(st, appsv1.DeploymentProgressing)
	if !hasProgressDeadline(d) || cond == nil || cond.Reason == reasonNewRSAvailable || cond.Reason == reasonTimedOut || deploymentComplete(d, st) {
		return
	}
	after := cond.LastUpdateTime.Add(time.Duration(*d.Spec.ProgressDeadlineSeconds) * time.Second).Sub(now)
	if after < time.Second {
		after = time.Second
	} else {
		after += time.Second
	}
	c.loop.queue.AddAfter(dKey(d), after)
}

// calculateStatus is the deployment's status from its ReplicaSets.
func (c *deploymentController) calculateStatus(d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) appsv1.DeploymentStatus {
	var replicas, ready, available, updated, terminating int32
	var anyTerminating bool
	for _, rs := range all {
		replicas += rs.Status.Replicas
		ready += rs.Status.ReadyReplicas
		available += rs.Status.AvailableReplicas
		if rs.Status.TerminatingReplicas != nil {
			anyTerminating = true
			terminating += *rs.Status.TerminatingReplicas
		}
	}
	if newRS != nil {
		updated = newRS.Status.Replicas
	}
	unavailable := totalReplicas(all) - available
	if unavailable < 0 {
		unavailable = 0
	}
	st := appsv1.DeploymentStatus{
		ObservedGeneration:  d.Generation,
		Replicas:            replicas,
		UpdatedReplicas:     updated,
		ReadyReplicas:       ready,
		AvailableReplicas:   available,
		UnavailableReplicas: unavailable,
		CollisionCount:      d.Status.CollisionCount,
	}
	if anyTerminating {
		st.TerminatingReplicas = &terminating
	}
	for _, cond := range d.Status.Conditions {
		st.Conditions = append(st.Conditions, cond)
	}
	now := c.now()
	if available >= *d.Spec.Replicas-maxUnavailable(d) {
		setDeploymentCondition(&st, *newDeploymentCondition(appsv1.DeploymentAvailable, corev1.ConditionTrue, "MinimumReplicasAvailable", "Deployment has minimum availability.", now))
	} else {
		setDeploymentCondition(&st, *newDeploymentCondition(appsv1.DeploymentAvailable, corev1.ConditionFalse, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", now))
	}
	return st
}
