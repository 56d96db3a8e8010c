package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"flotilla/testimages"
)

// TestServiceProxy is issue 6 end to end: two nodes (an all-in-one master
// on n1, an agent on n2), the toolbox's echo server in a Deployment of 3
// behind a NodePort Service, and every agent's in-process proxy between
// them. It reaches the Service over TCP through the ClusterIP from each
// node and from pods, through the NodePort on each node address, and over
// UDP; checks that no endpoints means a reset; that a pod turning not
// ready leaves the rotation; that sessionAffinity ClientIP holds; that
// scaling 3→5→2 under a steady stream of new connections loses none; and
// that once gossip declares a node dead its endpoints are skipped without
// a dial, even while the Endpoints still list them. All traffic stays in
// the lab's namespaces and the pods'.
func TestServiceProxy(t *testing.T) {
	containerd := sharedContainerd(t)
	image := testimages.ForTest(t)
	lab := newLab(t)
	h1, h2 := lab.host("n1"), lab.host("n2")
	m := newMasterNode(t, h1, "n1", containerd)
	m.start()
	a2 := newAgentNode(t, h2, "n2", net.JoinHostPort(h1.ip, "7946"), containerd)
	a2.start()
	dumpOnFailure(t, m.server, a2.server)
	hosts := []*testHost{h1, h2}
	hostOf := map[string]*testHost{"n1": h1, "n2": h2}
	dumpFrontendsOnFailure(t, m.server, hosts...)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := clientIn(t, h1, m)
	agentHTTP := serverCertHTTP(t, h1, m.server, 5*time.Second)
	kubeconfig := readyWithToolbox(t, ctx, cs, h1, m.server, image, "n1", "n2")
	kubectl := func(args ...string) (string, error) {
		return h1.flotilla(ctx, append([]string{"kubectl", "--kubeconfig", kubeconfig}, args...)...)
	}

	deps := cs.AppsV1().Deployments("default")
	start := time.Now()
	if _, err := deps.Create(ctx, echoDeployment(3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, echoService("echo", corev1.ServiceTypeNodePort), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := svc.Spec.ClusterIP
	var nodePort, udpNodePort string
	for _, p := range svc.Spec.Ports {
		switch p.Protocol {
		case corev1.ProtocolTCP:
			nodePort = strconv.Itoa(int(p.NodePort))
		case corev1.ProtocolUDP:
			udpNodePort = strconv.Itoa(int(p.NodePort))
		}
	}
	if clusterIP == "" || nodePort == "0" || udpNodePort == "0" {
		t.Fatalf("Service without a ClusterIP or NodePorts: %+v", svc.Spec)
	}
	url := "http://" + clusterIP + "/"
	clusterIPs := []string{clusterIP} // every one this test made, for the cleanup's check
	udpAddr := net.JoinHostPort(clusterIP, "9090")

	// The three endpoints, and on which node each is: the scheduler
	// spreads a Deployment, and the steps below need both nodes.
	eps, _ := waitEndpoints(t, cs, "echo", 3, 0)
	t.Logf("3 endpoints ready %v after the Deployment was created: %v", time.Since(start).Round(time.Millisecond), eps)
	if nodes := nodesOf(eps); len(nodes) != 2 {
		t.Fatalf("the Deployment's pods are all on %v; the test needs both nodes", nodes)
	}
	pods := podNames(eps)

	t.Run("ClusterIP from each node", func(t *testing.T) {
		for _, h := range hosts {
			waitFor(t, 30*time.Second, clusterIP+" on "+h.name+"'s lo", func() (bool, string) {
				out, err := h.run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "lo")
				return err == nil && strings.Contains(out, " "+clusterIP+"/32 "), out
			})
			waitServed(t, ctx, h, url)
			seen, err := getN(ctx, h, url, 30)
			if err != nil {
				t.Fatal(err)
			}
			// Round robin over three endpoints: thirty requests reach each.
			if got := slices.Sorted(maps.Keys(seen)); !slices.Equal(got, pods) {
				t.Fatalf("from %s: answers from %v, want each of %v", h.name, seen, pods)
			}
			t.Logf("from %s: %v", h.name, seen)
		}
	})

	t.Run("ClusterIP from pods", func(t *testing.T) {
		for _, e := range oneEndpointPerNode(eps) {
			var out string
			waitFor(t, 30*time.Second, e.pod+" reaches "+url, func() (bool, string) {
				var err error
				out, err = kubectl("exec", e.pod, "--", "/toolbox", "get", url)
				return err == nil, fmt.Sprint(err)
			})
			if !slices.Contains(pods, echoHostname(out)) {
				t.Fatalf("%s on %s: GET %s answered %q", e.pod, e.node, url, out)
			}
			// The API through default/kubernetes, as in-cluster clients
			// find it: its Endpoints list the live masters.
			k8s, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			apiURL := "https://" + net.JoinHostPort(k8s.Spec.ClusterIP, "443") + "/version"
			waitFor(t, 30*time.Second, e.pod+" reaches the API at "+apiURL, func() (bool, string) {
				out, err = kubectl("exec", e.pod, "--", "/toolbox", "get", apiURL)
				return err == nil && strings.Contains(out, `"gitVersion"`), fmt.Sprint(out, err)
			})
			out, err = kubectl("exec", e.pod, "--", "/toolbox", "udp", udpAddr, "from-"+e.pod, "--timeout", "3s")
			if err != nil || !slices.Contains(pods, echoHostname(out)) || !strings.HasSuffix(strings.TrimSpace(out), " from-"+e.pod) {
				t.Fatalf("%s on %s: udp %s: %v: %q", e.pod, e.node, udpAddr, err, out)
			}
		}
	})

	t.Run("in-cluster client-go with the pod's ServiceAccount", func(t *testing.T) {
		// The pod's default ServiceAccount has no role: client-go
		// (rest.InClusterConfig: the mounted token and CA, the
		// KUBERNETES_SERVICE_* address) is authenticated and refused.
		pod := pods[0]
		out, err := kubectl("exec", pod, "--", "/toolbox", "kube", "get", "configmaps")
		if err == nil || !strings.Contains(out, "forbidden") {
			t.Fatalf("the default ServiceAccount listed ConfigMaps: %v: %s", err, out)
		}
		if out, err := kubectl("create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps"); err != nil {
			t.Fatal(err, out)
		}
		if out, err := kubectl("create", "rolebinding", "default-cm-reader", "--role=cm-reader", "--serviceaccount=default:default"); err != nil {
			t.Fatal(err, out)
		}
		defer func() {
			_, _ = kubectl("delete", "rolebinding", "default-cm-reader")
			_, _ = kubectl("delete", "role", "cm-reader")
		}()
		waitFor(t, 20*time.Second, "the pod to list ConfigMaps through its Role", func() (bool, string) {
			out, err = kubectl("exec", pod, "--", "/toolbox", "kube", "get", "configmaps")
			return err == nil && strings.Contains(out, "kube-root-ca.crt"), fmt.Sprint(out, err)
		})
		// Its Role allows reading ConfigMaps, and nothing else.
		for _, args := range [][]string{
			{"kube", "create", "configmap", "from-pod"},
			{"kube", "get", "secrets"},
			{"kube", "get", "configmaps", "-n", "kube-system"},
		} {
			out, err := kubectl(append([]string{"exec", pod, "--", "/toolbox"}, args...)...)
			if err == nil || !strings.Contains(out, "forbidden") {
				t.Errorf("toolbox %v: allowed beyond the Role: %v: %s", args, err, out)
			}
		}
	})

	t.Run("a gossip key rotation reaches every node", func(t *testing.T) {
		// The agents follow the masters' keyring over the API; the
		// rotation waits for each step to reach them, so when it returns
		// every live member holds only the new key and no node was cut off.
		op := func(args ...string) string {
			out, err := h1.flotilla(ctx, append(append([]string{"operator"}, args...), "--kubeconfig", kubeconfig)...)
			if err != nil {
				t.Fatalf("operator %v: %v\n%s", args, err, out)
			}
			return out
		}
		// The cluster replaced its token-derived key at bootstrap by the
		// same kind of rotation; one at a time.
		waitFor(t, 90*time.Second, "a gossip key rotation", func() (bool, string) {
			out, err := h1.flotilla(ctx, "operator", "gossip", "rotate", "--kubeconfig", kubeconfig)
			return err == nil, out
		})
		var rows []struct {
			Name, Status string
			Keys         []string
		}
		if err := json.Unmarshal([]byte(op("gossip", "keys", "-o", "json")), &rows); err != nil {
			t.Fatal(err)
		}
		var want string
		for _, r := range rows {
			if r.Status != "alive" {
				continue
			}
			if len(r.Keys) != 1 || (want != "" && r.Keys[0] != want) {
				t.Errorf("after the rotation %s holds %v (others %s)", r.Name, r.Keys, want)
				continue
			}
			want = r.Keys[0]
		}
		for _, n := range []string{"n1", "n2"} {
			if ok, why := nodeReady(cs, n); !ok {
				t.Errorf("%s after the rotation: %s", n, why)
			}
		}
	})

	t.Run("pod egress leaves with the node's address", func(t *testing.T) {
		// A host outside the cluster: no route to any pod. A pod reaches
		// it only because the node masquerades its traffic.
		ext := lab.host("ext")
		ln, err := ext.listen("tcp", net.JoinHostPort(ext.ip, "8000"))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "remote=%s\n", r.RemoteAddr)
		})}
		go srv.Serve(ln)
		defer srv.Close()
		for _, e := range oneEndpointPerNode(eps) {
			out, err := kubectl("exec", e.pod, "--", "/toolbox", "get", "http://"+net.JoinHostPort(ext.ip, "8000")+"/")
			if err != nil {
				t.Fatalf("%s on %s: GET from outside the cluster: %v: %s", e.pod, e.node, err, out)
			}
			if want := "remote=" + hostOf[e.node].ip + ":"; !strings.Contains(out, want) {
				t.Fatalf("%s on %s: the outside host saw %q, want the node's address (%s)", e.pod, e.node, out, want)
			}
		}
	})

	t.Run("NodePort on each node address", func(t *testing.T) {
		for _, from := range hosts {
			for _, to := range []string{h1.ip, h2.ip, "127.0.0.1"} {
				u := "http://" + net.JoinHostPort(to, nodePort) + "/"
				waitServed(t, ctx, from, u)
				if seen, err := getN(ctx, from, u, 6); err != nil || len(seen) < 2 {
					t.Fatalf("from %s: %v; answers %v, want at least two pods", from.name, err, seen)
				}
			}
		}
		// UDP through the other node's NodePort, and this node's loopback one.
		for _, to := range []string{net.JoinHostPort(h2.ip, udpNodePort), net.JoinHostPort("127.0.0.1", udpNodePort)} {
			waitFor(t, 30*time.Second, "UDP echo through "+to, func() (bool, string) {
				replies, err := udpExchange(h1, to, []string{"np"}, time.Second)
				return err == nil && slices.Contains(pods, echoHostname(replies[0])), fmt.Sprint(replies, err)
			})
		}
	})

	t.Run("UDP flows", func(t *testing.T) {
		waitFor(t, 30*time.Second, "UDP echo through "+udpAddr, func() (bool, string) {
			replies, err := udpExchange(h1, udpAddr, []string{"first"}, time.Second)
			return err == nil, fmt.Sprint(replies, err)
		})
		// Each socket is a flow and stays on one endpoint; new flows are
		// spread.
		answered := map[string]int{}
		for flow := range 6 {
			msgs := []string{fmt.Sprintf("flow%d-a", flow), fmt.Sprintf("flow%d-b", flow), fmt.Sprintf("flow%d-c", flow)}
			replies, err := udpExchange(h1, udpAddr, msgs, 2*time.Second)
			if err != nil {
				t.Fatalf("flow %d: %v (replies so far %q)", flow, err, replies)
			}
			for i, r := range replies {
				if want := echoHostname(replies[0]) + " " + msgs[i]; r != "hostname="+want {
					t.Fatalf("flow %d: reply %d is %q, want %q (one flow, one endpoint)", flow, i, r, "hostname="+want)
				}
			}
			answered[echoHostname(replies[0])]++
		}
		if len(answered) < 2 {
			t.Fatalf("six UDP flows all went to %v", answered)
		}
		t.Logf("flows per pod: %v", answered)
	})

	t.Run("no endpoints is a reset", func(t *testing.T) {
		none := echoService("nothing", corev1.ServiceTypeClusterIP)
		none.Spec.Selector = map[string]string{"app": "nothing"}
		none.Spec.Ports = none.Spec.Ports[:1]
		none, err := cs.CoreV1().Services("default").Create(ctx, none, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cs.CoreV1().Services("default").Delete(ctx, "nothing", metav1.DeleteOptions{}) }()
		clusterIPs = append(clusterIPs, none.Spec.ClusterIP)
		addr := net.JoinHostPort(none.Spec.ClusterIP, "80")
		// Until the proxy has the Service, the address is nowhere (no
		// route: unreachable); then a connection is reset at once.
		waitFor(t, 30*time.Second, "a reset from "+addr, func() (bool, string) {
			_, err := resetCheck(h1, addr)
			return err == nil, fmt.Sprint(err)
		})
		for i := range 3 {
			start := time.Now()
			how, err := resetCheck(h1, addr)
			if d := time.Since(start); err != nil || d > time.Second {
				t.Fatalf("connection %d to %s with no endpoints: %v after %v, want a reset at once", i, addr, err, d)
			}
			t.Logf("connection %d: %s", i, how)
		}
		samples, err := scrapeMetrics(ctx, agentHTTP, h1.ip)
		if err != nil {
			t.Fatal(err)
		}
		if n := sumMetric(samples, "flotilla_netproxy_rejected_total", map[string]string{"service": "default/nothing", "reason": "no_endpoints"}); n < 3 {
			t.Errorf("flotilla_netproxy_rejected_total{service=\"default/nothing\",reason=\"no_endpoints\"} is %v after three resets, want at least 3", n)
		}
	})

	t.Run("a not-ready pod leaves the rotation", func(t *testing.T) {
		victim := oneEndpointPerNode(eps)[1] // on n2, reached from its node
		base := "http://" + net.JoinHostPort(victim.ip, "8080")
		if _, err := httpGetIn(ctx, hostOf[victim.node], base+"/ready/off"); err != nil {
			t.Fatal(err)
		}
		defer func() { _, _ = httpGetIn(ctx, hostOf[victim.node], base+"/ready/on") }()
		changed := time.Now()
		_, notReady := waitEndpoints(t, cs, "echo", 2, 1)
		if _, ok := notReady[victim.ip]; !ok {
			t.Fatalf("not ready: %v, want %s", notReady, victim.pod)
		}
		t.Logf("%s in notReadyAddresses %v after /ready/off", victim.pod, time.Since(changed).Round(time.Millisecond))
		for _, h := range hosts {
			// The proxy follows the Endpoints by a watch: give it a
			// moment, then thirty requests in a row must all miss.
			var seen map[string]int
			waitFor(t, 5*time.Second, h.name+"'s proxy dropping "+victim.pod, func() (bool, string) {
				var err error
				if seen, err = getN(ctx, h, url, 30); err != nil {
					t.Fatal(err)
				}
				return seen[victim.pod] == 0, fmt.Sprintf("answers %v", seen)
			})
			if len(seen) != 2 {
				t.Fatalf("from %s: answers %v, want both ready pods", h.name, seen)
			}
		}
		if _, err := httpGetIn(ctx, hostOf[victim.node], base+"/ready/on"); err != nil {
			t.Fatal(err)
		}
		waitEndpoints(t, cs, "echo", 3, 0)
		waitFor(t, 10*time.Second, victim.pod+" back in "+h1.name+"'s rotation", func() (bool, string) {
			seen, err := getN(ctx, h1, url, 3)
			return err == nil && seen[victim.pod] > 0, fmt.Sprint(seen, err)
		})
	})

	t.Run("sessionAffinity ClientIP", func(t *testing.T) {
		seen, err := getN(ctx, h1, url, 20)
		if err != nil || len(seen) < 2 {
			t.Fatalf("without affinity: %v; answers %v, want at least two pods", err, seen)
		}
		setAffinity(t, ctx, cs, "echo", corev1.ServiceAffinityClientIP)
		defer setAffinity(t, ctx, cs, "echo", corev1.ServiceAffinityNone)
		for _, h := range hosts {
			var sticky string
			waitFor(t, 10*time.Second, h.name+"'s proxy keeping one endpoint", func() (bool, string) {
				seen, err := getN(ctx, h, url, 20)
				if err != nil {
					t.Fatal(err)
				}
				for p := range seen {
					sticky = p
				}
				return len(seen) == 1, fmt.Sprintf("answers %v", seen)
			})
			// And it holds: twenty more all go there too.
			seen, err := getN(ctx, h, url, 20)
			if err != nil || len(seen) != 1 || seen[sticky] != 20 {
				t.Fatalf("from %s with affinity: %v; answers %v, want all from %s", h.name, err, seen, sticky)
			}
			t.Logf("from %s: all to %s", h.name, sticky)
		}
		setAffinity(t, ctx, cs, "echo", corev1.ServiceAffinityNone)
		waitFor(t, 10*time.Second, "spreading again without affinity", func() (bool, string) {
			seen, err := getN(ctx, h1, url, 6)
			return err == nil && len(seen) >= 2, fmt.Sprint(seen, err)
		})
	})

	t.Run("scaling under a steady stream loses nothing", func(t *testing.T) {
		var streams []*stream
		for _, h := range hosts {
			streams = append(streams, startStream(ctx, h, url, 25*time.Millisecond))
		}
		stopped := false
		stopAll := func() {
			if !stopped {
				for _, s := range streams {
					s.stop()
				}
				stopped = true
			}
		}
		defer stopAll()
		waitFor(t, 10*time.Second, "both streams flowing", func() (bool, string) {
			return streams[0].count() >= 10 && streams[1].count() >= 10, fmt.Sprint(streams[0].count(), streams[1].count())
		})

		scale(t, ctx, cs, "echo", 5)
		up, _ := waitEndpoints(t, cs, "echo", 5, 0)
		for _, s := range streams {
			waitFor(t, 30*time.Second, "the stream from "+s.h.name+" reaching all five pods", func() (bool, string) {
				missing := s.missing(podNames(up))
				return len(missing) == 0, fmt.Sprintf("no answer yet from %v", missing)
			})
		}

		scale(t, ctx, cs, "echo", 2)
		down, _ := waitEndpoints(t, cs, "echo", 2, 0)
		waitFor(t, 60*time.Second, "the three pods scaled away gone", func() (bool, string) {
			l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			if err != nil {
				return false, err.Error()
			}
			var names []string
			for _, p := range l.Items {
				names = append(names, p.Name)
			}
			return len(names) == 2, fmt.Sprintf("pods %v", names)
		})
		// A little more traffic after the last pod went.
		after := []int{streams[0].count(), streams[1].count()}
		waitFor(t, 10*time.Second, "twenty more requests each", func() (bool, string) {
			return streams[0].count() >= after[0]+20 && streams[1].count() >= after[1]+20, ""
		})
		stopAll()
		for _, s := range streams {
			ok, failures, perPod := s.result()
			t.Logf("stream from %s: %d requests, %d failed, by pod %v", s.h.name, ok+len(failures), len(failures), perPod)
			for _, f := range failures {
				t.Errorf("stream from %s: %s", s.h.name, f)
			}
		}
		eps = down
	})

	// Last: n2 is cut off, and only an agent restart brings its gossip
	// member back.
	t.Run("a dead node's endpoints are skipped", func(t *testing.T) {
		// Both nodes need endpoints again after the scale down.
		scale(t, ctx, cs, "echo", 4)
		eps, _ = waitEndpoints(t, cs, "echo", 4, 0)
		if nodes := nodesOf(eps); len(nodes) != 2 {
			t.Fatalf("four pods all on %v; the step needs both nodes", nodes)
		}
		// A second Service over the same pods that publishes not-ready
		// addresses: when the masters mark n2's pods not ready, its
		// Endpoints keep them, so only gossip can keep the proxy away.
		all := echoService("echo-all", corev1.ServiceTypeClusterIP)
		all.Spec.PublishNotReadyAddresses = true
		all.Spec.Ports = all.Spec.Ports[:1]
		all, err := cs.CoreV1().Services("default").Create(ctx, all, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		clusterIPs = append(clusterIPs, all.Spec.ClusterIP)
		allURL := "http://" + all.Spec.ClusterIP + "/"
		waitEndpoints(t, cs, "echo-all", 4, 0)
		waitServed(t, ctx, h1, allURL)
		waitFor(t, 10*time.Second, "n1 reaching every pod through echo-all", func() (bool, string) {
			seen, err := getN(ctx, h1, allURL, 8)
			return err == nil && len(seen) == 4, fmt.Sprint(seen, err)
		})
		var onN2 []string
		for ip, e := range eps {
			if e.node == "n2" {
				onN2 = append(onN2, ip)
			}
		}

		cutAt := time.Now()
		h2.linkDown()
		restored := false
		restore := func() {
			if restored {
				return
			}
			restored = true
			// n2's gossip member was declared dead and gossip forgets it;
			// a restarted agent joins afresh and adopts its containers.
			a2.kill()
			h2.linkUp()
			a2.start()
			// Polled by hand: this also runs deferred, after a Fatal.
			deadline := time.Now().Add(60 * time.Second)
			for {
				ready, msg := nodeReady(cs, "n2")
				if ready {
					return
				}
				if time.Now().After(deadline) {
					t.Errorf("n2 not Ready 60s after its agent restarted: %s", msg)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		defer restore()
		// n1 is the master and n1's agent in one process, one gossip
		// member: when the Node turns Unknown, n1's proxy has been told.
		waitFor(t, 60*time.Second, "gossip declaring n2 dead", func() (bool, string) {
			ready, msg := nodeReady(cs, "n2")
			return !ready && strings.Contains(msg, "Unknown"), msg
		})
		t.Logf("n2 dead to gossip %v after its link went down", time.Since(cutAt).Round(time.Millisecond))
		dialFailures := func() float64 {
			samples, err := scrapeMetrics(ctx, agentHTTP, h1.ip)
			if err != nil {
				t.Fatal(err)
			}
			return sumMetric(samples, "flotilla_netproxy_dial_failures_total", map[string]string{"service": "default/echo-all"})
		}
		// Gossip told n1's proxy before the Node changed, and the proxy
		// reads gossip every so often. Requests one after the other, each
		// followed by a look at the dial failures, show when it stopped
		// trying n2.
		unknownAt := time.Now()
		lastDialled, requests := time.Duration(-1), 0
		for since := time.Duration(0); since < 1500*time.Millisecond; since = time.Since(unknownAt) {
			before := dialFailures()
			body, err := httpGetIn(ctx, h1, allURL)
			if err != nil || echoHostname(body) == "" {
				t.Errorf("request sent %v after n2 turned Unknown: %v: %q", since.Round(time.Millisecond), err, body)
			}
			if dialFailures() > before {
				lastDialled = since
			}
			requests++
		}
		if lastDialled < 0 {
			t.Logf("n1's proxy skipped n2's endpoints from the first of %d requests after the Node turned Unknown", requests)
		} else {
			t.Logf("the last of %d requests to dial n2 was sent %v after the Node turned Unknown", requests, lastDialled.Round(time.Millisecond))
		}
		if lastDialled > time.Second {
			t.Errorf("n1's proxy still dialled n2's endpoints %v after the Node turned Unknown, which is after gossip declared it dead", lastDialled.Round(time.Millisecond))
		}

		before := dialFailures()
		var slowest time.Duration
		for i := range 40 {
			start := time.Now()
			body, err := httpGetIn(ctx, h1, allURL)
			d := time.Since(start)
			slowest = max(slowest, d)
			if err != nil || echoHostname(body) == "" {
				t.Fatalf("request %d through echo-all with n2 dead: %v: %q", i, err, body)
			}
			if p := echoHostname(body); eps[endpointIPOf(eps, p)].node != "n1" {
				t.Fatalf("request %d answered by %s, which is not on n1", i, p)
			}
			if d > 500*time.Millisecond {
				t.Errorf("request %d took %v: an endpoint on the dead node was tried first?", i, d)
			}
		}
		if after := dialFailures(); after != before {
			t.Errorf("%v dial failures during 40 requests with n2 dead: its endpoints were dialled, not skipped", after-before)
		}
		t.Logf("40 requests with n2 dead, slowest %v", slowest)
		// The skipping was gossip's doing: the Endpoints still list n2's pods.
		ready, _ := endpointsOf(ctx, cs, "echo-all")
		for _, ip := range onN2 {
			if _, ok := ready[ip]; !ok {
				t.Errorf("echo-all's Endpoints dropped %s (%s); the check above proved less than it should", ip, ready)
			}
		}
		// The main Service too.
		if seen, err := getN(ctx, h1, url, 10); err != nil {
			t.Errorf("echo with n2 dead: %v (answers %v)", err, seen)
		}
		if err := cs.CoreV1().Services("default").Delete(ctx, "echo-all", metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
		restore()
	})

	t.Run("cleanup", func(t *testing.T) {
		for _, name := range []string{"echo", "echo-all"} {
			_ = cs.CoreV1().Services("default").Delete(ctx, name, metav1.DeleteOptions{})
		}
		if err := deps.Delete(ctx, "echo", metav1.DeleteOptions{PropagationPolicy: ptr(metav1.DeletePropagationBackground)}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "every echo pod gone", func() (bool, string) {
			l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			return err == nil && len(l.Items) == 0, fmt.Sprint(err, " ", len(l.Items), " left")
		})
		// A Service's ClusterIP leaves lo with it.
		for _, h := range hosts {
			waitFor(t, 30*time.Second, "the test's ClusterIPs gone from "+h.name+"'s lo", func() (bool, string) {
				out, err := h.run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "lo")
				if err != nil {
					return false, err.Error()
				}
				for _, ip := range clusterIPs {
					if strings.Contains(out, " "+ip+"/32 ") {
						return false, out
					}
				}
				return true, ""
			})
		}
	})
}

// readyWithToolbox waits for the nodes to be Ready and imports the toolbox
// image into them through the master's API; it returns the kubeconfig.
func readyWithToolbox(t testing.TB, ctx context.Context, cs kubernetes.Interface, h *testHost, master *server, image string, nodes ...string) string {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, 60*time.Second, "node "+n+" Ready", func() (bool, string) { return nodeReady(cs, n) })
	}
	kubeconfig := filepath.Join(master.dataDir, "kubeconfig")
	out, err := h.flotilla(ctx, "image", "import", image, "--kubeconfig", kubeconfig)
	if err != nil {
		t.Fatalf("image import: %v: %s", err, out)
	}
	for _, n := range nodes {
		if !strings.Contains(out, n+": imported "+testimages.ToolboxRef) {
			t.Fatalf("image import output lacks node %s: %s", n, out)
		}
	}
	return kubeconfig
}

// echoDeployment is Deployment echo (pods labelled app=echo) running the
// toolbox's echo server: HTTP on 8080 (port name http), UDP echo on 9090,
// ready while /readyz says so, and serving on for three seconds after
// SIGTERM so the proxies drop it before it stops (the usual preStop
// delay).
func echoDeployment(replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": "echo"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr(int64(10)),
					Containers: []corev1.Container{{
						Name:  "main",
						Image: testimages.ToolboxRef,
						Args:  []string{"serve", "--port", "8080", "--udp-port", "9090", "--term-delay", "3s"},
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
							{Name: "echo", ContainerPort: 9090, Protocol: corev1.ProtocolUDP},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{
								HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")},
							},
							PeriodSeconds:    1,
							FailureThreshold: 1,
						},
					}},
				},
			},
		},
	}
}

