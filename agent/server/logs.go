package server

import (
	"context"
	"errors"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"flotilla/agent/logs"
	"flotilla/agent/runtime"
)

// logRequest is the query of /containerLogs, as the kubelet reads it.
type logRequest struct {
	opts     logs.ReadOptions
	previous bool
}

// parseLogQuery reads the kubelet's log parameters. The API validates
// them as kube-apiserver does; this repeats the checks that keep a direct
// caller from asking for nonsense.
func parseLogQuery(q url.Values, now time.Time) (logRequest, error) {
	lr := logRequest{opts: logs.ReadOptions{TailLines: -1}}
	boolParam := func(name string) (bool, error) {
		v := q.Get(name)
		if v == "" {
			return false, nil
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, badRequest("%s: invalid boolean %q", name, v)
		}
		return b, nil
	}
	intParam := func(name string, min int64) (int64, bool, error) {
		v := q.Get(name)
		if v == "" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, false, badRequest("%s: invalid integer %q", name, v)
		}
		if n < min {
			return 0, false, badRequest("%s: must be greater than or equal to %d", name, min)
		}
		return n, true, nil
	}
	var err error
	if lr.opts.Follow, err = boolParam("follow"); err != nil {
		return lr, err
	}
	if lr.opts.Timestamps, err = boolParam("timestamps"); err != nil {
		return lr, err
	}
	if lr.previous, err = boolParam("previous"); err != nil {
		return lr, err
	}
	if n, ok, err := intParam("tailLines", 0); err != nil {
		return lr, err
	} else if ok {
		lr.opts.TailLines = n
	}
	if n, _, err := intParam("limitBytes", 1); err != nil {
		return lr, err
	} else {
		lr.opts.LimitBytes = n
	}
	secs, hasSecs, err := intParam("sinceSeconds", 1)
	if err != nil {
		return lr, err
	}
	if hasSecs {
		lr.opts.Since = now.Add(-time.Duration(secs) * time.Second)
	}
	if v := q.Get("sinceTime"); v != "" {
		if hasSecs {
			return lr, badRequest("at most one of sinceTime or sinceSeconds may be specified")
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return lr, badRequest("sinceTime: invalid RFC 3339 time %q", v)
		}
		lr.opts.Since = t
	}
	return lr, nil
}

// serveLogs streams one container's log. The current container is the
// newest attempt, the previous one the attempt before it (kubelet's
// `--previous`). A follow ends when the container has exited and its last
// lines are out.
func (s *server) serveLogs(w http.ResponseWriter, r *http.Request) error {
	ns, pod, name := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	lr, err := parseLogQuery(r.URL.Query(), time.Now())
	if err != nil {
		return err
	}
	ctx := r.Context()
	attempts, err := s.containerAttempts(ctx, ns, pod, "", name)
	if err != nil {
		return err
	}
	var c runtime.Container
	switch {
	case lr.previous && len(attempts) < 2:
		return badRequest("previous terminated container %q in pod %q not found", name, pod)
	case lr.previous:
		c = attempts[1]
	case len(attempts) == 0:
		return badRequest("container %q in pod %q is waiting to start: ContainerCreating", name, pod)
	default:
		c = attempts[0]
	}
	if c.LogPath == "" {
		return badRequest("container %q in pod %q has no log", name, pod)
	}
	lr.opts.Done = s.exitedFunc(ctx, c)
	out := &logWriter{w: w}
	if lr.opts.Follow {
		// Answer at once: a follow of a quiet container must not leave the
		// client (and the API in between) waiting for headers.
		out.start()
		out.Flush()
	}
	err = logs.Read(ctx, c.LogPath, lr.opts, out)
	switch {
	case err == nil, errors.Is(err, context.Canceled):
	case errors.Is(err, fs.ErrNotExist) && !out.started:
		// A container that never started wrote no log: an empty one.
	case !out.started:
		return err
	default:
		// Mid-stream the status line is gone; the client sees the body end.
		s.log.Warn("log stream ended early", "pod", ns+"/"+pod, "container", name, "err", err)
	}
	out.start()
	return nil
}

// exitedFunc is logs.ReadOptions.Done for container c: true once it is no
// longer running (or gone). It asks the runtime at most every 250ms; the
// reader polls it much more often.
func (s *server) exitedFunc(ctx context.Context, c runtime.Container) func() bool {
	if c.State == runtime.StateExited {
		return func() bool { return true }
	}
	var (
		mu     sync.Mutex
		last   time.Time
		exited bool
	)
	return func() bool {
		mu.Lock()
		defer mu.Unlock()
		if exited || time.Since(last) < 250*time.Millisecond {
			return exited
		}
		last = time.Now()
		st, err := s.rt.ContainerStatus(ctx, c.ID)
		switch {
		case errors.Is(err, runtime.ErrNotFound):
			exited = true
		case err != nil:
			// The runtime is unreachable: keep following, the read ends
			// with the client or when the runtime answers again.
		default:
			exited = st.State == runtime.StateExited
		}
		return exited
	}
}

// logWriter sends the 200 and its headers on the first byte, so a read
// that fails before writing anything can still answer with an error.
type logWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *logWriter) start() {
	if l.started {
		return
	}
	l.started = true
	h := l.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	l.w.WriteHeader(http.StatusOK)
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.start()
	return l.w.Write(p)
}

// Flush is called by logs.Read whenever a follow has caught up.
func (l *logWriter) Flush() {
	if l.started {
		_ = http.NewResponseController(l.w).Flush()
	}
}
