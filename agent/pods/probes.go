package pods

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"flotilla/agent/runtime"
)

// maxProbeOutput bounds what a probe's output contributes to events.
const maxProbeOutput = 10 * 1024

// prober holds the probe results of one running container. Its goroutines
// (one per probe kind) write the results and queue the pod when one
// changes; the pod's sync reads them.
type prober struct {
	containerID string
	cancel      context.CancelFunc

	mu        sync.Mutex
	started   bool   // startup probe passed, or there is none
	ready     bool   // readiness probe passed, or there is none
	kill      string // why the container must be killed; "" while healthy
	killGrace *int64 // the failing probe's terminationGracePeriodSeconds
}

func (p *prober) isStarted() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.started }
func (p *prober) isReady() bool   { p.mu.Lock(); defer p.mu.Unlock(); return p.ready }

// killReason is why the container must be killed ("" for none), with the
// grace the probe asks for (nil: the pod's).
func (p *prober) killReason() (string, *int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kill, p.killGrace
}

func (p *prober) stop() {
	if p.cancel != nil {
		p.cancel()
	}
}

func (st *podState) stopProber(name string) {
	if p := st.probers[name]; p != nil {
		p.stop()
		delete(st.probers, name)
	}
}

func (st *podState) stopProbers() {
	for name := range st.probers {
		st.stopProber(name)
	}
}

type probeKind string

const (
	probeStartup   probeKind = "Startup"
	probeLiveness  probeKind = "Liveness"
	probeReadiness probeKind = "Readiness"
)

// ensureProbers gives every running app container a prober for its
// current container ID, and drops those of containers no longer running.
func (m *Manager) ensureProbers(pod *corev1.Pod, st *podState, g attempts) {
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		l := g.latest(c.Name)
		if l == nil || l.State != runtime.StateRunning {
			st.stopProber(c.Name)
			continue
		}
		if p := st.probers[c.Name]; p != nil && p.containerID == l.ID {
			continue
		}
		st.stopProber(c.Name)
		p := &prober{containerID: l.ID, started: c.StartupProbe == nil, ready: c.ReadinessProbe == nil}
		// A container this Manager did not start (an agent restart)
		// keeps what the last status said, so adopting it does not blip
		// its readiness.
		for _, s := range pod.Status.ContainerStatuses {
			if s.Name == c.Name && s.ContainerID == containerIDPrefix+l.ID {
				if s.Started != nil && *s.Started {
					p.started = true
				}
				if s.Ready {
					p.ready = true
				}
			}
		}
		st.probers[c.Name] = p
		if c.StartupProbe == nil && c.LivenessProbe == nil && c.ReadinessProbe == nil {
			continue
		}
		ctx, cancel := context.WithCancel(m.runCtx)
		p.cancel = cancel
		target := probeTarget{uid: pod.UID, pod: pod, c: c.DeepCopy(), id: l.ID, startedAt: l.StartedAt, ip: st.podIP}
		for kind, probe := range map[probeKind]*corev1.Probe{probeStartup: c.StartupProbe, probeLiveness: c.LivenessProbe, probeReadiness: c.ReadinessProbe} {
			if probe == nil {
				continue
			}
			m.probeWG.Add(1)
			go func() {
				defer m.probeWG.Done()
				m.probeLoop(ctx, target, p, kind, probe)
			}()
		}
	}
}

// probeTarget is what a probe goroutine needs of its pod and container.
// pod is the informer's object: read only.
type probeTarget struct {
	uid       types.UID
	pod       *corev1.Pod
	c         *corev1.Container
	id        string
	startedAt time.Time
	ip        string
}

type probeResult int

const (
	probeSuccess probeResult = iota
	probeFailure
	probeUnknown // could not tell (runtime unreachable): counts as nothing
)

