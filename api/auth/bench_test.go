package auth

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// benchAuth is an Auth over a store with 1,000 namespaces, each with a Role
// and a RoleBinding for its own user, plus cluster-wide group bindings.
func benchAuth(b *testing.B) *Auth {
	m := newMemStore(b)
	for i := range 1000 {
		ns := fmt.Sprintf("ns%d", i)
		m.put("/rbac.authorization.k8s.io/roles/"+ns+"/dev", role(ns, "dev",
			rbacv1.PolicyRule{Verbs: []string{"get", "list", "watch"}, APIGroups: []string{""}, Resources: []string{"pods", "services", "configmaps"}},
			rbacv1.PolicyRule{Verbs: []string{"create", "update", "patch", "delete"}, APIGroups: []string{"apps"}, Resources: []string{"deployments", "deployments/scale"}},
		))
		m.put("/rbac.authorization.k8s.io/rolebindings/"+ns+"/dev", binding(ns, "dev", "Role", "dev", userSubject(fmt.Sprintf("user%d", i))))
	}
	for i := range 50 {
		name := fmt.Sprintf("team%d", i)
		m.put("/rbac.authorization.k8s.io/clusterroles/"+name, role("", name,
			rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{"*"}, Resources: []string{fmt.Sprintf("things%d", i)}}))
		m.put("/rbac.authorization.k8s.io/clusterrolebindings/"+name, binding("", name, "ClusterRole", name,
			rbacv1.Subject{Kind: rbacv1.GroupKind, Name: name}))
	}
	return startAuth(b, Config{Store: m.st})
}

// BenchmarkAuthorize is the RBAC hit path: a user allowed by a RoleBinding
// in its namespace, among many bindings.
func BenchmarkAuthorize(b *testing.B) {
	a := benchAuth(b)
	u := &User{Name: "user500", Groups: []string{"team7", GroupAuthenticated}}
	at := Attributes{User: u, Verb: "patch", APIGroup: "apps", APIVersion: "v1", Resource: "deployments", Subresource: "scale",
		Namespace: "ns500", Name: "web", ResourceRequest: true}
	ctx := context.Background()
	if ok, _ := a.Authorize(ctx, at); !ok {
		b.Fatal("not allowed")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if ok, _ := a.Authorize(ctx, at); !ok {
			b.Fatal("not allowed")
		}
	}
}

// BenchmarkMiddleware is the whole per-request cost: authentication by
// bearer token, attributes and RBAC (a ServiceAccount-less user is not
// possible with a token, so the RBAC case uses a client certificate user
// put in place by a TLS state) and the system:masters fast path.
func BenchmarkMiddleware(b *testing.B) {
	a := benchAuth(b)
	a.admin = []byte("admin-token")
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	h := a.Middleware(next)
	run := func(b *testing.B, r *http.Request) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("code %d: %s", w.Code, w.Body)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
		}
	}
	b.Run("masters", func(b *testing.B) {
		r := httptest.NewRequest("GET", "/api/v1/namespaces/ns500/pods/p", nil)
		r.Header.Set("Authorization", "Bearer admin-token")
		run(b, r)
	})
	b.Run("rbac", func(b *testing.B) {
		r := httptest.NewRequest("GET", "/api/v1/namespaces/ns500/pods/p", nil)
		r.TLS = certState("user500", "team7")
		run(b, r)
	})
}
