package hollow

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// podWorkers is how many pods one hollow node updates at once. One or two
// keep thousands of hollow nodes in one process light.
const podWorkers = 2

// startPods starts the informer on the pods bound to this node and the
// workers that report them Running.
func (n *Node) startPods(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(n.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", n.cfg.Name).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "hollow-" + n.cfg.Name})
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("hollow node %s: pod informer: %w", n.cfg.Name, err)
	}
	factory.Start(ctx.Done())

	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		<-ctx.Done()
		queue.ShutDown()
		factory.Shutdown()
	}()
	for range podWorkers {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
				return
			}
			for n.processNext(ctx, queue, informer.GetIndexer()) {
			}
		}()
	}
	return nil
}

func (n *Node) processNext(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string], store cache.Store) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)
	if err := n.reconcile(ctx, key, store); err != nil {
		if ctx.Err() == nil {
			n.log.Debug("pod status", "pod", key, "err", err)
		}
		queue.AddRateLimited(key)
		return true
	}
	queue.Forget(key)
	return true
}

// reconcile reports one pod: deleted with grace 0 once it is terminating
// (there are no containers to stop), else Running and Ready.
func (n *Node) reconcile(ctx context.Context, key string, store cache.Store) error {
	obj, exists, err := store.GetByKey(key)
	if err != nil || !exists {
		return err
	}
	pod := obj.(*corev1.Pod)
	if pod.Spec.NodeName != n.cfg.Name {
		return nil
	}
	pods := n.cfg.Client.CoreV1().Pods(pod.Namespace)
	if pod.DeletionTimestamp != nil {
		grace := int64(0)
		err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &grace,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil // gone already, or a new pod of the same name
		}
		return err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	status := n.runningStatus(ctx, pod)
	if apiequality.Semantic.DeepEqual(&status, &pod.Status) {
		return nil
	}
	upd := pod.DeepCopy()
	upd.Status = status
	_, err = pods.UpdateStatus(ctx, upd, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// runningStatus is pod's status as a kubelet that started every container
// would report it; what is already right (times, IPs) is kept so that an
// unchanged pod compares equal.
func (n *Node) runningStatus(ctx context.Context, pod *corev1.Pod) corev1.PodStatus {
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	s := *pod.Status.DeepCopy()
	s.Phase = corev1.PodRunning
	s.HostIP = n.cfg.GossipBind
	s.HostIPs = []corev1.HostIP{{IP: n.cfg.GossipBind}}
	if s.PodIP == "" {
		s.PodIP = n.ips.next(ctx, n)
		s.PodIPs = []corev1.PodIP{{IP: s.PodIP}}
	}
	if s.StartTime == nil {
		s.StartTime = &now
	}
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		setCondition(&s, t, now)
	}
	old := map[string]corev1.ContainerStatus{}
	for _, cs := range pod.Status.ContainerStatuses {
		old[cs.Name] = cs
	}
	s.ContainerStatuses = make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		if cs, ok := old[c.Name]; ok && cs.Image == c.Image && cs.Ready && cs.State.Running != nil {
			s.ContainerStatuses = append(s.ContainerStatuses, cs)
			continue
		}
		started := true
		s.ContainerStatuses = append(s.ContainerStatuses, corev1.ContainerStatus{
			Name:         c.Name,
			Image:        c.Image,
			ImageID:      "fake://" + c.Image,
			ContainerID:  fmt.Sprintf("fake://%s/%s", pod.UID, c.Name),
			Ready:        true,
			Started:      &started,
			RestartCount: old[c.Name].RestartCount,
			State:        corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	return s
}

// setCondition makes condition t True, keeping its transition time when it
// already was.
func setCondition(s *corev1.PodStatus, t corev1.PodConditionType, now metav1.Time) {
	for i := range s.Conditions {
		c := &s.Conditions[i]
		if c.Type != t {
			continue
		}
		if c.Status != corev1.ConditionTrue {
			c.Status, c.Reason, c.Message, c.LastTransitionTime = corev1.ConditionTrue, "", "", now
		}
		return
	}
	s.Conditions = append(s.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
}

// ipAllocator hands out pod IPs from the node's pod CIDR once the node IPAM
// controller assigned one, else from a fake 10.x range derived from the
// node name. Nothing is networked: the addresses only look right.
type ipAllocator struct {
	mu     sync.Mutex
	prefix netip.Prefix // the pod CIDR, once known
	fake   netip.Prefix
	seq    uint32
}

func newIPAllocator(name string) *ipAllocator {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	fake := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128 + byte(v%64), byte(v >> 8), 0}), 24)
	return &ipAllocator{fake: fake}
}

func (a *ipAllocator) next(ctx context.Context, n *Node) string {
	a.mu.Lock()
	known := a.prefix.IsValid()
	a.mu.Unlock()
	if !known {
		// One read until the CIDR shows up; the IPAM controller assigns
		// it within moments of registration.
		if node, err := n.cfg.Client.CoreV1().Nodes().Get(ctx, n.cfg.Name, metav1.GetOptions{}); err == nil && node.Spec.PodCIDR != "" {
			if p, err := netip.ParsePrefix(node.Spec.PodCIDR); err == nil && p.Addr().Is4() {
				a.mu.Lock()
				a.prefix = p.Masked()
				a.mu.Unlock()
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.fake
	if a.prefix.IsValid() {
		p = a.prefix
	}
	size := uint32(1) << (32 - p.Bits())
	if size < 4 {
		size = 4
	}
	a.seq++
	// Skip the network address and .1 (the gateway a CNI bridge would take).
	off := 2 + (a.seq-1)%(size-3)
	b := p.Addr().As4()
	base := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ip := base + off
	return netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}).String()
}
