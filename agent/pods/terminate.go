package pods

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/agent/runtime"
)

// killContainer stops one running container as the kubelet does: the
// preStop hook first (when asked and the container has one), within the
// grace period, then SIGTERM with what is left of it (at least minGrace),
// then SIGKILL. why, when set, is recorded as a Killing event.
func (m *Manager) killContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string, grace time.Duration, why string, preStop bool) error {
	start := time.Now()
	if why != "" {
		m.eventf(pod, c.Name, corev1.EventTypeNormal, "Killing", "%s", why)
	}
	if preStop && c.Lifecycle != nil && c.Lifecycle.PreStop != nil && grace > 0 {
		hctx, cancel := context.WithTimeout(ctx, grace)
		out, err := m.runHook(hctx, pod, c, id, m.podIP(pod.UID), c.Lifecycle.PreStop)
		cancel()
		if err != nil && ctx.Err() == nil {
			m.eventf(pod, c.Name, corev1.EventTypeWarning, "FailedPreStopHook", "%s", hookFailure("PreStopHook", pod, c, err, out))
		}
		grace -= time.Since(start)
	}
	return m.stopContainer(ctx, pod, c, id, grace)
}

// podIP is the address the pod's sandbox got ("" if none).
func (m *Manager) podIP(uid types.UID) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.pods[uid]; st != nil {
		return st.podIP
	}
	return ""
}

// killAll stops every running container of the pod at once, each with its
// preStop hook, and waits for all.
func (m *Manager) killAll(ctx context.Context, pod *corev1.Pod, st *podState, list []runtime.Container, grace time.Duration, why string) error {
	st.stopProbers()
	specs := map[string]*corev1.Container{}
	for i := range pod.Spec.InitContainers {
		specs[pod.Spec.InitContainers[i].Name] = &pod.Spec.InitContainers[i]
	}
	for i := range pod.Spec.Containers {
		specs[pod.Spec.Containers[i].Name] = &pod.Spec.Containers[i]
	}
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, ctr := range list {
		if ctr.State != runtime.StateRunning {
			continue
		}
		c := specs[ctr.Name]
		if c == nil {
			c = &corev1.Container{Name: ctr.Name}
		}
		msg := why
		if msg == "" {
			msg = "Stopping container " + ctr.Name
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.killContainer(ctx, pod, c, ctr.ID, grace, msg, true)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The status written next must see the exits.
	_, err := m.containersOf(ctx, pod.UID)
	return err
}

// terminate finishes a graceful deletion: containers stopped (preStop,
// SIGTERM, grace, SIGKILL), a last terminal status written, network,
// containers, volumes and logs removed, and finally the pod object deleted
// with grace 0 and a UID precondition, which is how the kubelet tells the
// API the pod is gone.
func (m *Manager) terminate(ctx context.Context, pod *corev1.Pod, st *podState, list []runtime.Container) error {
	if err := m.killAll(ctx, pod, st, list, podGrace(pod), ""); err != nil {
		return err
	}
	list, err := m.containersOf(ctx, pod.UID)
	if err != nil {
		return err
	}
	st.terminating = true
	if err := m.writeStatus(ctx, pod, st); err != nil {
		return err
	}
	if err := m.removeAll(ctx, pod.UID, list); err != nil {
		return err
	}
	grace := int64(0)
	err = m.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &grace,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete pod: %w", err)
	}
	m.forget(pod.UID)
	m.mu.Lock()
	m.finished[pod.UID] = true
	m.mu.Unlock()
	m.log.Info("pod terminated", "pod", pod.Namespace+"/"+pod.Name, "uid", pod.UID)
	return nil
}

// finish handles a pod in a terminal phase: nothing may run, the status is
// kept final, and what only a running pod needs is released.
func (m *Manager) finish(ctx context.Context, pod *corev1.Pod, st *podState, list []runtime.Container) error {
	if err := m.killAll(ctx, pod, st, list, podGrace(pod), ""); err != nil {
		return err
	}
	if anyRunning(list) {
		var err error
		if list, err = m.containersOf(ctx, pod.UID); err != nil {
			return err
		}
	}
	if err := m.writeStatus(ctx, pod, st); err != nil {
		return err
	}
	return m.release(ctx, pod, st)
}

// release frees what a finished pod no longer needs, as the kubelet does
// for terminal pods: its address and network namespace, its volumes. Its
// containers and logs stay until the pod is deleted.
func (m *Manager) release(ctx context.Context, pod *corev1.Pod, st *podState) error {
	st.stopProbers()
	if st.netRelease {
		return nil
	}
	if !pod.Spec.HostNetwork && m.cfg.Network != nil {
		if err := m.cfg.Network.TeardownPod(ctx, string(pod.UID)); err != nil {
			return fmt.Errorf("release pod network: %w", err)
		}
	}
	if err := m.tearDownVolumes(pod.UID); err != nil {
		return fmt.Errorf("release pod volumes: %w", err)
	}
	st.netRelease = true
	return nil
}

// cleanupOrphan removes everything left of a pod the API no longer has
// (deleted with grace 0, or while no agent ran): running containers are
// stopped, then the network, containers, directory and logs go.
func (m *Manager) cleanupOrphan(ctx context.Context, uid types.UID) error {
	m.mu.Lock()
	st := m.pods[uid]
	m.mu.Unlock()
	if st != nil {
		st.stopProbers()
	}
	list, err := m.containersOf(ctx, uid)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, c := range list {
		if c.State != runtime.StateRunning {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.cfg.Runtime.StopContainer(ctx, c.ID, orphanGrace); err != nil && !errors.Is(err, runtime.ErrNotFound) {
				errs[i] = fmt.Errorf("stop container %s: %w", c.ID, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := m.removeAll(ctx, uid, list); err != nil {
		return err
	}
	if len(list) > 0 {
		m.log.Info("cleaned up pod gone from the API", "uid", uid, "containers", len(list))
	}
	m.forget(uid)
	return nil
}

// removeAll releases the pod's network and removes its containers,
// directory and log directory.
func (m *Manager) removeAll(ctx context.Context, uid types.UID, list []runtime.Container) error {
	if m.cfg.Network != nil {
		if err := m.cfg.Network.TeardownPod(ctx, string(uid)); err != nil {
			return fmt.Errorf("release pod network: %w", err)
		}
	}
	for _, c := range list {
		if err := m.removeContainer(ctx, uid, c); err != nil {
			return err
		}
	}
	if err := m.removePodDir(uid); err != nil {
		return err
	}
	dirs, _ := filepath.Glob(filepath.Join(logsRoot(m.cfg.DataDir), "*_"+string(uid)))
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("remove log directory: %w", err)
		}
	}
	return nil
}
