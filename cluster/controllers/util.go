package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// ownerUIDIndex indexes an object under the UID of each of its owners.
func ownerUIDIndex(obj any) ([]string, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, nil
	}
	refs := m.GetOwnerReferences()
	if len(refs) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		out = append(out, string(r.UID))
	}
	return out, nil
}

// tombstone unwraps an informer's DeletedFinalStateUnknown.
func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

// isPodActive: the pod counts toward its controller's replicas (not finished,
// not being deleted).
func isPodActive(p *corev1.Pod) bool {
	return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && p.DeletionTimestamp == nil
}

func podCondition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// isPodReady: the pod's Ready condition is True.
func isPodReady(p *corev1.Pod) bool {
	c := podCondition(p, corev1.PodReady)
	return c != nil && c.Status == corev1.ConditionTrue
}

// podAvailableAt is when a ready pod becomes available: minReadySeconds after
// its Ready condition turned True. ok is false for a pod that is not ready.
func podAvailableAt(p *corev1.Pod, minReadySeconds int32) (at time.Time, ok bool) {
	c := podCondition(p, corev1.PodReady)
	if c == nil || c.Status != corev1.ConditionTrue {
		return time.Time{}, false
	}
	if minReadySeconds == 0 {
		return time.Time{}, true
	}
	if c.LastTransitionTime.IsZero() {
		// Ready with no time: never known to have been ready long enough.
		return time.Time{}, false
	}
	return c.LastTransitionTime.Add(time.Duration(minReadySeconds) * time.Second), true
}

// isPodAvailable: ready for at least minReadySeconds at now.
func isPodAvailable(p *corev1.Pod, minReadySeconds int32, now time.Time) bool {
	at, ok := podAvailableAt(p, minReadySeconds)
	return ok && (minReadySeconds == 0 || at.Before(now))
}

// controllerRef builds the controller ownerReference to owner.
func controllerRef(owner metav1.Object, gvk schema.GroupVersionKind) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{
		APIVersion:         gvk.GroupVersion().String(),
		Kind:               gvk.Kind,
		Name:               owner.GetName(),
		UID:                owner.GetUID(),
		Controller:         &yes,
		BlockOwnerDeletion: &yes,
	}
}

// removeOwnerRefPatch is a strategic merge patch that drops the
// ownerReference to ownerUID from the object with uid; naming the object's
// uid makes the patch fail (uid is immutable) if the name now belongs to a
// new object.
func removeOwnerRefPatch(uid, ownerUID types.UID) []byte {
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"ownerReferences": []map[string]any{{"$patch": "delete", "uid": ownerUID}},
		"uid":             uid,
	}})
	return b
}

// addOwnerRefPatch is the strategic merge patch that adds ref (merged by uid).
func addOwnerRefPatch(uid types.UID, ref metav1.OwnerReference) []byte {
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{
		"ownerReferences": []metav1.OwnerReference{ref},
		"uid":             uid,
	}})
	return b
}

// claimer adopts the orphans a controller object selects and releases the
// objects it controls that its selector no longer selects, as Kubernetes'
// controller reference manager does.
type claimer struct {
	owner    metav1.Object
	gvk      schema.GroupVersionKind
	selector labels.Selector
	// live reads the owner from the API, bypassing the cache, once before
	// the first adoption: a cached owner may already be deleted (or
	// replaced by a namesake), and adopting for it would orphan again.
	live func(ctx context.Context) (metav1.Object, error)
	// patch applies a strategic merge patch to a claimable object.
	patch func(ctx context.Context, namespace, name string, data []byte) error

	checked bool
	liveErr error
}

// claim reports whether obj belongs to the owner after adopting or
// releasing it as needed.
func (c *claimer) claim(ctx context.Context, obj metav1.Object) (bool, error) {
	ref := metav1.GetControllerOfNoCopy(obj)
	matches := c.selector.Matches(labels.Set(obj.GetLabels()))
	if ref != nil {
		if ref.UID != c.owner.GetUID() {
			return false, nil
		}
		if matches {
			return true, nil
		}
		if c.owner.GetDeletionTimestamp() != nil {
			// Being deleted: keep what we have so the GC finds it.
			return false, nil
		}
		err := c.patch(ctx, obj.GetNamespace(), obj.GetName(), removeOwnerRefPatch(obj.GetUID(), c.owner.GetUID()))
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsInvalid(err) {
			return false, fmt.Errorf("release %s/%s: %w", obj.GetNamespace(), obj.GetName(), err)
		}
		return false, nil
	}
	if !matches || c.owner.GetDeletionTimestamp() != nil || obj.GetDeletionTimestamp() != nil {
		return false, nil
	}
	if !c.checked {
		c.checked = true
		fresh, err := c.live(ctx)
		switch {
		case err != nil:
			c.liveErr = err
		case fresh.GetUID() != c.owner.GetUID():
			c.liveErr = fmt.Errorf("original %s/%s is gone: got uid %s, wanted %s", c.owner.GetNamespace(), c.owner.GetName(), fresh.GetUID(), c.owner.GetUID())
		case fresh.GetDeletionTimestamp() != nil:
			c.liveErr = fmt.Errorf("%s/%s is being deleted", c.owner.GetNamespace(), c.owner.GetName())
		}
	}
	if c.liveErr != nil {
		return false, nil
	}
	err := c.patch(ctx, obj.GetNamespace(), obj.GetName(), addOwnerRefPatch(obj.GetUID(), controllerRef(c.owner, c.gvk)))
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err) || apierrors.IsInvalid(err):
		// Gone, replaced, or taken by another controller meanwhile.
		return false, nil
	default:
		return false, fmt.Errorf("adopt %s/%s: %w", obj.GetNamespace(), obj.GetName(), err)
	}
}

// strategicPatch is the patch type of the claimer's patches.
const strategicPatch = types.StrategicMergePatchType

// matchingSelectors returns the owners whose (non-empty, valid) selector
// matches lbls: the candidates to adopt an orphan.
func matchingSelectors[T any](owners []T, selector func(T) *metav1.LabelSelector, lbls map[string]string) []T {
	var out []T
	for _, o := range owners {
		sel, err := metav1.LabelSelectorAsSelector(selector(o))
		if err != nil || sel.Empty() {
			continue
		}
		if sel.Matches(labels.Set(lbls)) {
			out = append(out, o)
		}
	}
	return out
}
