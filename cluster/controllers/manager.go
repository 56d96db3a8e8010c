package controllers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"flotilla/api/eventsink"
)

// Controller names, for Config.Controllers.
const (
	ReplicaSet       = "replicaset"
	Deployment       = "deployment"
	Endpoints        = "endpoints"
	Namespace        = "namespace"
	ServiceAccount   = "serviceaccount"
	NodeIPAM         = "nodeipam"
	PodGC            = "podgc"
	GarbageCollector = "garbagecollector"
	NodeLifecycle    = "nodelifecycle"
	MasterEndpoints  = "masterendpoints"
	RootCAPublisher  = "rootca"
)

// AllControllers lists every controller in the order the Manager starts them.
var AllControllers = []string{
	ReplicaSet, Deployment, Endpoints, Namespace, ServiceAccount,
	NodeIPAM, PodGC, GarbageCollector, NodeLifecycle, MasterEndpoints,
	RootCAPublisher,
}

// Defaults of Config's zero values.
const (
	DefaultWorkers                  = 4
	DefaultResyncPeriod             = 10 * time.Minute
	DefaultClusterCIDR              = "10.244.0.0/16"
	DefaultNodeCIDRMaskSize         = 24
	DefaultTerminatedPodGCThreshold = 12500
	DefaultPodGCPeriod              = 20 * time.Second
	DefaultPodEvictionTimeout       = 30 * time.Second
	DefaultNodeEvictionRate         = 10
	DefaultNodeMonitorPeriod        = 5 * time.Second
	DefaultNodeUnknownGracePeriod   = 40 * time.Second
)

// Config configures a Manager. The zero value of every field but Client is
// a default.
type Config struct {
	// Client reaches the API (required). Every read and write of every
	// controller goes through it: one shared informer factory for reads,
	// typed clients for writes.
	Client kubernetes.Interface
	// Logger receives structured logs (default: discard).
	Logger *slog.Logger
	// Controllers names the controllers to run (see AllControllers);
	// empty runs all of them. NodeLifecycle runs only when NodeHealth is set.
	Controllers []string
	// Workers is the number of reconcile workers per controller (default 4).
	// Node IPAM always runs one: allocation is single-threaded by design.
	Workers int
	// ResyncPeriod re-delivers every cached object to the handlers, a safety
	// net for missed events and expired expectations (default 10m;
	// negative disables).
	ResyncPeriod time.Duration

	// ClusterCIDR is the IPv4 range node pod CIDRs are carved from
	// (default 10.244.0.0/16).
	ClusterCIDR string
	// NodeCIDRMaskSize is the prefix length of each node's pod CIDR
	// (default 24).
	NodeCIDRMaskSize int

	// TerminatedPodGCThreshold: when more Succeeded/Failed pods exist, the
	// oldest beyond it are deleted (default 12500; negative disables).
	TerminatedPodGCThreshold int
	// PodGCPeriod is how often pod GC scans the caches (default 20s). A pod
	// bound to a missing node is deleted when two scans in a row and a live
	// read agree that the node is gone.
	PodGCPeriod time.Duration

	// NodeHealth is the gossip view of node agents. nil disables the node
	// lifecycle controller.
	NodeHealth NodeHealth
	// PodEvictionTimeout: pods that do not tolerate the unreachable taint are
	// deleted this long after their node became unreachable (default 30s).
	PodEvictionTimeout time.Duration
	// NodeEvictionRate is how many nodes per second may have pods evicted
	// (default 10).
	NodeEvictionRate float64
	// NodeMonitorPeriod is how often every node's health is re-checked even
	// without a NodeHealth notification (default 5s).
	NodeMonitorPeriod time.Duration
	// NodeUnknownGracePeriod: a node gossip does not know at all is treated
	// as unreachable once it has been unknown this long (default 40s).
	NodeUnknownGracePeriod time.Duration

	// Masters lists the API addresses (host:port) of the masters gossip
	// reports alive: the Endpoints of default/kubernetes. nil disables
	// that controller.
	Masters func() []string

	// RootCA is the cluster CA certificate (PEM) published as ConfigMap
	// kube-root-ca.crt {ca.crt} in every namespace, for pods to verify
	// the API with (rootca.go). nil disables that controller.
	RootCA []byte
}

