package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/reference"
	corev1 "k8s.io/api/core/v1"

	"flotilla/agent/runtime"
)

// Waiting reasons, as the kubelet names them.
const (
	reasonContainerCreating    = "ContainerCreating"
	reasonPodInitializing      = "PodInitializing"
	reasonCrashLoopBackOff     = "CrashLoopBackOff"
	reasonErrImagePull         = "ErrImagePull"
	reasonImagePullBackOff     = "ImagePullBackOff"
	reasonErrImageNeverPull    = "ErrImageNeverPull"
	reasonInvalidImageName     = "InvalidImageName"
	reasonCreateConfigError    = "CreateContainerConfigError"
	reasonCreateContainerError = "CreateContainerError"
)

// start makes and starts one attempt of a container: image, spec, create,
// start, postStart hook. Failures the pod can show (a missing image, a bad
// config, a process that cannot start) become its container's state and
// events, not errors; only an unreachable runtime is returned, so the sync
// is retried without touching the status.
func (m *Manager) start(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container, attempt int, w *wake) error {
	img, ok, err := m.ensureImage(ctx, pod, st, c, w)
	if err != nil || !ok {
		return err
	}
	spec, err := m.containerSpec(ctx, pod, st, c, attempt, img)
	if err != nil {
		if errors.Is(err, runtime.ErrUnavailable) {
			return err
		}
		st.waiting[c.Name] = waitingState{reason: reasonCreateConfigError, message: err.Error()}
		m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return nil
	}
	t0 := time.Now()
	if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o750); err != nil {
		return fmt.Errorf("make log directory: %w", err)
	}
	ctr, err := m.cfg.Runtime.CreateContainer(ctx, spec)
	if err != nil {
		if errors.Is(err, runtime.ErrUnavailable) {
			return err
		}
		st.waiting[c.Name] = waitingState{reason: reasonCreateContainerError, message: err.Error()}
		m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return nil
	}
	m.remember(ctr)
	delete(st.waiting, c.Name)
	m.eventf(pod, c.Name, corev1.EventTypeNormal, "Created", "Created container: %s", c.Name)
	if err := m.cfg.Runtime.StartContainer(ctx, ctr.ID); err != nil {
		if errors.Is(err, runtime.ErrUnavailable) {
			return err
		}
		// The runtime left the container exited with StartError and the
		// cause; the next pass restarts it per policy, with back-off.
		m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		w.in(time.Millisecond)
		return nil
	}
	m.eventf(pod, c.Name, corev1.EventTypeNormal, "Started", "Started container %s", c.Name)
	m.log.Debug("container started", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "attempt", attempt, "took", time.Since(t0))
	if c.Lifecycle != nil && c.Lifecycle.PostStart != nil {
		hctx, cancel := context.WithTimeout(ctx, max(podGrace(pod), minGrace))
		msg, err := m.runHook(hctx, pod, c, ctr.ID, st.podIP, c.Lifecycle.PostStart)
		cancel()
		if err != nil {
			if errors.Is(err, runtime.ErrUnavailable) {
				return err
			}
			m.eventf(pod, c.Name, corev1.EventTypeWarning, "FailedPostStartHook", "%s", hookFailure("PostStartHook", pod, c, err, msg))
			if err := m.killContainer(ctx, pod, c, ctr.ID, podGrace(pod), "FailedPostStartHook", false); err != nil {
				return err
			}
			w.in(time.Millisecond)
		}
	}
	return nil
}

