package scheduler

import (
	"fmt"
	"maps"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// rank runs one ranker over every node of the harness's snapshot.
func (h *harness) rank(pod *v1.Pod, newRanker func(*cycle) Ranker) map[string]int64 {
	e := h.e
	e.cycleMu.Lock()
	defer e.cycleMu.Unlock()
	e.cache.UpdateSnapshot(e.snap)
	e.cyc.reset(newPodInfo(pod), e.snap.Len())
	nodes := e.snap.Nodes()
	out := make([]int64, len(nodes))
	newRanker(&e.cyc).Rank(nodes, out)
	got := make(map[string]int64, len(nodes))
	for i, n := range nodes {
		got[n.Name()] = out[i]
	}
	return got
}

func TestRankers(t *testing.T) {
	least := func(c *cycle) Ranker { return leastAllocated{c} }
	balanced := func(c *cycle) Ranker { return balancedAllocation{c} }
	spread := func(c *cycle) Ranker { return ownerSpread{c} }
	preferred := func(c *cycle) Ranker { return preferredAffinity{c} }
	taints := func(c *cycle) Ranker { return taintPreference{c} }
	tests := []struct {
		name   string
		ranker func(*cycle) Ranker
		nodes  []*v1.Node
		bound  []*v1.Pod
		pod    *v1.Pod
		want   map[string]int64
	}{
		{
			name:   "least allocated",
			ranker: least,
			nodes:  []*v1.Node{makeNode("a"), makeNode("b")},
			bound:  []*v1.Pod{makePod("x", boundTo("b"), requests("2", "4Gi"))},
			pod:    makePod("p", requests("1", "2Gi")),
			want:   map[string]int64{"a": 75, "b": 25},
		},
		{
			name:   "least allocated: best-effort pod counts with defaults",
			ranker: least,
			nodes:  []*v1.Node{makeNode("a")},
			pod:    makePod("p"),
			want:   map[string]int64{"a": 97}, // (97.5 + 97.6) / 2, truncated parts
		},
		{
			name:   "least allocated: over-committed node scores 0",
			ranker: least,
			nodes:  []*v1.Node{makeNode("a", nodeAllocatable("1", "1Gi", "110"))},
			pod:    makePod("p", requests("2", "2Gi")),
			want:   map[string]int64{"a": 0},
		},
		{
			name:   "balanced allocation",
			ranker: balanced,
			nodes:  []*v1.Node{makeNode("a"), makeNode("b")},
			bound:  []*v1.Pod{makePod("x", boundTo("b"), requests("1", "3Gi"))},
			pod:    makePod("p", requests("1", "1Gi")),
			// a: cpu 1/4, memory 1/8 → 100·(1 − 0.125/2) = 93.75
			// b: cpu 2/4, memory 4/8 → 100
			want: map[string]int64{"a": 93, "b": 100},
		},
		{
			name:   "owner spread",
			ranker: spread,
			nodes:  []*v1.Node{makeNode("a"), makeNode("b"), makeNode("c")},
			bound: []*v1.Pod{
				makePod("x1", boundTo("a"), ownedBy("rs1")),
				makePod("x2", boundTo("a"), ownedBy("rs1")),
				makePod("x3", boundTo("b"), ownedBy("rs1")),
				makePod("y1", boundTo("c"), ownedBy("rs2")),
			},
			pod:  makePod("p", ownedBy("rs1")),
			want: map[string]int64{"a": 0, "b": 50, "c": 100},
		},
		{
			name:   "owner spread: same labels without a controller",
			ranker: spread,
			nodes:  []*v1.Node{makeNode("a"), makeNode("b")},
			bound: []*v1.Pod{
				makePod("x1", boundTo("a"), podLabels("app", "web")),
				makePod("x2", boundTo("b"), podLabels("app", "web", "extra", "1")),
			},
			pod:  makePod("p", podLabels("app", "web")),
			want: map[string]int64{"a": 0, "b": 100},
		},
		{
			name:   "owner spread: nothing to spread by",
			ranker: spread,
			nodes:  []*v1.Node{makeNode("a")},
			bound:  []*v1.Pod{makePod("x1", boundTo("a"))},
			pod:    makePod("p"),
			want:   map[string]int64{"a": 0},
		},
		{
			name:   "preferred node affinity",
			ranker: preferred,
			nodes: []*v1.Node{
				makeNode("a", nodeLabels("zone", "z1")),
				makeNode("b", nodeLabels("zone", "z1", "disk", "ssd")),
				makeNode("c"),
			},
			pod: makePod("p",
				preferredTerm(10, term(expr("zone", v1.NodeSelectorOpIn, "z1"))),
				preferredTerm(5, term(expr("disk", v1.NodeSelectorOpExists)))),
			want: map[string]int64{"a": 66, "b": 100, "c": 0},
		},
		{
			name:   "PreferNoSchedule taints",
			ranker: taints,
			nodes: []*v1.Node{
				makeNode("a", nodeTaint("t1", "", v1.TaintEffectPreferNoSchedule)),
				makeNode("b", nodeTaint("t1", "", v1.TaintEffectPreferNoSchedule), nodeTaint("t2", "", v1.TaintEffectPreferNoSchedule)),
				makeNode("c", nodeTaint("hard", "", v1.TaintEffectNoSchedule)),
				makeNode("d", nodeTaint("t3", "", v1.TaintEffectPreferNoSchedule)),
			},
			pod: makePod("p",
				toleration("t3", v1.TolerationOpExists, "", v1.TaintEffectPreferNoSchedule),
				// a NoSchedule toleration does not excuse a PreferNoSchedule taint
				toleration("t1", v1.TolerationOpExists, "", v1.TaintEffectNoSchedule)),
			want: map[string]int64{"a": 50, "b": 0, "c": 100, "d": 100},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{}, tt.nodes...)
			for _, p := range tt.bound {
				h.e.AddPod(p)
			}
			if got := h.rank(tt.pod, tt.ranker); !maps.Equal(got, tt.want) {
				t.Errorf("scores = %v, want %v", got, tt.want)
			}
		})
	}
}