func (c Config) withDefaults() (Config, error) {
	if c.Client == nil {
		return c, errors.New("controllers: Config.Client is required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.Controllers) == 0 {
		c.Controllers = AllControllers
	}
	for _, name := range c.Controllers {
		if !contains(AllControllers, name) {
			return c, fmt.Errorf("controllers: unknown controller %q", name)
		}
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	switch {
	case c.ResyncPeriod == 0:
		c.ResyncPeriod = DefaultResyncPeriod
	case c.ResyncPeriod < 0:
		c.ResyncPeriod = 0
	}
	if c.ClusterCIDR == "" {
		c.ClusterCIDR = DefaultClusterCIDR
	}
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = DefaultNodeCIDRMaskSize
	}
	_, cidr, err := net.ParseCIDR(c.ClusterCIDR)
	if err != nil || cidr.IP.To4() == nil {
		return c, fmt.Errorf("controllers: ClusterCIDR %q is not an IPv4 CIDR", c.ClusterCIDR)
	}
	if ones, _ := cidr.Mask.Size(); c.NodeCIDRMaskSize < ones || c.NodeCIDRMaskSize > 30 || c.NodeCIDRMaskSize-ones > 24 {
		return c, fmt.Errorf("controllers: NodeCIDRMaskSize %d does not fit ClusterCIDR %s", c.NodeCIDRMaskSize, c.ClusterCIDR)
	}
	if c.TerminatedPodGCThreshold == 0 {
		c.TerminatedPodGCThreshold = DefaultTerminatedPodGCThreshold
	}
	if c.PodGCPeriod <= 0 {
		c.PodGCPeriod = DefaultPodGCPeriod
	}
	if c.PodEvictionTimeout <= 0 {
		c.PodEvictionTimeout = DefaultPodEvictionTimeout
	}
	if c.NodeEvictionRate <= 0 {
		c.NodeEvictionRate = DefaultNodeEvictionRate
	}
	if c.NodeMonitorPeriod <= 0 {
		c.NodeMonitorPeriod = DefaultNodeMonitorPeriod
	}
	if c.NodeUnknownGracePeriod <= 0 {
		c.NodeUnknownGracePeriod = DefaultNodeUnknownGracePeriod
	}
	return c, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Manager runs the controllers over one shared informer factory.
type Manager struct {
	cfg Config
	err error
}

// NewManager returns a Manager for cfg. Configuration errors surface from Run.
func NewManager(cfg Config) *Manager {
	c, err := cfg.withDefaults()
	return &Manager{cfg: c, err: err}
}

// runner is what every controller is to the Manager.
type runner interface {
	// run works until ctx ends, then returns once its goroutines have.
	run(ctx context.Context)
}

// base is what every controller gets from the Manager.
type base struct {
	cfg       Config
	client    kubernetes.Interface
	factory   informers.SharedInformerFactory
	log       *slog.Logger
	broadcast record.EventBroadcaster
}

func (b *base) recorder(component string) record.EventRecorder {
	return b.broadcast.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component})
}

func (b *base) logger(name string) *slog.Logger { return b.log.With("controller", name) }

