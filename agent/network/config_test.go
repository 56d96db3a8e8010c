package network

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func TestParsePodCIDR(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "10.244.1.0/24", want: "10.244.1.0/24"},
		{in: " 10.244.0.0/16 ", want: "10.244.0.0/16"},
		{in: "10.0.0.0/30", want: "10.0.0.0/30"},
		{in: "fd00:1::/64", want: "fd00:1::/64"},
		{in: "", err: "parse pod CIDR"},
		{in: "nonsense", err: "parse pod CIDR"},
		{in: "10.0.0.0", err: "parse pod CIDR"},
		{in: "10.0.0.0/33", err: "parse pod CIDR"},
		{in: "300.0.0.0/24", err: "parse pod CIDR"},
		{in: "10.0.0.5/24", err: "host bits set"},
		{in: "10.0.0.0/31", err: "too small"},
		{in: "10.0.0.0/32", err: "too small"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parsePodCIDR(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parsePodCIDR(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("parsePodCIDR(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestBuildConflist(t *testing.T) {
	cidr, _ := parsePodCIDR("10.244.3.0/24")
	raw, err := buildConflist(cidr, "br-test", 1450, "/data/ipam", true)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, raw)
	}
	if list.Name != networkName || list.CNIVersion != cniVersion {
		t.Errorf("name/version = %s/%s", list.Name, list.CNIVersion)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if got := strings.Join(types, ","); got != "bridge,portmap" {
		t.Errorf("plugins = %s", got)
	}
	if !list.Plugins[1].Network.Capabilities["portMappings"] {
		t.Error("portmap lacks the portMappings capability")
	}
	var br bridgeConf
	if err := json.Unmarshal(list.Plugins[0].Bytes, &br); err != nil {
		t.Fatal(err)
	}
	if br.Bridge != "br-test" || !br.IsGateway || br.IPMasq || !br.HairpinMode || br.MTU != 1450 {
		t.Errorf("bridge config = %+v", br)
	}
	r := br.IPAM.Ranges[0][0]
	if br.IPAM.Type != "host-local" || r.Subnet != "10.244.3.0/24" || r.Gateway != "10.244.3.1" || br.IPAM.DataDir != "/data/ipam" {
		t.Errorf("ipam config = %+v", br.IPAM)
	}
	if s, err := conflistSubnet(raw); err != nil || s != "10.244.3.0/24" {
		t.Errorf("conflistSubnet = %q, %v", s, err)
	}
	// Without hostPorts: the same bridge, and no portmap.
	plain, err := buildConflist(cidr, "br-test", 1450, "/data/ipam", false)
	if err != nil {
		t.Fatal(err)
	}
	plainList, err := libcni.ConfListFromBytes(plain)
	if err != nil {
		t.Fatalf("libcni rejects the conflist without portmap: %v\n%s", err, plain)
	}
	if len(plainList.Plugins) != 1 || string(plainList.Plugins[0].Bytes) != string(list.Plugins[0].Bytes) {
		t.Errorf("conflist without hostPorts:\n%s", plain)
	}
	cidr6, _ := parsePodCIDR("fd00:9::/64")
	if gw := gatewayOf(cidr6); !gw.Equal(net.ParseIP("fd00:9::1")) {
		t.Errorf("IPv6 gateway = %v", gw)
	}
}

func TestCNIPortMappings(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []PortMapping
		want string // JSON, or "" for an error
		err  string
	}{
		{name: "none", in: nil, want: "null"},
		{name: "default protocol", in: []PortMapping{{HostPort: 80, ContainerPort: 8080}},
			want: `[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]`},
		{name: "udp with host ip", in: []PortMapping{{HostPort: 53, ContainerPort: 53, Protocol: "UDP", HostIP: "10.0.0.1"}},
			want: `[{"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"10.0.0.1"}]`},
		{name: "no host port is not published", in: []PortMapping{{ContainerPort: 80}}, want: "null"},
		{name: "bad protocol", in: []PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: "icmp"}}, err: "unknown protocol"},
		{name: "host port too big", in: []PortMapping{{HostPort: 70000, ContainerPort: 1}}, err: "out of range"},
		{name: "negative host port", in: []PortMapping{{HostPort: -1, ContainerPort: 1}}, err: "out of range"},
		{name: "no container port", in: []PortMapping{{HostPort: 80}}, err: "containerPort 0 out of range"},
		{name: "bad host ip", in: []PortMapping{{HostPort: 80, ContainerPort: 80, HostIP: "nope"}}, err: "not an IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cniPortMappings(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(got)
			if string(b) != tc.want {
				t.Fatalf("got %s, want %s", b, tc.want)
			}
		})
	}
}

func TestValidUID(t *testing.T) {
	for _, ok := range []string{"7f9c2a4e-1b2c-4d5e-8f90-123456789abc", "a", "pod_1.x"} {
		if err := validUID(ok); err != nil {
			t.Errorf("validUID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "../etc", "a/b", "-x", ".hidden", "a b", "a;b", strings.Repeat("a", 129)} {
		if err := validUID(bad); err == nil {
			t.Errorf("validUID(%q) = nil, want an error", bad)
		}
	}
}

func TestNewBadConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"no data dir", Config{}, "DataDir is required"},
		{"long bridge name", Config{DataDir: dir, Bridge: "a-very-long-bridge-name"}, "bad bridge name"},
		{"bridge name with slash", Config{DataDir: dir, Bridge: "a/b"}, "bad bridge name"},
		{"tiny mtu", Config{DataDir: dir, MTU: 100}, "MTU 100"},
		{"data dir is a file", Config{DataDir: filepath.Join("/proc/self/status")}, "create"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("New = %v, want error containing %q", err, tc.err)
			}
		})
	}
}
