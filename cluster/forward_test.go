package cluster_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"flotilla/cluster"
	"flotilla/cluster/clustertest"
	"flotilla/cluster/faultnet"
)

// TestForwardToCutOffLeader sends a write through a follower to a leader
// the network has just lost. The write must end, applied or failed with a
// clear error, soon after the follower learns of the new leader, instead
// of waiting on the old leader until the caller gives up.
func TestForwardToCutOffLeader(t *testing.T) {
	// How long after the follower sees the new leader the write may take.
	const slack = 2 * time.Second
	tests := []struct {
		name string
		cut  func(h *faultnet.Host)
	}{
		{"isolated", func(h *faultnet.Host) { h.Isolate() }},
		{"paused", func(h *faultnet.Host) { h.Pause() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fnet := faultnet.New()
			hosts := make([]*faultnet.Host, 3)
			c := newTestCluster(t, 3, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
				hosts[i] = fnet.NewHost(cfg.Name)
				cfg.Network = hosts[i]
				cfg.BindAddr, cfg.AdvertiseAddr = hosts[i].IP(), hosts[i].IP()
			}})
			// Registered after the cluster, so it runs before the shutdown.
			t.Cleanup(fnet.HealAll)

			old := c.Leader()
			f := c.Followers()[0]
			// A first forward leaves a kept-alive connection to the leader,
			// which the write under test reuses: across a cut link its bytes
			// go out and no answer comes back.
			mustPut(t, f.Node, "/test/fwd/warm", "1")

			tt.cut(hosts[old.Index])
			var newLeaderAt atomic.Pointer[time.Time]
			watchCtx, stopWatch := context.WithCancel(context.Background())
			defer stopWatch()
			go func() {
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					if id, addr := f.Node.Leader(); id != "" && id != old.Name && addr != "" {
						now := time.Now()
						newLeaderAt.Store(&now)
						return
					}
					select {
					case <-tick.C:
					case <-watchCtx.Done():
						return
					}
				}
			}()

			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			start := time.Now()
			res, err := f.Node.Apply(ctx, putTxn("/test/fwd/k", "v"))
			done := time.Now()
			stopWatch()
			t.Logf("apply took %s: res=%+v err=%v", done.Sub(start).Round(time.Millisecond), res, err)

			switch {
			case err == nil:
				if !res.Succeeded {
					t.Errorf("unconditional put not succeeded: %+v", res)
				}
			case errors.Is(err, cluster.ErrOutcomeUnknown) && strings.Contains(err.Error(), "leader changed"):
				// The request had reached the old leader's socket: it must
				// not be retried, and the caller is told why.
			default:
				t.Fatalf("apply: %v, want success or outcome unknown because the leader changed", err)
			}
			if at := newLeaderAt.Load(); at != nil && done.Sub(*at) > slack {
				t.Errorf("apply ended %s after %s learned of the new leader, want within %s",
					done.Sub(*at).Round(time.Millisecond), f.Name, slack)
			}

			// The follower's next write goes to the new leader.
			mustPut(t, f.Node, "/test/fwd/after", "2")
			if v, ok := linearGet(t, f.Node, "/test/fwd/after"); !ok || v != "2" {
				t.Errorf("read after the election = %q, %v", v, ok)
			}
		})
	}
}
