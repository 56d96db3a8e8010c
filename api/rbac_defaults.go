package api

import (
	"context"
	"fmt"
	"slices"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The default RBAC objects every cluster has, named and labelled as
// kube-apiserver's bootstrap policy. EnsureDefaults creates the missing ones
// and never touches one that exists: an operator's edit of a default role
// survives every leader change. (kube-apiserver reconciles its defaults on
// start unless annotated autoupdate=false; Flotilla never reconciles, so it
// writes no autoupdate annotation that would suggest otherwise.)
//
// kube builds admin, edit and view by aggregation; Flotilla has no
// aggregation controller, so they carry the rules directly, limited to the
// resources and subresources Flotilla serves (no persistentvolumeclaims,
// services/proxy, pods/proxy, batch, ...). As in kube since 1.22, edit and
// admin may not write endpoints, and view may not read secrets.

// bootstrapLabels mark the defaults as kube does.
func bootstrapLabels() map[string]string {
	return map[string]string{"kubernetes.io/bootstrapping": "rbac-defaults"}
}

var (
	verbsRead      = []string{"get", "list", "watch"}
	verbsWrite     = []string{"create", "delete", "deletecollection", "patch", "update"}
	verbsReadWrite = append(append([]string{}, verbsRead...), verbsWrite...)
)

func rule(verbs []string, group string, resources ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{Verbs: slices.Clone(verbs), APIGroups: []string{group}, Resources: resources}
}

func urlRule(verbs []string, urls ...string) rbacv1.PolicyRule {
	return rbacv1.PolicyRule{Verbs: slices.Clone(verbs), NonResourceURLs: slices.Clone(urls)}
}

// viewRules read everything in a namespace except secrets (and the
// streaming subresources, which can read them through a pod).
func viewRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(verbsRead, "", "pods", "serviceaccounts", "services", "services/status", "endpoints", "configmaps"),
		rule(verbsRead, "", "events", "pods/status", "pods/log", "namespaces/status"),
		rule(verbsRead, "", "namespaces"),
		rule(verbsRead, "apps", "deployments", "deployments/scale", "deployments/status",
			"replicasets", "replicasets/scale", "replicasets/status"),
	}
}

// editRules add writes of workloads, configuration and secrets, exec and
// port-forward, but no RBAC.
func editRules() []rbacv1.PolicyRule {
	return append(viewRules(),
		rule(verbsWrite, "", "pods", "pods/attach", "pods/exec", "pods/portforward"),
		rule([]string{"create"}, "", "pods/eviction"),
		rule(verbsWrite, "", "serviceaccounts", "services", "configmaps", "secrets", "events"),
		rule([]string{"create"}, "", "serviceaccounts/token"),
		rule(verbsRead, "", "pods/attach", "pods/exec", "pods/portforward", "secrets"),
		rule([]string{"impersonate"}, "", "serviceaccounts"),
		rule(verbsWrite, "apps", "deployments", "deployments/scale", "replicasets", "replicasets/scale"),
	)
}

// adminRules add Roles and RoleBindings of the namespace.
func adminRules() []rbacv1.PolicyRule {
	return append(editRules(), rule(verbsReadWrite, rbacv1.GroupName, "roles", "rolebindings"))
}

// Non-resource URLs every authenticated user may read (system:discovery),
// and the subset anyone may read (system:public-info-viewer).
var (
	discoveryURLs  = []string{"/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"}
	publicInfoURLs = []string{"/healthz", "/livez", "/readyz", "/version", "/version/"}
)

// nodeRules are informational: agents are authorized by the node
// authorizer, which also limits each to its own Node and pods; nothing binds
// system:node (kube stopped binding it in 1.8).
func nodeRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		rule(verbsRead, "", "nodes", "pods", "services", "endpoints", "namespaces"),
		rule([]string{"create", "get", "patch", "update"}, "", "nodes"),
		rule([]string{"patch", "update"}, "", "nodes/status", "pods/status"),
		rule([]string{"delete"}, "", "pods"),
		rule([]string{"create", "patch", "update"}, "", "events"),
		rule([]string{"get"}, "", "secrets", "configmaps", "serviceaccounts"),
		rule([]string{"create"}, "", "serviceaccounts/token"),
	}
}

// defaultClusterRoles are kube's bootstrap ClusterRoles that matter here.
func defaultClusterRoles() []*rbacv1.ClusterRole {
	cr := func(name string, rules ...rbacv1.PolicyRule) *rbacv1.ClusterRole {
		return &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: bootstrapLabels()}, Rules: rules}
	}
	return []*rbacv1.ClusterRole{
		cr("cluster-admin",
			rbacv1.PolicyRule{Verbs: []string{rbacv1.VerbAll}, APIGroups: []string{rbacv1.APIGroupAll}, Resources: []string{rbacv1.ResourceAll}},
			urlRule([]string{rbacv1.VerbAll}, rbacv1.NonResourceAll)),
		cr("admin", adminRules()...),
		cr("edit", editRules()...),
		cr("view", viewRules()...),
		cr("system:discovery", urlRule([]string{"get"}, discoveryURLs...)),
		cr("system:public-info-viewer", urlRule([]string{"get"}, publicInfoURLs...)),
		// Self-reviews: kubectl auth can-i and whoami (selfreview.go).
		// Flotilla does not serve selfsubjectrulesreviews (can-i --list),
		// but the role says what kube's says.
		cr("system:basic-user",
			rule([]string{"create"}, "authorization.k8s.io", "selfsubjectaccessreviews", "selfsubjectrulesreviews"),
			rule([]string{"create"}, "authentication.k8s.io", "selfsubjectreviews")),
		cr("system:node", nodeRules()...),
	}
}

// defaultClusterRoleBindings bind the defaults to the groups kube binds them to.
func defaultClusterRoleBindings() []*rbacv1.ClusterRoleBinding {
	crb := func(role string, groups ...string) *rbacv1.ClusterRoleBinding {
		b := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role, Labels: bootstrapLabels()},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
		}
		for _, g := range groups {
			b.Subjects = append(b.Subjects, rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: g})
		}
		return b
	}
	return []*rbacv1.ClusterRoleBinding{
		crb("cluster-admin", "system:masters"),
		crb("system:discovery", "system:authenticated"),
		crb("system:basic-user", "system:authenticated"),
		crb("system:public-info-viewer", "system:authenticated", "system:unauthenticated"),
	}
}

// ensureRBACDefaults creates the default ClusterRoles and ClusterRoleBindings
// that are missing. The local store answers "present" cheaply (a leader
// calls this every term); a create racing another is AlreadyExists, which
// is success.
func (s *Server) ensureRBACDefaults(ctx context.Context) error {
	var objs []object
	for _, cr := range defaultClusterRoles() {
		objs = append(objs, cr)
	}
	for _, crb := range defaultClusterRoleBindings() {
		objs = append(objs, crb)
	}
	for _, o := range objs {
		var res *resource
		switch o.(type) {
		case *rbacv1.ClusterRole:
			res = s.reg.lookup(rbacv1.GroupName, "v1", "clusterroles")
		default:
			res = s.reg.lookup(rbacv1.GroupName, "v1", "clusterrolebindings")
		}
		if kv, _ := s.store().Get(res.key("", o.GetName())); kv != nil {
			continue
		}
		if _, err := s.createObject(ctx, res, "", o, false); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("ensure %s %s: %w", res.gvk.Kind, o.GetName(), err)
		}
	}
	return nil
}