// echoService selects the pods labelled app=echo: port 80 to their
// named port http, and UDP 9090 by number.
func echoService(name string, typ corev1.ServiceType) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 9090, TargetPort: intstr.FromInt32(9090)},
			},
		},
	}
}

// endpoint is one address of an Endpoints object.
type endpoint struct{ ip, pod, node string }

// endpointsOf reads a Service's Endpoints: ready and not-ready addresses
// by IP.
func endpointsOf(ctx context.Context, cs kubernetes.Interface, name string) (ready, notReady map[string]endpoint) {
	ready, notReady = map[string]endpoint{}, map[string]endpoint{}
	ep, err := cs.CoreV1().Endpoints("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, nil
	}
	add := func(to map[string]endpoint, as []corev1.EndpointAddress) {
		for _, a := range as {
			e := endpoint{ip: a.IP}
			if a.TargetRef != nil {
				e.pod = a.TargetRef.Name
			}
			if a.NodeName != nil {
				e.node = *a.NodeName
			}
			to[a.IP] = e
		}
	}
	for _, s := range ep.Subsets {
		add(ready, s.Addresses)
		add(notReady, s.NotReadyAddresses)
	}
	return ready, notReady
}

// waitEndpoints waits until a Service's Endpoints have exactly the given
// numbers of ready and not-ready addresses, and returns them.
func waitEndpoints(t testing.TB, cs kubernetes.Interface, name string, ready, notReady int) (r, nr map[string]endpoint) {
	t.Helper()
	waitFor(t, 60*time.Second, fmt.Sprintf("Endpoints %s with %d ready and %d not ready", name, ready, notReady), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, nr = endpointsOf(ctx, cs, name)
		return r != nil && len(r) == ready && len(nr) == notReady, fmt.Sprintf("ready %v, not ready %v", r, nr)
	})
	return r, nr
}

