package cluster_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"flotilla/cluster/clustertest"
)

// Benchmarks: three in-process servers; run with
// go test -run '^$' -bench . ./cluster/  (never part of make test).

// benchPar × GOMAXPROCS goroutines call concurrently: batching in raft
// (one log write per batch) is what makes throughput grow with it.
const benchPar = 16

func benchCluster(b *testing.B) *clustertest.Cluster {
	return clustertest.New(b, 3, clustertest.Options{})
}

func BenchmarkApply(b *testing.B) {
	for _, via := range []string{"leader", "follower"} {
		b.Run(via, func(b *testing.B) {
			c := benchCluster(b)
			n := c.Leader().Node
			if via == "follower" {
				n = c.Followers()[0].Node
			}
			var i atomic.Int64
			b.SetParallelism(benchPar)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := fmt.Sprintf("/bench/%d", i.Add(1))
					if _, err := n.Apply(context.Background(), putTxn(k, "v")); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkReadIndex(b *testing.B) {
	for _, via := range []string{"leader", "follower"} {
		b.Run(via, func(b *testing.B) {
			c := benchCluster(b)
			n := c.Leader().Node
			if via == "follower" {
				n = c.Followers()[0].Node
			}
			b.SetParallelism(benchPar)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := n.ReadIndex(context.Background()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
