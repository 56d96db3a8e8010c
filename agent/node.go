package agent

import (
	"context"
	"fmt"
	"maps"
	"net"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"flotilla/agent/network"
)

// Node condition reasons, as the kubelet words them.
const (
	reasonReady    = "KubeletReady"
	reasonNotReady = "KubeletNotReady"
)

// health is what the agent knows of its own state: the Ready condition is
// made from it.
type health struct {
	runtimeErr     string // "" = containerd answers
	networkErr     string // "" = pods can be networked
	runtimeVersion string // "containerd://1.6.20" once known
}

func (h health) ready() (corev1.ConditionStatus, string, string) {
	switch {
	case h.runtimeErr != "":
		return corev1.ConditionFalse, reasonNotReady, "container runtime is down: " + h.runtimeErr
	case h.networkErr != "":
		return corev1.ConditionFalse, reasonNotReady, "container runtime network not ready: " + h.networkErr
	}
	return corev1.ConditionTrue, reasonReady, "flotilla agent is posting ready status"
}

// healthInterval is how often the agent asks containerd and the network
// whether they are well. Cheap local calls; nothing is written unless the
// answer changes.
const healthInterval = 2 * time.Second

// checkHealth updates a.health and pings healthSet when it changed.
func (a *Agent) checkHealth(ctx context.Context) {
	var h health
	vctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	v, err := a.cfg.Runtime.Version(vctx)
	cancel()
	if err != nil {
		h.runtimeErr = err.Error()
	} else {
		h.runtimeVersion = v.Name + "://" + v.Version
	}
	if err := a.cfg.Network.Ready(); err != nil {
		h.networkErr = err.Error()
	}
	a.mu.Lock()
	old := a.health
	if h.runtimeVersion == "" {
		h.runtimeVersion = old.runtimeVersion
	}
	a.health = h
	a.mu.Unlock()
	if old != h {
		if st, reason, msg := h.ready(); st != corev1.ConditionTrue {
			a.log.Warn("node not ready", "reason", reason, "message", msg)
		} else {
			a.log.Info("node ready")
		}
		select {
		case a.healthSet <- struct{}{}:
		default:
		}
	}
}

// register creates the Node, or updates the one already there with our
// labels. Taints are set only when the Node is created, as the kubelet does:
// afterwards they belong to the cluster's operators and controllers.
func (a *Agent) register(ctx context.Context) error {
	nodes := a.client.CoreV1().Nodes()
	backoff := 500 * time.Millisecond
	for {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				n := &corev1.Node{
					ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: a.nodeLabels()},
					Spec:       corev1.NodeSpec{Taints: a.cfg.Taints},
				}
				_, err = nodes.Create(ctx, n, metav1.CreateOptions{})
				return err
			}
			if err != nil {
				return err
			}
			want := a.nodeLabels()
			if hasLabels(cur.Labels, want) {
				return nil
			}
			cur = cur.DeepCopy()
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			maps.Copy(cur.Labels, want)
			_, err = nodes.Update(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if err == nil {
			a.log.Info("node registered")
			return nil
		}
		a.log.Warn("register node failed; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func (a *Agent) nodeLabels() map[string]string {
	l := map[string]string{
		corev1.LabelHostname:   a.cfg.NodeName,
		corev1.LabelOSStable:   goruntime.GOOS,
		corev1.LabelArchStable: goruntime.GOARCH,
	}
	maps.Copy(l, a.cfg.Labels)
	return l
}

// nodeLoop watches the Nodes: its own for podCIDR and for status drift
// (the node lifecycle controller marks it Unknown while gossip lost it;
// the agent puts its real conditions back), the others for routes to
// their pods.
func (a *Agent) nodeLoop(ctx context.Context) {
	factory := informers.NewSharedInformerFactory(a.client, 0)
	inf := factory.Core().V1().Nodes()
	kick := make(chan struct{}, 1)
	ping := func(any) {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    ping,
		UpdateFunc: func(_, n any) { ping(n) },
		DeleteFunc: ping,
	})
	lister := inf.Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return
	}
	resync := time.NewTicker(a.cfg.StatusResync)
	defer resync.Stop()
	var lastRoutes []network.Route
	routesSet := false
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-a.healthSet:
		case <-resync.C:
		}
		all, err := lister.List(labels.Everything())
		if err != nil {
			continue
		}
		var self *corev1.Node
		for _, n := range all {
			if n.Name == a.cfg.NodeName {
				self = n
			}
		}
		if self == nil {
			// Deleted by someone: register again, as the kubelet does.
			if err := a.register(ctx); err != nil {
				return
			}
			continue
		}
		if err := a.syncPodCIDR(self); err != nil {
			a.log.Warn("pod network", "err", err)
		}
		if err := a.syncStatus(ctx, self); err != nil {
			a.log.Warn("update node status failed", "err", err)
			ping(nil)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		routes := a.routes(all)
		if !routesSet || !slices.EqualFunc(routes, lastRoutes, sameRoute) {
			if err := a.cfg.Network.SyncRoutes(routes); err != nil {
				a.log.Warn("routes to other nodes' pods", "err", err)
			} else {
				lastRoutes, routesSet = routes, true
			}
		}
	}
}

