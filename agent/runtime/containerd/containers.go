package containerd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/errdefs"

	"flotilla/agent/runtime"
)

// Labels this package keeps on a container besides runtime.Label*. The
// exit record is what makes exited containers' status survive restarts.
const (
	labelImage       = "io.flotilla.image"      // the reference as the agent gave it
	labelImageID     = "io.flotilla.image.id"   // config digest at create time
	labelLogPath     = "io.flotilla.log.path"   // read again when a restarted agent reattaches
	labelTTY         = "io.flotilla.tty"        // "true": the task gets a terminal, one output stream
	labelStartedAt   = "io.flotilla.started.at" // RFC 3339, nanoseconds
	labelExitCode    = "io.flotilla.exit.code"
	labelExitAt      = "io.flotilla.exit.at"
	labelExitReason  = "io.flotilla.exit.reason"
	labelExitMessage = "io.flotilla.exit.message"
	labelOOM         = "io.flotilla.oom" // "true" once a TaskOOM event was seen
)

const (
	// startErrorCode is the exit code of a container that could not start,
	// as the kubelet reports it.
	startErrorCode = 128
	// lostCode is recorded for a started container whose task vanished
	// without an exit (the host rebooted, containerd lost its state).
	lostCode = 255
	// maxMessage keeps an exit message well within containerd's 4 KiB
	// limit on a label.
	maxMessage = 1024
)

// ErrNotCreated is returned by StartContainer for a container that is not
// in the created state (running, or already exited).
var ErrNotCreated = errors.New("container is not in the created state")

// CreateContainer makes the container and its snapshot. Called again for
// the same (pod, name, attempt) it returns the container already made.
func (r *Runtime) CreateContainer(ctx context.Context, s runtime.ContainerSpec) (runtime.Container, error) {
	if err := validate(s); err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s of pod %s: %w", s.Name, s.PodUID, err)
	}
	name, err := NormalizeRef(s.Image)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: %w", s.Name, err)
	}
	c, err := r.conn(ctx)
	if err != nil {
		return runtime.Container{}, err
	}
	id := ContainerID(s.PodUID, s.Name, s.Attempt)
	unlock := r.locks.lock(id)
	defer unlock()

	if info, err := c.ContainerService().Get(ctx, id); err == nil {
		return r.observeLocked(ctx, c, info)
	} else if !errdefs.IsNotFound(err) {
		return runtime.Container{}, fmt.Errorf("create container %s: %w", id, mapErr(err))
	}

	img, err := c.GetImage(ctx, name)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: image %s: %w", id, name, mapErr(err))
	}
	if err := r.ensureUnpacked(ctx, img); err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: %w", id, err)
	}
	ic, err := img.Spec(ctx)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: read image config: %w", id, mapErr(err))
	}
	cfgDesc, err := img.Config(ctx)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: read image config: %w", id, mapErr(err))
	}
	specOpts, err := r.specOpts(img, ic, s)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: %w", id, err)
	}
	labels := map[string]string{
		runtime.LabelPodUID:        s.PodUID,
		runtime.LabelPodName:       s.PodName,
		runtime.LabelPodNamespace:  s.PodNamespace,
		runtime.LabelContainerName: s.Name,
		runtime.LabelAttempt:       strconv.Itoa(s.Attempt),
		labelImage:                 s.Image,
		labelImageID:               cfgDesc.Digest.String(),
	}
	if s.LogPath != "" {
		labels[labelLogPath] = s.LogPath
	}
	if s.TTY {
		labels[labelTTY] = "true"
	}

	// The lease keeps the new snapshot from containerd's garbage collector
	// until the container record that references it exists.
	lctx, done, err := c.WithLease(ctx)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: take lease: %w", id, mapErr(err))
	}
	defer done(context.WithoutCancel(lctx))

	snap := r.Snapshotter()
	sn := c.SnapshotService(snap)
	// A create that died between making the snapshot and the container
	// record left the snapshot behind under our key.
	if _, err := sn.Stat(lctx, id); err == nil {
		r.log.Info("removing snapshot left by an interrupted create", "container", id)
		if err := sn.Remove(lctx, id); err != nil && !errdefs.IsNotFound(err) {
			return runtime.Container{}, fmt.Errorf("create container %s: remove stale snapshot: %w", id, mapErr(err))
		}
	}
	ctr, err := c.NewContainer(lctx, id,
		containerd.WithImage(img),
		containerd.WithSnapshotter(snap),
		containerd.WithNewSnapshot(id, img),
		containerd.WithContainerLabels(labels),
		containerd.WithImageStopSignal(img, "SIGTERM"),
		containerd.WithNewSpec(specOpts...),
	)
	if err != nil {
		if rerr := sn.Remove(context.WithoutCancel(lctx), id); rerr != nil && !errdefs.IsNotFound(rerr) {
			r.log.Warn("remove snapshot of failed create", "container", id, "err", rerr)
		}
		return runtime.Container{}, fmt.Errorf("create container %s: %w", id, mapErr(err))
	}
	info, err := ctr.Info(ctx)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("create container %s: read it back: %w", id, mapErr(err))
	}
	r.rememberPod(id, s.PodUID)
	r.log.Debug("created container", "container", id, "pod", s.PodUID, "name", s.Name, "attempt", s.Attempt)
	return toContainer(info, nil), nil
}

