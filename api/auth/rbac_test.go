package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/fsm"
)

// memStore applies transactions to an fsm.Store as Raft would.
type memStore struct {
	t     testing.TB
	st    *fsm.Store
	index uint64
}

func newMemStore(t testing.TB) *memStore {
	return &memStore{t: t, st: fsm.New(fsm.Config{})}
}

func (m *memStore) put(key string, obj any) uint64 {
	m.t.Helper()
	v, err := json.Marshal(obj)
	if err != nil {
		m.t.Fatal(err)
	}
	return m.txn(fsm.Op{Type: fsm.OpPut, Key: key, Value: v})
}

func (m *memStore) del(key string) uint64 {
	m.t.Helper()
	return m.txn(fsm.Op{Type: fsm.OpDelete, Key: key})
}

func (m *memStore) txn(ops ...fsm.Op) uint64 {
	m.t.Helper()
	data, err := fsm.EncodeTxn(&fsm.Txn{Ops: ops})
	if err != nil {
		m.t.Fatal(err)
	}
	m.index++
	res := m.st.Apply(&raft.Log{Index: m.index, Term: 1, Type: raft.LogCommand, Data: data}).(*fsm.TxnResult)
	if !res.Succeeded {
		m.t.Fatalf("txn failed: %+v", res)
	}
	return res.Revision
}

func startAuth(t testing.TB, cfg Config) *Auth {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); a.Wait() })
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

func waitRBAC(t testing.TB, a *Auth, rev uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitRBAC(ctx, rev); err != nil {
		t.Fatal(err)
	}
}

func role(ns, name string, rules ...rbacv1.PolicyRule) *rbacv1.Role {
	return &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Rules: rules}
}

func binding(ns, name, kind, roleName string, subjects ...rbacv1.Subject) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: roleName},
		Subjects:   subjects,
	}
}

func userSubject(name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.UserKind, Name: name}
}

func res(verb, group, resource, sub, ns, name string) Attributes {
	return Attributes{Verb: verb, APIGroup: group, APIVersion: "v1", Resource: resource, Subresource: sub, Namespace: ns, Name: name, ResourceRequest: true}
}

func nonRes(verb, path string) Attributes { return Attributes{Verb: verb, Path: path} }