func (a *Agent) syncPodCIDR(self *corev1.Node) error {
	cidr := self.Spec.PodCIDR
	a.mu.Lock()
	same := cidr == a.podCIDR
	a.mu.Unlock()
	if cidr == "" || same {
		return nil
	}
	if err := a.cfg.Network.SetPodCIDR(cidr); err != nil {
		return fmt.Errorf("set pod CIDR %s: %w", cidr, err)
	}
	a.mu.Lock()
	a.podCIDR = cidr
	a.mu.Unlock()
	a.log.Info("pod CIDR set", "cidr", cidr)
	// The network may be ready now: re-check before the status is made.
	a.checkHealth(context.Background())
	return nil
}

// routes are host-gw routes to every other node's podCIDR via its
// InternalIP, sorted so comparing two sets is cheap.
func (a *Agent) routes(nodes []*corev1.Node) []network.Route {
	var out []network.Route
	for _, n := range nodes {
		if n.Name == a.cfg.NodeName || n.Spec.PodCIDR == "" {
			continue
		}
		_, cidr, err := net.ParseCIDR(n.Spec.PodCIDR)
		if err != nil {
			continue
		}
		var via net.IP
		for _, ad := range n.Status.Addresses {
			if ad.Type == corev1.NodeInternalIP {
				via = net.ParseIP(ad.Address)
				break
			}
		}
		if via == nil {
			continue
		}
		out = append(out, network.Route{CIDR: cidr, Via: via})
	}
	slices.SortFunc(out, func(x, y network.Route) int { return strings.Compare(x.CIDR.String(), y.CIDR.String()) })
	return out
}

func sameRoute(x, y network.Route) bool {
	return x.CIDR.String() == y.CIDR.String() && x.Via.Equal(y.Via)
}

// syncStatus writes the Node's status when it differs from what the agent
// knows; an unchanged node costs no write.
func (a *Agent) syncStatus(ctx context.Context, cur *corev1.Node) error {
	if markedUnreachable(cur) {
		// The leader's gossip lost this node and said so. Writing Ready
		// back now would fight it write for write; it removes the taint
		// once gossip reaches the node again, and the update that brings
		// lets the agent put its conditions back.
		return nil
	}
	want := a.desiredStatus(cur)
	if apiequality.Semantic.DeepEqual(want, cur.Status) {
		return nil
	}
	n := cur.DeepCopy()
	n.Status = want
	_, err := a.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil // the informer brings the newer one and we look again
	}
	return err
}

// markedUnreachable: the node lifecycle controller tainted the node
// unreachable.
func markedUnreachable(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == corev1.TaintNodeUnreachable && t.Effect == corev1.TaintEffectNoExecute {
			return true
		}
	}
	return false
}

// desiredStatus is the Node status the agent stands behind, keeping
// transition times of conditions that did not change.
func (a *Agent) desiredStatus(cur *corev1.Node) corev1.NodeStatus {
	a.mu.Lock()
	h := a.health
	a.mu.Unlock()
	st := *cur.Status.DeepCopy()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(a.sys.cpus), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(a.sys.memoryBytes, resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(int64(a.cfg.MaxPods), resource.DecimalSI),
	}
	st.Capacity = capacity
	st.Allocatable = capacity.DeepCopy()
	st.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: a.cfg.NodeIP},
		{Type: corev1.NodeHostName, Address: a.cfg.NodeName},
	}
	st.DaemonEndpoints = corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(a.cfg.AgentPort)}}
	st.NodeInfo = corev1.NodeSystemInfo{
		MachineID:               a.sys.machineID,
		BootID:                  a.sys.bootID,
		KernelVersion:           a.sys.kernel,
		OSImage:                 a.sys.osImage,
		ContainerRuntimeVersion: h.runtimeVersion,
		KubeletVersion:          a.cfg.Version,
		KubeProxyVersion:        "",
		OperatingSystem:         goruntime.GOOS,
		Architecture:            goruntime.GOARCH,
	}
	st.Phase = ""
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	status, reason, msg := h.ready()
	conds := []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
		{Type: corev1.NodeReady, Status: status, Reason: reason, Message: msg},
	}
	for i := range conds {
		c := &conds[i]
		c.LastHeartbeatTime, c.LastTransitionTime = now, now
		for _, old := range cur.Status.Conditions {
			if old.Type != c.Type {
				continue
			}
			if old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
				if old.Reason == c.Reason && old.Message == c.Message {
					// Unchanged: keep the old heartbeat time too, so an
					// unchanged node compares equal and costs no write.
					c.LastHeartbeatTime = old.LastHeartbeatTime
				}
			}
		}
	}
	st.Conditions = conds
	return st
}
