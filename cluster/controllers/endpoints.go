package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// labelHeadless marks the Endpoints of a headless Service, as Kubernetes does.
const labelHeadless = "service.kubernetes.io/headless"

// endpointsController writes, for every Service with a selector, an
// Endpoints object of the same name listing the selected pods' IPs: ready
// pods in addresses, the others in notReadyAddresses.
type endpointsController struct {
	*base
	log       *slog.Logger
	rec       record.EventRecorder
	svcLister corelisters.ServiceLister
	podLister corelisters.PodLister
	epLister  corelisters.EndpointsLister
	loop      *loop[string]
}

func newEndpointsController(b *base) *endpointsController {
	c := &endpointsController{base: b, log: b.logger(Endpoints), rec: b.recorder("endpoint-controller")}
	c.loop = newLoop(Endpoints, c.log, c.sync)
	svcInf := b.factory.Core().V1().Services().Informer()
	epInf := b.factory.Core().V1().Endpoints().Informer()
	podInf := b.podInformer()
	c.svcLister = corelisters.NewServiceLister(svcInf.GetIndexer())
	c.epLister = corelisters.NewEndpointsLister(epInf.GetIndexer())
	c.podLister = corelisters.NewPodLister(podInf.GetIndexer())
	svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.loop.enqueueObj,
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
		DeleteFunc: c.loop.enqueueObj,
	})
	// Someone else's change to (or deletion of) an Endpoints object is put
	// right by the next sync of its Service.
	epInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, cur any) { c.loop.enqueueObj(cur) },
		DeleteFunc: c.loop.enqueueObj,
	})
	podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { c.enqueueServicesOf(obj.(*corev1.Pod)) },
		UpdateFunc: func(oldObj, curObj any) {
			old, cur := oldObj.(*corev1.Pod), curObj.(*corev1.Pod)
			if !endpointsRelevantChange(old, cur) {
				return
			}
			c.enqueueServicesOf(cur)
			if !reflect.DeepEqual(old.Labels, cur.Labels) {
				c.enqueueServicesOf(old)
			}
		},
		DeleteFunc: func(obj any) {
			if p, ok := tombstone(obj).(*corev1.Pod); ok {
				c.enqueueServicesOf(p)
			}
		},
	})
	return c
}

func (c *endpointsController) run(ctx context.Context) { c.loop.run(ctx, c.cfg.Workers) }

// endpointsRelevantChange: something an Endpoints object shows changed.
func endpointsRelevantChange(old, cur *corev1.Pod) bool {
	if old.ResourceVersion == cur.ResourceVersion {
		return false
	}
	return old.Status.PodIP != cur.Status.PodIP ||
		isPodReady(old) != isPodReady(cur) ||
		(old.DeletionTimestamp == nil) != (cur.DeletionTimestamp == nil) ||
		old.Spec.NodeName != cur.Spec.NodeName ||
		old.Status.Phase != cur.Status.Phase ||
		old.Spec.Hostname != cur.Spec.Hostname || old.Spec.Subdomain != cur.Spec.Subdomain ||
		!reflect.DeepEqual(old.Labels, cur.Labels)
}

func (c *endpointsController) enqueueServicesOf(pod *corev1.Pod) {
	svcs, err := c.svcLister.Services(pod.Namespace).List(labels.Everything())
	if err != nil {
		return
	}
	for _, svc := range svcs {
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		if labels.Set(svc.Spec.Selector).AsSelectorPreValidated().Matches(labels.Set(pod.Labels)) {
			c.loop.add(svc.Namespace + "/" + svc.Name)
		}
	}
}

