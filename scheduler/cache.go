package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ErrPodKnown is returned by AssumePod for a pod the cache already counts
// (bound or assumed): scheduling it again would count it twice.
var ErrPodKnown = errors.New("pod already in scheduler cache")

// Cache is the scheduler's view of the cluster: every node, and every pod
// that occupies one — bound (seen by the informer with spec.nodeName) or
// assumed (chosen by this scheduler, binding in flight or not yet seen
// bound). It is updated incrementally by events and safe for concurrent use.
//
// Assumed pods are what let the scheduler place the next pod without waiting
// for the previous bind's round trip: AssumePod counts the pod on its node at
// once; ConfirmPod (the bind call succeeded) starts a TTL; the informer's
// AddPod/UpdatePod of the bound pod turns the assumption into fact; ForgetPod
// (the bind failed) or the TTL running out frees the node again.
type Cache struct {
	mu  sync.Mutex
	ttl time.Duration
	now func() time.Time

	nodes map[string]*NodeInfo
	pods  map[types.UID]*cachedPod
	// dirty names the nodes changed since the last UpdateSnapshot.
	dirty map[string]struct{}
}

type cachedPod struct {
	info    *podInfo
	node    string
	assumed bool
	// deadline is when an assumed pod expires; zero while its bind is in
	// flight (it cannot expire before the binder answered).
	deadline time.Time
}

// NewCache returns an empty cache. ttl bounds how long an assumed pod whose
// bind succeeded waits for the informer (≤ 0: never expires); now is the
// clock (nil: time.Now).
func NewCache(ttl time.Duration, now func() time.Time) *Cache {
	if now == nil {
		now = time.Now
	}
	return &Cache{
		ttl:   ttl,
		now:   now,
		nodes: make(map[string]*NodeInfo),
		pods:  make(map[types.UID]*cachedPod),
		dirty: make(map[string]struct{}),
	}
}

// AddNode adds a node or replaces its object.
func (c *Cache) AddNode(node *v1.Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ni := c.nodes[node.Name]
	if ni == nil {
		ni = newNodeInfo(node)
		c.nodes[node.Name] = ni
	} else {
		ni.setNode(node)
	}
	c.dirty[node.Name] = struct{}{}
}

// UpdateNode replaces a node's object.
func (c *Cache) UpdateNode(node *v1.Node) { c.AddNode(node) }

// RemoveNode forgets a node. Pods still bound to it keep being counted on a
// placeholder (they are deleted or re-listed soon) so that a node coming back
// under the same name does not look empty.
func (c *Cache) RemoveNode(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ni := c.nodes[name]
	if ni == nil {
		return
	}
	if ni.NumPods > 0 {
		ni.setNode(nil)
	} else {
		delete(c.nodes, name)
	}
	c.dirty[name] = struct{}{}
}

// AddPod records a pod the informer saw bound (spec.nodeName set). If the
// pod was assumed, the assumption is confirmed (and moved, should the pod
// have landed elsewhere). A terminated pod no longer occupies its node and is
// removed instead. It reports whether resources were freed on some node
// (the pod terminated, or landed elsewhere than assumed).
func (c *Cache) AddPod(pod *v1.Pod) (freed bool) {
	if isTerminal(pod) || pod.Spec.NodeName == "" {
		return c.RemovePod(pod)
	}
	pi := newPodInfo(pod)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cp := c.pods[pod.UID]; cp != nil {
		c.removeLocked(cp)
		freed = cp.node != pod.Spec.NodeName
	}
	c.addLocked(&cachedPod{info: pi, node: pod.Spec.NodeName})
	return freed
}

// UpdatePod records a change to a bound pod.
func (c *Cache) UpdatePod(_, pod *v1.Pod) (freed bool) { return c.AddPod(pod) }

// RemovePod forgets a pod, bound or assumed. It reports whether the pod was
// counted on a node (and so freed something).
func (c *Cache) RemovePod(pod *v1.Pod) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := c.pods[pod.UID]
	if cp == nil {
		return false
	}
	c.removeLocked(cp)
	return true
}

// AssumePod counts pod on node before the bind is confirmed.
func (c *Cache) AssumePod(pod *v1.Pod, node string) error {
	return c.assume(newPodInfo(pod), node)
}

func (c *Cache) assume(pi *podInfo, node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.pods[pi.pod.UID]; ok {
		return fmt.Errorf("assume pod %s/%s: %w", pi.pod.Namespace, pi.pod.Name, ErrPodKnown)
	}
	c.addLocked(&cachedPod{info: pi, node: node, assumed: true})
	return nil
}

