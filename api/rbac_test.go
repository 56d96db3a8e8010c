package api_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"flotilla/api/apitest"
)

var rbacGV = rbacv1.SchemeGroupVersion

// TestRBACCRUDAndWatch drives every RBAC kind through create, get, list,
// update, strategic merge patch and delete with client-go while a watch
// on the kind sees each step.
func TestRBACCRUDAndWatch(t *testing.T) {
	s := apitest.NewServer(t)
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	podRule := []any{map[string]any{"apiGroups": []any{""}, "resources": []any{"pods"}, "verbs": []any{"get"}}}
	cases := []struct {
		kind, plural string
		namespaced   bool
		body         map[string]any
		// patch is a strategic merge patch that changes the object's
		// content; check says whether the patched object shows it.
		patch string
		check func(u *unstructured.Unstructured) bool
	}{
		{"Role", "roles", true, map[string]any{"rules": podRule},
			`{"rules":[{"apiGroups":[""],"resources":["pods","services"],"verbs":["get","list"]}]}`,
			func(u *unstructured.Unstructured) bool {
				rules, _, _ := unstructured.NestedSlice(u.Object, "rules")
				return len(rules) == 1 && fmt.Sprint(rules[0].(map[string]any)["resources"]) == "[pods services]"
			}},
		{"ClusterRole", "clusterroles", false, map[string]any{"rules": append(podRule,
			map[string]any{"nonResourceURLs": []any{"/healthz"}, "verbs": []any{"get"}})},
			`{"rules":[{"nonResourceURLs":["/metrics"],"verbs":["get"]}]}`,
			func(u *unstructured.Unstructured) bool {
				rules, _, _ := unstructured.NestedSlice(u.Object, "rules")
				return len(rules) == 1 && fmt.Sprint(rules[0].(map[string]any)["nonResourceURLs"]) == "[/metrics]"
			}},
		{"RoleBinding", "rolebindings", true, map[string]any{
			"roleRef":  map[string]any{"kind": "ClusterRole", "name": "view"},
			"subjects": []any{map[string]any{"kind": "User", "name": "alice"}}},
			`{"subjects":[{"kind":"ServiceAccount","name":"robot"}]}`,
			func(u *unstructured.Unstructured) bool {
				subs, _, _ := unstructured.NestedSlice(u.Object, "subjects")
				// The ServiceAccount's namespace is the binding's.
				return len(subs) == 1 && subs[0].(map[string]any)["namespace"] == "default"
			}},
		{"ClusterRoleBinding", "clusterrolebindings", false, map[string]any{
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
			"subjects": []any{map[string]any{"kind": "Group", "name": "devs"}}},
			`{"subjects":[{"kind":"ServiceAccount","name":"robot","namespace":"kube-system"}]}`,
			func(u *unstructured.Unstructured) bool {
				subs, _, _ := unstructured.NestedSlice(u.Object, "subjects")
				return len(subs) == 1 && subs[0].(map[string]any)["namespace"] == "kube-system"
			}},
	}
	for _, tc := range cases {
		t.Run(tc.kind, func(t *testing.T) {
			ctx := ctxT(t)
			gvr := rbacGV.WithResource(tc.plural)
			var ri dynamic.ResourceInterface = dyn.Resource(gvr)
			if tc.namespaced {
				ri = dyn.Resource(gvr).Namespace("default")
			}
			name := "crud-" + tc.plural
			w, err := ri.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			defer w.Stop()

			u := &unstructured.Unstructured{Object: map[string]any{}}
			for k, v := range tc.body {
				u.Object[k] = v
			}
			u.SetAPIVersion(rbacGV.String())
			u.SetKind(tc.kind)
			u.SetName(name)
			created, err := ri.Create(ctx, u, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if created.GetUID() == "" || created.GetResourceVersion() == "" {
				t.Fatalf("create did not stamp uid/rv: %v", created.Object["metadata"])
			}
			if strings.HasSuffix(tc.kind, "Binding") {
				if g, _, _ := unstructured.NestedString(created.Object, "roleRef", "apiGroup"); g != rbacv1.GroupName {
					t.Errorf("roleRef.apiGroup not defaulted: %q", g)
				}
				subs, _, _ := unstructured.NestedSlice(created.Object, "subjects")
				if g := subs[0].(map[string]any)["apiGroup"]; g != rbacv1.GroupName {
					t.Errorf("subject apiGroup not defaulted: %v", g)
				}
			}
			if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
				t.Fatalf("second create: want AlreadyExists, got %v", err)
			}
			got, err := ri.Get(ctx, name, metav1.GetOptions{})
			if err != nil || got.GetResourceVersion() != created.GetResourceVersion() {
				t.Fatalf("get: %v", err)
			}
			list, err := ri.List(ctx, metav1.ListOptions{})
			if err != nil || !slices.ContainsFunc(list.Items, func(i unstructured.Unstructured) bool { return i.GetName() == name }) {
				t.Fatalf("list: %v (%d items)", err, len(list.Items))
			}
			got.SetLabels(map[string]string{"updated": "yes"})
			if _, err := ri.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("update: %v", err)
			}
			patched, err := ri.Patch(ctx, name, types.StrategicMergePatchType, []byte(tc.patch), metav1.PatchOptions{})
			if err != nil {
				t.Fatalf("strategic merge patch: %v", err)
			}
			if !tc.check(patched) || patched.GetLabels()["updated"] != "yes" {
				t.Fatalf("patched object %v", patched.Object)
			}
			if err := ri.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if _, err := ri.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("get after delete: want NotFound, got %v", err)
			}
			want := []watch.EventType{watch.Added, watch.Modified, watch.Modified, watch.Deleted}
			for i, typ := range want {
				select {
				case ev := <-w.ResultChan():
					if ev.Type != typ {
						t.Fatalf("event %d: %s, want %s (%v)", i, ev.Type, typ, ev.Object)
					}
					if o, ok := ev.Object.(*unstructured.Unstructured); !ok || o.GetName() != name || o.GetKind() != tc.kind {
						t.Fatalf("event %d object %v", i, ev.Object)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("no event %d (%s)", i, typ)
				}
			}
		})
	}

	// The typed client round-trips, and the store key is the contract's.
	ctx := ctxT(t)
	rb, err := s.Client.RbacV1().RoleBindings("kube-system").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "typed"},
		RoleRef:    rbacv1.RoleRef{Kind: "Role", Name: "r"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rb.Subjects[0].Namespace != "kube-system" || rb.Subjects[0].APIGroup != "" || rb.RoleRef.APIGroup != rbacv1.GroupName {
		t.Errorf("typed rolebinding %+v", rb)
	}
	for _, key := range []string{"/rbac.authorization.k8s.io/rolebindings/kube-system/typed", "/rbac.authorization.k8s.io/clusterroles/cluster-admin",
		"/rbac.authorization.k8s.io/clusterrolebindings/cluster-admin"} {
		if kv, _ := s.Cluster.Store().Get(key); kv == nil {
			t.Errorf("store lacks %s", key)
		}
	}
}