func (c *endpointsController) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.svcLister.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// The Service is gone: so is its Endpoints object.
		err := c.client.CoreV1().Endpoints(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete endpoints %s: %w", key, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if len(svc.Spec.Selector) == 0 || svc.Spec.Type == corev1.ServiceTypeExternalName {
		// Endpoints of a Service without a selector are the user's.
		return nil
	}
	pods, err := c.podLister.Pods(ns).List(labels.Set(svc.Spec.Selector).AsSelectorPreValidated())
	if err != nil {
		return err
	}
	subsets := buildSubsets(svc, pods)
	wantLabels := copyMap(svc.Labels)
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		if wantLabels == nil {
			wantLabels = map[string]string{}
		}
		wantLabels[labelHeadless] = ""
	}

	cur, err := c.epLister.Endpoints(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		ep := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: wantLabels}, Subsets: subsets}
		_, err = c.client.CoreV1().Endpoints(ns).Create(ctx, ep, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			// The cache had not seen it yet; the add event brings us back.
			return nil
		}
	case err != nil:
		return err
	default:
		if apiequality.Semantic.DeepEqual(cur.Subsets, subsets) && labelsEqual(cur.Labels, wantLabels) {
			return nil
		}
		ep := cur.DeepCopy()
		ep.Subsets = subsets
		ep.Labels = wantLabels
		_, err = c.client.CoreV1().Endpoints(ns).Update(ctx, ep, metav1.UpdateOptions{})
	}
	if err != nil {
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			return nil
		}
		if apierrors.IsConflict(err) {
			return err
		}
		c.rec.Eventf(svc, corev1.EventTypeWarning, "FailedToUpdateEndpoint", "Failed to update endpoint %s: %v", key, err)
		return err
	}
	return nil
}

func labelsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// buildSubsets lists the pods' addresses grouped by the ports they resolve
// to, in a stable order so that an unchanged set compares equal.
func buildSubsets(svc *corev1.Service, pods []*corev1.Pod) []corev1.EndpointSubset {
	type group struct {
		ports           []corev1.EndpointPort
		ready, notReady []corev1.EndpointAddress
	}
	groups := map[string]*group{}
	headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
	for _, pod := range pods {
		if pod.Status.PodIP == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if pod.DeletionTimestamp != nil && !svc.Spec.PublishNotReadyAddresses {
			continue
		}
		addr := corev1.EndpointAddress{
			IP:        pod.Status.PodIP,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		}
		if pod.Spec.NodeName != "" {
			n := pod.Spec.NodeName
			addr.NodeName = &n
		}
		if pod.Spec.Hostname != "" && pod.Spec.Subdomain == svc.Name && headless {
			addr.Hostname = pod.Spec.Hostname
		}
		var ports []corev1.EndpointPort
		for _, sp := range svc.Spec.Ports {
			port, ok := findPort(pod, sp)
			if !ok {
				continue
			}
			ports = append(ports, corev1.EndpointPort{Name: sp.Name, Port: port, Protocol: sp.Protocol, AppProtocol: sp.AppProtocol})
		}
		if len(ports) == 0 && !(len(svc.Spec.Ports) == 0 && headless) {
			continue
		}
		sort.Slice(ports, func(i, j int) bool {
			if ports[i].Name != ports[j].Name {
				return ports[i].Name < ports[j].Name
			}
			return ports[i].Port < ports[j].Port
		})
		key := portsKey(ports)
		g := groups[key]
		if g == nil {
			g = &group{ports: ports}
			groups[key] = g
		}
		if svc.Spec.PublishNotReadyAddresses || isPodReady(pod) {
			g.ready = append(g.ready, addr)
		} else {
			g.notReady = append(g.notReady, addr)
		}
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []corev1.EndpointSubset
	for _, k := range keys {
		g := groups[k]
		sortAddresses(g.ready)
		sortAddresses(g.notReady)
		out = append(out, corev1.EndpointSubset{Addresses: g.ready, NotReadyAddresses: g.notReady, Ports: g.ports})
	}
	return out
}

func portsKey(ports []corev1.EndpointPort) string {
	var b strings.Builder
	for _, p := range ports {
		b.WriteString(p.Name + "/" + strconv.Itoa(int(p.Port)) + "/" + string(p.Protocol) + ";")
	}
	return b.String()
}

func sortAddresses(a []corev1.EndpointAddress) {
	sort.Slice(a, func(i, j int) bool {
		if a[i].IP != a[j].IP {
			return a[i].IP < a[j].IP
		}
		return a[i].TargetRef.Name < a[j].TargetRef.Name
	})
}

// findPort resolves a Service port's targetPort on a pod: a name is looked
// up among the containers' ports of the same protocol; a number is used as is.
func findPort(pod *corev1.Pod, sp corev1.ServicePort) (int32, bool) {
	proto := sp.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	tp := sp.TargetPort
	switch {
	case tp.Type == intstr.String && tp.StrVal != "":
		for _, c := range pod.Spec.Containers {
			for _, p := range c.Ports {
				pp := p.Protocol
				if pp == "" {
					pp = corev1.ProtocolTCP
				}
				if p.Name == tp.StrVal && pp == proto {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return tp.IntVal, true
	}
	return sp.Port, true
}
