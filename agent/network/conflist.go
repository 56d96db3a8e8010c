package network

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
)

// networkName names the CNI network; host-local keeps its leases under
// <ipam dir>/<networkName> and libcni keys its cache by it.
const networkName = "flotilla"

// cniVersion is the newest spec version Debian 12's plugins (1.1.1) speak.
const cniVersion = "1.0.0"

// podIfName is the pod side of the veth.
const podIfName = "eth0"

// requiredPlugins are the plugin binaries the conflist uses.
var requiredPlugins = []string{"bridge", "host-local", "portmap"}

type conflist struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Plugins    []any  `json:"plugins"`
}

type bridgeConf struct {
	Type        string   `json:"type"`
	Bridge      string   `json:"bridge"`
	IsGateway   bool     `json:"isGateway"`
	IPMasq      bool     `json:"ipMasq"`
	HairpinMode bool     `json:"hairpinMode"`
	MTU         int      `json:"mtu"`
	IPAM        ipamConf `json:"ipam"`
}

type ipamConf struct {
	Type    string          `json:"type"`
	Ranges  [][]ipamRange   `json:"ranges"`
	Routes  []ipamRouteConf `json:"routes"`
	DataDir string          `json:"dataDir"`
}

type ipamRange struct {
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
}

type ipamRouteConf struct {
	Dst string `json:"dst"`
}

type portmapConf struct {
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities"`
	SNAT         bool            `json:"snat"`
}

// parsePodCIDR checks a node's spec.podCIDR: a canonical network with room
// for a gateway and pods.
func parsePodCIDR(s string) (*net.IPNet, error) {
	ip, ipnet, err := net.ParseCIDR(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("parse pod CIDR %q: %w", s, err)
	}
	if !ip.Equal(ipnet.IP) {
		return nil, fmt.Errorf("pod CIDR %q has host bits set (the network is %s)", s, ipnet)
	}
	ones, bits := ipnet.Mask.Size()
	if bits-ones < 2 {
		return nil, fmt.Errorf("pod CIDR %q is too small: it needs room for a gateway and pods", s)
	}
	if ip4 := ipnet.IP.To4(); ip4 != nil {
		ipnet.IP = ip4
	}
	return ipnet, nil
}

// gatewayOf is the first address of the network (".1"), which the bridge
// plugin puts on the bridge.
func gatewayOf(n *net.IPNet) net.IP {
	gw := append(net.IP(nil), n.IP...)
	gw[len(gw)-1] |= 1
	return gw
}

// buildConflist writes the CNI network for a podCIDR: a bridge acting as
// the pods' gateway, with host-local handing out the CIDR; then, when
// hostPorts is set, portmap for them (snat so that hostPorts on localhost
// work). Every plugin is a process to start per pod, which a burst of pods
// pays for in CPU, so none runs without a use: pods without hostPorts get
// the list without portmap, and there is no loopback plugin because
// createNetNS brings lo up itself.
func buildConflist(cidr *net.IPNet, bridge string, mtu int, ipamDir string, hostPorts bool) ([]byte, error) {
	defaultDst := "0.0.0.0/0"
	if cidr.IP.To4() == nil {
		defaultDst = "::/0"
	}
	c := conflist{
		CNIVersion: cniVersion,
		Name:       networkName,
		Plugins: []any{
			bridgeConf{
				Type:        "bridge",
				Bridge:      bridge,
				IsGateway:   true,
				IPMasq:      false,
				HairpinMode: true,
				MTU:         mtu,
				IPAM: ipamConf{
					Type:    "host-local",
					Ranges:  [][]ipamRange{{{Subnet: cidr.String(), Gateway: gatewayOf(cidr).String()}}},
					Routes:  []ipamRouteConf{{Dst: defaultDst}},
					DataDir: ipamDir,
				},
			},
		},
	}
	if hostPorts {
		c.Plugins = append(c.Plugins, portmapConf{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}, SNAT: true})
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode cni conflist: %w", err)
	}
	return b, nil
}

// conflistSubnet reads back the podCIDR a conflist was built for.
func conflistSubnet(b []byte) (string, error) {
	var c struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Ranges [][]ipamRange `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return "", err
	}
	for _, p := range c.Plugins {
		if p.Type == "bridge" && len(p.IPAM.Ranges) > 0 && len(p.IPAM.Ranges[0]) > 0 {
			return p.IPAM.Ranges[0][0].Subnet, nil
		}
	}
	return "", fmt.Errorf("no bridge subnet in conflist")
}

// cniPortMapping is a port mapping as portmap reads it from runtimeConfig.
type cniPortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// cniPortMappings checks a pod's hostPorts and converts them. Entries with
// no HostPort are not published and are dropped.
func cniPortMappings(ports []PortMapping) ([]cniPortMapping, error) {
	var out []cniPortMapping
	for i, p := range ports {
		if p.HostPort == 0 {
			continue
		}
		if p.HostPort < 0 || p.HostPort > 65535 {
			return nil, fmt.Errorf("port %d: hostPort %d out of range", i, p.HostPort)
		}
		if p.ContainerPort <= 0 || p.ContainerPort > 65535 {
			return nil, fmt.Errorf("port %d: containerPort %d out of range", i, p.ContainerPort)
		}
		proto := strings.ToLower(p.Protocol)
		switch proto {
		case "":
			proto = "tcp"
		case "tcp", "udp", "sctp":
		default:
			return nil, fmt.Errorf("port %d: unknown protocol %q", i, p.Protocol)
		}
		if p.HostIP != "" && net.ParseIP(p.HostIP) == nil {
			return nil, fmt.Errorf("port %d: hostIP %q is not an IP address", i, p.HostIP)
		}
		out = append(out, cniPortMapping{HostPort: p.HostPort, ContainerPort: p.ContainerPort, Protocol: proto, HostIP: p.HostIP})
	}
	return out, nil
}