func nodesOf(eps map[string]endpoint) []string {
	set := map[string]bool{}
	for _, e := range eps {
		set[e.node] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func podNames(eps map[string]endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.pod)
	}
	sort.Strings(out)
	return out
}

// oneEndpointPerNode picks one endpoint on each node, in node name order.
func oneEndpointPerNode(eps map[string]endpoint) []endpoint {
	by := map[string]endpoint{}
	for _, ip := range slices.Sorted(maps.Keys(eps)) {
		if _, ok := by[eps[ip].node]; !ok {
			by[eps[ip].node] = eps[ip]
		}
	}
	var out []endpoint
	for _, n := range slices.Sorted(maps.Keys(by)) {
		out = append(out, by[n])
	}
	return out
}

func endpointIPOf(eps map[string]endpoint, pod string) string {
	for ip, e := range eps {
		if e.pod == pod {
			return ip
		}
	}
	return ""
}

// echoHostname is the pod that answered: the toolbox's "hostname=NAME"
// in an HTTP body or a UDP reply.
func echoHostname(s string) string {
	_, rest, ok := strings.Cut(s, "hostname=")
	if !ok {
		return ""
	}
	if f := strings.Fields(rest); len(f) > 0 {
		return f[0]
	}
	return ""
}

// waitServed waits until url answers from inside h with a hostname.
func waitServed(t testing.TB, ctx context.Context, h *testHost, url string) {
	t.Helper()
	waitFor(t, 30*time.Second, url+" answering from "+h.name, func() (bool, string) {
		body, err := httpGetIn(ctx, h, url)
		return err == nil && echoHostname(body) != "", fmt.Sprintf("%v: %q", err, body)
	})
}

