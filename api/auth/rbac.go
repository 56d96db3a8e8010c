package auth

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	rbacv1 "k8s.io/api/rbac/v1"

	"flotilla/fsm"
)

// rbacPrefix is where the RBAC objects live in the FSM:
// roles and rolebindings at <prefix><plural>/<ns>/<name>, clusterroles and
// clusterrolebindings at <prefix><plural>/<name>.
const rbacPrefix = "/rbac.authorization.k8s.io/"

// rule is a PolicyRule prepared for matching. A "*" in a list is kept as a
// flag so the hot path never compares against it.
type rule struct {
	verbs, groups, resources, names, urls []string
	allVerbs, allGroups, allResources     bool
}

func compileRule(pr rbacv1.PolicyRule) rule {
	r := rule{names: pr.ResourceNames, urls: pr.NonResourceURLs}
	r.verbs, r.allVerbs = splitStar(pr.Verbs)
	r.groups, r.allGroups = splitStar(pr.APIGroups)
	r.resources, r.allResources = splitStar(pr.Resources)
	return r
}

func splitStar(in []string) ([]string, bool) {
	for _, s := range in {
		if s == rbacv1.VerbAll {
			return nil, true
		}
	}
	return in, false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// allows is kube's RuleAllows.
func (r *rule) allows(a *Attributes) bool {
	if !r.allVerbs && !contains(r.verbs, a.Verb) {
		return false
	}
	if !a.ResourceRequest {
		for _, u := range r.urls {
			if u == rbacv1.NonResourceAll || u == a.Path ||
				(strings.HasSuffix(u, "*") && strings.HasPrefix(a.Path, u[:len(u)-1])) {
				return true
			}
		}
		return false
	}
	if !r.allGroups && !contains(r.groups, a.APIGroup) {
		return false
	}
	if !r.resourceMatches(a) {
		return false
	}
	return len(r.names) == 0 || (a.Name != "" && contains(r.names, a.Name))
}

// resourceMatches: "pods" matches only the pods themselves, "pods/log" one
// subresource, "*/scale" that subresource of anything, "pods/*" every
// subresource of pods (not pods itself), "*" everything.
func (r *rule) resourceMatches(a *Attributes) bool {
	if r.allResources {
		return true
	}
	for _, res := range r.resources {
		if a.Subresource == "" {
			if res == a.Resource {
				return true
			}
			continue
		}
		slash := strings.IndexByte(res, '/')
		if slash < 0 {
			continue
		}
		rr, rs := res[:slash], res[slash+1:]
		if (rr == a.Resource || rr == "*") && (rs == a.Subresource || rs == "*") {
			return true
		}
	}
	return false
}

// grant is one binding resolved to the rules of its role.
type grant struct {
	// namespace limits a RoleBinding to its namespace; "" = a
	// ClusterRoleBinding, valid everywhere and for non-resource URLs.
	namespace string
	rules     []rule
	// from names the binding, for the allow reason.
	from string
}

// rbacSnapshot is an immutable index of every binding by subject; requests
// read it without locks.
type rbacSnapshot struct {
	byUser  map[string][]*grant
	byGroup map[string][]*grant
}

func (s *rbacSnapshot) allows(a *Attributes) (bool, string) {
	if a.User == nil {
		return false, ""
	}
	if ok, why := allowsAny(s.byUser[a.User.Name], a); ok {
		return true, why
	}
	for _, g := range a.User.Groups {
		if ok, why := allowsAny(s.byGroup[g], a); ok {
			return true, why
		}
	}
	return false, ""
}

func allowsAny(gs []*grant, a *Attributes) (bool, string) {
	for _, g := range gs {
		if g.namespace != "" && (!a.ResourceRequest || g.namespace != a.Namespace) {
			continue
		}
		for i := range g.rules {
			if g.rules[i].allows(a) {
				return true, g.from
			}
		}
	}
	return false, ""
}

// rbacCache keeps the RBAC objects of the local FSM in memory, maintained
// by a watch, and publishes a fresh snapshot after every batch of changes.
type rbacCache struct {
	log *slog.Logger

	// Owned by the watch goroutine (and tests before Start).
	roles, clusterRoles               map[string]*rbacv1.Role
	roleBindings, clusterRoleBindings map[string]*rbacv1.RoleBinding

	snap atomic.Pointer[rbacSnapshot]
	sync revWaiter
}

func newRBACCache(log *slog.Logger) *rbacCache {
	c := &rbacCache{log: log}
	c.reset()
	c.snap.Store(&rbacSnapshot{})
	return c
}

func (c *rbacCache) reset() {
	c.roles = map[string]*rbacv1.Role{}
	c.clusterRoles = map[string]*rbacv1.Role{}
	c.roleBindings = map[string]*rbacv1.RoleBinding{}
	c.clusterRoleBindings = map[string]*rbacv1.RoleBinding{}
}

// load replaces the whole cache with a fresh list.
func (c *rbacCache) load(kvs []*fsm.KeyValue, rev uint64) {
	c.reset()
	for _, kv := range kvs {
		c.put(kv)
	}
	c.publish(rev)
}

// apply applies one batch of watch events and publishes once.
func (c *rbacCache) apply(evs []fsm.Event) {
	for _, ev := range evs {
		if ev.Type == fsm.EventDelete {
			c.remove(ev.KV.Key)
		} else {
			c.put(ev.KV)
		}
	}
	c.publish(evs[len(evs)-1].Revision)
}

// splitRBACKey turns a key into its plural and the map key (ns/name or name).
func splitRBACKey(key string) (plural, id string, ok bool) {
	rest, found := strings.CutPrefix(key, rbacPrefix)
	if !found {
		return "", "", false
	}
	plural, id, ok = strings.Cut(rest, "/")
	return plural, id, ok && id != ""
}

func (c *rbacCache) put(kv *fsm.KeyValue) {
	plural, id, ok := splitRBACKey(kv.Key)
	if !ok {
		return
	}
	var err error
	switch plural {
	case "roles", "clusterroles":
		var r rbacv1.Role // a ClusterRole's rules decode the same; aggregation is resolved by whoever writes them
		if err = json.Unmarshal(kv.Value, &r); err == nil {
			if plural == "roles" {
				c.roles[id] = &r
			} else {
				c.clusterRoles[id] = &r
			}
		}
	case "rolebindings", "clusterrolebindings":
		var b rbacv1.RoleBinding
		if err = json.Unmarshal(kv.Value, &b); err == nil {
			if plural == "rolebindings" {
				c.roleBindings[id] = &b
			} else {
				c.clusterRoleBindings[id] = &b
			}
		}
	default:
		return
	}
	if err != nil {
		// The API validated it; a value we cannot read grants nothing.
		c.log.Warn("rbac cache: undecodable object ignored", "key", kv.Key, "error", err)
		c.remove(kv.Key)
	}
}

func (c *rbacCache) remove(key string) {
	plural, id, ok := splitRBACKey(key)
	if !ok {
		return
	}
	switch plural {
	case "roles":
		delete(c.roles, id)
	case "clusterroles":
		delete(c.clusterRoles, id)
	case "rolebindings":
		delete(c.roleBindings, id)
	case "clusterrolebindings":
		delete(c.clusterRoleBindings, id)
	}
}

// publish builds a snapshot from the maps and swaps it in.
func (c *rbacCache) publish(rev uint64) {
	c.snap.Store(c.build())
	c.sync.advance(rev)
}

func (c *rbacCache) build() *rbacSnapshot {
	s := &rbacSnapshot{byUser: map[string][]*grant{}, byGroup: map[string][]*grant{}}
	compiled := map[*rbacv1.Role][]rule{}
	rulesOf := func(r *rbacv1.Role) []rule {
		if rs, ok := compiled[r]; ok {
			return rs
		}
		rs := make([]rule, len(r.Rules))
		for i, pr := range r.Rules {
			rs[i] = compileRule(pr)
		}
		compiled[r] = rs
		return rs
	}
	add := func(ns string, b *rbacv1.RoleBinding, from string) {
		var role *rbacv1.Role
		switch b.RoleRef.Kind {
		case "ClusterRole":
			role = c.clusterRoles[b.RoleRef.Name]
		case "Role":
			if ns != "" {
				role = c.roles[ns+"/"+b.RoleRef.Name]
			}
		}
		if role == nil || len(role.Rules) == 0 {
			return // a binding to a missing role grants nothing (as kube)
		}
		g := &grant{namespace: ns, rules: rulesOf(role), from: from}
		for _, sub := range b.Subjects {
			switch sub.Kind {
			case rbacv1.UserKind:
				s.byUser[sub.Name] = append(s.byUser[sub.Name], g)
			case rbacv1.GroupKind:
				s.byGroup[sub.Name] = append(s.byGroup[sub.Name], g)
			case rbacv1.ServiceAccountKind:
				saNS := sub.Namespace
				if saNS == "" {
					saNS = ns // kube: an unqualified SA is the binding's namespace
				}
				if saNS == "" || sub.Name == "" {
					continue
				}
				u := ServiceAccountUserName(saNS, sub.Name)
				s.byUser[u] = append(s.byUser[u], g)
			}
		}
	}
	for name, b := range c.clusterRoleBindings {
		add("", b, fmt.Sprintf("ClusterRoleBinding %q of ClusterRole %q", name, b.RoleRef.Name))
	}
	for id, b := range c.roleBindings {
		ns, name, _ := strings.Cut(id, "/")
		add(ns, b, fmt.Sprintf("RoleBinding %q of %s %q in namespace %q", name, b.RoleRef.Kind, b.RoleRef.Name, ns))
	}
	return s
}

// revWaiter lets tests (and callers that just wrote RBAC objects) wait
// until the cache has caught up with a store revision.
type revWaiter struct {
	mu  sync.Mutex
	rev uint64
	ch  chan struct{}
}

func (w *revWaiter) advance(rev uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rev > w.rev {
		w.rev = rev
	}
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
}

// changed returns the revision reached and a channel closed at the next advance.
func (w *revWaiter) changed() (uint64, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = make(chan struct{})
	}
	return w.rev, w.ch
}

// wait blocks until rev is reached or ctx ends.
func (w *revWaiter) wait(ctx context.Context, rev uint64) error {
	for {
		cur, ch := w.changed()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for revision %d (at %d): %w", rev, cur, ctx.Err())
		}
	}
}
