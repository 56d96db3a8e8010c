package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

var replicaSetKind = appsv1.SchemeGroupVersion.WithKind("ReplicaSet")

// burstReplicas bounds the pods one sync creates or deletes.
const burstReplicas = 500

// replicaSetController keeps each ReplicaSet's pod count at spec.replicas.
type replicaSetController struct {
	*base
	log        *slog.Logger
	rec        record.EventRecorder
	rsLister   appslisters.ReplicaSetLister
	podLister  corelisters.PodLister
	podIndexer cache.Indexer
	exp        *expectations
	loop       *loop[string]
	now        func() time.Time
}

func newReplicaSetController(b *base) *replicaSetController {
	c := &replicaSetController{
		base: b,
		log:  b.logger(ReplicaSet),
		rec:  b.recorder("replicaset-controller"),
		exp:  newExpectations(),
		now:  time.Now,
	}
	c.loop = newLoop(ReplicaSet, c.log, c.sync)
	rsInf := b.replicaSetInformer()
	podInf := b.podInformer()
	c.rsLister = appslisters.NewReplicaSetLister(rsInf.GetIndexer())
	c.podLister = corelisters.NewPodLister(podInf.GetIndexer())
	c.podIndexer = podInf.GetIndexer()
	rsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
		DeleteFunc: c.loop.enqueueObj,
	})
	podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addPod,
		UpdateFunc: c.updatePod,
		DeleteFunc: c.deletePod,
	})
	return c
}

func (c *replicaSetController) run(ctx context.Context) { c.loop.run(ctx, c.cfg.Workers) }

// resolve returns the ReplicaSet a controller reference points at, if the
// cache has it with the same UID.
func (c *replicaSetController) resolve(ns string, ref *metav1.OwnerReference) *appsv1.ReplicaSet {
	if ref.Kind != replicaSetKind.Kind {
		return nil
	}
	rs, err := c.rsLister.ReplicaSets(ns).Get(ref.Name)
	if err != nil || rs.UID != ref.UID {
		return nil
	}
	return rs
}

