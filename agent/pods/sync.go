package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/agent/network"
	"flotilla/agent/runtime"
)

// keepAttempts is how many attempts of a container are kept: the running
// or latest one, and the one before for `kubectl logs --previous`.
const keepAttempts = 2

// sync reconciles one pod. A positive duration asks for another sync after
// that long (a back-off expiring, a deadline, the periodic resync).
func (m *Manager) sync(ctx context.Context, uid types.UID) (time.Duration, error) {
	if !m.listed.Load() {
		if err := m.relist(ctx); err != nil {
			return 0, err
		}
	}
	pod := m.lookup(uid)
	if pod == nil {
		m.mu.Lock()
		delete(m.finished, uid)
		m.mu.Unlock()
		return 0, m.cleanupOrphan(ctx, uid)
	}
	m.mu.Lock()
	done := m.finished[uid]
	m.mu.Unlock()
	if done {
		return 0, nil
	}
	st := m.state(uid)
	list, err := m.containersOf(ctx, uid)
	if err != nil {
		return 0, err
	}
	switch {
	case pod.DeletionTimestamp != nil:
		return 0, m.terminate(ctx, pod, st, list)
	case isTerminal(pod.Status.Phase) || (st.lastStatus != nil && isTerminal(st.lastStatus.Phase)):
		return 0, m.finish(ctx, pod, st, list)
	}
	return m.runPod(ctx, pod, st, list)
}

func isTerminal(p corev1.PodPhase) bool {
	return p == corev1.PodSucceeded || p == corev1.PodFailed
}

// wake collects the earliest time a pod wants to be looked at again.
type wake struct{ d time.Duration }

func (w *wake) in(d time.Duration) {
	if d <= 0 {
		d = time.Millisecond
	}
	if w.d == 0 || d < w.d {
		w.d = d
	}
}

