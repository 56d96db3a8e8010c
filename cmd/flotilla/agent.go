package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/pkg/version"
	"k8s.io/client-go/rest"

	"flotilla/agent"
	"flotilla/agent/containerdproc"
	"flotilla/agent/gossip"
	"flotilla/agent/hollow"
	"flotilla/agent/network"
	ctrdruntime "flotilla/agent/runtime/containerd"
	"flotilla/cluster"
	"flotilla/internal/join"
)

// agentFlags are the agent's own flags; `flotilla agent` and
// `flotilla server --agent` both take them.
type agentFlags struct {
	agentPort           int
	labels              string
	taints              []string
	maxPods             int
	containerdMode      string
	containerdAddress   string
	containerdNamespace string
	runtime             string
	backoffInitial      time.Duration
	backoffMax          time.Duration
	proxy               bool
	nodePortAddresses   []string
}

func (o *agentFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&o.agentPort, "agent-port", 10250, "agent endpoint port (logs, exec, port-forward, images)")
	f.StringVar(&o.labels, "labels", "", "extra Node labels, k=v[,k=v...]")
	f.StringArrayVar(&o.taints, "taints", nil, "Node taints at registration, key[=value]:Effect; repeatable")
	f.IntVar(&o.maxPods, "max-pods", 110, "pod capacity")
	f.StringVar(&o.containerdMode, "containerd", "managed", "managed: run our own containerd under the data dir (reused if already running); external: use --containerd-address")
	f.StringVar(&o.containerdAddress, "containerd-address", "/run/containerd/containerd.sock", "containerd socket with --containerd=external")
	f.StringVar(&o.containerdNamespace, "containerd-namespace", "flotilla", "containerd namespace of this agent's containers")
	f.StringVar(&o.runtime, "runtime", "containerd", "container runtime: containerd, or fake (no containers: a hollow node for scale tests)")
	f.DurationVar(&o.backoffInitial, "restart-backoff", 10*time.Second, "first container restart back-off (doubles per crash)")
	f.DurationVar(&o.backoffMax, "restart-backoff-max", 5*time.Minute, "longest container restart back-off")
	f.BoolVar(&o.proxy, "proxy", true, "run the Service proxy: ClusterIPs as addresses on lo, NodePorts on --nodeport-addresses")
	f.StringSliceVar(&o.nodePortAddresses, "nodeport-addresses", nil, "addresses NodePorts listen on (default: the node IP and 127.0.0.1)")
}

type agentOptions struct {
	agentFlags
	nodeName   string
	dataDir    string
	bind       string
	advertise  string
	gossipPort int
	join       []string
	server     []string
	token      string
	caHash     string
}

// newAgentCommand is `flotilla agent`: a node.
func newAgentCommand(logs *logOptions) *cobra.Command {
	o := &agentOptions{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run a node agent: joins by gossip, registers its Node and runs its pods on containerd",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("containerd-address") && !cmd.Flags().Changed("containerd") {
				o.containerdMode = "external"
			}
			return runAgentCommand(cmd.Context(), o, log)
		},
	}
	host, _ := os.Hostname()
	o.agentFlags.register(cmd)
	f := cmd.Flags()
	f.StringVar(&o.nodeName, "node-name", host, "Node name and gossip member name")
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/flotilla", "directory for pod logs and volumes, network state and a managed containerd")
	f.StringVar(&o.bind, "bind", "0.0.0.0", "address to listen on (gossip, agent endpoint)")
	f.StringVar(&o.advertise, "advertise", "", "the Node's InternalIP, where others reach this node (default: the bind address, or the first non-loopback address)")
	f.IntVar(&o.gossipPort, "gossip-port", 7946, "gossip port (TCP and UDP); 0 picks a free one")
	f.StringArrayVar(&o.join, "join", nil, "gossip address (host:port) of any server or agent to join; repeatable")
	f.StringArrayVar(&o.server, "server", nil, "API address (host:port) to try before the ones gossip reports; repeatable")
	f.StringVar(&o.token, "token", "", "join token from `flotilla token create` (needed once: the node keeps its certificate in the data dir)")
	f.StringVar(&o.caHash, "ca-hash", "", "the cluster CA's hash that `flotilla token create` printed (sha256:...): the agent refuses a cluster whose CA does not match")
	return cmd
}