// StartContainer starts a created container. A process that cannot start
// leaves the container exited with ReasonStartError (exit code 128) and
// the cause in its message; the error is returned as well.
func (r *Runtime) StartContainer(ctx context.Context, id string) error {
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	unlock := r.locks.lock(id)
	defer unlock()

	info, err := c.ContainerService().Get(ctx, id)
	if err != nil {
		return fmt.Errorf("start container %s: %w", id, mapErr(err))
	}
	if info.Labels[labelExitCode] != "" {
		return fmt.Errorf("start container %s: it has exited: %w", id, ErrNotCreated)
	}
	proc, err := r.task(ctx, c, id)
	if err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	if proc != nil {
		switch proc.Status {
		case tasktypes.Status_CREATED:
			// A start that died between making the task and starting it.
			if err := r.deleteTask(ctx, c, id, true); err != nil {
				return fmt.Errorf("start container %s: remove half-made task: %w", id, err)
			}
		case tasktypes.Status_STOPPED:
			if err := r.finishLocked(ctx, c, id, proc.ExitStatus, proc.ExitedAt.AsTime()); err != nil {
				return fmt.Errorf("start container %s: %w", id, err)
			}
			return fmt.Errorf("start container %s: it has exited: %w", id, ErrNotCreated)
		default:
			return fmt.Errorf("start container %s: task is %s: %w", id, strings.ToLower(proc.Status.String()), ErrNotCreated)
		}
	}

	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("start container %s: %w", id, mapErr(err))
	}
	// Without a log path the output goes to /dev/null and needs no FIFOs.
	creator := cio.NullIO
	var out *copier
	if lp := info.Labels[labelLogPath]; lp != "" {
		if out, creator, err = r.newTaskOutput(id, lp, info.Labels[labelTTY] == "true"); err != nil {
			return fmt.Errorf("start container %s: output: %w", id, err)
		}
	}
	task, err := ctr.NewTask(ctx, creator)
	if err != nil {
		if out != nil {
			r.abortCopier(out)
		}
		// runc checks the executable before the task exists, so a missing
		// command fails here rather than in Start.
		return r.startFailed(ctx, c, id, err)
	}
	if out != nil {
		r.runCopier(out)
	}
	startedAt := time.Now()
	if err := task.Start(ctx); err != nil {
		if derr := r.deleteTask(context.WithoutCancel(ctx), c, id, true); derr != nil {
			r.log.Warn("delete task that failed to start", "container", id, "err", derr)
		}
		return r.startFailed(ctx, c, id, err)
	}
	if err := r.setLabels(ctx, c, id, map[string]string{labelStartedAt: formatTime(startedAt)}); err != nil {
		// The task runs; only the start time is missing (reported zero).
		r.log.Warn("record start time", "container", id, "err", err)
	}
	r.rememberPod(id, info.Labels[runtime.LabelPodUID])
	r.log.Debug("started container", "container", id, "pid", task.Pid())
	return nil
}