// getN sends n requests from inside h to url, a new connection each, and
// counts the answers by pod; the first failure ends it.
func getN(ctx context.Context, h *testHost, url string, n int) (map[string]int, error) {
	seen := map[string]int{}
	for i := range n {
		body, err := httpGetIn(ctx, h, url)
		if err != nil {
			return seen, fmt.Errorf("request %d of %d from %s to %s: %w", i+1, n, h.name, url, err)
		}
		name := echoHostname(body)
		if name == "" {
			return seen, fmt.Errorf("request %d of %d from %s to %s: no hostname in %q", i+1, n, h.name, url, body)
		}
		seen[name]++
	}
	return seen, nil
}

// udpExchange sends msgs in turn over one UDP socket (one flow) from inside
// h to addr and returns a reply to each.
func udpExchange(h *testHost, addr string, msgs []string, timeout time.Duration) ([]string, error) {
	var replies []string
	err := h.do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 2048)
		for _, m := range msgs {
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				return err
			}
			if _, err := c.Write([]byte(m)); err != nil {
				return err
			}
			n, err := c.Read(buf)
			if err != nil {
				return fmt.Errorf("reply to %q from %s: %w", m, addr, err)
			}
			replies = append(replies, string(buf[:n]))
		}
		return nil
	})
	return replies, err
}