// TestRBACRules: kube's matching of verbs, groups, resources, subresources,
// resourceNames and nonResourceURLs, scoped by binding kind.
func TestRBACRules(t *testing.T) {
	m := newMemStore(t)
	a := startAuth(t, Config{Store: m.st})
	m.put("/rbac.authorization.k8s.io/roles/team/cm", role("team", "cm",
		rbacv1.PolicyRule{Verbs: []string{"get", "update"}, APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{"allowed"}},
		rbacv1.PolicyRule{Verbs: []string{"list"}, APIGroups: []string{""}, Resources: []string{"configmaps"}},
		rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods/log"}},
		rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{"apps"}, Resources: []string{"*/scale"}},
		rbacv1.PolicyRule{Verbs: []string{"*"}, APIGroups: []string{""}, Resources: []string{"services/*"}},
		rbacv1.PolicyRule{Verbs: []string{"get"}, NonResourceURLs: []string{"/metrics"}}, // ignored: a RoleBinding grants no URLs
	))
	m.put("/rbac.authorization.k8s.io/rolebindings/team/bob", binding("team", "bob", "Role", "cm", userSubject("bob")))
	m.put("/rbac.authorization.k8s.io/clusterroles/reader", role("", "reader",
		rbacv1.PolicyRule{Verbs: []string{"get", "list", "watch"}, APIGroups: []string{"*"}, Resources: []string{"pods", "deployments"}}))
	m.put("/rbac.authorization.k8s.io/clusterrolebindings/readers", binding("", "readers", "ClusterRole", "reader",
		rbacv1.Subject{Kind: rbacv1.GroupKind, Name: "readers"}))
	m.put("/rbac.authorization.k8s.io/rolebindings/dev/carol-reads", binding("dev", "carol-reads", "ClusterRole", "reader", userSubject("carol")))
	m.put("/rbac.authorization.k8s.io/clusterroles/urls", role("", "urls",
		rbacv1.PolicyRule{Verbs: []string{"get"}, NonResourceURLs: []string{"/metrics", "/debug/*"}}))
	m.put("/rbac.authorization.k8s.io/clusterrolebindings/urls", binding("", "urls", "ClusterRole", "urls", userSubject("bob")))
	m.put("/rbac.authorization.k8s.io/rolebindings/team/sa", binding("team", "sa", "Role", "cm",
		rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: "builder"}))
	m.put("/rbac.authorization.k8s.io/rolebindings/team/missing", binding("team", "missing", "Role", "nope", userSubject("dave")))
	m.put("/rbac.authorization.k8s.io/clusterroles/exec-get", role("", "exec-get",
		rbacv1.PolicyRule{Verbs: []string{"get"}, APIGroups: []string{""}, Resources: []string{"pods/exec"}}))
	m.put("/rbac.authorization.k8s.io/clusterroles/exec-both", role("", "exec-both",
		rbacv1.PolicyRule{Verbs: []string{"get", "create"}, APIGroups: []string{""}, Resources: []string{"pods/exec"}}))
	m.put("/rbac.authorization.k8s.io/clusterrolebindings/exec-get", binding("", "exec-get", "ClusterRole", "exec-get", userSubject("exec-get")))
	m.put("/rbac.authorization.k8s.io/clusterrolebindings/exec-both", binding("", "exec-both", "ClusterRole", "exec-both", userSubject("exec-both")))
	rev := m.put("/rbac.authorization.k8s.io/clusterrolebindings/wrongkind", binding("", "wrongkind", "Role", "cm", userSubject("erin")))
	waitRBAC(t, a, rev)

	bob := &User{Name: "bob", Groups: []string{GroupAuthenticated}}
	carol := &User{Name: "carol", Groups: []string{GroupAuthenticated}}
	reader := &User{Name: "x", Groups: []string{"readers", GroupAuthenticated}}
	sa := &User{Name: ServiceAccountUserName("team", "builder")}
	execGet := &User{Name: "exec-get"}
	execBoth := &User{Name: "exec-both"}
	saOther := &User{Name: ServiceAccountUserName("other", "builder")}
	cases := []struct {
		name string
		user *User
		at   Attributes
		want bool
	}{
		{"resourceName get", bob, res("get", "", "configmaps", "", "team", "allowed"), true},
		{"resourceName update", bob, res("update", "", "configmaps", "", "team", "allowed"), true},
		{"resourceName other name", bob, res("get", "", "configmaps", "", "team", "other"), false},
		{"resourceName verb not granted", bob, res("delete", "", "configmaps", "", "team", "allowed"), false},
		{"resourceName create has no name", bob, res("create", "", "configmaps", "", "team", ""), false},
		{"list granted", bob, res("list", "", "configmaps", "", "team", ""), true},
		{"watch not granted", bob, res("watch", "", "configmaps", "", "team", ""), false},
		{"other namespace", bob, res("list", "", "configmaps", "", "default", ""), false},
		{"all namespaces", bob, res("list", "", "configmaps", "", "", ""), false},
		{"other group", bob, res("list", "apps", "configmaps", "", "team", ""), false},
		{"subresource", bob, res("get", "", "pods", "log", "team", "p"), true},
		{"subresource does not grant the resource", bob, res("get", "", "pods", "", "team", "p"), false},
		{"other subresource", bob, res("get", "", "pods", "exec", "team", "p"), false},
		{"exec get without create", execGet, res("get", "", "pods", "exec", "team", "p"), false},
		{"exec get with create", execBoth, res("get", "", "pods", "exec", "team", "p"), true},
		{"exec create", execBoth, res("create", "", "pods", "exec", "team", "p"), true},
		{"*/scale", bob, res("get", "apps", "deployments", "scale", "team", "d"), true},
		{"*/scale not the resource", bob, res("get", "apps", "deployments", "", "team", "d"), false},
		{"services/*", bob, res("update", "", "services", "status", "team", "s"), true},
		{"services/* not the resource", bob, res("update", "", "services", "", "team", "s"), false},
		{"cluster role binding everywhere", reader, res("list", "", "pods", "", "", ""), true},
		{"cluster role binding in a namespace", reader, res("get", "apps", "deployments", "", "x", "d"), true},
		{"cluster role binding verb", reader, res("delete", "", "pods", "", "x", "p"), false},
		{"cluster role via rolebinding in its ns", carol, res("get", "", "pods", "", "dev", "p"), true},
		{"cluster role via rolebinding elsewhere", carol, res("get", "", "pods", "", "prod", "p"), false},
		{"cluster role via rolebinding cluster-wide", carol, res("list", "", "pods", "", "", ""), false},
		{"url", bob, nonRes("get", "/metrics"), true},
		{"url prefix", bob, nonRes("get", "/debug/pprof/heap"), true},
		{"url exact only", bob, nonRes("get", "/metricsx"), false},
		{"url verb", bob, nonRes("post", "/metrics"), false},
		{"url not granted", bob, nonRes("get", "/apis"), false},
		{"url through rolebinding", carol, nonRes("get", "/metrics"), false},
		{"sa subject defaults to binding ns", sa, res("list", "", "configmaps", "", "team", ""), true},
		{"sa of other ns", saOther, res("list", "", "configmaps", "", "team", ""), false},
		{"binding to missing role", &User{Name: "dave"}, res("list", "", "configmaps", "", "team", ""), false},
		{"cluster binding to a Role", &User{Name: "erin"}, res("list", "", "configmaps", "", "team", ""), false},
		{"nobody", &User{Name: "nobody", Groups: []string{GroupAuthenticated}}, res("get", "", "pods", "", "team", "p"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.at.User = c.user
			if got, _ := a.Authorize(context.Background(), c.at); got != c.want {
				t.Errorf("Authorize(%+v) = %v, want %v", c.at, got, c.want)
			}
		})
	}

	// Changes arrive through the watch: deleting the binding revokes.
	rev = m.del("/rbac.authorization.k8s.io/rolebindings/team/bob")
	waitRBAC(t, a, rev)
	at := res("list", "", "configmaps", "", "team", "")
	at.User = bob
	if ok, _ := a.Authorize(context.Background(), at); ok {
		t.Error("still allowed after the RoleBinding was deleted")
	}
	// And changing a role's rules changes the grant.
	m.put("/rbac.authorization.k8s.io/rolebindings/team/bob", binding("team", "bob", "Role", "cm", userSubject("bob")))
	rev = m.put("/rbac.authorization.k8s.io/roles/team/cm", role("team", "cm",
		rbacv1.PolicyRule{Verbs: []string{"watch"}, APIGroups: []string{""}, Resources: []string{"configmaps"}}))
	waitRBAC(t, a, rev)
	if ok, _ := a.Authorize(context.Background(), at); ok {
		t.Error("list allowed after the Role dropped it")
	}
	at.Verb = "watch"
	if ok, _ := a.Authorize(context.Background(), at); !ok {
		t.Error("watch denied after the Role granted it")
	}
}

