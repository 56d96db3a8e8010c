package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/agent/gossip"
	"flotilla/agent/network"
	"flotilla/agent/pods"
	"flotilla/agent/runtime"
	"flotilla/agent/server"
	"flotilla/cluster"
	"flotilla/netproxy"
)

// Network is what the agent needs of the pod network (package
// agent/network's Manager).
type Network interface {
	pods.Network
	SetPodCIDR(cidr string) error
	Ready() error
	SyncRoutes(routes []network.Route) error
	DialContext(ctx context.Context, uid, network, addr string) (net.Conn, error)
}

// Config configures an agent. NodeName, DataDir, NodeIP, Runtime, Network
// and Members are required; the zero value of the rest is its default.
type Config struct {
	// NodeName is the Node's name and, for health, its gossip member name.
	NodeName string
	// DataDir is the agent's own directory (<data-dir>/agent): pod
	// volumes and logs.
	DataDir string
	// NodeIP is the Node's InternalIP: pods' hostIP, where the agent
	// endpoint listens, and where other nodes route this node's pods.
	NodeIP string
	// AgentPort is the agent endpoint's port (logs, exec, port-forward,
	// images), default 10250.
	AgentPort int
	// Labels and Taints are set on the Node at registration.
	Labels map[string]string
	Taints []corev1.Taint
	// MaxPods is the pod capacity, default 110.
	MaxPods int
	Runtime runtime.Runtime
	Network Network
	// Members is the gossip view (the agent's own pool, or the server's
	// when both run in one process): masters' API addresses come from it.
	Members func() []cluster.Member
	// Servers are API addresses (host:port) tried before the gossiped
	// ones: the local master of an all-in-one process, or --server.
	Servers []string
	// BackoffInitial and BackoffMax bound the container restart back-off
	// (default 10s doubling to 5m, as the kubelet).
	BackoffInitial, BackoffMax time.Duration
	// StatusResync is how often the Node's status is compared with what
	// the agent believes even without a change (default 5 minutes). It is
	// not a heartbeat: nothing is written unless it differs.
	StatusResync time.Duration
	// Version is the Node's kubeletVersion.
	Version string
	// Proxy runs the Service proxy (package netproxy) in the agent.
	Proxy bool
	// NodePortAddresses are where the proxy serves NodePorts, default the
	// node IP and 127.0.0.1.
	NodePortAddresses []netip.Addr
	// Registry gets the agent's metrics; the agent endpoint serves it at
	// /metrics. Nil: a registry of the agent's own.
	Registry *prometheus.Registry
	// Credentials: with them the agent talks HTTPS to the API with its node
	// certificate and serves its endpoint over TLS (EndpointTLS, which must
	// ask for the API servers' client certificates). Without them, plain
	// HTTP (in-process tests of this package only).
	Credentials *Credentials
	Logger      *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	client kubernetes.Interface
	events kubernetes.Interface
	dialer *apiDialer
	sys    sysInfo

	mu        sync.Mutex
	podCIDR   string
	proxy     *netproxy.Proxy
	health    health
	healthSet chan struct{} // pinged when health changes
}

