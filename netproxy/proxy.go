package netproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"flotilla/internal/rtnl"
)

// DefaultServiceCIDR is where the API allocates ClusterIPs from; the
// proxy removes addresses in it that it finds on its interface and no
// Service wants (left by an earlier run).
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")

// Config configures a Proxy. Client and NodeName are required.
type Config struct {
	Client   kubernetes.Interface
	NodeName string
	// NodePortAddresses are the addresses NodePorts listen on: the node's
	// own addresses (the agent gives its node IP and 127.0.0.1). None
	// means NodePorts are not served on this node.
	NodePortAddresses []netip.Addr
	// Interface is where ClusterIPs are added as host addresses, default
	// "lo": an address there is reachable from this node and from its
	// pods (through their gateway, the bridge), and from nowhere else.
	Interface string
	// ServiceCIDR, default DefaultServiceCIDR.
	ServiceCIDR netip.Prefix
	// NodeAlive reports whether gossip believes a node alive (nil: all).
	NodeAlive func(node string) bool
	// DialTimeout (per endpoint attempt, default 1s), DrainTimeout
	// (default 30s) and UDPIdleTimeout (default 60s): see dataplaneOptions.
	DialTimeout, DrainTimeout, UDPIdleTimeout time.Duration
	// Registerer gets the proxy's metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Applied, when set, is called after a Service's frontends were
	// brought up to date with the objects the proxy has seen.
	Applied func(svc types.NamespacedName)
	// Workers sync Services in parallel, default 2.
	Workers int
	Logger  *slog.Logger
}

// Proxy makes every Service reachable on this node: it watches Services
// and Endpoints and keeps one frontend per ClusterIP:port and per node
// address:nodePort.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	opts    *dataplaneOptions
	metrics *Metrics
	ifindex int

	svcLister corelisters.ServiceLister
	epLister  corelisters.EndpointsLister
	queue     workqueue.TypedRateLimitingInterface[types.NamespacedName]

	mu        sync.Mutex
	services  map[types.NamespacedName]map[frontendKey]*running
	addrRefs  map[netip.Addr]int // ClusterIPs on the interface, by frontends using them
	changedAt map[types.NamespacedName]time.Time
	warned    map[types.NamespacedName]bool
	endpoints int // distinct endpoints summed over services, for the gauge
}

// running is a frontend and what it was started for.
type running struct {
	fe   frontend
	spec frontendSpec
	set  BackendSet
}

// New checks the configuration.
func New(cfg Config) (*Proxy, error) {
	if cfg.Client == nil || cfg.NodeName == "" {
		return nil, errors.New("netproxy: Client and NodeName are required")
	}
	if cfg.Interface == "" {
		cfg.Interface = "lo"
	}
	if !cfg.ServiceCIDR.IsValid() {
		cfg.ServiceCIDR = DefaultServiceCIDR
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = 60 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ifc, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("netproxy: interface for ClusterIPs: %w", err)
	}
	p := &Proxy{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "netproxy"),
		metrics:   NewMetrics(cfg.Registerer),
		ifindex:   ifc.Index,
		services:  map[types.NamespacedName]map[frontendKey]*running{},
		addrRefs:  map[netip.Addr]int{},
		changedAt: map[types.NamespacedName]time.Time{},
		warned:    map[types.NamespacedName]bool{},
	}
	p.opts = &dataplaneOptions{
		NodeAlive:      cfg.NodeAlive,
		DialTimeout:    cfg.DialTimeout,
		DrainTimeout:   cfg.DrainTimeout,
		UDPIdleTimeout: cfg.UDPIdleTimeout,
		Metrics:        p.metrics,
		Logger:         p.log,
	}
	return p, nil
}

// Run serves until ctx ends, then closes every frontend and removes the
// ClusterIPs it added.
func (p *Proxy) Run(ctx context.Context) error {
	// Resync 0: nothing changes unless an object does; a failed sync is
	// retried by the queue.
	factory := informers.NewSharedInformerFactory(p.cfg.Client, 0)
	svcInf := factory.Core().V1().Services().Informer()
	epInf := factory.Core().V1().Endpoints().Informer()
	p.svcLister = factory.Core().V1().Services().Lister()
	p.epLister = factory.Core().V1().Endpoints().Lister()
	p.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[types.NamespacedName](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "netproxy"})
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    p.enqueue,
		UpdateFunc: func(_, cur any) { p.enqueue(cur) },
		DeleteFunc: p.enqueue,
	}
	if _, err := svcInf.AddEventHandler(handler); err != nil {
		return err
	}
	if _, err := epInf.AddEventHandler(handler); err != nil {
		return err
	}
	defer p.shutdown()
	defer p.queue.ShutDown()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), svcInf.HasSynced, epInf.HasSynced) {
		return ctx.Err()
	}
	// The first pass runs before the workers: once it is done every
	// wanted ClusterIP is on the interface, so what else is there in the
	// Service range was left by an earlier run and can go.
	svcs, _ := p.svcLister.List(labels.Everything())
	for _, s := range svcs {
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		if err := p.sync(key); err != nil {
			p.log.Warn("sync service", "service", key, "err", err)
		}
	}
	p.removeStaleAddrs()
	p.log.Info("service proxy started", "services", len(svcs), "node", p.cfg.NodeName)
	var wg sync.WaitGroup
	for range p.cfg.Workers {
		wg.Add(1)
		go func() { defer wg.Done(); p.work() }()
	}
	<-ctx.Done()
	p.queue.ShutDown()
	wg.Wait()
	return nil
}

