package controllers

import (
	"context"
	"log/slog"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// loop is the worker half of a controller: event handlers put keys in
// queue; workers take one key at a time and reconcile it. A key is never
// reconciled by two workers at once (the workqueue guarantees it), a
// failure is retried with per-key exponential backoff, and success forgets
// the key's failures.
type loop[T comparable] struct {
	name  string
	log   *slog.Logger
	queue workqueue.TypedRateLimitingInterface[T]
	sync  func(ctx context.Context, key T) error
}

func newLoop[T comparable](name string, log *slog.Logger, sync func(context.Context, T) error) *loop[T] {
	return &loop[T]{
		name: name,
		log:  log,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[T](),
			workqueue.TypedRateLimitingQueueConfig[T]{Name: name}),
		sync: sync,
	}
}

// run starts workers and blocks until ctx ends and they have returned.
func (l *loop[T]) run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l.next(ctx) {
			}
		}()
	}
	<-ctx.Done()
	l.queue.ShutDown()
	wg.Wait()
}

func (l *loop[T]) next(ctx context.Context) bool {
	key, quit := l.queue.Get()
	if quit {
		return false
	}
	defer l.queue.Done(key)
	err := l.sync(ctx, key)
	switch {
	case err == nil:
		l.queue.Forget(key)
	case ctx.Err() != nil:
		// Leadership lost: the next leader starts over from its caches.
	default:
		lvl := slog.LevelWarn
		if apierrors.IsConflict(err) {
			// A stale cache; the retry reads the newer object.
			lvl = slog.LevelDebug
		}
		l.log.Log(ctx, lvl, "reconcile failed; retrying", "key", key, "retries", l.queue.NumRequeues(key), "err", err)
		l.queue.AddRateLimited(key)
	}
	return true
}

// add enqueues a key.
func (l *loop[T]) add(key T) { l.queue.Add(key) }

// keyOf is the namespace/name key of an informer object or tombstone.
func keyOf(obj any) (string, bool) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	return key, err == nil
}

// enqueueObj is an informer handler that enqueues the object's key.
func (l *loop[T]) enqueueObj(obj any) {
	if key, ok := keyOf(obj); ok {
		if k, ok := any(key).(T); ok {
			l.queue.Add(k)
		}
	}
}