// startFailed records a start failure on the container, unless containerd
// itself is the problem (then nothing is known about the container).
func (r *Runtime) startFailed(ctx context.Context, c *containerd.Client, id string, err error) error {
	err = mapErr(err)
	if errors.Is(err, runtime.ErrUnavailable) || ctx.Err() != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	msg := startErrorMessage(err)
	rec := map[string]string{
		labelExitCode:    strconv.Itoa(startErrorCode),
		labelExitAt:      formatTime(time.Now()),
		labelExitReason:  runtime.ReasonStartError,
		labelExitMessage: msg,
	}
	if lerr := r.setLabels(context.WithoutCancel(ctx), c, id, rec); lerr != nil {
		r.log.Warn("record start error", "container", id, "err", lerr)
	}
	r.log.Info("container failed to start", "container", id, "cause", msg)
	return fmt.Errorf("start container %s: %s: %w", id, msg, err)
}

// startErrorMessage keeps the part of runc's error that names the cause:
// `...: unable to start container process: exec: "nope": executable file
// not found in $PATH: unknown` → `exec: "nope": executable file not found
// in $PATH`.
func startErrorMessage(err error) string {
	s := err.Error()
	const marker = "unable to start container process: "
	if i := strings.LastIndex(s, marker); i >= 0 {
		s = s[i+len(marker):]
	}
	s = strings.TrimSuffix(s, ": unknown")
	if len(s) > maxMessage {
		s = s[:maxMessage]
	}
	return s
}

// StopContainer sends the stop signal, SIGKILL after grace, and returns
// once the exit is recorded.
func (r *Runtime) StopContainer(ctx context.Context, id string, grace time.Duration) error {
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		return fmt.Errorf("stop container %s: %w", id, mapErr(err))
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil // nothing runs
		}
		return fmt.Errorf("stop container %s: %w", id, mapErr(err))
	}
	st, err := task.Status(ctx)
	if err != nil {
		return fmt.Errorf("stop container %s: %w", id, mapErr(err))
	}
	switch st.Status {
	case containerd.Stopped:
		return r.finish(ctx, c, id, st.ExitStatus, st.ExitTime)
	case containerd.Running, containerd.Paused, containerd.Pausing:
	default:
		return nil // created, never started: left as it is
	}
	// Wait before signalling, or a fast exit could be missed.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exitC, err := task.Wait(wctx)
	if err != nil {
		return fmt.Errorf("stop container %s: wait: %w", id, mapErr(err))
	}
	sig := syscall.SIGKILL
	if grace > 0 {
		if sig, err = containerd.GetStopSignal(ctx, ctr, syscall.SIGTERM); err != nil {
			sig = syscall.SIGTERM
		}
	}
	if sig == syscall.SIGKILL {
		r.markKilled(id)
	}
	if err := task.Kill(ctx, sig); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("stop container %s: send %s: %w", id, sig, mapErr(err))
	}
	var es containerd.ExitStatus
	// SIGKILL went first (no grace): there is nothing to escalate to.
	var graceC <-chan time.Time
	if sig != syscall.SIGKILL {
		timer := time.NewTimer(grace)
		defer timer.Stop()
		graceC = timer.C
	}
	select {
	case es = <-exitC:
	case <-graceC:
		r.log.Info("container outlived its grace period; killing it", "container", id, "grace", grace)
		r.markKilled(id)
		if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stop container %s: send SIGKILL: %w", id, mapErr(err))
		}
		select {
		case es = <-exitC:
		case <-ctx.Done():
			return fmt.Errorf("stop container %s: wait for exit: %w", id, ctx.Err())
		}
	case <-ctx.Done():
		return fmt.Errorf("stop container %s: wait for exit: %w", id, ctx.Err())
	}
	if err := es.Error(); err != nil {
		// The exit event's handler may have recorded the exit and
		// deleted the task first; the shim then goes away and our wait
		// ends with its connection. The container stopped all the same.
		st, serr := task.Status(ctx)
		switch {
		case errdefs.IsNotFound(serr):
			return nil
		case serr == nil && st.Status == containerd.Stopped:
			return r.finish(ctx, c, id, st.ExitStatus, st.ExitTime)
		}
		return fmt.Errorf("stop container %s: wait for exit: %w", id, mapErr(err))
	}
	return r.finish(ctx, c, id, es.ExitCode(), es.ExitTime())
}

