package scheduler

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	resourcehelper "k8s.io/component-helpers/resource"
)

func TestPodInfoRequests(t *testing.T) {
	always := v1.ContainerRestartPolicyAlways
	sidecar := func(p *v1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, v1.Container{
			Name: "proxy", RestartPolicy: &always,
			Resources: v1.ResourceRequirements{Requests: v1.ResourceList{v1.ResourceCPU: resource.MustParse("250m")}},
			Ports:     []v1.ContainerPort{{ContainerPort: 15000, HostPort: 15000}},
		})
	}
	tests := []struct {
		name            string
		pod             *v1.Pod
		cpu, mem        int64 // what must fit
		nzCPU, nzMemory int64 // what the scores count
		ports           int
	}{
		{"both requested", makePod("p", requests("1", "1Gi")), 1000, 1 << 30, 1000, 1 << 30, 0},
		{"best effort", makePod("p"), 0, 0, defaultMilliCPURequest, defaultMemoryRequest, 0},
		{"memory missing", makePod("p", requests("1", "")), 1000, 0, 1000, defaultMemoryRequest, 0},
		{"init container bigger", makePod("p", requests("1", "1Gi"), initRequests("2", "512Mi")), 2000, 1 << 30, 2000, 1 << 30, 0},
		{"overhead added", makePod("p", requests("1", "1Gi"), overhead("100m")), 1100, 1 << 30, 1100, 1 << 30, 0},
		{"sidecar adds and binds its port", makePod("p", requests("1", "1Gi"), sidecar), 1250, 1 << 30, 1250, 1<<30 + defaultMemoryRequest, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pi := newPodInfo(tt.pod)
			if pi.req.MilliCPU != tt.cpu || pi.req.Memory != tt.mem {
				t.Errorf("req = %dm, %d; want %dm, %d", pi.req.MilliCPU, pi.req.Memory, tt.cpu, tt.mem)
			}
			if pi.nonZero.MilliCPU != tt.nzCPU || pi.nonZero.Memory != tt.nzMemory {
				t.Errorf("nonZero = %dm, %d; want %dm, %d", pi.nonZero.MilliCPU, pi.nonZero.Memory, tt.nzCPU, tt.nzMemory)
			}
			// The shortcut must agree with the full computation.
			nz := resourcehelper.PodRequests(tt.pod, resourcehelper.PodResourcesOptions{NonMissingContainerRequests: nonZeroDefaults})
			if nz.Cpu().MilliValue() != pi.nonZero.MilliCPU || nz.Memory().Value() != pi.nonZero.Memory {
				t.Errorf("nonZero shortcut disagrees with PodRequests: %v", nz)
			}
			if len(pi.ports) != tt.ports {
				t.Errorf("ports = %v, want %d", pi.ports, tt.ports)
			}
		})
	}
}

func TestOwnerKey(t *testing.T) {
	a := ownerKey(makePod("a", ownedBy("rs1"), podLabels("app", "x")))
	b := ownerKey(makePod("b", ownedBy("rs1"), podLabels("app", "y")))
	if a != b || a == "" {
		t.Errorf("same controller, different keys: %q %q", a, b)
	}
	l1 := ownerKey(makePod("c", podLabels("app", "web", "tier", "fe")))
	l2 := ownerKey(makePod("d", podLabels("tier", "fe", "app", "web")))
	l3 := ownerKey(makePod("e", podLabels("app", "web")))
	if l1 != l2 || l1 == l3 {
		t.Errorf("label keys: %q %q %q", l1, l2, l3)
	}
	other := makePod("f", podLabels("app", "web", "tier", "fe"))
	other.Namespace = "prod"
	if ownerKey(other) == l1 {
		t.Error("label key ignores the namespace")
	}
	if k := ownerKey(makePod("g")); k != "" {
		t.Errorf("orphan without labels spreads by %q", k)
	}
}

func TestCompiledAffinityRejectsMalformed(t *testing.T) {
	node := makeNode("a", nodeLabels("n", "5", "zone", "z1"))
	tests := []struct {
		name string
		term v1.NodeSelectorTerm
		want bool
	}{
		{"In without values", term(expr("zone", v1.NodeSelectorOpIn)), false},
		{"Exists with values", term(expr("zone", v1.NodeSelectorOpExists, "z1")), false},
		{"Gt not a number", term(expr("n", v1.NodeSelectorOpGt, "x")), false},
		{"Gt two values", term(expr("n", v1.NodeSelectorOpGt, "1", "2")), false},
		{"Gt on a non-numeric label", term(expr("zone", v1.NodeSelectorOpGt, "1")), false},
		{"Lt on a missing label", term(expr("missing", v1.NodeSelectorOpLt, "10")), false},
		{"unknown operator", term(expr("zone", "Near", "z1")), false},
		{"empty term", v1.NodeSelectorTerm{}, false},
		{"field other than name", v1.NodeSelectorTerm{MatchFields: []v1.NodeSelectorRequirement{expr("metadata.uid", v1.NodeSelectorOpIn, "x")}}, false},
		{"name NotIn", v1.NodeSelectorTerm{MatchFields: []v1.NodeSelectorRequirement{expr("metadata.name", v1.NodeSelectorOpNotIn, "b")}}, true},
		{"Lt", term(expr("n", v1.NodeSelectorOpLt, "10")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := compileTerms([]v1.NodeSelectorTerm{tt.term})
			if got := m.matches(node.Name, node.Labels); got != tt.want {
				t.Errorf("matches = %v, want %v", got, tt.want)
			}
		})
	}
	// A malformed term does not spoil a good one next to it.
	m := compileTerms([]v1.NodeSelectorTerm{term(expr("zone", v1.NodeSelectorOpIn)), term(expr("zone", v1.NodeSelectorOpIn, "z1"))})
	if !m.matches(node.Name, node.Labels) {
		t.Error("good term ORed with a malformed one did not match")
	}
	if len(m.terms) != 1 {
		t.Errorf("compiled %d terms, want 1", len(m.terms))
	}
}
