package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla/cluster"
	"flotilla/fsm"
)

// retryAfterSeconds is what 429, 503 and 504 answers ask clients to wait.
const retryAfterSeconds = 1

// toStatus maps any error to the Kubernetes Status the client sees. It is
// the only place where cluster and fsm errors become HTTP codes.
func toStatus(err error) *metav1.Status {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		st := se.Status()
		if st.Status == "" {
			st.Status = metav1.StatusFailure
		}
		return &st
	}
	switch {
	case errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrNotLeader), errors.Is(err, cluster.ErrShutdown):
		return statusOf(apierrors.NewServiceUnavailable(err.Error()), retryAfterSeconds)
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		return statusOf(apierrors.NewTimeoutError("the write may or may not have been committed: "+err.Error(), retryAfterSeconds), retryAfterSeconds)
	case errors.Is(err, fsm.ErrCompacted), errors.Is(err, fsm.ErrWatcherTooSlow), errors.Is(err, fsm.ErrRestored):
		return statusOf(apierrors.NewResourceExpired(err.Error()), 0)
	case errors.Is(err, fsm.ErrValueTooLarge), errors.Is(err, fsm.ErrTxnTooLarge):
		return statusOf(apierrors.NewRequestEntityTooLargeError(err.Error()), 0)
	case errors.Is(err, fsm.ErrFutureRevision):
		return tooLargeRV()
	case errors.Is(err, fsm.ErrInvalidTxn):
		return statusOf(apierrors.NewBadRequest(err.Error()), 0)
	case errors.Is(err, context.DeadlineExceeded):
		return statusOf(apierrors.NewTimeoutError("request did not complete within the allowed duration", retryAfterSeconds), retryAfterSeconds)
	case errors.Is(err, context.Canceled):
		return statusOf(apierrors.NewTimeoutError("request was cancelled", 0), 0)
	}
	return statusOf(apierrors.NewInternalError(err), 0)
}

func statusOf(err *apierrors.StatusError, retryAfter int32) *metav1.Status {
	st := err.Status()
	if retryAfter > 0 {
		if st.Details == nil {
			st.Details = &metav1.StatusDetails{}
		}
		st.Details.RetryAfterSeconds = retryAfter
	}
	return &st
}

// tooLargeRV is kube-apiserver's answer to a resourceVersion this master has
// not reached in time; client-go recognises the cause and retries.
func tooLargeRV() *metav1.Status {
	st := apierrors.NewTimeoutError("Too large resource version", retryAfterSeconds).Status()
	st.Details.Causes = []metav1.StatusCause{{Type: metav1.CauseTypeResourceVersionTooLarge, Message: "Too large resource version"}}
	return &st
}

// errStatus wraps a Status so that handlers can return it as an error.
func errStatus(st *metav1.Status) error { return &apierrors.StatusError{ErrStatus: *st} }

func badRequest(format string, a ...any) error {
	return apierrors.NewBadRequest(fmt.Sprintf(format, a...))
}

func methodNotAllowed(gr schema.GroupResource, method string) error {
	return apierrors.NewMethodNotSupported(gr, method)
}

func unsupportedMediaType(ct string) error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    http.StatusUnsupportedMediaType,
		Reason:  metav1.StatusReasonUnsupportedMediaType,
		Message: fmt.Sprintf("the body of the request was in an unknown format - accepted media types include: %s", ct),
	}}
}

func notAcceptable() error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    http.StatusNotAcceptable,
		Reason:  metav1.StatusReasonNotAcceptable,
		Message: "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
	}}
}

func notFoundPath() error {
	return &apierrors.StatusError{ErrStatus: metav1.Status{
		Status:  metav1.StatusFailure,
		Code:    http.StatusNotFound,
		Reason:  metav1.StatusReasonNotFound,
		Message: "the server could not find the requested resource",
		Details: &metav1.StatusDetails{},
	}}
}