// statusCauses returns the field of every cause of an Invalid error.
func statusCauses(t *testing.T, err error) []string {
	t.Helper()
	if !apierrors.IsInvalid(err) {
		t.Fatalf("want 422 Invalid, got %v", err)
	}
	st := err.(apierrors.APIStatus).Status()
	if st.Code != 422 || st.Details == nil {
		t.Fatalf("status %+v", st)
	}
	var fields []string
	for _, c := range st.Details.Causes {
		fields = append(fields, c.Field)
	}
	return fields
}

func TestRBACValidation(t *testing.T) {
	s := apitest.NewServer(t)
	rbac := s.Client.RbacV1()
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name} }
	res := func(verbs ...string) rbacv1.PolicyRule {
		return rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: verbs}
	}
	view := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"}
	user := rbacv1.Subject{Kind: "User", Name: "alice"}
	cases := []struct {
		name   string
		create func() error
		// fields are the causes the 422 must name; none = the create succeeds.
		fields []string
	}{
		{"role without verbs", func() error {
			_, err := rbac.Roles("default").Create(ctxT(t), &rbacv1.Role{ObjectMeta: meta("r1"), Rules: []rbacv1.PolicyRule{res()}}, metav1.CreateOptions{})
			return err
		}, []string{"rules[0].verbs"}},
		{"role rule without groups and resources", func() error {
			_, err := rbac.Roles("default").Create(ctxT(t), &rbacv1.Role{ObjectMeta: meta("r2"),
				Rules: []rbacv1.PolicyRule{res("get"), {Verbs: []string{"get"}}}}, metav1.CreateOptions{})
			return err
		}, []string{"rules[1].apiGroups", "rules[1].resources"}},
		{"role with non-resource URLs", func() error {
			_, err := rbac.Roles("default").Create(ctxT(t), &rbacv1.Role{ObjectMeta: meta("r3"),
				Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/healthz"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{})
			return err
		}, []string{"rules[0].nonResourceURLs"}},
		{"role name not a path segment", func() error {
			_, err := rbac.Roles("default").Create(ctxT(t), &rbacv1.Role{ObjectMeta: meta(".."), Rules: []rbacv1.PolicyRule{res("get")}}, metav1.CreateOptions{})
			return err
		}, []string{"metadata.name"}},
		{"role name with a percent", func() error {
			_, err := rbac.Roles("default").Create(ctxT(t), &rbacv1.Role{ObjectMeta: meta("a%b"), Rules: []rbacv1.PolicyRule{res("get")}}, metav1.CreateOptions{})
			return err
		}, []string{"metadata.name"}},
		{"cluster role mixing URLs and resources", func() error {
			r := res("get")
			r.NonResourceURLs = []string{"/metrics"}
			_, err := rbac.ClusterRoles().Create(ctxT(t), &rbacv1.ClusterRole{ObjectMeta: meta("c1"), Rules: []rbacv1.PolicyRule{r}}, metav1.CreateOptions{})
			return err
		}, []string{"rules[0].nonResourceURLs"}},
		{"cluster role aggregation", func() error {
			_, err := rbac.ClusterRoles().Create(ctxT(t), &rbacv1.ClusterRole{ObjectMeta: meta("c2"),
				AggregationRule: &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"a": "b"}}}}},
				metav1.CreateOptions{})
			return err
		}, []string{"aggregationRule"}},
		{"cluster role with colon and URLs is fine", func() error {
			_, err := rbac.ClusterRoles().Create(ctxT(t), &rbacv1.ClusterRole{ObjectMeta: meta("system:c3"),
				Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}, res("*")}}, metav1.CreateOptions{})
			return err
		}, nil},
		{"binding to a pod", func() error {
			_, err := rbac.RoleBindings("default").Create(ctxT(t), &rbacv1.RoleBinding{ObjectMeta: meta("b1"),
				RoleRef: rbacv1.RoleRef{APIGroup: "", Kind: "Pod", Name: "p"}, Subjects: []rbacv1.Subject{user}}, metav1.CreateOptions{})
			return err
		}, []string{"roleRef.kind"}},
		{"binding to another group, no name", func() error {
			_, err := rbac.RoleBindings("default").Create(ctxT(t), &rbacv1.RoleBinding{ObjectMeta: meta("b2"),
				RoleRef: rbacv1.RoleRef{APIGroup: "example.com", Kind: "Role"}}, metav1.CreateOptions{})
			return err
		}, []string{"roleRef.apiGroup", "roleRef.name"}},
		{"bad subjects", func() error {
			_, err := rbac.RoleBindings("default").Create(ctxT(t), &rbacv1.RoleBinding{ObjectMeta: meta("b3"), RoleRef: view,
				Subjects: []rbacv1.Subject{
					{Kind: "Robot", Name: "r2d2"},
					{Kind: "User", APIGroup: "example.com", Name: "bob"},
					{Kind: "ServiceAccount", APIGroup: rbacv1.GroupName, Name: "sa"},
					{Kind: "Group"},
					{Kind: "ServiceAccount", Name: "Not_A_Name"},
				}}, metav1.CreateOptions{})
			return err
		}, []string{"subjects[0].kind", "subjects[1].apiGroup", "subjects[2].apiGroup", "subjects[3].name", "subjects[4].name"}},
		{"cluster binding to a role", func() error {
			_, err := rbac.ClusterRoleBindings().Create(ctxT(t), &rbacv1.ClusterRoleBinding{ObjectMeta: meta("cb1"),
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "r"}, Subjects: []rbacv1.Subject{user}}, metav1.CreateOptions{})
			return err
		}, []string{"roleRef.kind"}},
		{"cluster binding of a service account without namespace", func() error {
			_, err := rbac.ClusterRoleBindings().Create(ctxT(t), &rbacv1.ClusterRoleBinding{ObjectMeta: meta("cb2"), RoleRef: view,
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "sa"}}}, metav1.CreateOptions{})
			return err
		}, []string{"subjects[0].namespace"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.create()
			if tc.fields == nil {
				if err != nil {
					t.Fatalf("want success, got %v", err)
				}
				return
			}
			got := statusCauses(t, err)
			for _, f := range tc.fields {
				if !slices.Contains(got, f) {
					t.Errorf("causes %v lack %s (%v)", got, f, err)
				}
			}
			if len(got) != len(tc.fields) {
				t.Errorf("causes %v, want %v", got, tc.fields)
			}
		})
	}
}

