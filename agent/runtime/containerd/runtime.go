package containerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"flotilla/agent/logs"
	"flotilla/agent/runtime"
)

const (
	// DefaultNamespace is the containerd namespace Flotilla's containers
	// live in unless Config.Namespace says otherwise.
	DefaultNamespace = "flotilla"
	// DefaultSnapshotter is used when Config.Snapshotter is empty.
	DefaultSnapshotter = "overlayfs"
	// fallbackSnapshotter works on any filesystem, at the price of copying
	// every layer.
	fallbackSnapshotter = "native"

	// dialTimeout bounds connecting to containerd, so a call made while it
	// is down fails in about this long rather than hanging.
	dialTimeout = 2 * time.Second
	// versionTimeout bounds the health check: a hung (not dead) daemon
	// must still make the node not ready.
	versionTimeout = 5 * time.Second
)

// Config configures a Runtime. Zero values are defaults.
type Config struct {
	// Address is containerd's gRPC socket (default
	// /run/containerd/containerd.sock).
	Address string
	// Namespace is the containerd namespace (default "flotilla"). Agents
	// sharing one containerd (in tests) each use their own.
	Namespace string
	// Snapshotter for root filesystems (default "overlayfs"; when
	// overlayfs is asked for but containerd could not load it on this
	// filesystem, "native" is used and that is logged).
	Snapshotter string
	// FIFODir holds the tasks' output FIFOs, a directory per container
	// (default /run/flotilla/fifo/<namespace> as root, else under the OS
	// temp dir). A restarted Runtime finds running tasks' FIFOs through
	// containerd, wherever they are. Only one Runtime may work in a
	// namespace at a time: two would split the containers' output between
	// them.
	FIFODir string
	// LogRotate bounds each container's log files.
	LogRotate logs.RotateOptions
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Runtime is runtime.Runtime on containerd. Safe for concurrent use.
type Runtime struct {
	cfg Config
	log *slog.Logger
	// swapLimit: the kernel accounts swap (cgroup v1 memory.memsw.*, or
	// cgroup v2), so a memory limit can also forbid swapping, which is
	// what makes a container over its limit really OOM.
	swapLimit bool

	mu          sync.Mutex
	client      *containerd.Client
	snapshotter string // resolved on first connect
	closed      bool

	bg     context.Context // cancelled by Close; bounds the monitor
	stopBg context.CancelFunc
	wg     sync.WaitGroup

	locks idLocks
	out   copiers

	infoMu sync.Mutex
	podUID map[string]string // container ID → pod UID, for events
	oom    map[string]bool   // containers a TaskOOM event was seen for
	killed map[string]bool   // containers StopContainer had to SIGKILL
}

var _ runtime.Runtime = (*Runtime)(nil)

// New returns a Runtime for the containerd on cfg.Address. It does not
// need containerd to be up: the connection is made on first use and
// retried on every call until it succeeds.
func New(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.Address == "" {
		cfg.Address = "/run/containerd/containerd.sock"
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = DefaultSnapshotter
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.LogRotate.MaxSize < 0 || cfg.LogRotate.MaxFiles < 0 {
		return nil, fmt.Errorf("new containerd runtime: log rotation %+v: %w", cfg.LogRotate, logs.ErrBadOptions)
	}
	if cfg.FIFODir == "" {
		cfg.FIFODir = defaultFIFODir(cfg.Namespace)
	}
	if err := os.MkdirAll(cfg.FIFODir, 0o700); err != nil {
		return nil, fmt.Errorf("new containerd runtime: fifo dir: %w", err)
	}
	bg, stop := context.WithCancel(context.Background())
	r := &Runtime{
		cfg:       cfg,
		log:       log.With("component", "containerd-runtime", "namespace", cfg.Namespace),
		swapLimit: swapAccounting(),
		bg:        bg,
		stopBg:    stop,
		podUID:    map[string]string{},
		oom:       map[string]bool{},
		killed:    map[string]bool{},
	}
	// Connect now if we can, so the first pod does not pay for it and the
	// running containers' output is read again at once; a failure here is
	// only logged: containerd may come up later.
	if _, err := r.conn(ctx); err != nil {
		r.log.Warn("containerd not reachable yet; will retry", "address", cfg.Address, "err", err)
	}
	return r, nil
}

// conn returns the client, connecting first if needed. Connecting
// includes reattaching to the running tasks' output, under the lock: no
// caller gets the client, and so deletes a stopped task, before the
// task's FIFOs have a reader again.
func (r *Runtime) conn(ctx context.Context) (*containerd.Client, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("containerd runtime is closed")
	}
	if r.client != nil {
		return r.client, nil
	}
	c, err := containerd.New(r.cfg.Address,
		containerd.WithDefaultNamespace(r.cfg.Namespace),
		containerd.WithTimeout(dialTimeout))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w: %w", r.cfg.Address, runtime.ErrUnavailable, err)
	}
	sctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	snap, err := r.resolveSnapshotter(sctx, c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("connect to containerd at %s: %w", r.cfg.Address, mapErr(err))
	}
	if err := r.reattach(sctx, c); err != nil {
		// The monitor tries again each time it subscribes.
		r.log.Warn("reattach container output", "err", err)
	}
	r.client, r.snapshotter = c, snap
	r.wg.Add(1)
	go r.monitor(c)
	return c, nil
}

