package pods

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/agent/runtime"
)

const (
	containerIDPrefix = "containerd://"
	// maxTerminationMessage bounds a termination message, as the kubelet.
	maxTerminationMessage = 4096
	// Logs used as the message with FallbackToLogsOnError.
	fallbackLogLines = 80
	fallbackLogBytes = 2048
)

// writeStatus computes the pod's status from what the runtime and the
// probers say and writes it through pods/status when it changed. The
// informer may lag behind the Manager's own last write: a status equal to
// that write is not written again until the cache catches up.
func (m *Manager) writeStatus(ctx context.Context, pod *corev1.Pod, st *podState) error {
	g := groupContainers(m.cached(pod.UID))
	now := time.Now()
	status := m.buildStatus(pod, st, g, now)
	st.phase.Store(string(status.Phase))
	if apiequality.Semantic.DeepEqual(&status, &pod.Status) {
		return nil
	}
	if st.lastStatus != nil && apiequality.Semantic.DeepEqual(&status, st.lastStatus) && rvOlder(pod.ResourceVersion, st.lastRV) {
		return nil
	}
	pods := m.cfg.Client.CoreV1().Pods(pod.Namespace)
	cur := pod
	for range 5 {
		upd := cur.DeepCopy()
		upd.Status = status
		out, err := pods.UpdateStatus(ctx, upd, metav1.UpdateOptions{})
		switch {
		case err == nil:
			st.lastStatus, st.lastRV = out.Status.DeepCopy(), out.ResourceVersion
			return nil
		case apierrors.IsNotFound(err):
			return nil
		case !apierrors.IsConflict(err):
			return fmt.Errorf("update pod status: %w", err)
		}
		fresh, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) || (err == nil && fresh.UID != pod.UID) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get pod for status: %w", err)
		}
		cur = fresh
		status = m.buildStatus(fresh, st, g, now)
		st.phase.Store(string(status.Phase))
		if apiequality.Semantic.DeepEqual(&status, &fresh.Status) {
			return nil
		}
	}
	return fmt.Errorf("update pod status: conflicts persisted")
}

// rvOlder reports whether resourceVersion a is older than b (both Raft
// indexes in Flotilla); false when either does not parse.
func rvOlder(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x < y
}

// cached is the pod's containers as last seen.
func (m *Manager) cached(uid types.UID) []runtime.Container {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]runtime.Container, 0, len(m.containers[uid]))
	for _, c := range m.containers[uid] {
		out = append(out, c)
	}
	return out
}

// buildStatus is the pod's status now, starting from its current status
// so that fields others own (conditions, reasons) and unchanged times stay.
func (m *Manager) buildStatus(pod *corev1.Pod, st *podState, g attempts, now time.Time) corev1.PodStatus {
	base := pod.Status
	s := *base.DeepCopy()
	nowT := metav1.NewTime(now.Truncate(time.Second))
	if ip := m.cfg.NodeIP(); ip != "" {
		s.HostIP, s.HostIPs = ip, []corev1.HostIP{{IP: ip}}
	}
	if st.podIP != "" {
		s.PodIP, s.PodIPs = st.podIP, []corev1.PodIP{{IP: st.podIP}}
	}
	if s.StartTime == nil {
		s.StartTime = &nowT
	}
	terminal := isTerminal(base.Phase) || st.terminating || st.failure != nil

	initialized := len(pod.Spec.InitContainers) == 0
	for _, c := range pod.Spec.Containers {
		if g.latest(c.Name) != nil {
			initialized = true
		}
	}
	s.InitContainerStatuses = nil
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		s.InitContainerStatuses = append(s.InitContainerStatuses, m.containerStatus(pod, st, c, g, base.InitContainerStatuses, true, true, terminal))
	}
	if !initialized {
		initialized = true
		for _, cs := range s.InitContainerStatuses {
			if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
				initialized = false
			}
		}
	}
	s.ContainerStatuses = nil
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		s.ContainerStatuses = append(s.ContainerStatuses, m.containerStatus(pod, st, c, g, base.ContainerStatuses, false, initialized, terminal))
	}

	switch {
	case isTerminal(base.Phase):
		s.Phase = base.Phase // a finished pod never runs again
	case st.failure != nil:
		s.Phase, s.Reason, s.Message = corev1.PodFailed, st.failure.reason, st.failure.message
	case st.terminating:
		s.Phase = corev1.PodFailed
		if allSucceeded(s.ContainerStatuses) {
			s.Phase = corev1.PodSucceeded
		}
	default:
		s.Phase = podPhase(pod, &s, initialized)
	}
	if isTerminal(s.Phase) {
		// What never ran when the pod ended will not: say so, as the
		// kubelet does, rather than leave it waiting forever.
		for i := range s.ContainerStatuses {
			cs := &s.ContainerStatuses[i]
			if cs.State.Terminated == nil && cs.State.Running == nil {
				cs.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
					ExitCode: 137, Reason: "ContainerStatusUnknown",
					Message: "The container could not be located when the pod was terminated",
				}}
				cs.Ready = false
			}
		}
	}
	m.setConditions(pod, st, &s, initialized, nowT)
	return s
}

