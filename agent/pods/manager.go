package pods

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"flotilla/agent/network"
	"flotilla/agent/runtime"
	"flotilla/api/eventsink"
)

// Network is what the Manager needs from the pod network (*network.Manager
// satisfies it).
type Network interface {
	// SetupPod makes the pod's network namespace and address; calling it
	// again for a pod that has one returns the existing attachment.
	SetupPod(ctx context.Context, pod network.PodNetwork) (network.Attachment, error)
	// TeardownPod releases the pod's address and namespace; a pod without
	// one is not an error.
	TeardownPod(ctx context.Context, uid string) error
	// Lookup returns the attachment of a pod set up earlier (also by an
	// earlier agent process).
	Lookup(uid string) (network.Attachment, bool)
	// Pods lists the UIDs of the pods that have a network, so that those
	// of deleted pods are released.
	Pods() ([]string, error)
	// HostNetNSPath is the namespace hostNetwork pods join: the agent's own.
	HostNetNSPath() string
}

// Config configures a Manager. Zero values are defaults where one is given.
type Config struct {
	// NodeName is the Node this agent runs; only pods bound to it are run.
	NodeName string
	// Client reaches the API (pods, pods/status, events, configmaps,
	// secrets, services, serviceaccounts/token).
	Client kubernetes.Interface
	// EventClient, when set, is used for events instead of Client: as the
	// kubelet's, events have a rate limit of their own, so a burst of them
	// never delays pod status.
	EventClient kubernetes.Interface
	// Runtime runs the containers.
	Runtime runtime.Runtime
	// Network sets up pod network namespaces. nil runs only hostNetwork
	// pods (others fail their sandbox and stay Pending).
	Network Network
	// DataDir is the agent's directory (<data-dir>/agent): pods/<uid>/
	// holds volumes and the etc files, logs/ the container logs.
	DataDir string
	// NodeIP returns the node's InternalIP: every pod's hostIP, and the
	// podIP of hostNetwork pods. nil reports none.
	NodeIP func() string
	// BackoffInitial and BackoffMax bound the restart and image pull
	// back-off: 10s doubling to 5m by default, as the kubelet.
	BackoffInitial, BackoffMax time.Duration
	// Resync is how often each pod is synced when nothing happens, and how
	// often the runtime is relisted (default 10s).
	Resync time.Duration
	// Workers is how many pods are synced at once (default 16).
	Workers int
	// Logger receives the Manager's logs (default: discarded).
	Logger *slog.Logger
}

// Manager runs the pods bound to one node.
type Manager struct {
	cfg Config
	log *slog.Logger

	queue   workqueue.TypedRateLimitingInterface[string]
	backoff *backoff

	// indexer is the informer's store, set once Run starts.
	indexer cache.Indexer

	recorder record.EventRecorder

	mu sync.Mutex
	// pods is the per-pod state of the pods the Manager has seen, by UID.
	pods map[types.UID]*podState
	// containers caches what the runtime has, by pod UID then container ID.
	// A pod's sync refreshes its own entries; relists only add.
	containers map[types.UID]map[string]runtime.Container
	// listed is set once the runtime was listed: until then the cache may
	// miss running containers, and a sync could start them again.
	listed atomic.Bool
	// finished holds the pods whose deletion the Manager completed, so
	// that syncs on the informer's stale copy (until it sees the delete)
	// do nothing.
	finished map[types.UID]bool

	// probeWG tracks probe goroutines, so that Run returns after them.
	probeWG sync.WaitGroup
	// runCtx is Run's context, which probe goroutines live under.
	runCtx context.Context
}

const (
	defaultBackoffInitial = 10 * time.Second
	defaultBackoffMax     = 5 * time.Minute
	defaultResync         = 10 * time.Second
	defaultWorkers        = 16
	// backoffReset: a container that ran this long before failing restarts
	// without delay, as in the kubelet.
	backoffReset = 10 * time.Minute
	// minGrace is the least time a container gets between SIGTERM and
	// SIGKILL (the kubelet's minimumGracePeriodInSeconds).
	minGrace = 2 * time.Second
	// orphanGrace stops the containers of a pod the API no longer has,
	// whose grace period is unknown.
	orphanGrace = 2 * time.Second
	// uidIndex indexes the informer's pods by UID, the queue's key.
	uidIndex = "uid"
	// eventComponent is the source of every Event the Manager records.
	eventComponent = "flotilla-agent"
)