// RemoveContainer deletes the task (killing it if it somehow runs), the
// container and its snapshot.
func (r *Runtime) RemoveContainer(ctx context.Context, id string) error {
	c, err := r.conn(ctx)
	if err != nil {
		return err
	}
	unlock := r.locks.lock(id)
	defer unlock()
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		if errdefs.IsNotFound(err) {
			r.removeFIFODir(id, r.fifoDir(id))
			r.forget(id)
			return nil
		}
		return fmt.Errorf("remove container %s: %w", id, mapErr(err))
	}
	if err := r.deleteTask(ctx, c, id, true); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove container %s: %w", id, mapErr(err))
	}
	// The task's deletion removed the FIFOs; this is for a container whose
	// task went away without us (containerd or the host restarted).
	r.removeFIFODir(id, r.fifoDir(id))
	r.forget(id)
	r.log.Debug("removed container", "container", id)
	return nil
}

// ContainerStatus returns one container as it is now, recording its exit
// first if its task has stopped.
func (r *Runtime) ContainerStatus(ctx context.Context, id string) (runtime.Container, error) {
	c, err := r.conn(ctx)
	if err != nil {
		return runtime.Container{}, err
	}
	info, err := c.ContainerService().Get(ctx, id)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("container status %s: %w", id, mapErr(err))
	}
	proc, err := r.task(ctx, c, id)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("container status %s: %w", id, err)
	}
	return r.observe(ctx, c, info, proc)
}

// ListContainers returns every container carrying LabelPodUID, with two
// calls to containerd however many there are.
func (r *Runtime) ListContainers(ctx context.Context) ([]runtime.Container, error) {
	c, err := r.conn(ctx)
	if err != nil {
		return nil, err
	}
	infos, err := c.ContainerService().List(ctx, fmt.Sprintf("labels.%q", runtime.LabelPodUID))
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", mapErr(err))
	}
	resp, err := c.TaskService().List(ctx, &tasks.ListTasksRequest{})
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", mapErr(err))
	}
	procs := make(map[string]*tasktypes.Process, len(resp.Tasks))
	for _, p := range resp.Tasks {
		procs[p.ID] = p
	}
	out := make([]runtime.Container, 0, len(infos))
	for _, info := range infos {
		ctr, err := r.observe(ctx, c, info, procs[info.ID])
		if err != nil {
			if errors.Is(err, runtime.ErrNotFound) {
				continue // removed meanwhile
			}
			return nil, err
		}
		r.rememberPod(info.ID, info.Labels[runtime.LabelPodUID])
		out = append(out, ctr)
	}
	return out, nil
}