// TestRBACCacheRestore: a store restored from a snapshot ends the watch;
// the cache lists again and reflects the restored state.
func TestRBACCacheRelist(t *testing.T) {
	m := newMemStore(t)
	m.put("/rbac.authorization.k8s.io/clusterroles/all", role("", "all",
		rbacv1.PolicyRule{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}}))
	m.put("/rbac.authorization.k8s.io/clusterrolebindings/before", binding("", "before", "ClusterRole", "all", userSubject("before")))
	a := startAuth(t, Config{Store: m.st})
	at := res("delete", "", "pods", "", "x", "p")
	at.User = &User{Name: "before"}
	if ok, _ := a.Authorize(context.Background(), at); !ok {
		t.Fatal("object present before Start is not in the cache")
	}
	// Restore a snapshot of a different store into m.st.
	other := newMemStore(t)
	other.put("/rbac.authorization.k8s.io/clusterroles/all", role("", "all",
		rbacv1.PolicyRule{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}}))
	other.put("/rbac.authorization.k8s.io/clusterrolebindings/after", binding("", "after", "ClusterRole", "all", userSubject("after")))
	snap, err := other.st.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if err := m.st.Restore(sink.reader()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		at.User = &User{Name: "after"}
		okAfter, _ := a.Authorize(context.Background(), at)
		at.User = &User{Name: "before"}
		okBefore, _ := a.Authorize(context.Background(), at)
		if okAfter && !okBefore {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache not relisted after restore: after=%v before=%v", okAfter, okBefore)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct{ buf []byte }

func (s *memSink) Write(p []byte) (int, error) { s.buf = append(s.buf, p...); return len(p), nil }
func (s *memSink) Close() error                { return nil }
func (s *memSink) ID() string                  { return "mem" }
func (s *memSink) Cancel() error               { return nil }
func (s *memSink) reader() io.ReadCloser       { return io.NopCloser(bytes.NewReader(s.buf)) }
