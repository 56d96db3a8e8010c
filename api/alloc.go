package api

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"flotilla/fsm"
)

// Allocation keys live in the FSM next to the objects, so every master
// agrees: a Service write claims its ClusterIP and NodePorts with
// CompareAbsent in the same transaction that stores the Service, and its
// delete releases them in the same transaction that removes it. The value of
// a claim is the key of the Service holding it.
const (
	allocIPPrefix   = "/flotilla/allocations/clusterips/"
	allocPortPrefix = "/flotilla/allocations/nodeports/"
	// kubernetesServiceKey may hold the first address of the range.
	kubernetesServiceKey = "/core/services/default/kubernetes"
	// maxProbes bounds the search for a free address or port per attempt.
	maxProbes = 4096
)

type allocator struct {
	cidr             netip.Prefix
	first, last      uint32 // usable addresses: network+1 .. broadcast-1
	portMin, portMax int
}

func newAllocator(cidr netip.Prefix, portMin, portMax int) *allocator {
	base := ip4ToUint(cidr.Addr())
	size := uint32(1) << (32 - cidr.Bits())
	return &allocator{cidr: cidr, first: base + 1, last: base + size - 2, portMin: portMin, portMax: portMax}
}

func ip4ToUint(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func uintToIP4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// ReservedIP is the first address of the range, for default/kubernetes.
func (a *allocator) reservedIP() netip.Addr { return uintToIP4(a.first) }

// claim is one allocation key a write takes.
type claim struct {
	requested bool // the client asked for this value
	path      *field.Path
	value     string
	what      string // "IP" or "port"
}

// allocation is what one Service write claims and releases.
type allocation struct {
	owner    string
	claims   map[string]claim
	order    []string
	releases []string
}

func (al *allocation) claim(key string, c claim) {
	if al.claims == nil {
		al.claims = map[string]claim{}
	}
	if _, ok := al.claims[key]; ok {
		return
	}
	al.claims[key] = c
	al.order = append(al.order, key)
}

func (al *allocation) addTo(txn *fsm.Txn) {
	if al == nil {
		return
	}
	for _, k := range al.order {
		txn.Compares = append(txn.Compares, fsm.Compare{Key: k, Target: fsm.CompareAbsent})
		txn.Ops = append(txn.Ops, fsm.Op{Type: fsm.OpPut, Key: k, Value: []byte(al.owner)})
	}
	for _, k := range al.releases {
		txn.Ops = append(txn.Ops, fsm.Op{Type: fsm.OpDelete, Key: k})
	}
}

func (al *allocation) isClaim(key string) bool {
	if al == nil {
		return false
	}
	_, ok := al.claims[key]
	return ok
}

// conflict explains a lost claim: 422 when the client asked for the value,
// nil (retry with another) when the server picked it.
func (al *allocation) conflict(key string) error {
	c, ok := al.claims[key]
	if !ok || !c.requested {
		return nil
	}
	return apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), ownerName(al.owner),
		field.ErrorList{field.Invalid(c.path, c.value, fmt.Sprintf("provided %s is already allocated", c.what))})
}

func ownerName(key string) string {
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '/' {
			return key[i+1:]
		}
	}
	return key
}

func ipKey(ip string) string { return allocIPPrefix + ip }
func portKey(p int32) string { return allocPortPrefix + strconv.Itoa(int(p)) }
func needsClusterIP(svc *corev1.Service) bool {
	return svc.Spec.Type != corev1.ServiceTypeExternalName && svc.Spec.ClusterIP != corev1.ClusterIPNone
}
func needsNodePorts(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer
}

func (a *allocator) invalid(owner string, path *field.Path, value, msg string) error {
	return apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), ownerName(owner),
		field.ErrorList{field.Invalid(path, value, msg)})
}