// ensureImage makes sure the container's image is in the store, as its
// pull policy says, and returns it; false means not (yet), with the reason
// recorded in the container's waiting state.
func (m *Manager) ensureImage(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container, w *wake) (runtime.Image, bool, error) {
	ref := c.Image
	if _, err := reference.ParseDockerRef(ref); err != nil || ref == "" {
		msg := fmt.Sprintf("Failed to apply default image tag %q: %v", ref, err)
		if ref == "" {
			msg = "container has no image"
		}
		st.waiting[c.Name] = waitingState{reason: reasonInvalidImageName, message: msg}
		m.eventf(pod, c.Name, corev1.EventTypeWarning, "InspectFailed", "%s", msg)
		return runtime.Image{}, false, nil
	}
	policy := c.ImagePullPolicy
	if policy == "" {
		policy = defaultPullPolicy(ref)
	}
	img, err := m.cfg.Runtime.GetImage(ctx, ref)
	present := err == nil
	if err != nil && !errors.Is(err, runtime.ErrNotFound) {
		return runtime.Image{}, false, fmt.Errorf("look up image %s: %w", ref, err)
	}
	switch {
	case present && policy != corev1.PullAlways:
		m.eventf(pod, c.Name, corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", ref)
		return img, true, nil
	case !present && policy == corev1.PullNever:
		msg := fmt.Sprintf("Container image %q is not present with pull policy of Never", ref)
		if st.waiting[c.Name].reason != reasonErrImageNeverPull {
			m.eventf(pod, c.Name, corev1.EventTypeWarning, reasonErrImageNeverPull, "%s", msg)
			m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Error: %s", reasonErrImageNeverPull)
		}
		st.waiting[c.Name] = waitingState{reason: reasonErrImageNeverPull, message: msg}
		return runtime.Image{}, false, nil
	}
	key := pullKey(pod.UID, ref)
	now := time.Now()
	if left := m.backoff.waitSinceUpdate(key, now); left > 0 {
		msg := fmt.Sprintf("Back-off pulling image %q", ref)
		if st.waiting[c.Name].reason != reasonImagePullBackOff {
			m.eventf(pod, c.Name, corev1.EventTypeNormal, "BackOff", "%s", msg)
			m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Error: %s", reasonImagePullBackOff)
		}
		st.waiting[c.Name] = waitingState{reason: reasonImagePullBackOff, message: msg}
		w.in(left)
		return runtime.Image{}, false, nil
	}
	m.eventf(pod, c.Name, corev1.EventTypeNormal, "Pulling", "Pulling image %q", ref)
	img, err = m.cfg.Runtime.PullImage(ctx, ref)
	if err != nil {
		if errors.Is(err, runtime.ErrUnavailable) {
			return runtime.Image{}, false, err
		}
		m.backoff.next(key, time.Now())
		st.waiting[c.Name] = waitingState{reason: reasonErrImagePull, message: err.Error()}
		m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %v", ref, err)
		m.eventf(pod, c.Name, corev1.EventTypeWarning, "Failed", "Error: %s", reasonErrImagePull)
		w.in(m.backoff.waitSinceUpdate(key, time.Now()))
		return runtime.Image{}, false, nil
	}
	m.backoff.reset(key)
	m.eventf(pod, c.Name, corev1.EventTypeNormal, "Pulled", "Successfully pulled image %q in %s. Image size: %d bytes.",
		ref, time.Since(now).Round(time.Millisecond), img.Size)
	return img, true, nil
}

// defaultPullPolicy is the API's default, for a pod that skipped it:
// Always for :latest or no tag, else IfNotPresent.
func defaultPullPolicy(ref string) corev1.PullPolicy {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return corev1.PullIfNotPresent
	}
	if _, ok := named.(reference.Digested); ok {
		return corev1.PullIfNotPresent
	}
	if t, ok := named.(reference.Tagged); ok && t.Tag() != "latest" {
		return corev1.PullIfNotPresent
	}
	return corev1.PullAlways
}

// normalizeImage spells a reference fully ("busybox" →
// "docker.io/library/busybox:latest") so two spellings compare equal.
func normalizeImage(ref string) string {
	if n, err := reference.ParseDockerRef(ref); err == nil {
		return n.String()
	}
	return ref
}

