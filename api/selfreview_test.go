package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/api/auth"
)

const reviewAdminToken = "admin-token-for-review-tests-0123"

// reviewEnv is an API server behind api/auth (Middleware and Authorizer)
// with real ServiceAccount tokens, and a ServiceAccount team/ci that may
// create pods in namespace team and nothing else of its own.
type reviewEnv struct {
	s     *apitest.Server
	admin *kubernetes.Clientset
	ci    *kubernetes.Clientset
	ciTok string
	ciUID string
}

func newReviewEnv(t *testing.T) *reviewEnv {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := apitest.NewServer(t, apitest.Options{API: func(c *api.Config) {
		a, err := auth.New(auth.Config{
			Store:      c.Cluster.Store(),
			AdminToken: reviewAdminToken,
			VerifySA:   auth.VerifySAWith(&key.PublicKey),
			ReadIndex:  c.Cluster.ReadIndex,
			Logger:     slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(func() { cancel(); a.Wait() })
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		c.Middleware, c.Authorizer, c.ServiceAccountKey = a.Middleware, a, key
	}})
	e := &reviewEnv{s: s, admin: clientWithToken(t, s, reviewAdminToken)}
	ctx := ctxT(t)
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa, err := e.admin.CoreV1().ServiceAccounts("team").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ci"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.ciUID = string(sa.UID)
	if _, err := e.admin.RbacV1().Roles("team").Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-creator"},
		Rules:      []rbacv1.PolicyRule{{Verbs: []string{"create"}, APIGroups: []string{""}, Resources: []string{"pods"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RbacV1().RoleBindings("team").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ci-creates-pods"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-creator"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "team", Name: "ci"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := e.admin.CoreV1().ServiceAccounts("team").CreateToken(ctx, "ci", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.ciTok = tr.Status.Token
	e.ci = clientWithToken(t, s, e.ciTok)
	// The RBAC cache follows the store asynchronously: wait until it has
	// the binding (and the default system:basic-user grant the review
	// itself needs).
	waitFor(t, 10*time.Second, "the RBAC cache to grant team/ci create pods", func() bool {
		r, err := e.ci.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar("team", "create", "", "pods"), metav1.CreateOptions{})
		return err == nil && r.Status.Allowed
	})
	return e
}

func clientWithToken(t *testing.T, s *apitest.Server, token string) *kubernetes.Clientset {
	t.Helper()
	rc := rest.CopyConfig(s.Config)
	rc.BearerToken = token
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func ssar(ns, verb, group, resource string) *authorizationv1.SelfSubjectAccessReview {
	return &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: resource},
	}}
}

func nonResourceSSAR(verb, path string) *authorizationv1.SelfSubjectAccessReview {
	return &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		NonResourceAttributes: &authorizationv1.NonResourceAttributes{Verb: verb, Path: path},
	}}
}

func TestSelfSubjectAccessReview(t *testing.T) {
	e := newReviewEnv(t)
	ctx := ctxT(t)
	for _, c := range []struct {
		name    string
		client  *kubernetes.Clientset
		review  *authorizationv1.SelfSubjectAccessReview
		allowed bool
		reason  string // a substring of status.reason
	}{
		{"granted by the RoleBinding", e.ci, ssar("team", "create", "", "pods"), true, `RoleBinding "ci-creates-pods"`},
		{"verb not granted", e.ci, ssar("team", "delete", "", "pods"), false, ""},
		{"other namespace", e.ci, ssar("default", "create", "", "pods"), false, ""},
		{"other group", e.ci, ssar("team", "create", "apps", "deployments"), false, ""},
		{"subresource not granted", e.ci, &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "team", Verb: "create", Resource: "pods", Subresource: "exec", Name: "p"},
		}}, false, ""},
		{"self review by system:basic-user", e.ci, ssar("", "create", "authorization.k8s.io", "selfsubjectaccessreviews"), true, ""},
		{"non-resource by system:public-info-viewer", e.ci, nonResourceSSAR("get", "/healthz"), true, ""},
		{"non-resource not granted", e.ci, nonResourceSSAR("get", "/metrics"), false, ""},
		{"internal path", e.ci, nonResourceSSAR("get", "/internal/raft"), false, "only servers"},
		{"system:masters", e.admin, ssar("kube-system", "delete", "", "secrets"), true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			rev := e.s.Cluster.Store().Revision()
			got, err := c.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, c.review, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Allowed != c.allowed || got.Status.Denied {
				t.Errorf("status %+v, want allowed=%v", got.Status, c.allowed)
			}
			if !strings.Contains(got.Status.Reason, c.reason) {
				t.Errorf("reason %q lacks %q", got.Status.Reason, c.reason)
			}
			if !reflect.DeepEqual(got.Spec, c.review.Spec) {
				t.Errorf("spec %+v, want the request's", got.Spec)
			}
			if now := e.s.Cluster.Store().Revision(); now != rev {
				t.Errorf("the review wrote to the store: revision %d → %d", rev, now)
			}
		})
	}
}

