package netproxy

import (
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// defaultAffinityTimeout is Kubernetes' default for sessionAffinity
// ClientIP: three hours.
const defaultAffinityTimeout = 10800 * time.Second

// frontendKey identifies a frontend: one protocol on one address and port.
type frontendKey struct {
	Addr     netip.AddrPort
	Protocol corev1.Protocol
}

// wanted is one frontend as the API objects describe it.
type wanted struct {
	spec frontendSpec
	set  BackendSet
}

// desiredFrontends turns one Service and its Endpoints into the frontends
// this node serves for it: one per port on each ClusterIP, and one per
// port on each NodePort address. A nil or headless Service, or an
// ExternalName one, has none. Ports of protocols other than TCP and UDP
// are returned in skipped, so the caller can say so once.
func desiredFrontends(svc *corev1.Service, eps *corev1.Endpoints, node string, nodeAddrs []netip.Addr) (out map[frontendKey]wanted, skipped []string) {
	out = map[frontendKey]wanted{}
	if svc == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return out, nil
	}
	ips := clusterIPs(svc)
	if len(ips) == 0 {
		return out, nil // headless: DNS's business, not the proxy's
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	nodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != corev1.ProtocolTCP && sp.Protocol != corev1.ProtocolUDP {
			skipped = append(skipped, sp.Name)
			continue
		}
		if !validPort(sp.Port) {
			continue // validation keeps these out; never listen on port 0
		}
		spn := ServicePortName{NamespacedName: name, Port: sp.Name}
		all := endpointsFor(eps, sp)
		cluster := BackendSet{Endpoints: all, AffinityTimeout: affinity}
		if internalLocal {
			cluster.Endpoints = onNode(all, node)
		}
		for _, ip := range ips {
			k := frontendKey{Addr: netip.AddrPortFrom(ip, uint16(sp.Port)), Protocol: sp.Protocol}
			out[k] = wanted{spec: frontendSpec{Service: spn, Addr: k.Addr, Protocol: sp.Protocol}, set: cluster}
		}
		if !nodePorts || !validPort(sp.NodePort) {
			continue
		}
		external := BackendSet{Endpoints: all, AffinityTimeout: affinity}
		if externalLocal {
			// Only this node's endpoints: traffic that arrived here
			// stays here (and a node without one refuses it, so a load
			// balancer's health check moves on).
			external.Endpoints = onNode(all, node)
		}
		for _, a := range nodeAddrs {
			k := frontendKey{Addr: netip.AddrPortFrom(a, uint16(sp.NodePort)), Protocol: sp.Protocol}
			out[k] = wanted{spec: frontendSpec{Service: spn, Addr: k.Addr, Protocol: sp.Protocol, NodePort: true}, set: external}
		}
	}
	return out, skipped
}

// clusterIPs are the Service's parsed cluster IPs; none for a headless
// Service or one not allocated yet.
func clusterIPs(svc *corev1.Service) []netip.Addr {
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range raw {
		if s == corev1.ClusterIPNone {
			return nil
		}
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// endpointsFor lists the ready endpoints of one Service port: the
// addresses of every subset that has a port of the same name and
// protocol (the endpoints controller names endpoint ports after the
// Service's ports and has already resolved named target ports).
func endpointsFor(eps *corev1.Endpoints, sp corev1.ServicePort) []Endpoint {
	if eps == nil {
		return nil
	}
	var out []Endpoint
	for _, ss := range eps.Subsets {
		for _, ep := range ss.Ports {
			proto := ep.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			if ep.Name != sp.Name || proto != sp.Protocol || !validPort(ep.Port) {
				continue
			}
			for _, a := range ss.Addresses {
				ip, err := netip.ParseAddr(a.IP)
				if err != nil {
					continue
				}
				e := Endpoint{Addr: netip.AddrPortFrom(ip.Unmap(), uint16(ep.Port))}
				if a.NodeName != nil {
					e.Node = *a.NodeName
				}
				out = append(out, e)
			}
		}
	}
	// A stable order, so an unchanged Endpoints object is an unchanged set.
	slices.SortFunc(out, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	return slices.CompactFunc(out, func(a, b Endpoint) bool { return a.Addr == b.Addr })
}

func validPort(p int32) bool { return p > 0 && p <= 65535 }

// onNode keeps the endpoints on node.
func onNode(eps []Endpoint, node string) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if e.Node == node {
			out = append(out, e)
		}
	}
	return out
}

// sameSet reports whether two backend sets are equal (both sorted).
func sameSet(a, b BackendSet) bool {
	return a.AffinityTimeout == b.AffinityTimeout && slices.Equal(a.Endpoints, b.Endpoints)
}