// runPod drives a pod that should be running towards its spec: sandbox,
// volumes, init containers in order, then the app containers, then status.
func (m *Manager) runPod(ctx context.Context, pod *corev1.Pod, st *podState, list []runtime.Container) (time.Duration, error) {
	now := time.Now()
	var w wake
	w.in(m.cfg.Resync)
	g := groupContainers(list)

	if st.failure == nil {
		if msg := unsupported(pod); msg != "" {
			st.failure = &podFailure{reason: "Unsupported", message: msg}
			m.eventf(pod, "", corev1.EventTypeWarning, "Unsupported", "%s", msg)
		}
	}
	if st.failure == nil && pod.Spec.ActiveDeadlineSeconds != nil {
		start := now
		if pod.Status.StartTime != nil {
			start = pod.Status.StartTime.Time
		}
		deadline := start.Add(time.Duration(*pod.Spec.ActiveDeadlineSeconds) * time.Second)
		if !now.Before(deadline) {
			st.failure = &podFailure{reason: "DeadlineExceeded", message: "Pod was active on the node longer than the specified deadline"}
			m.eventf(pod, "", corev1.EventTypeNormal, "DeadlineExceeded", "%s", st.failure.message)
		} else {
			w.in(deadline.Sub(now))
		}
	}
	if st.failure != nil {
		// Failed: stop what runs, report, then release what a finished pod
		// no longer needs.
		if err := m.killAll(ctx, pod, st, list, podGrace(pod), ""); err != nil {
			return 0, err
		}
		if err := m.writeStatus(ctx, pod, st); err != nil {
			return 0, err
		}
		return 0, m.release(ctx, pod, st)
	}

	if err := m.ensureSandbox(ctx, pod, st, list); err != nil {
		if errors.Is(err, runtime.ErrUnavailable) {
			return 0, err
		}
		m.eventf(pod, "", corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
		if werr := m.writeStatus(ctx, pod, st); werr != nil {
			return 0, werr
		}
		return 0, fmt.Errorf("pod sandbox: %w", err)
	}
	if err := m.ensureEtcFiles(pod, st); err != nil {
		m.eventf(pod, "", corev1.EventTypeWarning, "FailedMount", "%v", err)
		if werr := m.writeStatus(ctx, pod, st); werr != nil {
			return 0, werr
		}
		return 0, err
	}
	if err := m.ensureVolumes(ctx, pod, st, now); err != nil {
		if st.volumesAt.IsZero() {
			// The first set-up blocks the containers, as a failed mount
			// does in the kubelet; later refreshes keep the old content.
			m.eventf(pod, "", corev1.EventTypeWarning, "FailedMount", "%v", err)
			if werr := m.writeStatus(ctx, pod, st); werr != nil {
				return 0, werr
			}
			return 0, err
		}
		m.log.Warn("volume refresh failed", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}

	initialized, err := m.runInitContainers(ctx, pod, st, g, &w)
	if err != nil {
		return 0, err
	}
	if initialized {
		if err := m.runAppContainers(ctx, pod, st, g, &w); err != nil {
			return 0, err
		}
	}

	list, err = m.containersOf(ctx, pod.UID)
	if err != nil {
		return 0, err
	}
	g = groupContainers(list)
	if err := m.prune(ctx, pod, g); err != nil {
		return 0, err
	}
	m.ensureProbers(pod, st, g)
	if err := m.writeStatus(ctx, pod, st); err != nil {
		return 0, err
	}
	if st.lastStatus != nil && isTerminal(st.lastStatus.Phase) {
		return 0, m.release(ctx, pod, st)
	}
	return w.d, nil
}

// ensureSandbox gives the pod its network: the node's for hostNetwork pods,
// else a namespace and address from the Network.
func (m *Manager) ensureSandbox(ctx context.Context, pod *corev1.Pod, st *podState, list []runtime.Container) error {
	if st.sandboxUp {
		return nil
	}
	if pod.Spec.HostNetwork {
		st.podIP = m.cfg.NodeIP()
		if m.cfg.Network != nil {
			st.netNS = m.cfg.Network.HostNetNSPath()
		}
		st.sandboxUp = true
		return nil
	}
	if m.cfg.Network == nil {
		return errors.New("this node has no pod network (only hostNetwork pods can run)")
	}
	att, ok := m.cfg.Network.Lookup(string(pod.UID))
	if !ok {
		// Containers still running without their namespace (it was lost)
		// cannot get one back: as the kubelet does with a changed
		// sandbox, kill them so they restart in the new one.
		if anyRunning(list) {
			m.eventf(pod, "", corev1.EventTypeNormal, "SandboxChanged", "Pod sandbox changed, it will be killed and re-created.")
			if err := m.killAll(ctx, pod, st, list, podGrace(pod), ""); err != nil {
				return err
			}
		}
		var err error
		att, err = m.cfg.Network.SetupPod(ctx, network.PodNetwork{
			UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Ports: hostPorts(pod),
		})
		if err != nil {
			return err
		}
	}
	if att.IP == nil || att.NetNSPath == "" {
		return fmt.Errorf("network gave pod %s no address or namespace", pod.UID)
	}
	st.podIP, st.netNS, st.sandboxUp = att.IP.String(), att.NetNSPath, true
	st.etcWritten = false // /etc/hosts names the pod IP
	return nil
}

func anyRunning(list []runtime.Container) bool {
	for _, c := range list {
		if c.State == runtime.StateRunning {
			return true
		}
	}
	return false
}

// hostPorts are the pod's container ports published on the node.
func hostPorts(pod *corev1.Pod) []network.PortMapping {
	var out []network.PortMapping
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort == 0 {
				continue
			}
			proto := string(p.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			out = append(out, network.PortMapping{HostPort: p.HostPort, ContainerPort: p.ContainerPort, Protocol: proto, HostIP: p.HostIP})
		}
	}
	return out
}

// runInitContainers runs the init containers in order, each to completion,
// and reports whether all are done. A pod that ever had an app container is
// initialized for good, as in the kubelet, even if its init containers
// were since removed.
func (m *Manager) runInitContainers(ctx context.Context, pod *corev1.Pod, st *podState, g attempts, w *wake) (bool, error) {
	for _, c := range pod.Spec.Containers {
		if g.latest(c.Name) != nil {
			return true, nil
		}
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		l := g.latest(c.Name)
		switch {
		case l == nil:
			return false, m.start(ctx, pod, st, c, 0, w)
		case l.State == runtime.StateRunning:
			return false, nil
		case l.State == runtime.StateCreated:
			return false, m.recreate(ctx, pod, st, c, l, w)
		case l.State == runtime.StateExited && l.ExitCode == 0 && l.Reason != runtime.ReasonStartError:
			continue
		case l.State == runtime.StateExited:
			if pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
				return false, nil // the pod fails; status says why
			}
			return false, m.restart(ctx, pod, st, c, l, w)
		default: // unknown: look again soon
			w.in(time.Second)
			return false, nil
		}
	}
	return true, nil
}

// runAppContainers starts, restarts and kills the app containers.
func (m *Manager) runAppContainers(ctx context.Context, pod *corev1.Pod, st *podState, g attempts, w *wake) error {
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		l := g.latest(c.Name)
		switch {
		case l == nil:
			if err := m.start(ctx, pod, st, c, 0, w); err != nil {
				return err
			}
		case l.State == runtime.StateRunning:
			why, grace := "", podGrace(pod)
			if normalizeImage(l.Image) != normalizeImage(c.Image) {
				why = fmt.Sprintf("Container %s definition changed, will be restarted", c.Name)
			} else if pr := st.probers[c.Name]; pr != nil && pr.containerID == l.ID {
				var g *int64
				if why, g = pr.killReason(); g != nil {
					grace = time.Duration(*g) * time.Second
				}
			}
			if why == "" {
				continue
			}
			st.stopProber(c.Name)
			if err := m.killContainer(ctx, pod, c, l.ID, grace, why, true); err != nil {
				return err
			}
			w.in(time.Millisecond) // restart per policy on the next pass
		case l.State == runtime.StateCreated:
			if err := m.recreate(ctx, pod, st, c, l, w); err != nil {
				return err
			}
		case l.State == runtime.StateExited:
			if !shouldRestart(pod.Spec.RestartPolicy, l) {
				continue
			}
			if err := m.restart(ctx, pod, st, c, l, w); err != nil {
				return err
			}
		default:
			w.in(time.Second)
		}
	}
	return nil
}