// selecting returns the ReplicaSets whose selector matches an orphan pod.
func (c *replicaSetController) selecting(pod *corev1.Pod) []*appsv1.ReplicaSet {
	list, err := c.rsLister.ReplicaSets(pod.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	return matchingSelectors(list, func(rs *appsv1.ReplicaSet) *metav1.LabelSelector { return rs.Spec.Selector }, pod.Labels)
}

func rsKey(rs *appsv1.ReplicaSet) string { return rs.Namespace + "/" + rs.Name }

func (c *replicaSetController) addPod(obj any) {
	pod := obj.(*corev1.Pod)
	if pod.DeletionTimestamp != nil {
		// Seen for the first time while being deleted (e.g. after a restart).
		c.deletePod(pod)
		return
	}
	if ref := metav1.GetControllerOfNoCopy(pod); ref != nil {
		if rs := c.resolve(pod.Namespace, ref); rs != nil {
			c.exp.creationObserved(rsKey(rs))
			c.loop.add(rsKey(rs))
		}
		return
	}
	for _, rs := range c.selecting(pod) {
		c.loop.add(rsKey(rs))
	}
}

func (c *replicaSetController) updatePod(oldObj, curObj any) {
	old, cur := oldObj.(*corev1.Pod), curObj.(*corev1.Pod)
	if old.ResourceVersion == cur.ResourceVersion {
		return
	}
	labelsChanged := !reflect.DeepEqual(old.Labels, cur.Labels)
	if cur.DeletionTimestamp != nil {
		c.deletePod(cur)
		if labelsChanged {
			c.deletePod(old)
		}
		return
	}
	oldRef, curRef := metav1.GetControllerOfNoCopy(old), metav1.GetControllerOfNoCopy(cur)
	refChanged := !reflect.DeepEqual(oldRef, curRef)
	if refChanged && oldRef != nil {
		if rs := c.resolve(old.Namespace, oldRef); rs != nil {
			c.loop.add(rsKey(rs))
		}
	}
	if curRef != nil {
		if rs := c.resolve(cur.Namespace, curRef); rs != nil {
			c.loop.add(rsKey(rs))
		}
		return
	}
	if labelsChanged || refChanged {
		for _, rs := range c.selecting(cur) {
			c.loop.add(rsKey(rs))
		}
	}
}

func (c *replicaSetController) deletePod(obj any) {
	pod, ok := tombstone(obj).(*corev1.Pod)
	if !ok {
		return
	}
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil {
		return
	}
	if rs := c.resolve(pod.Namespace, ref); rs != nil {
		c.exp.deletionObserved(rsKey(rs), pod.Namespace+"/"+pod.Name)
		c.loop.add(rsKey(rs))
	}
}

// candidatePods are the pods a ReplicaSet may own: those with an owner
// reference to it and the orphans of its namespace.
func candidatePods(idx cache.Indexer, ns string, uid types.UID) []*corev1.Pod {
	owned, _ := idx.ByIndex(indexOwnerUID, string(uid))
	orphans, _ := idx.ByIndex(indexOrphan, ns)
	seen := make(map[types.UID]bool, len(owned))
	out := make([]*corev1.Pod, 0, len(owned)+len(orphans))
	for _, list := range [][]any{owned, orphans} {
		for _, o := range list {
			p := o.(*corev1.Pod)
			if !seen[p.UID] && p.Namespace == ns {
				seen[p.UID] = true
				out = append(out, p)
			}
		}
	}
	return out
}

func (c *replicaSetController) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	rs, err := c.rsLister.ReplicaSets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.exp.forget(key)
		return nil
	}
	if err != nil {
		return err
	}
	needsSync := c.exp.satisfied(key)
	selector, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil || selector.Empty() {
		c.log.Warn("replicaset has an invalid or empty selector", "rs", key, "err", err)
		return nil
	}
	cl := &claimer{
		owner: rs, gvk: replicaSetKind, selector: selector,
		live: func(ctx context.Context) (metav1.Object, error) {
			return c.client.AppsV1().ReplicaSets(ns).Get(ctx, name, metav1.GetOptions{})
		},
		patch: func(ctx context.Context, ns, name string, data []byte) error {
			_, err := c.client.CoreV1().Pods(ns).Patch(ctx, name, strategicPatch, data, metav1.PatchOptions{})
			return err
		},
	}
	var active []*corev1.Pod
	var terminating int32
	for _, pod := range candidatePods(c.podIndexer, ns, rs.UID) {
		if !isPodActive(pod) {
			if pod.DeletionTimestamp != nil && metav1.IsControlledBy(pod, rs) {
				terminating++
			}
			continue
		}
		owned, err := cl.claim(ctx, pod)
		if err != nil {
			return err
		}
		if owned {
			active = append(active, pod)
		}
	}

	var manageErr error
	if needsSync && rs.DeletionTimestamp == nil {
		manageErr = c.manageReplicas(ctx, rs, key, active)
	}
	status := c.calculateStatus(rs, active, terminating, manageErr)
	if err := c.updateStatus(ctx, rs, status); err != nil {
		return errors.Join(manageErr, err)
	}
	// A ready pod becomes available minReadySeconds later with no event to
	// say so: come back then.
	if rs.Spec.MinReadySeconds > 0 {
		now := c.now()
		var next time.Time
		for _, p := range active {
			if at, ok := podAvailableAt(p, rs.Spec.MinReadySeconds); ok && !at.Before(now) && (next.IsZero() || at.Before(next)) {
				next = at
			}
		}
		if !next.IsZero() {
			c.loop.queue.AddAfter(key, next.Sub(now)+50*time.Millisecond)
		}
	}
	return manageErr
}

