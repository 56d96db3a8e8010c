package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// gcResource is one kind the garbage collector follows, as owner and as
// dependent.
type gcResource struct {
	gk         schema.GroupKind
	plural     string
	namespaced bool
	informer   cache.SharedIndexInformer
	rest       rest.Interface
}

// gcItem names one object of one gcResource.
type gcItem struct {
	res      int
	ns, name string
	uid      types.UID
}

// ownerState classifies an owner reference.
type ownerState int

const (
	ownerSolid   ownerState = iota // exists (or cannot be checked): keep the dependent
	ownerAbsent                    // gone, or replaced by a namesake with another uid
	ownerWaiting                   // being deleted in the foreground: waiting for its dependents
)

// garbageCollector deletes objects whose owners are gone, runs foreground
// deletion (dependents first, then the owner) and orphaning (owner
// references removed, then the owner), over the kinds Flotilla serves.
//
// It keeps no graph: every informer indexes objects by owner UID, so "the
// dependents of X" is an index lookup and "the owner of Y" a cache lookup
// by name, confirmed by a live read before anything is deleted.
type garbageCollector struct {
	*base
	log       *slog.Logger
	resources []*gcResource
	byGK      map[schema.GroupKind]int
	loop      *loop[gcItem]

	mu     sync.Mutex
	absent map[types.UID]bool // owners confirmed gone
}

// maxAbsent bounds the absent-owner cache.
const maxAbsent = 10000

func newGarbageCollector(b *base) *garbageCollector {
	c := &garbageCollector{base: b, log: b.logger(GarbageCollector), byGK: map[schema.GroupKind]int{}, absent: map[types.UID]bool{}}
	c.loop = newLoop(GarbageCollector, c.log, c.sync)
	core, apps := b.client.CoreV1().RESTClient(), b.client.AppsV1().RESTClient()
	f := b.factory
	withIndex := func(inf cache.SharedIndexInformer) cache.SharedIndexInformer {
		return ensureIndex(inf, indexOwnerUID, ownerUIDIndex)
	}
	c.resources = []*gcResource{
		{gk: schema.GroupKind{Kind: "Pod"}, plural: "pods", namespaced: true, informer: b.podInformer(), rest: core},
		{gk: appsv1.SchemeGroupVersion.WithKind("ReplicaSet").GroupKind(), plural: "replicasets", namespaced: true, informer: b.replicaSetInformer(), rest: apps},
		{gk: appsv1.SchemeGroupVersion.WithKind("Deployment").GroupKind(), plural: "deployments", namespaced: true, informer: withIndex(f.Apps().V1().Deployments().Informer()), rest: apps},
		{gk: schema.GroupKind{Kind: "Service"}, plural: "services", namespaced: true, informer: withIndex(f.Core().V1().Services().Informer()), rest: core},
		{gk: schema.GroupKind{Kind: "Endpoints"}, plural: "endpoints", namespaced: true, informer: withIndex(f.Core().V1().Endpoints().Informer()), rest: core},
		{gk: schema.GroupKind{Kind: "ConfigMap"}, plural: "configmaps", namespaced: true, informer: withIndex(f.Core().V1().ConfigMaps().Informer()), rest: core},
		{gk: schema.GroupKind{Kind: "Secret"}, plural: "secrets", namespaced: true, informer: withIndex(f.Core().V1().Secrets().Informer()), rest: core},
		{gk: schema.GroupKind{Kind: "ServiceAccount"}, plural: "serviceaccounts", namespaced: true, informer: withIndex(f.Core().V1().ServiceAccounts().Informer()), rest: core},
		{gk: schema.GroupKind{Kind: "Node"}, plural: "nodes", informer: withIndex(f.Core().V1().Nodes().Informer()), rest: core},
		{gk: schema.GroupKind{Kind: "Namespace"}, plural: "namespaces", informer: withIndex(f.Core().V1().Namespaces().Informer()), rest: core},
	}
	for i, r := range c.resources {
		c.byGK[r.gk] = i
		r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.added(i, obj) },
			UpdateFunc: func(old, cur any) { c.updated(i, old, cur) },
			DeleteFunc: func(obj any) { c.deleted(obj) },
		})
	}
	return c
}

