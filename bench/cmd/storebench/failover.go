package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// failoverPhase kills -9 the leader of a 3-server cluster o.kills times and
// measures the time from the kill to the first acknowledged write. After each
// kill the killed server restarts on its data dir, so the cluster is three
// again before the next kill.
func failoverPhase(ctx context.Context, h *harness, o *options, out io.Writer, log *slog.Logger) error {
	if o.kills == 0 {
		return nil
	}
	dir, err := h.subdir("failover")
	if err != nil {
		return err
	}
	defer h.removeDir(dir)
	log.Info("failover: starting 3 servers")
	c, err := startFlotilla(ctx, h, o.flotillaBin, dir, 64)
	if err != nil {
		return err
	}
	defer c.stop()
	value := randomValue(1024)

	type kill struct {
		leader    string
		took      time.Duration
		newLeader string
	}
	var kills []kill
	for i := range o.kills {
		// All three know the leader and have applied a fresh write: the
		// restarted one is back and caught up.
		leader, err := c.settle(ctx, value, fmt.Sprintf("settle%d", i))
		if err != nil {
			return fmt.Errorf("before kill %d: %w (logs in %s)", i+1, err, dir)
		}
		took, err := c.killLeaderUntilWrite(ctx, leader, value, fmt.Sprintf("kill%d", i))
		if err != nil {
			return fmt.Errorf("kill %d of %s: %w (logs in %s)", i+1, leader.name, err, dir)
		}
		nl, _ := c.leader(ctx, 10*time.Second) // voters: the dead one is still one
		k := kill{leader: leader.name, took: took}
		if nl != nil {
			k.newLeader = nl.name
		}
		kills = append(kills, k)
		log.Info("failover", "kill", i+1, "leader", leader.name, "first write after", took, "new leader", k.newLeader)
		leader.killed = false
		if err := c.startServer(leader); err != nil {
			return err
		}
	}

	var d []time.Duration
	var each []string
	for _, k := range kills {
		d = append(d, k.took)
		each = append(each, ms(k.took))
	}
	slices.Sort(d)
	fmt.Fprintf(out, "### Failover: kill -9 of the leader → first acknowledged write, %d kills\n\n", len(kills))
	fmt.Fprintln(out, "3 servers, production timings (the binary's defaults). After each kill the killed server restarts on its data dir and every server has applied a fresh write before the next kill. From the kill on, the client starts a one-key transaction (POST /internal/v1/apply) every 20 ms, alternating between the two survivors (a follower answers 503 not_leader; the new leader commits it), each with a 5 s timeout; the time is from SIGKILL to the first acknowledgement.")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| kills | p50 ms | p99 ms | max ms | min ms |")
	fmt.Fprintln(out, "|---:|---:|---:|---:|---:|")
	fmt.Fprintf(out, "| %d | %s | %s | %s | %s |\n\n", len(d), ms(percentile(d, 0.5)), ms(percentile(d, 0.99)), ms(percentile(d, 1)), ms(percentile(d, 0)))
	fmt.Fprintf(out, "Each kill, ms, in order: %s.\n\n", strings.Join(each, ", "))
	fmt.Fprintf(out, "Goal p99 ≤ 2 s: %s.\n\n", verdict(percentile(d, 0.99) <= 2*time.Second))
	return nil
}

// killLeaderUntilWrite kills -9 the leader and returns the time until the
// first write acknowledged by a survivor.
func (c *flotillaCluster) killLeaderUntilWrite(ctx context.Context, leader *flotillaServer, value []byte, run string) (time.Duration, error) {
	var survivors []*flotillaServer
	for _, s := range c.servers {
		if s != leader && s.up() {
			survivors = append(survivors, s)
		}
	}
	if len(survivors) < 2 {
		return 0, errors.New("fewer than two survivors: the cluster would lose quorum")
	}
	writers := make([]writeFunc, len(survivors))
	for i, s := range survivors {
		writers[i] = flotillaWriter(c.client, s.api(), "put", run, value)
	}

	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	first := make(chan time.Duration, 1)
	var wg sync.WaitGroup
	t0 := time.Now()
	leader.killed = true
	if err := leader.proc.killNow(); err != nil {
		return 0, fmt.Errorf("kill %s: %w", leader.name, err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var took time.Duration
loop:
	for seq := 0; ; seq++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			defer wcancel()
			if writers[seq%len(writers)](wctx, seq%len(writers), seq) == nil {
				select {
				case first <- time.Since(t0):
				default:
				}
			}
		}()
		select {
		case took = <-first:
			break loop
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
	}
	cancel()
	wg.Wait()
	<-leader.proc.done
	if took == 0 {
		return 0, fmt.Errorf("no write acknowledged within 30 s of killing %s", leader.name)
	}
	return took, nil
}
