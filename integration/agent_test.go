package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/sys/unix"

	"flotilla/testimages"
)

// node is one test node of a real cluster: a master with an agent in one
// process, or an agent alone, inside a lab host.
type node struct {
	*server
	host *testHost
	ns   string // the agent's containerd namespace
}

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// agentArgs are the flags every test agent shares: the package's containerd,
// a namespace of its own there, and short back-offs.
func agentArgs(containerd, ns string) []string {
	return []string{
		"--containerd", "external", "--containerd-address", containerd, "--containerd-namespace", ns,
		"--restart-backoff", "500ms", "--restart-backoff-max", "2s",
	}
}

// newMasterNode is `flotilla server --agent` in h: the all-in-one.
func newMasterNode(t *testing.T, h *testHost, name, containerd string) *node {
	ns := "it-" + name + "-" + randomSuffix()
	s := newServerIn(t, h, name, append([]string{"--bootstrap-expect", "1", "--agent"}, agentArgs(containerd, ns)...)...)
	n := &node{server: s, host: h, ns: ns}
	cleanupAgentDir(t, s.dataDir)
	return n
}

// newAgentNode is `flotilla agent` in h, joining through join.
func newAgentNode(t *testing.T, h *testHost, name, join, containerd string) *node {
	ns := "it-" + name + "-" + randomSuffix()
	s := &server{t: t, name: name, ip: h.ip, dataDir: filepath.Join(t.TempDir(), name), netns: h.nsPath}
	s.args = append([]string{"agent", "--node-name", name, "--data-dir", s.dataDir, "--bind", h.ip, "--join", join, "--token", testServerToken}, agentArgs(containerd, ns)...)
	t.Cleanup(s.kill)
	cleanupAgentDir(t, s.dataDir)
	return &node{server: s, host: h, ns: ns}
}

// cleanupAgentDir unmounts what a failed test may have left mounted under a
// data dir (pod network namespaces), so the temp dir can be removed; it runs
// before t.TempDir's own cleanup.
func cleanupAgentDir(t *testing.T, dir string) {
	t.Cleanup(func() {
		if failed := unmountUnder(dir); len(failed) > 0 {
			t.Errorf("unmount under %s: %v", dir, failed)
		}
	})
}

func nodeReady(cs kubernetes.Interface, name string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue, fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
		}
	}
	return false, "no Ready condition"
}

// runningPod waits until the pod is Running with all containers ready and
// returns it.
func runningPod(t *testing.T, cs kubernetes.Interface, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, 60*time.Second, "pod "+name+" running and ready", func() (bool, string) {
		p, err := cs.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pod = p
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			return false, fmt.Sprintf("phase %s, ip %q, statuses %+v", p.Status.Phase, p.Status.PodIP, p.Status.ContainerStatuses)
		}
		for _, c := range p.Status.ContainerStatuses {
			if !c.Ready {
				return false, fmt.Sprintf("container %s not ready: %+v", c.Name, c.State)
			}
		}
		return true, ""
	})
	return pod
}