// New checks the configuration and builds the API client; Run does the
// work.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" || cfg.DataDir == "" || cfg.NodeIP == "" || cfg.Runtime == nil || cfg.Network == nil || cfg.Members == nil {
		return nil, errors.New("agent: NodeName, DataDir, NodeIP, Runtime, Network and Members are required")
	}
	if net.ParseIP(cfg.NodeIP) == nil {
		return nil, fmt.Errorf("agent: node IP %q is not an IP address", cfg.NodeIP)
	}
	if cfg.AgentPort == 0 {
		cfg.AgentPort = 10250
	}
	if cfg.MaxPods <= 0 {
		cfg.MaxPods = 110
	}
	if cfg.StatusResync <= 0 {
		cfg.StatusResync = 5 * time.Minute
	}
	if cfg.Version == "" {
		cfg.Version = "v0.0.0-flotilla"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if len(cfg.NodePortAddresses) == 0 {
		ip, _ := netip.ParseAddr(cfg.NodeIP)
		cfg.NodePortAddresses = []netip.Addr{ip.Unmap()}
		if lo := netip.MustParseAddr("127.0.0.1"); ip.Unmap() != lo {
			cfg.NodePortAddresses = append(cfg.NodePortAddresses, lo)
		}
	}
	a := &Agent{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "agent", "node", cfg.NodeName),
		sys:       readSysInfo(),
		healthSet: make(chan struct{}, 1),
	}
	a.dialer = newAPIDialer(cfg.Servers, func() []string {
		return gossip.APIAddrs(cfg.Members())
	})
	a.dialer.onDial = func(addr string) { a.log.Info("talking to master", "api", addr) }
	rc := &rest.Config{
		// The host names no master: the dialer picks one per connection.
		Host:      "http://flotilla-api",
		UserAgent: "flotilla-agent/" + cfg.NodeName,
		// A pod costs about two status writes; a burst of 20 pods a
		// second must not wait on the client's own limiter.
		QPS:   100,
		Burst: 200,
		Dial:  a.dialer.DialContext,
	}
	if c := cfg.Credentials; c != nil {
		rc.Host = "https://flotilla-api"
		// Every master's certificate names the in-cluster Service name, so
		// whichever master the dialer picks verifies under it.
		rc.TLSClientConfig = rest.TLSClientConfig{
			ServerName: APIServerName,
			CAData:     c.CA, CertData: c.Cert, KeyData: c.Key,
		}
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	a.client = cs
	// Events have their own budget (the kubelet's 50/s), so a burst of
	// them never delays pod status.
	ec := rest.CopyConfig(rc)
	ec.QPS, ec.Burst = 50, 100
	if a.events, err = kubernetes.NewForConfig(ec); err != nil {
		return nil, err
	}
	return a, nil
}

// APIServerName is the name the agent verifies masters' certificates
// under: the in-cluster name of the default/kubernetes Service, which every
// master's certificate carries.
const APIServerName = "kubernetes.default.svc"

// Credentials are what the agent received when it joined: the cluster CA,
// its node certificate and key (PEM), and the TLS configuration of its
// endpoint.
type Credentials struct {
	CA, Cert, Key []byte
	EndpointTLS   *tls.Config
}

// Client is the agent's API client (it follows the masters).
func (a *Agent) Client() kubernetes.Interface { return a.client }

// Run registers the Node, then runs the pods, the Node status and the
// agent endpoint until ctx ends. Containers keep running when it returns:
// a restarted agent adopts them.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("agent data dir: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(a.cfg.NodeIP, strconv.Itoa(a.cfg.AgentPort)))
	if err != nil {
		return fmt.Errorf("agent endpoint: %w", err)
	}
	if c := a.cfg.Credentials; c != nil {
		ln = tls.NewListener(ln, c.EndpointTLS)
	}
	srv := &http.Server{
		Handler: server.New(server.Config{
			Runtime: a.cfg.Runtime,
			Network: a.cfg.Network,
			Logger:  a.log.With("component", "agent-server"),
			Extra:   a.extraRoutes(),
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent endpoint stopped", "err", err)
		}
	}()
	defer srv.Close()

	a.checkHealth(ctx)
	if err := a.register(ctx); err != nil {
		return err
	}
	pm, err := pods.New(pods.Config{
		NodeName:       a.cfg.NodeName,
		Client:         a.client,
		EventClient:    a.events,
		Runtime:        a.cfg.Runtime,
		Network:        a.cfg.Network,
		DataDir:        a.cfg.DataDir,
		NodeIP:         func() string { return a.cfg.NodeIP },
		BackoffInitial: a.cfg.BackoffInitial,
		BackoffMax:     a.cfg.BackoffMax,
		Logger:         a.cfg.Logger,
	})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var proxyErr error
	if a.cfg.Proxy {
		if err := a.startProxy(ctx, &wg, &proxyErr); err != nil {
			return err
		}
	}
	wg.Add(3)
	go func() { defer wg.Done(); wait.UntilWithContext(ctx, a.checkHealth, healthInterval) }()
	go func() { defer wg.Done(); a.nodeLoop(ctx) }()
	var podErr error
	go func() { defer wg.Done(); podErr = pm.Run(ctx) }()
	a.log.Info("agent started", "endpoint", ln.Addr().String(), "data_dir", a.cfg.DataDir)
	wg.Wait()
	if podErr != nil && ctx.Err() == nil {
		return podErr
	}
	if proxyErr != nil && ctx.Err() == nil {
		return proxyErr
	}
	return nil
}
