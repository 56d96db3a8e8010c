package api

import (
	"fmt"
	"net/http"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"flotilla/internal/satoken"
)

// TokenRequest lifetimes: kube's defaults (1h when unset, at least 10
// minutes) and Flotilla's ceiling, where kube-apiserver's is the
// --service-account-max-token-expiration flag. Longer requests are cut to
// the ceiling, as kube does, not refused.
const (
	tokenDefaultExpiration = time.Hour
	tokenMinExpiration     = 10 * time.Minute
	tokenMaxExpiration     = 48 * time.Hour
)

var tokenRequestGVK = authenticationv1.SchemeGroupVersion.WithKind("TokenRequest")

// The TokenRequest kind is registered here rather than in scheme.go: it is
// the body of one subresource only, and this file is all of it.
func init() { utilruntime.Must(authenticationv1.AddToScheme(scheme)) }

// serveToken is serviceaccounts/{name}/token: TokenRequest create, a JWT
// for the ServiceAccount signed with Config.ServiceAccountKey, optionally
// bound to a pod that must exist with that uid and run as that
// ServiceAccount.
func (q *request) serveToken(verb string) error {
	if verb != "create" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	key := q.s.cfg.ServiceAccountKey
	if key == nil {
		return statusError503("service account tokens are not configured")
	}
	dry, err := q.dryRun()
	if err != nil {
		return err
	}
	into := &authenticationv1.TokenRequest{}
	into.GetObjectKind().SetGroupVersionKind(tokenRequestGVK)
	decoded, err := q.decodeRequest(into)
	if err != nil {
		return err
	}
	req, ok := decoded.(*authenticationv1.TokenRequest)
	if !ok {
		return badRequest("the body is a %T, want a TokenRequest", decoded)
	}
	if req.Name != "" && req.Name != q.name {
		return badRequest("the name of the object (%s) does not match the name on the URL (%s)", req.Name, q.name)
	}
	if req.Namespace != "" && req.Namespace != q.ns {
		return badRequest("the namespace of the provided object does not match the namespace sent on the request")
	}
	exp, errs := tokenExpiration(req.Spec.ExpirationSeconds)
	if len(errs) > 0 {
		return apierrors.NewInvalid(tokenRequestGVK.GroupKind(), q.name, errs)
	}
	obj, _, err := q.s.getFresh(q.ctx, q.res, q.ns, q.name)
	if err != nil {
		return err
	}
	sa := obj.(*corev1.ServiceAccount)
	claims := satoken.Claims{
		Namespace: q.ns, ServiceAccount: sa.Name, ServiceAccountUID: string(sa.UID),
		Audiences: req.Spec.Audiences,
	}
	if len(claims.Audiences) == 0 {
		claims.Audiences = []string{satoken.Issuer}
	}
	if ref := req.Spec.BoundObjectRef; ref != nil {
		pod, err := q.boundPod(ref, sa.Name)
		if err != nil {
			return err
		}
		claims.PodName, claims.PodUID = pod.Name, string(pod.UID)
	}
	now := q.s.cfg.Now()
	claims.IssuedAt, claims.Expiry = now, now.Add(exp)

	out := req.DeepCopy()
	out.SetGroupVersionKind(tokenRequestGVK)
	out.Name, out.Namespace = sa.Name, q.ns
	secs := int64(exp / time.Second)
	out.Spec.ExpirationSeconds = &secs
	out.Spec.Audiences = claims.Audiences
	if !dry {
		tok, err := satoken.Issue(key, claims)
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		out.Status = authenticationv1.TokenRequestStatus{Token: tok, ExpirationTimestamp: metav1.NewTime(claims.Expiry.Truncate(time.Second))}
	}
	q.s.writeObject(q.w, q.r, http.StatusCreated, out)
	return nil
}

// tokenExpiration is the token's lifetime from spec.expirationSeconds.
func tokenExpiration(secs *int64) (time.Duration, field.ErrorList) {
	if secs == nil {
		return tokenDefaultExpiration, nil
	}
	p := field.NewPath("spec", "expirationSeconds")
	switch s := *secs; {
	case s < int64(tokenMinExpiration/time.Second):
		return 0, field.ErrorList{field.Invalid(p, s, "may not specify a duration less than 10 minutes")}
	case s > 1<<32:
		return 0, field.ErrorList{field.Invalid(p, s, "may not specify a duration larger than 2^32 seconds")}
	case s > int64(tokenMaxExpiration/time.Second):
		return tokenMaxExpiration, nil
	default:
		return time.Duration(s) * time.Second, nil
	}
}

// boundPod checks a TokenRequest's boundObjectRef with kube's answers:
// only pods (core v1) can be bound; the pod must exist (404), have the
// given uid when one is given (409) and run as the ServiceAccount (400).
func (q *request) boundPod(ref *authenticationv1.BoundObjectReference, sa string) (*corev1.Pod, error) {
	gvk := schema.FromAPIVersionAndKind(ref.APIVersion, ref.Kind)
	if gvk.Group != "" || gvk.Kind != "Pod" || (gvk.Version != "" && gvk.Version != "v1") {
		return nil, badRequest("cannot bind token to object of type %s: only pods are supported by Flotilla", gvk.String())
	}
	if ref.Name == "" {
		return nil, apierrors.NewInvalid(tokenRequestGVK.GroupKind(), q.name, field.ErrorList{
			field.Required(field.NewPath("spec", "boundObjectRef", "name"), "")})
	}
	podRes := q.s.reg.lookup("", "v1", "pods")
	obj, _, err := q.s.getFresh(q.ctx, podRes, q.ns, ref.Name)
	if err != nil {
		return nil, err
	}
	pod := obj.(*corev1.Pod)
	if ref.UID != "" && ref.UID != pod.UID {
		return nil, apierrors.NewConflict(schema.GroupResource{Resource: "Pod"}, ref.Name,
			fmt.Errorf("the UID in the bound object reference (%s) does not match the UID in record. The object might have been deleted and then recreated", ref.UID))
	}
	if pod.Spec.ServiceAccountName != sa {
		return nil, badRequest("cannot bind token for serviceaccount %q to pod running with different serviceaccount name.", sa)
	}
	return pod, nil
}