// The weighted sum decides: each case names the node the pod must land on.
func TestScoresPick(t *testing.T) {
	tests := []struct {
		name  string
		nodes []*v1.Node
		bound []*v1.Pod
		pod   *v1.Pod
		want  string
	}{
		{
			name:  "emptier node",
			nodes: []*v1.Node{makeNode("busy"), makeNode("idle")},
			bound: []*v1.Pod{makePod("x", boundTo("busy"), requests("3", "6Gi"))},
			pod:   makePod("p", requests("500m", "1Gi")),
			want:  "idle",
		},
		{
			name:  "preferred affinity beats a little load",
			nodes: []*v1.Node{makeNode("plain"), makeNode("ssd", nodeLabels("disk", "ssd"))},
			bound: []*v1.Pod{makePod("x", boundTo("ssd"), requests("500m", "1Gi"))},
			pod:   makePod("p", preferredTerm(50, term(expr("disk", v1.NodeSelectorOpIn, "ssd")))),
			want:  "ssd",
		},
		{
			name:  "avoid PreferNoSchedule",
			nodes: []*v1.Node{makeNode("soft", nodeTaint("spot", "true", v1.TaintEffectPreferNoSchedule)), makeNode("clean")},
			pod:   makePod("p"),
			want:  "clean",
		},
		{
			name:  "spread away from siblings",
			nodes: []*v1.Node{makeNode("a"), makeNode("b")},
			bound: []*v1.Pod{makePod("x", boundTo("a"), ownedBy("rs"))},
			pod:   makePod("p", ownedBy("rs")),
			want:  "b",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{}, tt.nodes...)
			for _, p := range tt.bound {
				h.e.AddPod(p)
			}
			got, err := h.e.Schedule(tt.pod)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("scheduled on %s, want %s", got, tt.want)
			}
		})
	}
}

// A ReplicaSet's pods, scheduled one after the other through the queue,
// end up evenly spread: assumed pods count for the next cycle at once.
func TestSpreadThroughAssumedPods(t *testing.T) {
	h := newHarness(t, Options{}, makeNode("a"), makeNode("b"), makeNode("c"))
	for i := range 9 {
		h.e.AddPod(makePod(fmt.Sprintf("web-%d", i), ownedBy("rs"), requests("100m", "128Mi")))
	}
	for range 9 {
		h.cycleOnce()
	}
	per := map[string]int{}
	for i := range 9 {
		per[h.binder.boundTo(fmt.Sprintf("default/web-%d", i))]++
	}
	if want := map[string]int{"a": 3, "b": 3, "c": 3}; !maps.Equal(per, want) {
		t.Errorf("pods per node = %v, want %v", per, want)
	}
}

// Equal nodes share the load, and the same seed gives the same placement.
func TestTieBreak(t *testing.T) {
	place := func(seed uint64) []string {
		none := ScoreWeights{}
		h := newHarness(t, Options{Seed: seed, Weights: &none}, makeNode("a"), makeNode("b"), makeNode("c"), makeNode("d"))
		var out []string
		for i := range 400 {
			n, err := h.e.Schedule(makePod(fmt.Sprintf("p%d", i)))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, n)
		}
		return out
	}
	first := place(42)
	count := map[string]int{}
	for _, n := range first {
		count[n]++
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		if count[n] < 60 || count[n] > 140 {
			t.Errorf("node %s got %d of 400 equal-score pods, want about 100: %v", n, count[n], count)
		}
	}
	second := place(42)
	for i := range first {
		if first[i] != second[i] {
			t.Fatalf("same seed, different choice at pod %d: %s vs %s", i, first[i], second[i])
		}
	}
}
