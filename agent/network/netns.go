package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// onNetNSThread runs fn on a fresh OS thread that enter has moved into
// another network namespace, then moves the thread back. It runs on its own
// goroutine so that, if moving back fails, that goroutine can exit with the
// thread still locked: the Go runtime then destroys the thread rather than
// let other goroutines run in the wrong namespace. enter must either switch
// the thread's namespace or leave it untouched and return an error.
func onNetNSThread(enter func() error, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the current network namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Deliberately no UnlockOSThread: the thread dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("return to the agent's network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// inNetNS runs fn on a thread inside the network namespace at path.
func inNetNS(path string, fn func() error) error {
	return onNetNSThread(func() error {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open network namespace %s: %w", path, err)
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter network namespace %s: %w", path, err)
		}
		return nil
	}, fn)
}

// createNetNS makes a new network namespace with lo up and pins it by
// bind-mounting it onto path, which must not exist yet.
func createNetNS(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create network namespace file: %w", err)
	}
	f.Close()
	err = onNetNSThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		return nil
	}, func() error {
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount network namespace onto %s: %w", path, err)
		}
		// Up before any container starts: a pod's containers talk over
		// localhost from their first instruction.
		return loopbackUp()
	})
	if err != nil {
		return errors.Join(err, removeNetNS(path))
	}
	return nil
}

// loopbackUp sets lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring lo up: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: read flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: set flags: %w", err)
	}
	return nil
}

// removeNetNS unmounts and removes a namespace file; missing is fine. The
// namespace itself goes away once no process is left in it.
func removeNetNS(path string) error {
	// More than one mount may be stacked if an earlier run crashed between
	// mount and bookkeeping; peel them all.
	for i := 0; i < 16; i++ {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break // not (or no longer) a mount point
		}
		return fmt.Errorf("unmount network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove network namespace file: %w", err)
	}
	return nil
}

// isNetNS reports whether path is a mounted network namespace (and not the
// empty file left behind when the mount is gone, e.g. after a reboot).
func isNetNS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// hostNetNSPath is what hostNetwork containers join: "" when the agent runs
// in the init process's network namespace (the runtime's default), else a
// path naming the agent's own.
func hostNetNSPath() string {
	var self, init unix.Stat_t
	own := "/proc/" + strconv.Itoa(os.Getpid()) + "/ns/net"
	if unix.Stat("/proc/self/ns/net", &self) != nil || unix.Stat("/proc/1/ns/net", &init) != nil {
		return own // cannot tell; naming ours explicitly is always right
	}
	if self.Dev == init.Dev && self.Ino == init.Ino {
		return ""
	}
	return own
}

// dialInNetNS connects to addr from inside the network namespace at
// nsPath. Only the socket is made inside (a socket keeps the namespace it
// was created in); connecting and waiting happen on ordinary goroutines.
// Hosts must be IP literals or "localhost": names would be resolved in the
// node's view, not the pod's.
func dialInNetNS(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	var sotype int
	switch network {
	case "tcp", "tcp4", "tcp6":
		sotype = unix.SOCK_STREAM
	case "udp", "udp4", "udp6":
		sotype = unix.SOCK_DGRAM
	default:
		return nil, fmt.Errorf("dial %s in pod: unsupported network %q (want tcp or udp)", addr, network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial in pod: %w", err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("dial %s in pod: bad port %q", addr, portStr)
	}
	var candidates []net.IP
	if host == "" || strings.EqualFold(host, "localhost") {
		candidates = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	} else if ip := net.ParseIP(host); ip != nil {
		candidates = []net.IP{ip}
	} else {
		return nil, fmt.Errorf("dial %s in pod: host %q is not an IP address or localhost", addr, host)
	}
	var ips []net.IP
	for _, ip := range candidates {
		is4 := ip.To4() != nil
		if (strings.HasSuffix(network, "4") && !is4) || (strings.HasSuffix(network, "6") && is4) {
			continue
		}
		ips = append(ips, ip)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("dial %s in pod: address does not match network %s", addr, network)
	}
	var first error
	for _, ip := range ips {
		c, err := dialOne(ctx, nsPath, sotype, ip, int(port))
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dial %s %s in pod: %w", network, addr, first)
}

// aLongTimeAgo is a deadline that has passed, to wake a blocked connect.
var aLongTimeAgo = time.Unix(1, 0)

func dialOne(ctx context.Context, nsPath string, sotype int, ip net.IP, port int) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	family := unix.AF_INET6
	var sa unix.Sockaddr
	if ip4 := ip.To4(); ip4 != nil {
		family = unix.AF_INET
		s := &unix.SockaddrInet4{Port: port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		s := &unix.SockaddrInet6{Port: port}
		copy(s.Addr[:], ip.To16())
		sa = s
	}
	fd := -1
	err := inNetNS(nsPath, func() error {
		var err error
		fd, err = unix.Socket(family, sotype|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("create socket: %w", err)
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	// The file owns fd and, being non-blocking, is registered with the
	// runtime poller, so waiting for connect does not hold a thread.
	f := os.NewFile(uintptr(fd), "pod-socket")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var connErr error
	if err := rc.Control(func(fd uintptr) { connErr = unix.Connect(int(fd), sa) }); err != nil {
		return nil, err
	}
	if errors.Is(connErr, unix.EINPROGRESS) || errors.Is(connErr, unix.EINTR) {
		// Only the context ends the wait (AfterFunc runs once ctx.Err is
		// set), so a timeout is reported as the context's error.
		stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(aLongTimeAgo) })
		defer stop()
		connErr = nil
		werr := rc.Write(func(fd uintptr) bool {
			v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
			if err != nil {
				connErr = err
				return true
			}
			switch e := unix.Errno(v); e {
			case 0:
				_, err := unix.Getpeername(int(fd))
				return err == nil // not connected yet: wait for writability
			case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
				return false
			default:
				connErr = e
				return true
			}
		})
		if werr != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, werr
		}
	}
	if connErr != nil {
		return nil, os.NewSyscallError("connect", connErr)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("wrap pod socket: %w", err)
	}
	return c, nil
}
