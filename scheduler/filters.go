package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	v1 "k8s.io/api/core/v1"
)

// The reasons a node is rejected for, worded as kube-scheduler words them so
// that `kubectl describe pod` reads the same. Untolerated taints and missing
// resources are formatted with TaintReason and InsufficientReason.
const (
	ReasonUnschedulable = "node(s) were unschedulable"
	ReasonNodeName      = "node(s) didn't match the requested node name"
	ReasonNodeAffinity  = "node(s) didn't match Pod's node affinity/selector"
	ReasonHostPorts     = "node(s) didn't have free ports for the requested pod ports"
	ReasonTooManyPods   = "Too many pods"
)

// TaintReason is the reason for a node whose taint the pod does not tolerate.
func TaintReason(t *v1.Taint) string {
	return "node(s) had untolerated taint {" + t.Key + ": " + t.Value + "}"
}

// InsufficientReason is the reason for a node short of a resource.
func InsufficientReason(name v1.ResourceName) string { return "Insufficient " + string(name) }

// The taints kube's node lifecycle controller puts on a node whose Ready
// condition is False (or missing) or Unknown. The ready check applies them
// implicitly, so a NotReady node is refused with kube's wording even before
// any controller has tainted it, and a pod tolerating them (a DaemonSet-like
// agent pod) may still land there.
var (
	notReadyTaint    = v1.Taint{Key: v1.TaintNodeNotReady, Effect: v1.TaintEffectNoSchedule}
	unreachableTaint = v1.Taint{Key: v1.TaintNodeUnreachable, Effect: v1.TaintEffectNoSchedule}
	cordonTaint      = v1.Taint{Key: v1.TaintNodeUnschedulable, Effect: v1.TaintEffectNoSchedule}

	reasonNotReady    = TaintReason(&notReadyTaint)
	reasonUnreachable = TaintReason(&unreachableTaint)
)

// NodeIterator yields candidate nodes one at a time; Next returns nil when
// there are no more. The filter chain is NodeIterators wrapping each other.
type NodeIterator interface {
	Next() *NodeInfo
}

// FeasibilityChecker decides whether the pod of the current cycle can run on
// a node. Returning false, it has recorded why in the cycle's Diagnosis.
type FeasibilityChecker interface {
	Feasible(*NodeInfo) bool
}

// cycle is the state of one scheduling attempt, shared by every stage of the
// chain and every ranker: the pod, what was derived from it once, and the
// rejections so far.
type cycle struct {
	pi          *podInfo
	pod         *v1.Pod
	tolerations []v1.Toleration
	// required is nodeSelector + required node affinity; hasRequired is
	// false when the pod has neither.
	required    requiredAffinity
	hasRequired bool
	// preferred is nil when the pod has no preferred node affinity.
	preferred *preferredTerms
	// scalarReasons: the pod's extended resources, each with its reason.
	scalarReasons []scalarReason
	diag          Diagnosis
}

type scalarReason struct {
	name   v1.ResourceName
	reason string
}

func (c *cycle) reset(pi *podInfo, numNodes int) {
	pod := pi.pod
	c.pi, c.pod = pi, pod
	c.tolerations = pod.Spec.Tolerations
	c.required, c.hasRequired = newRequiredAffinity(pod)
	c.preferred = newPreferredTerms(pod)
	c.scalarReasons = c.scalarReasons[:0]
	for name := range pi.req.Scalar {
		c.scalarReasons = append(c.scalarReasons, scalarReason{name, InsufficientReason(name)})
	}
	slices.SortFunc(c.scalarReasons, func(a, b scalarReason) int { return cmp.Compare(a.name, b.name) })
	c.diag.NumAllNodes = numNodes
	c.diag.Rejections = c.diag.Rejections[:0]
}

func (c *cycle) reject(n *NodeInfo, reason string) {
	c.diag.Rejections = append(c.diag.Rejections, Rejection{Node: n.Name(), Reason: reason})
}

// discard is the logger the toleration helpers want; they only log invalid
// numeric comparisons, which validation already refuses.
var discard = logr.Discard()

func tolerates(tolerations []v1.Toleration, t *v1.Taint) bool {
	for i := range tolerations {
		// Numeric toleration operators (Gt/Lt) are an alpha kube feature;
		// off here as in kube's default.
		if tolerations[i].ToleratesTaint(discard, t, false) {
			return true
		}
	}
	return false
}

// filterChain is the feasibility stages over a source, built once per
// engine and rewired for each pod by wire.
type filterChain struct {
	c      *cycle
	source NodeIterator
	checks []chainCheck
	stages []filterStage
}

type chainCheck struct {
	check FeasibilityChecker
	// applies reports whether the check can reject anything for the
	// cycle's pod; nil = always. A check that cannot is left out of the
	// chain rather than called on every node.
	applies func(*cycle) bool
}

// newFilterChain wires the feasibility stages over source. Order matters
// twice. For speed: the first checks read a field or two that NodeInfo
// caches and throw out nodes that can never do (not ready, cordoned, another
// name); taints and node affinity read small taint and label sets; the last
// two depend on the pods on the node and do arithmetic, and most nodes pass
// them anyway. For the message: a node failing several checks is counted
// once, under the first, and this is kube-scheduler's filter order (node
// unschedulable, node name, taints, node affinity, ports, resources), so a
// pending pod explains itself as it would on kube.
func newFilterChain(c *cycle, source NodeIterator) *filterChain {
	fc := &filterChain{c: c, source: source, checks: []chainCheck{
		{check: readyCheck{c}},
		{check: unschedulableCheck{c}},
		{check: nodeNameCheck{c}, applies: func(c *cycle) bool { return c.pod.Spec.NodeName != "" }},
		{check: taintCheck{c}},
		{check: affinityCheck{c}, applies: func(c *cycle) bool { return c.hasRequired }},
		{check: portsCheck{c}, applies: func(c *cycle) bool { return len(c.pi.ports) > 0 }},
		{check: resourcesCheck{c}},
	}}
	fc.stages = make([]filterStage, len(fc.checks))
	return fc
}

// wire links the stages that apply to the cycle's pod, each wrapping the
// previous one, and returns the last: the iterator of feasible nodes.
func (fc *filterChain) wire() NodeIterator {
	it := fc.source
	for i, ck := range fc.checks {
		if ck.applies != nil && !ck.applies(fc.c) {
			continue
		}
		fc.stages[i] = filterStage{source: it, check: ck.check}
		it = &fc.stages[i]
	}
	return it
}

// filterStage passes on the nodes of its source its check accepts.
type filterStage struct {
	source NodeIterator
	check  FeasibilityChecker
}

func (f *filterStage) Next() *NodeInfo {
	for {
		n := f.source.Next()
		if n == nil || f.check.Feasible(n) {
			return n
		}
	}
}

// rotatingSource yields every node of a snapshot once, starting at an offset
// the scheduler advances each cycle, so that stopping early (see
// numFeasibleNodesToFind) does not always favour the same nodes.
type rotatingSource struct {
	nodes   []*NodeInfo
	start   int
	visited int
}

func (s *rotatingSource) reset(nodes []*NodeInfo, start int) {
	s.nodes, s.visited = nodes, 0
	s.start = 0
	if len(nodes) > 0 {
		s.start = start % len(nodes)
	}
}

func (s *rotatingSource) Next() *NodeInfo {
	if s.visited >= len(s.nodes) {
		return nil
	}
	i := s.start + s.visited
	if i >= len(s.nodes) {
		i -= len(s.nodes)
	}
	s.visited++
	return s.nodes[i]
}

// readyCheck: the node's Ready condition is True, or the pod tolerates the
// taint kube would put on it (not-ready, or unreachable when Unknown).
type readyCheck struct{ c *cycle }

func (k readyCheck) Feasible(n *NodeInfo) bool {
	if n.ready == v1.ConditionTrue {
		return true
	}
	t, reason := &notReadyTaint, reasonNotReady
	if n.ready == v1.ConditionUnknown {
		t, reason = &unreachableTaint, reasonUnreachable
	}
	if tolerates(k.c.tolerations, t) {
		return true
	}
	k.c.reject(n, reason)
	return false
}

// unschedulableCheck: the node is not cordoned, or the pod tolerates the
// node.kubernetes.io/unschedulable:NoSchedule taint, as on kube.
type unschedulableCheck struct{ c *cycle }

func (k unschedulableCheck) Feasible(n *NodeInfo) bool {
	if !n.unschedulable || tolerates(k.c.tolerations, &cordonTaint) {
		return true
	}
	k.c.reject(n, ReasonUnschedulable)
	return false
}

// nodeNameCheck: a pod naming a node fits only that node. The scheduler never
// sees such pods from the API (spec.nodeName set means already bound); the
// check keeps Schedule honest when called with one.
type nodeNameCheck struct{ c *cycle }

func (k nodeNameCheck) Feasible(n *NodeInfo) bool {
	if want := k.c.pod.Spec.NodeName; want == "" || want == n.name {
		return true
	}
	k.c.reject(n, ReasonNodeName)
	return false
}

// taintCheck: every NoSchedule and NoExecute taint is tolerated.
// PreferNoSchedule only lowers the score.
type taintCheck struct{ c *cycle }

func (k taintCheck) Feasible(n *NodeInfo) bool {
	taints := n.taints
	for i := range taints {
		t := &taints[i]
		if t.Effect != v1.TaintEffectNoSchedule && t.Effect != v1.TaintEffectNoExecute {
			continue
		}
		if !tolerates(k.c.tolerations, t) {
			k.c.reject(n, n.taintReasons[i])
			return false
		}
	}
	return true
}

// affinityCheck: the node's labels satisfy spec.nodeSelector and
// requiredDuringScheduling node affinity (terms ORed, the expressions of a
// term ANDed; In, NotIn, Exists, DoesNotExist, Gt, Lt; matchFields on
// metadata.name).
type affinityCheck struct{ c *cycle }

func (k affinityCheck) Feasible(n *NodeInfo) bool {
	if !k.c.hasRequired {
		return true
	}
	if k.c.required.matches(n.name, n.labels) {
		return true
	}
	k.c.reject(n, ReasonNodeAffinity)
	return false
}

// portsCheck: none of the pod's host ports is taken on the node.
type portsCheck struct{ c *cycle }

func (k portsCheck) Feasible(n *NodeInfo) bool {
	for _, hp := range k.c.pi.ports {
		if n.PortInUse(hp) {
			k.c.reject(n, ReasonHostPorts)
			return false
		}
	}
	return true
}

// resourcesCheck: one more pod fits the node's pod allocatable, and each
// resource the pod requests fits allocatable minus what the node's bound and
// assumed pods request. Every shortage is recorded, as kube does.
type resourcesCheck struct{ c *cycle }

func (k resourcesCheck) Feasible(n *NodeInfo) bool {
	ok := true
	if int64(n.NumPods)+1 > n.AllowedPods {
		k.c.reject(n, ReasonTooManyPods)
		ok = false
	}
	req := &k.c.pi.req
	if req.MilliCPU > 0 && req.MilliCPU > n.Allocatable.MilliCPU-n.Requested.MilliCPU {
		k.c.reject(n, reasonInsufficientCPU)
		ok = false
	}
	if req.Memory > 0 && req.Memory > n.Allocatable.Memory-n.Requested.Memory {
		k.c.reject(n, reasonInsufficientMemory)
		ok = false
	}
	for _, s := range k.c.scalarReasons {
		if v := req.Scalar[s.name]; v > 0 && v > n.Allocatable.Scalar[s.name]-n.Requested.Scalar[s.name] {
			k.c.reject(n, s.reason)
			ok = false
		}
	}
	return ok
}

var (
	reasonInsufficientCPU    = InsufficientReason(v1.ResourceCPU)
	reasonInsufficientMemory = InsufficientReason(v1.ResourceMemory)
)

// Rejection is one node turned down for one reason.
type Rejection struct {
	Node   string
	Reason string
}

// Diagnosis is why a pod fitted none of the nodes.
type Diagnosis struct {
	// NumAllNodes is how many nodes the snapshot had.
	NumAllNodes int
	// Rejections in the order the chain made them. A node short of several
	// resources appears once per resource.
	Rejections []Rejection
}

// NodeReasons groups the rejections by node.
func (d *Diagnosis) NodeReasons() map[string][]string {
	out := make(map[string][]string)
	for _, r := range d.Rejections {
		out[r.Node] = append(out[r.Node], r.Reason)
	}
	return out
}

// Message is the kube-style summary, e.g. "0/5 nodes are available: 3
// Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}.":
// each reason with the number of nodes it rejected, most frequent first,
// ties in text order.
func (d *Diagnosis) Message() string {
	if d.NumAllNodes == 0 {
		return "no nodes available to schedule pods"
	}
	counts := make(map[string]int)
	for _, r := range d.Rejections {
		counts[r.Reason]++
	}
	reasons := make([]string, 0, len(counts))
	for r := range counts {
		reasons = append(reasons, r)
	}
	slices.SortFunc(reasons, func(a, b string) int {
		if c := cmp.Compare(counts[b], counts[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	var b strings.Builder
	fmt.Fprintf(&b, "0/%d nodes are available", d.NumAllNodes)
	for i, r := range reasons {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(counts[r]))
		b.WriteByte(' ')
		b.WriteString(r)
	}
	b.WriteByte('.')
	return b.String()
}

// FitError is returned for a pod that fits no node.
type FitError struct {
	Pod       *v1.Pod
	Diagnosis Diagnosis
}

func (e *FitError) Error() string { return e.Diagnosis.Message() }
