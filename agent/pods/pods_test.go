package pods

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"flotilla/agent/runtime"
	"flotilla/testimages"
)

var httpClient = &http.Client{Timeout: 3 * time.Second}

// httpGetLocal fetches a path from a hostNetwork toolbox server.
func httpGetLocal(t *testing.T, port int, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestPodRunsAndDeletes(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	created := time.Now()
	p := h.create(toolboxPod("web", true, "serve"))
	p = h.waitPod(p.Name, 30*time.Second, "Running and Ready", isRunningReady)
	t.Logf("create → Running+Ready: %v", time.Since(created))

	cs := containerStatus(p, "main")
	switch {
	case cs == nil || cs.State.Running == nil:
		t.Fatalf("main not running:\n%s", describeStatus(p))
	case !strings.HasPrefix(cs.ContainerID, "containerd://"):
		t.Errorf("containerID %q", cs.ContainerID)
	case !strings.HasPrefix(cs.ImageID, "sha256:"):
		t.Errorf("imageID %q", cs.ImageID)
	case cs.Image != testimages.ToolboxRef:
		t.Errorf("image %q", cs.Image)
	case cs.Started == nil || !*cs.Started || !cs.Ready || cs.RestartCount != 0:
		t.Errorf("started/ready/restarts: %s", describeStatus(p))
	}
	if p.Status.PodIP != testNodeIP || p.Status.HostIP != testNodeIP || p.Status.StartTime == nil {
		t.Errorf("IPs/startTime: podIP %q hostIP %q start %v", p.Status.PodIP, p.Status.HostIP, p.Status.StartTime)
	}
	for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if condition(p, c) != corev1.ConditionTrue {
			t.Errorf("condition %s = %q", c, condition(p, c))
		}
	}
	if body := httpGetLocal(t, 8080, "/"); body == "" {
		t.Errorf("server answered nothing")
	}
	if n := h.manager().RunningPods(); n != 1 {
		t.Errorf("RunningPods = %d, want 1", n)
	}
	h.waitEvent(p.Name, "Started: Started container main", 5*time.Second)
	h.waitEvent(p.Name, `Pulled: Container image "`+testimages.ToolboxRef+`" already present on machine`, 5*time.Second)

	start := time.Now()
	h.delete(p.Name, nil)
	h.waitGone(p.Name, 30*time.Second)
	// serve exits on SIGTERM at once: no need to wait out the grace.
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("graceful delete took %v", d)
	}
	if n := h.manager().RunningPods(); n != 0 {
		t.Errorf("RunningPods = %d after deletion", n)
	}
}

// TestStartupLatency reports create → Running and Ready, seen through a
// watch, for a burst of pods; it asserts only a generous bound, the
// numbers are for reading (-v).
func TestStartupLatency(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	const n = 10
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := h.client.CoreV1().Pods(testNS).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	created := map[string]time.Time{}
	for i := range n {
		name := fmt.Sprintf("burst-%d", i)
		created[name] = time.Now()
		h.create(toolboxPod(name, true, "sleep", "1h"))
	}
	ready := map[string]time.Duration{}
	for len(ready) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch ended with %d of %d pods ready", len(ready), n)
			}
			if p, ok := ev.Object.(*corev1.Pod); ok && isRunningReady(p) {
				if _, seen := ready[p.Name]; !seen {
					ready[p.Name] = time.Since(created[p.Name])
				}
			}
		case <-ctx.Done():
			t.Fatalf("only %d of %d pods ready", len(ready), n)
		}
	}
	var lat []time.Duration
	for _, d := range ready {
		lat = append(lat, d)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("%d pods created at once: create → Running+Ready median %v, max %v", n, lat[n/2], lat[n-1])
	if lat[n-1] > 30*time.Second {
		t.Errorf("slowest pod took %v", lat[n-1])
	}
}