func (p *Proxy) enqueue(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	var key types.NamespacedName
	switch o := obj.(type) {
	case *corev1.Service:
		key = types.NamespacedName{Namespace: o.Namespace, Name: o.Name}
	case *corev1.Endpoints:
		key = types.NamespacedName{Namespace: o.Namespace, Name: o.Name}
	default:
		return
	}
	p.mu.Lock()
	if _, ok := p.changedAt[key]; !ok {
		p.changedAt[key] = time.Now()
	}
	p.mu.Unlock()
	p.queue.Add(key)
}

func (p *Proxy) work() {
	for {
		key, quit := p.queue.Get()
		if quit {
			return
		}
		if err := p.sync(key); err != nil {
			p.log.Warn("sync service; retrying", "service", key, "err", err)
			p.queue.AddRateLimited(key)
		} else {
			p.queue.Forget(key)
		}
		p.queue.Done(key)
	}
}

// sync brings one Service's frontends in line with its objects: new ones
// started, changed ones given their new endpoints, gone ones closed.
func (p *Proxy) sync(key types.NamespacedName) error {
	p.mu.Lock()
	since, timed := p.changedAt[key]
	delete(p.changedAt, key)
	p.mu.Unlock()

	svc, err := p.svcLister.Services(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		svc = nil
	} else if err != nil {
		return err
	}
	eps, err := p.epLister.Endpoints(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		eps = nil
	} else if err != nil {
		return err
	}
	want, skipped := desiredFrontends(svc, eps, p.cfg.NodeName, p.cfg.NodePortAddresses)
	p.warnSkipped(key, skipped)

	p.mu.Lock()
	have := p.services[key]
	before := distinctEndpoints(have) // the sets change in place below
	p.mu.Unlock()
	next := make(map[frontendKey]*running, len(want))
	var errs []error
	var starting []wanted
	for k, w := range want {
		if r, ok := have[k]; !ok || w.spec != r.spec {
			starting = append(starting, w)
		}
	}
	for k, r := range have {
		if w, ok := want[k]; ok && w.spec == r.spec {
			if !sameSet(w.set, r.set) {
				r.fe.Update(w.set)
				r.set = w.set
			}
			next[k] = r
			continue
		}
		r.fe.Close()
		// Let go of the address once the new frontends hold theirs: one
		// that stays (a port renamed, say) never leaves lo in between.
		defer p.releaseAddr(r.spec)
	}
	for _, w := range starting {
		// The listener first (it binds with IP_FREEBIND), then the
		// address: a ClusterIP is never on lo without its listener.
		fe, err := startFrontend(w.spec, w.set, p.opts)
		if err != nil {
			errs = append(errs, fmt.Errorf("listen %s/%s for %s: %w", w.spec.Addr, w.spec.Protocol, w.spec.Service, err))
			continue
		}
		if err := p.holdAddr(w.spec); err != nil {
			fe.Close()
			errs = append(errs, err)
			continue
		}
		next[frontendKey{Addr: w.spec.Addr, Protocol: w.spec.Protocol}] = &running{fe: fe, spec: w.spec, set: w.set}
	}
	// A port that kept no frontend takes its metric series with it.
	kept := map[ServicePortName]bool{}
	for _, r := range next {
		kept[r.spec.Service] = true
	}
	for _, r := range have {
		if !kept[r.spec.Service] {
			p.metrics.Forget(r.spec.Service)
		}
	}
	p.mu.Lock()
	if len(next) == 0 {
		delete(p.services, key)
		delete(p.warned, key)
	} else {
		p.services[key] = next
	}
	// The endpoint total moves by this Service's change only: recounting
	// every Service on each sync would make a start with many Services
	// quadratic.
	p.endpoints += distinctEndpoints(next) - before
	services, endpoints := len(p.services), p.endpoints
	p.mu.Unlock()
	p.metrics.SetCounts(services, endpoints)
	if err := errors.Join(errs...); err != nil {
		// The time of the change stays with the key: the retry that
		// succeeds is when it took effect.
		p.mu.Lock()
		if _, ok := p.changedAt[key]; !ok && timed {
			p.changedAt[key] = since
		}
		p.mu.Unlock()
		return err
	}
	if timed {
		p.metrics.ObserveSync(time.Since(since))
	}
	if p.cfg.Applied != nil {
		p.cfg.Applied(key)
	}
	return nil
}