func TestSelfSubjectAccessReviewValidation(t *testing.T) {
	e := newReviewEnv(t)
	ctx := ctxT(t)
	both := ssar("team", "get", "", "pods")
	both.Spec.NonResourceAttributes = &authorizationv1.NonResourceAttributes{Verb: "get", Path: "/healthz"}
	named := ssar("team", "get", "", "pods")
	named.Name = "x"
	for _, c := range []struct {
		name   string
		review *authorizationv1.SelfSubjectAccessReview
		field  string
	}{
		{"both", both, "spec.nonResourceAttributes"},
		{"neither", &authorizationv1.SelfSubjectAccessReview{}, "spec.resourceAttributes"},
		{"metadata", named, "metadata"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.ci.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, c.review, metav1.CreateOptions{})
			if fields := statusCauses(t, err); !slices.Equal(fields, []string{c.field}) {
				t.Errorf("causes %v, want [%s]", fields, c.field)
			}
		})
	}
}

func TestSelfSubjectReview(t *testing.T) {
	e := newReviewEnv(t)
	ctx := ctxT(t)
	for _, c := range []struct {
		name   string
		client *kubernetes.Clientset
		want   authenticationv1.UserInfo
	}{
		{"service account", e.ci, authenticationv1.UserInfo{
			Username: "system:serviceaccount:team:ci", UID: e.ciUID,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"},
		}},
		{"admin", e.admin, authenticationv1.UserInfo{Username: "flotilla:admin", Groups: []string{"system:masters", "system:authenticated"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			u := got.Status.UserInfo
			if u.Username != c.want.Username || u.UID != c.want.UID || !slices.Equal(u.Groups, c.want.Groups) {
				t.Errorf("userInfo %+v, want %+v", u, c.want)
			}
			if got.CreationTimestamp.IsZero() {
				t.Error("no creationTimestamp")
			}
		})
	}
	// Without credentials the middleware answers before the review.
	anon := clientWithToken(t, e.s, "")
	if _, err := anon.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("anonymous: %v, want 401", err)
	}
}

// TestSelfReviewsWithoutAuth: no Authorizer, no user in the context.
func TestSelfReviewsWithoutAuth(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	_, err := s.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar("default", "get", "", "pods"), metav1.CreateOptions{})
	if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "authorization is not configured") {
		t.Errorf("SelfSubjectAccessReview: %v, want 503 authorization is not configured", err)
	}
	_, err = s.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{}, metav1.CreateOptions{})
	if !apierrors.IsInvalid(err) {
		t.Errorf("invalid SelfSubjectAccessReview: %v, want 422 before 503", err)
	}
	_, err = s.Client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "no user present on request") {
		t.Errorf("SelfSubjectReview: %v, want 400 no user present on request", err)
	}
	for _, p := range []string{"/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "/apis/authentication.k8s.io/v1/selfsubjectreviews"} {
		if r := do(t, s, http.MethodGet, p, "", nil); r.code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s: %d %s, want 405", p, r.code, r.body)
		}
		if r := do(t, s, http.MethodPost, p+"/x", "application/json", "{}"); r.code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s/x: %d %s, want 405", p, r.code, r.body)
		}
	}
}

