package scheduler

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// Scheduler throughput in-process: no API, no informers. Each pod goes
// through AddPod (queue) → ScheduleOne (snapshot update, filter chain,
// scores, assume) → an asynchronous bind to a binder that only counts. The
// cluster: big nodes in three zones, one in ten tainted for GPUs; pods from
// 20 ReplicaSets (spreading on), one in five with a zone nodeSelector, one
// in seven with a preferred zone. Run:
//
//	go test -run '^$' -bench . -benchmem ./scheduler/

type countingBinder struct{ n atomic.Int64 }

func (b *countingBinder) Bind(context.Context, *v1.Pod, string) error {
	b.n.Add(1)
	return nil
}

func BenchmarkSchedule1000Nodes(b *testing.B) { benchmarkSchedule(b, 1000, 0) }
func BenchmarkSchedule5000Nodes(b *testing.B) { benchmarkSchedule(b, 5000, 0) }

// Every node checked for every pod: the worst case sampling avoids.
func BenchmarkSchedule5000NodesAllNodes(b *testing.B) { benchmarkSchedule(b, 5000, 100) }

func benchmarkSchedule(b *testing.B, numNodes, percentage int) {
	zones := []string{"z1", "z2", "z3"}
	binder := &countingBinder{}
	e, err := NewEngine(EngineConfig{
		Options: Options{PercentageOfNodesToScore: percentage, Seed: 1},
		Binder:  binder,
	})
	if err != nil {
		b.Fatal(err)
	}
	for i := range numNodes {
		opts := []nodeOpt{
			nodeAllocatable("64", "256Gi", "500"),
			nodeLabels("topology.kubernetes.io/zone", zones[i%len(zones)]),
		}
		if i%10 == 0 {
			opts = append(opts, nodeTaint("dedicated", "gpu", v1.TaintEffectNoSchedule))
		}
		e.AddNode(makeNode(nodeName(i), opts...))
	}
	pods := make([]*v1.Pod, b.N)
	for i := range pods {
		opts := []podOpt{requests("100m", "128Mi"), ownedBy(fmt.Sprintf("rs-%d", i%20))}
		if i%5 == 0 {
			opts = append(opts, nodeSelector("topology.kubernetes.io/zone", zones[i%len(zones)]))
		}
		if i%7 == 0 {
			opts = append(opts, preferredTerm(10, term(expr("topology.kubernetes.io/zone", v1.NodeSelectorOpIn, zones[(i+1)%len(zones)]))))
		}
		pods[i] = makePod(fmt.Sprintf("bench-%d", i), opts...)
	}
	// Warm up: the first cycle clones every node into the snapshot.
	if _, err := e.Schedule(makePod("warmup")); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	cpu0 := processCPU()
	b.ResetTimer()
	for i := range pods {
		e.AddPod(pods[i])
		if !e.ScheduleOne(ctx) {
			b.Fatal("queue closed")
		}
	}
	e.work.Wait()
	b.StopTimer()
	if got := binder.n.Load(); got != int64(b.N) {
		b.Fatalf("bound %d of %d pods", got, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pods/s")
	// The same per CPU-second the process used (all threads, GC included):
	// comparable across runs on a machine shared with other work.
	b.ReportMetric(float64(b.N)/(processCPU()-cpu0).Seconds(), "pods/cpu-s")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
