package controllers

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// epSummary renders an Endpoints object as "ready=[a b] notReady=[c] ports=[http:8080]" per subset.
func epSummary(ep *corev1.Endpoints) string {
	var parts []string
	for _, ss := range ep.Subsets {
		names := func(as []corev1.EndpointAddress) string {
			var n []string
			for _, a := range as {
				n = append(n, a.TargetRef.Name)
			}
			sort.Strings(n)
			return strings.Join(n, " ")
		}
		var ports []string
		for _, p := range ss.Ports {
			ports = append(ports, fmt.Sprintf("%s:%d", p.Name, p.Port))
		}
		parts = append(parts, fmt.Sprintf("ready=[%s] notReady=[%s] ports=[%s]", names(ss.Addresses), names(ss.NotReadyAddresses), strings.Join(ports, " ")))
	}
	return strings.Join(parts, "; ")
}

func (e *env) waitEndpoints(name, want string) *corev1.Endpoints {
	e.t.Helper()
	var ep *corev1.Endpoints
	var got string
	waitFor(e.t, 10*time.Second, "endpoints "+want, func() (bool, error) {
		var err error
		ep, err = e.client.CoreV1().Endpoints("default").Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		got = epSummary(ep)
		return got == want, nil
	})
	return ep
}

func (e *env) createPod(name string, labels map[string]string, ports []corev1.ContainerPort, finalizers ...string) *corev1.Pod {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels, Finalizers: finalizers},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx", Ports: ports}}},
	}
	out, err := e.client.CoreV1().Pods("default").Create(e.ctx, pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create pod %s: %v", name, err)
	}
	return out
}

func TestEndpoints(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{Endpoints}})
	startKubelet(t, e.client, kubeletOpts{ready: func(p *corev1.Pod) bool { return p.Labels["start"] != "unready" }})
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Labels: map[string]string{"team": "a"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: 9090, TargetPort: intstr.FromInt32(9100), Protocol: corev1.ProtocolTCP},
			},
		},
	}
	if _, err := e.client.CoreV1().Services("default").Create(e.ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A Service without a selector: its Endpoints are the user's.
	manual := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "external", Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 5432, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := e.client.CoreV1().Services("default").Create(e.ctx, manual, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	manualEP := &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "external", Namespace: "default"},
		Subsets: []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{{IP: "192.168.1.10"}},
			Ports: []corev1.EndpointPort{{Port: 5432, Protocol: corev1.ProtocolTCP}}}},
	}
	manualEP, err := e.client.CoreV1().Endpoints("default").Create(e.ctx, manualEP, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	http := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	e.createPod("a", map[string]string{"app": "web"}, http)
	e.createPod("b", map[string]string{"app": "web", "start": "unready"}, http)
	// c has no port named http: it serves only metrics, in its own subset.
	e.createPod("c", map[string]string{"app": "web"}, nil)
	e.createPod("other", map[string]string{"app": "other"}, http)
	ep := e.waitEndpoints("web", "ready=[a] notReady=[b] ports=[http:8080 metrics:9100]; ready=[c] notReady=[] ports=[metrics:9100]")
	if ep.Labels["team"] != "a" {
		t.Errorf("endpoints labels %v, want the service's", ep.Labels)
	}
	addr := ep.Subsets[0].Addresses[0]
	if addr.NodeName == nil || *addr.NodeName != "node-1" || addr.TargetRef.Kind != "Pod" || addr.TargetRef.UID == "" || addr.IP == "" {
		t.Errorf("address = %+v", addr)
	}

	// Readiness flips move pods between the lists.
	setPodReady(t, e.client, "default", "b", true)
	e.waitEndpoints("web", "ready=[a b] notReady=[] ports=[http:8080 metrics:9100]; ready=[c] notReady=[] ports=[metrics:9100]")
	setPodReady(t, e.client, "default", "a", false)
	e.waitEndpoints("web", "ready=[b] notReady=[a] ports=[http:8080 metrics:9100]; ready=[c] notReady=[] ports=[metrics:9100]")

	// A pod being deleted leaves at once (the finalizer keeps it terminating).
	e.createPod("d", map[string]string{"app": "web"}, http, "test/hold")
	e.waitEndpoints("web", "ready=[b d] notReady=[a] ports=[http:8080 metrics:9100]; ready=[c] notReady=[] ports=[metrics:9100]")
	if err := e.client.CoreV1().Pods("default").Delete(e.ctx, "d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEndpoints("web", "ready=[b] notReady=[a] ports=[http:8080 metrics:9100]; ready=[c] notReady=[] ports=[metrics:9100]")
	if _, err := e.client.CoreV1().Pods("default").Patch(e.ctx, "d", types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	// Relabelling a pod out of the selector removes it.
	if _, err := e.client.CoreV1().Pods("default").Patch(e.ctx, "c", types.MergePatchType, []byte(`{"metadata":{"labels":{"app":"gone"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEndpoints("web", "ready=[b] notReady=[a] ports=[http:8080 metrics:9100]")

	got, err := e.client.CoreV1().Endpoints("default").Get(e.ctx, "external", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != manualEP.ResourceVersion {
		t.Errorf("endpoints of the selector-less service were written: %+v", got.Subsets)
	}

	// Deleting the Service deletes its Endpoints.
	if err := e.client.CoreV1().Services("default").Delete(e.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "endpoints deleted", func() (bool, error) {
		_, err := e.client.CoreV1().Endpoints("default").Get(e.ctx, "web", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

func TestFindPort(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
		{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		{Name: "dns-tcp", ContainerPort: 5353},
	}}}}}
	for _, tc := range []struct {
		name string
		sp   corev1.ServicePort
		want int32
		ok   bool
	}{
		{"by name and protocol", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")}, 53, true},
		{"name with the wrong protocol", corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("dns")}, 0, false},
		{"default protocol TCP", corev1.ServicePort{Port: 53, TargetPort: intstr.FromString("dns-tcp")}, 5353, true},
		{"by number", corev1.ServicePort{Port: 80, TargetPort: intstr.FromInt32(8080)}, 8080, true},
		{"no target port", corev1.ServicePort{Port: 80}, 80, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := findPort(pod, tc.sp)
			if got != tc.want || ok != tc.ok {
				t.Errorf("findPort = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
