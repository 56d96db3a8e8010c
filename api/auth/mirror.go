package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"flotilla/fsm"
)

// mirror is an in-memory copy of one key prefix of the local FSM.
type mirror interface {
	// load replaces everything with a list taken at rev.
	load(kvs []*fsm.KeyValue, rev uint64)
	// apply applies a non-empty batch of events, in revision order.
	apply(evs []fsm.Event)
}

// relistBackoff spaces out attempts when a list or watch cannot start.
const relistBackoff = 100 * time.Millisecond

// startMirror loads m from a list of prefix before it returns, then keeps it
// current from a watch that starts at the list's revision, so no change is
// missed between the two. When the watch ends (the store was restored from
// a snapshot, or the watcher fell behind) it lists again. It stops with ctx.
func startMirror(ctx context.Context, st *fsm.Store, prefix string, m mirror, log *slog.Logger, wg *sync.WaitGroup) error {
	w, err := loadAndWatch(st, prefix, m)
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			follow(ctx, w, m, log)
			if ctx.Err() != nil {
				return
			}
			for {
				if w, err = loadAndWatch(st, prefix, m); err == nil {
					break
				}
				log.Warn("list and watch failed; retrying", "prefix", prefix, "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(relistBackoff):
				}
			}
		}
	}()
	return nil
}

func loadAndWatch(st *fsm.Store, prefix string, m mirror) (*fsm.Watcher, error) {
	res, err := st.List(prefix, fsm.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	w, err := st.Watch(prefix, res.Revision)
	if err != nil {
		return nil, fmt.Errorf("watch %s from %d: %w", prefix, res.Revision, err)
	}
	m.load(res.KVs, res.Revision)
	return w, nil
}

// maxBatch bounds one batch so a long burst still publishes as it goes.
const maxBatch = 512

func follow(ctx context.Context, w *fsm.Watcher, m mirror, log *slog.Logger) {
	defer w.Stop()
	batch := make([]fsm.Event, 0, 16)
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events():
			if !ok {
				if err := w.Err(); err != nil && !errors.Is(err, fsm.ErrWatcherStopped) {
					log.Info("watch ended; listing again", "error", err)
				}
				return
			}
			batch = append(batch[:0], ev)
			// Take what is already queued, so a burst (bootstrap writing
			// every default role) is applied and published once.
		drain:
			for len(batch) < maxBatch {
				select {
				case ev, ok := <-w.Events():
					if !ok {
						break drain
					}
					batch = append(batch, ev)
				default:
					break drain
				}
			}
			m.apply(batch)
		}
	}
}
