package scheduler

import (
	"strconv"

	v1 "k8s.io/api/core/v1"
)

// Node selector matching, compiled once per pod and then evaluated against
// each node without allocating (component-helpers' nodeaffinity builds a
// fields map per node and call, which dominated the filter at 5,000 nodes).
// Semantics are kube's:
//
//   - spec.nodeSelector: every key equal;
//   - nodeSelectorTerms are ORed; a term's matchExpressions and matchFields
//     are ANDed; a term with neither matches nothing;
//   - In/NotIn take a non-empty value list (NotIn and DoesNotExist also
//     match a node without the label); Exists/DoesNotExist take none;
//     Gt/Lt take one integer and need the label to parse as one;
//   - matchFields supports metadata.name with In/NotIn;
//   - a malformed requirement makes its term match nothing (API validation
//     refuses them in the first place).

type selectorOp uint8

const (
	opIn selectorOp = iota
	opNotIn
	opExists
	opDoesNotExist
	opGt
	opLt
)

type requirement struct {
	key    string
	op     selectorOp
	values []string
	num    int64 // Gt/Lt operand
	field  bool  // matches metadata.name instead of a label
}

type selectorTerm struct {
	reqs []requirement
}

// nodeMatcher is a compiled set of ORed terms.
type nodeMatcher struct {
	terms []selectorTerm
}

func compileTerms(terms []v1.NodeSelectorTerm) nodeMatcher {
	var m nodeMatcher
	for i := range terms {
		if t, ok := compileTerm(&terms[i]); ok {
			m.terms = append(m.terms, t)
		}
	}
	return m
}

// compileTerm returns false for a term that can match nothing: empty or
// malformed.
func compileTerm(t *v1.NodeSelectorTerm) (selectorTerm, bool) {
	if len(t.MatchExpressions) == 0 && len(t.MatchFields) == 0 {
		return selectorTerm{}, false
	}
	st := selectorTerm{reqs: make([]requirement, 0, len(t.MatchExpressions)+len(t.MatchFields))}
	for i := range t.MatchExpressions {
		r, ok := compileRequirement(&t.MatchExpressions[i], false)
		if !ok {
			return selectorTerm{}, false
		}
		st.reqs = append(st.reqs, r)
	}
	for i := range t.MatchFields {
		f := &t.MatchFields[i]
		if f.Key != "metadata.name" || (f.Operator != v1.NodeSelectorOpIn && f.Operator != v1.NodeSelectorOpNotIn) {
			return selectorTerm{}, false
		}
		r, ok := compileRequirement(f, true)
		if !ok {
			return selectorTerm{}, false
		}
		st.reqs = append(st.reqs, r)
	}
	return st, true
}

func compileRequirement(e *v1.NodeSelectorRequirement, field bool) (requirement, bool) {
	r := requirement{key: e.Key, values: e.Values, field: field}
	switch e.Operator {
	case v1.NodeSelectorOpIn, v1.NodeSelectorOpNotIn:
		if len(e.Values) == 0 {
			return r, false
		}
		r.op = opIn
		if e.Operator == v1.NodeSelectorOpNotIn {
			r.op = opNotIn
		}
	case v1.NodeSelectorOpExists, v1.NodeSelectorOpDoesNotExist:
		if len(e.Values) != 0 {
			return r, false
		}
		r.op = opExists
		if e.Operator == v1.NodeSelectorOpDoesNotExist {
			r.op = opDoesNotExist
		}
	case v1.NodeSelectorOpGt, v1.NodeSelectorOpLt:
		if len(e.Values) != 1 {
			return r, false
		}
		n, err := strconv.ParseInt(e.Values[0], 10, 64)
		if err != nil {
			return r, false
		}
		r.num = n
		r.op = opGt
		if e.Operator == v1.NodeSelectorOpLt {
			r.op = opLt
		}
	default:
		return r, false
	}
	return r, true
}

func (m *nodeMatcher) matches(name string, labels map[string]string) bool {
	for i := range m.terms {
		if m.terms[i].matches(name, labels) {
			return true
		}
	}
	return false
}

func (t *selectorTerm) matches(name string, labels map[string]string) bool {
	for i := range t.reqs {
		if !t.reqs[i].matches(name, labels) {
			return false
		}
	}
	return true
}

func (r *requirement) matches(name string, labels map[string]string) bool {
	var val string
	var has bool
	if r.field {
		val, has = name, true
	} else {
		val, has = labels[r.key]
	}
	switch r.op {
	case opIn:
		return has && contains(r.values, val)
	case opNotIn:
		return !has || !contains(r.values, val)
	case opExists:
		return has
	case opDoesNotExist:
		return !has
	case opGt, opLt:
		if !has {
			return false
		}
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			return false
		}
		if r.op == opGt {
			return n > r.num
		}
		return n < r.num
	}
	return false
}

func contains(values []string, v string) bool {
	for _, x := range values {
		if x == v {
			return true
		}
	}
	return false
}

// requiredAffinity is spec.nodeSelector plus the required node affinity.
type requiredAffinity struct {
	// selector is spec.nodeSelector as a slice: ranging over a map costs
	// a random start per node.
	selector []labelPair
	// terms is nil when the pod has no required node affinity.
	terms *nodeMatcher
}

type labelPair struct{ key, value string }

func newRequiredAffinity(pod *v1.Pod) (requiredAffinity, bool) {
	var ra requiredAffinity
	for k, v := range pod.Spec.NodeSelector {
		ra.selector = append(ra.selector, labelPair{k, v})
	}
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		m := compileTerms(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms)
		ra.terms = &m
	}
	return ra, len(ra.selector) > 0 || ra.terms != nil
}

func (ra *requiredAffinity) matches(name string, labels map[string]string) bool {
	for _, p := range ra.selector {
		if got, ok := labels[p.key]; !ok || got != p.value {
			return false
		}
	}
	return ra.terms == nil || ra.terms.matches(name, labels)
}

// preferredTerms are the weighted preferred node affinity terms.
type preferredTerms struct {
	terms   []selectorTerm
	weights []int64
}

func newPreferredTerms(pod *v1.Pod) *preferredTerms {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil {
		return nil
	}
	var p preferredTerms
	for i := range a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
		pt := &a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution[i]
		if pt.Weight == 0 {
			continue
		}
		if t, ok := compileTerm(&pt.Preference); ok {
			p.terms = append(p.terms, t)
			p.weights = append(p.weights, int64(pt.Weight))
		}
	}
	if len(p.terms) == 0 {
		return nil
	}
	return &p
}

// score sums the weights of the terms the node matches.
func (p *preferredTerms) score(name string, labels map[string]string) int64 {
	var s int64
	for i := range p.terms {
		if p.terms[i].matches(name, labels) {
			s += p.weights[i]
		}
	}
	return s
}
