package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// writeFunc does one write; worker and seq make its key distinct.
type writeFunc func(ctx context.Context, worker, seq int) error

// loadResult is one measured window of a closed-loop load.
type loadResult struct {
	System      string
	Concurrency int
	Duration    time.Duration // measured window
	Ops         int           // writes acknowledged inside the window
	Errors      int           // failed writes inside the window
	FirstErr    error
	Lat         []time.Duration // sorted latencies of the acknowledged writes
	// LoadStart and LoadEnd are the 1-minute load average before and after.
	LoadStart, LoadEnd float64
}

func (r loadResult) throughput() float64       { return float64(r.Ops) / r.Duration.Seconds() }
func (r loadResult) p(q float64) time.Duration { return percentile(r.Lat, q) }

// percentile of a sorted slice (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// runLoad runs conc closed-loop workers for warmup+dur. Only writes that
// complete inside the window [start+warmup, start+warmup+dur] count, for
// throughput and latency alike; the warm-up fills connections, caches and
// Raft pipelines. Each write has opTimeout.
func runLoad(ctx context.Context, system string, conc int, warmup, dur, opTimeout time.Duration, write writeFunc) loadResult {
	loadStart := loadAvg()
	start := time.Now()
	from, to := start.Add(warmup), start.Add(warmup+dur)
	type workerResult struct {
		lat    []time.Duration
		errs   int
		first  error
		firstT time.Time
	}
	res := make([]workerResult, conc)
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &res[w]
			r.lat = make([]time.Duration, 0, 4096)
			for seq := 0; ctx.Err() == nil; seq++ {
				t0 := time.Now()
				if !t0.Before(to) {
					return
				}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				err := write(octx, w, seq)
				cancel()
				t1 := time.Now()
				if t1.Before(from) || t1.After(to) {
					continue
				}
				if err != nil {
					r.errs++
					if r.first == nil {
						r.first, r.firstT = err, t1
					}
					// Don't spin on a dead endpoint.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				r.lat = append(r.lat, t1.Sub(t0))
			}
		}()
	}
	wg.Wait()
	out := loadResult{System: system, Concurrency: conc, Duration: dur, LoadStart: loadStart, LoadEnd: loadAvg()}
	var firstT time.Time
	for _, r := range res {
		out.Lat = append(out.Lat, r.lat...)
		out.Errors += r.errs
		if r.first != nil && (out.FirstErr == nil || r.firstT.Before(firstT)) {
			out.FirstErr, firstT = r.first, r.firstT
		}
	}
	out.Ops = len(out.Lat)
	slices.Sort(out.Lat)
	return out
}

// benchKey is the key of one write: distinct per run, worker and sequence.
func benchKey(run string, worker, seq int) string {
	return fmt.Sprintf("/bench/writes/%s/w%03d-%09d", run, worker, seq)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }
