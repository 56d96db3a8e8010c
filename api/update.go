package api

import (
	"bytes"
	"context"
	"errors"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"flotilla/fsm"
)

// updateFunc computes the next object from (a copy of) the current one and
// returns the resourceVersion precondition ("" = unconditional).
type updateFunc func(cur object) (next object, precondition string, err error)

type updateOptions struct {
	dryRun bool
	// internal: a server-side write (binding, deletion bookkeeping) that
	// skips update validation.
	internal bool
}

func conflict(res *resource, name string) error {
	return apierrors.NewConflict(res.groupResource(), name,
		errors.New("the object has been modified; please apply your changes to the latest version and try again"))
}

// updateObject is the read-modify-write loop of every update: it reads the
// object, lets fn change it, and writes it with a compare on the
// ModRevision it read. A conditional write fails with 409 on a stale
// resourceVersion; an unconditional one retries.
func (s *Server) updateObject(ctx context.Context, res *resource, ns, name, waitRV string, fn updateFunc, opts updateOptions) (object, error) {
	if waitRV != "" {
		n, err := parseRV(waitRV)
		if err != nil {
			return nil, err
		}
		if err := s.waitRevision(ctx, n); err != nil {
			return nil, err
		}
	}
	for attempt := 0; attempt < maxRetries; attempt++ {
		cur, kv, err := s.getFresh(ctx, res, ns, name)
		if err != nil {
			return nil, err
		}
		next, precond, err := fn(cur.DeepCopyObject().(object))
		if err != nil {
			return nil, err
		}
		if precond != "" && precond != cur.GetResourceVersion() {
			return nil, conflict(res, name)
		}
		out, err := s.commitUpdate(ctx, res, cur, kv, next, opts)
		if err == errRetry {
			if precond != "" {
				return nil, conflict(res, name)
			}
			continue
		}
		return out, err
	}
	return nil, conflict(res, name)
}

// commitUpdate defaults, validates and writes next over cur (read from kv).
// An object being deleted whose last finalizer is gone is deleted instead.
// A write that changes nothing is skipped and returns cur.
func (s *Server) commitUpdate(ctx context.Context, res *resource, cur object, kv *fsm.KeyValue, next object, opts updateOptions) (object, error) {
	if svc, ok := next.(*corev1.Service); ok {
		prepareServiceUpdate(svc, cur.(*corev1.Service))
	}
	if res.defaults != nil {
		res.defaults(next)
	}
	if res.generation && !specEqual(cur, next) {
		next.SetGeneration(cur.GetGeneration() + 1)
	}
	if !opts.internal {
		if errs := s.validateUpdate(res, next, cur); len(errs) > 0 {
			return nil, apierrors.NewInvalid(res.gvk.GroupKind(), next.GetName(), errs)
		}
	}
	txn := &fsm.Txn{Compares: []fsm.Compare{{Key: kv.Key, Target: fsm.CompareModRevision, ModRevision: kv.ModRevision}}}
	if shouldDeleteDuringUpdate(cur, next) {
		txn.Ops = append(txn.Ops, fsm.Op{Type: fsm.OpDelete, Key: kv.Key})
		if svc, ok := cur.(*corev1.Service); ok {
			s.alloc.forDelete(svc).addTo(txn)
		}
		if opts.dryRun {
			return next, nil
		}
		result, err := s.commit(ctx, txn)
		if err != nil {
			return nil, err
		}
		if !result.Succeeded {
			return nil, errRetry
		}
		next.SetResourceVersion(formatRV(result.Revision))
		return next, nil
	}
	data, err := encodeForStore(res, next)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(data, kv.Value) {
		return cur, nil
	}
	var claims *allocation
	if svc, ok := next.(*corev1.Service); ok {
		claims, err = s.alloc.forUpdate(s.store(), kv.Key, svc, cur.(*corev1.Service))
		if err != nil {
			return nil, err
		}
		claims.addTo(txn)
		if data, err = encodeForStore(res, next); err != nil {
			return nil, err
		}
	}
	txn.Ops = append([]fsm.Op{{Type: fsm.OpPut, Key: kv.Key, Value: data}}, txn.Ops...)
	if opts.dryRun {
		next.SetResourceVersion(cur.GetResourceVersion())
		return next, nil
	}
	result, err := s.commit(ctx, txn)
	if err != nil {
		return nil, err
	}
	if !result.Succeeded {
		if claims != nil && result.FailedCompare > 0 {
			if err := claims.conflict(txn.Compares[result.FailedCompare].Key); err != nil {
				return nil, err
			}
		}
		return nil, errRetry
	}
	next.SetResourceVersion(formatRV(result.Revision))
	return next, nil
}

func (s *Server) validateUpdate(res *resource, next, cur object) field.ErrorList {
	meta := field.NewPath("metadata")
	errs := apivalidation.ValidateObjectMetaAccessor(next, res.namespaced, res.nameFn, meta)
	errs = append(errs, apivalidation.ValidateObjectMetaAccessorUpdate(next, cur, meta)...)
	if res.validate != nil {
		errs = append(errs, res.validate(next)...)
	}
	if res.validateUpdate != nil {
		errs = append(errs, res.validateUpdate(next, cur)...)
	}
	return errs
}

// shouldDeleteDuringUpdate: an object whose deletion waited only for its
// finalizers (deletionGracePeriodSeconds 0) goes when the last one does.
// A namespace also waits for spec.finalizers.
func shouldDeleteDuringUpdate(cur, next object) bool {
	if len(next.GetFinalizers()) > 0 || cur.GetDeletionTimestamp() == nil {
		return false
	}
	if g := cur.GetDeletionGracePeriodSeconds(); g == nil || *g != 0 {
		return false
	}
	if ns, ok := next.(*corev1.Namespace); ok && len(ns.Spec.Finalizers) > 0 {
		return false
	}
	return true
}