func TestRBACRoleRefImmutable(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	rbac := s.Client.RbacV1()
	rb, err := rbac.RoleBindings("default").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "b"},
		RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "view"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	crb, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "b"},
		RoleRef: rbacv1.RoleRef{Kind: "ClusterRole", Name: "view"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Subjects may change; roleRef may not, by update or by patch.
	rb.Subjects = []rbacv1.Subject{{Kind: "Group", Name: "devs"}}
	if rb, err = rbac.RoleBindings("default").Update(ctx, rb, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update subjects: %v", err)
	}
	// A client that leaves out the defaulted apiGroup changes nothing.
	rb.RoleRef.APIGroup = ""
	if rb, err = rbac.RoleBindings("default").Update(ctx, rb, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update without roleRef.apiGroup: %v", err)
	}
	rb.RoleRef.Name = "edit"
	_, err = rbac.RoleBindings("default").Update(ctx, rb, metav1.UpdateOptions{})
	if f := statusCauses(t, err); !slices.Equal(f, []string{"roleRef"}) || !strings.Contains(err.Error(), "cannot change roleRef") {
		t.Errorf("rolebinding roleRef update: %v %v", f, err)
	}
	_, err = rbac.RoleBindings("default").Patch(ctx, "b", types.MergePatchType, []byte(`{"roleRef":{"kind":"Role"}}`), metav1.PatchOptions{})
	if f := statusCauses(t, err); !slices.Equal(f, []string{"roleRef"}) {
		t.Errorf("rolebinding roleRef patch: %v", f)
	}
	crb.RoleRef.Name = "cluster-admin"
	_, err = rbac.ClusterRoleBindings().Update(ctx, crb, metav1.UpdateOptions{})
	if f := statusCauses(t, err); !slices.Equal(f, []string{"roleRef"}) {
		t.Errorf("clusterrolebinding roleRef update: %v", f)
	}
	got, err := rbac.ClusterRoleBindings().Get(ctx, "b", metav1.GetOptions{})
	if err != nil || got.RoleRef.Name != "view" {
		t.Fatalf("stored roleRef changed: %v %v", got, err)
	}
}