// resetCheck connects from inside h to addr and wants a reset: refused
// outright, or accepted and then reset before any byte. It says which.
// Nothing is sent: closing a socket with unread data resets it anyway,
// which would hide a plain close (FIN).
func resetCheck(h *testHost, addr string) (string, error) {
	var how string
	err := h.do(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			how = "refused"
			return nil
		case errors.Is(err, syscall.ECONNRESET):
			// The reset came while connect was still being completed.
			how = "accepted, then reset (seen by connect)"
			return nil
		}
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(make([]byte, 512))
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			how = "accepted, then reset"
			return nil
		case err == nil:
			return fmt.Errorf("%d bytes back, want a reset", n)
		default:
			return fmt.Errorf("want a reset, got %w", err)
		}
	})
	return how, err
}

// setAffinity sets a Service's sessionAffinity (ClientIP with the default
// timeout, or None).
func setAffinity(t testing.TB, ctx context.Context, cs kubernetes.Interface, name string, a corev1.ServiceAffinity) {
	t.Helper()
	patch := `{"spec":{"sessionAffinity":"ClientIP"}}`
	if a == corev1.ServiceAffinityNone {
		patch = `{"spec":{"sessionAffinity":"None","sessionAffinityConfig":null}}`
	}
	if _, err := cs.CoreV1().Services("default").Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("set sessionAffinity %s on %s: %v", a, name, err)
	}
}

