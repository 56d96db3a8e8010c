package network

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
)

// DefaultClusterCIDR is the range every node's podCIDR comes from (the
// node IPAM controller's default).
const DefaultClusterCIDR = "10.244.0.0/16"

// masqChain is the nat chain holding the pod egress rules; POSTROUTING
// jumps to it.
const masqChain = "FLOTILLA-POSTROUTING"

// ensureMasquerade makes pods' traffic to anything outside the cluster's
// pod range leave with the node's address, as on a Kubernetes node: the
// outside world has no route back to pod IPs. Pod to pod stays unNATed
// (host-gw routes carry it), and so does traffic on the pod bridge. The
// chain is rewritten whole each time, so a changed podCIDR leaves nothing
// stale; iptables is the one portmap already needs.
func (m *Manager) ensureMasquerade(podCIDR *net.IPNet) error {
	cluster := m.cfg.ClusterCIDR
	if cluster == "" {
		cluster = DefaultClusterCIDR
	}
	ipt := func(args ...string) error {
		cmd := exec.Command("iptables", append([]string{"-w", "-t", "nat"}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	if ipt("-S", masqChain) != nil {
		if err := ipt("-N", masqChain); err != nil {
			return err
		}
	}
	jump := []string{"POSTROUTING", "-m", "comment", "--comment", "flotilla pod egress", "-j", masqChain}
	if ipt(append([]string{"-C"}, jump...)...) != nil {
		if err := ipt(append([]string{"-A"}, jump...)...); err != nil {
			return err
		}
	}
	if err := ipt("-F", masqChain); err != nil {
		return err
	}
	pods := podCIDR.String()
	if err := ipt("-A", masqChain, "-s", pods, "-d", cluster, "-j", "RETURN"); err != nil {
		return err
	}
	return ipt("-A", masqChain, "-s", pods, "!", "-o", m.cfg.Bridge, "-j", "MASQUERADE")
}
