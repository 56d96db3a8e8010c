package api

import (
	"context"
	"net/http"
	"slices"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"flotilla/api/auth"
)

// Authorizer decides whether a user may do something: what
// SelfSubjectAccessReview asks. *auth.Auth satisfies it.
type Authorizer interface {
	// Authorize decides at (at.User is the user asking); reason explains a
	// denial or names the grant of an allow.
	Authorize(ctx context.Context, at auth.Attributes) (allowed bool, reason string)
}

var (
	selfSubjectAccessReviewGVK = authorizationv1.SchemeGroupVersion.WithKind("SelfSubjectAccessReview")
	selfSubjectReviewGVK       = authenticationv1.SchemeGroupVersion.WithKind("SelfSubjectReview")
)

// serveReview is POST on a review resource: decode, answer, 201 as
// kube-apiserver does. Nothing is stored, so dryRun changes nothing (it is
// still checked for a valid value).
func (q *request) serveReview(verb string) error {
	if verb != "create" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	if _, err := q.dryRun(); err != nil {
		return err
	}
	obj, err := q.decodeRequest(newTyped(q.res))
	if err != nil {
		return err
	}
	out, err := q.res.review(q, obj.(object))
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusCreated, out)
	return nil
}

// selfSubjectAccessReview asks Config.Authorizer whether the requesting
// user may do what the spec describes (kubectl auth can-i). Unlike
// kube's, status.denied stays false: Authorizer does not tell a final
// denial from no opinion.
func (q *request) selfSubjectAccessReview(obj object) (runtime.Object, error) {
	sar := obj.(*authorizationv1.SelfSubjectAccessReview)
	if errs := validateSelfSubjectAccessReview(sar); len(errs) > 0 {
		return nil, apierrors.NewInvalid(selfSubjectAccessReviewGVK.GroupKind(), "", errs)
	}
	authz := q.s.cfg.Authorizer
	if authz == nil {
		return nil, statusError503("authorization is not configured")
	}
	u, ok := auth.UserFrom(q.ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user present on request")
	}
	at := auth.Attributes{User: u}
	if ra := sar.Spec.ResourceAttributes; ra != nil {
		at.ResourceRequest = true
		at.Verb, at.Namespace, at.Name = ra.Verb, ra.Namespace, ra.Name
		at.APIGroup, at.APIVersion, at.Resource, at.Subresource = ra.Group, ra.Version, ra.Resource, ra.Subresource
	} else {
		at.Verb, at.Path = sar.Spec.NonResourceAttributes.Verb, sar.Spec.NonResourceAttributes.Path
	}
	allowed, reason := authz.Authorize(q.ctx, at)
	sar.Status = authorizationv1.SubjectAccessReviewStatus{Allowed: allowed, Reason: reason}
	sar.SetGroupVersionKind(selfSubjectAccessReviewGVK)
	return sar, nil
}

// validateSelfSubjectAccessReview is kube's ValidateSelfSubjectAccessReview:
// exactly one of resourceAttributes and nonResourceAttributes, and no
// metadata. (Field and label selectors are accepted and not evaluated: no
// authorizer here reads them, as kube's RBAC does not.)
func validateSelfSubjectAccessReview(sar *authorizationv1.SelfSubjectAccessReview) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	ra, na := sar.Spec.ResourceAttributes, sar.Spec.NonResourceAttributes
	switch {
	case ra != nil && na != nil:
		errs = append(errs, field.Invalid(spec.Child("nonResourceAttributes"), na, "cannot be specified in combination with resourceAttributes"))
	case ra == nil && na == nil:
		errs = append(errs, field.Invalid(spec.Child("resourceAttributes"), ra, "exactly one of nonResourceAttributes or resourceAttributes must be specified"))
	}
	meta := sar.ObjectMeta
	meta.ManagedFields = nil
	if !apiequality.Semantic.DeepEqual(metav1.ObjectMeta{}, meta) {
		errs = append(errs, field.Invalid(field.NewPath("metadata"), sar.ObjectMeta, "must be empty"))
	}
	return errs
}

// selfSubjectReview answers who the requesting user is (kubectl auth
// whoami). Without a user in the context (no authentication configured)
// it answers 400, as kube-apiserver does.
func (q *request) selfSubjectReview(object) (runtime.Object, error) {
	u, ok := auth.UserFrom(q.ctx)
	if !ok {
		return nil, apierrors.NewBadRequest("no user present on request")
	}
	out := &authenticationv1.SelfSubjectReview{
		ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(q.s.cfg.Now())},
		Status: authenticationv1.SelfSubjectReviewStatus{UserInfo: authenticationv1.UserInfo{
			Username: u.Name, UID: u.UID, Groups: slices.Clone(u.Groups),
		}},
	}
	out.SetGroupVersionKind(selfSubjectReviewGVK)
	return out, nil
}
