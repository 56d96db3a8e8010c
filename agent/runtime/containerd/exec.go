package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"

	"flotilla/agent/runtime"
)

// ErrNotRunning is returned by Exec for a container whose process is not
// running.
var ErrNotRunning = errors.New("container is not running")

// execIODrain bounds the wait for an exec'd process's output after it
// exits: a background child it left holding stdout must not hang Exec.
const execIODrain = 2 * time.Second

// Exec runs opts.Cmd in the running container id, with the container's
// environment, user and working directory, and returns its exit code. A
// command that cannot be started is an error. When ctx ends the process is
// killed.
func (r *Runtime) Exec(ctx context.Context, id string, opts runtime.ExecOptions) (int, error) {
	if len(opts.Cmd) == 0 {
		return -1, fmt.Errorf("exec in %s: %w: empty command", id, ErrInvalidSpec)
	}
	c, err := r.conn(ctx)
	if err != nil {
		return -1, err
	}
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", id, mapErr(err))
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return -1, fmt.Errorf("exec in %s: %w", id, ErrNotRunning)
		}
		return -1, fmt.Errorf("exec in %s: %w", id, mapErr(err))
	}
	st, err := task.Status(ctx)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", id, mapErr(err))
	}
	if st.Status != containerd.Running {
		return -1, fmt.Errorf("exec in %s: task is %s: %w", id, st.Status, ErrNotRunning)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: read spec: %w", id, mapErr(err))
	}
	pspec := *spec.Process
	pspec.Args = opts.Cmd
	pspec.Env = append(append([]string(nil), spec.Process.Env...), opts.Env...)
	pspec.Terminal = opts.TTY
	pspec.ConsoleSize = nil

	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil && !opts.TTY {
		stderr = io.Discard
	}
	var stdin *eofReader
	var stdinR io.Reader
	if opts.Stdin != nil {
		stdin = &eofReader{r: opts.Stdin, eof: make(chan struct{})}
		stdinR = stdin
	}
	ioOpts := []cio.Opt{cio.WithStreams(stdinR, stdout, stderr)}
	if opts.TTY {
		ioOpts = append(ioOpts, cio.WithTerminal)
	}

	execID := newExecID()
	proc, err := task.Exec(ctx, execID, &pspec, cio.NewCreator(ioOpts...))
	if err != nil {
		return -1, fmt.Errorf("exec %q in %s: %w", opts.Cmd[0], id, mapErr(err))
	}
	// Everything below ends with the process deleted, whatever ctx does.
	cleanupCtx := context.WithoutCancel(ctx)
	defer func() {
		if _, err := proc.Delete(cleanupCtx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			r.log.Warn("delete exec process", "container", id, "exec", execID, "err", err)
		}
	}()

	exitC, err := proc.Wait(cleanupCtx)
	if err != nil {
		closeIO(proc)
		return -1, fmt.Errorf("exec %q in %s: wait: %w", opts.Cmd[0], id, mapErr(err))
	}
	if err := proc.Start(ctx); err != nil {
		closeIO(proc)
		return -1, fmt.Errorf("exec %q in %s: %s: %w", opts.Cmd[0], id, startErrorMessage(err), mapErr(err))
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(done); wg.Wait() }()
	if stdin != nil {
		// The process sees EOF on stdin only when the shim closes its side.
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-stdin.eof:
				if err := proc.CloseIO(cleanupCtx, containerd.WithStdinCloser); err != nil && !errdefs.IsNotFound(err) {
					r.log.Debug("close exec stdin", "exec", execID, "err", err)
				}
			case <-done:
			}
		}()
	}
	if opts.Resize != nil && opts.TTY {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case sz, ok := <-opts.Resize:
					if !ok {
						return
					}
					if err := proc.Resize(cleanupCtx, uint32(sz.Width), uint32(sz.Height)); err != nil {
						r.log.Debug("resize exec terminal", "exec", execID, "err", err)
					}
				case <-done:
					return
				}
			}
		}()
	}

	var es containerd.ExitStatus
	select {
	case es = <-exitC:
	case <-ctx.Done():
		_ = proc.Kill(cleanupCtx, syscall.SIGKILL)
		<-exitC
		closeIO(proc)
		return -1, fmt.Errorf("exec %q in %s: %w", opts.Cmd[0], id, ctx.Err())
	}
	// Let the output reach the caller's writers before returning.
	drained := make(chan struct{})
	go func() { proc.IO().Wait(); close(drained) }()
	t := time.NewTimer(execIODrain)
	select {
	case <-drained:
	case <-t.C:
		r.log.Debug("exec output still open after exit; closing it", "exec", execID)
	}
	t.Stop()
	closeIO(proc)
	if err := es.Error(); err != nil {
		return -1, fmt.Errorf("exec %q in %s: %w", opts.Cmd[0], id, mapErr(err))
	}
	return int(es.ExitCode()), nil
}

// closeIO stops copying and closes the client's ends of the fifos, so
// proc.Delete does not wait on output nobody will finish.
func closeIO(p containerd.Process) {
	if pio := p.IO(); pio != nil {
		pio.Cancel()
		pio.Close()
	}
}

func newExecID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}

// eofReader signals when the caller's stdin is exhausted.
type eofReader struct {
	r    io.Reader
	once sync.Once
	eof  chan struct{}
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		e.once.Do(func() { close(e.eof) })
	}
	return n, err
}
