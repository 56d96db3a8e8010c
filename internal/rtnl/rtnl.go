package rtnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Request sends one rtnetlink request and waits for its ack; a kernel
// error comes back as its unix.Errno, so callers can test for EEXIST and
// friends with errors.Is.
func Request(typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind netlink socket: %w", err)
	}
	// The kernel answers at once; the timeout only guards against a hang.
	tv := unix.Timeval{Sec: 10}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("set netlink timeout: %w", err)
	}
	const seq = 1
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg[0:4], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:6], typ)
	binary.NativeEndian.PutUint16(msg[6:8], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:12], seq)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send netlink request: %w", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read netlink reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("parse netlink reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short netlink error message")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}

// Attr encodes one rtattr, padded to the kernel's alignment.
func Attr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b := make([]byte, (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1))
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

// addrMsg is an ifaddrmsg for one host address (/32 or /128) on ifindex,
// scope host: a ClusterIP is this node's own address and nothing routes
// to it from outside.
func addrMsg(ifindex int, a netip.Addr) []byte {
	family, bits := unix.AF_INET, 32
	if a.Is6() {
		family, bits = unix.AF_INET6, 128
	}
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = byte(family)
	b[1] = byte(bits)
	b[3] = unix.RT_SCOPE_HOST
	binary.NativeEndian.PutUint32(b[4:8], uint32(ifindex))
	b = append(b, Attr(unix.IFA_LOCAL, a.AsSlice())...)
	return append(b, Attr(unix.IFA_ADDRESS, a.AsSlice())...)
}

// AddAddr adds a as a host address (/32, /128) on the interface; present
// already is fine.
func AddAddr(ifindex int, a netip.Addr) error {
	err := Request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, addrMsg(ifindex, a.Unmap()))
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add address %s: %w", a, err)
	}
	return nil
}

// DelAddr removes the host address a from the interface; absent is fine.
func DelAddr(ifindex int, a netip.Addr) error {
	err := Request(unix.RTM_DELADDR, 0, addrMsg(ifindex, a.Unmap()))
	if errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete address %s: %w", a, err)
	}
	return nil
}

// Addrs lists the addresses of the interface, both families.
func Addrs(ifindex int) ([]netip.Prefix, error) {
	tab, err := syscall.NetlinkRIB(unix.RTM_GETADDR, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(tab)
	if err != nil {
		return nil, fmt.Errorf("list addresses: parse: %w", err)
	}
	var out []netip.Prefix
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type == unix.NLMSG_DONE {
			break
		}
		if m.Header.Type != unix.RTM_NEWADDR || len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		ifa := (*unix.IfAddrmsg)(unsafe.Pointer(&m.Data[0]))
		if int(ifa.Index) != ifindex {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		for _, at := range attrs {
			if at.Attr.Type != unix.IFA_LOCAL && !(at.Attr.Type == unix.IFA_ADDRESS && ifa.Family == unix.AF_INET6) {
				continue
			}
			a, ok := netip.AddrFromSlice(at.Value)
			if ok {
				out = append(out, netip.PrefixFrom(a, int(ifa.Prefixlen)))
			}
			break
		}
	}
	return out, nil
}
