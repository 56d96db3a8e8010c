package containerd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/containerd/containerd"
	apievents "github.com/containerd/containerd/api/events"
	tasks "github.com/containerd/containerd/api/services/tasks/v1"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/events"
	"github.com/containerd/typeurl/v2"

	"flotilla/agent/runtime"
)

const (
	topicExit  = "/tasks/exit"
	topicOOM   = "/tasks/oom"
	topicStart = "/tasks/start"

	eventBuffer = 256
	// monitorRetry spaces resubscriptions while containerd is down.
	monitorRetryMin = 500 * time.Millisecond
	monitorRetryMax = 5 * time.Second
	// handleTimeout bounds the containerd calls made for one event.
	handleTimeout = 30 * time.Second
)

func (r *Runtime) eventFilters() []string {
	ns := strconv.Quote(r.cfg.Namespace)
	return []string{
		fmt.Sprintf(`namespace==%s,topic==%q`, ns, topicExit),
		fmt.Sprintf(`namespace==%s,topic==%q`, ns, topicOOM),
		fmt.Sprintf(`namespace==%s,topic==%q`, ns, topicStart),
	}
}

// Events streams container changes until ctx ends or the connection to
// containerd is lost (then the channel closes and the agent subscribes
// again). If containerd cannot be reached the channel is closed at once:
// the caller should back off before subscribing again. Exits are recorded
// (and their tasks deleted) before they are sent, so a ContainerStatus
// made on receipt already sees them.
func (r *Runtime) Events(ctx context.Context) <-chan runtime.Event {
	out := make(chan runtime.Event, eventBuffer)
	c, err := r.conn(ctx)
	if err != nil {
		r.log.Debug("events: containerd unreachable", "err", err)
		close(out)
		return out
	}
	go func() {
		defer close(out)
		err := r.consume(ctx, c, func(ev runtime.Event) {
			select {
			case out <- ev:
			case <-ctx.Done():
			}
		})
		if err != nil && ctx.Err() == nil {
			r.log.Info("event stream ended", "err", err)
		}
	}()
	return out
}

// consume reads one subscription until it fails or ctx ends, handling
// each event and passing the ones about our containers to send.
func (r *Runtime) consume(ctx context.Context, c *containerd.Client, send func(runtime.Event)) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	envs, errs := c.Subscribe(sctx, r.eventFilters()...)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errs:
			if err == nil {
				err = errors.New("subscription closed")
			}
			return mapErr(err)
		case env := <-envs:
			if env == nil {
				continue
			}
			if ev, ok := r.handle(ctx, c, env); ok && send != nil {
				send(ev)
			}
		}
	}
}

// handle acts on one event: an OOM is remembered (in memory and on the
// container, so it survives a restart before the exit), an exit of a
// container's main process is recorded and its task deleted.
func (r *Runtime) handle(ctx context.Context, c *containerd.Client, env *events.Envelope) (runtime.Event, bool) {
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		r.log.Warn("undecodable event", "topic", env.Topic, "err", err)
		return runtime.Event{}, false
	}
	hctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	var ev runtime.Event
	switch e := v.(type) {
	case *apievents.TaskExit:
		if e.ID != e.ContainerID {
			return runtime.Event{}, false // an exec'd process, not the container
		}
		ev = runtime.Event{Type: runtime.EventExited, ContainerID: e.ContainerID}
		if err := r.finish(hctx, c, e.ContainerID, e.ExitStatus, e.ExitedAt.AsTime()); err != nil {
			r.log.Warn("record exit", "container", e.ContainerID, "err", err)
		}
	case *apievents.TaskOOM:
		ev = runtime.Event{Type: runtime.EventOOM, ContainerID: e.ContainerID}
		r.infoMu.Lock()
		r.oom[e.ContainerID] = true
		r.infoMu.Unlock()
		if err := r.setLabels(hctx, c, e.ContainerID, map[string]string{labelOOM: "true"}); err != nil && !errors.Is(err, runtime.ErrNotFound) {
			r.log.Warn("record oom", "container", e.ContainerID, "err", err)
		}
	case *apievents.TaskStart:
		ev = runtime.Event{Type: runtime.EventStarted, ContainerID: e.ContainerID}
	default:
		return runtime.Event{}, false
	}
	uid, ok := r.podOf(hctx, c, ev.ContainerID)
	if !ok {
		return runtime.Event{}, false // not one of ours
	}
	ev.PodUID = uid
	return ev, true
}

// podOf finds a container's pod UID, from the cache or its labels.
func (r *Runtime) podOf(ctx context.Context, c *containerd.Client, id string) (string, bool) {
	r.infoMu.Lock()
	uid, ok := r.podUID[id]
	r.infoMu.Unlock()
	if ok {
		return uid, true
	}
	info, err := c.ContainerService().Get(ctx, id)
	if err != nil || info.Labels[runtime.LabelPodUID] == "" {
		return "", false
	}
	uid = info.Labels[runtime.LabelPodUID]
	r.rememberPod(id, uid)
	return uid, true
}

// monitor keeps one subscription of its own for the Runtime's life, so
// exits are recorded and shims released even when nobody calls Events.
// Each time it (re)subscribes it sweeps for output nobody reads and for
// tasks that stopped while it was not listening.
func (r *Runtime) monitor(c *containerd.Client) {
	defer r.wg.Done()
	wait := monitorRetryMin
	for r.bg.Err() == nil {
		began := time.Now()
		swept := make(chan struct{})
		go func() {
			defer close(swept)
			// Give the subscription a moment to be in place, so an exit
			// between the sweep and the subscription is not missed.
			t := time.NewTimer(100 * time.Millisecond)
			defer t.Stop()
			select {
			case <-t.C:
				r.sweep(r.bg, c)
			case <-r.bg.Done():
			}
		}()
		err := r.consume(r.bg, c, nil)
		<-swept
		if r.bg.Err() != nil {
			return
		}
		if time.Since(began) > time.Minute {
			wait = monitorRetryMin
		}
		r.log.Debug("monitor subscription ended; retrying", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.bg.Done():
			t.Stop()
			return
		}
		wait = min(wait*2, monitorRetryMax)
	}
}

// sweep reattaches to output nobody reads (the reattach made on connecting
// may have failed), then records the exits of stopped tasks in our
// namespace: reattaching first lets their last output be read.
func (r *Runtime) sweep(ctx context.Context, c *containerd.Client) {
	ctx, cancel := context.WithTimeout(ctx, handleTimeout)
	defer cancel()
	if err := r.reattach(ctx, c); err != nil && ctx.Err() == nil {
		r.log.Debug("sweep: reattach output", "err", err)
	}
	resp, err := c.TaskService().List(ctx, &tasks.ListTasksRequest{})
	if err != nil {
		if !errdefs.IsUnavailable(mapErr(err)) && !errors.Is(mapErr(err), runtime.ErrUnavailable) {
			r.log.Debug("sweep: list tasks", "err", err)
		}
		return
	}
	for _, p := range resp.Tasks {
		if p.Status != tasktypes.Status_STOPPED {
			continue
		}
		if _, ok := r.podOf(ctx, c, p.ID); !ok {
			continue
		}
		if err := r.finish(ctx, c, p.ID, p.ExitStatus, p.ExitedAt.AsTime()); err != nil && ctx.Err() == nil {
			r.log.Warn("sweep: record exit", "container", p.ID, "err", err)
		}
	}
}
