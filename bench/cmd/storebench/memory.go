package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"flotilla/fsm"
)

// memoryPhase fills a fresh 3-server cluster with o.memKeys keys of
// o.memValueSize bytes, in transactions of o.memBatch puts, then reads the
// RSS of every server from /proc after a settle.
func memoryPhase(ctx context.Context, h *harness, o *options, out io.Writer, log *slog.Logger) error {
	dir, err := h.subdir("memory")
	if err != nil {
		return err
	}
	defer h.removeDir(dir)
	log.Info("memory: starting 3 servers")
	c, err := startFlotilla(ctx, h, o.flotillaBin, dir, o.memConc)
	if err != nil {
		return err
	}
	defer c.stop()
	client := c.client
	leader, err := c.leader(ctx, 10*time.Second)
	if err != nil {
		return err
	}
	before := rssAll(c)

	// Distinct values: windows into one random buffer.
	pool := randomValue(1 << 20)
	valueOf := func(i int) []byte {
		off := (i * 7919) % (len(pool) - o.memValueSize)
		return pool[off : off+o.memValueSize]
	}
	txns := (o.memKeys + o.memBatch - 1) / o.memBatch
	var next atomic.Int64
	var lastRev atomic.Uint64
	errs := make(chan error, o.memConc)
	log.Info("memory: writing", "keys", o.memKeys, "value", o.memValueSize, "batch", o.memBatch, "txns", txns, "leader", leader.name)
	start := time.Now()
	var wg sync.WaitGroup
	for range o.memConc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t := int(next.Add(1) - 1)
				if t >= txns {
					return
				}
				txn := &fsm.Txn{}
				for k := t * o.memBatch; k < min((t+1)*o.memBatch, o.memKeys); k++ {
					txn.Ops = append(txn.Ops, fsm.Op{Type: fsm.OpPut,
						Key: fmt.Sprintf("/core/configmaps/bench-memory/cm-%07d", k), Value: valueOf(k)})
				}
				body, err := fsm.EncodeTxn(txn)
				if err != nil {
					errs <- err
					return
				}
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				res, err := client.apply(wctx, leader.api(), body)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("txn %d: %w", t, err)
					return
				}
				for {
					cur := lastRev.Load()
					if res.Revision <= cur || lastRev.CompareAndSwap(cur, res.Revision) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("memory load (logs in %s): %w", dir, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	loadTook := time.Since(start)
	log.Info("memory: written", "took", loadTook.Round(time.Millisecond), "revision", lastRev.Load())
	afterLoad := rssAll(c)

	// Every server has applied the last write (and one more) before we
	// read memory.
	if _, err := c.settle(ctx, valueOf(0), "memory-settle"); err != nil {
		return err
	}
	log.Info("memory: settling", "for", o.memSettle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.memSettle):
	}
	leader, _ = c.leader(ctx, 10*time.Second)
	settled := rssAll(c)

	raw := float64(o.memKeys) * float64(o.memValueSize) / (1 << 20)
	fmt.Fprintf(out, "### Memory: %d keys of %d B (%.0f MiB of values), %d puts per transaction\n\n", o.memKeys, o.memValueSize, raw, o.memBatch)
	fmt.Fprintf(out, "Fresh 3-server cluster; %d transactions from %d concurrent writers to the leader took %s (%.0f keys/s). RSS is VmRSS from /proc/PID/status: before the load, right after it, and after every server applied the last write plus a %s settle; anon / file are RssAnon / RssFile (file = mapped files such as raft.db, counted in RSS); HWM is VmHWM (peak). Go heap numbers are the server's own /metrics after the settle.\n\n",
		txns, o.memConc, loadTook.Round(time.Millisecond), float64(o.memKeys)/loadTook.Seconds(), o.memSettle)
	fmt.Fprintln(out, "| server | role | RSS before MiB | RSS after load MiB | RSS settled MiB | of which anon / file MiB | HWM MiB | Go heap in use MiB | Go sys MiB | data dir MiB |")
	fmt.Fprintln(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	worst := int64(0)
	for _, s := range c.servers {
		role := "follower"
		if leader == s {
			role = "leader"
		}
		heap, sys := "?", "?"
		if m, err := client.metrics(ctx, s.api()); err == nil {
			if v, ok := m["go_memstats_heap_inuse_bytes"]; ok {
				heap = mib(int64(v))
			}
			if v, ok := m["go_memstats_sys_bytes"]; ok {
				sys = mib(int64(v))
			}
		}
		st := settled[s.name]
		worst = max(worst, st.rss)
		fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %s |\n", s.name, role,
			mib(before[s.name].rss), mib(afterLoad[s.name].rss), mib(st.rss), mib(st.anon), mib(st.file), mib(st.hwm),
			heap, sys, mib(dirSize(s.dataDir)))
	}
	fmt.Fprintf(out, "\nGoal ≤ 600 MiB RSS: %s (largest settled RSS %s MiB).\n\n", verdict(worst <= 600<<20), mib(worst))
	return nil
}

func rssAll(c *flotillaCluster) map[string]memInfo {
	m := map[string]memInfo{}
	for _, s := range c.servers {
		if !s.up() {
			continue
		}
		if mi, err := readMem(s.proc.pid()); err == nil {
			m[s.name] = mi
		}
	}
	return m
}

func mib(b int64) string { return fmt.Sprintf("%.0f", float64(b)/(1<<20)) }

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// metrics reads the unlabelled samples of a server's /metrics.
func (c *applyClient) metrics(ctx context.Context, addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics on %s: %s", addr, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			m[name] = f
		}
	}
	return m, sc.Err()
}
