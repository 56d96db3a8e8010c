package pods

import (
	"context"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"flotilla/agent/runtime"
)

// A new Manager (an agent restart) adopts running containers without
// restarting them, and carries on managing them (here: readiness).
func TestAgentRestartAdopts(t *testing.T) {
	h := newHarness(t, harnessOpts{network: true})
	h.start()
	pod := toolboxPod("keep", false, "serve")
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	h.create(pod)
	before := h.waitPod(pod.Name, 30*time.Second, "Running", isRunningReady)
	cs := containerStatus(before, "main")
	ctrs, err := h.rt.ListContainers(context.Background())
	if err != nil || len(ctrs) != 1 {
		t.Fatalf("containers: %v %v", ctrs, err)
	}
	startedAt := ctrs[0].StartedAt

	h.stop()
	h.start()
	// The new Manager must notice the container going unready: proof it
	// adopted it (it runs the probe again).
	url := "http://" + before.Status.PodIP + ":8080/ready/off"
	waitFor(t, 10*time.Second, "ready/off", func() bool {
		r, err := httpClient.Get(url)
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	})
	after := h.waitPod(pod.Name, 30*time.Second, "not ready", func(p *corev1.Pod) bool {
		return condition(p, corev1.PodReady) == corev1.ConditionFalse
	})
	cs2 := containerStatus(after, "main")
	if cs2.ContainerID != cs.ContainerID || cs2.RestartCount != 0 || cs2.State.Running == nil {
		t.Errorf("container changed across the restart:\nbefore %s\nafter %s", describeStatus(before), describeStatus(after))
	}
	if after.Status.PodIP != before.Status.PodIP {
		t.Errorf("pod IP changed: %s → %s", before.Status.PodIP, after.Status.PodIP)
	}
	ctrs, _ = h.rt.ListContainers(context.Background())
	if len(ctrs) != 1 || !ctrs[0].StartedAt.Equal(startedAt) || ctrs[0].State != runtime.StateRunning {
		t.Errorf("runtime container changed: %+v", ctrs)
	}
}

// A pod deleted while no Manager runs is cleaned up by the next one:
// containers, network, directories and logs.
func TestDeletedWhileAgentDown(t *testing.T) {
	h := newHarness(t, harnessOpts{network: true})
	h.start()
	pod := toolboxPod("orphan", false, "serve")
	pod.Spec.Volumes = []corev1.Volume{{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr(mustQuantity("1Mi"))}}}}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mem", MountPath: "/mem"}}
	p := h.create(pod)
	h.waitPod(pod.Name, 30*time.Second, "Running", isRunningReady)
	if mounted, _ := isMountPoint(h.mgrVolumePath(p, "mem")); !mounted {
		t.Errorf("emptyDir medium Memory is not a tmpfs mount")
	}
	h.stop()
	h.delete(pod.Name, ptr(int64(0))) // force: gone from the API at once
	h.waitGone(pod.Name, 10*time.Second)
	h.start()
	waitFor(t, 30*time.Second, "orphan cleaned up", func() bool {
		cs, err := h.rt.ListContainers(context.Background())
		uids, _ := h.net.Pods()
		_, dirErr := os.Stat(h.mgrVolumePath(p, ""))
		return err == nil && len(cs) == 0 && len(uids) == 0 && os.IsNotExist(dirErr)
	})
}

func (h *harness) mgrVolumePath(p *corev1.Pod, name string) string {
	m := &Manager{cfg: h.cfg}
	if name == "" {
		return m.podDir(p.UID)
	}
	return m.volumePath(p.UID, name)
}

// While containerd is down the Manager writes nothing (pods keep their
// last status); when it is back, pods are managed again.
func TestRuntimeDown(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("steady", true, "serve")
	h.create(pod)
	before := h.waitPod(pod.Name, 30*time.Second, "Running", isRunningReady)
	if err := h.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	// Wait for several resyncs (2s each) to have failed, then check the
	// status was left alone.
	waitFor(t, 20*time.Second, "runtime to be unreachable", func() bool {
		_, err := h.rt.ListContainers(context.Background())
		return err != nil
	})
	deadline := time.Now().Add(3 * h.cfg.Resync)
	for time.Now().Before(deadline) {
		p := h.get(pod.Name)
		if p.ResourceVersion != before.ResourceVersion {
			t.Fatalf("status written while the runtime was down:\n%s", describeStatus(p))
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.proc.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Back: the container was kept (never restarted), and deleting the
	// pod works end to end again.
	waitFor(t, 30*time.Second, "runtime back", func() bool {
		cs, err := h.rt.ListContainers(context.Background())
		return err == nil && len(cs) == 1 && cs[0].State == runtime.StateRunning &&
			"containerd://"+cs[0].ID == containerStatus(before, "main").ContainerID
	})
	h.delete(pod.Name, nil)
	h.waitGone(pod.Name, 60*time.Second)
}
