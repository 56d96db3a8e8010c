package containerd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/cio"

	"flotilla/agent/logs"
	"flotilla/agent/runtime"
)

// A container's output reaches its log through FIFOs, as with
// containerd's CRI plugin: the shim writes the container's stdout and
// stderr into <FIFODir>/<container ID>/{stdout,stderr} and a copier in
// this process reads them into the CRI log file (package agent/logs).

const (
	fifoStdout = "stdout"
	fifoStderr = "stderr"
	// drainTimeout bounds the wait for a copier to reach EOF once its
	// task has stopped. The shim closes its ends when the container's
	// processes are gone and their output copied, at the latest when the
	// shim exits, so this is only hit when something is stuck; then the
	// rest of the output is dropped.
	drainTimeout = 2 * time.Second
)

// errCopying is returned by addCopier when the task's output already has
// a reader.
var errCopying = errors.New("output already copied")

// copier copies one task's FIFOs into the container's log file.
type copier struct {
	id    string
	dir   string // the FIFO directory
	w     *logs.Writer
	files []streamFile
	// ctx is cancelled to stop reading at once: on Close (the agent
	// restarting; the data stays in the FIFOs for the next one) or when a
	// deleted task's output does not end within drainTimeout.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the copier has ended and let go of everything
}

type streamFile struct {
	stream string
	f      *os.File
}

// copiers is the Runtime's set of running copiers, at most one per
// container: a FIFO read by two would have its lines split between them.
type copiers struct {
	mu     sync.Mutex
	m      map[string]*copier
	closed bool
	wg     sync.WaitGroup // one per registered copier
}

// fifoIO is the cio.IO NewTask gets: just the paths. The copier owns the
// open ends, so the Cancel, Wait and Close that NewTask and task.Delete
// call on it have nothing to do.
type fifoIO struct{ cfg cio.Config }

func (f fifoIO) Config() cio.Config { return f.cfg }
func (fifoIO) Cancel()              {}
func (fifoIO) Wait()                {}
func (fifoIO) Close() error         { return nil }

// defaultFIFODir is /run/flotilla/fifo/<namespace> for root (a tmpfs,
// emptied at boot with the tasks), else under the OS temp dir.
func defaultFIFODir(namespace string) string {
	if os.Geteuid() == 0 {
		return filepath.Join("/run/flotilla/fifo", namespace)
	}
	return filepath.Join(os.TempDir(), "flotilla-fifo", namespace)
}

func (r *Runtime) fifoDir(id string) string { return filepath.Join(r.cfg.FIFODir, id) }

