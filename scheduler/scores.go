package scheduler

import (
	"math/rand/v2"

	v1 "k8s.io/api/core/v1"
)

// MaxScore is the best score a ranker gives a node; 0 is the worst.
const MaxScore int64 = 100

// ScoreWeights weighs the rankers; a node's total is the sum over rankers
// of weight × score. A weight of 0 turns a ranker off.
type ScoreWeights struct {
	// LeastAllocated prefers the nodes with the most cpu and memory left.
	LeastAllocated int64
	// BalancedAllocation prefers nodes whose cpu and memory would be used
	// in the same proportion.
	BalancedAllocation int64
	// Spread prefers nodes with the fewest pods of the same owner.
	Spread int64
	// NodeAffinity prefers nodes matching the pod's preferred node affinity
	// terms, by their weights.
	NodeAffinity int64
	// TaintToleration prefers nodes with the fewest PreferNoSchedule taints
	// the pod does not tolerate.
	TaintToleration int64
}

// DefaultScoreWeights are kube-scheduler's default weights for the
// corresponding plugins (Spread standing in for default pod topology
// spreading).
func DefaultScoreWeights() ScoreWeights {
	return ScoreWeights{LeastAllocated: 1, BalancedAllocation: 1, Spread: 2, NodeAffinity: 2, TaintToleration: 3}
}

// Ranker scores the feasible nodes for the pod of the cycle: out[i] is the
// score of nodes[i], from 0 to MaxScore. Scores that need the whole set to be
// normalised (spreading, preferences) see every feasible node at once.
type Ranker interface {
	Rank(nodes []*NodeInfo, out []int64)
}

type weightedRanker struct {
	weight int64
	ranker Ranker
}

func newRankers(c *cycle, w ScoreWeights) []weightedRanker {
	var out []weightedRanker
	add := func(weight int64, r Ranker) {
		if weight > 0 {
			out = append(out, weightedRanker{weight, r})
		}
	}
	add(w.LeastAllocated, leastAllocated{c})
	add(w.BalancedAllocation, balancedAllocation{c})
	add(w.Spread, ownerSpread{c})
	add(w.NodeAffinity, preferredAffinity{c})
	add(w.TaintToleration, taintPreference{c})
	return out
}

// selector picks the best of the feasible nodes.
type selector struct {
	rankers []weightedRanker
	rng     *rand.Rand
	total   []int64
	scratch []int64
}

