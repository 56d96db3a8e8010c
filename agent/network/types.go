package network

import (
	"errors"
	"net"
)

// ErrNotReady means pods cannot be networked yet: the node has no podCIDR,
// or the CNI plugins are missing. The agent reports it in its Node's Ready
// condition and retries.
var ErrNotReady = errors.New("pod network not ready")

// PortMapping is a container port published on the node (hostPort).
type PortMapping struct {
	HostPort      int32
	ContainerPort int32
	Protocol      string // "TCP" (default), "UDP" or "SCTP"
	HostIP        string // "" = all addresses
}

// PodNetwork names the pod whose network is set up.
type PodNetwork struct {
	UID, Namespace, Name string
	Ports                []PortMapping
}

// Attachment is a pod's network as set up.
type Attachment struct {
	// NetNSPath is the pod's network namespace, a bind-mounted nsfs file
	// that containers join (runtime.ContainerSpec.NetNSPath).
	NetNSPath string
	// IP is the pod's address from the node's podCIDR.
	IP net.IP
}

// Route sends traffic for another node's podCIDR to that node (host-gw).
type Route struct {
	CIDR *net.IPNet
	Via  net.IP
}
