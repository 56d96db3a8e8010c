package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"flotilla/internal/rtnl"
)

// The routes and links this package needs (list, add and delete routes,
// delete a link), spoken over rtnl so the agent needs no
// netlink library and no iproute2 binary. Sockets are opened by the calling
// goroutine; every thread of the agent is in the node's namespace (see
// onNetNSThread), so requests act there.

// kernelRoute is one unicast route as the kernel reports it.
type kernelRoute struct {
	family   int
	dst      *net.IPNet // 0.0.0.0/0 or ::/0 for a default route
	gw       net.IP
	table    uint32
	protocol uint8
	priority uint32
	oif      int
}

// listRoutes dumps the unicast routes of the main table, both families.
func listRoutes() ([]kernelRoute, error) {
	tab, err := syscall.NetlinkRIB(unix.RTM_GETROUTE, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(tab)
	if err != nil {
		return nil, fmt.Errorf("list routes: parse: %w", err)
	}
	var out []kernelRoute
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type == unix.NLMSG_DONE {
			break
		}
		if m.Header.Type != unix.RTM_NEWROUTE || len(m.Data) < unix.SizeofRtMsg {
			continue
		}
		rtm := (*unix.RtMsg)(unsafe.Pointer(&m.Data[0]))
		if rtm.Type != unix.RTN_UNICAST {
			continue
		}
		r := kernelRoute{family: int(rtm.Family), table: uint32(rtm.Table), protocol: rtm.Protocol}
		bits := 32
		if r.family == unix.AF_INET6 {
			bits = 128
		} else if r.family != unix.AF_INET {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		var dst net.IP
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_DST:
				dst = net.IP(append([]byte(nil), a.Value...))
			case unix.RTA_GATEWAY:
				r.gw = net.IP(append([]byte(nil), a.Value...))
			case unix.RTA_TABLE:
				if len(a.Value) == 4 {
					r.table = binary.NativeEndian.Uint32(a.Value)
				}
			case unix.RTA_PRIORITY:
				if len(a.Value) == 4 {
					r.priority = binary.NativeEndian.Uint32(a.Value)
				}
			case unix.RTA_OIF:
				if len(a.Value) == 4 {
					r.oif = int(binary.NativeEndian.Uint32(a.Value))
				}
			}
		}
		if r.table != unix.RT_TABLE_MAIN {
			continue
		}
		if dst == nil {
			dst = make(net.IP, bits/8)
		}
		r.dst = &net.IPNet{IP: dst, Mask: net.CIDRMask(int(rtm.Dst_len), bits)}
		out = append(out, r)
	}
	return out, nil
}

// routeMsg builds an rtmsg with dst, gateway and (if set) priority.
func routeMsg(r kernelRoute) []byte {
	ones, _ := r.dst.Mask.Size()
	b := []byte{
		byte(r.family), byte(ones), 0, 0, // family, dst_len, src_len, tos
		unix.RT_TABLE_MAIN, r.protocol, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST,
		0, 0, 0, 0, // flags
	}
	b = append(b, rtnl.Attr(unix.RTA_DST, ipBytes(r.dst.IP, r.family))...)
	if r.gw != nil {
		b = append(b, rtnl.Attr(unix.RTA_GATEWAY, ipBytes(r.gw, r.family))...)
	}
	if r.priority != 0 {
		b = append(b, rtnl.Attr(unix.RTA_PRIORITY, binary.NativeEndian.AppendUint32(nil, r.priority))...)
	}
	return b
}

func ipBytes(ip net.IP, family int) []byte {
	if family == unix.AF_INET {
		return ip.To4()
	}
	return ip.To16()
}

func addRoute(r kernelRoute) error {
	return rtnl.Request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, routeMsg(r))
}

func delRoute(r kernelRoute) error {
	return rtnl.Request(unix.RTM_DELROUTE, 0, routeMsg(r))
}

// deleteLink removes the interface called name; absent is fine.
func deleteLink(name string) error {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil // no such interface
	}
	b := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(b[4:8], uint32(ifc.Index))
	err = rtnl.Request(unix.RTM_DELLINK, 0, b)
	if errors.Is(err, unix.ENODEV) {
		return nil
	}
	return err
}

// defaultRouteMTU is the MTU of the interface the main table's IPv4
// default route leaves by, or 0 when there is none.
func defaultRouteMTU() int {
	routes, err := listRoutes()
	if err != nil {
		return 0
	}
	best := -1
	for i, r := range routes {
		if r.family != unix.AF_INET || r.oif == 0 {
			continue
		}
		if ones, _ := r.dst.Mask.Size(); ones != 0 {
			continue
		}
		if best < 0 || r.priority < routes[best].priority {
			best = i
		}
	}
	if best < 0 {
		return 0
	}
	ifc, err := net.InterfaceByIndex(routes[best].oif)
	if err != nil {
		return 0
	}
	return ifc.MTU
}