func TestRestartPolicyNever(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	ok := toolboxPod("ok", true, "write", "/dev/termination-log", "all done")
	ok.Spec.RestartPolicy = corev1.RestartPolicyNever
	fail := toolboxPod("fail", true, "exit", "3")
	fail.Spec.RestartPolicy = corev1.RestartPolicyNever
	fail.Spec.Containers[0].TerminationMessagePolicy = corev1.TerminationMessageFallbackToLogsOnError
	h.create(ok)
	h.create(fail)

	p := h.waitPod("ok", 30*time.Second, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	term := containerStatus(p, "main").State.Terminated
	if term == nil || term.ExitCode != 0 || term.Reason != "Completed" || term.Message != "all done" {
		t.Errorf("ok: %s", describeStatus(p))
	}
	if condition(p, corev1.PodReady) != corev1.ConditionFalse {
		t.Errorf("ok: Ready should be False:\n%s", describeStatus(p))
	}
	p = h.waitPod("fail", 30*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	term = containerStatus(p, "main").State.Terminated
	if term == nil || term.ExitCode != 3 || term.Reason != "Error" || term.Message != "exiting 3" || containerStatus(p, "main").RestartCount != 0 {
		t.Errorf("fail: %s", describeStatus(p))
	}
	if lines := h.logLines(p, "main", 0); len(lines) == 0 || lines[0] != "exiting 3" {
		t.Errorf("fail log: %q", lines)
	}
}

func TestCrashLoopBackOff(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	p := h.create(toolboxPod("crash", true, "exit", "1"))
	var sawBackOff bool
	p = h.waitPod(p.Name, 60*time.Second, "CrashLoopBackOff after 3 restarts", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		if cs == nil || cs.State.Waiting == nil || cs.State.Waiting.Reason != "CrashLoopBackOff" {
			return false
		}
		sawBackOff = true
		return cs.RestartCount >= 3
	})
	cs := containerStatus(p, "main")
	want := fmt.Sprintf("restarting failed container=main pod=crash_default(%s)", p.UID)
	if !sawBackOff || !strings.HasPrefix(cs.State.Waiting.Message, "back-off ") || !strings.HasSuffix(cs.State.Waiting.Message, want) {
		t.Errorf("waiting message %q, want back-off ... %s", cs.State.Waiting.Message, want)
	}
	if lt := cs.LastTerminationState.Terminated; lt == nil || lt.ExitCode != 1 || lt.Reason != "Error" {
		t.Errorf("lastState: %s", describeStatus(p))
	}
	if p.Status.Phase != corev1.PodRunning {
		t.Errorf("phase %s, want Running (restartPolicy Always)", p.Status.Phase)
	}
	h.waitEvent(p.Name, "BackOff: Back-off restarting failed container main", 5*time.Second)
	// Only the latest attempt and the one before are kept.
	cs2, err := h.rt.ListContainers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(cs2) > keepAttempts {
		t.Errorf("%d containers kept, want at most %d", len(cs2), keepAttempts)
	}
}

func TestReadinessGatesReady(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("ready", true, "serve", "--ready=false")
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds:    1,
		FailureThreshold: 1,
	}
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Running, not ready", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return p.Status.Phase == corev1.PodRunning && cs != nil && cs.State.Running != nil
	})
	if condition(p, corev1.PodReady) == corev1.ConditionTrue {
		t.Fatalf("ready before the probe passed:\n%s", describeStatus(p))
	}
	waitServing(t, 8080)
	httpGetLocal(t, 8080, "/ready/on")
	h.waitPod(pod.Name, 10*time.Second, "Ready", isRunningReady)
	httpGetLocal(t, 8080, "/ready/off")
	p = h.waitPod(pod.Name, 10*time.Second, "not Ready", func(p *corev1.Pod) bool {
		return condition(p, corev1.PodReady) == corev1.ConditionFalse && condition(p, corev1.ContainersReady) == corev1.ConditionFalse
	})
	if cs := containerStatus(p, "main"); cs.RestartCount != 0 || cs.State.Running == nil {
		t.Errorf("readiness must not restart: %s", describeStatus(p))
	}
	h.waitEvent(pod.Name, "Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503", 5*time.Second)
}

func TestLivenessRestarts(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("live", true, "serve")
	pod.Spec.Containers[0].LivenessProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds:    1,
		FailureThreshold: 2,
	}
	pod.Spec.TerminationGracePeriodSeconds = ptr(int64(2))
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Running", isRunningReady)
	firstID := containerStatus(p, "main").ContainerID
	// Running (and Ready: no readiness probe) comes with the process
	// start, a moment before it listens.
	waitServing(t, 8080)
	httpGetLocal(t, 8080, "/healthz/fail")
	p = h.waitPod(pod.Name, 30*time.Second, "restarted and ready", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs.RestartCount >= 1 && cs.State.Running != nil && isRunningReady(p)
	})
	cs := containerStatus(p, "main")
	if cs.ContainerID == firstID || cs.LastTerminationState.Terminated == nil {
		t.Errorf("restart not visible: %s", describeStatus(p))
	}
	h.waitEvent(pod.Name, "Killing: Container main failed liveness probe, will be restarted", 5*time.Second)
	h.waitEvent(pod.Name, "Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 500", 5*time.Second)
}