// New checks cfg and returns a Manager; nothing runs until Run.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.NodeName == "":
		return nil, errors.New("pods: Config.NodeName is required")
	case cfg.Client == nil:
		return nil, errors.New("pods: Config.Client is required")
	case cfg.Runtime == nil:
		return nil, errors.New("pods: Config.Runtime is required")
	case cfg.DataDir == "":
		return nil, errors.New("pods: Config.DataDir is required")
	case cfg.BackoffInitial < 0 || cfg.BackoffMax < 0 || cfg.Resync < 0 || cfg.Workers < 0:
		return nil, errors.New("pods: negative durations or worker count in Config")
	}
	if cfg.BackoffInitial == 0 {
		cfg.BackoffInitial = defaultBackoffInitial
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = defaultBackoffMax
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		return nil, fmt.Errorf("pods: BackoffMax %v is less than BackoffInitial %v", cfg.BackoffMax, cfg.BackoffInitial)
	}
	if cfg.Resync == 0 {
		cfg.Resync = defaultResync
	}
	if cfg.Workers == 0 {
		cfg.Workers = defaultWorkers
	}
	if cfg.NodeIP == nil {
		cfg.NodeIP = func() string { return "" }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("pods: data dir %s: %w", cfg.DataDir, err)
	}
	cfg.DataDir = abs
	for _, d := range []string{podsRoot(abs), logsRoot(abs)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("pods: make %s: %w", d, err)
		}
	}
	return &Manager{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "pods", "node", cfg.NodeName),
		backoff:    newBackoff(cfg.BackoffInitial, cfg.BackoffMax),
		pods:       map[types.UID]*podState{},
		containers: map[types.UID]map[string]runtime.Container{},
		finished:   map[types.UID]bool{},
	}, nil
}

// LogDir is the directory of one pod's container logs:
// <dataDir>/logs/<namespace>_<name>_<uid>, holding <container>/<attempt>.log.
// The agent's log server and the tests use it to find the same files.
func LogDir(dataDir, namespace, name, uid string) string {
	return filepath.Join(logsRoot(dataDir), namespace+"_"+name+"_"+uid)
}

func podsRoot(dataDir string) string { return filepath.Join(dataDir, "pods") }
func logsRoot(dataDir string) string { return filepath.Join(dataDir, "logs") }

// podDir is the directory of one pod's volumes and etc files.
func (m *Manager) podDir(uid types.UID) string {
	return filepath.Join(podsRoot(m.cfg.DataDir), string(uid))
}

// RunningPods is the number of pods whose phase is Running.
func (m *Manager) RunningPods() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, st := range m.pods {
		if st.phase.Load() == string(corev1.PodRunning) {
			n++
		}
	}
	return n
}

// Run runs the pods bound to the node until ctx ends. It returns when ctx
// ends, leaving containers running: an agent restart must never restart
// them (the next Manager's Run adopts them). Call it once per Manager.
func (m *Manager) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.runCtx = ctx

	// Events: one broadcaster per Run, shut down (and waited for) on the
	// way out so no write outlives Run.
	events := m.cfg.EventClient
	if events == nil {
		events = m.cfg.Client
	}
	sink := eventsink.New(&typedcorev1.EventSinkImpl{Interface: events.CoreV1().Events("")})
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(sink)
	m.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: eventComponent, Host: m.cfg.NodeName})
	defer func() {
		sink.Close(5 * time.Second)
		broadcaster.Shutdown()
	}()

	m.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 10*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods-" + m.cfg.NodeName})

	factory := informers.NewSharedInformerFactoryWithOptions(m.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", m.cfg.NodeName).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	if err := informer.AddIndexers(cache.Indexers{uidIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return []string{string(p.UID)}, nil
		}
		return nil, nil
	}}); err != nil {
		return fmt.Errorf("pods: informer index: %w", err)
	}
	m.indexer = informer.GetIndexer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    m.enqueuePod,
		UpdateFunc: func(_, obj any) { m.enqueuePod(obj) },
		DeleteFunc: m.enqueuePod,
	}); err != nil {
		return fmt.Errorf("pods: informer handler: %w", err)
	}
	factory.Start(ctx.Done())

	var wg sync.WaitGroup
	defer func() {
		cancel()
		m.queue.ShutDown()
		factory.Shutdown()
		wg.Wait()
		m.probeWG.Wait()
	}()

	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return nil // ctx ended first
	}
	// Know the runtime's containers before the first sync, so that running
	// containers are adopted rather than started again. If the runtime is
	// down, the relist loop retries and syncs wait for it (they fail on
	// ErrUnavailable without touching status).
	if err := m.relist(ctx); err != nil {
		m.log.Warn("initial runtime relist failed; retrying", "err", err)
	}
	m.log.Info("pod manager running", "pods", len(m.indexer.ListKeys()))

	wg.Add(2)
	go func() { defer wg.Done(); m.watchRuntime(ctx) }()
	go func() { defer wg.Done(); m.relistLoop(ctx) }()
	for range m.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	return nil
}

