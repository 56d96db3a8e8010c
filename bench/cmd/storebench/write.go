package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// writePhase runs, for each concurrency, the same closed-loop write load
// against a fresh etcd cluster and a fresh Flotilla cluster (fresh data dirs
// on the same disk), then prints both and their ratio.
func writePhase(ctx context.Context, h *harness, o *options, etcdBin string, out io.Writer, log *slog.Logger) error {
	value := randomValue(o.valueSize)
	var results []loadResult
	for _, conc := range o.conc {
		if etcdBin != "" {
			r, err := etcdWriteRun(ctx, h, o, etcdBin, conc, value, log)
			if err != nil {
				return err
			}
			results = append(results, r)
		}
		if o.systems["flotilla"] {
			r, err := flotillaWriteRun(ctx, h, o, conc, value, log)
			if err != nil {
				return err
			}
			results = append(results, r)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	opDesc := map[string]string{
		"put":    "Flotilla: a transaction of one put, no compare; etcd: `Put`",
		"create": "Flotilla: one put guarded by `CompareAbsent`; etcd: `Txn(If(CreateRevision(key) = 0), Then(Put))`",
	}[o.op]
	fmt.Fprintf(out, "### Writes: %d B values, distinct keys, %s warm-up then %s measured per run\n\n", o.valueSize, o.warmup, o.duration)
	fmt.Fprintf(out, "Each run on a fresh 3-server cluster, writes sent to the leader. %s. etcd client: %d gRPC connections (capped by concurrency); Flotilla client: one keep-alive HTTPS/1.1 connection per writer to `/internal/v1/apply`, with a server certificate.\n\n", opDesc, o.etcdConns)
	fmt.Fprintln(out, "| system | concurrency | writes/s | p50 ms | p99 ms | max ms | errors | load avg before → after |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range results {
		fmt.Fprintf(out, "| %s | %d | %.0f | %s | %s | %s | %d | %.2f → %.2f |\n", r.System, r.Concurrency, r.throughput(),
			ms(r.p(0.50)), ms(r.p(0.99)), ms(r.p(1)), r.Errors, r.LoadStart, r.LoadEnd)
	}
	fmt.Fprintln(out)
	for _, r := range results {
		if r.FirstErr != nil {
			fmt.Fprintf(out, "- %s at %d: first error: %v\n", r.System, r.Concurrency, r.FirstErr)
		}
	}

	if etcdBin != "" && o.systems["flotilla"] {
		fmt.Fprintln(out, "\n| concurrency | Flotilla / etcd throughput | Flotilla p99 / etcd p99 |")
		fmt.Fprintln(out, "|---:|---:|---:|")
		for i := 0; i+1 < len(results); i += 2 {
			e, f := results[i], results[i+1]
			fmt.Fprintf(out, "| %d | %.2f× | %.2f× |\n", f.Concurrency, f.throughput()/e.throughput(),
				float64(f.p(0.99))/float64(e.p(0.99)))
		}
		e, f := results[len(results)-2], results[len(results)-1]
		fmt.Fprintf(out, "\nGoal at concurrency %d: Flotilla ≥ 1.5× etcd (%.2f×: %s), p99 ≤ etcd's (%s vs %s ms: %s), ≥ 5,000 writes/s (%.0f: %s).\n",
			f.Concurrency, f.throughput()/e.throughput(), verdict(f.throughput() >= 1.5*e.throughput()),
			ms(f.p(0.99)), ms(e.p(0.99)), verdict(f.p(0.99) <= e.p(0.99)),
			f.throughput(), verdict(f.throughput() >= 5000))
	}
	fmt.Fprintln(out)
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func etcdWriteRun(ctx context.Context, h *harness, o *options, bin string, conc int, value []byte, log *slog.Logger) (loadResult, error) {
	dir, err := h.subdir(fmt.Sprintf("etcd-c%d", conc))
	if err != nil {
		return loadResult{}, err
	}
	defer h.removeDir(dir)
	log.Info("etcd: starting 3 members", "concurrency", conc)
	c, err := startEtcd(ctx, h, bin, dir)
	if err != nil {
		return loadResult{}, err
	}
	defer c.stop()
	leader, err := c.leader(ctx, 10*time.Second)
	if err != nil {
		return loadResult{}, err
	}
	write, closeClients, err := etcdWriter(leader, min(o.etcdConns, conc), o.op, fmt.Sprintf("c%d", conc), value)
	if err != nil {
		return loadResult{}, err
	}
	defer closeClients()
	log.Info("etcd: writing", "leader", leader.name, "concurrency", conc, "for", o.warmup+o.duration)
	r := runLoad(ctx, "etcd", conc, o.warmup, o.duration, o.opTimeout, write)
	log.Info("etcd: done", "concurrency", conc, "writes/s", fmt.Sprintf("%.0f", r.throughput()),
		"p50", r.p(0.5), "p99", r.p(0.99), "errors", r.Errors)
	return r, ctx.Err()
}

func flotillaWriteRun(ctx context.Context, h *harness, o *options, conc int, value []byte, log *slog.Logger) (loadResult, error) {
	dir, err := h.subdir(fmt.Sprintf("flotilla-c%d", conc))
	if err != nil {
		return loadResult{}, err
	}
	defer h.removeDir(dir)
	log.Info("flotilla: starting 3 servers", "concurrency", conc)
	c, err := startFlotilla(ctx, h, o.flotillaBin, dir, conc)
	if err != nil {
		return loadResult{}, err
	}
	defer c.stop()
	leader, err := c.leader(ctx, 10*time.Second)
	if err != nil {
		return loadResult{}, err
	}
	write := flotillaWriter(c.client, leader.api(), o.op, fmt.Sprintf("c%d", conc), value)
	log.Info("flotilla: writing", "leader", leader.name, "concurrency", conc, "for", o.warmup+o.duration)
	r := runLoad(ctx, "flotilla", conc, o.warmup, o.duration, o.opTimeout, write)
	log.Info("flotilla: done", "concurrency", conc, "writes/s", fmt.Sprintf("%.0f", r.throughput()),
		"p50", r.p(0.5), "p99", r.p(0.99), "errors", r.Errors)
	return r, ctx.Err()
}
