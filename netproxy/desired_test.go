package netproxy

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func testService(mut ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP},
			},
		},
	}
	for _, m := range mut {
		m(s)
	}
	return s
}

func testEndpoints() *corev1.Endpoints {
	a, b := "node-a", "node-b"
	return &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{
				{IP: "10.244.1.3", NodeName: &b},
				{IP: "10.244.0.2", NodeName: &a},
			},
			NotReadyAddresses: []corev1.EndpointAddress{{IP: "10.244.0.9", NodeName: &a}},
			Ports: []corev1.EndpointPort{
				{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP},
				{Name: "dns", Port: 5353, Protocol: corev1.ProtocolUDP},
			},
		}},
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestDesiredFrontends(t *testing.T) {
	nodeAddrs := []netip.Addr{netip.MustParseAddr("192.168.1.5"), netip.MustParseAddr("127.0.0.1")}
	both := []Endpoint{{Addr: ap("10.244.0.2:8080"), Node: "node-a"}, {Addr: ap("10.244.1.3:8080"), Node: "node-b"}}
	local := both[:1]
	tcp := func(s string) frontendKey { return frontendKey{Addr: ap(s), Protocol: corev1.ProtocolTCP} }
	udp := func(s string) frontendKey { return frontendKey{Addr: ap(s), Protocol: corev1.ProtocolUDP} }

	t.Run("ClusterIP", func(t *testing.T) {
		got, skipped := desiredFrontends(testService(), testEndpoints(), "node-a", nodeAddrs)
		if len(got) != 2 || len(skipped) != 0 {
			t.Fatalf("got %d frontends (skipped %v), want 2: %+v", len(got), skipped, got)
		}
		w := got[tcp("10.96.0.10:80")]
		if w.spec.NodePort || w.spec.Service.String() != "ns/web:http" || !sameSet(w.set, BackendSet{Endpoints: both}) {
			t.Errorf("http frontend = %+v", w)
		}
		u := got[udp("10.96.0.10:53")]
		if len(u.set.Endpoints) != 2 || u.set.Endpoints[0].Addr != ap("10.244.0.2:5353") {
			t.Errorf("dns frontend = %+v", u)
		}
	})
	t.Run("NodePort with Local policies", func(t *testing.T) {
		svc := testService(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.Ports[1].NodePort = 30053
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		})
		got, _ := desiredFrontends(svc, testEndpoints(), "node-a", nodeAddrs)
		if len(got) != 6 {
			t.Fatalf("got %d frontends, want 2 ClusterIP + 4 NodePort: %+v", len(got), got)
		}
		for _, k := range []frontendKey{tcp("192.168.1.5:30080"), tcp("127.0.0.1:30080")} {
			w, ok := got[k]
			if !ok || !w.spec.NodePort || !sameSet(w.set, BackendSet{Endpoints: local}) {
				t.Errorf("%v = %+v, want the local endpoint only", k, w)
			}
		}
		if w := got[tcp("10.96.0.10:80")]; !sameSet(w.set, BackendSet{Endpoints: both}) {
			t.Errorf("externalTrafficPolicy must not narrow the ClusterIP: %+v", w)
		}
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		itp := corev1.ServiceInternalTrafficPolicyLocal
		svc.Spec.InternalTrafficPolicy = &itp
		got, _ = desiredFrontends(svc, testEndpoints(), "node-c", nodeAddrs)
		if w := got[tcp("10.96.0.10:80")]; len(w.set.Endpoints) != 0 {
			t.Errorf("internal Local on a node without endpoints: %+v, want none", w)
		}
		if w := got[tcp("127.0.0.1:30080")]; !sameSet(w.set, BackendSet{Endpoints: both}) {
			t.Errorf("internalTrafficPolicy must not narrow a NodePort: %+v", w)
		}
	})
	t.Run("affinity", func(t *testing.T) {
		svc := testService(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
		got, _ := desiredFrontends(svc, testEndpoints(), "node-a", nil)
		if d := got[tcp("10.96.0.10:80")].set.AffinityTimeout; d != 3*time.Hour {
			t.Errorf("default affinity timeout = %v, want 3h", d)
		}
		secs := int32(30)
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &secs}}
		got, _ = desiredFrontends(svc, testEndpoints(), "node-a", nil)
		if d := got[tcp("10.96.0.10:80")].set.AffinityTimeout; d != 30*time.Second {
			t.Errorf("affinity timeout = %v, want 30s", d)
		}
	})
	t.Run("none", func(t *testing.T) {
		for name, svc := range map[string]*corev1.Service{
			"nil":          nil,
			"headless":     testService(func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
			"externalName": testService(func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }),
			"unallocated":  testService(func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil }),
		} {
			if got, _ := desiredFrontends(svc, testEndpoints(), "node-a", nodeAddrs); len(got) != 0 {
				t.Errorf("%s: got %+v, want no frontends", name, got)
			}
		}
	})
	t.Run("no endpoints yet, SCTP skipped", func(t *testing.T) {
		svc := testService(func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP})
		})
		got, skipped := desiredFrontends(svc, nil, "node-a", nil)
		if len(got) != 2 || len(skipped) != 1 || skipped[0] != "sctp" {
			t.Fatalf("got %+v skipped %v", got, skipped)
		}
		if w := got[tcp("10.96.0.10:80")]; len(w.set.Endpoints) != 0 {
			t.Errorf("no Endpoints object must mean no endpoints: %+v", w)
		}
	})
}

// FuzzDesiredFrontends feeds arbitrary Service and Endpoints objects (as
// a client could write them, validation aside) to the control plane's
// translation: it must never panic, and every frontend it returns must
// be one the data plane can start.
func FuzzDesiredFrontends(f *testing.F) {
	svc, _ := json.Marshal(testService())
	eps, _ := json.Marshal(testEndpoints())
	f.Add(svc, eps)
	f.Add([]byte(`{"spec":{"type":"NodePort","clusterIPs":["::1","10.0.0.1"],"ports":[{"port":70000,"nodePort":-1,"protocol":"UDP"}]}}`),
		[]byte(`{"subsets":[{"addresses":[{"ip":"1.2.3.4"},{"ip":"bogus"}],"ports":[{"port":0},{"port":65536,"protocol":"UDP"}]}]}`))
	f.Fuzz(func(t *testing.T, svcJSON, epsJSON []byte) {
		var s corev1.Service
		var e corev1.Endpoints
		if len(svcJSON)+len(epsJSON) > 8<<10 {
			return
		}
		if json.Unmarshal(svcJSON, &s) != nil || json.Unmarshal(epsJSON, &e) != nil {
			return
		}
		got, _ := desiredFrontends(&s, &e, "node-a", []netip.Addr{netip.MustParseAddr("127.0.0.1")})
		for k, w := range got {
			if !k.Addr.IsValid() || k.Addr.Port() == 0 || k.Addr != w.spec.Addr || (k.Protocol != corev1.ProtocolTCP && k.Protocol != corev1.ProtocolUDP) {
				t.Fatalf("bad frontend %v: %+v", k, w)
			}
			for _, ep := range w.set.Endpoints {
				if !ep.Addr.IsValid() || ep.Addr.Port() == 0 {
					t.Fatalf("bad endpoint %v in %v", ep, k)
				}
			}
		}
	})
}