// distinctEndpoints counts the endpoints one Service's frontends use.
func distinctEndpoints(fes map[frontendKey]*running) int {
	seen := map[netip.AddrPort]bool{}
	for _, r := range fes {
		for _, e := range r.set.Endpoints {
			seen[e.Addr] = true
		}
	}
	return len(seen)
}

func (p *Proxy) warnSkipped(key types.NamespacedName, ports []string) {
	if len(ports) == 0 {
		return
	}
	p.mu.Lock()
	done := p.warned[key]
	p.warned[key] = true
	p.mu.Unlock()
	if !done {
		p.log.Warn("service ports with a protocol other than TCP and UDP are not proxied", "service", key, "ports", ports)
	}
}

// holdAddr puts a ClusterIP frontend's address on the interface (first
// user adds it). NodePort addresses are the node's own and left alone.
func (p *Proxy) holdAddr(spec frontendSpec) error {
	if spec.NodePort {
		return nil
	}
	a := spec.Addr.Addr()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.addrRefs[a] == 0 {
		if err := rtnl.AddAddr(p.ifindex, a); err != nil {
			return err
		}
	}
	p.addrRefs[a]++
	return nil
}

// releaseAddr drops a frontend's hold; the last one removes the address.
func (p *Proxy) releaseAddr(spec frontendSpec) {
	if spec.NodePort {
		return
	}
	a := spec.Addr.Addr()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.addrRefs[a]--; p.addrRefs[a] > 0 {
		return
	}
	delete(p.addrRefs, a)
	if err := rtnl.DelAddr(p.ifindex, a); err != nil {
		p.log.Warn("remove ClusterIP from interface", "ip", a, "err", err)
	}
}

// removeStaleAddrs removes host addresses in the Service range that no
// frontend holds.
func (p *Proxy) removeStaleAddrs() {
	addrs, err := rtnl.Addrs(p.ifindex)
	if err != nil {
		p.log.Warn("list interface addresses", "err", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pf := range addrs {
		a := pf.Addr()
		if !pf.IsSingleIP() || !p.cfg.ServiceCIDR.Contains(a) || p.addrRefs[a] > 0 {
			continue
		}
		if err := rtnl.DelAddr(p.ifindex, a); err != nil {
			p.log.Warn("remove stale ClusterIP", "ip", a, "err", err)
		} else {
			p.log.Info("removed stale ClusterIP", "ip", a)
		}
	}
}

// shutdown closes every frontend and takes the ClusterIPs off the
// interface: the node stops answering for Services it no longer proxies.
func (p *Proxy) shutdown() {
	p.mu.Lock()
	services := p.services
	p.services = map[types.NamespacedName]map[frontendKey]*running{}
	p.endpoints = 0
	p.mu.Unlock()
	for _, fes := range services {
		for _, r := range fes {
			r.fe.Close()
			p.releaseAddr(r.spec)
		}
	}
}

// FrontendStatus describes one frontend, for status pages and tests.
type FrontendStatus struct {
	Service   string   `json:"service"`
	Address   string   `json:"address"`
	Protocol  string   `json:"protocol"`
	NodePort  bool     `json:"nodePort,omitempty"`
	Endpoints []string `json:"endpoints"`
	Affinity  string   `json:"affinity,omitempty"`
}

// Frontends lists the frontends serving now, sorted by address.
func (p *Proxy) Frontends() []FrontendStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []FrontendStatus
	for _, fes := range p.services {
		for _, r := range fes {
			st := FrontendStatus{
				Service:   r.spec.Service.String(),
				Address:   r.spec.Addr.String(),
				Protocol:  string(r.spec.Protocol),
				NodePort:  r.spec.NodePort,
				Endpoints: []string{},
			}
			for _, e := range r.set.Endpoints {
				st.Endpoints = append(st.Endpoints, e.Addr.String())
			}
			if r.set.AffinityTimeout > 0 {
				st.Affinity = "ClientIP " + r.set.AffinityTimeout.String()
			}
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Address != out[j].Address {
			return out[i].Address < out[j].Address
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out
}