func (c *garbageCollector) run(ctx context.Context) { c.loop.run(ctx, c.cfg.Workers) }

func itemOf(res int, m metav1.Object) gcItem {
	return gcItem{res: res, ns: m.GetNamespace(), name: m.GetName(), uid: m.GetUID()}
}

// gcFinalizer: the object waits for the GC (orphan or foreground).
func gcFinalizer(m metav1.Object) bool {
	for _, f := range m.GetFinalizers() {
		if f == metav1.FinalizerOrphanDependents || f == metav1.FinalizerDeleteDependents {
			return true
		}
	}
	return false
}

func (c *garbageCollector) added(res int, obj any) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	if len(m.GetOwnerReferences()) > 0 || (m.GetDeletionTimestamp() != nil && gcFinalizer(m)) {
		c.loop.add(itemOf(res, m))
	}
}

func (c *garbageCollector) updated(res int, oldObj, curObj any) {
	old, err1 := meta.Accessor(oldObj)
	cur, err2 := meta.Accessor(curObj)
	if err1 != nil || err2 != nil || old.GetResourceVersion() == cur.GetResourceVersion() {
		return
	}
	refsChanged := !sameRefs(old.GetOwnerReferences(), cur.GetOwnerReferences())
	if refsChanged || (cur.GetDeletionTimestamp() != nil && gcFinalizer(cur)) {
		c.loop.add(itemOf(res, cur))
	}
	if refsChanged {
		// An owner waiting in the foreground may have lost a blocking dependent.
		keep := map[types.UID]bool{}
		for _, r := range cur.GetOwnerReferences() {
			keep[r.UID] = true
		}
		for _, r := range old.GetOwnerReferences() {
			if !keep[r.UID] {
				c.enqueueOwner(old, r)
			}
		}
	}
}

func sameRefs(a, b []metav1.OwnerReference) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].UID != b[i].UID || boolValue(a[i].BlockOwnerDeletion) != boolValue(b[i].BlockOwnerDeletion) {
			return false
		}
	}
	return true
}

func boolValue(p *bool) bool { return p != nil && *p }

func (c *garbageCollector) deleted(obj any) {
	m, err := meta.Accessor(tombstone(obj))
	if err != nil {
		return
	}
	// Its dependents lost an owner; its owners may have been waiting for it.
	for _, d := range c.dependents(m.GetUID()) {
		c.loop.add(d)
	}
	for _, r := range m.GetOwnerReferences() {
		c.enqueueOwner(m, r)
	}
}

// enqueueOwner enqueues the owner a dependent's reference points at, if we
// follow its kind.
func (c *garbageCollector) enqueueOwner(dep metav1.Object, ref metav1.OwnerReference) {
	idx, ok := c.byGK[refGroupKind(ref)]
	if !ok {
		return
	}
	ns := ""
	if c.resources[idx].namespaced {
		ns = dep.GetNamespace()
	}
	c.loop.add(gcItem{res: idx, ns: ns, name: ref.Name, uid: ref.UID})
}

func refGroupKind(ref metav1.OwnerReference) schema.GroupKind {
	gv, _ := schema.ParseGroupVersion(ref.APIVersion)
	return schema.GroupKind{Group: gv.Group, Kind: ref.Kind}
}

// dependents lists the objects with an owner reference to uid.
func (c *garbageCollector) dependents(uid types.UID) []gcItem {
	var out []gcItem
	for i, r := range c.resources {
		objs, _ := r.informer.GetIndexer().ByIndex(indexOwnerUID, string(uid))
		for _, o := range objs {
			if m, err := meta.Accessor(o); err == nil {
				out = append(out, itemOf(i, m))
			}
		}
	}
	return out
}

func (c *garbageCollector) cached(r *gcResource, ns, name string) (metav1.Object, bool) {
	key := name
	if ns != "" {
		key = ns + "/" + name
	}
	obj, ok, err := r.informer.GetIndexer().GetByKey(key)
	if err != nil || !ok {
		return nil, false
	}
	m, err := meta.Accessor(obj)
	return m, err == nil
}

