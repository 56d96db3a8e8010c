package auth_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api/auth"
)

// route is one verb of one resource or subresource, from discovery.
type route struct {
	group, version string
	resource       string // "pods" or "pods/status"
	namespaced     bool
	verb           string
}

func (r route) String() string {
	return fmt.Sprintf("%s %s/%s %s", r.verb, r.group, r.version, r.resource)
}

// request is the HTTP request that exercises the route.
func (r route) request() (method, path string, body any) {
	base := "/api/" + r.version
	if r.group != "" {
		base = "/apis/" + r.group + "/" + r.version
	}
	res, sub, _ := strings.Cut(r.resource, "/")
	coll := base + "/" + res
	if r.namespaced {
		coll = base + "/namespaces/default/" + res
	}
	item := coll + "/probe"
	if res == "namespaces" {
		item = base + "/namespaces/probe"
	}
	if sub != "" {
		item += "/" + sub
	}
	switch r.verb {
	case "get":
		return http.MethodGet, item, nil
	case "list":
		return http.MethodGet, coll, nil
	case "watch":
		return http.MethodGet, coll + "?watch=1", nil
	case "create":
		if sub != "" {
			return http.MethodPost, item, "{}"
		}
		return http.MethodPost, coll, "{}"
	case "update":
		return http.MethodPut, item, "{}"
	case "patch":
		return http.MethodPatch, item, "{}"
	case "delete":
		return http.MethodDelete, item, nil
	case "deletecollection":
		return http.MethodDelete, coll, nil
	}
	return "", "", nil
}

// discover lists every route the server announces, as the admin.
func discover(t *testing.T, e *env) []route {
	t.Helper()
	var routes []route
	addList := func(group, version, path string) {
		var l metav1.APIResourceList
		if err := json.Unmarshal(e.must(e.admin(), 200, "GET", path, nil), &l); err != nil {
			t.Fatal(err)
		}
		for _, r := range l.APIResources {
			for _, v := range r.Verbs {
				routes = append(routes, route{group: group, version: version, resource: r.Name, namespaced: r.Namespaced, verb: v})
			}
		}
	}
	addList("", "v1", "/api/v1")
	var groups metav1.APIGroupList
	if err := json.Unmarshal(e.must(e.admin(), 200, "GET", "/apis", nil), &groups); err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		for _, v := range g.Versions {
			addList(g.Name, v.Version, "/apis/"+g.Name+"/"+v.Version)
		}
	}
	return routes
}

func isMutating(verb string) bool {
	switch verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return true
	}
	return false
}