// enqueuePod queues a pod (or a deleted pod's tombstone) by UID.
func (m *Manager) enqueuePod(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		m.queue.Add(string(p.UID))
	}
}

func (m *Manager) processNext(ctx context.Context) bool {
	key, quit := m.queue.Get()
	if quit {
		return false
	}
	defer m.queue.Done(key)
	next, err := m.sync(ctx, types.UID(key))
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		lvl := slog.LevelWarn
		if errors.Is(err, runtime.ErrUnavailable) {
			lvl = slog.LevelDebug // the agent reports it on the Node; no need to shout per pod
		}
		m.log.Log(ctx, lvl, "pod sync failed", "pod", m.podKey(types.UID(key)), "err", err)
		m.queue.AddRateLimited(key)
		return true
	}
	m.queue.Forget(key)
	if next > 0 {
		m.queue.AddAfter(key, next)
	}
	return true
}

// podKey names a pod in logs: namespace/name when known, else its UID.
func (m *Manager) podKey(uid types.UID) string {
	if p := m.lookup(uid); p != nil {
		return p.Namespace + "/" + p.Name
	}
	return string(uid)
}

// lookup returns the cached pod with uid, nil if the API has none. The
// object is shared with the informer: never modify it.
func (m *Manager) lookup(uid types.UID) *corev1.Pod {
	objs, err := m.indexer.ByIndex(uidIndex, string(uid))
	if err != nil || len(objs) == 0 {
		return nil
	}
	return objs[0].(*corev1.Pod)
}

// watchRuntime turns runtime events into syncs of the pods they concern,
// subscribing again whenever the stream ends (the runtime restarted).
func (m *Manager) watchRuntime(ctx context.Context) {
	for ctx.Err() == nil {
		for ev := range m.cfg.Runtime.Events(ctx) {
			if ev.PodUID != "" {
				m.queue.Add(ev.PodUID)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// relistLoop relists the runtime every Resync, which finds containers the
// cache missed (events may be dropped) and queues pods gone from the API.
func (m *Manager) relistLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.relist(ctx); err != nil && ctx.Err() == nil {
			m.log.Debug("runtime relist failed", "err", err)
		}
	}
}

// relist adds every container the runtime has to the cache and queues each
// pod that has containers, a network, a directory or logs but is not in the
// API: those are orphans to clean up. It only adds to the cache, never
// drops: a worker may have just made a container the listing predates.
func (m *Manager) relist(ctx context.Context) error {
	list, err := m.cfg.Runtime.ListContainers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	uids := map[types.UID]bool{}
	m.mu.Lock()
	for _, c := range list {
		uid := types.UID(c.PodUID)
		if uid == "" {
			continue
		}
		if m.containers[uid] == nil {
			m.containers[uid] = map[string]runtime.Container{}
		}
		if _, ok := m.containers[uid][c.ID]; !ok {
			m.containers[uid][c.ID] = c
		}
		uids[uid] = true
	}
	m.mu.Unlock()
	m.listed.Store(true)
	if m.cfg.Network != nil {
		if netPods, err := m.cfg.Network.Pods(); err == nil {
			for _, u := range netPods {
				uids[types.UID(u)] = true
			}
		} else {
			m.log.Debug("list pod networks", "err", err)
		}
	}
	if ents, err := os.ReadDir(podsRoot(m.cfg.DataDir)); err == nil {
		for _, e := range ents {
			uids[types.UID(e.Name())] = true
		}
	}
	if ents, err := os.ReadDir(logsRoot(m.cfg.DataDir)); err == nil {
		for _, e := range ents {
			if i := strings.LastIndexByte(e.Name(), '_'); i >= 0 {
				uids[types.UID(e.Name()[i+1:])] = true
			}
		}
	}
	for uid := range uids {
		if m.lookup(uid) == nil {
			m.queue.Add(string(uid))
		}
	}
	return nil
}
