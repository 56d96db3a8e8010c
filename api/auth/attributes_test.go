package auth

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRequestAttributes(t *testing.T) {
	cases := []struct {
		name, method, url string
		want              Attributes
	}{
		{"core list", "GET", "/api/v1/pods", Attributes{Verb: "list", APIVersion: "v1", Resource: "pods", ResourceRequest: true}},
		{"ns list", "GET", "/api/v1/namespaces/ns/pods", Attributes{Verb: "list", APIVersion: "v1", Resource: "pods", Namespace: "ns", ResourceRequest: true}},
		{"get", "GET", "/api/v1/namespaces/ns/pods/p", Attributes{Verb: "get", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"head", "HEAD", "/api/v1/namespaces/ns/pods/p", Attributes{Verb: "get", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"create", "POST", "/api/v1/namespaces/ns/pods", Attributes{Verb: "create", APIVersion: "v1", Resource: "pods", Namespace: "ns", ResourceRequest: true}},
		{"update", "PUT", "/api/v1/namespaces/ns/pods/p", Attributes{Verb: "update", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"patch", "PATCH", "/api/v1/namespaces/ns/pods/p", Attributes{Verb: "patch", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"delete", "DELETE", "/api/v1/namespaces/ns/pods/p", Attributes{Verb: "delete", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"deletecollection", "DELETE", "/api/v1/namespaces/ns/pods", Attributes{Verb: "deletecollection", APIVersion: "v1", Resource: "pods", Namespace: "ns", ResourceRequest: true}},
		{"status", "PUT", "/api/v1/namespaces/ns/pods/p/status", Attributes{Verb: "update", APIVersion: "v1", Resource: "pods", Subresource: "status", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"log", "GET", "/api/v1/namespaces/ns/pods/p/log", Attributes{Verb: "get", APIVersion: "v1", Resource: "pods", Subresource: "log", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"exec post", "POST", "/api/v1/namespaces/ns/pods/p/exec?command=ls", Attributes{Verb: "create", APIVersion: "v1", Resource: "pods", Subresource: "exec", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"watch param", "GET", "/api/v1/namespaces/ns/pods?watch=true", Attributes{Verb: "watch", APIVersion: "v1", Resource: "pods", Namespace: "ns", ResourceRequest: true}},
		{"watch 1", "GET", "/api/v1/pods?watch=1", Attributes{Verb: "watch", APIVersion: "v1", Resource: "pods", ResourceRequest: true}},
		{"watch other value is a list (as served)", "GET", "/api/v1/pods?watch=yes", Attributes{Verb: "list", APIVersion: "v1", Resource: "pods", ResourceRequest: true}},
		{"watch named (as served)", "GET", "/api/v1/namespaces/ns/pods/p?watch=true", Attributes{Verb: "watch", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"watch path", "GET", "/api/v1/watch/namespaces/ns/pods", Attributes{Verb: "watch", APIVersion: "v1", Resource: "pods", Namespace: "ns", ResourceRequest: true}},
		{"watch path named", "GET", "/api/v1/watch/namespaces/ns/pods/p", Attributes{Verb: "watch", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"field selector name", "GET", "/api/v1/nodes?fieldSelector=metadata.name%3Dn1", Attributes{Verb: "list", APIVersion: "v1", Resource: "nodes", Name: "n1", ResourceRequest: true}},
		{"field selector other", "GET", "/api/v1/nodes?fieldSelector=spec.unschedulable%3Dtrue", Attributes{Verb: "list", APIVersion: "v1", Resource: "nodes", ResourceRequest: true}},
		{"field selector not exact", "GET", "/api/v1/nodes?fieldSelector=metadata.name!%3Dn1", Attributes{Verb: "list", APIVersion: "v1", Resource: "nodes", ResourceRequest: true}},
		{"namespace itself", "GET", "/api/v1/namespaces/ns", Attributes{Verb: "get", APIVersion: "v1", Resource: "namespaces", Namespace: "ns", Name: "ns", ResourceRequest: true}},
		{"namespace list", "GET", "/api/v1/namespaces", Attributes{Verb: "list", APIVersion: "v1", Resource: "namespaces", ResourceRequest: true}},
		{"namespace status", "PUT", "/api/v1/namespaces/ns/status", Attributes{Verb: "update", APIVersion: "v1", Resource: "namespaces", Subresource: "status", Namespace: "ns", Name: "ns", ResourceRequest: true}},
		{"namespace finalize", "PUT", "/api/v1/namespaces/ns/finalize", Attributes{Verb: "update", APIVersion: "v1", Resource: "namespaces", Subresource: "finalize", Namespace: "ns", Name: "ns", ResourceRequest: true}},
		{"group", "PATCH", "/apis/apps/v1/namespaces/ns/deployments/d/scale", Attributes{Verb: "patch", APIGroup: "apps", APIVersion: "v1", Resource: "deployments", Subresource: "scale", Namespace: "ns", Name: "d", ResourceRequest: true}},
		{"rbac cluster", "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", Attributes{Verb: "create", APIGroup: "rbac.authorization.k8s.io", APIVersion: "v1", Resource: "clusterroles", ResourceRequest: true}},
		{"node proxy", "GET", "/api/v1/nodes/n/proxy/images/x", Attributes{Verb: "get", APIVersion: "v1", Resource: "nodes", Subresource: "proxy", Name: "n", ResourceRequest: true}},
		{"proxy verb", "GET", "/api/v1/proxy/namespaces/ns/pods/p/a/b", Attributes{Verb: "proxy", APIVersion: "v1", Resource: "pods", Namespace: "ns", Name: "p", ResourceRequest: true}},
		{"encoded slash stays in its segment", "PUT", "/api/v1/nodes/n%2Fstatus", Attributes{Verb: "update", APIVersion: "v1", Resource: "nodes", Name: "n/status", ResourceRequest: true}},
		{"unknown method", "OPTIONS", "/api/v1/pods", Attributes{Verb: "", APIVersion: "v1", Resource: "pods", ResourceRequest: true}},
		{"discovery api", "GET", "/api", Attributes{Verb: "get"}},
		{"discovery core", "GET", "/api/v1", Attributes{Verb: "get"}},
		{"discovery group", "GET", "/apis/apps/v1", Attributes{Verb: "get"}},
		{"non-resource", "POST", "/flotilla/v1/tokens", Attributes{Verb: "post"}},
		{"healthz", "GET", "/healthz", Attributes{Verb: "get"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(c.method, c.url, nil)
			u := &User{Name: "u"}
			r = r.WithContext(WithUser(r.Context(), u))
			got := RequestAttributes(r)
			want := c.want
			want.User = u
			want.Path = r.URL.Path
			if got != want {
				t.Errorf("RequestAttributes(%s %s)\n got %+v\nwant %+v", c.method, c.url, got, want)
			}
		})
	}
}

// FuzzRequestAttributes: any method and path give attributes without a
// panic, and the attributes are self-consistent.
func FuzzRequestAttributes(f *testing.F) {
	for _, s := range []string{
		"/api/v1/namespaces/ns/pods/p/status", "/apis/apps/v1/watch/namespaces/x/deployments",
		"/api/v1/pods?watch=1&fieldSelector=metadata.name%3Dx", "/api/v1/proxy/nodes/n/a/b", "/apis",
		"/api/v1/namespaces/a%2Fb/pods", "//api//v1//pods", "/api/v1/watch", "/apis/g/v/proxy", "/internal/v1/apply",
		"/api/v1/namespaces", "/api/v1/namespaces/x/status/y", "/%zz/api",
	} {
		for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "BREW"} {
			f.Add(m, s)
		}
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		if method == "" || strings.ContainsAny(method, " \t\r\n/") {
			return
		}
		r, err := http.NewRequest(method, "http://h"+target, nil)
		if err != nil || !strings.HasPrefix(r.URL.Path, "/") && r.URL.Path != "" {
			return
		}
		a := RequestAttributes(r)
		b := RequestAttributes(r)
		if a != b {
			t.Fatalf("not deterministic: %+v vs %+v", a, b)
		}
		if a.User != nil {
			t.Fatalf("user without one in the context: %+v", a)
		}
		if !a.ResourceRequest {
			if a.Resource != "" || a.Name != "" || a.Namespace != "" || a.Subresource != "" || a.APIGroup != "" {
				t.Fatalf("non-resource request with resource fields: %+v", a)
			}
			if a.Verb != strings.ToLower(method) {
				t.Fatalf("non-resource verb %q for method %q", a.Verb, method)
			}
			return
		}
		p := strings.TrimLeft(r.URL.EscapedPath(), "/")
		if !strings.HasPrefix(p, "api/") && !strings.HasPrefix(p, "apis/") {
			t.Fatalf("resource request outside /api and /apis: %q %+v", r.URL.Path, a)
		}
		if a.Subresource != "" && a.Name == "" {
			t.Fatalf("subresource without a name: %+v", a)
		}
		if a.Name != "" && a.Resource == "" {
			t.Fatalf("name without a resource: %+v", a)
		}
		switch a.Verb {
		case "", "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "proxy":
		default:
			t.Fatalf("unknown verb %q", a.Verb)
		}
		if a.Verb == "list" && r.Method != "GET" && r.Method != "HEAD" {
			t.Fatalf("list from %s", r.Method)
		}
		if (a.Verb == "create" || a.Verb == "update" || a.Verb == "patch" || a.Verb == "delete" || a.Verb == "deletecollection") && r.Method == "GET" {
			t.Fatalf("mutating verb %q from GET", a.Verb)
		}
	})
}

// certState is a TLS state with a verified client certificate (tests of
// this package trust it as the TLS layer would have verified it).
func certState(cn string, orgs ...string) *tls.ConnectionState {
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: orgs}}
	return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{c}}}
}
