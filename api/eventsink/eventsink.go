package eventsink

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/record"
)

// Sink is a client-go event broadcaster's EventSink with an end: once
// closed it writes nothing more, and Close waits for the writes in flight.
// The broadcaster's Shutdown does not wait for its recording goroutine, so
// without this an event write could outlive the component that made it
// (and a test's API server).
type Sink struct {
	inner  record.EventSink
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// errSinkClosed drops an event written after close. It is an AlreadyExists
// status error only because that is what the broadcaster drops quietly,
// without retrying.
var errSinkClosed = apierrors.NewAlreadyExists(schema.GroupResource{Resource: "events"}, "(event recorder stopped)")

func (s *Sink) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// New wraps inner.
func New(inner record.EventSink) *Sink { return &Sink{inner: inner} }

// Close stops writes and waits for those in flight, at most timeout: a
// write stuck on an API without a Raft leader must not hold up the end of
// a leadership term or an agent's shutdown.
func (s *Sink) Close(timeout time.Duration) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

func (s *Sink) Create(e *corev1.Event) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errSinkClosed
	}
	defer s.wg.Done()
	return s.inner.Create(e)
}

func (s *Sink) Update(e *corev1.Event) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errSinkClosed
	}
	defer s.wg.Done()
	return s.inner.Update(e)
}

func (s *Sink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errSinkClosed
	}
	defer s.wg.Done()
	return s.inner.Patch(e, data)
}
