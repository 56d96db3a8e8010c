package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testAgent(h health) *Agent {
	return &Agent{
		cfg:    Config{NodeName: "n1", NodeIP: "10.0.0.1", AgentPort: 10250, MaxPods: 110, Version: "v1.37.2"},
		sys:    sysInfo{cpus: 2, memoryBytes: 1 << 30, kernel: "6.1", osImage: "Debian"},
		health: h,
	}
}

func readyOf(st corev1.NodeStatus) corev1.NodeCondition {
	for _, c := range st.Conditions {
		if c.Type == corev1.NodeReady {
			return c
		}
	}
	return corev1.NodeCondition{}
}

// An unchanged node must compare equal to what the agent wants: that is
// what keeps the agent from writing anything while nothing changes.
func TestDesiredStatusIsStable(t *testing.T) {
	a := testAgent(health{runtimeVersion: "containerd://1.6.20"})
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	node.Status = a.desiredStatus(node)
	if r := readyOf(node.Status); r.Status != corev1.ConditionTrue || r.Reason != reasonReady {
		t.Fatalf("Ready = %+v", r)
	}
	if again := a.desiredStatus(node); !apiequality.Semantic.DeepEqual(again, node.Status) {
		t.Fatalf("second desired status differs from the first:\n%+v\n%+v", again, node.Status)
	}
	if ep := node.Status.DaemonEndpoints.KubeletEndpoint.Port; ep != 10250 {
		t.Fatalf("kubelet endpoint port %d", ep)
	}
	if node.Status.NodeInfo.ContainerRuntimeVersion != "containerd://1.6.20" {
		t.Fatalf("nodeInfo %+v", node.Status.NodeInfo)
	}
}

func TestDesiredStatusReasons(t *testing.T) {
	old := metav1.NewTime(metav1.Now().Add(-3600e9))
	node := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: reasonReady, LastTransitionTime: old, LastHeartbeatTime: old},
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available", LastTransitionTime: old, LastHeartbeatTime: old},
	}}}
	for _, c := range []struct {
		h    health
		want string
	}{
		{health{runtimeErr: "dial unix: connection refused"}, "container runtime is down: dial unix: connection refused"},
		{health{networkErr: "node has no pod CIDR yet"}, "container runtime network not ready: node has no pod CIDR yet"},
	} {
		st := testAgent(c.h).desiredStatus(node)
		r := readyOf(st)
		if r.Status != corev1.ConditionFalse || r.Message != c.want {
			t.Fatalf("Ready = %+v, want False with %q", r, c.want)
		}
		if r.LastTransitionTime.Equal(&old) {
			t.Fatalf("Ready changed status but kept its transition time")
		}
		for _, cond := range st.Conditions {
			if cond.Type == corev1.NodeMemoryPressure && !cond.LastTransitionTime.Equal(&old) {
				t.Fatalf("MemoryPressure did not change but its transition time did")
			}
		}
	}
}

func TestMarkedUnreachable(t *testing.T) {
	n := &corev1.Node{}
	if markedUnreachable(n) {
		t.Fatal("untainted node marked unreachable")
	}
	n.Spec.Taints = []corev1.Taint{{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute}}
	if !markedUnreachable(n) {
		t.Fatal("tainted node not marked unreachable")
	}
}