// hasRule reports whether rules grant verb on group/resource by a literal
// entry (the defaults use no wildcards but cluster-admin's).
func hasRule(rules []rbacv1.PolicyRule, verb, group, resource string) bool {
	for _, r := range rules {
		if slices.Contains(r.Verbs, verb) && slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) {
			return true
		}
	}
	return false
}

func TestRBACEnsureDefaults(t *testing.T) {
	s := apitest.NewServer(t, apitest.Options{SkipDefaults: true})
	ctx := ctxT(t)
	rbac := s.Client.RbacV1()
	if l, err := rbac.ClusterRoles().List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
		t.Fatalf("before EnsureDefaults: %v %v", l, err)
	}
	if err := s.API.EnsureDefaults(ctx); err != nil {
		t.Fatal(err)
	}
	roles, err := rbac.ClusterRoles().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]rbacv1.ClusterRole{}
	for _, r := range roles.Items {
		byName[r.Name] = r
		if r.Labels["kubernetes.io/bootstrapping"] != "rbac-defaults" {
			t.Errorf("clusterrole %s labels %v", r.Name, r.Labels)
		}
	}
	for _, name := range []string{"cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user", "system:public-info-viewer", "system:node"} {
		if _, ok := byName[name]; !ok {
			t.Errorf("no clusterrole %s", name)
		}
	}
	ca := byName["cluster-admin"].Rules
	if len(ca) != 2 || !hasRule(ca, "*", "*", "*") || fmt.Sprint(ca[1].NonResourceURLs, ca[1].Verbs) != "[*] [*]" {
		t.Errorf("cluster-admin rules %+v", ca)
	}
	view, edit, admin := byName["view"].Rules, byName["edit"].Rules, byName["admin"].Rules
	for _, c := range []struct {
		role             string
		rules            []rbacv1.PolicyRule
		verb, group, res string
		want             bool
	}{
		{"view", view, "list", "", "pods", true},
		{"view", view, "get", "", "pods/log", true},
		{"view", view, "watch", "apps", "deployments", true},
		{"view", view, "get", "", "namespaces", true},
		{"view", view, "get", "", "secrets", false},
		{"view", view, "create", "", "pods", false},
		{"edit", edit, "get", "", "secrets", true},
		{"edit", edit, "create", "", "secrets", true},
		{"edit", edit, "create", "", "pods/exec", true},
		{"edit", edit, "create", "", "pods/eviction", true},
		{"edit", edit, "update", "apps", "deployments/scale", true},
		{"edit", edit, "create", "", "serviceaccounts/token", true},
		{"edit", edit, "create", "", "endpoints", false},
		{"edit", edit, "create", "", "namespaces", false},
		{"edit", edit, "create", rbacv1.GroupName, "roles", false},
		{"admin", admin, "create", rbacv1.GroupName, "rolebindings", true},
		{"admin", admin, "delete", "", "configmaps", true},
		{"admin", admin, "delete", "", "namespaces", false},
	} {
		if hasRule(c.rules, c.verb, c.group, c.res) != c.want {
			t.Errorf("%s %s %s/%s: want %v", c.role, c.verb, c.group, c.res, c.want)
		}
	}
	if urls := byName["system:discovery"].Rules[0].NonResourceURLs; !slices.Contains(urls, "/apis/*") || !slices.Contains(urls, "/openapi/*") {
		t.Errorf("system:discovery urls %v", urls)
	}
	if urls := byName["system:public-info-viewer"].Rules[0].NonResourceURLs; !slices.Contains(urls, "/version") || slices.Contains(urls, "/api") {
		t.Errorf("system:public-info-viewer urls %v", urls)
	}
	bindings, err := rbac.ClusterRoleBindings().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string]string{}
	for _, b := range bindings.Items {
		var g []string
		for _, sub := range b.Subjects {
			g = append(g, sub.Kind+":"+sub.Name)
		}
		groups[b.Name] = b.RoleRef.Kind + "/" + b.RoleRef.Name + " " + strings.Join(g, ",")
	}
	want := map[string]string{
		"cluster-admin":             "ClusterRole/cluster-admin Group:system:masters",
		"system:discovery":          "ClusterRole/system:discovery Group:system:authenticated",
		"system:basic-user":         "ClusterRole/system:basic-user Group:system:authenticated",
		"system:public-info-viewer": "ClusterRole/system:public-info-viewer Group:system:authenticated,Group:system:unauthenticated",
	}
	if fmt.Sprint(groups) != fmt.Sprint(want) {
		t.Errorf("clusterrolebindings\n got %v\nwant %v", groups, want)
	}

	// An operator's changes survive: a modified default stays modified, a
	// deleted one comes back, and nothing else is rewritten.
	v := byName["view"]
	v.Rules = v.Rules[:1]
	v.Labels["mine"] = "yes"
	modified, err := rbac.ClusterRoles().Update(ctx, &v, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rbac.ClusterRoleBindings().Delete(ctx, "system:discovery", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	before, _ := rbac.ClusterRoles().List(ctx, metav1.ListOptions{})
	for range 2 {
		if err := s.API.EnsureDefaults(ctx); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := rbac.ClusterRoles().List(ctx, metav1.ListOptions{})
	if len(after.Items) != len(before.Items) {
		t.Fatalf("%d clusterroles, then %d", len(before.Items), len(after.Items))
	}
	for i := range after.Items {
		if a, b := after.Items[i], before.Items[i]; a.Name != b.Name || a.ResourceVersion != b.ResourceVersion {
			t.Errorf("clusterrole %s rewritten (rv %s -> %s)", a.Name, b.ResourceVersion, a.ResourceVersion)
		}
	}
	got, err := rbac.ClusterRoles().Get(ctx, "view", metav1.GetOptions{})
	if err != nil || got.ResourceVersion != modified.ResourceVersion || len(got.Rules) != 1 || got.Labels["mine"] != "yes" {
		t.Errorf("modified view overwritten: %+v %v", got, err)
	}
	if b, err := rbac.ClusterRoleBindings().Get(ctx, "system:discovery", metav1.GetOptions{}); err != nil || b.Subjects[0].Name != "system:authenticated" {
		t.Errorf("deleted system:discovery binding not recreated: %v %v", b, err)
	}
}

func TestRBACDiscoveryAndTables(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	list, err := s.Client.Discovery().ServerResourcesForGroupVersion(rbacGV.String())
	if err != nil {
		t.Fatal(err)
	}
	namespaced := map[string]bool{}
	for _, r := range list.APIResources {
		namespaced[r.Name] = r.Namespaced
		if len(r.Verbs) != 8 {
			t.Errorf("%s verbs %v", r.Name, r.Verbs)
		}
	}
	if fmt.Sprint(namespaced) != "map[clusterrolebindings:false clusterroles:false rolebindings:true roles:true]" {
		t.Errorf("rbac discovery %v", namespaced)
	}
	// kubectl explain and apply read the group's OpenAPI v3 document.
	if r := do(t, s, "GET", "/openapi/v3", "", nil); r.code != 200 || !strings.Contains(string(r.body), `"apis/rbac.authorization.k8s.io/v1"`) {
		t.Errorf("openapi v3 index: %d %s", r.code, r.body)
	}
	if r := do(t, s, "GET", "/openapi/v3/apis/rbac.authorization.k8s.io/v1", "", nil); r.code != 200 ||
		!strings.Contains(string(r.body), "io.k8s.api.rbac.v1.ClusterRoleBinding") || !strings.Contains(string(r.body), "patchRbacAuthorizationV1NamespacedRole") {
		t.Errorf("openapi v3 rbac document: %d %.300s", r.code, r.body)
	}
	if _, err := s.Client.RbacV1().RoleBindings("default").Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "rb"},
		RoleRef:    rbacv1.RoleRef{Kind: "ClusterRole", Name: "edit"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice"}, {Kind: "User", Name: "bob"}, {Kind: "Group", Name: "devs"},
			{Kind: "ServiceAccount", Name: "ci"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, tbl := getTable(t, s, "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings")
	var cols []string
	for _, c := range tbl.ColumnDefinitions {
		cols = append(cols, c.Name)
	}
	if fmt.Sprint(cols) != "[Name Role Age Users Groups ServiceAccounts]" || len(tbl.Rows) != 1 {
		t.Fatalf("rolebindings table %v, %d rows", cols, len(tbl.Rows))
	}
	if c := tbl.Rows[0].Cells; fmt.Sprintf("%q", c[:2]) != `["rb" "ClusterRole/edit"]` ||
		fmt.Sprintf("%q", c[3:]) != `["alice, bob" "devs" "default/ci"]` {
		t.Errorf("rolebinding cells %q", c)
	}
	_, tbl = getTable(t, s, "/apis/rbac.authorization.k8s.io/v1/clusterroles/cluster-admin")
	if len(tbl.ColumnDefinitions) != 2 || tbl.ColumnDefinitions[1].Name != "Created At" || len(tbl.Rows) != 1 {
		t.Fatalf("clusterrole table %+v", tbl)
	}
	if at, ok := tbl.Rows[0].Cells[1].(string); !ok {
		t.Errorf("created at cell %v", tbl.Rows[0].Cells[1])
	} else if _, err := time.Parse(time.RFC3339, at); err != nil {
		t.Errorf("created at %q: %v", at, err)
	}
	_, tbl = getTable(t, s, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
	found := false
	for _, r := range tbl.Rows {
		found = found || (r.Cells[0] == "cluster-admin" && r.Cells[1] == "ClusterRole/cluster-admin" && r.Cells[4] == "system:masters")
	}
	if !found {
		t.Errorf("clusterrolebindings table rows %v", tbl.Rows)
	}
}

// TestRBACKubectl runs kubectl's own create, get and delete commands for
// the four kinds (kubectl create role checks the resources against
// discovery first).
func TestRBACKubectl(t *testing.T) {
	s := apitest.NewServer(t)
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"create", "role", "pod-reader", "--verb=get,list", "--resource=pods,pods/log,deployments.apps"},
			[]string{"role.rbac.authorization.k8s.io/pod-reader created"}},
		{[]string{"create", "clusterrole", "metrics-reader", "--verb=get", "--non-resource-url=/metrics"},
			[]string{"clusterrole.rbac.authorization.k8s.io/metrics-reader created"}},
		{[]string{"create", "rolebinding", "rb", "--role=pod-reader", "--user=alice", "--serviceaccount=default:ci"},
			[]string{"rolebinding.rbac.authorization.k8s.io/rb created"}},
		{[]string{"create", "clusterrolebinding", "crb", "--clusterrole=metrics-reader", "--group=devs"},
			[]string{"clusterrolebinding.rbac.authorization.k8s.io/crb created"}},
		{[]string{"get", "rolebindings", "-o", "wide"}, []string{"ROLE", "Role/pod-reader", "alice", "default/ci"}},
		{[]string{"get", "clusterrolebinding", "crb"}, []string{"ClusterRole/metrics-reader"}},
		{[]string{"get", "clusterroles"}, []string{"CREATED AT", "cluster-admin", "metrics-reader", "system:discovery"}},
		{[]string{"get", "role", "pod-reader", "-o", "jsonpath={.rules[0].resources}"}, []string{`["pods","pods/log"]`}},
		{[]string{"delete", "role", "pod-reader"}, []string{`role.rbac.authorization.k8s.io "pod-reader" deleted`}},
		{[]string{"delete", "clusterrolebinding", "crb"}, []string{`clusterrolebinding.rbac.authorization.k8s.io "crb" deleted`}},
	} {
		out, errOut, code := kubectl(t, s, c.args...)
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