// newTaskOutput makes fresh FIFOs for a task about to be created and
// registers a copier on them, not yet running: call runCopier once the
// task exists (the shim then holds the FIFOs' write ends, so reading
// cannot meet an EOF before the container has begun), or abortCopier.
// Our read ends are opened first because the shim's open for writing
// waits for a reader.
func (r *Runtime) newTaskOutput(id, logPath string, tty bool) (*copier, cio.Creator, error) {
	dir := r.fifoDir(id)
	if err := os.RemoveAll(dir); err != nil {
		return nil, nil, fmt.Errorf("clear fifo dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("make fifo dir: %w", err)
	}
	cfg := cio.Config{Terminal: tty, Stdout: filepath.Join(dir, fifoStdout)}
	if !tty { // a terminal has one stream
		cfg.Stderr = filepath.Join(dir, fifoStderr)
	}
	for _, p := range []string{cfg.Stdout, cfg.Stderr} {
		if p == "" {
			continue
		}
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, nil, fmt.Errorf("make fifo: %w", err)
		}
	}
	cp, err := r.addCopier(id, dir, logPath, cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return cp, func(string) (cio.IO, error) { return fifoIO{cfg}, nil }, nil
}

// addCopier opens the read ends of the FIFOs in cfg (which must exist and
// be FIFOs) and the log writer, and registers a copier that is not yet
// running. It fails with errCopying if the container has one.
func (r *Runtime) addCopier(id, dir, logPath string, cfg cio.Config) (_ *copier, err error) {
	cp := &copier{id: id, dir: dir, done: make(chan struct{})}
	defer func() {
		if err != nil {
			for _, s := range cp.files {
				s.f.Close()
			}
			if cp.w != nil {
				cp.w.Close()
			}
		}
	}()
	for _, s := range []struct{ stream, path string }{{logs.Stdout, cfg.Stdout}, {logs.Stderr, cfg.Stderr}} {
		if s.path == "" || (s.stream == logs.Stderr && cfg.Terminal) {
			continue
		}
		// A task made before FIFOs were used has a log URI here.
		if st, err := os.Lstat(s.path); err != nil {
			return nil, fmt.Errorf("open %s fifo: %w", s.stream, err)
		} else if st.Mode().Type() != fs.ModeNamedPipe {
			return nil, fmt.Errorf("open %s fifo %s: not a fifo", s.stream, s.path)
		}
		// Non-blocking, so the open does not wait for a writer and Go's
		// poller serves the reads (with deadlines: the copier's timed
		// flush and its prompt stop rely on them).
		f, err := os.OpenFile(s.path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s fifo: %w", s.stream, err)
		}
		cp.files = append(cp.files, streamFile{s.stream, f})
	}
	if len(cp.files) == 0 {
		return nil, errors.New("open fifos: no output stream")
	}
	if cp.w, err = logs.NewWriter(logPath, r.cfg.LogRotate); err != nil {
		return nil, err
	}
	cp.ctx, cp.cancel = context.WithCancel(context.Background())
	r.out.mu.Lock()
	defer r.out.mu.Unlock()
	switch {
	case r.out.closed:
		cp.cancel()
		return nil, errors.New("runtime is closed")
	case r.out.m[id] != nil:
		cp.cancel()
		return nil, errCopying
	}
	if r.out.m == nil {
		r.out.m = map[string]*copier{}
	}
	r.out.m[id] = cp
	r.out.wg.Add(1)
	return cp, nil
}

// runCopier starts copying. When every stream has reached EOF (the task's
// output is over) or the copier is stopped, it closes its files and the
// log, and leaves the set; at EOF it also removes the FIFO directory,
// which nothing will open again.
func (r *Runtime) runCopier(cp *copier) {
	go func() {
		var wg sync.WaitGroup
		for _, s := range cp.files[1:] {
			wg.Go(func() { r.copyStream(cp, s) })
		}
		r.copyStream(cp, cp.files[0])
		wg.Wait()
		if err := cp.w.Close(); err != nil {
			r.log.Warn("container log: records dropped", "container", cp.id, "err", err)
		}
		if cp.ctx.Err() == nil {
			r.removeFIFODir(cp.id, cp.dir)
		}
		r.releaseCopier(cp)
	}()
}

func (r *Runtime) copyStream(cp *copier, s streamFile) {
	if err := cp.w.Copy(cp.ctx, s.stream, s.f); err != nil {
		r.log.Warn("container output", "container", cp.id, "stream", s.stream, "err", err)
	}
	s.f.Close()
}

// abortCopier undoes newTaskOutput for a task that was not made.
func (r *Runtime) abortCopier(cp *copier) {
	cp.cancel()
	for _, s := range cp.files {
		s.f.Close()
	}
	cp.w.Close()
	r.removeFIFODir(cp.id, cp.dir)
	r.releaseCopier(cp)
}

func (r *Runtime) releaseCopier(cp *copier) {
	cp.cancel()
	r.out.mu.Lock()
	if r.out.m[cp.id] == cp {
		delete(r.out.m, cp.id)
	}
	r.out.mu.Unlock()
	close(cp.done)
	r.out.wg.Done()
}

// endOutput is called once a container's task has stopped or is deleted:
// it waits (at most drainTimeout) for the copier to read the FIFOs to EOF,
// so all the output is in the log when the exit is reported, then stops
// it and removes the FIFOs. EOF comes when the shim closes its ends, which
// it does once the container's processes are gone and their output copied.
func (r *Runtime) endOutput(id string) {
	r.out.mu.Lock()
	cp := r.out.m[id]
	r.out.mu.Unlock()
	if cp != nil {
		t := time.NewTimer(drainTimeout)
		select {
		case <-cp.done:
		case <-t.C:
			r.log.Warn("container output did not end with its task; dropping the rest", "container", id)
			cp.cancel()
			<-cp.done
		}
		t.Stop()
		r.removeFIFODir(id, cp.dir)
	}
	r.removeFIFODir(id, r.fifoDir(id))
}

// removeFIFODir removes a container's FIFO directory. A directory taken
// from a task's record is removed only if it has our layout (named after
// the container), never anything else.
func (r *Runtime) removeFIFODir(id, dir string) {
	if filepath.Base(dir) != id {
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		r.log.Warn("remove fifo dir", "container", id, "err", err)
	}
}

// closeOutput stops every copier at once without touching the tasks:
// their shims keep the FIFOs open, so the containers' output waits in
// them (a pipe's worth, 64 KiB, before a container's writes block) for
// the next Runtime to read.
func (r *Runtime) closeOutput() {
	r.out.mu.Lock()
	r.out.closed = true
	for _, cp := range r.out.m {
		cp.cancel()
	}
	r.out.mu.Unlock()
	r.out.wg.Wait()
}

// copying reports whether the container's output has a copier.
func (r *Runtime) copying(id string) bool {
	r.out.mu.Lock()
	defer r.out.mu.Unlock()
	return r.out.m[id] != nil
}

// reattach starts a copier for every task of ours whose output has none:
// after the agent restarted, or one that ended early. Stopped tasks are
// included, so what their shims still hold is read before they are
// deleted. Tasks whose output is not a FIFO (no log path: /dev/null) are
// left alone.
func (r *Runtime) reattach(ctx context.Context, c *containerd.Client) error {
	resp, err := c.TaskService().List(ctx, &tasks.ListTasksRequest{})
	if err != nil {
		return fmt.Errorf("reattach output: list tasks: %w", mapErr(err))
	}
	var infos map[string]string // container ID → log path
	for _, p := range resp.Tasks {
		if p.Stdout == "" || r.copying(p.ID) {
			continue
		}
		if infos == nil {
			list, err := c.ContainerService().List(ctx, fmt.Sprintf("labels.%q", runtime.LabelPodUID))
			if err != nil {
				return fmt.Errorf("reattach output: list containers: %w", mapErr(err))
			}
			infos = make(map[string]string, len(list))
			for _, info := range list {
				infos[info.ID] = info.Labels[labelLogPath]
			}
		}
		logPath := infos[p.ID]
		if logPath == "" {
			continue // not ours, or not logged
		}
		cfg := cio.Config{Terminal: p.Terminal, Stdout: p.Stdout, Stderr: p.Stderr}
		cp, err := r.addCopier(p.ID, filepath.Dir(p.Stdout), logPath, cfg)
		if err != nil {
			if !errors.Is(err, errCopying) {
				r.log.Debug("reattach output", "container", p.ID, "err", err)
			}
			continue
		}
		r.runCopier(cp)
		r.log.Info("reattached container output", "container", p.ID, "state", p.Status.String())
	}
	return nil
}
