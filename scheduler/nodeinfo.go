package scheduler

import (
	"hash/maphash"
	"maps"

	v1 "k8s.io/api/core/v1"
)

// NodeInfo is one node as the scheduler sees it: the Node object plus what
// the pods bound or assumed on it add up to. The Cache owns the live copy;
// a Snapshot holds clones, which a scheduling cycle reads without locks.
// Callers treat every field as read-only.
type NodeInfo struct {
	node *v1.Node
	// What the filters read on every node, copied out of the Node object
	// so that a cycle walking thousands of nodes stays in NodeInfo memory
	// instead of chasing each Node.
	name          string
	unschedulable bool
	labels        map[string]string
	taints        []v1.Taint
	// ready caches the node's Ready condition status ("" when absent).
	ready v1.ConditionStatus
	// taintReasons[i] is the rejection reason for node.Spec.Taints[i],
	// formatted once per node update rather than per rejection.
	taintReasons []string

	// Allocatable is node.status.allocatable (capacity when empty).
	Allocatable Resources
	// AllowedPods is the "pods" allocatable.
	AllowedPods int64

	// Requested sums the requests of the pods on the node.
	Requested Resources
	// NonZeroRequested is Requested with the scoring defaults applied
	// (cpu and memory only).
	NonZeroRequested Resources
	// NumPods counts the pods on the node, bound and assumed.
	NumPods int

	// ports: (protocol, port) → host IP → pods using it.
	ports map[portKey]map[string]int
	// owners: hashed owner key (ownerHash) → pods of that owner on the node.
	owners map[uint64]int32
}

// ownerSeed keys ownerHash; per process, which is all the counts live for.
var ownerSeed = maphash.MakeSeed()

// ownerHash condenses an owner key to what NodeInfo counts by: integer keys
// hash and compare much faster than the strings when a cycle scores hundreds
// of nodes. A collision would merely make two owners spread as one.
func ownerHash(key string) uint64 { return maphash.String(ownerSeed, key) }

type portKey struct {
	protocol v1.Protocol
	port     int32
}

func newNodeInfo(node *v1.Node) *NodeInfo {
	ni := &NodeInfo{}
	ni.setNode(node)
	return ni
}

// Node is the Node object; nil for a placeholder kept while pods are known to
// be bound to a node the cache has not seen (yet or any more).
func (n *NodeInfo) Node() *v1.Node { return n.node }

// Name is the node's name.
func (n *NodeInfo) Name() string { return n.name }

// PodsOfOwner is how many pods spreading under key (see ownerKey) the node has.
func (n *NodeInfo) PodsOfOwner(key string) int { return int(n.owners[ownerHash(key)]) }

// PortInUse reports whether a pod asking for hp would conflict with a port
// already used on the node: same protocol and port, and the same host IP or
// either side binding every address.
func (n *NodeInfo) PortInUse(hp HostPort) bool {
	ips := n.ports[portKey{hp.Protocol, hp.Port}]
	if len(ips) == 0 {
		return false
	}
	if hp.IP == anyHostIP {
		return true
	}
	return ips[hp.IP] > 0 || ips[anyHostIP] > 0
}

func (n *NodeInfo) setNode(node *v1.Node) {
	n.node = node
	n.ready = ""
	n.taintReasons = nil
	if node == nil {
		// A placeholder keeps its name: pods still point at it.
		n.unschedulable, n.labels, n.taints = false, nil, nil
		n.Allocatable, n.AllowedPods = Resources{}, 0
		return
	}
	n.name = node.Name
	n.unschedulable = node.Spec.Unschedulable
	n.labels = node.Labels
	n.taints = node.Spec.Taints
	for i := range node.Status.Conditions {
		if c := &node.Status.Conditions[i]; c.Type == v1.NodeReady {
			n.ready = c.Status
			break
		}
	}
	for i := range node.Spec.Taints {
		n.taintReasons = append(n.taintReasons, TaintReason(&node.Spec.Taints[i]))
	}
	alloc := node.Status.Allocatable
	if len(alloc) == 0 {
		alloc = node.Status.Capacity
	}
	n.Allocatable, n.AllowedPods = resourcesFrom(alloc)
}

func (n *NodeInfo) addPod(pi *podInfo) {
	n.Requested.add(&pi.req)
	n.NonZeroRequested.add(&pi.nonZero)
	n.NumPods++
	for _, hp := range pi.ports {
		if n.ports == nil {
			n.ports = make(map[portKey]map[string]int)
		}
		k := portKey{hp.Protocol, hp.Port}
		ips := n.ports[k]
		if ips == nil {
			ips = make(map[string]int, 1)
			n.ports[k] = ips
		}
		ips[hp.IP]++
	}
	if pi.owner != "" {
		if n.owners == nil {
			n.owners = make(map[uint64]int32)
		}
		n.owners[pi.ownerHash]++
	}
}

func (n *NodeInfo) removePod(pi *podInfo) {
	n.Requested.sub(&pi.req)
	n.NonZeroRequested.sub(&pi.nonZero)
	n.NumPods--
	for _, hp := range pi.ports {
		k := portKey{hp.Protocol, hp.Port}
		if ips := n.ports[k]; ips != nil {
			if ips[hp.IP]--; ips[hp.IP] <= 0 {
				delete(ips, hp.IP)
			}
			if len(ips) == 0 {
				delete(n.ports, k)
			}
		}
	}
	if pi.owner != "" {
		if n.owners[pi.ownerHash]--; n.owners[pi.ownerHash] <= 0 {
			delete(n.owners, pi.ownerHash)
		}
	}
}

// Clone returns a deep copy (the Node object itself is shared: it is never
// mutated).
func (n *NodeInfo) Clone() *NodeInfo {
	c := *n
	c.Allocatable = n.Allocatable.clone()
	c.Requested = n.Requested.clone()
	c.NonZeroRequested = n.NonZeroRequested.clone()
	if n.ports != nil {
		c.ports = make(map[portKey]map[string]int, len(n.ports))
		for k, ips := range n.ports {
			m := make(map[string]int, len(ips))
			for ip, cnt := range ips {
				m[ip] = cnt
			}
			c.ports[k] = m
		}
	}
	c.owners = maps.Clone(n.owners)
	return &c
}
