package pods

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/record"
)

// closingSink is the event broadcaster's sink with an end: once closed it
// writes nothing, and close waits for the writes in flight. The
// broadcaster's Shutdown does not wait for its goroutine, so without this
// an event write could outlive Run (and a test's API server).
type closingSink struct {
	inner  record.EventSink
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// errSinkClosed drops an event written after close; an AlreadyExists
// error is what the broadcaster drops without retrying.
var errSinkClosed = apierrors.NewAlreadyExists(schema.GroupResource{Resource: "events"}, "(event recorder stopped)")

func (s *closingSink) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// close stops writes and waits for those in flight, at most timeout.
func (s *closingSink) close(timeout time.Duration) {
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

func (s *closingSink) Create(e *corev1.Event) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errSinkClosed
	}
	defer s.wg.Done()
	return s.inner.Create(e)
}

func (s *closingSink) Update(e *corev1.Event) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errSinkClosed
	}
	defer s.wg.Done()
	return s.inner.Update(e)
}

func (s *closingSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	if !s.enter() {
		return nil, errSinkClosed
	}
	defer s.wg.Done()
	return s.inner.Patch(e, data)
}