func TestGracefulTermination(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	polite := toolboxPod("polite", true, "sleep", "infinity", "--term-delay", "1s")
	polite.Spec.TerminationGracePeriodSeconds = ptr(int64(10))
	// Not "sleep infinity": with SIGTERM ignored and nothing else to wait
	// on, the toolbox's select{} is a Go deadlock and it crashes.
	stubborn := toolboxPod("stubborn", true, "sleep", "1h", "--ignore-term")
	stubborn.Spec.TerminationGracePeriodSeconds = ptr(int64(3))
	h.create(polite)
	h.create(stubborn)
	h.waitPod("polite", 30*time.Second, "Running", isRunningReady)
	h.waitPod("stubborn", 30*time.Second, "Running", isRunningReady)

	start := time.Now()
	h.delete("polite", nil)
	h.delete("stubborn", nil)
	h.waitGone("polite", 30*time.Second)
	politeTook := time.Since(start)
	h.waitGone("stubborn", 30*time.Second)
	stubbornTook := time.Since(start)
	t.Logf("polite gone after %v, stubborn after %v", politeTook, stubbornTook)
	if politeTook < time.Second || politeTook > 5*time.Second {
		t.Errorf("polite (SIGTERM, exits after 1s, grace 10s) took %v", politeTook)
	}
	if stubbornTook < 3*time.Second || stubbornTook > 8*time.Second {
		t.Errorf("stubborn (ignores SIGTERM, grace 3s) took %v", stubbornTook)
	}
	h.waitEvent("polite", "Killing: Stopping container main", 5*time.Second)
}

func TestImageProblems(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	never := toolboxPod("never", true, "serve")
	never.Spec.Containers[0].Image = "flotilla.test/absent:v1"
	never.Spec.Containers[0].ImagePullPolicy = corev1.PullNever
	pull := toolboxPod("pull", true, "serve")
	// A registry on loopback that refuses: a pull here must never look a
	// name up or leave the machine.
	pull.Spec.Containers[0].Image = "127.0.0.1:1/absent:v2"
	h.create(never)
	h.create(pull)
	p := h.waitPod("never", 30*time.Second, "ErrImageNeverPull", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == "ErrImageNeverPull"
	})
	if p.Status.Phase != corev1.PodPending {
		t.Errorf("phase %s, want Pending", p.Status.Phase)
	}
	h.waitEvent("never", `ErrImageNeverPull: Container image "flotilla.test/absent:v1" is not present with pull policy of Never`, 5*time.Second)
	h.waitPod("pull", 30*time.Second, "ImagePullBackOff", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == "ImagePullBackOff"
	})
	h.waitEvent("pull", `Failed: Failed to pull image "127.0.0.1:1/absent:v2"`, 5*time.Second)
}

func TestMissingExecutable(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("noexec", true)
	pod.Spec.Containers[0].Command = []string{"/no/such/binary"}
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	term := containerStatus(p, "main").State.Terminated
	if term == nil || term.Reason != runtime.ReasonStartError || !strings.Contains(term.Message, "/no/such/binary") {
		t.Errorf("want StartError naming the binary: %s", describeStatus(p))
	}
	h.waitEvent(pod.Name, "Failed: Error: ", 5*time.Second)
}

func TestOOMKilled(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("oom", true, "alloc", "256")
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("32Mi")}}
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if term := containerStatus(p, "main").State.Terminated; term == nil || term.Reason != runtime.ReasonOOMKilled || term.ExitCode != 137 {
		t.Errorf("want OOMKilled 137: %s", describeStatus(p))
	}
}

func TestActiveDeadline(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	pod := toolboxPod("deadline", true, "sleep", "infinity")
	pod.Spec.ActiveDeadlineSeconds = ptr(int64(2))
	h.create(pod)
	p := h.waitPod(pod.Name, 30*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if p.Status.Reason != "DeadlineExceeded" {
		t.Errorf("reason %q: %s", p.Status.Reason, describeStatus(p))
	}
	if cs := containerStatus(p, "main"); cs.State.Terminated == nil {
		t.Errorf("container still running: %s", describeStatus(p))
	}
}

// waitServing waits until the host-network test server answers on port:
// the container is Running a moment before its process listens.
func waitServing(t *testing.T, port int) {
	t.Helper()
	waitFor(t, 10*time.Second, "server up", func() bool {
		r, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	})
}