func scale(t testing.TB, ctx context.Context, cs kubernetes.Interface, name string, replicas int) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := cs.AppsV1().Deployments("default").Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("scale %s to %d: %v", name, replicas, err)
	}
}

// stream sends GET url from inside h every interval, a new connection
// each, until stopped, and keeps what happened.
type stream struct {
	h      *testHost
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	ok       int
	failures []string
	perPod   map[string]int
}

func startStream(ctx context.Context, h *testHost, url string, interval time.Duration) *stream {
	ctx, cancel := context.WithCancel(ctx)
	s := &stream{h: h, cancel: cancel, done: make(chan struct{}), perPod: map[string]int{}}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for ctx.Err() == nil {
			start := time.Now()
			body, err := httpGetIn(ctx, h, url)
			if ctx.Err() != nil {
				return // stopped mid-request: not the proxy's failure
			}
			name := echoHostname(body)
			s.mu.Lock()
			if err != nil || name == "" {
				s.failures = append(s.failures, fmt.Sprintf("%s (+%v): %v %q", start.Format("15:04:05.000"), time.Since(start).Round(time.Millisecond), err, body))
			} else {
				s.ok++
				s.perPod[name]++
			}
			s.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *stream) stop() {
	s.cancel()
	<-s.done
}

// count is the number of requests done so far.
func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok + len(s.failures)
}