// task returns the container's task, nil if it has none.
func (r *Runtime) task(ctx context.Context, c *containerd.Client, id string) (*tasktypes.Process, error) {
	resp, err := c.TaskService().Get(ctx, &tasks.GetRequest{ContainerID: id})
	if err != nil {
		if errdefs.IsNotFound(mapErr(err)) || errors.Is(mapErr(err), runtime.ErrNotFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("get task: %w", mapErr(err))
	}
	return resp.Process, nil
}

// observe turns containerd's records into a Container, first bringing the
// exit record up to date when the task has stopped, vanished, or lingers
// after its exit was recorded.
func (r *Runtime) observe(ctx context.Context, c *containerd.Client, info containers.Container, proc *tasktypes.Process) (runtime.Container, error) {
	recorded := info.Labels[labelExitCode] != ""
	stopped := proc != nil && proc.Status == tasktypes.Status_STOPPED
	lost := proc == nil && !recorded && info.Labels[labelStartedAt] != ""
	if !stopped && !lost && !(recorded && proc != nil) {
		return toContainer(info, proc), nil
	}
	unlock := r.locks.lock(info.ID)
	defer unlock()
	// Look again under the lock: an event handler or StopContainer may have
	// recorded the exit meanwhile, or StartContainer be between steps.
	var err error
	if info, err = c.ContainerService().Get(ctx, info.ID); err != nil {
		return runtime.Container{}, fmt.Errorf("container status %s: %w", info.ID, mapErr(err))
	}
	return r.observeLocked(ctx, c, info)
}

// observeLocked is observe with the container's lock held and info fresh.
func (r *Runtime) observeLocked(ctx context.Context, c *containerd.Client, info containers.Container) (runtime.Container, error) {
	id := info.ID
	proc, err := r.task(ctx, c, id)
	if err != nil {
		return runtime.Container{}, fmt.Errorf("container status %s: %w", id, err)
	}
	recorded := info.Labels[labelExitCode] != ""
	switch {
	case proc != nil && proc.Status == tasktypes.Status_STOPPED:
		if err := r.finishLocked(ctx, c, id, proc.ExitStatus, proc.ExitedAt.AsTime()); err != nil {
			return runtime.Container{}, err
		}
	case proc != nil && recorded:
		// Recorded, but the delete did not happen (crash in between).
		if err := r.deleteTask(ctx, c, id, false); err != nil {
			r.log.Warn("delete task of exited container", "container", id, "err", err)
		}
	case proc == nil && !recorded && info.Labels[labelStartedAt] != "":
		r.log.Warn("container's task is gone without an exit; recording it as lost", "container", id)
		rec := map[string]string{
			labelExitCode:    strconv.Itoa(lostCode),
			labelExitAt:      formatTime(time.Now()),
			labelExitReason:  runtime.ReasonError,
			labelExitMessage: "the container's task was lost (containerd or the host restarted while it ran)",
		}
		if err := r.setLabels(ctx, c, id, rec); err != nil {
			return runtime.Container{}, fmt.Errorf("container status %s: record lost task: %w", id, err)
		}
	default:
		return toContainer(info, proc), nil
	}
	if info, err = c.ContainerService().Get(ctx, id); err != nil {
		return runtime.Container{}, fmt.Errorf("container status %s: %w", id, mapErr(err))
	}
	if proc, err = r.task(ctx, c, id); err != nil {
		return runtime.Container{}, fmt.Errorf("container status %s: %w", id, err)
	}
	return toContainer(info, proc), nil
}

// finish records an exit (unless already recorded) and deletes the task.
func (r *Runtime) finish(ctx context.Context, c *containerd.Client, id string, code uint32, at time.Time) error {
	unlock := r.locks.lock(id)
	defer unlock()
	return r.finishLocked(ctx, c, id, code, at)
}

// finishLocked is finish with the container's lock held. The output is
// read to its end first, so a container reported exited has all its
// output in the log. The record is written before the task is deleted:
// the cgroup that tells an OOM kill apart goes with the task, and a crash
// in between leaves a stopped task that the next look records again.
func (r *Runtime) finishLocked(ctx context.Context, c *containerd.Client, id string, code uint32, at time.Time) error {
	info, err := c.ContainerService().Get(ctx, id)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil // removed
		}
		return fmt.Errorf("record exit of %s: %w", id, mapErr(err))
	}
	r.endOutput(id)
	if info.Labels[labelExitCode] == "" {
		if at.IsZero() || at.Unix() <= 0 {
			at = time.Now()
		}
		reason := runtime.ReasonCompleted
		switch {
		case r.oomKilled(id, info, code):
			reason = runtime.ReasonOOMKilled
		case code != 0:
			reason = runtime.ReasonError
		}
		rec := map[string]string{
			labelExitCode:   strconv.FormatInt(int64(int32(code)), 10),
			labelExitAt:     formatTime(at),
			labelExitReason: reason,
		}
		if err := r.setLabels(ctx, c, id, rec); err != nil {
			return fmt.Errorf("record exit of %s: %w", id, err)
		}
		r.log.Debug("container exited", "container", id, "code", int32(code), "reason", reason)
	}
	if err := r.deleteTask(ctx, c, id, false); err != nil {
		return fmt.Errorf("record exit of %s: %w", id, err)
	}
	return nil
}

// deleteTask deletes the container's task (so its shim exits); kill first
// when it may still run. No task is not an error. Once the task is gone,
// its output is read to the end and its FIFOs removed.
func (r *Runtime) deleteTask(ctx context.Context, c *containerd.Client, id string, kill bool) error {
	if err := r.deleteTaskOnly(ctx, c, id, kill); err != nil {
		return err
	}
	r.endOutput(id)
	return nil
}

