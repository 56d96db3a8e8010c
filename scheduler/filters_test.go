package scheduler

import (
	"errors"
	"slices"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestFilters(t *testing.T) {
	notReady := "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
	unreachable := "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
	tests := []struct {
		name  string
		nodes []*v1.Node
		// bound pods already on the nodes
		bound []*v1.Pod
		pod   *v1.Pod
		want  []string
		// reasons per rejected node
		reasons map[string][]string
	}{
		{
			name:  "ready condition",
			nodes: []*v1.Node{makeNode("ok"), makeNode("false", nodeReady(v1.ConditionFalse)), makeNode("unknown", nodeReady(v1.ConditionUnknown)), makeNode("none", nodeReady(""))},
			pod:   makePod("p"),
			want:  []string{"ok"},
			reasons: map[string][]string{
				"false": {notReady}, "unknown": {unreachable}, "none": {notReady},
			},
		},
		{
			name:  "not-ready tolerated",
			nodes: []*v1.Node{makeNode("false", nodeReady(v1.ConditionFalse)), makeNode("unknown", nodeReady(v1.ConditionUnknown))},
			pod:   makePod("p", toleration(v1.TaintNodeNotReady, v1.TolerationOpExists, "", v1.TaintEffectNoSchedule)),
			want:  []string{"false"},
			reasons: map[string][]string{
				"unknown": {unreachable},
			},
		},
		{
			name:    "cordoned",
			nodes:   []*v1.Node{makeNode("a"), makeNode("b", cordoned())},
			pod:     makePod("p"),
			want:    []string{"a"},
			reasons: map[string][]string{"b": {ReasonUnschedulable}},
		},
		{
			name:  "cordon tolerated",
			nodes: []*v1.Node{makeNode("a"), makeNode("b", cordoned())},
			pod:   makePod("p", toleration(v1.TaintNodeUnschedulable, v1.TolerationOpExists, "", v1.TaintEffectNoSchedule)),
			want:  []string{"a", "b"},
		},
		{
			name:  "tolerate everything",
			nodes: []*v1.Node{makeNode("a", cordoned(), nodeTaint("x", "y", v1.TaintEffectNoExecute)), makeNode("b", nodeReady(v1.ConditionFalse))},
			pod:   makePod("p", toleration("", v1.TolerationOpExists, "", "")),
			want:  []string{"a", "b"},
		},
		{
			name:    "node name",
			nodes:   []*v1.Node{makeNode("a"), makeNode("b")},
			pod:     makePod("p", boundTo("b")),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {ReasonNodeName}},
		},
		{
			name:    "node selector",
			nodes:   []*v1.Node{makeNode("a", nodeLabels("disk", "ssd")), makeNode("b", nodeLabels("disk", "hdd")), makeNode("c")},
			pod:     makePod("p", nodeSelector("disk", "ssd")),
			want:    []string{"a"},
			reasons: map[string][]string{"b": {ReasonNodeAffinity}, "c": {ReasonNodeAffinity}},
		},
		{
			name:    "affinity In",
			nodes:   []*v1.Node{makeNode("a", nodeLabels("zone", "z1")), makeNode("b", nodeLabels("zone", "z2")), makeNode("c", nodeLabels("zone", "z3"))},
			pod:     makePod("p", requiredTerms(term(expr("zone", v1.NodeSelectorOpIn, "z1", "z2")))),
			want:    []string{"a", "b"},
			reasons: map[string][]string{"c": {ReasonNodeAffinity}},
		},
		{
			name:    "affinity NotIn",
			nodes:   []*v1.Node{makeNode("a", nodeLabels("zone", "z1")), makeNode("b", nodeLabels("zone", "z2")), makeNode("c")},
			pod:     makePod("p", requiredTerms(term(expr("zone", v1.NodeSelectorOpNotIn, "z1")))),
			want:    []string{"b", "c"},
			reasons: map[string][]string{"a": {ReasonNodeAffinity}},
		},
		{
			name:    "affinity Exists and DoesNotExist ANDed",
			nodes:   []*v1.Node{makeNode("a", nodeLabels("gpu", "1")), makeNode("b", nodeLabels("gpu", "1", "spot", "true")), makeNode("c")},
			pod:     makePod("p", requiredTerms(term(expr("gpu", v1.NodeSelectorOpExists), expr("spot", v1.NodeSelectorOpDoesNotExist)))),
			want:    []string{"a"},
			reasons: map[string][]string{"b": {ReasonNodeAffinity}, "c": {ReasonNodeAffinity}},
		},
		{
			name:    "affinity Gt and Lt",
			nodes:   []*v1.Node{makeNode("a", nodeLabels("cores", "4")), makeNode("b", nodeLabels("cores", "16")), makeNode("c", nodeLabels("cores", "64"))},
			pod:     makePod("p", requiredTerms(term(expr("cores", v1.NodeSelectorOpGt, "8"), expr("cores", v1.NodeSelectorOpLt, "32")))),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {ReasonNodeAffinity}, "c": {ReasonNodeAffinity}},
		},
		{
			name:  "affinity terms ORed",
			nodes: []*v1.Node{makeNode("a", nodeLabels("zone", "z1")), makeNode("b", nodeLabels("disk", "ssd")), makeNode("c")},
			pod: makePod("p", requiredTerms(
				term(expr("zone", v1.NodeSelectorOpIn, "z1")),
				term(expr("disk", v1.NodeSelectorOpIn, "ssd")))),
			want:    []string{"a", "b"},
			reasons: map[string][]string{"c": {ReasonNodeAffinity}},
		},
		{
			name:  "affinity matchFields metadata.name",
			nodes: []*v1.Node{makeNode("a"), makeNode("b")},
			pod: makePod("p", requiredTerms(v1.NodeSelectorTerm{MatchFields: []v1.NodeSelectorRequirement{
				expr("metadata.name", v1.NodeSelectorOpIn, "b")}})),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {ReasonNodeAffinity}},
		},
		{
			name:  "selector and affinity both required",
			nodes: []*v1.Node{makeNode("a", nodeLabels("disk", "ssd", "zone", "z1")), makeNode("b", nodeLabels("disk", "ssd", "zone", "z2"))},
			pod: makePod("p", nodeSelector("disk", "ssd"),
				requiredTerms(term(expr("zone", v1.NodeSelectorOpIn, "z2")))),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {ReasonNodeAffinity}},
		},
		{
			name: "taints",
			nodes: []*v1.Node{
				makeNode("nosched", nodeTaint("dedicated", "gpu", v1.TaintEffectNoSchedule)),
				makeNode("noexec", nodeTaint("evict", "", v1.TaintEffectNoExecute)),
				makeNode("prefer", nodeTaint("soft", "x", v1.TaintEffectPreferNoSchedule)),
			},
			pod:  makePod("p"),
			want: []string{"prefer"},
			reasons: map[string][]string{
				"nosched": {"node(s) had untolerated taint {dedicated: gpu}"},
				"noexec":  {"node(s) had untolerated taint {evict: }"},
			},
		},
		{
			name: "tolerations: Equal matches value, Exists any value, effect must match",
			nodes: []*v1.Node{
				makeNode("gpu", nodeTaint("dedicated", "gpu", v1.TaintEffectNoSchedule)),
				makeNode("db", nodeTaint("dedicated", "db", v1.TaintEffectNoSchedule)),
				makeNode("evict", nodeTaint("evict", "now", v1.TaintEffectNoExecute)),
				makeNode("evict2", nodeTaint("evict2", "now", v1.TaintEffectNoExecute)),
			},
			pod: makePod("p",
				toleration("dedicated", v1.TolerationOpEqual, "gpu", v1.TaintEffectNoSchedule),
				toleration("evict", v1.TolerationOpExists, "", ""),
				toleration("evict2", v1.TolerationOpExists, "", v1.TaintEffectNoSchedule)),
			want: []string{"evict", "gpu"},
			reasons: map[string][]string{
				"db":     {"node(s) had untolerated taint {dedicated: db}"},
				"evict2": {"node(s) had untolerated taint {evict2: now}"},
			},
		},
		{
			name:    "cpu",
			nodes:   []*v1.Node{makeNode("small", nodeAllocatable("1", "8Gi", "110")), makeNode("big")},
			pod:     makePod("p", requests("2", "")),
			want:    []string{"big"},
			reasons: map[string][]string{"small": {"Insufficient cpu"}},
		},
		{
			name:    "cpu and memory both recorded",
			nodes:   []*v1.Node{makeNode("small", nodeAllocatable("1", "1Gi", "110")), makeNode("big")},
			pod:     makePod("p", requests("2", "2Gi")),
			want:    []string{"big"},
			reasons: map[string][]string{"small": {"Insufficient cpu", "Insufficient memory"}},
		},
		{
			name:    "bound pods count",
			nodes:   []*v1.Node{makeNode("a"), makeNode("b")},
			bound:   []*v1.Pod{makePod("x", boundTo("a"), requests("3", "1Gi"))},
			pod:     makePod("p", requests("2", "")),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {"Insufficient cpu"}},
		},
		{
			name:    "too many pods",
			nodes:   []*v1.Node{makeNode("a", nodeAllocatable("4", "8Gi", "1")), makeNode("b")},
			bound:   []*v1.Pod{makePod("x", boundTo("a"))},
			pod:     makePod("p"),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {ReasonTooManyPods}},
		},
		{
			name:    "init container larger than containers",
			nodes:   []*v1.Node{makeNode("a", nodeAllocatable("2", "8Gi", "110")), makeNode("b")},
			pod:     makePod("p", requests("1", ""), initRequests("3", "1Gi")),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {"Insufficient cpu"}},
		},
		{
			name:    "overhead counts",
			nodes:   []*v1.Node{makeNode("a", nodeAllocatable("2", "8Gi", "110")), makeNode("b")},
			pod:     makePod("p", requests("1500m", ""), overhead("600m")),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {"Insufficient cpu"}},
		},
		{
			name:    "extended resource",
			nodes:   []*v1.Node{makeNode("gpu", nodeAllocatable("4", "8Gi", "110", "nvidia.com/gpu", "2")), makeNode("plain")},
			pod:     makePod("p", requests("", "", "nvidia.com/gpu", "1")),
			want:    []string{"gpu"},
			reasons: map[string][]string{"plain": {"Insufficient nvidia.com/gpu"}},
		},
		{
			name:    "host port taken on any address",
			nodes:   []*v1.Node{makeNode("a"), makeNode("b")},
			bound:   []*v1.Pod{makePod("x", boundTo("a"), hostPort(8080, v1.ProtocolTCP, ""))},
			pod:     makePod("p", hostPort(8080, "", "")),
			want:    []string{"b"},
			reasons: map[string][]string{"a": {ReasonHostPorts}},
		},
		{
			name:  "host port: other protocol, other address",
			nodes: []*v1.Node{makeNode("a")},
			bound: []*v1.Pod{
				makePod("x", boundTo("a"), hostPort(53, v1.ProtocolUDP, "")),
				makePod("y", boundTo("a"), hostPort(80, v1.ProtocolTCP, "10.0.0.1")),
			},
			pod:  makePod("p", hostPort(53, v1.ProtocolTCP, ""), hostPort(80, v1.ProtocolTCP, "10.0.0.2")),
			want: []string{"a"},
		},
		{
			name:    "host port: specific address vs wildcard",
			nodes:   []*v1.Node{makeNode("a")},
			bound:   []*v1.Pod{makePod("x", boundTo("a"), hostPort(80, v1.ProtocolTCP, "10.0.0.1"))},
			pod:     makePod("p", hostPort(80, v1.ProtocolTCP, "0.0.0.0")),
			reasons: map[string][]string{"a": {ReasonHostPorts}},
		},
		{
			name:    "first failing check wins, in kube's order",
			nodes:   []*v1.Node{makeNode("a", cordoned(), nodeTaint("k", "v", v1.TaintEffectNoSchedule), nodeAllocatable("1", "1Gi", "110"))},
			pod:     makePod("p", requests("2", "")),
			reasons: map[string][]string{"a": {ReasonUnschedulable}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{}, tt.nodes...)
			for _, p := range tt.bound {
				h.e.AddPod(p)
			}
			got, diag := h.filter(tt.pod)
			if !slices.Equal(got, tt.want) {
				t.Errorf("feasible = %v, want %v", got, tt.want)
			}
			gotReasons := diag.NodeReasons()
			if len(gotReasons) != len(tt.reasons) {
				t.Errorf("reasons = %v, want %v", gotReasons, tt.reasons)
			}
			for node, want := range tt.reasons {
				if !slices.Equal(gotReasons[node], want) {
					t.Errorf("reasons[%s] = %q, want %q", node, gotReasons[node], want)
				}
			}
		})
	}
}