// TestNoRoleForbiddenOnEveryRoute: a token user and a certificate user
// with no role get 403 on every verb of every resource and subresource the
// server announces, worded as kube's; and a user granted exactly one verb
// of one resource passes authorization for that route and no other verb.
func TestNoRoleForbiddenOnEveryRoute(t *testing.T) {
	e := newEnv(t)
	routes := discover(t, e)
	mutatingRoutes := 0
	for _, r := range routes {
		if isMutating(r.verb) {
			mutatingRoutes++
		}
	}
	// The registry serves at least these; a broken discovery must not make
	// the test pass vacuously.
	for _, want := range []string{"create /v1 pods", "update /v1 pods/status", "patch /v1 nodes/status", "create /v1 pods/binding",
		"deletecollection /v1 configmaps", "update apps/v1 deployments/scale", "create /v1 serviceaccounts/token", "update /v1 namespaces/finalize"} {
		if !slices.ContainsFunc(routes, func(r route) bool { return r.String() == want }) {
			t.Errorf("discovery has no route %q", want)
		}
	}
	if mutatingRoutes < 40 {
		t.Fatalf("only %d mutating routes discovered", mutatingRoutes)
	}

	e.put("/core/serviceaccounts/default/norole", map[string]any{"metadata": map[string]any{"name": "norole", "namespace": "default", "uid": "u-norole"}})
	noRoleToken := e.saToken(auth.SAClaims{Namespace: "default", ServiceAccount: "norole", ServiceAccountUID: "u-norole"})
	noRoleCert := e.certCred("alice", "developers")
	// Except: kube's system:basic-user, bound to system:authenticated, lets
	// every user create the self-reviews (kubectl auth can-i, whoami).
	everyone := map[string]bool{
		"create authorization.k8s.io/v1 selfsubjectaccessreviews": true,
		"create authentication.k8s.io/v1 selfsubjectreviews":      true,
	}
	for _, c := range []cred{noRoleToken, noRoleCert} {
		for _, r := range routes {
			method, path, body := r.request()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp := e.doCtx(ctx, c, method, path, body)
			cancel()
			if everyone[r.String()] {
				if resp.code == http.StatusUnauthorized || resp.code == http.StatusForbidden {
					t.Errorf("%v as %s: %s, want it authorized (system:basic-user)", r, c.name, resp)
				}
				continue
			}
			if resp.code != http.StatusForbidden || resp.status.Reason != metav1.StatusReasonForbidden {
				t.Errorf("%v as %s: %s, want 403 Forbidden", r, c.name, resp)
				continue
			}
			if want := fmt.Sprintf("User %q cannot %s resource %q in API group %q", c.name, r.verb, r.resource, r.group); !strings.Contains(resp.status.Message, want) {
				t.Errorf("%v as %s: message %q does not say %q", r, c.name, resp.status.Message, want)
			}
		}
	}

	// The exact wording of kube-apiserver.
	resp := e.do(noRoleCert, "POST", "/api/v1/namespaces/default/pods", `{"metadata":{"name":"x"}}`)
	if want := `pods is forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace "default"`; resp.status.Message != want {
		t.Errorf("message %q, want %q", resp.status.Message, want)
	}
	resp = e.do(noRoleCert, "DELETE", "/apis/apps/v1/namespaces/default/deployments/web", nil)
	if want := `deployments.apps "web" is forbidden: User "alice" cannot delete resource "deployments" in API group "apps" in the namespace "default"`; resp.status.Message != want {
		t.Errorf("message %q, want %q", resp.status.Message, want)
	}
	if d := resp.status.Details; d == nil || d.Name != "web" || d.Group != "apps" || d.Kind != "deployments" {
		t.Errorf("details %+v, want name web, group apps, kind deployments", d)
	}
	resp = e.do(noRoleCert, "PUT", "/api/v1/nodes/n1/status", "{}")
	if want := `nodes "n1" is forbidden: User "alice" cannot update resource "nodes/status" in API group "" at the cluster scope`; resp.status.Message != want {
		t.Errorf("message %q, want %q", resp.status.Message, want)
	}
	resp = e.do(noRoleCert, "GET", "/metrics", nil)
	if want := `forbidden: User "alice" cannot get path "/metrics"`; resp.code != 403 || resp.status.Message != want {
		t.Errorf("%s, want 403 %q", resp, want)
	}

	// Precision: granted exactly this verb → authorized; granted every
	// other verb of the resource → 403.
	prober := e.certCred("prober")
	// The binding is written again before each route: a granted
	// deletecollection of clusterrolebindings removes it.
	proberBinding := bind("ClusterRoleBinding", "", "prober", "ClusterRole", "probe", user("prober"))
	verbsOf := map[string][]string{}
	for _, r := range routes {
		k := r.group + "/" + r.resource
		verbsOf[k] = append(verbsOf[k], r.verb)
	}
	deniedByAuth := func(resp response) bool {
		return resp.code == http.StatusUnauthorized ||
			(resp.code == http.StatusForbidden && strings.Contains(resp.status.Message, `User "prober" cannot`))
	}
	// Namespaces last: deleting them all would change what other routes answer.
	slices.SortStableFunc(routes, func(a, b route) int {
		return boolInt(strings.HasPrefix(a.resource, "namespaces")) - boolInt(strings.HasPrefix(b.resource, "namespaces"))
	})
	for _, r := range routes {
		method, path, body := r.request()
		var others []string
		for _, v := range verbsOf[r.group+"/"+r.resource] {
			if v != r.verb {
				others = append(others, v)
			}
		}
		e.put("/rbac.authorization.k8s.io/clusterrolebindings/prober", proberBinding)
		if len(others) > 0 {
			e.waitRBAC(e.put("/rbac.authorization.k8s.io/clusterroles/probe", clusterRole("probe",
				rbacv1.PolicyRule{Verbs: others, APIGroups: []string{r.group}, Resources: []string{r.resource}})))
			if resp := e.do(prober, method, path, body); !deniedByAuth(resp) {
				t.Errorf("%v granted only %v: %s, want 403", r, others, resp)
			}
		}
		grant := []string{r.verb}
		if r.verb == "get" && slices.Contains([]string{"pods/exec", "pods/attach", "pods/portforward"}, r.resource) {
			grant = append(grant, "create") // a websocket exec needs both
		}
		e.waitRBAC(e.put("/rbac.authorization.k8s.io/clusterroles/probe", clusterRole("probe",
			rbacv1.PolicyRule{Verbs: grant, APIGroups: []string{r.group}, Resources: []string{r.resource}})))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp := e.doCtx(ctx, prober, method, path, body)
		cancel()
		if deniedByAuth(resp) {
			t.Errorf("%v granted exactly that: %s", r, resp)
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestUnauthenticated: no credentials (or bad ones) get 401 everywhere but
// the anonymous paths.
func TestUnauthenticated(t *testing.T) {
	e := newEnv(t)
	paths := []string{"/api", "/api/v1", "/apis", "/apis/apps/v1", "/api/v1/pods", "/api/v1/namespaces/default/pods/x",
		"/metrics", "/openapi/v2", "/internal/v1/status", "/flotilla/v1/tokens", "/flotilla/v1/gossip/keyring", "/",
		"/healthz/../api/v1/secrets", "/healthzx", "/versions", "/flotilla/v1/joinx"}
	for _, r := range discover(t, e) {
		method, path, _ := r.request()
		paths = append(paths, method+" "+path)
	}
	bad := e.tokenCred("bad", "not-a-token")
	badJWT := e.tokenCred("badjwt", "a.b.c")
	for _, p := range paths {
		method, path := "GET", p
		if m, rest, ok := strings.Cut(p, " "); ok {
			method, path = m, rest
		}
		for _, c := range []cred{e.anonymous(), bad, badJWT} {
			resp := e.do(c, method, path, nil)
			if resp.code != http.StatusUnauthorized || resp.status.Reason != metav1.StatusReasonUnauthorized || resp.status.Message != "Unauthorized" {
				t.Errorf("%s %s as %s: %s, want 401 Unauthorized", method, path, c.name, resp)
			}
		}
	}
	for _, p := range []string{"/healthz", "/livez", "/readyz", "/version", "/healthz/ping", "/readyz/", "/livez?verbose"} {
		for _, c := range []cred{e.anonymous(), bad} {
			if resp := e.do(c, "GET", p, nil); resp.code != http.StatusOK {
				t.Errorf("GET %s as %s: %s, want 200", p, c.name, resp)
			}
		}
	}
	// The join endpoints are anonymous (their handler, not mounted here,
	// checks the join token): authorization lets them through to a 404.
	if resp := e.do(bad, "POST", "/flotilla/v1/join", "{}"); resp.code != http.StatusNotFound {
		t.Errorf("POST /flotilla/v1/join: %s, want 404 from the router", resp)
	}
}

// TestInternalOnlyForServers: /internal/ answers only server certificates;
// the admin token (system:masters) and nodes are refused.
func TestInternalOnlyForServers(t *testing.T) {
	e := newEnv(t)
	server := e.certCred("flotilla:server:s1", "flotilla:servers", "system:masters")
	node := e.certCred("system:node:n1", "system:nodes")
	for _, p := range []string{"/internal/v1/status", "/internal", "/x/../internal/v1/apply"} {
		if resp := e.do(server, "GET", p, nil); resp.code == 401 || resp.code == 403 {
			t.Errorf("GET %s as server: %s", p, resp)
		}
		for _, c := range []cred{e.admin(), node} {
			if resp := e.do(c, "GET", p, nil); resp.code != 403 {
				t.Errorf("GET %s as %s: %s, want 403", p, c.name, resp)
			}
		}
	}
	// A server is also system:masters for the Kubernetes API.
	e.must(server, 201, "POST", "/api/v1/namespaces/default/configmaps", `{"metadata":{"name":"by-server"}}`)
	e.must(e.admin(), 200, "GET", "/api/v1/namespaces/default/configmaps/by-server", nil)
}

func podJSON(name, node string, extra string) string {
	spec := `"containers":[{"name":"c","image":"busybox"` + extra + `}]`
	if node != "" {
		spec = `"nodeName":"` + node + `",` + spec
	}
	return `{"metadata":{"name":"` + name + `"},"spec":{"automountServiceAccountToken":false,` + spec + `}}`
}

// TestNodeRestriction: a node may write its own Node and the pods bound to
// it, read what its pods reference, and nothing of another node's.
func TestNodeRestriction(t *testing.T) {
	e := newEnv(t)
	n1 := e.certCred("system:node:n1", "system:nodes")
	n2 := e.certCred("system:node:n2", "system:nodes")
	fake := e.certCred("system:node:n1") // the name without the group is no node

	// Nodes register themselves; one node cannot create another.
	e.must(n1, 403, "POST", "/api/v1/nodes", `{"apiVersion":"v1","kind":"Node","metadata":{"name":"n2"}}`)
	e.must(n1, 403, "POST", "/api/v1/nodes", `{"apiVersion":"v1","kind":"Node","metadata":{"generateName":"n"}}`)
	e.must(fake, 403, "POST", "/api/v1/nodes", `{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}`)
	e.must(n1, 201, "POST", "/api/v1/nodes", `{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}}`)
	e.must(n2, 201, "POST", "/api/v1/nodes", "apiVersion: v1\nkind: Node\nmetadata:\n  name: n2\n")

	// Node objects: own writable, other's not; all readable.
	status := `{"status":{"conditions":[{"type":"Ready","status":"True"}]}}`
	e.must(n1, 200, "PATCH", "/api/v1/nodes/n1/status", status)
	e.must(n1, 200, "PATCH", "/api/v1/nodes/n1", `{"metadata":{"labels":{"a":"b"}}}`)
	e.must(n1, 403, "PATCH", "/api/v1/nodes/n2/status", status)
	e.must(n1, 403, "PATCH", "/api/v1/nodes/n2", `{"metadata":{"labels":{"a":"b"}}}`)
	e.must(n1, 403, "PUT", "/api/v1/nodes/n2", e.must(n1, 200, "GET", "/api/v1/nodes/n2", nil))
	e.must(n1, 403, "PUT", "/api/v1/nodes/n2/status", e.must(n1, 200, "GET", "/api/v1/nodes/n2", nil))
	e.must(n1, 200, "PUT", "/api/v1/nodes/n1/status", e.must(n1, 200, "GET", "/api/v1/nodes/n1", nil))
	e.must(n1, 403, "DELETE", "/api/v1/nodes/n2", nil)
	e.must(n1, 403, "DELETE", "/api/v1/nodes/n1", nil)
	e.must(n1, 200, "GET", "/api/v1/nodes", nil)
	e.must(n1, 200, "GET", "/api/v1/nodes?fieldSelector=metadata.name%3Dn1", nil)

	// Pods bound to each node, referencing secrets, config maps and a
	// service account.
	admin := e.admin()
	for _, obj := range []string{
		`{"metadata":{"name":"s1"}}`, `{"metadata":{"name":"s2"}}`, `{"metadata":{"name":"env1"}}`, `{"metadata":{"name":"pull1"}}`,
	} {
		e.must(admin, 201, "POST", "/api/v1/namespaces/default/secrets", obj)
	}
	for _, obj := range []string{`{"metadata":{"name":"cm1"}}`, `{"metadata":{"name":"cm2"}}`, `{"metadata":{"name":"proj1"}}`} {
		e.must(admin, 201, "POST", "/api/v1/namespaces/default/configmaps", obj)
	}
	for _, obj := range []string{`{"metadata":{"name":"sa1"}}`, `{"metadata":{"name":"sa2"}}`} {
		e.must(admin, 201, "POST", "/api/v1/namespaces/default/serviceaccounts", obj)
	}
	p1 := `{"metadata":{"name":"p1"},"spec":{"nodeName":"n1","serviceAccountName":"sa1","automountServiceAccountToken":false,
		"imagePullSecrets":[{"name":"pull1"}],
		"volumes":[{"name":"s","secret":{"secretName":"s1"}},{"name":"c","configMap":{"name":"cm1"}},
			{"name":"p","projected":{"sources":[{"configMap":{"name":"proj1"}}]}}],
		"containers":[{"name":"c","image":"busybox","env":[{"name":"E","valueFrom":{"secretKeyRef":{"name":"env1","key":"k"}}}]}]}}`
	e.must(admin, 201, "POST", "/api/v1/namespaces/default/pods", p1)
	p2 := `{"metadata":{"name":"p2"},"spec":{"nodeName":"n2","serviceAccountName":"sa2","automountServiceAccountToken":false,
		"volumes":[{"name":"s","secret":{"secretName":"s2"}}],
		"containers":[{"name":"c","image":"busybox","envFrom":[{"configMapRef":{"name":"cm2"}}]}]}}`
	e.waitPods(e.must(admin, 201, "POST", "/api/v1/namespaces/default/pods", p2))

	e.must(n1, 200, "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1", nil)
	e.must(n1, 200, "GET", "/api/v1/namespaces/default/pods/p2", nil)
	podStatus := `{"status":{"phase":"Running"}}`
	e.must(n1, 200, "PATCH", "/api/v1/namespaces/default/pods/p1/status", podStatus)
	e.must(n1, 403, "PATCH", "/api/v1/namespaces/default/pods/p2/status", podStatus)
	e.must(n2, 200, "PATCH", "/api/v1/namespaces/default/pods/p2/status", podStatus)
	e.must(n1, 403, "PUT", "/api/v1/namespaces/default/pods/p2/status", e.must(admin, 200, "GET", "/api/v1/namespaces/default/pods/p2", nil))
	e.must(n1, 200, "PUT", "/api/v1/namespaces/default/pods/p1/status", e.must(admin, 200, "GET", "/api/v1/namespaces/default/pods/p1", nil))
	// NodeRestriction is final: a node may not change a pod's spec, nor
	// create or delete-collect pods, even its own.
	e.must(n1, 403, "PATCH", "/api/v1/namespaces/default/pods/p1", `{"metadata":{"labels":{"x":"y"}}}`)
	e.must(n1, 403, "POST", "/api/v1/namespaces/default/pods", podJSON("p3", "n1", ""))
	e.must(n1, 403, "DELETE", "/api/v1/namespaces/default/pods", nil)
	e.must(n1, 404, "PATCH", "/api/v1/namespaces/default/pods/gone/status", podStatus)

	// What the pods reference.
	for _, c := range []struct {
		path string
		n1   int
	}{
		{"/api/v1/namespaces/default/secrets/s1", 200},
		{"/api/v1/namespaces/default/secrets/env1", 200},
		{"/api/v1/namespaces/default/secrets/pull1", 200},
		{"/api/v1/namespaces/default/configmaps/cm1", 200},
		{"/api/v1/namespaces/default/configmaps/proj1", 200},
		{"/api/v1/namespaces/default/serviceaccounts/sa1", 200},
		{"/api/v1/namespaces/default/secrets/s2", 403},
		{"/api/v1/namespaces/default/configmaps/cm2", 403},
		{"/api/v1/namespaces/default/serviceaccounts/sa2", 403},
		{"/api/v1/namespaces/default/secrets", 403},
		{"/api/v1/secrets", 403},
		{"/api/v1/namespaces/default/configmaps?watch=1", 403},
	} {
		if resp := e.do(n1, "GET", c.path, nil); resp.code != c.n1 {
			t.Errorf("GET %s as n1: %s, want %d", c.path, resp, c.n1)
		}
	}
	e.must(n2, 200, "GET", "/api/v1/namespaces/default/configmaps/cm2", nil)
	e.must(n1, 403, "PUT", "/api/v1/namespaces/default/secrets/s1", `{"metadata":{"name":"s1"}}`)
	if resp := e.do(n1, "POST", "/api/v1/namespaces/default/serviceaccounts/sa1/token", `{"spec":{}}`); resp.code == 401 || resp.code == 403 {
		t.Errorf("token for sa1 as n1: %s", resp)
	}
	e.must(n1, 403, "POST", "/api/v1/namespaces/default/serviceaccounts/sa2/token", `{"spec":{}}`)

	// Reads the agent makes, events, the gossip keyring.
	e.must(n1, 200, "GET", "/api/v1/namespaces/default/services?resourceVersion=0", nil)
	e.must(n1, 200, "GET", "/api/v1/namespaces/default/services/kubernetes", nil)
	e.must(n1, 200, "GET", "/api/v1/endpoints", nil)
	e.must(n1, 200, "GET", "/api/v1/namespaces", nil)
	e.must(n1, 201, "POST", "/api/v1/namespaces/kube-system/events",
		`{"metadata":{"name":"ev1"},"involvedObject":{"kind":"Node","name":"n1"},"reason":"Test","message":"m","type":"Normal"}`)
	if resp := e.do(n1, "GET", "/flotilla/v1/gossip/keyring", nil); resp.code == 401 || resp.code == 403 {
		t.Errorf("keyring as n1: %s", resp)
	}
	e.must(n1, 403, "GET", "/flotilla/v1/tokens", nil)
	e.must(n1, 403, "POST", "/apis/apps/v1/namespaces/default/deployments", "{}")
	e.must(n1, 403, "POST", "/api/v1/namespaces/default/pods/p1/eviction", "{}")

	// A pod bound a moment ago (the index may not have it yet) is found.
	e.must(admin, 201, "POST", "/api/v1/namespaces/default/secrets", `{"metadata":{"name":"late"}}`)
	e.must(admin, 201, "POST", "/api/v1/namespaces/default/pods",
		`{"metadata":{"name":"p4"},"spec":{"nodeName":"n1","automountServiceAccountToken":false,"volumes":[{"name":"s","secret":{"secretName":"late"}}],"containers":[{"name":"c","image":"busybox"}]}}`)
	e.must(n1, 200, "GET", "/api/v1/namespaces/default/secrets/late", nil)

	// Deleting: own pod yes, another node's no; the reference goes with it.
	e.must(n1, 403, "DELETE", "/api/v1/namespaces/default/pods/p2", nil)
	e.waitPods(e.must(n1, 200, "DELETE", "/api/v1/namespaces/default/pods/p4?gracePeriodSeconds=0", nil))
	if resp := e.do(admin, "GET", "/api/v1/namespaces/default/pods/p4", nil); resp.code == 404 {
		if r := e.do(n1, "GET", "/api/v1/namespaces/default/secrets/late", nil); r.code != 403 {
			t.Errorf("secret of a deleted pod as n1: %s, want 403", r)
		}
	}
}

// TestServiceAccountTokens: a token works only while its ServiceAccount
// (and bound pod) exist with its UIDs, only with the API's audience, and
// its user may do what its Role allows and nothing else.
func TestServiceAccountTokens(t *testing.T) {
	e := newEnv(t)
	admin := e.admin()
	e.must(admin, 201, "POST", "/api/v1/namespaces", `{"metadata":{"name":"team"}}`)
	ghost := e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: "nope"})
	e.must(ghost, 401, "GET", "/api/v1/namespaces/team/configmaps", nil)

	saUID := uidOf(t, e.must(admin, 201, "POST", "/api/v1/namespaces/team/serviceaccounts", `{"metadata":{"name":"builder"}}`))
	podUID := uidOf(t, e.must(admin, 201, "POST", "/api/v1/namespaces/team/pods", podJSON("runner", "", "")))
	good := e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: saUID})
	bound := e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: saUID, PodName: "runner", PodUID: podUID})
	for _, c := range []struct {
		name string
		c    cred
		want int
	}{
		{"valid, no role yet", good, 403},
		{"bound, no role yet", bound, 403},
		{"old service account uid", ghost, 401},
		{"other pod uid", e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: saUID, PodName: "runner", PodUID: "other"}), 401},
		{"missing pod", e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: saUID, PodName: "gone", PodUID: "x"}), 401},
		{"other audience", e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: saUID, Audiences: []string{"vault"}}), 401},
		{"past expiry: VerifySA (satoken) refuses it; here it is only not cached", e.saToken(auth.SAClaims{Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: saUID, Expiry: time.Now().Add(-time.Minute)}), 403},
	} {
		if resp := e.do(c.c, "GET", "/api/v1/namespaces/team/configmaps", nil); resp.code != c.want {
			t.Errorf("%s: %s, want %d", c.name, resp, c.want)
		}
	}

	// A Role in team for the service account (subject without namespace:
	// the binding's).
	e.put("/rbac.authorization.k8s.io/roles/team/cm-reader", &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "cm-reader"},
		Rules: []rbacv1.PolicyRule{
			{Verbs: []string{"get", "list", "watch"}, APIGroups: []string{""}, Resources: []string{"configmaps"}},
			{Verbs: []string{"create"}, APIGroups: []string{""}, Resources: []string{"configmaps"}},
		},
	})
	e.waitRBAC(e.put("/rbac.authorization.k8s.io/rolebindings/team/builder", bind("RoleBinding", "team", "builder", "Role", "cm-reader",
		rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: "builder"})))
	e.must(bound, 200, "GET", "/api/v1/namespaces/team/configmaps", nil)
	e.must(bound, 201, "POST", "/api/v1/namespaces/team/configmaps", `{"metadata":{"name":"made"}}`)
	e.must(bound, 200, "GET", "/api/v1/namespaces/team/configmaps/made", nil)
	e.must(bound, 403, "DELETE", "/api/v1/namespaces/team/configmaps/made", nil)
	e.must(bound, 403, "GET", "/api/v1/namespaces/default/configmaps", nil)
	e.must(bound, 403, "GET", "/api/v1/configmaps", nil)
	e.must(bound, 403, "GET", "/api/v1/namespaces/team/secrets", nil)
	e.must(good, 200, "GET", "/api/v1/namespaces/team/configmaps", nil)

	// Deleting the pod revokes its bound token; deleting the service
	// account revokes every token.
	e.must(admin, 200, "DELETE", "/api/v1/namespaces/team/pods/runner?gracePeriodSeconds=0", nil)
	if resp := e.do(admin, "GET", "/api/v1/namespaces/team/pods/runner", nil); resp.code == 404 {
		e.must(bound, 401, "GET", "/api/v1/namespaces/team/configmaps", nil)
	}
	e.must(good, 200, "GET", "/api/v1/namespaces/team/configmaps", nil)
	e.must(admin, 200, "DELETE", "/api/v1/namespaces/team/serviceaccounts/builder", nil)
	e.must(good, 401, "GET", "/api/v1/namespaces/team/configmaps", nil)
}

