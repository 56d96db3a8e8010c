package pods

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"flotilla/testimages"
)

// Two containers of one pod share its network namespace: one serves on
// 8080, the other fetches http://127.0.0.1:8080/ (retrying through
// OnFailure until the server is up). The agent reaches the pod at its IP
// from the pod CIDR (the readiness probe), and deleting the pod releases
// its address and namespace.
func TestTwoContainersShareLocalhost(t *testing.T) {
	h := newHarness(t, harnessOpts{network: true})
	h.start()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "duo", Namespace: testNS},
		Spec: corev1.PodSpec{
			NodeName:                      testNode,
			RestartPolicy:                 corev1.RestartPolicyOnFailure,
			TerminationGracePeriodSeconds: ptr(int64(5)),
			Containers: []corev1.Container{{
				Name:  "server",
				Image: testimages.ToolboxRef,
				Args:  []string{"serve"},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}},
					PeriodSeconds: 1,
				},
				LivenessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1,
				},
			}, {
				Name:  "client",
				Image: testimages.ToolboxRef,
				Args:  []string{"get", "http://127.0.0.1:8080/"},
			}},
		},
	}
	h.create(pod)
	p := h.waitPod(pod.Name, 60*time.Second, "client done, server ready", func(p *corev1.Pod) bool {
		c := containerStatus(p, "client")
		return c != nil && c.State.Terminated != nil && c.State.Terminated.ExitCode == 0 && isRunningReady2(p, "server")
	})
	_, cidr, _ := net.ParseCIDR(podCIDR)
	if ip := net.ParseIP(p.Status.PodIP); ip == nil || !cidr.Contains(ip) {
		t.Errorf("podIP %q not in %s", p.Status.PodIP, podCIDR)
	}
	if len(p.Status.PodIPs) != 1 || p.Status.PodIPs[0].IP != p.Status.PodIP {
		t.Errorf("podIPs %v", p.Status.PodIPs)
	}
	if p.Status.Phase != corev1.PodRunning {
		t.Errorf("phase %s, want Running", p.Status.Phase)
	}
	// The client printed the server's answer.
	c := containerStatus(p, "client")
	lines := h.logLines(p, "client", int(c.RestartCount))
	if len(lines) == 0 {
		t.Errorf("client printed nothing")
	}
	if _, ok := h.net.Lookup(string(p.UID)); !ok {
		t.Errorf("no network attachment for a running pod")
	}
	h.delete(pod.Name, nil)
	h.waitGone(pod.Name, 30*time.Second)
	if _, ok := h.net.Lookup(string(p.UID)); ok {
		t.Errorf("network attachment left after deletion")
	}
}

// isRunningReady2 is whether the named container runs and is ready.
func isRunningReady2(p *corev1.Pod, name string) bool {
	c := containerStatus(p, name)
	return c != nil && c.State.Running != nil && c.Ready
}

// A pod that finishes releases its IP and namespace at once, keeping its
// containers and logs until it is deleted.
func TestFinishedPodReleasesNetwork(t *testing.T) {
	h := newHarness(t, harnessOpts{network: true})
	h.start()
	pod := toolboxPod("once", false, "echo", "hello")
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	waitFor(t, 10*time.Second, "network released", func() bool {
		uids, _ := h.net.Pods()
		return len(uids) == 0
	})
	if lines := h.logLines(p, "main", 0); len(lines) != 1 || lines[0] != "hello" {
		t.Errorf("log %q", lines)
	}
	cs, err := h.rt.ListContainers(context.Background())
	if err != nil || len(cs) != 1 {
		t.Errorf("want the finished container kept, have %d (%v)", len(cs), err)
	}
	if p.Status.PodIP == "" {
		t.Errorf("a finished pod keeps reporting its IP")
	}
	if c := condition(p, corev1.PodReadyToStartContainers); c != corev1.ConditionFalse {
		t.Errorf("PodReadyToStartContainers %q", c)
	}
	h.delete(pod.Name, nil)
	h.waitGone(pod.Name, 30*time.Second)
	waitFor(t, 10*time.Second, "containers removed", func() bool {
		cs, err := h.rt.ListContainers(context.Background())
		return err == nil && len(cs) == 0
	})
}

// hostPort publishes a container port on the node.
func TestHostPort(t *testing.T) {
	h := newHarness(t, harnessOpts{network: true})
	h.start()
	pod := toolboxPod("hp", false, "serve")
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 18080}}
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Running", isRunningReady)
	// The portmap plugin's DNAT applies to traffic for the node's
	// addresses; the bridge gateway is one here.
	gw := strings.TrimSuffix(p.Status.PodIP[:strings.LastIndex(p.Status.PodIP, ".")], ".") + ".1"
	waitFor(t, 10*time.Second, "hostPort answering", func() bool {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(gw, "18080"), time.Second)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
}