// missing lists the pods that have not answered yet.
func (s *stream) missing(pods []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, p := range pods {
		if s.perPod[p] == 0 {
			out = append(out, p)
		}
	}
	return out
}

func (s *stream) result() (int, []string, map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok, slices.Clone(s.failures), maps.Clone(s.perPod)
}

// agentPort is the agent endpoint's default port, where /metrics is.
const agentPort = "10250"

// metricSample is one line of the Prometheus text format.
type metricSample struct {
	name   string
	labels map[string]string
	value  float64
}

// scrapeMetrics reads the agent's /metrics at ip from inside h.
// The agent endpoint answers only masters: c holds a master's certificate.
func scrapeMetrics(ctx context.Context, c *http.Client, ip string) ([]metricSample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+net.JoinHostPort(ip, agentPort)+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /metrics on %s: %s: %s", ip, resp.Status, b)
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text exposition format: enough of it
// for counters and gauges (comments skipped, timestamps ignored).
func parseMetrics(r io.Reader) ([]metricSample, error) {
	var out []metricSample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s := metricSample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("metric line %q", line)
		}
		s.name, line = line[:i], line[i:]
		if line[0] == '{' {
			line = line[1:]
			for {
				line = strings.TrimLeft(line, " ,")
				if strings.HasPrefix(line, "}") {
					line = line[1:]
					break
				}
				eq := strings.Index(line, `="`)
				if eq < 0 {
					return nil, fmt.Errorf("metric %s: bad labels", s.name)
				}
				key := line[:eq]
				line = line[eq+2:]
				var val strings.Builder
				for {
					if line == "" {
						return nil, fmt.Errorf("metric %s: unterminated label %s", s.name, key)
					}
					ch := line[0]
					line = line[1:]
					if ch == '"' {
						break
					}
					if ch == '\\' && line != "" {
						switch line[0] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(line[0])
						}
						line = line[1:]
						continue
					}
					val.WriteByte(ch)
				}
				s.labels[key] = val.String()
			}
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			return nil, fmt.Errorf("metric %s: no value", s.name)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", s.name, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out, sc.Err()
}

// sumMetric adds up the samples of one metric whose labels include match.
func sumMetric(samples []metricSample, name string, match map[string]string) float64 {
	var sum float64
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if s.labels[k] != v {
				ok = false
			}
		}
		if ok {
			sum += s.value
		}
	}
	return sum
}

// dumpFrontendsOnFailure logs what each node's proxy serves (its
// /proxy/frontends status page) when the test failed.
func dumpFrontendsOnFailure(t *testing.T, master *server, hosts ...*testHost) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, h := range hosts {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			body, err := getWith(ctx, serverCertHTTP(t, h, master, 5*time.Second), "https://"+net.JoinHostPort(h.ip, agentPort)+"/proxy/frontends")
			cancel()
			t.Logf("---- %s: proxy frontends ----\n%v %s", h.name, err, body)
		}
	})
}