func (c *garbageCollector) sync(ctx context.Context, it gcItem) error {
	r := c.resources[it.res]
	m, ok := c.cached(r, it.ns, it.name)
	if !ok || m.GetUID() != it.uid {
		return nil
	}
	if m.GetDeletionTimestamp() != nil {
		for _, f := range m.GetFinalizers() {
			switch f {
			case metav1.FinalizerOrphanDependents:
				return c.orphanDependents(ctx, r, m)
			case metav1.FinalizerDeleteDependents:
				return c.deleteDependentsFirst(ctx, r, m)
			}
		}
		return nil
	}
	if len(m.GetOwnerReferences()) == 0 {
		return nil
	}
	return c.attemptToDelete(ctx, r, m)
}

// attemptToDelete deletes a dependent whose owners are all gone (or waiting
// for it), and drops its references to gone owners when others remain.
func (c *garbageCollector) attemptToDelete(ctx context.Context, r *gcResource, m metav1.Object) error {
	var solid, dropped []metav1.OwnerReference
	waiting := false
	for _, ref := range m.GetOwnerReferences() {
		st, err := c.ownerState(ctx, r, m, ref)
		if err != nil {
			return err
		}
		switch st {
		case ownerSolid:
			solid = append(solid, ref)
		case ownerWaiting:
			waiting = true
			dropped = append(dropped, ref)
		default:
			dropped = append(dropped, ref)
		}
	}
	switch {
	case len(dropped) == 0:
		return nil
	case len(solid) > 0:
		// Still owned: forget the gone owners (and let waiting ones finish).
		return c.patchRemoveRefs(ctx, r, m, dropped)
	}
	policy := metav1.DeletePropagationBackground
	switch {
	case waiting && len(c.dependents(m.GetUID())) > 0:
		// Deleting for a foreground owner: our own dependents go first too.
		policy = metav1.DeletePropagationForeground
	case hasString(m.GetFinalizers(), metav1.FinalizerOrphanDependents):
		policy = metav1.DeletePropagationOrphan
	case hasString(m.GetFinalizers(), metav1.FinalizerDeleteDependents):
		policy = metav1.DeletePropagationForeground
	}
	c.log.Debug("deleting object whose owners are gone", "kind", r.gk.Kind, "object", key(m), "policy", policy)
	return c.delete(ctx, r, m, policy)
}

func hasString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func key(m metav1.Object) string {
	if m.GetNamespace() == "" {
		return m.GetName()
	}
	return m.GetNamespace() + "/" + m.GetName()
}

// ownerState looks the owner up in the cache, and when the cache does not
// have it (or has a namesake), reads it live: the cache may lag behind an
// owner created just before its dependent.
func (c *garbageCollector) ownerState(ctx context.Context, r *gcResource, dep metav1.Object, ref metav1.OwnerReference) (ownerState, error) {
	idx, ok := c.byGK[refGroupKind(ref)]
	if !ok {
		// A kind we do not serve cannot be checked; never delete for it.
		return ownerSolid, nil
	}
	or := c.resources[idx]
	ns := ""
	if or.namespaced {
		if !r.namespaced {
			return ownerAbsent, nil // a cluster-scoped object cannot have a namespaced owner
		}
		ns = dep.GetNamespace()
	}
	c.mu.Lock()
	gone := c.absent[ref.UID]
	c.mu.Unlock()
	if gone {
		return ownerAbsent, nil
	}
	if m, ok := c.cached(or, ns, ref.Name); ok && m.GetUID() == ref.UID {
		return classifyOwner(m), nil
	}
	req := or.rest.Get().Resource(or.plural).Name(ref.Name)
	if ns != "" {
		req = req.Namespace(ns)
	}
	data, err := req.DoRaw(ctx)
	if apierrors.IsNotFound(err) {
		c.markAbsent(ref.UID)
		return ownerAbsent, nil
	}
	if err != nil {
		return ownerSolid, fmt.Errorf("get owner %s %s: %w", ref.Kind, ref.Name, err)
	}
	var live metav1.PartialObjectMetadata
	if err := json.Unmarshal(data, &live); err != nil {
		return ownerSolid, fmt.Errorf("decode owner %s %s: %w", ref.Kind, ref.Name, err)
	}
	if live.UID != ref.UID {
		c.markAbsent(ref.UID)
		return ownerAbsent, nil
	}
	return classifyOwner(&live), nil
}