// manageReplicas creates or deletes pods to reach spec.replicas.
func (c *replicaSetController) manageReplicas(ctx context.Context, rs *appsv1.ReplicaSet, key string, active []*corev1.Pod) error {
	want := 1
	if rs.Spec.Replicas != nil {
		want = int(*rs.Spec.Replicas)
	}
	diff := len(active) - want
	switch {
	case diff < 0:
		n := min(-diff, burstReplicas)
		c.exp.expectCreations(key, n)
		created, err := slowStart(n, func() error { return c.createPod(ctx, rs) })
		// Creations that failed or were never tried will never be seen.
		for i := created; i < n; i++ {
			c.exp.creationObserved(key)
		}
		return err
	case diff > 0:
		n := min(diff, burstReplicas)
		victims := podsToDelete(active, n)
		keys := make([]string, len(victims))
		for i, p := range victims {
			keys[i] = p.Namespace + "/" + p.Name
		}
		c.exp.expectDeletions(key, keys)
		var wg sync.WaitGroup
		errs := make([]error, len(victims))
		for i, p := range victims {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = c.deletePodOf(ctx, rs, key, p)
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	return nil
}

// slowStart calls fn count times in batches of 1, 2, 4, … running each
// batch in parallel and stopping after the first batch with an error, so a
// template the API rejects costs one request, not hundreds. It returns how
// many calls succeeded.
func slowStart(count int, fn func() error) (int, error) {
	done := 0
	for batch := min(1, count); batch > 0; batch = min(2*batch, count-done) {
		errs := make([]error, batch)
		var wg sync.WaitGroup
		for i := 0; i < batch; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = fn()
			}()
		}
		wg.Wait()
		failed := 0
		for _, err := range errs {
			if err != nil {
				failed++
			}
		}
		done += batch - failed
		if failed > 0 {
			return done, errors.Join(errs...)
		}
	}
	return done, nil
}

// podFromTemplate is a new pod for rs: its template's metadata and spec,
// a generated name and the controller reference.
func podFromTemplate(t *corev1.PodTemplateSpec, owner metav1.Object, ref metav1.OwnerReference) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    owner.GetName() + "-",
			Namespace:       owner.GetNamespace(),
			Labels:          copyMap(t.Labels),
			Annotations:     copyMap(t.Annotations),
			Finalizers:      append([]string(nil), t.Finalizers...),
			OwnerReferences: []metav1.OwnerReference{ref},
		},
		Spec: *t.Spec.DeepCopy(),
	}
	return pod
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (c *replicaSetController) createPod(ctx context.Context, rs *appsv1.ReplicaSet) error {
	pod := podFromTemplate(&rs.Spec.Template, rs, controllerRef(rs, replicaSetKind))
	created, err := c.client.CoreV1().Pods(rs.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			// The namespace controller is emptying the namespace; not an error.
			return nil
		}
		c.rec.Eventf(rs, corev1.EventTypeWarning, "FailedCreate", "Error creating: %v", err)
		return err
	}
	c.rec.Eventf(rs, corev1.EventTypeNormal, "SuccessfulCreate", "Created pod: %v", created.Name)
	return nil
}

func (c *replicaSetController) deletePodOf(ctx context.Context, rs *appsv1.ReplicaSet, key string, p *corev1.Pod) error {
	err := c.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: metav1.NewUIDPreconditions(string(p.UID))})
	if err != nil {
		// Not deleted by us: its deletion will not be seen (or already was).
		c.exp.deletionObserved(key, p.Namespace+"/"+p.Name)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		c.rec.Eventf(rs, corev1.EventTypeWarning, "FailedDelete", "Error deleting: %v", err)
		return err
	}
	c.rec.Eventf(rs, corev1.EventTypeNormal, "SuccessfulDelete", "Deleted pod: %v", p.Name)
	return nil
}

// podsToDelete picks the n pods to delete first: unscheduled before
// scheduled, pending before unknown before running, not ready before ready,
// pods on nodes crowded with this set's pods first, recently ready before
// long ready, more restarts before fewer, newer before older.
func podsToDelete(pods []*corev1.Pod, n int) []*corev1.Pod {
	if n >= len(pods) {
		return pods
	}
	perNode := map[string]int{}
	for _, p := range pods {
		if p.Spec.NodeName != "" {
			perNode[p.Spec.NodeName]++
		}
	}
	sorted := append([]*corev1.Pod(nil), pods...)
	sort.SliceStable(sorted, func(i, j int) bool { return deleteBefore(sorted[i], sorted[j], perNode) })
	return sorted[:n]
}

