package controllers

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// nodeIPAMController gives every node a pod CIDR (spec.podCIDR and
// spec.podCIDRs) carved from the cluster CIDR, and takes it back when the
// node is deleted.
//
// The allocator's state lives in memory on the leader and is rebuilt from
// the nodes' own spec.podCIDR when the controller starts, so the Node
// objects are the only record: a new leader derives exactly what the old
// one had handed out. One worker does all allocation, so no two nodes can
// be given the same range.
type nodeIPAMController struct {
	*base
	log        *slog.Logger
	rec        record.EventRecorder
	nodeLister corelisters.NodeLister
	loop       *loop[string]

	// Touched only by the single worker (and by run before it starts).
	network uint32         // first address of the cluster CIDR
	shift   uint           // 32 - node mask size: addresses per node CIDR is 1<<shift
	mask    int            // node mask size
	used    []string       // subnet index → node name ("" = free)
	byNode  map[string]int // node name → subnet index
	next    int            // where the next search starts: released ranges are reused last
	waiting map[string]bool
}

func newNodeIPAMController(b *base) *nodeIPAMController {
	_, cidr, _ := net.ParseCIDR(b.cfg.ClusterCIDR) // validated by Config
	ones, _ := cidr.Mask.Size()
	c := &nodeIPAMController{
		base:    b,
		log:     b.logger(NodeIPAM),
		rec:     b.recorder("cidrAllocator"),
		network: binary.BigEndian.Uint32(cidr.IP.To4()),
		shift:   uint(32 - b.cfg.NodeCIDRMaskSize),
		mask:    b.cfg.NodeCIDRMaskSize,
		used:    make([]string, 1<<(b.cfg.NodeCIDRMaskSize-ones)),
		byNode:  map[string]int{},
		waiting: map[string]bool{},
	}
	c.loop = newLoop(NodeIPAM, c.log, c.sync)
	inf := b.factory.Core().V1().Nodes().Informer()
	c.nodeLister = corelisters.NewNodeLister(inf.GetIndexer())
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: c.loop.enqueueObj,
		UpdateFunc: func(oldObj, curObj any) {
			old, cur := oldObj.(*corev1.Node), curObj.(*corev1.Node)
			if cur.Spec.PodCIDR == "" || old.Spec.PodCIDR != cur.Spec.PodCIDR {
				c.loop.enqueueObj(cur)
			}
		},
		DeleteFunc: c.loop.enqueueObj,
	})
	return c
}

func (c *nodeIPAMController) run(ctx context.Context) {
	// The caches are synced: take every range the nodes already hold.
	nodes, _ := c.nodeLister.List(labels.Everything())
	for _, n := range nodes {
		if n.Spec.PodCIDR == "" {
			continue
		}
		idx, ok := c.index(n.Spec.PodCIDR)
		if !ok {
			c.log.Warn("node pod CIDR outside the cluster CIDR", "node", n.Name, "podCIDR", n.Spec.PodCIDR, "clusterCIDR", c.cfg.ClusterCIDR)
			continue
		}
		if owner := c.used[idx]; owner != "" {
			c.log.Error("two nodes hold one pod CIDR", "podCIDR", n.Spec.PodCIDR, "nodes", []string{owner, n.Name})
			continue
		}
		c.used[idx] = n.Name
		c.byNode[n.Name] = idx
	}
	c.loop.run(ctx, 1)
}

// index is the subnet index of a node CIDR, if it is one of ours.
func (c *nodeIPAMController) index(cidr string) (int, bool) {
	ip, ipnet, err := net.ParseCIDR(cidr)
	if err != nil || ip.To4() == nil {
		return 0, false
	}
	if ones, _ := ipnet.Mask.Size(); ones != c.mask {
		return 0, false
	}
	off := binary.BigEndian.Uint32(ipnet.IP.To4()) - c.network
	idx := int(off >> c.shift)
	if binary.BigEndian.Uint32(ipnet.IP.To4()) < c.network || idx >= len(c.used) {
		return 0, false
	}
	return idx, true
}

func (c *nodeIPAMController) cidr(idx int) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], c.network+uint32(idx)<<c.shift)
	return fmt.Sprintf("%s/%d", net.IP(b[:]), c.mask)
}

func (c *nodeIPAMController) allocate(node string) (int, bool) {
	for i := 0; i < len(c.used); i++ {
		idx := (c.next + i) % len(c.used)
		if c.used[idx] == "" {
			c.used[idx] = node
			c.byNode[node] = idx
			c.next = (idx + 1) % len(c.used)
			return idx, true
		}
	}
	return 0, false
}

func (c *nodeIPAMController) release(node string) {
	idx, ok := c.byNode[node]
	if !ok {
		return
	}
	delete(c.byNode, node)
	if c.used[idx] == node {
		c.used[idx] = ""
		c.log.Info("released pod CIDR", "node", node, "podCIDR", c.cidr(idx))
	}
	// Nodes that found the range full may fit now.
	for n := range c.waiting {
		c.loop.add(n)
	}
}

func (c *nodeIPAMController) sync(ctx context.Context, name string) error {
	node, err := c.nodeLister.Get(name)
	if apierrors.IsNotFound(err) {
		delete(c.waiting, name)
		c.release(name)
		return nil
	}
	if err != nil {
		return err
	}
	if node.Spec.PodCIDR != "" {
		idx, ok := c.index(node.Spec.PodCIDR)
		if !ok {
			return nil
		}
		if owner := c.used[idx]; owner != "" && owner != name {
			c.rec.Eventf(node, corev1.EventTypeWarning, "CIDRNotAvailable", "Node %s has pod CIDR %s, already given to node %s", name, node.Spec.PodCIDR, owner)
			return nil
		}
		if old, ok := c.byNode[name]; ok && old != idx && c.used[old] == name {
			c.used[old] = ""
		}
		c.used[idx] = name
		c.byNode[name] = idx
		delete(c.waiting, name)
		return nil
	}
	idx, ok := c.byNode[name]
	if !ok {
		if idx, ok = c.allocate(name); !ok {
			if !c.waiting[name] {
				c.rec.Eventf(node, corev1.EventTypeNormal, "CIDRNotAvailable", "Node %s status is now: CIDRNotAvailable", name)
				c.log.Warn("no pod CIDR left for node", "node", name, "clusterCIDR", c.cfg.ClusterCIDR)
			}
			c.waiting[name] = true
			return nil
		}
	}
	delete(c.waiting, name)
	cidr := c.cidr(idx)
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": cidr, "podCIDRs": []string{cidr}}})
	_, err = c.client.CoreV1().Nodes().Patch(ctx, name, mergePatch, patch, metav1.PatchOptions{})
	switch {
	case err == nil:
		c.log.Info("assigned pod CIDR", "node", name, "podCIDR", cidr)
		return nil
	case apierrors.IsNotFound(err):
		c.release(name)
		return nil
	case apierrors.IsInvalid(err):
		// Someone set a podCIDR meanwhile; the update event brings it here.
		c.release(name)
		return nil
	default:
		// Keep the reservation: the retry patches the same range.
		c.rec.Eventf(node, corev1.EventTypeWarning, "CIDRAssignmentFailed", "Failed to assign pod CIDR %s: %v", cidr, err)
		return fmt.Errorf("set pod CIDR of node %s: %w", name, err)
	}
}