func TestFitErrorMessage(t *testing.T) {
	tests := []struct {
		name  string
		nodes []*v1.Node
		pod   *v1.Pod
		want  string
	}{
		{
			name: "issue example",
			nodes: []*v1.Node{
				makeNode("a", nodeAllocatable("1", "8Gi", "110")),
				makeNode("b", nodeAllocatable("1", "8Gi", "110")),
				makeNode("c", nodeAllocatable("1", "8Gi", "110")),
				makeNode("d", nodeTaint("dedicated", "gpu", v1.TaintEffectNoSchedule)),
				makeNode("e", nodeTaint("dedicated", "gpu", v1.TaintEffectNoSchedule)),
			},
			pod:  makePod("p", requests("2", "")),
			want: "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}.",
		},
		{
			name: "equal counts in text order; several resources per node",
			nodes: []*v1.Node{
				makeNode("a", nodeLabels("disk", "hdd"), nodeAllocatable("1", "1Gi", "110")),
				makeNode("b", nodeLabels("disk", "hdd"), cordoned()),
				makeNode("c"),
				makeNode("d"),
			},
			pod:  makePod("p", requests("2", "2Gi"), nodeSelector("disk", "hdd")),
			want: "0/4 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 Insufficient cpu, 1 Insufficient memory, 1 node(s) were unschedulable.",
		},
		{
			name: "no nodes",
			pod:  makePod("p"),
			want: "no nodes available to schedule pods",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{}, tt.nodes...)
			_, err := h.e.Schedule(tt.pod)
			var fe *FitError
			if !errors.As(err, &fe) {
				t.Fatalf("Schedule error = %v, want a FitError", err)
			}
			if got := fe.Error(); got != tt.want {
				t.Errorf("message\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestNumFeasibleNodesToFind(t *testing.T) {
	tests := []struct{ nodes, pct, want int }{
		{10, 0, 10},
		{100, 0, 100},
		{101, 0, 100},       // 50 % of 101 = 50, floor 100
		{1000, 0, 420},      // 50 - 8 = 42 %
		{5000, 0, 500},      // 50 - 40 = 10 %
		{20000, 0, 1000},    // floor of 5 %
		{5000, 100, 5000},   // everything
		{5000, 1, 100},      // floor
		{5000, 30, 1500},    // explicit
		{1000000, 0, 50000}, // 5 %
	}
	for _, tt := range tests {
		if got := numFeasibleNodesToFind(tt.nodes, tt.pct); got != tt.want {
			t.Errorf("numFeasibleNodesToFind(%d, %d) = %d, want %d", tt.nodes, tt.pct, got, tt.want)
		}
	}
}

// With sampling on, successive cycles start where the previous one stopped,
// so every node gets visited and pods spread over the whole cluster.
func TestSamplingRotates(t *testing.T) {
	var nodes []*v1.Node
	for i := range 1000 {
		nodes = append(nodes, makeNode(nodeName(i)))
	}
	h := newHarness(t, Options{PercentageOfNodesToScore: 10, Weights: &ScoreWeights{}}, nodes...)
	seen := map[string]bool{}
	for i := range 200 {
		node, err := h.e.Schedule(makePod(nodeName(i)))
		if err != nil {
			t.Fatal(err)
		}
		seen[node] = true
	}
	// All scores off: each cycle picks at random among the 100 nodes it
	// checked; 200 cycles over 10 windows of 100 nodes reach far beyond
	// any single window.
	if len(seen) < 150 {
		t.Errorf("200 pods landed on %d distinct nodes; rotation is not spreading", len(seen))
	}
}

func nodeName(i int) string {
	const digits = "0123456789"
	return "n" + string(digits[i/1000%10]) + string(digits[i/100%10]) + string(digits[i/10%10]) + string(digits[i%10])
}