func toolboxPod(name, node string, args ...string) *corev1.Pod {
	if len(args) == 0 {
		args = []string{"serve"}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr(int64(5)),
			Containers: []corev1.Container{{
				Name:  "main",
				Image: testimages.ToolboxRef,
				Args:  args,
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// httpGetIn fetches url from inside h.
func httpGetIn(ctx context.Context, h *testHost, url string) (string, error) {
	return getWith(ctx, &http.Client{Transport: &http.Transport{DialContext: h.dial, DisableKeepAlives: true}, Timeout: 5 * time.Second}, url)
}

// getWith GETs url with c and returns the body.
func getWith(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestAgentTwoNodes runs a real two-node cluster in a lab: an all-in-one
// master+agent and a second agent on another test host, both on the
// package's containerd with real runc and CNI. It covers what a user does
// first: pods on both nodes reaching each other by pod IP, logs, exec and
// port-forward through the embedded kubectl, hostPort, an agent restart
// that adopts running containers, a pod deleted while its agent was down,
// and no leaks once the pods are gone.
func TestAgentTwoNodes(t *testing.T) {
	containerd := sharedContainerd(t)
	image := testimages.ForTest(t)
	lab := newLab(t)
	h1, h2 := lab.host("n1"), lab.host("n2")
	m := newMasterNode(t, h1, "n1", containerd)
	m.start()
	a2 := newAgentNode(t, h2, "n2", net.JoinHostPort(h1.ip, "7946"), containerd)
	a2.start()
	dumpOnFailure(t, m.server, a2.server)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := clientIn(t, h1, m)
	kubeconfig := filepath.Join(m.dataDir, "kubeconfig")
	kubectl := func(args ...string) (string, error) {
		return h1.flotilla(ctx, append([]string{"kubectl", "--kubeconfig", kubeconfig}, args...)...)
	}
	for _, n := range []string{"n1", "n2"} {
		waitFor(t, 60*time.Second, "node "+n+" Ready", func() (bool, string) { return nodeReady(cs, n) })
	}
	out, err := h1.flotilla(ctx, "image", "import", image, "--kubeconfig", kubeconfig)
	if err != nil {
		t.Fatalf("image import: %v", err)
	}
	for _, n := range []string{"n1", "n2"} {
		if !strings.Contains(out, n+": imported "+testimages.ToolboxRef) {
			t.Fatalf("image import output lacks node %s: %s", n, out)
		}
	}

	out, err = h1.flotilla(ctx, "image", "ls", "--kubeconfig", kubeconfig)
	if err != nil || strings.Count(out, testimages.ToolboxRef) != 2 {
		t.Fatalf("image ls: %v: want the toolbox on both nodes:\n%s", err, out)
	}

	for _, p := range []*corev1.Pod{toolboxPod("p1", "n1"), toolboxPod("p2", "n2")} {
		if _, err := cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	p1, p2 := runningPod(t, cs, "p1"), runningPod(t, cs, "p2")
	if p1.Status.PodIP == p2.Status.PodIP {
		t.Fatalf("both pods got IP %s", p1.Status.PodIP)
	}
	if p1.Status.HostIP != h1.ip || p2.Status.HostIP != h2.ip {
		t.Fatalf("hostIPs %s and %s, want %s and %s", p1.Status.HostIP, p2.Status.HostIP, h1.ip, h2.ip)
	}

	t.Run("pod to pod across nodes", func(t *testing.T) {
		for _, c := range []struct{ from, to, ip string }{{"p2", "p1", p1.Status.PodIP}, {"p1", "p2", p2.Status.PodIP}} {
			var out string
			waitFor(t, 30*time.Second, c.from+" reaches "+c.to, func() (bool, string) {
				var err error
				out, err = kubectl("exec", c.from, "--", "/toolbox", "get", "http://"+net.JoinHostPort(c.ip, "8080")+"/")
				return err == nil, fmt.Sprint(err)
			})
			if !strings.Contains(out, "hostname="+c.to) {
				t.Fatalf("%s got %q from %s", c.from, out, c.to)
			}
			// No NAT between pods: the server sees the client's pod IP.
			from := p1.Status.PodIP
			if c.from == "p2" {
				from = p2.Status.PodIP
			}
			if !strings.Contains(out, "remote="+from+":") {
				t.Fatalf("%s reached %s from another address than its pod IP %s: %q", c.from, c.to, from, out)
			}
		}
	})

	t.Run("logs", func(t *testing.T) {
		out, err := kubectl("logs", "p1")
		if err != nil || !strings.Contains(out, "GET / from "+p2.Status.PodIP) {
			t.Fatalf("kubectl logs p1: %v: %q", err, out)
		}
		out, err = kubectl("logs", "p1", "--tail=1", "--timestamps")
		if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("kubectl logs --tail=1: %v: %q", err, out)
		}
		if _, perr := time.Parse(time.RFC3339Nano, strings.Fields(out)[0]); perr != nil {
			t.Fatalf("--timestamps line %q: %v", out, perr)
		}
		// A follow ends when the container does.
		pod := toolboxPod("logger", "n2", "log", "3", "--interval", "300ms")
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "logger started", func() (bool, string) {
			p, err := cs.CoreV1().Pods("default").Get(ctx, "logger", metav1.GetOptions{})
			return err == nil && p.Status.Phase != corev1.PodPending, fmt.Sprint(err)
		})
		out, err = kubectl("logs", "-f", "logger")
		if err != nil {
			t.Fatalf("kubectl logs -f logger: %v", err)
		}
		for i := range 3 {
			if !strings.Contains(out, fmt.Sprintf("line %d", i)) {
				t.Fatalf("logs -f logger lacks line %d: %q", i, out)
			}
		}
		waitFor(t, 30*time.Second, "logger Succeeded", func() (bool, string) {
			p, err := cs.CoreV1().Pods("default").Get(ctx, "logger", metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodSucceeded, fmt.Sprint(err, " ", p.Status.Phase)
		})
	})

	t.Run("exec", func(t *testing.T) {
		out, err := kubectl("exec", "p2", "--", "/toolbox", "exit", "3")
		if err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Fatalf("exec exit 3: err %v, out %q; want kubectl to exit 3", err, out)
		}
		c := h1.cmd(flotillaBin, "kubectl", "--kubeconfig", kubeconfig, "exec", "-i", "p2", "--", "/toolbox", "cat")
		c.Stdin = strings.NewReader("through stdin\n")
		b, err := c.CombinedOutput()
		if err != nil || string(b) != "through stdin\n" {
			t.Fatalf("exec -i cat: %v: %q", err, b)
		}
		// exec -it needs a terminal on kubectl's side: a pty the test made.
		execTTY(t, h1, kubeconfig, "p2")
		out, err = kubectl("exec", "p2", "--", "/nope")
		if err == nil {
			t.Fatalf("exec of a missing command succeeded: %q", out)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		pf := h1.cmd(flotillaBin, "kubectl", "--kubeconfig", kubeconfig, "port-forward", "pod/p2", "18080:8080")
		stdout, err := pf.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := pf.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
		ready := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "Forwarding from 127.0.0.1:18080") {
					close(ready)
					break
				}
			}
			_, _ = io.Copy(io.Discard, stdout)
		}()
		select {
		case <-ready:
		case <-time.After(30 * time.Second):
			t.Fatal("kubectl port-forward never said it was forwarding")
		}
		out, err := httpGetIn(ctx, h1, "http://127.0.0.1:18080/")
		if err != nil || !strings.Contains(out, "hostname=p2") {
			t.Fatalf("through port-forward: %v: %q", err, out)
		}
	})

	t.Run("hostPort", func(t *testing.T) {
		pod := toolboxPod("hp", "n2")
		pod.Spec.Containers[0].Ports[0].HostPort = 30080
		if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		runningPod(t, cs, "hp")
		var out string
		waitFor(t, 30*time.Second, "hostPort answers from the other node", func() (bool, string) {
			var err error
			out, err = httpGetIn(ctx, h1, "http://"+net.JoinHostPort(h2.ip, "30080")+"/")
			return err == nil, fmt.Sprint(err)
		})
		if !strings.Contains(out, "hostname=hp") {
			t.Fatalf("hostPort answered %q", out)
		}
	})

	t.Run("agent restart adopts containers", func(t *testing.T) {
		before := runningPod(t, cs, "p2")
		a2.kill()
		// While n2's agent is away, hp is force-deleted: nothing on n2
		// hears of it until the agent is back.
		if err := cs.CoreV1().Pods("default").Delete(ctx, "hp", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
			t.Fatal(err)
		}
		a2.start()
		waitFor(t, 60*time.Second, "n2 Ready again", func() (bool, string) { return nodeReady(cs, "n2") })
		after := runningPod(t, cs, "p2")
		b, a := before.Status.ContainerStatuses[0], after.Status.ContainerStatuses[0]
		if a.ContainerID != b.ContainerID || a.RestartCount != b.RestartCount {
			t.Fatalf("agent restart restarted p2: before %s (restarts %d), after %s (restarts %d)", b.ContainerID, b.RestartCount, a.ContainerID, a.RestartCount)
		}
		waitFor(t, 60*time.Second, "hp's container and hostPort gone from n2", func() (bool, string) {
			out, err := ctr(containerd, a2.ns, 10*time.Second, "containers", "ls", "-q")
			if err != nil {
				return false, err.Error()
			}
			if n := len(strings.Fields(out)); n != 2 { // p2 and the finished logger
				return false, fmt.Sprintf("%d containers in %s: %s", n, a2.ns, out)
			}
			if _, err := httpGetIn(ctx, h1, "http://"+net.JoinHostPort(h2.ip, "30080")+"/"); err == nil {
				return false, "hostPort 30080 still answers"
			}
			return true, ""
		})
	})

	t.Run("containerd outage", func(t *testing.T) {
		before := runningPod(t, cs, "p1")
		if err := shared.proc.proc.Kill(); err != nil {
			t.Fatal(err)
		}
		restarted := false
		defer func() {
			if !restarted {
				_ = shared.proc.proc.Restart(context.Background())
			}
		}()
		waitFor(t, 30*time.Second, "n1 NotReady because containerd is down", func() (bool, string) {
			ready, msg := nodeReady(cs, "n1")
			return !ready && strings.Contains(msg, "container runtime is down"), msg
		})
		// A pod created meanwhile waits; the running one keeps its status.
		if _, err := cs.CoreV1().Pods("default").Create(ctx, toolboxPod("late", "n1"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := cs.CoreV1().Pods("default").Get(ctx, "p1", metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodRunning {
			t.Fatalf("p1 during the outage: %v, phase %s", err, p.Status.Phase)
		}
		if err := shared.proc.proc.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		restarted = true
		waitFor(t, 30*time.Second, "n1 Ready again", func() (bool, string) { return nodeReady(cs, "n1") })
		runningPod(t, cs, "late")
		after := runningPod(t, cs, "p1")
		if a, b := after.Status.ContainerStatuses[0], before.Status.ContainerStatuses[0]; a.ContainerID != b.ContainerID || a.RestartCount != b.RestartCount {
			t.Fatalf("containerd restart restarted p1: %s/%d → %s/%d", b.ContainerID, b.RestartCount, a.ContainerID, a.RestartCount)
		}
	})

	t.Run("no leaks", func(t *testing.T) {
		if err := cs.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "every pod gone", func() (bool, string) {
			l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err.Error()
			}
			return len(l.Items) == 0, fmt.Sprintf("%d pods left", len(l.Items))
		})
		for _, n := range []*node{m, a2} {
			for _, what := range [][]string{{"containers", "ls", "-q"}, {"tasks", "ls", "-q"}} {
				out, err := ctr(containerd, n.ns, 10*time.Second, what...)
				if err != nil || strings.TrimSpace(out) != "" {
					t.Errorf("%s: ctr %s: %v: %q", n.name, strings.Join(what, " "), err, out)
				}
			}
			// Only the image's committed layer may remain, no container's
			// active snapshot.
			out, _ := ctr(containerd, n.ns, 10*time.Second, "snapshots", "ls")
			if strings.Contains(out, "Active") {
				t.Errorf("%s: active snapshots left:\n%s", n.name, out)
			}
			agentDir := filepath.Join(n.dataDir, "agent")
			checkNoLeakedMounts(t, agentDir)
			for _, dir := range []string{"pods", "logs", "network/netns", "network/state"} {
				if entries, _ := os.ReadDir(filepath.Join(agentDir, dir)); len(entries) > 0 {
					t.Errorf("%s: %s not empty: %v", n.name, dir, entries)
				}
			}
			leases, _ := filepath.Glob(filepath.Join(agentDir, "network", "ipam", "*", "10.*"))
			if len(leases) > 0 {
				t.Errorf("%s: IP leases left: %v", n.name, leases)
			}
		}
	})
}

func TestAgentBadInput(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no join", []string{"agent", "--node-name", "x", "--bind", "127.0.0.1"}, "--join is required"},
		{"bad containerd mode", []string{"agent", "--join", "127.0.0.1:1", "--bind", "127.0.0.1", "--containerd", "docker"}, `--containerd "docker"`},
		{"bad taint", []string{"agent", "--join", "127.0.0.1:1", "--bind", "127.0.0.1", "--taints", "k=v:Sometimes"}, "effect"},
		{"bad labels", []string{"agent", "--join", "127.0.0.1:1", "--bind", "127.0.0.1", "--labels", "novalue"}, "--labels"},
		{"bad runtime", []string{"agent", "--runtime", "docker"}, `--runtime "docker"`},
		{"bad port", []string{"agent", "--join", "127.0.0.1:1", "--bind", "127.0.0.1", "--agent-port", "70000"}, "not a port"},
		{"bad backoff", []string{"agent", "--join", "127.0.0.1:1", "--bind", "127.0.0.1", "--restart-backoff", "1m", "--restart-backoff-max", "1s"}, "restart-backoff"},
		{"bad bind", []string{"agent", "--join", "127.0.0.1:1", "--bind", "nowhere"}, "not an IP address"},
		{"bad nodeport address", []string{"agent", "--join", "127.0.0.1:1", "--bind", "127.0.0.1", "--nodeport-addresses", "10.0.0.300"}, `--nodeport-addresses "10.0.0.300"`},
		{"proxy bad nodeport address", []string{"proxy", "--node-name", "x", "--nodeport-addresses", "x"}, `--nodeport-addresses "x"`},
		{"server --agent bad flag", []string{"server", "--bootstrap-expect", "1", "--agent", "--max-pods", "0", "--data-dir", t.TempDir()}, "--max-pods"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			out, err := flotilla(ctx, c.args...)
			if err == nil {
				t.Fatalf("flotilla %v succeeded: %s", c.args, out)
			}
			if ctx.Err() != nil {
				t.Fatalf("flotilla %v hung", c.args)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("flotilla %v: output %q lacks %q", c.args, out, c.want)
			}
		})
	}
}

// execTTY runs `kubectl exec -it POD -- /toolbox cat` on a pseudo-terminal,
// types a line, waits to see it come back from the container, then ends the
// remote cat with ^D.
func execTTY(t *testing.T, h *testHost, kubeconfig, pod string) {
	t.Helper()
	master, slave, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	c := h.cmd(flotillaBin, "kubectl", "--kubeconfig", kubeconfig, "exec", "-it", pod, "--", "/toolbox", "cat")
	c.Stdin, c.Stdout, c.Stderr = slave, slave, slave
	c.SysProcAttr.Setsid, c.SysProcAttr.Setctty = true, true
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	defer func() { _ = c.Process.Kill() }()

	var mu sync.Mutex
	var seen strings.Builder
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			mu.Lock()
			seen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	// Type until the line comes back: the remote tty echoes it and cat
	// prints it, so it shows twice once the session is up.
	var typed time.Time
	waitFor(t, 30*time.Second, "the typed line back from the container", func() (bool, string) {
		mu.Lock()
		got := seen.String()
		mu.Unlock()
		if strings.Count(got, "typed at a terminal") >= 2 {
			return true, ""
		}
		if time.Since(typed) > time.Second {
			_, _ = master.Write([]byte("typed at a terminal\r"))
			typed = time.Now()
		}
		return false, fmt.Sprintf("%q", got)
	})
	_, _ = master.Write([]byte{4})
	select {
	case err := <-exited:
		if err != nil {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("kubectl exec -it after ^D: %v: %q", err, seen.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("kubectl exec -it did not end after ^D")
	}
}

// openPTY opens a new pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

// TestAgentMasterFailover: an agent that knows one master's gossip address
// finds all three by gossip, and when the master it talks to dies it moves
// to another without a restart: a pod created afterwards runs.
func TestAgentMasterFailover(t *testing.T) {
	containerd := sharedContainerd(t)
	image := testimages.ForTest(t)
	lab := newLab(t)
	hosts := []*testHost{lab.host("m1"), lab.host("m2"), lab.host("m3")}
	var masters []*server
	for i, h := range hosts {
		s := newServerIn(t, h, fmt.Sprintf("m%d", i+1), "--bootstrap-expect", "3", "--join", net.JoinHostPort(hosts[0].ip, "7946"))
		s.start()
		masters = append(masters, s)
	}
	hn := lab.host("n1")
	a := newAgentNode(t, hn, "n1", net.JoinHostPort(hosts[2].ip, "7946"), containerd)
	a.start()
	dumpOnFailure(t, append(masters, a.server)...)

	// Any master answers; the client tries them in turn.
	clients := make([]kubernetes.Interface, 3)
	for i := range masters {
		clients[i] = clientIn(t, hn, masters[i])
	}
	waitFor(t, 90*time.Second, "n1 Ready", func() (bool, string) { return nodeReady(clients[0], "n1") })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kubeconfig := filepath.Join(masters[0].dataDir, "kubeconfig")
	if out, err := hosts[0].flotilla(ctx, "image", "import", image, "--kubeconfig", kubeconfig); err != nil {
		t.Fatalf("image import: %v: %s", err, out)
	}

	// The master the agent talks to, from its log.
	current := func() string {
		api := ""
		for _, l := range strings.Split(a.output(), "\n") {
			if i := strings.Index(l, `msg="talking to master"`); i >= 0 {
				if j := strings.Index(l, "api="); j >= 0 {
					api = strings.Fields(l[j+4:])[0]
				}
			}
		}
		return api
	}
	victim := -1
	for i, m := range masters {
		if m.apiAddr() == current() {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("the agent talks to %q, none of the masters", current())
	}
	masters[victim].kill()
	survivor := clients[(victim+1)%3]
	if _, err := survivor.CoreV1().Pods("default").Create(ctx, toolboxPod("after", "n1"), metav1.CreateOptions{}); err != nil {
		// The survivors may be electing a leader: retry through waitFor.
		waitFor(t, 30*time.Second, "pod created on a surviving master", func() (bool, string) {
			_, err := survivor.CoreV1().Pods("default").Create(ctx, toolboxPod("after", "n1"), metav1.CreateOptions{})
			return err == nil, fmt.Sprint(err)
		})
	}
	runningPod(t, survivor, "after")
	if now := current(); now == masters[victim].apiAddr() || now == "" {
		t.Fatalf("agent still on the dead master %s", now)
	}
	if err := survivor.CoreV1().Pods("default").Delete(ctx, "after", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "pod gone", func() (bool, string) {
		_, err := survivor.CoreV1().Pods("default").Get(ctx, "after", metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), fmt.Sprint(err)
	})
}
