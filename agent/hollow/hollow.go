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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"flotilla/agent/gossip"
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
	// Keys encrypt gossip, primary first (gossip.Config.Keys); nil = in
	// the clear. A hollow node does not poll the keyring: whoever runs it
	// calls SetKeys after a rotation.
	Keys [][]byte
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
	pool   *gossip.Pool
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
		cfg: cfg,
		log: cfg.Logger.With("component", "hollow", "node", cfg.Name),
		ips: newIPAllocator(cfg.Name),
	}
	pool, err := gossip.Start(ctx, gossip.Config{
		Name:   cfg.Name,
		Bind:   cfg.GossipBind,
		Port:   cfg.GossipPort,
		Join:   cfg.Join,
		Keys:   cfg.Keys,
		Timing: "local",
		Logger: n.log,
	})
	if err != nil {
		return nil, fmt.Errorf("hollow node %s: %w", cfg.Name, err)
	}
	n.pool = pool
	if err := n.register(ctx); err != nil {
		pool.Shutdown()
		return nil, err
	}
	ctx, n.cancel = context.WithCancel(ctx)
	if err := n.startPods(ctx); err != nil {
		n.cancel()
		pool.Shutdown()
		return nil, err
	}
	n.log.Info("hollow node started", "gossip", pool.Addr())
	return n, nil
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// SetKeys replaces the node's gossip keys (gossip.Pool.SetKeys).
func (n *Node) SetKeys(keys [][]byte) error { return n.pool.SetKeys(keys) }

// GossipAddr is the node's gossip address (host:port).
func (n *Node) GossipAddr() string { return n.pool.Addr() }

// Stop stops gossiping without leaving, as a node that lost power would:
// the pool sees it fail. Its pods are no longer reported.
func (n *Node) Stop() { n.stop(false) }

// Leave leaves the gossip pool gracefully, then stops.
func (n *Node) Leave() { n.stop(true) }

func (n *Node) stop(leave bool) {
	n.stopOnce.Do(func() {
		n.cancel()
		if leave {
			n.pool.Leave(5 * time.Second)
		} else {
			n.pool.Shutdown()
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