func allSucceeded(list []corev1.ContainerStatus) bool {
	for _, cs := range list {
		if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
			return false
		}
	}
	return true
}

// containerStatus is one container's status from its latest two attempts.
func (m *Manager) containerStatus(pod *corev1.Pod, st *podState, c *corev1.Container, g attempts, old []corev1.ContainerStatus, isInit, initialized, terminal bool) corev1.ContainerStatus {
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, Started: ptr(false)}
	l, prev := g.latest(c.Name), g.previous(c.Name)
	waiting, hasWaiting := st.waiting[c.Name]
	if l == nil {
		for _, o := range old {
			if o.Name == c.Name && (terminal || o.State.Terminated != nil) && o.ContainerID != "" {
				// Gone from the runtime (removed while the pod ended): what
				// was reported last is all there is.
				return *o.DeepCopy()
			}
		}
		switch {
		case hasWaiting:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: waiting.reason, Message: waiting.message}
		case !isInit && !initialized:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reasonPodInitializing}
		default:
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reasonContainerCreating}
		}
		return cs
	}
	cs.RestartCount = int32(l.Attempt)
	if l.Image != "" {
		cs.Image = l.Image
	}
	cs.ImageID = l.ImageID
	cs.ContainerID = containerIDPrefix + l.ID
	if prev != nil && prev.State == runtime.StateExited {
		cs.LastTerminationState.Terminated = m.terminatedState(pod, c, prev)
	}
	switch l.State {
	case runtime.StateRunning:
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metaTime(l.StartedAt)}
		started, ready := true, true
		if p := st.probers[c.Name]; p != nil && p.containerID == l.ID {
			started, ready = p.isStarted(), p.isReady()
		} else if !isInit {
			started, ready = c.StartupProbe == nil, c.ReadinessProbe == nil
		}
		cs.Started = ptr(started)
		cs.Ready = !isInit && !terminal && started && ready
	case runtime.StateExited:
		term := m.terminatedState(pod, c, l)
		// A restart under way shows why it waits (back-off, a config
		// error, an image problem), with the exit as the last state.
		if hasWaiting && !terminal && shouldRestart(pod.Spec.RestartPolicy, l) {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: waiting.reason, Message: waiting.message}
			cs.LastTerminationState = corev1.ContainerState{Terminated: term}
		} else {
			cs.State.Terminated = term
		}
		cs.Ready = isInit && term.ExitCode == 0 && cs.State.Terminated != nil
	default: // created or unknown: about to start, or the runtime cannot say
		reason := reasonContainerCreating
		if hasWaiting {
			reason = waiting.reason
		}
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: waiting.message}
	}
	return cs
}

// terminatedState describes an exited container, with its termination
// message: the file it wrote, else the runtime's reason for a failed start,
// else (FallbackToLogsOnError, failed) the tail of its log.
func (m *Manager) terminatedState(pod *corev1.Pod, c *corev1.Container, ctr *runtime.Container) *corev1.ContainerStateTerminated {
	t := &corev1.ContainerStateTerminated{
		ExitCode:    ctr.ExitCode,
		Reason:      ctr.Reason,
		StartedAt:   metaTime(ctr.StartedAt),
		FinishedAt:  metaTime(ctr.FinishedAt),
		ContainerID: containerIDPrefix + ctr.ID,
	}
	if t.Reason == "" {
		t.Reason = runtime.ReasonCompleted
		if t.ExitCode != 0 {
			t.Reason = runtime.ReasonError
		}
	}
	msg := readHead(m.termLogPath(pod.UID, c.Name, ctr.Attempt), maxTerminationMessage)
	if msg == "" {
		msg = ctr.Message
	}
	if msg == "" && t.ExitCode != 0 && c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError && ctr.LogPath != "" {
		msg = tailCRILog(ctr.LogPath, fallbackLogLines, fallbackLogBytes)
	}
	t.Message = msg
	return t
}

func readHead(path string, max int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, int64(max)))
	return string(b)
}