// Run builds the informers and controllers, waits for the caches, runs the
// controllers and returns when ctx ends and every goroutine it started has
// stopped. It returns nil on cancellation: it is a cluster.LeaderService's
// Run, called once per leadership term.
func (m *Manager) Run(ctx context.Context) error {
	if m.err != nil {
		return m.err
	}
	cfg := m.cfg
	log := cfg.Logger.With("component", "controllers")
	factory := informers.NewSharedInformerFactory(cfg.Client, cfg.ResyncPeriod)
	// The broadcaster writes core/v1 Events through its correlator, which
	// aggregates similar events and rate-limits each source and object.
	// It is shut down (deferred) only after every worker has returned, so
	// no controller records into a stopped broadcaster; then the sink waits
	// for the writes in flight.
	broadcast := record.NewBroadcaster()
	sink := eventsink.New(&typedcorev1.EventSinkImpl{Interface: cfg.Client.CoreV1().Events("")})
	broadcast.StartRecordingToSink(sink)
	defer func() {
		broadcast.Shutdown()
		sink.Close(5 * time.Second)
	}()
	b := &base{cfg: cfg, client: cfg.Client, factory: factory, log: log, broadcast: broadcast}

	var runners []runner
	for _, name := range cfg.Controllers {
		var r runner
		switch name {
		case ReplicaSet:
			r = newReplicaSetController(b)
		case Deployment:
			r = newDeploymentController(b)
		case Endpoints:
			r = newEndpointsController(b)
		case Namespace:
			r = newNamespaceController(b)
		case ServiceAccount:
			r = newServiceAccountController(b)
		case NodeIPAM:
			r = newNodeIPAMController(b)
		case PodGC:
			r = newPodGCController(b)
		case GarbageCollector:
			r = newGarbageCollector(b)
		case NodeLifecycle:
			if cfg.NodeHealth == nil {
				continue
			}
			r = newNodeLifecycleController(b)
		case MasterEndpoints:
			if cfg.Masters == nil {
				continue
			}
			r = newMasterEndpointsController(b)
		case RootCAPublisher:
			if cfg.RootCA == nil {
				continue
			}
			r = newRootCAController(b)
		}
		runners = append(runners, r)
	}

	factory.Start(ctx.Done())
	// Shutdown waits for the informers' goroutines, which stop with ctx.
	defer factory.Shutdown()
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("controllers: cache of %v did not sync", typ)
		}
	}
	log.Info("controllers started", "controllers", cfg.Controllers)
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.run(ctx)
		}()
	}
	wg.Wait()
	log.Info("controllers stopped")
	return nil
}

// Index names on the shared informers.
const (
	// indexOwnerUID indexes objects by the UID of each of their owners.
	indexOwnerUID = "ownerUID"
	// indexNodeName indexes pods by spec.nodeName.
	indexNodeName = "nodeName"
	// indexOrphan indexes objects without a controller by namespace, so a
	// controller looking for adoptable objects need not scan its namespace.
	indexOrphan = "orphan"
)

func orphanIndex(obj any) ([]string, error) {
	m, err := meta.Accessor(obj)
	if err != nil || metav1.GetControllerOfNoCopy(m) != nil {
		return nil, nil
	}
	return []string{m.GetNamespace()}, nil
}

// ensureIndex adds an indexer to a shared informer unless one of that name
// is there. Controllers are built one after the other before the factory
// starts, so this needs no lock.
func ensureIndex(inf cache.SharedIndexInformer, name string, fn cache.IndexFunc) cache.SharedIndexInformer {
	if _, ok := inf.GetIndexer().GetIndexers()[name]; ok {
		return inf
	}
	if err := inf.AddIndexers(cache.Indexers{name: fn}); err != nil {
		// Only possible after Start or on a duplicate name, both bugs here.
		panic(fmt.Sprintf("controllers: add indexer %s: %v", name, err))
	}
	return inf
}

// podInformer is the shared pod informer with the owner and node indexes.
func (b *base) podInformer() cache.SharedIndexInformer {
	inf := b.factory.Core().V1().Pods().Informer()
	ensureIndex(inf, indexOwnerUID, ownerUIDIndex)
	ensureIndex(inf, indexOrphan, orphanIndex)
	return ensureIndex(inf, indexNodeName, func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	})
}

// replicaSetInformer is the shared ReplicaSet informer with the owner index.
func (b *base) replicaSetInformer() cache.SharedIndexInformer {
	inf := b.factory.Apps().V1().ReplicaSets().Informer()
	ensureIndex(inf, indexOrphan, orphanIndex)
	return ensureIndex(inf, indexOwnerUID, ownerUIDIndex)
}
