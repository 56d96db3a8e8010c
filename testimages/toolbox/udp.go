package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// maxDatagram is the largest UDP payload (IPv4), so no datagram is cut.
const maxDatagram = 65507

// udpEcho answers every datagram on pc with "hostname=NAME " and the
// datagram, so a client through a Service sees which endpoint answered.
// It returns when pc is closed.
func udpEcho(pc net.PacketConn, hostname string) {
	prefix := "hostname=" + hostname + " "
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error (an ICMP error reported on this socket):
			// keep serving.
			fmt.Fprintf(os.Stderr, "udp echo: %v\n", err)
			continue
		}
		reply := append([]byte(prefix), buf[:n]...)
		if _, err := pc.WriteTo(reply, from); err != nil {
			fmt.Fprintf(os.Stderr, "udp echo to %s: %v\n", from, err)
		}
	}
}

// udpClient is `udp ADDR MSG [--timeout D]`: one datagram out, the first
// reply printed on w.
func udpClient(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("udp", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the reply")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("usage: udp ADDR MSG [--timeout D]")
	}
	c, err := net.Dial("udp", pos[0])
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(*timeout)); err != nil {
		return err
	}
	if _, err := c.Write([]byte(pos[1])); err != nil {
		return err
	}
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("no reply from %s within %v", pos[0], *timeout)
		}
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", buf[:n])
	return err
}