// probeLoop runs one probe of one container on its schedule and applies
// its thresholds, as the kubelet's prober worker does.
func (m *Manager) probeLoop(ctx context.Context, t probeTarget, p *prober, kind probeKind, probe *corev1.Probe) {
	period := secondsOr(probe.PeriodSeconds, 10)
	timeout := secondsOr(probe.TimeoutSeconds, 1)
	successThreshold := int(max(probe.SuccessThreshold, 1))
	failureThreshold := int(max(probe.FailureThreshold, 1))
	if probe.FailureThreshold == 0 {
		failureThreshold = 3
	}
	first := time.Until(t.startedAt.Add(time.Duration(probe.InitialDelaySeconds) * time.Second))
	timer := time.NewTimer(max(first, 0))
	defer timer.Stop()
	var successes, failures int
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		timer.Reset(period)
		started := p.isStarted()
		if kind == probeStartup && started {
			return
		}
		if kind != probeStartup && !started {
			continue // the startup probe gates the others
		}
		res, out := m.runProbe(ctx, t, probe, timeout)
		if ctx.Err() != nil {
			return
		}
		switch res {
		case probeUnknown:
			continue
		case probeSuccess:
			successes++
			failures = 0
		case probeFailure:
			failures++
			successes = 0
			m.eventf(t.pod, t.c.Name, corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %s", kind, out)
		}
		changed := false
		p.mu.Lock()
		switch kind {
		case probeStartup:
			switch {
			case successes >= 1:
				p.started, changed = true, true
			case failures >= failureThreshold:
				p.kill = fmt.Sprintf("Container %s failed startup probe, will be restarted", t.c.Name)
				p.killGrace, changed = probe.TerminationGracePeriodSeconds, true
			}
		case probeLiveness:
			if failures >= failureThreshold {
				p.kill = fmt.Sprintf("Container %s failed liveness probe, will be restarted", t.c.Name)
				p.killGrace, changed = probe.TerminationGracePeriodSeconds, true
			}
		case probeReadiness:
			switch {
			case successes >= successThreshold && !p.ready:
				p.ready, changed = true, true
			case failures >= failureThreshold && p.ready:
				p.ready, changed = false, true
			}
		}
		done := p.kill != "" || (kind == probeStartup && p.started)
		p.mu.Unlock()
		if changed {
			m.queue.Add(string(t.uid))
		}
		if done {
			return
		}
	}
}

func secondsOr(v int32, def int) time.Duration {
	if v <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(v) * time.Second
}

// runProbe runs one probe once.
func (m *Manager) runProbe(ctx context.Context, t probeTarget, probe *corev1.Probe, timeout time.Duration) (probeResult, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	h := probe.ProbeHandler
	switch {
	case h.Exec != nil:
		code, out, err := m.execIn(ctx, t.id, expandStatic(h.Exec.Command, t.c.Env))
		switch {
		case errors.Is(err, runtime.ErrUnavailable):
			return probeUnknown, err.Error()
		case ctx.Err() != nil:
			return probeFailure, fmt.Sprintf("command %q timed out", strings.Join(h.Exec.Command, " "))
		case err != nil:
			return probeFailure, err.Error()
		case code != 0:
			return probeFailure, fmt.Sprintf("command %q exited with %d: %s", strings.Join(h.Exec.Command, " "), code, out)
		}
		return probeSuccess, out
	case h.HTTPGet != nil:
		if err := httpGet(ctx, t, h.HTTPGet); err != nil {
			return probeFailure, err.Error()
		}
		return probeSuccess, ""
	case h.TCPSocket != nil:
		if err := tcpDial(ctx, t, h.TCPSocket); err != nil {
			return probeFailure, err.Error()
		}
		return probeSuccess, ""
	}
	return probeFailure, "probe has no supported handler"
}

// execIn runs cmd in a container and returns its exit code and output
// (stdout then stderr, bounded).
func (m *Manager) execIn(ctx context.Context, id string, cmd []string) (int, string, error) {
	var out limitedBuffer
	out.max = maxProbeOutput
	code, err := m.cfg.Runtime.Exec(ctx, id, runtime.ExecOptions{Cmd: cmd, Stdout: &out, Stderr: &out})
	return code, strings.TrimSpace(out.String()), err
}