func newSelector(c *cycle, w ScoreWeights, seed uint64) *selector {
	return &selector{rankers: newRankers(c, w), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// pick returns the node with the highest total score. Ties are broken
// uniformly at random (seeded, so a run is reproducible) so that equal nodes
// share the load instead of the first one taking every pod.
func (s *selector) pick(nodes []*NodeInfo) *NodeInfo {
	if len(nodes) == 1 {
		return nodes[0]
	}
	s.total = resize(s.total, len(nodes))
	clear(s.total)
	s.scratch = resize(s.scratch, len(nodes))
	for _, wr := range s.rankers {
		clear(s.scratch)
		wr.ranker.Rank(nodes, s.scratch)
		for i, v := range s.scratch {
			s.total[i] += wr.weight * v
		}
	}
	best, ties := 0, 1
	for i := 1; i < len(nodes); i++ {
		switch {
		case s.total[i] > s.total[best]:
			best, ties = i, 1
		case s.total[i] == s.total[best]:
			ties++
			if s.rng.IntN(ties) == 0 { // reservoir sampling: each tie kept with p = 1/ties
				best = i
			}
		}
	}
	return nodes[best]
}

func resize(s []int64, n int) []int64 {
	if cap(s) < n {
		return make([]int64, n)
	}
	return s[:n]
}

// leastAllocated: the share of cpu and memory left after placing the pod,
// averaged. Requests use the scoring defaults so best-effort pods count.
type leastAllocated struct{ c *cycle }

func (r leastAllocated) Rank(nodes []*NodeInfo, out []int64) {
	p := &r.c.pi.nonZero
	for i, n := range nodes {
		cpu := freeShare(n.Allocatable.MilliCPU, n.NonZeroRequested.MilliCPU+p.MilliCPU)
		mem := freeShare(n.Allocatable.Memory, n.NonZeroRequested.Memory+p.Memory)
		out[i] = (cpu + mem) / 2
	}
}

func freeShare(alloc, used int64) int64 {
	if alloc <= 0 || used > alloc {
		return 0
	}
	return (alloc - used) * MaxScore / alloc
}

// balancedAllocation: 100 when cpu and memory would be used in the same
// proportion, falling linearly with the difference (for two resources the
// standard deviation of the shares is half their difference).
type balancedAllocation struct{ c *cycle }

func (r balancedAllocation) Rank(nodes []*NodeInfo, out []int64) {
	p := &r.c.pi.nonZero
	for i, n := range nodes {
		if n.Allocatable.MilliCPU <= 0 || n.Allocatable.Memory <= 0 {
			continue
		}
		cpu := min(float64(n.NonZeroRequested.MilliCPU+p.MilliCPU)/float64(n.Allocatable.MilliCPU), 1)
		mem := min(float64(n.NonZeroRequested.Memory+p.Memory)/float64(n.Allocatable.Memory), 1)
		d := cpu - mem
		if d < 0 {
			d = -d
		}
		out[i] = int64((1 - d/2) * float64(MaxScore))
	}
}

// ownerSpread: fewer pods of the same owner is better; the node with the
// most scores 0, nodes with none 100.
type ownerSpread struct{ c *cycle }

func (r ownerSpread) Rank(nodes []*NodeInfo, out []int64) {
	if r.c.pi.owner == "" {
		return
	}
	owner := r.c.pi.ownerHash
	var most int64
	for i, n := range nodes {
		out[i] = int64(n.owners[owner])
		most = max(most, out[i])
	}
	normalise(out, most, true)
}

// preferredAffinity: the sum of the weights of the preferred node affinity
// terms the node matches, scaled so the best node scores 100.
type preferredAffinity struct{ c *cycle }

func (r preferredAffinity) Rank(nodes []*NodeInfo, out []int64) {
	if r.c.preferred == nil {
		return
	}
	var most int64
	for i, n := range nodes {
		out[i] = r.c.preferred.score(n.name, n.labels)
		most = max(most, out[i])
	}
	normalise(out, most, false)
}

// taintPreference: fewer untolerated PreferNoSchedule taints is better.
type taintPreference struct{ c *cycle }

func (r taintPreference) Rank(nodes []*NodeInfo, out []int64) {
	var most int64
	for i, n := range nodes {
		var bad int64
		for j := range n.taints {
			t := &n.taints[j]
			if t.Effect == v1.TaintEffectPreferNoSchedule && !toleratesPreferNoSchedule(r.c.tolerations, t) {
				bad++
			}
		}
		out[i] = bad
		most = max(most, bad)
	}
	normalise(out, most, true)
}

// toleratesPreferNoSchedule counts only the tolerations that can apply to a
// PreferNoSchedule taint: that effect, or any effect.
func toleratesPreferNoSchedule(tolerations []v1.Toleration, t *v1.Taint) bool {
	for i := range tolerations {
		tol := &tolerations[i]
		if tol.Effect != "" && tol.Effect != v1.TaintEffectPreferNoSchedule {
			continue
		}
		if tol.ToleratesTaint(discard, t, false) {
			return true
		}
	}
	return false
}

// normalise scales raw values in [0, most] to [0, MaxScore]; reverse makes
// the smallest raw value the best. With most = 0 every node is equal: all
// MaxScore when reversed (nothing to avoid), all 0 otherwise.
func normalise(out []int64, most int64, reverse bool) {
	for i := range out {
		switch {
		case most == 0 && reverse:
			out[i] = MaxScore
		case most == 0:
			out[i] = 0
		case reverse:
			out[i] = MaxScore - out[i]*MaxScore/most
		default:
			out[i] = out[i] * MaxScore / most
		}
	}
}
