package hollow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"flotilla/cluster"
)

// Defaults for a zero Config.
const (
	DefaultCPU    = "4"
	DefaultMemory = "8Gi"
	DefaultPods   = 110
)

// Config configures one hollow node. The zero value of each field is its
// default; Name, Client and GossipBind are required.
type Config struct {
	// Name is the Node name and the gossip member name (node health is
	// looked up by this name).
	Name string
	// Client talks to the API.
	Client kubernetes.Interface
	// GossipBind is the IP to bind gossip to; it is also the Node's
	// InternalIP and the pods' hostIP.
	GossipBind string
	// GossipPort is the gossip port (TCP and UDP); 0 picks a free one.
	GossipPort int
	// Join lists gossip addresses (host:port) of members to join.
	Join []string
	// Labels are added to the Node's well-known labels.
	Labels map[string]string
	// CPU and Memory are capacity quantities (default 4 and 8Gi); Pods is
	// the pod capacity (default 110).
	CPU, Memory string
	Pods        int
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Node is a running hollow node.
type Node struct {
	cfg    Config
	log    *slog.Logger
	ml     *memberlist.Memberlist
	meta   *delegate
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ips    *ipAllocator

	stopOnce sync.Once
}

// Start joins gossip, registers the Node and starts reporting its pods. It
// returns once the Node is registered; ctx bounds the node's whole life
// (cancelling it is Stop without the gossip shutdown).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Name == "" || cfg.Client == nil || cfg.GossipBind == "" {
		return nil, errors.New("hollow node: Name, Client and GossipBind are required")
	}
	if cfg.CPU == "" {
		cfg.CPU = DefaultCPU
	}
	if cfg.Memory == "" {
		cfg.Memory = DefaultMemory
	}
	if cfg.Pods <= 0 {
		cfg.Pods = DefaultPods
	}
	for _, q := range []string{cfg.CPU, cfg.Memory} {
		if _, err := resource.ParseQuantity(q); err != nil {
			return nil, fmt.Errorf("hollow node %s: capacity %q: %w", cfg.Name, q, err)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	n := &Node{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "hollow", "node", cfg.Name),
		meta: &delegate{},
		ips:  newIPAllocator(cfg.Name),
	}
	if err := n.meta.setMeta(""); err != nil {
		return nil, err
	}

	mc := memberlist.DefaultLocalConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.GossipBind
	mc.BindPort = cfg.GossipPort
	mc.AdvertisePort = cfg.GossipPort
	mc.Delegate = n.meta
	mc.Logger = cluster.NewStdLogger(n.log.With("component", "memberlist"))
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("hollow node %s: start gossip: %w", cfg.Name, err)
	}
	n.ml = ml
	if len(cfg.Join) > 0 {
		if _, err := ml.Join(cfg.Join); err != nil {
			_ = ml.Shutdown()
			return nil, fmt.Errorf("hollow node %s: join %v: %w", cfg.Name, cfg.Join, err)
		}
	}
	// Advertise the cluster's ID once a server told us: a member that
	// names its cluster cannot be mistaken for one of another cluster.
	if id := clusterIDOf(ml.Members()); id != "" {
		if err := n.meta.setMeta(id); err == nil {
			_ = ml.UpdateNode(time.Second)
		}
	}

	if err := n.register(ctx); err != nil {
		_ = ml.Shutdown()
		return nil, err
	}
	ctx, n.cancel = context.WithCancel(ctx)
	if err := n.startPods(ctx); err != nil {
		n.cancel()
		_ = ml.Shutdown()
		return nil, err
	}
	n.log.Info("hollow node started", "gossip", ml.LocalNode().Address())
	return n, nil
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// GossipAddr is the node's gossip address (host:port).
func (n *Node) GossipAddr() string { return n.ml.LocalNode().Address() }

// Stop stops gossiping without leaving, as a node that lost power would:
// the pool sees it fail. Its pods are no longer reported.
func (n *Node) Stop() { n.stop(false) }

// Leave leaves the gossip pool gracefully, then stops.
func (n *Node) Leave() { n.stop(true) }

func (n *Node) stop(leave bool) {
	n.stopOnce.Do(func() {
		n.cancel()
		if leave {
			if err := n.ml.Leave(5 * time.Second); err != nil {
				n.log.Warn("leave gossip", "err", err)
			}
		}
		if err := n.ml.Shutdown(); err != nil {
			n.log.Warn("shut down gossip", "err", err)
		}
		n.wg.Wait()
	})
}

// register creates the Node, or updates the one already there, with our
// labels, capacity, addresses and a Ready condition.
func (n *Node) register(ctx context.Context) error {
	want := n.nodeObject()
	nodes := n.cfg.Client.CoreV1().Nodes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(ctx, n.cfg.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cur, err = nodes.Create(ctx, want, metav1.CreateOptions{})
			if err != nil {
				return err
			}
		} else if err != nil {
			return err
		} else {
			cur = cur.DeepCopy()
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			maps.Copy(cur.Labels, want.Labels)
			if cur, err = nodes.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return err
			}
		}
		// The status is written separately: an API may drop status on
		// create or update, as Kubernetes does on update.
		cur.Status = *want.Status.DeepCopy()
		_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("hollow node %s: register: %w", n.cfg.Name, err)
	}
	return nil
}

func (n *Node) nodeObject() *corev1.Node {
	labels := map[string]string{
		corev1.LabelHostname:   n.cfg.Name,
		corev1.LabelOSStable:   runtime.GOOS,
		corev1.LabelArchStable: runtime.GOARCH,
	}
	maps.Copy(labels, n.cfg.Labels)
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(n.cfg.CPU),
		corev1.ResourceMemory: resource.MustParse(n.cfg.Memory),
		corev1.ResourcePods:   *resource.NewQuantity(int64(n.cfg.Pods), resource.DecimalSI),
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.cfg.Name, Labels: labels},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity.DeepCopy(),
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "hollow node is ready"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.cfg.GossipBind},
				{Type: corev1.NodeHostName, Address: n.cfg.Name},
			},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem:         runtime.GOOS,
				Architecture:            runtime.GOARCH,
				KubeletVersion:          "flotilla-hollow",
				ContainerRuntimeVersion: "fake://0",
			},
		},
	}
}