// limitedBuffer keeps the first max bytes written and drops the rest.
type limitedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// expandStatic expands $(VAR) in an exec probe's command with the
// container's literal env values, as the kubelet does.
func expandStatic(cmd []string, env []corev1.EnvVar) []string {
	vals := map[string]string{}
	for _, e := range env {
		if e.ValueFrom == nil {
			vals[e.Name] = e.Value
		}
	}
	lookup := func(k string) (string, bool) { v, ok := vals[k]; return v, ok }
	out := make([]string, len(cmd))
	for i, s := range cmd {
		out[i] = expandVars(s, lookup)
	}
	return out
}

// resolvePort turns a probe's port (a number or a container port's name)
// into a number.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal <= 0 || p.IntVal > 65535 {
			return 0, fmt.Errorf("invalid port %d", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil && n > 0 && n <= 65535 {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

// probeTransport is shared by every HTTP probe: no keep-alives (a probe
// must not hold connections to the pod), no certificate checks (the
// kubelet's probes skip them too).
var probeTransport = &http.Transport{
	DisableKeepAlives: true,
	TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // probes do not verify, as in Kubernetes
	Proxy:             nil,
}

// httpGet is an httpGet probe or hook: success is a status in [200, 400).
// Redirects are not followed; a redirect counts as success, as the kubelet
// counts one to another host.
func httpGet(ctx context.Context, t probeTarget, h *corev1.HTTPGetAction) error {
	port, err := resolvePort(h.Port, t.c)
	if err != nil {
		return err
	}
	host := h.Host
	if host == "" {
		host = t.ip
	}
	if host == "" {
		return errors.New("pod has no IP yet")
	}
	scheme := strings.ToLower(string(h.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := h.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port))}
	if p, err := url.Parse(path); err == nil {
		u.Path, u.RawQuery = p.Path, p.RawQuery
	} else {
		u.Path = path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	req.Header.Set("Accept", "*/*")
	for _, hd := range h.HTTPHeaders {
		if strings.EqualFold(hd.Name, "Host") {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	client := &http.Client{
		Transport:     probeTransport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Drain a bounded amount so the server sees a complete exchange.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxProbeOutput))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return nil
}

func tcpDial(ctx context.Context, t probeTarget, h *corev1.TCPSocketAction) error {
	port, err := resolvePort(h.Port, t.c)
	if err != nil {
		return err
	}
	host := h.Host
	if host == "" {
		host = t.ip
	}
	if host == "" {
		return errors.New("pod has no IP yet")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return conn.Close()
}

// runHook runs a postStart or preStop handler; the returned string is the
// command's output, for the failure event.
func (m *Manager) runHook(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id, podIP string, h *corev1.LifecycleHandler) (string, error) {
	t := probeTarget{uid: pod.UID, pod: pod, c: c, id: id, ip: podIP}
	switch {
	case h.Exec != nil:
		code, out, err := m.execIn(ctx, id, h.Exec.Command)
		if err != nil {
			return out, err
		}
		if code != 0 {
			return out, fmt.Errorf("command '%s' exited with %d: %s", strings.Join(h.Exec.Command, " "), code, out)
		}
		return out, nil
	case h.HTTPGet != nil:
		return "", httpGet(ctx, t, h.HTTPGet)
	case h.Sleep != nil:
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		}
		return "", nil
	}
	return "", errors.New("lifecycle handler has no supported action")
}

// hookFailure is the kubelet's message for a failed hook.
func hookFailure(hook string, pod *corev1.Pod, c *corev1.Container, err error, out string) string {
	return fmt.Sprintf("%s failed for container %q in pod %q: %v, message: %q", hook, c.Name, podName(pod), err, out)
}
