package pods

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A failing postStart hook kills the container (FailedPostStartHook); a
// preStop hook runs before SIGTERM on deletion.
func TestLifecycleHooks(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	bad := toolboxPod("badhook", true, "sleep", "1h")
	bad.Spec.RestartPolicy = corev1.RestartPolicyNever
	bad.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
		Exec: &corev1.ExecAction{Command: []string{"/toolbox", "exit", "7"}}}}
	h.create(bad)
	// Killed with SIGTERM, which the toolbox's sleep answers with exit 0:
	// the pod ends (Succeeded, as the kubelet would say too).
	h.waitPod(bad.Name, 30*time.Second, "container killed, pod finished", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs != nil && cs.State.Terminated != nil && isTerminal(p.Status.Phase)
	})
	h.waitEvent(bad.Name, "FailedPostStartHook: PostStartHook failed", 5*time.Second)

	dir := t.TempDir()
	good := toolboxPod("prestop", true, "sleep", "1h")
	good.Spec.Volumes = []corev1.Volume{{Name: "out", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir}}}}
	good.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "out", MountPath: "/out"}}
	good.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{
		PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/toolbox", "write", "/out/started", "yes"}}},
		PreStop:   &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/toolbox", "write", "/out/stopping", "bye"}}},
	}
	h.create(good)
	h.waitPod(good.Name, 30*time.Second, "Running", isRunningReady)
	if b, err := os.ReadFile(filepath.Join(dir, "started")); err != nil || string(b) != "yes" {
		t.Errorf("postStart did not run: %q %v", b, err)
	}
	h.delete(good.Name, nil)
	h.waitGone(good.Name, 30*time.Second)
	if b, err := os.ReadFile(filepath.Join(dir, "stopping")); err != nil || string(b) != "bye" {
		t.Errorf("preStop did not run: %q %v", b, err)
	}
}

// A startup probe holds back started, readiness and liveness until it
// passes.
func TestStartupProbeGates(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("slow", true, "serve", "--ready=false")
	pod.Spec.Containers[0].StartupProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds:    1,
		FailureThreshold: 60,
	}
	// Would kill the container at once if it ran before startup passed.
	pod.Spec.Containers[0].LivenessProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/toolbox", "exit", "1"}}},
		PeriodSeconds:    1,
		FailureThreshold: 1000,
	}
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Running, not started", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs != nil && cs.State.Running != nil
	})
	if cs := containerStatus(p, "main"); cs.Started == nil || *cs.Started || cs.Ready {
		t.Fatalf("started or ready before the startup probe passed: %s", describeStatus(p))
	}
	waitFor(t, 10*time.Second, "server up", func() bool {
		r, err := httpClient.Get("http://127.0.0.1:8080/")
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	})
	httpGetLocal(t, 8080, "/ready/on")
	p = h.waitPod(pod.Name, 15*time.Second, "started and ready", isRunningReady)
	if cs := containerStatus(p, "main"); cs.Started == nil || !*cs.Started || cs.RestartCount != 0 {
		t.Errorf("after startup: %s", describeStatus(p))
	}
	h.waitEvent(pod.Name, "Unhealthy: Liveness probe failed: command", 10*time.Second)
}