// ConfirmPod records that the bind of an assumed pod succeeded: from now on
// the assumption expires after the TTL unless the informer reports the pod
// bound first. No-op for a pod already seen bound, or unknown.
func (c *Cache) ConfirmPod(pod *v1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cp := c.pods[pod.UID]; cp != nil && cp.assumed && c.ttl > 0 {
		cp.deadline = c.now().Add(c.ttl)
	}
}

// ForgetPod drops an assumed pod (its bind failed), freeing its node. It
// reports whether there was such an assumption; a pod the informer has seen
// bound meanwhile stays.
func (c *Cache) ForgetPod(pod *v1.Pod) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := c.pods[pod.UID]
	if cp == nil || !cp.assumed {
		return false
	}
	c.removeLocked(cp)
	return true
}

// IsAssumed reports whether pod is assumed and not yet seen bound.
func (c *Cache) IsAssumed(pod *v1.Pod) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	cp := c.pods[pod.UID]
	return cp != nil && cp.assumed
}

// Contains reports whether the cache counts pod on a node.
func (c *Cache) Contains(pod *v1.Pod) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.pods[pod.UID]
	return ok
}

// CleanupExpired drops the assumed pods whose TTL ran out and returns them.
func (c *Cache) CleanupExpired() []*v1.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	var out []*v1.Pod
	for _, cp := range c.pods {
		if cp.assumed && !cp.deadline.IsZero() && now.After(cp.deadline) {
			c.removeLocked(cp)
			out = append(out, cp.info.pod)
		}
	}
	return out
}

// NodeInfo returns a copy of one node's state, or nil.
func (c *Cache) NodeInfo(name string) *NodeInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ni := c.nodes[name]; ni != nil {
		return ni.Clone()
	}
	return nil
}

// Counts returns how many nodes (with a Node object) and pods (bound or
// assumed) the cache holds.
func (c *Cache) Counts() (nodes, pods int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ni := range c.nodes {
		if ni.node != nil {
			nodes++
		}
	}
	return nodes, len(c.pods)
}

func (c *Cache) addLocked(cp *cachedPod) {
	ni := c.nodes[cp.node]
	if ni == nil {
		ni = newNodeInfo(nil) // pod seen before its node
		ni.name = cp.node
		c.nodes[cp.node] = ni
	}
	ni.addPod(cp.info)
	c.pods[cp.info.pod.UID] = cp
	c.dirty[cp.node] = struct{}{}
}

func (c *Cache) removeLocked(cp *cachedPod) {
	delete(c.pods, cp.info.pod.UID)
	ni := c.nodes[cp.node]
	if ni == nil {
		return
	}
	ni.removePod(cp.info)
	if ni.node == nil && ni.NumPods == 0 {
		delete(c.nodes, cp.node)
	}
	c.dirty[cp.node] = struct{}{}
}

// UpdateSnapshot brings s up to date, cloning only the nodes that changed
// since the previous call. One Cache feeds one Snapshot.
func (c *Cache) UpdateSnapshot(s *Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.dirty) == 0 {
		return
	}
	// In name order, so that the snapshot's node order (and with it the
	// seeded tie-break) does not depend on map iteration.
	names := s.scratch[:0]
	for name := range c.dirty {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		ni := c.nodes[name]
		if ni == nil || ni.node == nil {
			s.remove(name)
		} else {
			s.set(ni.Clone())
		}
		delete(c.dirty, name)
	}
	clear(names)
	s.scratch = names[:0]
}

// Snapshot is a point-in-time copy of the cache's nodes that one scheduling
// cycle reads without locking. It is not safe for concurrent use.
type Snapshot struct {
	nodes   []*NodeInfo
	index   map[string]int
	scratch []string
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot { return &Snapshot{index: make(map[string]int)} }

// Len is the number of nodes.
func (s *Snapshot) Len() int { return len(s.nodes) }

// Nodes lists the nodes in no particular order; read-only.
func (s *Snapshot) Nodes() []*NodeInfo { return s.nodes }

// Get returns the node called name, or nil.
func (s *Snapshot) Get(name string) *NodeInfo {
	if i, ok := s.index[name]; ok {
		return s.nodes[i]
	}
	return nil
}

func (s *Snapshot) set(ni *NodeInfo) {
	if i, ok := s.index[ni.Name()]; ok {
		s.nodes[i] = ni
		return
	}
	s.index[ni.Name()] = len(s.nodes)
	s.nodes = append(s.nodes, ni)
}

func (s *Snapshot) remove(name string) {
	i, ok := s.index[name]
	if !ok {
		return
	}
	last := len(s.nodes) - 1
	if i != last {
		s.nodes[i] = s.nodes[last]
		s.index[s.nodes[i].Name()] = i
	}
	s.nodes[last] = nil
	s.nodes = s.nodes[:last]
	delete(s.index, name)
}

func isTerminal(pod *v1.Pod) bool {
	return pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed
}