// containerSpec turns a container of the pod into the runtime's spec.
func (m *Manager) containerSpec(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container, attempt int, img runtime.Image) (runtime.ContainerSpec, error) {
	env, err := m.containerEnv(ctx, pod, st, c)
	if err != nil {
		return runtime.ContainerSpec{}, err
	}
	vars := env.lookup()
	expand := func(in []string) []string {
		if in == nil {
			return nil
		}
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = expandVars(s, vars)
		}
		return out
	}
	mounts, err := m.containerMounts(pod, c, attempt, vars)
	if err != nil {
		return runtime.ContainerSpec{}, err
	}
	spec := runtime.ContainerSpec{
		PodUID:       string(pod.UID),
		PodNamespace: pod.Namespace,
		PodName:      pod.Name,
		Name:         c.Name,
		Attempt:      attempt,
		Image:        img.Ref,
		Command:      expand(c.Command),
		Args:         expand(c.Args),
		Env:          env.pairs(),
		WorkingDir:   c.WorkingDir,
		Mounts:       mounts,
		NetNSPath:    st.netNS,
		Hostname:     podHostname(pod),
		LogPath:      filepath.Join(LogDir(m.cfg.DataDir, pod.Namespace, pod.Name, string(pod.UID)), c.Name, strconv.Itoa(attempt)+".log"),
		TTY:          c.TTY,
		Stdin:        c.Stdin,
	}
	if spec.Image == "" {
		spec.Image = c.Image
	}
	if pod.Spec.HostNetwork {
		if h, err := os.Hostname(); err == nil {
			spec.Hostname = h
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		spec.CPUMilli = q.MilliValue()
	}
	var reqMilli int64
	if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
		reqMilli = q.MilliValue()
	} else if spec.CPUMilli > 0 {
		reqMilli = spec.CPUMilli // the API defaults a missing request to the limit
	}
	spec.CPUShares = milliCPUToShares(reqMilli)
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		spec.MemoryLimit = q.Value()
	}
	if err := applySecurity(&spec, pod, c); err != nil {
		return runtime.ContainerSpec{}, err
	}
	return spec, nil
}

// milliCPUToShares is the kubelet's cpu request → cgroup shares: 1024 per
// cpu, at least 2 (a pod without a request gets the least).
func milliCPUToShares(milli int64) uint64 {
	const minShares, maxShares = 2, 262144
	shares := milli * 1024 / 1000
	switch {
	case shares < minShares:
		return minShares
	case shares > maxShares:
		return maxShares
	}
	return uint64(shares)
}

// applySecurity merges the pod's and the container's security contexts
// (the container's wins) into spec.
func applySecurity(spec *runtime.ContainerSpec, pod *corev1.Pod, c *corev1.Container) error {
	var runAsNonRoot *bool
	if psc := pod.Spec.SecurityContext; psc != nil {
		spec.RunAsUser, spec.RunAsGroup, runAsNonRoot = psc.RunAsUser, psc.RunAsGroup, psc.RunAsNonRoot
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			spec.RunAsUser = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			spec.RunAsGroup = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			runAsNonRoot = sc.RunAsNonRoot
		}
		spec.Privileged = sc.Privileged != nil && *sc.Privileged
		spec.ReadOnlyRootfs = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		if sc.Capabilities != nil {
			for _, cp := range sc.Capabilities.Add {
				spec.CapAdd = append(spec.CapAdd, string(cp))
			}
			for _, cp := range sc.Capabilities.Drop {
				spec.CapDrop = append(spec.CapDrop, string(cp))
			}
		}
	}
	if runAsNonRoot != nil && *runAsNonRoot {
		switch {
		case spec.RunAsUser == nil:
			return errors.New("container has runAsNonRoot and no runAsUser: the image's user cannot be verified as non-root")
		case *spec.RunAsUser == 0:
			return fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", podName(pod), c.Name)
		}
	}
	return nil
}

// podHostname is the pod's hostname: spec.hostname, else its name, cut to
// a DNS label as the kubelet does.
func podHostname(pod *corev1.Pod) string {
	h := pod.Spec.Hostname
	if h == "" {
		h = pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}
