package api

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"flotilla/fsm"
)

// Finalizers the propagation policies set, as kube-apiserver does; the
// garbage collector removes them.
const (
	finalizerOrphan     = metav1.FinalizerOrphanDependents
	finalizerForeground = metav1.FinalizerDeleteDependents
)

// protectedNamespaces may not be deleted.
var protectedNamespaces = map[string]bool{"default": true, "kube-system": true, "kube-public": true}

// deleteOptions reads DeleteOptions from the query and, when present, the body.
func (q *request) deleteOptions() (*metav1.DeleteOptions, error) {
	opts := &metav1.DeleteOptions{}
	if err := paramCodec.DecodeParameters(q.query, coreV1, opts); err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	data, err := readBody(q.r, q.s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	if len(data) > 0 {
		mt, _, _ := mime.ParseMediaType(q.r.Header.Get("Content-Type"))
		fromBody := &metav1.DeleteOptions{}
		if mt == mediaProtobuf {
			if _, _, err := codecs.UniversalDeserializer().Decode(data, nil, fromBody); err != nil {
				return nil, apierrors.NewBadRequest("decode DeleteOptions: " + err.Error())
			}
		} else if err := json.Unmarshal(data, fromBody); err != nil {
			return nil, apierrors.NewBadRequest("decode DeleteOptions: " + err.Error())
		}
		// The body wins where it says something, as in kube-apiserver.
		if fromBody.GracePeriodSeconds == nil {
			fromBody.GracePeriodSeconds = opts.GracePeriodSeconds
		}
		if fromBody.PropagationPolicy == nil {
			fromBody.PropagationPolicy = opts.PropagationPolicy
		}
		if fromBody.OrphanDependents == nil {
			fromBody.OrphanDependents = opts.OrphanDependents
		}
		if len(fromBody.DryRun) == 0 {
			fromBody.DryRun = opts.DryRun
		}
		opts = fromBody
	}
	for _, d := range opts.DryRun {
		if d != metav1.DryRunAll {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("dryRun: Unsupported value: %q: supported values: \"All\"", d))
		}
	}
	if opts.GracePeriodSeconds != nil && *opts.GracePeriodSeconds < 0 {
		zero := int64(0)
		opts.GracePeriodSeconds = &zero
	}
	if opts.PropagationPolicy != nil {
		switch *opts.PropagationPolicy {
		case metav1.DeletePropagationOrphan, metav1.DeletePropagationBackground, metav1.DeletePropagationForeground:
		default:
			return nil, apierrors.NewBadRequest(fmt.Sprintf("propagationPolicy: Unsupported value: %q: supported values: \"Foreground\", \"Background\", \"Orphan\"", *opts.PropagationPolicy))
		}
		if opts.OrphanDependents != nil {
			return nil, apierrors.NewBadRequest("orphanDependents and propagationPolicy may not both be set")
		}
	}
	return opts, nil
}

func (q *request) delete() error {
	opts, err := q.deleteOptions()
	if err != nil {
		return err
	}
	obj, deleted, err := q.s.deleteObject(q.ctx, q.res, q.ns, q.name, opts)
	if err != nil {
		return err
	}
	if deleted && q.res.plural != "pods" && q.res.plural != "services" && q.res.plural != "namespaces" {
		q.s.writeObject(q.w, q.r, http.StatusOK, successStatus(http.StatusOK, q.res.groupResource(), q.res.plural, obj.GetName(), string(obj.GetUID())))
		return nil
	}
	q.s.writeObject(q.w, q.r, http.StatusOK, obj)
	return nil
}

