package pods

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/snapshots"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla/agent/containerdproc"
	"flotilla/agent/network"
	rtcd "flotilla/agent/runtime/containerd"
	"flotilla/api/apitest"
	"flotilla/testimages"
)

// The whole test binary runs in a network namespace of its own: hostNetwork
// pods then listen on that namespace's loopback (no clash with anything
// else on the machine on port 8080), and the pod network's bridge, veths
// and iptables rules live and die there. TestMain re-executes the binary
// under `unshare --net` (same mount namespace, so bind mounts are real);
// the child knows itself by nsEnv, which carries the parent's namespace
// inode so the child can check it really is elsewhere.
const nsEnv = "FLOTILLA_PODS_TEST_PARENT_NETNS"

func TestMain(m *testing.M) {
	flag.Parse()
	if parent := os.Getenv(nsEnv); parent == "" {
		if testing.Short() {
			// Only unit tests run; they need no namespace.
		} else if code, ok := reexecInNetNS(); ok {
			os.Exit(code)
		}
	} else {
		if strconv.FormatUint(netnsInode("/proc/self/ns/net"), 10) == parent {
			fmt.Fprintln(os.Stderr, "pods tests: still in the parent's network namespace; refusing to run")
			os.Exit(2)
		}
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "pods tests: loopback up: %v: %s\n", err, out)
			os.Exit(2)
		}
	}
	code := m.Run()
	testimages.Cleanup()
	os.Exit(code)
}

// reexecInNetNS runs this test binary again in a new network namespace
// and returns its exit code; false when that cannot be done (not root, no
// unshare), in which case the tests run here and skip what needs root.
func reexecInNetNS() (int, bool) {
	if os.Geteuid() != 0 {
		return 0, false
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		return 0, false
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), nsEnv+"="+strconv.FormatUint(netnsInode("/proc/self/ns/net"), 10))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), true
		}
		fmt.Fprintf(os.Stderr, "pods tests: re-exec under unshare: %v\n", err)
		return 2, true
	}
	return 0, true
}

func netnsInode(path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// harness is one node: a real API server in process, a private containerd,
// the containerd runtime, optionally a pod network, and the Manager.
type harness struct {
	t       *testing.T
	client  kubernetes.Interface
	proc    *containerdproc.Process
	rt      *rtcd.Runtime
	ctrd    *containerd.Client
	net     *network.Manager
	dataDir string
	log     *slog.Logger
	cfg     Config

	mu     sync.Mutex
	mgr    *Manager
	cancel context.CancelFunc
	done   chan error
}

type harnessOpts struct {
	network bool // a CNI pod network (else hostNetwork pods only)
}

const (
	testNode   = "node-a"
	testNS     = "default"
	testNodeIP = "127.0.0.1"
	podCIDR    = "10.88.0.0/24"
)

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("container suite: skipped with -short")
	}
	w := containerdproc.TestLogWriter(t) // registered first, its cleanup runs last
	level := slog.LevelInfo
	if os.Getenv("FLOTILLA_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	archive := testimages.ForTest(t)
	srv := apitest.NewServer(t)
	proc := containerdproc.StartForTest(t)
	h := &harness{t: t, client: srv.Client, proc: proc, dataDir: t.TempDir(), log: log}
	ns := "pods-test"
	rt, err := rtcd.New(context.Background(), rtcd.Config{Address: proc.Address(), Namespace: ns, Logger: log})
	if err != nil {
		t.Fatalf("containerd runtime: %v", err)
	}
	t.Cleanup(func() { rt.Close() })
	h.rt = rt
	c, err := containerd.New(proc.Address(), containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h.ctrd = c
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := rt.ImportImage(context.Background(), f); err != nil {
		t.Fatalf("import toolbox: %v", err)
	}
	if o.network {
		nm, err := network.New(network.Config{DataDir: filepath.Join(h.dataDir, "network"), Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if err := nm.SetPodCIDR(podCIDR); err != nil {
			t.Fatal(err)
		}
		h.net = nm
	}
	h.cfg = Config{
		NodeName:       testNode,
		Client:         h.client,
		Runtime:        rt,
		DataDir:        filepath.Join(h.dataDir, "agent"),
		NodeIP:         func() string { return testNodeIP },
		BackoffInitial: 200 * time.Millisecond,
		BackoffMax:     2 * time.Second,
		Resync:         2 * time.Second,
		Workers:        4,
		Logger:         log,
	}
	if h.net != nil {
		h.cfg.Network = h.net
	}
	// Runs first at the end: delete what the test left, stop the Manager,
	// then check that nothing leaked, while containerd still runs.
	t.Cleanup(h.finish)
	return h
}

// start runs a new Manager (as a starting agent would).
func (h *harness) start() *Manager {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mgr != nil {
		h.t.Fatal("manager already running")
	}
	m, err := New(h.cfg)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	h.mgr, h.cancel, h.done = m, cancel, done
	return m
}

// manager is the running Manager.
func (h *harness) manager() *Manager {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mgr
}

// stop stops the Manager (as a stopping agent would), leaving containers.
func (h *harness) stop() {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mgr == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Fatal("Run did not return after its context ended")
	}
	h.mgr = nil
}

func (h *harness) finish() {
	ctx := context.Background()
	list, err := h.client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
	if err == nil && len(list.Items) > 0 {
		if h.mgr == nil {
			h.start()
		}
		for _, p := range list.Items {
			_ = h.client.CoreV1().Pods(testNS).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(1))})
		}
		waitFor(h.t, 60*time.Second, "pods to be gone", func() bool {
			l, err := h.client.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
			return err == nil && len(l.Items) == 0
		})
	}
	if h.mgr != nil {
		// Give the Manager a moment to clean up pods whose deletion it
		// has seen (it removes everything before deleting the object,
		// so this is only the informer's delete of the last ones).
		waitFor(h.t, 30*time.Second, "runtime to have no containers", func() bool {
			cs, err := h.rt.ListContainers(ctx)
			return err == nil && len(cs) == 0
		})
	}
	h.stop()
	h.checkNoLeaks()
}