func runAgentCommand(ctx context.Context, o *agentOptions, log *slog.Logger) error {
	if o.nodeName == "" {
		return errors.New("--node-name is required (the hostname could not be read)")
	}
	labels, err := parseLabels(o.labels)
	if err != nil {
		return err
	}
	switch o.runtime {
	case "fake", "containerd":
	default:
		return fmt.Errorf("--runtime %q: want containerd or fake", o.runtime)
	}
	if len(o.join) == 0 {
		return errors.New("--join is required: the gossip address (host:port) of any server or agent")
	}
	nodeIP, err := nodeAddress(o.bind, o.advertise)
	if err != nil {
		return err
	}
	// Checked before joining anything, so bad input fails fast.
	if err := o.agentFlags.check(); err != nil {
		return err
	}
	creds, err := agentCredentials(ctx, o, nodeIP, log)
	if err != nil {
		return err
	}
	if o.runtime == "fake" {
		return runHollow(ctx, o, labels, creds, log)
	}
	pool, err := gossip.Start(ctx, gossip.Config{
		Name:      o.nodeName,
		Bind:      o.bind,
		Port:      o.gossipPort,
		Advertise: o.advertise,
		Join:      o.join,
		Keys:      creds.GossipKeys,
		// An agent that was down through a key rotation cannot gossip with
		// its old keys; it asks a master over the API (which needs no
		// gossip) for the current ones.
		FetchKeys: fetchGossipKeys(creds, append(append([]string{}, o.server...), apiAddrsFor(o.join, defaultAPIPort)...)),
		Logger:    log,
	})
	if err != nil {
		return err
	}
	err = runAgent(ctx, &o.agentFlags, agentSetup{
		nodeName: o.nodeName,
		dataDir:  o.dataDir,
		nodeIP:   nodeIP,
		members:  pool.Members,
		servers:  o.server,
		creds:    creds,
		pool:     pool,
	}, log)
	// A stopped agent leaves the pool: the node is going away on purpose,
	// not failing.
	pool.Leave(5 * time.Second)
	return err
}

// agentSetup is what the agent takes from its host process: its own
// command or an all-in-one server.
type agentSetup struct {
	nodeName string
	dataDir  string
	nodeIP   string
	members  func() []cluster.Member
	servers  []string
	// registry gets the agent's metrics (the server's, all-in-one).
	registry *prometheus.Registry
	// creds are the node's certificate and the cluster CA.
	creds *join.NodeCreds
	// pool is the agent's own gossip pool (nil all-in-one, where the
	// server's membership carries the node): its keys follow the cluster's.
	pool *gossip.Pool
}

func (o *agentFlags) check() error {
	if o.agentPort <= 0 || o.agentPort > 65535 {
		return fmt.Errorf("--agent-port %d: not a port", o.agentPort)
	}
	if o.maxPods <= 0 {
		return fmt.Errorf("--max-pods %d: must be positive", o.maxPods)
	}
	if _, err := parseTaints(o.taints); err != nil {
		return err
	}
	if _, err := parseLabels(o.labels); err != nil {
		return err
	}
	if _, err := parseAddrs("--nodeport-addresses", o.nodePortAddresses); err != nil {
		return err
	}
	switch o.containerdMode {
	case "managed", "external":
	default:
		return fmt.Errorf("--containerd %q: want managed or external", o.containerdMode)
	}
	if o.backoffInitial <= 0 || o.backoffMax < o.backoffInitial {
		return fmt.Errorf("--restart-backoff %s and --restart-backoff-max %s: want 0 < initial <= max", o.backoffInitial, o.backoffMax)
	}
	return nil
}