// claimIP claims the Service's requested ClusterIP or picks a free one and
// sets spec.clusterIP and spec.clusterIPs.
func (a *allocator) claimIP(st *fsm.Store, al *allocation, svc *corev1.Service) error {
	path := field.NewPath("spec", "clusterIPs").Index(0)
	if svc.Spec.ClusterIP != "" {
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !ip.Is4() {
			return a.invalid(al.owner, path, svc.Spec.ClusterIP, "must be a valid IPv4 address")
		}
		v := ip4ToUint(ip)
		if !a.cidr.Contains(ip) || v < a.first || v > a.last {
			return a.invalid(al.owner, path, svc.Spec.ClusterIP,
				fmt.Sprintf("failed to allocate IP %s: provided IP is not in the valid range. The range of valid IPs is %s", ip, a.cidr))
		}
		if v == a.first && al.owner != kubernetesServiceKey {
			return a.invalid(al.owner, path, svc.Spec.ClusterIP, "provided IP is already allocated")
		}
		if kv, _ := st.Get(ipKey(ip.String())); kv != nil && string(kv.Value) != al.owner {
			return a.invalid(al.owner, path, svc.Spec.ClusterIP, "provided IP is already allocated")
		}
		svc.Spec.ClusterIP = ip.String()
		svc.Spec.ClusterIPs = []string{ip.String()}
		al.claim(ipKey(ip.String()), claim{requested: true, path: path, value: ip.String(), what: "IP"})
		return nil
	}
	// The first address is reserved; search from a random point for a free one.
	lo, n := a.first+1, a.last-a.first
	if n == 0 {
		return apierrors.NewInternalError(fmt.Errorf("failed to allocate a serviceIP: range is full"))
	}
	start := rand.Uint32N(n)
	for i := uint32(0); i < n && i < maxProbes; i++ {
		ip := uintToIP4(lo + (start+i)%n).String()
		if al.isClaim(ipKey(ip)) {
			continue
		}
		if kv, _ := st.Get(ipKey(ip)); kv == nil {
			svc.Spec.ClusterIP = ip
			svc.Spec.ClusterIPs = []string{ip}
			al.claim(ipKey(ip), claim{path: path, value: ip, what: "IP"})
			return nil
		}
	}
	return apierrors.NewInternalError(fmt.Errorf("failed to allocate a serviceIP: range is full"))
}

// claimPorts claims each requested NodePort and picks free ones for the rest.
func (a *allocator) claimPorts(st *fsm.Store, al *allocation, svc *corev1.Service, owned map[int32]bool) error {
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		path := field.NewPath("spec", "ports").Index(i).Child("nodePort")
		if p.NodePort != 0 {
			if owned[p.NodePort] {
				continue
			}
			if int(p.NodePort) < a.portMin || int(p.NodePort) > a.portMax {
				return a.invalid(al.owner, path, strconv.Itoa(int(p.NodePort)),
					fmt.Sprintf("provided port is not in the valid range. The range of valid ports is %d-%d", a.portMin, a.portMax))
			}
			if kv, _ := st.Get(portKey(p.NodePort)); kv != nil && string(kv.Value) != al.owner {
				return a.invalid(al.owner, path, strconv.Itoa(int(p.NodePort)), "provided port is already allocated")
			}
			al.claim(portKey(p.NodePort), claim{requested: true, path: path, value: strconv.Itoa(int(p.NodePort)), what: "port"})
			continue
		}
		n := uint32(a.portMax - a.portMin + 1)
		start := rand.Uint32N(n)
		found := false
		for j := uint32(0); j < n; j++ {
			port := int32(a.portMin + int((start+j)%n))
			if owned[port] || al.isClaim(portKey(port)) {
				continue
			}
			if kv, _ := st.Get(portKey(port)); kv == nil {
				p.NodePort = port
				al.claim(portKey(port), claim{path: path, value: strconv.Itoa(int(port)), what: "port"})
				found = true
				break
			}
		}
		if !found {
			return apierrors.NewInternalError(fmt.Errorf("failed to allocate a nodePort: range is full"))
		}
	}
	return nil
}