func phaseRank(p corev1.PodPhase) int {
	switch p {
	case corev1.PodPending:
		return 0
	case corev1.PodUnknown:
		return 1
	case corev1.PodRunning:
		return 2
	}
	return 3
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// deleteBefore reports whether a should be deleted before b.
func deleteBefore(a, b *corev1.Pod, perNode map[string]int) bool {
	if (a.Spec.NodeName == "") != (b.Spec.NodeName == "") {
		return a.Spec.NodeName == ""
	}
	if ra, rb := phaseRank(a.Status.Phase), phaseRank(b.Status.Phase); ra != rb {
		return ra < rb
	}
	ar, br := isPodReady(a), isPodReady(b)
	if ar != br {
		return !ar
	}
	if na, nb := perNode[a.Spec.NodeName], perNode[b.Spec.NodeName]; na != nb {
		return na > nb
	}
	if ar && br {
		ta, tb := podCondition(a, corev1.PodReady).LastTransitionTime, podCondition(b, corev1.PodReady).LastTransitionTime
		if !ta.Equal(&tb) {
			return tb.Before(&ta)
		}
	}
	if ra, rb := restarts(a), restarts(b); ra != rb {
		return ra > rb
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return b.CreationTimestamp.Before(&a.CreationTimestamp)
	}
	return a.Name > b.Name
}

func (c *replicaSetController) calculateStatus(rs *appsv1.ReplicaSet, active []*corev1.Pod, terminating int32, manageErr error) appsv1.ReplicaSetStatus {
	st := *rs.Status.DeepCopy()
	templateLabels := labels.Set(rs.Spec.Template.Labels).AsSelectorPreValidated()
	now := c.now()
	var fully, ready, available int32
	for _, p := range active {
		if templateLabels.Matches(labels.Set(p.Labels)) {
			fully++
		}
		if isPodReady(p) {
			ready++
			if isPodAvailable(p, rs.Spec.MinReadySeconds, now) {
				available++
			}
		}
	}
	st.Replicas = int32(len(active))
	st.FullyLabeledReplicas = fully
	st.ReadyReplicas = ready
	st.AvailableReplicas = available
	st.TerminatingReplicas = &terminating
	st.ObservedGeneration = rs.Generation

	failure := -1
	for i, cond := range st.Conditions {
		if cond.Type == appsv1.ReplicaSetReplicaFailure {
			failure = i
		}
	}
	switch {
	case manageErr != nil && failure < 0:
		want := int32(1)
		if rs.Spec.Replicas != nil {
			want = *rs.Spec.Replicas
		}
		reason := "FailedCreate"
		if int32(len(active)) > want {
			reason = "FailedDelete"
		}
		st.Conditions = append(st.Conditions, appsv1.ReplicaSetCondition{
			Type: appsv1.ReplicaSetReplicaFailure, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.NewTime(now), Reason: reason, Message: manageErr.Error(),
		})
	case manageErr == nil && failure >= 0:
		st.Conditions = append(st.Conditions[:failure], st.Conditions[failure+1:]...)
	}
	return st
}

func (c *replicaSetController) updateStatus(ctx context.Context, rs *appsv1.ReplicaSet, st appsv1.ReplicaSetStatus) error {
	if apiequality.Semantic.DeepEqual(rs.Status, st) {
		return nil
	}
	cp := rs.DeepCopy()
	cp.Status = st
	_, err := c.client.AppsV1().ReplicaSets(rs.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		// The deployment controller may have just scaled it: status is ours
		// alone, so write it over the fresh object.
		fresh, gerr := c.client.AppsV1().ReplicaSets(rs.Namespace).Get(ctx, rs.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		if fresh.UID != rs.UID {
			return nil
		}
		st.ObservedGeneration = min(st.ObservedGeneration, fresh.Generation)
		fresh.Status = st
		_, err = c.client.AppsV1().ReplicaSets(rs.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
	}
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("update status of replicaset %s/%s: %w", rs.Namespace, rs.Name, err)
	}
	return nil
}