// TestRBACOverHTTP: a Role grants exactly its verbs, resources and names in
// its namespace; a ClusterRoleBinding works everywhere; nonResourceURLs.
func TestRBACOverHTTP(t *testing.T) {
	e := newEnv(t)
	admin := e.admin()
	e.must(admin, 201, "POST", "/api/v1/namespaces", `{"metadata":{"name":"team"}}`)
	for _, ns := range []string{"team", "default"} {
		for _, n := range []string{"allowed", "other"} {
			e.must(admin, 201, "POST", "/api/v1/namespaces/"+ns+"/configmaps", `{"metadata":{"name":"`+n+`"}}`)
		}
	}
	bob := e.certCred("bob")
	carol := e.certCred("carol", "auditors")
	e.put("/rbac.authorization.k8s.io/roles/team/edit-one", &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "edit-one"},
		Rules:      []rbacv1.PolicyRule{{Verbs: []string{"get", "patch"}, APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"allowed"}}},
	})
	e.put("/rbac.authorization.k8s.io/rolebindings/team/bob", bind("RoleBinding", "team", "bob", "Role", "edit-one", user("bob")))
	e.put("/rbac.authorization.k8s.io/clusterroles/cm-list", clusterRole("cm-list",
		rbacv1.PolicyRule{Verbs: []string{"list"}, APIGroups: []string{""}, Resources: []string{"configmaps"}},
		rbacv1.PolicyRule{Verbs: []string{"get"}, NonResourceURLs: []string{"/metrics", "/openapi/*"}}))
	e.waitRBAC(e.put("/rbac.authorization.k8s.io/clusterrolebindings/auditors", bind("ClusterRoleBinding", "", "auditors", "ClusterRole", "cm-list",
		rbacv1.Subject{Kind: rbacv1.GroupKind, Name: "auditors"})))

	patch := `{"data":{"k":"v"}}`
	e.must(bob, 200, "GET", "/api/v1/namespaces/team/configmaps/allowed", nil)
	e.must(bob, 200, "PATCH", "/api/v1/namespaces/team/configmaps/allowed", patch)
	e.must(bob, 403, "PUT", "/api/v1/namespaces/team/configmaps/allowed", e.must(bob, 200, "GET", "/api/v1/namespaces/team/configmaps/allowed", nil))
	e.must(bob, 403, "DELETE", "/api/v1/namespaces/team/configmaps/allowed", nil)
	e.must(bob, 403, "GET", "/api/v1/namespaces/team/configmaps/other", nil)
	e.must(bob, 403, "PATCH", "/api/v1/namespaces/team/configmaps/other", patch)
	e.must(bob, 403, "GET", "/api/v1/namespaces/team/configmaps", nil)
	e.must(bob, 403, "GET", "/api/v1/namespaces/default/configmaps/allowed", nil)
	e.must(bob, 403, "POST", "/api/v1/namespaces/team/configmaps", `{"metadata":{"name":"allowed2"}}`)
	e.must(bob, 403, "GET", "/metrics", nil)

	e.must(carol, 200, "GET", "/api/v1/configmaps", nil)
	e.must(carol, 200, "GET", "/api/v1/namespaces/team/configmaps", nil)
	e.must(carol, 200, "GET", "/api/v1/namespaces/default/configmaps", nil)
	e.must(carol, 403, "GET", "/api/v1/namespaces/default/configmaps/allowed", nil)
	e.must(carol, 403, "GET", "/api/v1/namespaces/default/configmaps?watch=1", nil)
	e.must(carol, 200, "GET", "/metrics", nil)
	e.must(carol, 200, "GET", "/openapi/v2", nil)
	e.must(carol, 403, "GET", "/flotilla/v1/tokens", nil)
	e.must(carol, 403, "DELETE", "/metrics", nil)
}