// forCreate claims what a new Service needs.
func (a *allocator) forCreate(st *fsm.Store, owner string, svc *corev1.Service) (*allocation, error) {
	al := &allocation{owner: owner}
	if needsClusterIP(svc) {
		if err := a.claimIP(st, al, svc); err != nil {
			return nil, err
		}
	}
	if needsNodePorts(svc) {
		if err := a.claimPorts(st, al, svc, nil); err != nil {
			return nil, err
		}
	}
	return al, nil
}

// forUpdate claims what next needs beyond what cur holds and releases what
// next no longer uses.
func (a *allocator) forUpdate(st *fsm.Store, owner string, next, cur *corev1.Service) (*allocation, error) {
	al := &allocation{owner: owner}
	curIP := ""
	if needsClusterIP(cur) && cur.Spec.ClusterIP != "" {
		curIP = cur.Spec.ClusterIP
	}
	if needsClusterIP(next) {
		if next.Spec.ClusterIP != curIP || curIP == "" {
			if err := a.claimIP(st, al, next); err != nil {
				return nil, err
			}
		}
	}
	if curIP != "" && (!needsClusterIP(next) || next.Spec.ClusterIP != curIP) {
		al.releases = append(al.releases, ipKey(curIP))
	}
	owned := map[int32]bool{}
	if needsNodePorts(cur) {
		for _, p := range cur.Spec.Ports {
			if p.NodePort != 0 {
				owned[p.NodePort] = true
			}
		}
	}
	kept := map[int32]bool{}
	if needsNodePorts(next) {
		if err := a.claimPorts(st, al, next, owned); err != nil {
			return nil, err
		}
		for _, p := range next.Spec.Ports {
			kept[p.NodePort] = true
		}
	}
	for p := range owned {
		if !kept[p] {
			al.releases = append(al.releases, portKey(p))
		}
	}
	return al, nil
}

// forDelete releases everything a Service holds.
func (a *allocator) forDelete(svc *corev1.Service) *allocation {
	al := &allocation{}
	if needsClusterIP(svc) && svc.Spec.ClusterIP != "" {
		al.releases = append(al.releases, ipKey(svc.Spec.ClusterIP))
	}
	if needsNodePorts(svc) {
		seen := map[int32]bool{}
		for _, p := range svc.Spec.Ports {
			if p.NodePort != 0 && !seen[p.NodePort] {
				seen[p.NodePort] = true
				al.releases = append(al.releases, portKey(p.NodePort))
			}
		}
	}
	return al
}

// prepareServiceUpdate carries over what an update may leave out (kubectl
// replace and apply do): the allocated ClusterIP, IP families, and the
// NodePorts of ports that stay. Ports of a Service that no longer needs
// NodePorts lose them.
func prepareServiceUpdate(next, cur *corev1.Service) {
	if needsClusterIP(next) && needsClusterIP(cur) {
		if next.Spec.ClusterIP == "" {
			next.Spec.ClusterIP = cur.Spec.ClusterIP
		}
		if len(next.Spec.ClusterIPs) == 0 && next.Spec.ClusterIP == cur.Spec.ClusterIP {
			next.Spec.ClusterIPs = cur.Spec.ClusterIPs
		}
		if len(next.Spec.IPFamilies) == 0 {
			next.Spec.IPFamilies = cur.Spec.IPFamilies
		}
		if next.Spec.IPFamilyPolicy == nil {
			next.Spec.IPFamilyPolicy = cur.Spec.IPFamilyPolicy
		}
	}
	if !needsNodePorts(next) {
		for i := range next.Spec.Ports {
			next.Spec.Ports[i].NodePort = 0
		}
		return
	}
	if !needsNodePorts(cur) {
		return
	}
	for i := range next.Spec.Ports {
		np := &next.Spec.Ports[i]
		if np.NodePort != 0 {
			continue
		}
		for _, op := range cur.Spec.Ports {
			if op.Port == np.Port && op.Protocol == np.Protocol || (op.Name != "" && op.Name == np.Name) {
				np.NodePort = op.NodePort
				break
			}
		}
	}
}