func TestSelfReviewsDiscovery(t *testing.T) {
	s := apitest.NewServer(t)
	want := map[string]string{
		"authorization.k8s.io/v1":  "selfsubjectaccessreviews",
		"authentication.k8s.io/v1": "selfsubjectreviews",
	}
	// Aggregated discovery (what kubectl and client-go read first).
	_, lists, err := s.Client.Discovery().ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, l := range lists {
		for _, r := range l.APIResources {
			if want[l.GroupVersion] == r.Name {
				found[l.GroupVersion] = true
				if r.Namespaced || !slices.Equal(r.Verbs, []string{"create"}) {
					t.Errorf("%s %s: namespaced %v, verbs %v; want cluster-scoped, [create]", l.GroupVersion, r.Name, r.Namespaced, r.Verbs)
				}
			}
		}
	}
	for gv, name := range want {
		if !found[gv] {
			t.Errorf("aggregated discovery lacks %s %s", gv, name)
		}
		// The per-group-version document.
		l, err := s.Client.Discovery().ServerResourcesForGroupVersion(gv)
		if err != nil {
			t.Fatalf("%s: %v", gv, err)
		}
		if len(l.APIResources) != 1 || l.APIResources[0].Name != name || !slices.Equal(l.APIResources[0].Verbs, []string{"create"}) {
			t.Errorf("%s: %+v", gv, l.APIResources)
		}
	}
	// OpenAPI documents the create operation only.
	r := do(t, s, http.MethodGet, "/openapi/v3/apis/authorization.k8s.io/v1", "", nil)
	if r.code != http.StatusOK || !strings.Contains(string(r.body), "createAuthorizationV1SelfSubjectAccessReview") ||
		strings.Contains(string(r.body), "listAuthorizationV1SelfSubjectAccessReview") {
		t.Errorf("openapi v3 authorization.k8s.io/v1: %d, create documented %v", r.code, strings.Contains(string(r.body), "createAuthorizationV1SelfSubjectAccessReview"))
	}
}

// TestSelfReviewsKubectl runs kubectl auth can-i and whoami. (A "no" from
// can-i calls os.Exit(1), so only allowed checks can run in-process; the
// denials are TestSelfSubjectAccessReview's.)
func TestSelfReviewsKubectl(t *testing.T) {
	e := newReviewEnv(t)
	// kubectl (clientcmd) sends credentials only over TLS: serve the same
	// API over HTTPS too, trusted through --certificate-authority.
	hs := httptest.NewTLSServer(e.s.API.Handler())
	t.Cleanup(hs.Close)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsServer := &apitest.Server{Server: hs}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"auth", "can-i", "create", "pods", "-n", "team"}, []string{"yes"}},
		{[]string{"auth", "can-i", "get", "/healthz"}, []string{"yes"}},
		{[]string{"auth", "whoami"}, []string{"Username", "system:serviceaccount:team:ci", e.ciUID, "system:serviceaccounts:team"}},
		{[]string{"auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"}, []string{"system:serviceaccount:team:ci"}},
	} {
		args := append([]string{"--certificate-authority", ca, "--token", e.ciTok}, c.args...)
		out, errOut, code := kubectl(t, tlsServer, args...)
		if code != 0 {
			t.Errorf("kubectl %v: exit %d: %s%s", c.args, code, out, errOut)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("kubectl %v: output lacks %q:\n%s", c.args, w, out)
			}
		}
	}
}
