package controllers

import (
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMasterSubsets(t *testing.T) {
	got := masterSubsets([]string{"10.0.0.2:6443", "10.0.0.1:6443", "10.0.0.1:6443", "10.0.0.3:7443",
		"0.0.0.0:6443", "nohost", "host.example:6443", "10.0.0.4:0"})
	want := []corev1.EndpointSubset{
		{Addresses: []corev1.EndpointAddress{{IP: "10.0.0.1"}, {IP: "10.0.0.2"}},
			Ports: []corev1.EndpointPort{{Name: "https", Port: 6443, Protocol: corev1.ProtocolTCP}}},
		{Addresses: []corev1.EndpointAddress{{IP: "10.0.0.3"}},
			Ports: []corev1.EndpointPort{{Name: "https", Port: 7443, Protocol: corev1.ProtocolTCP}}},
	}
	if !apiequality.Semantic.DeepEqual(got, want) {
		t.Errorf("masterSubsets = %+v\nwant %+v", got, want)
	}
}

func TestMasterEndpointsFollowGossip(t *testing.T) {
	var mu sync.Mutex
	masters := []string{"10.0.0.2:6443", "10.0.0.1:6443"}
	e := newEnv(t, Config{Controllers: []string{MasterEndpoints}, Masters: func() []string {
		mu.Lock()
		defer mu.Unlock()
		return masters
	}})
	ips := func() (string, error) {
		ep, err := e.client.CoreV1().Endpoints("default").Get(e.ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		var s string
		for _, ss := range ep.Subsets {
			for _, a := range ss.Addresses {
				s += a.IP + ","
			}
		}
		return s, nil
	}
	waitFor(t, 20*time.Second, "kubernetes endpoints listing both masters", func() (bool, error) {
		s, err := ips()
		return err == nil && s == "10.0.0.1,10.0.0.2,", nil
	})
	mu.Lock()
	masters = []string{"10.0.0.2:6443"}
	mu.Unlock()
	waitFor(t, 20*time.Second, "the dead master gone", func() (bool, error) {
		s, err := ips()
		return err == nil && s == "10.0.0.2,", nil
	})
	// No master in view: the last list stays.
	mu.Lock()
	masters = nil
	mu.Unlock()
	time.Sleep(2 * masterEndpointsPeriod) // nothing to poll for: the absence of a change
	if s, err := ips(); err != nil || s != "10.0.0.2," {
		t.Errorf("with no master in view the endpoints became %q (%v)", s, err)
	}
}