// deleteObject deletes one object, or marks it deleted when finalizers or
// a pod's grace period keep it: it returns the object and whether it is gone.
func (s *Server) deleteObject(ctx context.Context, res *resource, ns, name string, opts *metav1.DeleteOptions) (object, bool, error) {
	dry := len(opts.DryRun) > 0
	if res.plural == "namespaces" && protectedNamespaces[name] {
		return nil, false, apierrors.NewForbidden(res.groupResource(), name, fmt.Errorf("this namespace may not be deleted"))
	}
	for attempt := 0; attempt < maxRetries; attempt++ {
		cur, kv, err := s.getFresh(ctx, res, ns, name)
		if err != nil {
			return nil, false, err
		}
		if p := opts.Preconditions; p != nil {
			if p.UID != nil && *p.UID != cur.GetUID() {
				return nil, false, apierrors.NewConflict(res.groupResource(), name,
					fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", *p.UID, cur.GetUID()))
			}
			if p.ResourceVersion != nil && *p.ResourceVersion != cur.GetResourceVersion() {
				return nil, false, apierrors.NewConflict(res.groupResource(), name,
					fmt.Errorf("Precondition failed: ResourceVersion in precondition: %v, ResourceVersion in object meta: %v", *p.ResourceVersion, cur.GetResourceVersion()))
			}
		}
		next := cur.DeepCopyObject().(object)
		changed := applyPropagation(next, opts)
		now := s.cfg.Now().UTC()
		keep := len(next.GetFinalizers()) > 0
		if n, ok := next.(*corev1.Namespace); ok && len(n.Spec.Finalizers) > 0 {
			keep = true
		}
		graceful := false
		if pod, ok := next.(*corev1.Pod); ok {
			grace := podGracePeriod(pod, opts)
			if grace > 0 {
				graceful = true
				cg := cur.GetDeletionGracePeriodSeconds()
				if cur.GetDeletionTimestamp() == nil || cg == nil || *cg > grace {
					dt := metav1.NewTime(now.Add(time.Duration(grace) * time.Second).Truncate(time.Second))
					next.SetDeletionTimestamp(&dt)
					next.SetDeletionGracePeriodSeconds(&grace)
					changed = true
				}
			}
		}
		if keep && !graceful {
			if next.GetDeletionTimestamp() == nil {
				dt := metav1.NewTime(now.Truncate(time.Second))
				next.SetDeletionTimestamp(&dt)
				changed = true
			}
			if g := next.GetDeletionGracePeriodSeconds(); g == nil || *g != 0 {
				zero := int64(0)
				next.SetDeletionGracePeriodSeconds(&zero)
				changed = true
			}
			if n, ok := next.(*corev1.Namespace); ok && n.Status.Phase != corev1.NamespaceTerminating {
				n.Status.Phase = corev1.NamespaceTerminating
				changed = true
			}
		}
		if keep || graceful {
			if !changed {
				return cur, false, nil
			}
			out, err := s.commitUpdate(ctx, res, cur, kv, next, updateOptions{dryRun: dry, internal: true})
			if err == errRetry {
				continue
			}
			return out, false, err
		}
		txn := &fsm.Txn{
			Compares: []fsm.Compare{{Key: kv.Key, Target: fsm.CompareModRevision, ModRevision: kv.ModRevision}},
			Ops:      []fsm.Op{{Type: fsm.OpDelete, Key: kv.Key}},
		}
		if svc, ok := cur.(*corev1.Service); ok {
			s.alloc.forDelete(svc).addTo(txn)
		}
		if dry {
			return cur, true, nil
		}
		result, err := s.commit(ctx, txn)
		if err != nil {
			return nil, false, err
		}
		if !result.Succeeded {
			continue
		}
		return cur, true, nil
	}
	return nil, false, conflict(res, name)
}

// applyPropagation sets the orphan and foregroundDeletion finalizers as the
// propagation policy asks; it reports whether the finalizers changed.
func applyPropagation(obj object, opts *metav1.DeleteOptions) bool {
	var policy metav1.DeletionPropagation
	switch {
	case opts.PropagationPolicy != nil:
		policy = *opts.PropagationPolicy
	case opts.OrphanDependents != nil && *opts.OrphanDependents:
		policy = metav1.DeletePropagationOrphan
	case opts.OrphanDependents != nil:
		policy = metav1.DeletePropagationBackground
	default:
		return false
	}
	fins := obj.GetFinalizers()
	var out []string
	for _, f := range fins {
		if f != finalizerOrphan && f != finalizerForeground {
			out = append(out, f)
		}
	}
	switch policy {
	case metav1.DeletePropagationOrphan:
		out = append(out, finalizerOrphan)
	case metav1.DeletePropagationForeground:
		out = append(out, finalizerForeground)
	}
	if equalStrings(out, fins) {
		return false
	}
	obj.SetFinalizers(out)
	return true
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// podGracePeriod is the grace period of a pod deletion: the request's, else
// the pod's; 0 when the pod never ran on a node or already finished.
func podGracePeriod(pod *corev1.Pod, opts *metav1.DeleteOptions) int64 {
	if pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return 0
	}
	if opts.GracePeriodSeconds != nil {
		return *opts.GracePeriodSeconds
	}
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return *pod.Spec.TerminationGracePeriodSeconds
	}
	return corev1.DefaultTerminationGracePeriodSeconds
}

func (q *request) deleteCollection() error {
	opts, err := q.deleteOptions()
	if err != nil {
		return err
	}
	lo, err := q.listOptions()
	if err != nil {
		return err
	}
	lo.Limit, lo.Continue = 0, ""
	page, err := q.listItems(lo)
	if err != nil {
		return err
	}
	var deleted []runtime.Object
	for _, obj := range page.items {
		out, _, err := q.s.deleteObject(q.ctx, q.res, obj.GetNamespace(), obj.GetName(), opts)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		deleted = append(deleted, out)
	}
	list := q.res.newList()
	if err := meta.SetList(list, deleted); err != nil {
		return err
	}
	list.GetObjectKind().SetGroupVersionKind(q.res.gvk.GroupVersion().WithKind(q.res.listKind))
	q.s.writeObject(q.w, q.r, http.StatusOK, list)
	return nil
}