// checkNoLeaks asserts nothing of any pod is left: containers, container
// snapshots, pod and log directories, mounts, pod networks.
func (h *harness) checkNoLeaks() {
	t := h.t
	t.Helper()
	ctx := context.Background()
	if cs, err := h.rt.ListContainers(ctx); err != nil || len(cs) > 0 {
		t.Errorf("containers left: %d (%v)", len(cs), err)
	}
	var active []string
	err := h.ctrd.SnapshotService(h.rt.Snapshotter()).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive {
			active = append(active, info.Name)
		}
		return nil
	})
	if err != nil || len(active) > 0 {
		t.Errorf("container snapshots left: %v (%v)", active, err)
	}
	for _, d := range []string{podsRoot(h.cfg.DataDir), logsRoot(h.cfg.DataDir)} {
		if ents, _ := os.ReadDir(d); len(ents) > 0 {
			t.Errorf("%s not empty: %v", d, ents)
		}
	}
	if mps, err := mountPoints(); err == nil {
		for _, mp := range mps {
			if strings.HasPrefix(mp, h.dataDir+"/") {
				t.Errorf("mount left: %s", mp)
				_ = unix.Unmount(mp, unix.MNT_DETACH)
			}
		}
	}
	if h.net != nil {
		if uids, err := h.net.Pods(); err != nil || len(uids) > 0 {
			t.Errorf("pod networks left: %v (%v)", uids, err)
		}
	}
}

// toolboxPod is a pod of one toolbox container with args.
func toolboxPod(name string, hostNetwork bool, args ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                      testNode,
			HostNetwork:                   hostNetwork,
			TerminationGracePeriodSeconds: ptr(int64(5)),
			Containers: []corev1.Container{{
				Name:  "main",
				Image: testimages.ToolboxRef,
				Args:  args,
			}},
		},
	}
}

func (h *harness) create(p *corev1.Pod) *corev1.Pod {
	h.t.Helper()
	out, err := h.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		h.t.Fatalf("create pod %s: %v", p.Name, err)
	}
	return out
}

