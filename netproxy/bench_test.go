package netproxy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"flotilla/api/apitest"
)

// hasEndpoint reports whether the proxy's frontends for svc use addr now.
func (p *Proxy) hasEndpoint(svc types.NamespacedName, addr netip.AddrPort) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range p.services[svc] {
		for _, e := range r.set.Endpoints {
			if e.Addr == addr {
				return true
			}
		}
	}
	return false
}

// BenchmarkSyncLatency: 1,000 Services with 10 endpoints each behind an
// in-process API; one Endpoints change at a time, then bursts of changes,
// each timed from the write to the proxy serving the new endpoint.
func BenchmarkSyncLatency(b *testing.B) {
	requireNetNS(b)
	const services, endpoints = 1000, 10
	srv := apitest.NewServer(b)
	cs := srv.Client
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := "default"

	epAddr := func(svc, i int) string { return fmt.Sprintf("127.%d.%d.%d", 1+svc/250, svc%250, 1+i) }
	mkEndpoints := func(svc int, gen int) *corev1.Endpoints {
		node := "node-a"
		e := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("s%d", svc)}}
		ss := corev1.EndpointSubset{Ports: []corev1.EndpointPort{{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP}}}
		for i := range endpoints {
			ip := epAddr(svc, i)
			if i == 0 {
				// The first endpoint's port says which change this is.
				ip = epAddr(svc, endpoints+gen%200)
			}
			ss.Addresses = append(ss.Addresses, corev1.EndpointAddress{IP: ip, NodeName: &node})
		}
		e.Subsets = []corev1.EndpointSubset{ss}
		return e
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range services {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("s%d", i)},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
				}},
			}
			if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				b.Error(err)
			}
			if _, err := cs.CoreV1().Endpoints(ns).Create(ctx, mkEndpoints(i, 0), metav1.CreateOptions{}); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}

	applied := make(chan types.NamespacedName, 4*services)
	p, err := New(Config{
		Client:   cs,
		NodeName: "node-a",
		Applied: func(k types.NamespacedName) {
			select {
			case applied <- k:
			default: // after the initial sync only hasEndpoint tells
			}
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for seen := map[types.NamespacedName]bool{}; len(seen) < services; {
		select {
		case k := <-applied:
			seen[k] = true
		case <-time.After(time.Minute):
			b.Fatalf("only %d of %d Services applied after a minute", len(seen), services)
		}
	}
	initial := time.Since(start)

	// change writes generation gen of Service i's Endpoints and returns
	// when the proxy serves it, with the time that took.
	want := func(i, gen int) netip.AddrPort {
		return netip.MustParseAddrPort(epAddr(i, endpoints+gen%200) + ":8080")
	}
	change := func(i, gen int) (time.Duration, error) {
		key := types.NamespacedName{Namespace: ns, Name: fmt.Sprintf("s%d", i)}
		e := mkEndpoints(i, gen)
		cur, err := cs.CoreV1().Endpoints(ns).Get(ctx, key.Name, metav1.GetOptions{})
		if err != nil {
			return 0, err
		}
		e.ResourceVersion = cur.ResourceVersion
		t0 := time.Now()
		if _, err := cs.CoreV1().Endpoints(ns).Update(ctx, e, metav1.UpdateOptions{}); err != nil {
			return 0, err
		}
		for deadline := time.Now().Add(30 * time.Second); !p.hasEndpoint(key, want(i, gen)); {
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("%s: change %d not applied in 30s", key, gen)
			}
			time.Sleep(200 * time.Microsecond)
		}
		return time.Since(t0), nil
	}
	var one, burst []time.Duration
	gen := 1
	for b.Loop() {
		one = one[:0]
		for n := range 300 {
			d, err := change((n*7)%services, gen)
			if err != nil {
				b.Fatal(err)
			}
			one = append(one, d)
		}
		gen++
		// A burst: 1,000 changes from 16 writers at once, as a rollout
		// of many Services would make.
		burst = burst[:0]
		var mu sync.Mutex
		var bw sync.WaitGroup
		for w := range 16 {
			bw.Add(1)
			go func() {
				defer bw.Done()
				for i := w; i < services; i += 16 {
					d, err := change(i, gen)
					if err != nil {
						b.Error(err)
						return
					}
					mu.Lock()
					burst = append(burst, d)
					mu.Unlock()
				}
			}()
		}
		bw.Wait()
		gen++
	}
	b.ReportMetric(initial.Seconds(), "initial-sync-s")
	b.ReportMetric(ms(pct(one, 50)), "one-p50-ms")
	b.ReportMetric(ms(pct(one, 99)), "one-p99-ms")
	b.ReportMetric(ms(pct(burst, 50)), "burst-p50-ms")
	b.ReportMetric(ms(pct(burst, 99)), "burst-p99-ms")
	b.Logf("%d Services x %d endpoints: initial sync %v; single changes p50 %v p99 %v; burst of %d from 16 writers p50 %v p99 %v",
		services, endpoints, initial.Round(time.Millisecond), pct(one, 50), pct(one, 99), len(burst), pct(burst, 50), pct(burst, 99))
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