// shouldRestart applies the restart policy to an exited container.
func shouldRestart(policy corev1.RestartPolicy, c *runtime.Container) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return c.ExitCode != 0 || c.Reason == runtime.ReasonStartError || c.Reason == runtime.ReasonCannotRun
	default:
		return true
	}
}

// restart starts the next attempt of an exited container, or waits out its
// back-off (CrashLoopBackOff) first.
func (m *Manager) restart(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container, l *runtime.Container, w *wake) error {
	now := time.Now()
	key := restartKey(pod.UID, c.Name)
	if !l.StartedAt.IsZero() && l.FinishedAt.Sub(l.StartedAt) >= backoffReset {
		m.backoff.reset(key)
	}
	since := l.FinishedAt
	if since.IsZero() {
		since = l.CreatedAt
	}
	if left, delay := m.backoff.wait(key, since, now); left > 0 {
		msg := fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", delay, c.Name, podName(pod))
		if prev := st.waiting[c.Name]; prev.reason != reasonCrashLoopBackOff || prev.message != msg {
			m.eventf(pod, c.Name, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s", c.Name, podName(pod))
		}
		st.waiting[c.Name] = waitingState{reason: reasonCrashLoopBackOff, message: msg}
		w.in(left)
		return nil
	}
	m.backoff.next(key, now)
	return m.start(ctx, pod, st, c, l.Attempt+1, w)
}

// recreate replaces a container that was made but never started (the agent
// stopped between the two): remove it and make the same attempt again.
func (m *Manager) recreate(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container, l *runtime.Container, w *wake) error {
	if err := m.removeContainer(ctx, pod.UID, *l); err != nil {
		return err
	}
	return m.start(ctx, pod, st, c, l.Attempt, w)
}

// prune removes the attempts of each container older than the last two
// (the previous one stays for `kubectl logs --previous`).
func (m *Manager) prune(ctx context.Context, pod *corev1.Pod, g attempts) error {
	for _, cs := range g {
		for i := keepAttempts; i < len(cs); i++ {
			if cs[i].State == runtime.StateRunning {
				continue
			}
			if err := m.removeContainer(ctx, pod.UID, cs[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeContainer removes a stopped container with its log and
// termination message files.
func (m *Manager) removeContainer(ctx context.Context, uid types.UID, c runtime.Container) error {
	if err := m.cfg.Runtime.RemoveContainer(ctx, c.ID); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		return fmt.Errorf("remove container %s: %w", c.ID, err)
	}
	m.dropContainer(uid, c.ID)
	if c.LogPath != "" {
		removeLogFiles(c.LogPath)
	}
	_ = os.Remove(m.termLogPath(uid, c.Name, c.Attempt))
	return nil
}

// stopContainer stops one container with grace, logging the kill.
func (m *Manager) stopContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string, grace time.Duration) error {
	if grace < minGrace {
		grace = minGrace
	}
	if err := m.cfg.Runtime.StopContainer(ctx, id, grace); err != nil && !errors.Is(err, runtime.ErrNotFound) {
		return fmt.Errorf("stop container %s of %s: %w", c.Name, podName(pod), err)
	}
	return nil
}

// podGrace is the pod's termination grace period.
func podGrace(pod *corev1.Pod) time.Duration {
	if pod.DeletionGracePeriodSeconds != nil {
		return time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	return time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
}

// podName is the kubelet's way of naming a pod in messages: name_ns(uid).
func podName(pod *corev1.Pod) string {
	return fmt.Sprintf("%s_%s(%s)", pod.Name, pod.Namespace, pod.UID)
}

// eventf records an Event on the pod, or on one of its containers (the
// kubelet's spec.containers{name} field path) when container is set.
func (m *Manager) eventf(pod *corev1.Pod, container, eventType, reason, format string, args ...any) {
	if m.recorder == nil {
		return
	}
	ref := &corev1.ObjectReference{
		Kind: "Pod", APIVersion: "v1",
		Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
	}
	if container != "" {
		ref.FieldPath = fieldPath(pod, container)
	}
	m.recorder.Eventf(ref, eventType, reason, format, args...)
}

func fieldPath(pod *corev1.Pod, container string) string {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == container {
			return "spec.initContainers{" + container + "}"
		}
	}
	return "spec.containers{" + container + "}"
}