func classifyOwner(m metav1.Object) ownerState {
	if m.GetDeletionTimestamp() != nil && hasString(m.GetFinalizers(), metav1.FinalizerDeleteDependents) {
		return ownerWaiting
	}
	return ownerSolid
}

func (c *garbageCollector) markAbsent(uid types.UID) {
	c.mu.Lock()
	if len(c.absent) >= maxAbsent {
		c.absent = map[types.UID]bool{}
	}
	c.absent[uid] = true
	c.mu.Unlock()
}

// deleteDependentsFirst runs foreground deletion: every dependent is
// deleted (through its own sync, which also drops the reference of one
// with another owner); once no dependent with blockOwnerDeletion refers to
// the owner any more, the owner's foregroundDeletion finalizer goes and
// with it the owner.
func (c *garbageCollector) deleteDependentsFirst(ctx context.Context, r *gcResource, owner metav1.Object) error {
	blocked := false
	for _, d := range c.dependents(owner.GetUID()) {
		dm, ok := c.cached(c.resources[d.res], d.ns, d.name)
		if !ok {
			continue
		}
		c.loop.add(d)
		for _, ref := range dm.GetOwnerReferences() {
			if ref.UID == owner.GetUID() && boolValue(ref.BlockOwnerDeletion) {
				blocked = true
			}
		}
	}
	if blocked {
		// A dependent's deletion (or update) brings the owner back.
		return nil
	}
	return c.removeFinalizer(ctx, r, owner, metav1.FinalizerDeleteDependents)
}

// orphanDependents removes the owner's references from its dependents,
// then the owner's orphan finalizer.
func (c *garbageCollector) orphanDependents(ctx context.Context, r *gcResource, owner metav1.Object) error {
	ref := []metav1.OwnerReference{{UID: owner.GetUID()}}
	for _, d := range c.dependents(owner.GetUID()) {
		dr := c.resources[d.res]
		dm, ok := c.cached(dr, d.ns, d.name)
		if !ok {
			continue
		}
		if err := c.patchRemoveRefs(ctx, dr, dm, ref); err != nil {
			return err
		}
	}
	return c.removeFinalizer(ctx, r, owner, metav1.FinalizerOrphanDependents)
}

func (c *garbageCollector) request(r *gcResource, verb func() *rest.Request, m metav1.Object) *rest.Request {
	req := verb().Resource(r.plural).Name(m.GetName())
	if r.namespaced {
		req = req.Namespace(m.GetNamespace())
	}
	return req
}

func (c *garbageCollector) patchRemoveRefs(ctx context.Context, r *gcResource, m metav1.Object, refs []metav1.OwnerReference) error {
	del := make([]map[string]any, len(refs))
	for i, ref := range refs {
		del[i] = map[string]any{"$patch": "delete", "uid": ref.UID}
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": del, "uid": m.GetUID()}})
	err := c.request(r, func() *rest.Request { return r.rest.Patch(types.StrategicMergePatchType) }, m).Body(patch).Do(ctx).Error()
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsInvalid(err) {
		return fmt.Errorf("remove owner references from %s %s: %w", r.gk.Kind, key(m), err)
	}
	return nil
}

func (c *garbageCollector) removeFinalizer(ctx context.Context, r *gcResource, m metav1.Object, fin string) error {
	var keep []string
	for _, f := range m.GetFinalizers() {
		if f != fin {
			keep = append(keep, f)
		}
	}
	// The resourceVersion makes it a compare-and-swap on the list.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"finalizers": keep, "resourceVersion": m.GetResourceVersion()}})
	err := c.request(r, func() *rest.Request { return r.rest.Patch(types.MergePatchType) }, m).Body(patch).Do(ctx).Error()
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer %s from %s %s: %w", fin, r.gk.Kind, key(m), err)
	}
	return nil
}

func (c *garbageCollector) delete(ctx context.Context, r *gcResource, m metav1.Object, policy metav1.DeletionPropagation) error {
	uid := m.GetUID()
	opts := &metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}, PropagationPolicy: &policy}
	err := c.request(r, r.rest.Delete, m).Body(opts).Do(ctx).Error()
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete %s %s: %w", r.gk.Kind, key(m), err)
	}
	return nil
}