func (r *Runtime) deleteTaskOnly(ctx context.Context, c *containerd.Client, id string, kill bool) error {
	if kill {
		cc, err := c.LoadContainer(ctx, id)
		if err != nil {
			if errdefs.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("delete task: %w", mapErr(err))
		}
		t, err := cc.Task(ctx, nil)
		if err != nil {
			if errdefs.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("delete task: %w", mapErr(err))
		}
		if _, err := t.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete task: %w", mapErr(err))
		}
		return nil
	}
	if _, err := c.TaskService().Delete(ctx, &tasks.DeleteTaskRequest{ContainerID: id}); err != nil {
		if err := mapErr(err); !errors.Is(err, runtime.ErrNotFound) {
			return fmt.Errorf("delete task: %w", err)
		}
	}
	return nil
}

// setLabels merges labels into the container's (only the keys given are
// touched).
func (r *Runtime) setLabels(ctx context.Context, c *containerd.Client, id string, labels map[string]string) error {
	paths := make([]string, 0, len(labels))
	for k := range labels {
		paths = append(paths, "labels."+k)
	}
	if _, err := c.ContainerService().Update(ctx, containers.Container{ID: id, Labels: labels}, paths...); err != nil {
		return fmt.Errorf("set labels: %w", mapErr(err))
	}
	return nil
}

// toContainer is the runtime's view of containerd's records.
func toContainer(info containers.Container, proc *tasktypes.Process) runtime.Container {
	l := info.Labels
	attempt, _ := strconv.Atoi(l[runtime.LabelAttempt])
	image := l[labelImage]
	if image == "" {
		image = info.Image
	}
	ctr := runtime.Container{
		ID:           info.ID,
		PodUID:       l[runtime.LabelPodUID],
		PodNamespace: l[runtime.LabelPodNamespace],
		PodName:      l[runtime.LabelPodName],
		Name:         l[runtime.LabelContainerName],
		Attempt:      attempt,
		Image:        image,
		ImageID:      l[labelImageID],
		CreatedAt:    info.CreatedAt,
		StartedAt:    parseTime(l[labelStartedAt]),
		LogPath:      l[labelLogPath],
	}
	switch {
	case l[labelExitCode] != "":
		code, _ := strconv.ParseInt(l[labelExitCode], 10, 32)
		ctr.State = runtime.StateExited
		ctr.ExitCode = int32(code)
		ctr.FinishedAt = parseTime(l[labelExitAt])
		ctr.Reason = l[labelExitReason]
		ctr.Message = l[labelExitMessage]
	case proc == nil:
		ctr.State = runtime.StateCreated
		if !ctr.StartedAt.IsZero() {
			ctr.State = runtime.StateUnknown // started, task gone, exit not yet recorded
		}
	default:
		switch proc.Status {
		case tasktypes.Status_RUNNING, tasktypes.Status_PAUSED, tasktypes.Status_PAUSING:
			ctr.State = runtime.StateRunning
		case tasktypes.Status_CREATED:
			ctr.State = runtime.StateCreated
		case tasktypes.Status_STOPPED:
			// Only when recording failed; report what the task says.
			ctr.State = runtime.StateExited
			ctr.ExitCode = int32(proc.ExitStatus)
			ctr.FinishedAt = proc.ExitedAt.AsTime()
			ctr.Reason = runtime.ReasonError
			if proc.ExitStatus == 0 {
				ctr.Reason = runtime.ReasonCompleted
			}
		default:
			ctr.State = runtime.StateUnknown
		}
	}
	// A process that exits within the clock's resolution of its start.
	if !ctr.FinishedAt.IsZero() && ctr.FinishedAt.Before(ctr.StartedAt) {
		ctr.FinishedAt = ctr.StartedAt
	}
	return ctr
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

func (r *Runtime) rememberPod(id, podUID string) {
	if podUID == "" {
		return
	}
	r.infoMu.Lock()
	r.podUID[id] = podUID
	r.infoMu.Unlock()
}

func (r *Runtime) markKilled(id string) {
	r.infoMu.Lock()
	r.killed[id] = true
	r.infoMu.Unlock()
}

func (r *Runtime) forget(id string) {
	r.infoMu.Lock()
	delete(r.podUID, id)
	delete(r.oom, id)
	delete(r.killed, id)
	r.infoMu.Unlock()
}
