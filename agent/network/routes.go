package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes SyncRoutes installs (the rtm_protocol
// field, like "proto static" but ours), so a restarted agent can find and
// replace them and never mistakes another route for its own.
const routeProtocol = 0x46 // 'F'

// SyncRoutes makes the node's host-gw routes exactly routes: routes to
// other nodes' podCIDRs via their node IPs. Routes it installed earlier
// (this run or a previous one) that are no longer wanted are removed; routes
// it did not install are never touched, and a wanted route that collides
// with one of them is reported as an error while the rest are still
// applied. A route to this node's own podCIDR is skipped: the bridge serves
// it. It also turns on IP forwarding, without which nothing routes.
func (m *Manager) SyncRoutes(routes []Route) error {
	m.mu.Lock()
	own := m.cidr
	m.mu.Unlock()

	want := make(map[string]kernelRoute, len(routes))
	v6 := false
	for i, r := range routes {
		if r.CIDR == nil || r.Via == nil {
			return fmt.Errorf("sync routes: route %d: needs a CIDR and a next hop", i)
		}
		kr := kernelRoute{family: unix.AF_INET, protocol: routeProtocol}
		ones, bits := r.CIDR.Mask.Size()
		dst4, via4 := r.CIDR.IP.To4(), r.Via.To4()
		switch {
		case bits == 32 && dst4 != nil && via4 != nil:
			kr.gw = via4
		case bits == 128 && dst4 == nil && r.Via.To16() != nil && via4 == nil:
			kr.family, kr.gw = unix.AF_INET6, r.Via.To16()
			v6 = true
		default:
			return fmt.Errorf("sync routes: route %d (%v via %v): CIDR and next hop must be of one IP family", i, r.CIDR, r.Via)
		}
		kr.dst = &net.IPNet{IP: r.CIDR.IP.Mask(r.CIDR.Mask), Mask: r.CIDR.Mask}
		if ones == 0 {
			return fmt.Errorf("sync routes: route %d: refusing to install a default route", i)
		}
		key := kr.dst.String()
		if own != nil && key == own.String() {
			m.log.Debug("skipping route to this node's own pod CIDR", "cidr", key)
			continue
		}
		if prev, ok := want[key]; ok && !prev.gw.Equal(kr.gw) {
			return fmt.Errorf("sync routes: %s is routed via both %v and %v", key, prev.gw, kr.gw)
		}
		want[key] = kr
	}

	if err := enableForwarding(v6 || (own != nil && own.IP.To4() == nil)); err != nil {
		return fmt.Errorf("sync routes: %w", err)
	}

	m.routeMu.Lock()
	defer m.routeMu.Unlock()
	existing, err := listRoutes()
	if err != nil {
		return fmt.Errorf("sync routes: %w", err)
	}
	var errs []error
	kept := make(map[string]bool)
	for _, r := range existing {
		if r.protocol != routeProtocol {
			continue
		}
		key := r.dst.String()
		if w, ok := want[key]; ok && w.gw.Equal(r.gw) && !kept[key] {
			kept[key] = true
			continue
		}
		if err := delRoute(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s via %v: %w", key, r.gw, err))
			continue
		}
		m.log.Info("removed route", "cidr", key, "via", r.gw)
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if kept[key] {
			continue
		}
		w := want[key]
		err := addRoute(w)
		switch {
		case errors.Is(err, unix.EEXIST):
			errs = append(errs, fmt.Errorf("add route %s via %v: a route to %s exists that flotilla did not make; left alone", key, w.gw, key))
		case err != nil:
			errs = append(errs, fmt.Errorf("add route %s via %v: %w", key, w.gw, err))
		default:
			m.log.Info("added route", "cidr", key, "via", w.gw)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("sync routes: %w", errors.Join(errs...))
	}
	return nil
}

// enableForwarding turns on IPv4 (and if asked IPv6) forwarding in the
// agent's network namespace; /proc/sys/net resolves to the namespace of
// the thread that opens it.
func enableForwarding(v6 bool) error {
	files := []string{"/proc/sys/net/ipv4/ip_forward"}
	if v6 {
		files = append(files, "/proc/sys/net/ipv6/conf/all/forwarding")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimSpace(string(b)) == "1" {
			continue
		}
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	return nil
}