// tailCRILog returns the last lines of a CRI-format log ("<time> <stream>
// <P|F> <text>"), joined, at most maxBytes.
func tailCRILog(path string, lines, maxBytes int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const window = 64 * 1024
	if fi, err := f.Stat(); err == nil && fi.Size() > window {
		_, _ = f.Seek(fi.Size()-window, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	var out []string
	var partial strings.Builder
	for _, line := range bytes.Split(data, []byte("\n")) {
		parts := strings.SplitN(string(line), " ", 4)
		if len(parts) < 3 {
			continue
		}
		text := ""
		if len(parts) == 4 {
			text = parts[3]
		}
		partial.WriteString(text)
		if parts[2] == "P" {
			continue
		}
		out = append(out, partial.String())
		partial.Reset()
	}
	if len(out) > lines {
		out = out[len(out)-lines:]
	}
	s := strings.Join(out, "\n")
	if len(s) > maxBytes {
		s = s[len(s)-maxBytes:]
	}
	return s
}

func metaTime(t time.Time) metav1.Time {
	if t.IsZero() {
		return metav1.Time{}
	}
	return metav1.NewTime(t.Truncate(time.Second))
}

func ptr[T any](v T) *T { return &v }

// podPhase is the kubelet's phase rule over the container statuses.
func podPhase(pod *corev1.Pod, s *corev1.PodStatus, initialized bool) corev1.PodPhase {
	failedInit := 0
	if !initialized {
		for _, cs := range s.InitContainerStatuses {
			switch {
			case cs.State.Terminated != nil && cs.State.Terminated.ExitCode != 0:
				failedInit++
			case cs.State.Waiting != nil && cs.LastTerminationState.Terminated != nil && cs.LastTerminationState.Terminated.ExitCode != 0:
				failedInit++
			}
		}
	}
	if failedInit > 0 && pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
		return corev1.PodFailed
	}
	if !initialized {
		return corev1.PodPending
	}
	var running, waiting, stopped, succeeded int
	for _, cs := range s.ContainerStatuses {
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil:
			stopped++
			if cs.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case cs.State.Waiting != nil && cs.LastTerminationState.Terminated != nil:
			stopped++
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		switch {
		case pod.Spec.RestartPolicy == corev1.RestartPolicyAlways:
			return corev1.PodRunning
		case stopped == succeeded:
			return corev1.PodSucceeded
		case pod.Spec.RestartPolicy == corev1.RestartPolicyNever:
			return corev1.PodFailed
		}
		return corev1.PodRunning // OnFailure: the failed ones restart
	}
	return corev1.PodPending
}

// setConditions sets the conditions the node owns, keeping the others and
// each condition's transition time while its status is unchanged.
func (m *Manager) setConditions(pod *corev1.Pod, st *podState, s *corev1.PodStatus, initialized bool, now metav1.Time) {
	set := func(c corev1.PodCondition) {
		for i := range s.Conditions {
			old := &s.Conditions[i]
			if old.Type != c.Type {
				continue
			}
			if old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			} else {
				c.LastTransitionTime = now
			}
			c.LastProbeTime = old.LastProbeTime
			*old = c
			return
		}
		c.LastTransitionTime = now
		s.Conditions = append(s.Conditions, c)
	}
	has := func(t corev1.PodConditionType) bool {
		for _, c := range s.Conditions {
			if c.Type == t {
				return true
			}
		}
		return false
	}
	if !has(corev1.PodScheduled) {
		set(corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue})
	}
	sandbox := st.sandboxUp && !st.netRelease && !isTerminal(s.Phase)
	set(corev1.PodCondition{Type: corev1.PodReadyToStartContainers, Status: condStatus(sandbox)})

	if initialized {
		set(corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionTrue})
	} else {
		var pending []string
		for _, cs := range s.InitContainerStatuses {
			if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
				pending = append(pending, cs.Name)
			}
		}
		set(corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionFalse, Reason: "ContainersNotInitialized",
			Message: fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(pending, " "))})
	}

	var unready []string
	for _, cs := range s.ContainerStatuses {
		if !cs.Ready {
			unready = append(unready, cs.Name)
		}
	}
	containersReady := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}
	switch {
	case s.Phase == corev1.PodSucceeded:
		containersReady = corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: "PodCompleted"}
	case len(unready) > 0:
		containersReady.Status, containersReady.Reason = corev1.ConditionFalse, "ContainersNotReady"
		containersReady.Message = fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
	}
	set(containersReady)

	ready := containersReady
	ready.Type = corev1.PodReady
	if ready.Status == corev1.ConditionTrue {
		var msgs []string
		for _, gate := range pod.Spec.ReadinessGates {
			found := false
			for _, c := range s.Conditions {
				if c.Type == gate.ConditionType {
					found = true
					if c.Status != corev1.ConditionTrue {
						msgs = append(msgs, fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %v", gate.ConditionType, c.Status))
					}
				}
			}
			if !found {
				msgs = append(msgs, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", gate.ConditionType))
			}
		}
		if len(msgs) > 0 {
			ready.Status, ready.Reason, ready.Message = corev1.ConditionFalse, "ReadinessGatesNotReady", strings.Join(msgs, ", ")
		}
	}
	set(ready)
	sort.SliceStable(s.Conditions, func(i, j int) bool { return condOrder(s.Conditions[i].Type) < condOrder(s.Conditions[j].Type) })
}

// condOrder keeps conditions in the kubelet's order; others go last, in
// the order they came.
func condOrder(t corev1.PodConditionType) int {
	switch t {
	case corev1.PodReadyToStartContainers:
		return 0
	case corev1.PodInitialized:
		return 1
	case corev1.PodReady:
		return 2
	case corev1.ContainersReady:
		return 3
	case corev1.PodScheduled:
		return 4
	}
	return 5
}

func condStatus(b bool) corev1.ConditionStatus {
	if b {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}