// runAgent runs the agent until ctx ends: containerd (ours or the given
// one), the pod network and the agent itself.
func runAgent(ctx context.Context, o *agentFlags, s agentSetup, log *slog.Logger) error {
	if err := o.check(); err != nil {
		return err
	}
	labels, _ := parseLabels(o.labels)
	taints, _ := parseTaints(o.taints)
	nodePortAddrs, _ := parseAddrs("--nodeport-addresses", o.nodePortAddresses)
	// Absolute: containerd's config, the shims and the CNI plugins run
	// elsewhere than our working directory (make run uses ./data).
	dataDir, err := filepath.Abs(s.dataDir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	s.dataDir = dataDir
	agentDir := filepath.Join(s.dataDir, "agent")
	if err := os.MkdirAll(agentDir, 0o700); err != nil {
		return fmt.Errorf("agent data dir: %w", err)
	}
	address := o.containerdAddress
	if o.containerdMode == "managed" {
		p, err := containerdproc.Start(ctx, containerdproc.Config{
			Dir:    filepath.Join(s.dataDir, "containerd"),
			Logger: log.With("component", "containerd"),
		})
		if err != nil {
			return fmt.Errorf("managed containerd: %w", err)
		}
		// Supervised for the agent's life and left running after it: the
		// containers' shims do not need it, and a restarted agent finds
		// it again.
		go p.Supervise(ctx)
		address = p.Address()
	}
	rt, err := ctrdruntime.New(ctx, ctrdruntime.Config{
		Address:   address,
		Namespace: o.containerdNamespace,
		FIFODir:   filepath.Join(agentDir, "fifo"),
		Logger:    log,
	})
	if err != nil {
		return err
	}
	defer rt.Close()
	nw, err := network.New(network.Config{DataDir: filepath.Join(agentDir, "network"), Logger: log})
	if err != nil {
		return err
	}
	endpointTLS, err := s.creds.ServerTLS()
	if err != nil {
		return fmt.Errorf("agent endpoint TLS: %w", err)
	}
	creds := &agent.Credentials{CA: s.creds.CACert, Cert: s.creds.Cert, Key: s.creds.Key, EndpointTLS: endpointTLS}
	a, err := agent.New(agent.Config{
		NodeName:          s.nodeName,
		DataDir:           agentDir,
		NodeIP:            s.nodeIP,
		AgentPort:         o.agentPort,
		Labels:            labels,
		Taints:            taints,
		MaxPods:           o.maxPods,
		Runtime:           rt,
		Network:           nw,
		Members:           s.members,
		Servers:           s.servers,
		BackoffInitial:    o.backoffInitial,
		BackoffMax:        o.backoffMax,
		Version:           version.Get().GitVersion,
		Proxy:             o.proxy,
		NodePortAddresses: nodePortAddrs,
		Registry:          s.registry,
		Credentials:       creds,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	if s.pool != nil {
		go followGossipKeys(ctx, a.Client(), s.pool, s.creds, filepath.Join(s.dataDir, "tls"), log)
	}
	return a.Run(ctx)
}

// nodeAddress is the Node's InternalIP: --advertise, else a specific
// --bind, else the first non-loopback IPv4 address of the machine.
func nodeAddress(bind, advertise string) (string, error) {
	for _, a := range []string{advertise, bind} {
		if a == "" {
			continue
		}
		ip := net.ParseIP(a)
		if ip == nil {
			return "", fmt.Errorf("%q is not an IP address", a)
		}
		if !ip.IsUnspecified() {
			return ip.String(), nil
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("find this machine's address: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("this machine has no non-loopback IPv4 address: give --advertise")
}

// runHollow is --runtime=fake: a hollow node for scale tests (package
// agent/hollow), which talks to one API address.
func runHollow(ctx context.Context, o *agentOptions, labels map[string]string, creds *join.NodeCreds, log *slog.Logger) error {
	if len(o.server) == 0 {
		return errors.New("--runtime=fake needs --server (the API address, host:port)")
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{
		Host:      "https://" + o.server[0],
		UserAgent: "flotilla-agent/" + o.nodeName,
		QPS:       50,
		Burst:     100,
		TLSClientConfig: rest.TLSClientConfig{
			ServerName: agent.APIServerName,
			CAData:     creds.CACert, CertData: creds.Cert, KeyData: creds.Key,
		},
	})
	if err != nil {
		return err
	}
	node, err := hollow.Start(ctx, hollow.Config{
		Name:       o.nodeName,
		Client:     cs,
		GossipBind: o.bind,
		GossipPort: o.gossipPort,
		Join:       o.join,
		Keys:       creds.GossipKeys,
		Labels:     labels,
		Pods:       o.maxPods,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	if len(creds.GossipKeys) > 0 {
		go followGossipKeys(ctx, cs, node, creds, filepath.Join(o.dataDir, "tls"), log)
	}
	<-ctx.Done()
	node.Leave()
	return nil
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels %q: want k=v[,k=v...]", s)
		}
		out[k] = v
	}
	return out, nil
}

// parseTaints reads key[=value]:Effect, as kubectl taint and the kubelet's
// --register-with-taints write them.
func parseTaints(specs []string) ([]corev1.Taint, error) {
	var out []corev1.Taint
	for _, s := range specs {
		kv, effect, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("--taints %q: want key[=value]:Effect", s)
		}
		k, v, _ := strings.Cut(kv, "=")
		switch e := corev1.TaintEffect(effect); e {
		case corev1.TaintEffectNoSchedule, corev1.TaintEffectPreferNoSchedule, corev1.TaintEffectNoExecute:
		default:
			return nil, fmt.Errorf("--taints %q: effect %q: want NoSchedule, PreferNoSchedule or NoExecute", s, effect)
		}
		if k == "" {
			return nil, fmt.Errorf("--taints %q: empty key", s)
		}
		out = append(out, corev1.Taint{Key: k, Value: v, Effect: corev1.TaintEffect(effect)})
	}
	return out, nil
}

// parseAddrs parses a list of IP addresses given with flag.
func parseAddrs(flag string, list []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range list {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s %q: not an IP address", flag, s)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