// TestAudit: one JSON line per mutating request, allowed or not; none for reads.
func TestAudit(t *testing.T) {
	e := newEnv(t)
	admin := e.admin()
	nobody := e.certCred("nobody", "staff")
	e.must(admin, 201, "POST", "/api/v1/namespaces/default/configmaps", `{"metadata":{"name":"a"}}`)
	e.must(admin, 200, "GET", "/api/v1/namespaces/default/configmaps/a", nil)
	e.must(admin, 200, "GET", "/api/v1/namespaces/default/configmaps", nil)
	e.must(nobody, 403, "DELETE", "/api/v1/namespaces/default/configmaps/a", nil)
	e.must(nobody, 403, "GET", "/api/v1/namespaces/default/configmaps/a", nil)
	e.must(e.anonymous(), 401, "PATCH", "/api/v1/namespaces/default/configmaps/a", `{}`)
	e.must(e.anonymous(), 401, "GET", "/api/v1/namespaces/default/configmaps/a", nil)
	e.must(admin, 200, "DELETE", "/api/v1/namespaces/default/configmaps/a", nil)

	type line struct {
		TS          time.Time `json:"ts"`
		User        string    `json:"user"`
		Groups      []string  `json:"groups"`
		Verb        string    `json:"verb"`
		Method      string    `json:"method"`
		URI         string    `json:"uri"`
		Namespace   string    `json:"namespace"`
		Resource    string    `json:"resource"`
		Subresource string    `json:"subresource"`
		Name        string    `json:"name"`
		Code        int       `json:"code"`
		LatencyMs   *float64  `json:"latencyMs"`
		SourceIP    string    `json:"sourceIP"`
	}
	var got []line
	for _, l := range strings.Split(strings.TrimSpace(e.audit.take()), "\n") {
		var ln line
		if err := json.Unmarshal([]byte(l), &ln); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		got = append(got, ln)
	}
	want := []struct {
		user, verb, method, name string
		code                     int
	}{
		{"flotilla:admin", "create", "POST", "", 201},
		{"nobody", "delete", "DELETE", "a", 403},
		{"", "patch", "PATCH", "a", 401},
		{"flotilla:admin", "delete", "DELETE", "a", 200},
	}
	if len(got) != len(want) {
		t.Fatalf("%d audit lines, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.User != w.user || g.Verb != w.verb || g.Method != w.method || g.Name != w.name || g.Code != w.code ||
			g.Namespace != "default" || g.Resource != "configmaps" || g.SourceIP != "127.0.0.1" ||
			!strings.HasPrefix(g.URI, "/api/v1/namespaces/default/configmaps") || g.TS.IsZero() || g.LatencyMs == nil {
			t.Errorf("audit line %d: %+v, want %+v", i, g, w)
		}
	}
	if !slices.Contains(got[0].Groups, "system:masters") || !slices.Contains(got[1].Groups, "staff") {
		t.Errorf("groups not recorded: %v %v", got[0].Groups, got[1].Groups)
	}
}
