package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/testimages"
)

// BenchmarkServiceProxy measures what the userspace Service proxy costs
// against going to the pod directly. One all-in-one node (master and
// agent in one process) runs one echo pod behind a ClusterIP Service; from
// the node's network namespace it measures
//
//   - request latency, p50 and p99 of GET / (an answer of some 50 bytes),
//     2,000 requests each through the ClusterIP and to the pod IP,
//     interleaved: once on one kept-alive connection each, once with a new
//     connection per request;
//   - bulk throughput, GET /bytes of 1 GiB, the best of three, interleaved.
//
// The direct path is node → bridge → pod; the proxied one adds a loopback
// hop into the agent and a copy through it.
//
//	go test -run '^$' -bench ServiceProxy -benchtime 1x ./integration/
func BenchmarkServiceProxy(b *testing.B) {
	containerd := sharedContainerd(b)
	image := testimages.ForTest(b)
	lab := newLab(b)
	h := lab.host("n1")
	ns := "bench-" + randomSuffix()
	m := newServerIn(b, h, "n1", append([]string{"--bootstrap-expect", "1", "--agent", "--log-level", "warn"}, agentArgs(containerd, ns)...)...)
	b.Cleanup(func() { m.kill(); unmountUnder(m.dataDir) })
	m.start()
	dumpOnFailure(b, m)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cs := clientIn(b, h, m)
	readyWithToolbox(b, ctx, cs, h, m, image, "n1")

	pod := toolboxPod("echo", "n1", "serve", "--port", "8080")
	pod.Spec.Containers[0].Ports[0].Name = "http"
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	svc := echoService("echo", corev1.ServiceTypeClusterIP)
	svc.Spec.Ports = svc.Spec.Ports[:1]
	svc, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	eps, _ := waitEndpoints(b, cs, "echo", 1, 0)
	var podIP string
	for ip := range eps {
		podIP = ip
	}
	direct, proxied := net.JoinHostPort(podIP, "8080"), net.JoinHostPort(svc.Spec.ClusterIP, "80")
	waitServed(b, ctx, h, "http://"+proxied+"/")
	targets := []string{direct, proxied}

	for i := 0; i < b.N; i++ {
		type row struct {
			name          string
			direct, proxy float64
			unit          string
		}
		var rows []row
		for _, mode := range []struct {
			name      string
			keepAlive bool
			metric    string // infix of the metric names
		}{{"kept-alive", true, ""}, {"new conn", false, "newconn-"}} {
			// A warm-up round first: the proxy's first connection, the
			// pod's first requests.
			if _, err := latencies(h, targets, 50, mode.keepAlive); err != nil {
				b.Fatal(err)
			}
			lat, err := latencies(h, targets, 2000, mode.keepAlive)
			if err != nil {
				b.Fatal(err)
			}
			for _, p := range []int{50, 99} {
				d, pr := micros(percentile(lat[0], p)), micros(percentile(lat[1], p))
				b.ReportMetric(d, fmt.Sprintf("p%d-%sdirect-µs", p, mode.metric))
				b.ReportMetric(pr, fmt.Sprintf("p%d-%sproxy-µs", p, mode.metric))
				b.ReportMetric(pr/d, fmt.Sprintf("p%d-%sratio", p, mode.metric))
				rows = append(rows, row{fmt.Sprintf("%s p%d", mode.name, p), d, pr, "µs"})
			}
		}

		const size = 1 << 30
		var best [2]float64
		for range 3 {
			for j, target := range targets {
				mbps, err := throughput(h, target, size)
				if err != nil {
					b.Fatal(err)
				}
				best[j] = max(best[j], mbps)
			}
		}
		b.ReportMetric(best[0], "MBps-direct")
		b.ReportMetric(best[1], "MBps-proxy")
		b.ReportMetric(best[1]/best[0], "throughput-ratio")
		rows = append(rows, row{"1 GiB stream", best[0], best[1], "MB/s"})

		var tbl strings.Builder
		fmt.Fprintf(&tbl, "%-16s %14s %14s %7s\n", "", "direct", "proxy", "ratio")
		for _, r := range rows {
			fmt.Fprintf(&tbl, "%-16s %9.0f %-4s %9.0f %-4s %7.2f\n", r.name, r.direct, r.unit, r.proxy, r.unit, r.proxy/r.direct)
		}
		b.Logf("pod %s, ClusterIP %s, from the node's namespace:\n%s", direct, proxied, tbl.String())
	}

	if err := cs.CoreV1().Services("default").Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
		b.Error(err)
	}
	if err := cs.CoreV1().Pods("default").Delete(ctx, "echo", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		b.Error(err)
	}
	waitFor(b, 60*time.Second, "the echo pod gone", func() (bool, string) {
		_, err := cs.CoreV1().Pods("default").Get(ctx, "echo", metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "not found"), fmt.Sprint(err)
	})
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// latencies sends n GET / to each of targets (host:port) from inside h,
// taking turns, with which goes first alternating, and returns each
// target's latencies. keepAlive: one connection per target for all its
// requests; else a new connection per request. Everything runs on the one
// thread h.do puts in h's namespace, so no request pays for entering it.
func latencies(h *testHost, targets []string, n int, keepAlive bool) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(targets))
	err := h.do(func() error {
		conns := make([]*httpConn, len(targets))
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		for i := range n {
			for k := range targets {
				j := (i + k) % len(targets)
				start := time.Now()
				if conns[j] == nil {
					c, err := dialHTTP(targets[j])
					if err != nil {
						return err
					}
					conns[j] = c
				}
				if _, err := conns[j].get("/", !keepAlive, nil); err != nil {
					return fmt.Errorf("GET / from %s: %w", targets[j], err)
				}
				if !keepAlive {
					conns[j].Close()
					conns[j] = nil
				}
				out[j] = append(out[j], time.Since(start))
			}
		}
		return nil
	})
	return out, err
}

// throughput fetches /bytes?n=size from target inside h and returns MB/s
// (10^6 bytes), from the request sent to the last byte read.
func throughput(h *testHost, target string, size int64) (float64, error) {
	var mbps float64
	err := h.do(func() error {
		c, err := dialHTTP(target)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		start := time.Now()
		n, err := c.get(fmt.Sprintf("/bytes?n=%d", size), true, buf)
		if err != nil {
			return fmt.Errorf("GET /bytes from %s: %w", target, err)
		}
		if n != size {
			return fmt.Errorf("GET /bytes from %s: %d bytes, want %d", target, n, size)
		}
		mbps = float64(n) / 1e6 / time.Since(start).Seconds()
		return nil
	})
	return mbps, err
}

// httpConn is a bare HTTP/1.1 client connection: the measurement sees the
// network path, not a client library's pooling or goroutines.
type httpConn struct {
	net.Conn
	br *bufio.Reader
}

func dialHTTP(addr string) (*httpConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &httpConn{Conn: c, br: bufio.NewReaderSize(c, 64<<10)}, nil
}

// get sends GET path and reads the whole answer (into buf, or a small
// buffer when nil), returning the body's length. A non-200 is an error.
func (c *httpConn) get(path string, closeAfter bool, buf []byte) (int64, error) {
	req := "GET " + path + " HTTP/1.1\r\nHost: bench\r\n"
	if closeAfter {
		req += "Connection: close\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if buf == nil {
		buf = make([]byte, 4096)
	}
	// Read by hand: io.Copy to io.Discard would use Discard's own small
	// buffer whatever buf is.
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err
		}
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("%s", resp.Status)
	}
	return n, nil
}