// resolveSnapshotter checks that containerd loaded the configured
// snapshotter; overlayfs fails to load on filesystems that cannot carry it
// (overlay on overlay, some network filesystems), and then native is used.
func (r *Runtime) resolveSnapshotter(ctx context.Context, c *containerd.Client) (string, error) {
	want := r.cfg.Snapshotter
	resp, err := c.IntrospectionService().Plugins(ctx, []string{
		fmt.Sprintf(`type=="io.containerd.snapshotter.v1",id==%q`, want),
	})
	if err != nil {
		return "", fmt.Errorf("list snapshotter plugins: %w", err)
	}
	ok := len(resp.Plugins) > 0 && resp.Plugins[0].InitErr == nil
	if ok {
		return want, nil
	}
	if want != DefaultSnapshotter {
		return "", fmt.Errorf("snapshotter %q is not loaded in containerd", want)
	}
	reason := "not loaded"
	if len(resp.Plugins) > 0 && resp.Plugins[0].InitErr != nil {
		reason = resp.Plugins[0].InitErr.Message
	}
	r.log.Warn("overlayfs snapshotter unusable; falling back to native (slower: layers are copied)", "reason", reason)
	return fallbackSnapshotter, nil
}

// Snapshotter returns the snapshotter in use ("" before the first
// successful connection).
func (r *Runtime) Snapshotter() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotter
}

// Namespace returns the containerd namespace the runtime works in.
func (r *Runtime) Namespace() string { return r.cfg.Namespace }

// mapErr attaches the runtime's sentinels to containerd's errors so the
// agent can tell "containerd is down" and "no such thing" from the rest.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, runtime.ErrUnavailable), errors.Is(err, runtime.ErrNotFound):
		return err
	case errdefs.IsUnavailable(err), status.Code(err) == codes.Unavailable:
		return fmt.Errorf("%w: %w", runtime.ErrUnavailable, err)
	case errdefs.IsNotFound(err), status.Code(err) == codes.NotFound:
		return fmt.Errorf("%w: %w", runtime.ErrNotFound, err)
	}
	return err
}

// Version reports containerd's version; it is the agent's health check.
func (r *Runtime) Version(ctx context.Context) (runtime.Version, error) {
	c, err := r.conn(ctx)
	if err != nil {
		return runtime.Version{}, err
	}
	vctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	v, err := c.Version(vctx)
	if err != nil {
		if ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded) {
			// Our own timeout, not the caller's: the daemon hangs.
			return runtime.Version{}, fmt.Errorf("get containerd version: %w: no answer in %s", runtime.ErrUnavailable, versionTimeout)
		}
		return runtime.Version{}, fmt.Errorf("get containerd version: %w", mapErr(err))
	}
	return runtime.Version{Name: "containerd", Version: v.Version}, nil
}

// Close stops the background monitor and the output copiers, and closes
// the connection. Containers keep running, and their output waits in the
// FIFOs for the next Runtime: this is the agent restarting.
func (r *Runtime) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	c := r.client
	r.mu.Unlock()
	r.stopBg()
	r.wg.Wait()
	r.closeOutput()
	// Only succeeds when no container has FIFOs: a namespace's directory
	// should not outlive its last container.
	os.Remove(r.cfg.FIFODir)
	if c != nil {
		return c.Close()
	}
	return nil
}

// idLocks serialises work on one container (start, exit recording,
// removal) without a global lock.
type idLocks struct {
	mu sync.Mutex
	m  map[string]*idLock
}

type idLock struct {
	sync.Mutex
	refs int
}

func (l *idLocks) lock(id string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*idLock{}
	}
	e := l.m[id]
	if e == nil {
		e = &idLock{}
		l.m[id] = e
	}
	e.refs++
	l.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		l.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
}
