package scheduler

import (
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	resourcehelper "k8s.io/component-helpers/resource"
)

// Requests a container without any receives for scoring only, as kube does,
// so that best-effort pods still spread instead of piling on one node. They
// never count for feasibility.
const (
	defaultMilliCPURequest int64 = 100               // 0.1 core
	defaultMemoryRequest   int64 = 200 * 1024 * 1024 // 200 MiB
)

var nonZeroDefaults = v1.ResourceList{
	v1.ResourceCPU:    *resource.NewMilliQuantity(defaultMilliCPURequest, resource.DecimalSI),
	v1.ResourceMemory: *resource.NewQuantity(defaultMemoryRequest, resource.BinarySI),
}

// Resources is an amount of the resources the scheduler accounts for: cpu in
// millicores, memory in bytes, and every other named resource
// (ephemeral-storage, hugepages-*, extended resources such as nvidia.com/gpu)
// in its base unit. The pod count is kept apart (NodeInfo.NumPods).
type Resources struct {
	MilliCPU int64
	Memory   int64
	// Scalar is nil when there is none.
	Scalar map[v1.ResourceName]int64
}

func (r *Resources) add(o *Resources) {
	r.MilliCPU += o.MilliCPU
	r.Memory += o.Memory
	for name, v := range o.Scalar {
		if r.Scalar == nil {
			r.Scalar = make(map[v1.ResourceName]int64, len(o.Scalar))
		}
		r.Scalar[name] += v
	}
}

func (r *Resources) sub(o *Resources) {
	r.MilliCPU -= o.MilliCPU
	r.Memory -= o.Memory
	for name, v := range o.Scalar {
		if r.Scalar == nil {
			r.Scalar = make(map[v1.ResourceName]int64, len(o.Scalar))
		}
		r.Scalar[name] -= v
		if r.Scalar[name] == 0 {
			delete(r.Scalar, name)
		}
	}
}

func (r Resources) clone() Resources {
	if r.Scalar != nil {
		s := make(map[v1.ResourceName]int64, len(r.Scalar))
		for k, v := range r.Scalar {
			s[k] = v
		}
		r.Scalar = s
	}
	return r
}

// resourcesFrom converts a ResourceList; the pod count is returned apart.
func resourcesFrom(rl v1.ResourceList) (r Resources, pods int64) {
	for name, q := range rl {
		switch name {
		case v1.ResourceCPU:
			r.MilliCPU = q.MilliValue()
		case v1.ResourceMemory:
			r.Memory = q.Value()
		case v1.ResourcePods:
			pods = q.Value()
		default:
			if q.IsZero() {
				continue
			}
			if r.Scalar == nil {
				r.Scalar = make(map[v1.ResourceName]int64)
			}
			r.Scalar[name] = q.Value()
		}
	}
	return r, pods
}

// HostPort is one host port a pod asks for. IP "0.0.0.0" means every address.
type HostPort struct {
	Protocol v1.Protocol
	IP       string
	Port     int32
}

const anyHostIP = "0.0.0.0"

// podInfo is what the scheduler derives from a pod once: what it requests,
// the host ports it binds and the key it spreads by. The cache keeps it for
// every bound or assumed pod so removing a pod subtracts exactly what adding
// it added, even if the pod object changed meanwhile.
type podInfo struct {
	pod *v1.Pod
	// req is what must fit: containers summed, the largest init container
	// if bigger (sidecars counted as kube does), plus overhead.
	req Resources
	// nonZero is req for cpu and memory with defaults for containers that
	// request none; used by the scores only.
	nonZero Resources
	ports   []HostPort
	// owner groups pods to spread; "" = not spread.
	owner     string
	ownerHash uint64
}

func newPodInfo(pod *v1.Pod) *podInfo {
	pi := &podInfo{pod: pod}
	pi.req, _ = resourcesFrom(resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{}))
	pi.nonZero = Resources{MilliCPU: pi.req.MilliCPU, Memory: pi.req.Memory}
	if needsScoringDefaults(pod) {
		nz := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{NonMissingContainerRequests: nonZeroDefaults})
		pi.nonZero = Resources{MilliCPU: nz.Cpu().MilliValue(), Memory: nz.Memory().Value()}
	}
	pi.ports = podHostPorts(pod)
	pi.owner = ownerKey(pod)
	if pi.owner != "" {
		pi.ownerHash = ownerHash(pi.owner)
	}
	return pi
}

// needsScoringDefaults: some container lacks a cpu or memory request (or
// pod-level resources are set), so the scoring requests differ from the
// real ones. Most pods declare both, and skip a second PodRequests pass.
func needsScoringDefaults(pod *v1.Pod) bool {
	if pod.Spec.Resources != nil {
		return true
	}
	lacks := func(cs []v1.Container) bool {
		for i := range cs {
			rq := cs[i].Resources.Requests
			if _, ok := rq[v1.ResourceCPU]; !ok {
				return true
			}
			if _, ok := rq[v1.ResourceMemory]; !ok {
				return true
			}
		}
		return false
	}
	return lacks(pod.Spec.Containers) || lacks(pod.Spec.InitContainers)
}

// podHostPorts lists the host ports of the containers and of the sidecars
// (restartable init containers), which run alongside them. Plain init
// containers run before and are ignored, as kube does.
func podHostPorts(pod *v1.Pod) []HostPort {
	var out []HostPort
	add := func(c *v1.Container) {
		for _, p := range c.Ports {
			if p.HostPort <= 0 {
				continue
			}
			hp := HostPort{Protocol: p.Protocol, IP: p.HostIP, Port: p.HostPort}
			if hp.Protocol == "" {
				hp.Protocol = v1.ProtocolTCP
			}
			if hp.IP == "" {
				hp.IP = anyHostIP
			}
			out = append(out, hp)
		}
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == v1.ContainerRestartPolicyAlways {
			add(c)
		}
	}
	for i := range pod.Spec.Containers {
		add(&pod.Spec.Containers[i])
	}
	return out
}

// ownerKey is the group a pod spreads with: its controller (a ReplicaSet, a
// StatefulSet, a Job, ...), or, for a pod without one, every pod of the
// namespace with exactly the same labels. Unlabelled orphans do not spread.
func ownerKey(pod *v1.Pod) string {
	for i := range pod.OwnerReferences {
		ref := &pod.OwnerReferences[i]
		if ref.Controller != nil && *ref.Controller {
			return "uid:" + string(ref.UID)
		}
	}
	if len(pod.Labels) == 0 {
		return ""
	}
	keys := make([]string, 0, len(pod.Labels))
	for k := range pod.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("labels:")
	b.WriteString(pod.Namespace)
	for _, k := range keys {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(pod.Labels[k])
	}
	return b.String()
}