func (h *harness) get(name string) *corev1.Pod {
	h.t.Helper()
	p, err := h.client.CoreV1().Pods(testNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

// waitPod polls the pod until cond holds and returns it.
func (h *harness) waitPod(name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	h.t.Helper()
	var last *corev1.Pod
	deadline := time.Now().Add(timeout)
	for {
		p, err := h.client.CoreV1().Pods(testNS).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil {
			last = p
			if cond(p) {
				return p
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("pod %s: timed out after %v waiting for %s; last status:\n%s", name, timeout, what, describeStatus(last))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// waitGone polls until the pod object is deleted.
func (h *harness) waitGone(name string, timeout time.Duration) {
	h.t.Helper()
	waitFor(h.t, timeout, "pod "+name+" to be deleted", func() bool {
		_, err := h.client.CoreV1().Pods(testNS).Get(context.Background(), name, metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
}

func (h *harness) delete(name string, grace *int64) {
	h.t.Helper()
	if err := h.client.CoreV1().Pods(testNS).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: grace}); err != nil {
		h.t.Fatalf("delete pod %s: %v", name, err)
	}
}

// events returns the reasons and messages of the pod's events, one
// "Reason: message" per event.
func (h *harness) events(name string) []string {
	h.t.Helper()
	list, err := h.client.CoreV1().Events(testNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatalf("list events: %v", err)
	}
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name {
			out = append(out, e.Reason+": "+e.Message)
		}
	}
	return out
}

// waitEvent polls until the pod has an event whose "Reason: message"
// contains want.
func (h *harness) waitEvent(name, want string, timeout time.Duration) {
	h.t.Helper()
	var last []string
	deadline := time.Now().Add(timeout)
	for {
		last = h.events(name)
		for _, e := range last {
			if strings.Contains(e, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("pod %s: no event %q after %v; events:\n%s", name, want, timeout, strings.Join(last, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logLines reads a container attempt's log: the content of each CRI record.
func (h *harness) logLines(p *corev1.Pod, container string, attempt int) []string {
	h.t.Helper()
	path := filepath.Join(LogDir(h.cfg.DataDir, p.Namespace, p.Name, string(p.UID)), container, strconv.Itoa(attempt)+".log")
	b, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatalf("read log of %s: %v", container, err)
	}
	// Records tagged P (partial) continue in the next record.
	var out []string
	var partial strings.Builder
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		f := strings.SplitN(line, " ", 4)
		if len(f) < 3 {
			continue
		}
		if len(f) == 4 {
			partial.WriteString(f[3])
		}
		if f[2] == "P" {
			continue
		}
		out = append(out, partial.String())
		partial.Reset()
	}
	return out
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func containerStatus(p *corev1.Pod, name string) *corev1.ContainerStatus {
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == name {
			return &p.Status.ContainerStatuses[i]
		}
	}
	for i := range p.Status.InitContainerStatuses {
		if p.Status.InitContainerStatuses[i].Name == name {
			return &p.Status.InitContainerStatuses[i]
		}
	}
	return nil
}

func condition(p *corev1.Pod, t corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range p.Status.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return ""
}

func isRunningReady(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && condition(p, corev1.PodReady) == corev1.ConditionTrue
}

func describeStatus(p *corev1.Pod) string {
	if p == nil {
		return "(none)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s reason=%s message=%q podIP=%s\n", p.Status.Phase, p.Status.Reason, p.Status.Message, p.Status.PodIP)
	for _, c := range p.Status.Conditions {
		fmt.Fprintf(&b, "  cond %s=%s %s %s\n", c.Type, c.Status, c.Reason, c.Message)
	}
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, cs := range list {
			fmt.Fprintf(&b, "  container %s restarts=%d ready=%v id=%s state=%s last=%s\n", cs.Name, cs.RestartCount, cs.Ready, cs.ContainerID, stateString(cs.State), stateString(cs.LastTerminationState))
		}
	}
	return b.String()
}

func stateString(s corev1.ContainerState) string {
	switch {
	case s.Running != nil:
		return "running"
	case s.Waiting != nil:
		return fmt.Sprintf("waiting(%s: %s)", s.Waiting.Reason, s.Waiting.Message)
	case s.Terminated != nil:
		return fmt.Sprintf("terminated(%d %s: %q)", s.Terminated.ExitCode, s.Terminated.Reason, s.Terminated.Message)
	}
	return "-"
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
