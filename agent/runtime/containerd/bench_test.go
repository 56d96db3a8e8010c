package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"flotilla/agent/runtime"
)

// BenchmarkLoggingContainers runs 20 containers that each log 1000 lines
// 10 ms apart and reports what their logging costs the node: the memory
// of the processes containerd keeps per container besides the container
// itself (the shim, and any child of the shim that is not the container),
// their CPU, and what the agent (this process) spends: CPU over the run (starting
// the containers and, since the log drivers went, copying their output),
// live heap and stacks, and goroutines while they run. Run with
//
//	go test -run '^$' -bench LoggingContainers -benchtime 1x ./agent/runtime/containerd/
//
// (b.N is ignored: one round is the measurement.)
func BenchmarkLoggingContainers(b *testing.B) {
	const n, lines = 20, 1000
	e := newEnv(b)
	ctx := context.Background()
	var ids []string
	var specs []runtime.ContainerSpec
	for i := range n {
		s := e.spec(fmt.Sprintf("noisy%d", i), "log", strconv.Itoa(lines), "--interval", "10ms")
		specs = append(specs, s)
		ids = append(ids, e.create(s).ID)
	}
	memBefore, goBefore := liveKB(), goruntime.NumGoroutine()
	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	t0 := time.Now()
	for _, id := range ids {
		if err := e.rt.StartContainer(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	started := time.Since(t0)
	// Measure in the middle of the logging, when every container runs.
	waitLog(b, specs[n-1].LogPath, "line 200")
	pp := podProcesses(e.ns)
	if len(pp.shims) != n {
		b.Fatalf("found %d shims, want %d", len(pp.shims), n)
	}
	// Their CPU is sampled until they exit (the last sample of each is
	// what it used): cumulative, so starting now misses nothing.
	cpuMS := map[int]int64{}
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, pid := range append(pp.shims, pp.others...) {
				if ms, ok := procCPUms(pid); ok {
					cpuMS[pid] = ms
				}
			}
			select {
			case <-tick.C:
			case <-stopSampling:
				return
			}
		}
	}()
	goroutines := goruntime.NumGoroutine() - goBefore
	mem := liveKB() - memBefore
	for _, id := range ids {
		e.waitState(e.rt, id, runtime.StateExited, time.Minute)
	}
	var after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	close(stopSampling)
	<-sampled
	var shimCPU, otherCPU int64
	for _, pid := range pp.shims {
		shimCPU += cpuMS[pid]
	}
	for _, pid := range pp.others {
		otherCPU += cpuMS[pid]
	}
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	for _, s := range specs {
		waitLog(b, s.LogPath, fmt.Sprintf("line %d", lines-1))
	}
	b.ReportMetric(float64(pp.shimRSS)/n, "shim-RSS-kB/ctr")
	b.ReportMetric(float64(pp.shimAnon)/n, "shim-anon-kB/ctr")
	b.ReportMetric(float64(len(pp.others))/n, "extra-procs/ctr")
	b.ReportMetric(float64(pp.otherRSS)/n, "extra-RSS-kB/ctr")
	b.ReportMetric(float64(pp.otherAnon)/n, "extra-anon-kB/ctr")
	b.ReportMetric(float64(shimCPU), "shims-cpu-ms")
	b.ReportMetric(float64(otherCPU), "extra-procs-cpu-ms")
	b.ReportMetric(float64(cpu.Milliseconds()), "agent-cpu-ms")
	b.ReportMetric(float64(mem)/n, "agent-live-kB/ctr")
	b.ReportMetric(float64(goroutines)/n, "agent-goroutines/ctr")
	b.ReportMetric(float64(started.Milliseconds())/n, "start-ms/ctr")
}

// liveKB is the memory the Go heap and stacks hold after a collection.
func liveKB() int64 {
	goruntime.GC()
	var m goruntime.MemStats
	goruntime.ReadMemStats(&m)
	return int64(m.HeapInuse+m.StackInuse) >> 10
}

// podProcessCounts is what containerd runs for a namespace's containers
// besides the containers.
type podProcessCounts struct {
	shims, others                          []int
	shimRSS, shimAnon, otherRSS, otherAnon int64
}

// podProcesses finds the shims of namespace ns (by their command line) and
// their children that are not container processes (a container's init
// runs /toolbox here; anything else, such as a log driver, is overhead).
func podProcesses(ns string) podProcessCounts {
	var pc podProcessCounts
	entries, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	cmd := map[int]string{}
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd[pid] = strings.ReplaceAll(string(b), "\x00", " ")
		parent[pid] = int(procStatusKB(pid, "PPid:"))
	}
	shim := map[int]bool{}
	for pid, c := range cmd {
		if strings.Contains(c, "containerd-shim") && strings.Contains(c, "-namespace "+ns+" ") {
			shim[pid] = true
			pc.shims = append(pc.shims, pid)
			pc.shimRSS += procStatusKB(pid, "VmRSS:")
			pc.shimAnon += procStatusKB(pid, "RssAnon:")
		}
	}
	for pid, c := range cmd {
		if shim[parent[pid]] && !strings.HasPrefix(c, "/toolbox ") {
			pc.others = append(pc.others, pid)
			pc.otherRSS += procStatusKB(pid, "VmRSS:")
			pc.otherAnon += procStatusKB(pid, "RssAnon:")
		}
	}
	return pc
}

// procCPUms is the user and system CPU a process has used, in ms; false
// once it is gone.
func procCPUms(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The fields after the command, which is in parentheses; utime and
	// stime are the 12th and 13th, in USER_HZ (100 on Linux) ticks.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return (u + s) * 10, true
}

// procStatusKB reads one numeric field of /proc/<pid>/status.
func procStatusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}
