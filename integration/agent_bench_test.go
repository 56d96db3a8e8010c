package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"flotilla/testimages"
)

// BenchmarkPodStartup measures pod startup latency as Kubernetes' SLO does:
// from the create request to the pod seen Running through a watch, with the
// image already on the node. One master (no agent) and one agent, each in
// its own lab host; the scheduler places the pods. 100 pods at 1 per second,
// then 100 at 20 per second. It also reports the agent process's RSS with
// 50 and 100 pods running (containerd, shims, containers and the per
// container log drivers are other processes; their sum is reported apart).
//
//	go test -run '^$' -bench PodStartup -benchtime 1x ./integration/
func BenchmarkPodStartup(b *testing.B) {
	containerd := sharedContainerd(b)
	image := testimages.ForTest(b)
	lab := newLab(b)
	h1, h2 := lab.host("m1"), lab.host("n1")
	m := newServerIn(b, h1, "m1", "--bootstrap-expect", "1")
	m.start()
	ns := "bench-" + randomSuffix()
	a := &server{t: b, name: "n1", ip: h2.ip, dataDir: filepath.Join(b.TempDir(), "n1"), netns: h2.nsPath}
	a.args = append([]string{"agent", "--node-name", "n1", "--data-dir", a.dataDir, "--bind", h2.ip, "--join", net.JoinHostPort(h1.ip, "7946"), "--log-level", "warn"}, agentArgs(containerd, ns)...)
	b.Cleanup(a.kill)
	b.Cleanup(func() { unmountUnder(a.dataDir) })
	a.start()
	dumpOnFailure(b, m, a)
	cs := clientIn(b, h1, m)
	waitFor(b, 60*time.Second, "n1 Ready", func() (bool, string) { return nodeReady(cs, "n1") })
	ctx := context.Background()
	if out, err := h1.flotilla(ctx, "image", "import", image, "--kubeconfig", filepath.Join(m.dataDir, "kubeconfig")); err != nil {
		b.Fatalf("image import: %v: %s", err, out)
	}

	for i := 0; i < b.N; i++ {
		for _, run := range []struct {
			name string
			rate float64 // pods per second
		}{{"1/s", 1}, {"20/s", 20}} {
			lat, rss := startPods(b, cs, a, 100, run.rate)
			p50, p99 := percentile(lat, 50), percentile(lat, 99)
			b.ReportMetric(float64(p50.Milliseconds()), "p50-ms@"+run.name)
			b.ReportMetric(float64(p99.Milliseconds()), "p99-ms@"+run.name)
			for n, kb := range rss {
				b.Logf("%s: agent RSS with %d pods: %.1f MiB, %.1f MiB of it anonymous (shims of the pods: %.1f MiB)", run.name, n, float64(kb[0])/1024, float64(kb[1])/1024, float64(kb[2])/1024)
				if run.rate == 1 {
					b.ReportMetric(float64(kb[0])/1024, fmt.Sprintf("agent-MiB@%dpods", n))
					b.ReportMetric(float64(kb[1])/1024, fmt.Sprintf("agent-anon-MiB@%dpods", n))
				}
			}
			b.Logf("%s: p50 %v p99 %v max %v over %d pods", run.name, p50, p99, slices.Max(lat), len(lat))
		}
	}
}

// startPods creates n pods at rate per second, returns each one's
// create→Running latency, and the agent's RSS (kB) and the pods' other
// processes' RSS at 50 and n running pods; then deletes them all.
func startPods(b *testing.B, cs kubernetes.Interface, agent *server, n int, rate float64) ([]time.Duration, map[int][3]int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pods := cs.CoreV1().Pods("default")
	list, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	w, err := pods.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()

	var mu sync.Mutex
	created := map[string]time.Time{}
	running := map[string]time.Duration{}
	rss := map[int][3]int64{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted || p.Status.Phase != corev1.PodRunning {
				continue
			}
			seen := time.Now()
			mu.Lock()
			if t0, ok := created[p.Name]; ok {
				if _, dup := running[p.Name]; !dup {
					running[p.Name] = seen.Sub(t0)
					if k := len(running); k == 50 || k == n {
						rss[k] = [3]int64{rssKB(agent), anonKB(agent), shimsKB(agent)}
					}
				}
			}
			all := len(running) == n
			mu.Unlock()
			if all {
				return
			}
		}
	}()
	interval := time.Duration(float64(time.Second) / rate)
	next := time.Now()
	for i := range n {
		name := fmt.Sprintf("start-%d-%d", int(rate), i)
		pod := toolboxPod(name, "", "sleep", "infinity")
		pod.Spec.Containers[0].Ports = nil
		time.Sleep(time.Until(next))
		next = next.Add(interval)
		mu.Lock()
		created[name] = time.Now()
		mu.Unlock()
		if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("only %d of %d pods Running", len(running), n)
	}
	var lat []time.Duration
	mu.Lock()
	for _, d := range running {
		lat = append(lat, d)
	}
	mu.Unlock()
	if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		b.Fatal(err)
	}
	waitFor(b, 5*time.Minute, "pods deleted", func() (bool, string) {
		l, err := pods.List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, fmt.Sprint(err)
	})
	return lat, rss
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

// rssKB is a process's VmRSS in kB.
func rssKB(s *server) int64 {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return 0
	}
	return vmRSS(cmd.Process.Pid)
}

// anonKB is a process's anonymous memory in kB: its heap and stacks, not
// the pages of its executable (shared with every process running it, and
// reclaimable).
func anonKB(s *server) int64 {
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Anonymous:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb
		}
	}
	return 0
}

func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb
		}
	}
	return 0
}

// shimsKB sums the RSS of the containerd shims of this agent's pods,
// found by the agent's containerd namespace in their command lines.
func shimsKB(agent *server) int64 {
	ns := ""
	for i, a := range agent.args {
		if a == "--containerd-namespace" && i+1 < len(agent.args) {
			ns = agent.args[i+1]
		}
	}
	procs := listProcs()
	cmdline := func(pid int) string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return strings.ReplaceAll(string(b), "\x00", " ")
	}
	var sum int64
	for _, p := range procs {
		if strings.Contains(cmdline(p.pid), "-namespace "+ns+" ") {
			sum += vmRSS(p.pid)
		}
	}
	return sum
}
