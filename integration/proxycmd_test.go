package integration

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestProxyCommand runs `flotilla proxy` alone on a host without an agent
// (as kube-proxy beside a kubelet): a Service whose Endpoints someone
// wrote by hand, pointing at a listener on the master's host, answers
// through its ClusterIP and NodePort on the proxy's host; the proxy's
// status page lists it; stopping the proxy takes the ClusterIP off lo.
func TestProxyCommand(t *testing.T) {
	lab := newLab(t)
	h1, h2 := lab.host("m1"), lab.host("p2")
	m := newServerIn(t, h1, "m1", "--bootstrap-expect", "1")
	m.start()
	proxy := &server{t: t, name: "proxy", ip: h2.ip, netns: h2.nsPath, args: []string{
		"proxy", "--kubeconfig", filepath.Join(m.dataDir, "kubeconfig"), "--node-name", "p2",
		"--nodeport-addresses", h2.ip, "--metrics-bind", net.JoinHostPort(h2.ip, "10249"),
	}}
	t.Cleanup(proxy.kill)
	dumpOnFailure(t, m, proxy)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := clientIn(t, h1, m)
	waitFor(t, 60*time.Second, "the API answering", func() (bool, string) {
		_, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil, errString(err)
	})

	// The endpoint: a listener on the master's host that names itself.
	ln, err := h1.listen("tcp", net.JoinHostPort(h1.ip, "9000"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from m1\n")
			c.Close()
		}
	}()
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "plain"},
		Spec: corev1.ServiceSpec{
			Type:  corev1.ServiceTypeNodePort,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(9000), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Endpoints("default").Create(ctx, &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "plain"},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: h1.ip}},
			Ports:     []corev1.EndpointPort{{Port: 9000, Protocol: corev1.ProtocolTCP}},
		}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	proxy.start()
	read := func(addr string) (string, error) {
		c, err := h2.dial(ctx, "tcp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		return strings.TrimSpace(string(b)), err
	}
	for _, addr := range []string{
		net.JoinHostPort(svc.Spec.ClusterIP, "80"),
		net.JoinHostPort(h2.ip, strconv.Itoa(int(svc.Spec.Ports[0].NodePort))),
	} {
		waitFor(t, 30*time.Second, "p2 reaching "+addr, func() (bool, string) {
			got, err := read(addr)
			return err == nil && got == "hello from m1", got + errString(err)
		})
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: h2.dial}, Timeout: 5 * time.Second}
	res, err := hc.Get("http://" + net.JoinHostPort(h2.ip, "10249") + "/proxy/frontends")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), `"service":"default/plain"`) || !strings.Contains(string(body), h1.ip+":9000") {
		t.Errorf("/proxy/frontends lacks default/plain -> %s:9000: %s", h1.ip, body)
	}

	proxy.stop()
	out, err := h2.run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "lo")
	if err != nil || strings.Contains(out, " "+svc.Spec.ClusterIP+"/32 ") {
		t.Errorf("ClusterIP %s still on p2's lo after the proxy stopped (%v): %s", svc.Spec.ClusterIP, err, out)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
