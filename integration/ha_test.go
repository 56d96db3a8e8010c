package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"flotilla/cluster"
	"flotilla/testimages"
)

// TestHACluster is issue 8 end to end: a real cluster of three masters in
// Raft (m1–m3, each `flotilla server --bootstrap-expect 3 --join m1`) and
// two agents (n1, n2, given m1's gossip address only) in a lab, and what an
// operator meets with it, numbered as in the issue: install (1); a
// workload behind a NodePort Service, with logs, exec and scale (2); a
// rolling update that loses no request, and its undo (3); an agent node
// that dies with its pods (6); an agent restart that keeps its containers
// (9); the Raft leader killed under writes (4).
//
// One cluster serves every step (a fresh one per step would cost most of a
// minute each), so each step leaves it as it found it: two Ready nodes,
// three voters. A failed step ends the test, since the next ones build on
// its state. The leader kill comes last because it is the only step that
// needs a master to die.
//
// kubectl, the operator commands and the API clients run in m1's host (it
// is never cut off, even while m1's process is dead); Service traffic goes
// from the agents' hosts, where the proxies are.
func TestHACluster(t *testing.T) {
	containerd := sharedContainerd(t)
	image := testimages.ForTest(t)
	lab := newLab(t)
	var mhosts []*testHost
	for i := 1; i <= 3; i++ {
		mhosts = append(mhosts, lab.host(fmt.Sprintf("m%d", i)))
	}
	seed := net.JoinHostPort(mhosts[0].ip, "7946")
	began := time.Now()
	var masters []*server
	for i, h := range mhosts {
		s := newServerIn(t, h, fmt.Sprintf("m%d", i+1), "--bootstrap-expect", "3", "--join", seed)
		s.start()
		masters = append(masters, s)
	}
	hn1, hn2 := lab.host("n1"), lab.host("n2")
	agents := []*node{newAgentNode(t, hn1, "n1", seed, containerd), newAgentNode(t, hn2, "n2", seed, containerd)}
	for _, a := range agents {
		a.start()
		ns := a.ns
		// Runs (cleanups are last in, first out) after the last step has
		// removed the pods, before the agents are killed; only empty
		// directories go.
		t.Cleanup(func() { removeEmptyNamespaceDirs(ns) })
	}
	dumpOnFailure(t, append(slices.Clone(masters), agents[0].server, agents[1].server)...)
	dumpFrontendsOnFailure(t, masters[0], hn1, hn2)

	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	admin := mhosts[0]
	cs := clientIn(t, admin, masters[0])
	nodeHosts := []*testHost{hn1, hn2}
	kubeconfig := ""
	cacheDir := t.TempDir()
	kubectl := func(args ...string) (string, error) {
		kctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		return admin.flotilla(kctx, append([]string{"kubectl", "--kubeconfig", kubeconfig, "--cache-dir", cacheDir}, args...)...)
	}
	step := func(name string, fn func(t *testing.T)) {
		stepStart := time.Now()
		ok := t.Run(name, fn)
		t.Logf("step %q took %v", name, time.Since(stepStart).Round(time.Millisecond))
		if !ok {
			t.FailNow()
		}
	}

	step("1 install", func(t *testing.T) {
		leaders := map[string]bool{}
		for _, m := range masters {
			var peers []cluster.Peer
			waitFor(t, 90*time.Second, "list-peers through "+m.name+" showing a leader and two followers, all voters", func() (bool, string) {
				var err error
				if peers, err = raftPeers(ctx, admin, m); err != nil {
					return false, err.Error()
				}
				_, problem := raftSettled(peers, 3)
				return problem == "", problem
			})
			leader, _ := raftSettled(peers, 3)
			leaders[leader] = true
		}
		if len(leaders) != 1 {
			t.Fatalf("the masters name different leaders: %v", slices.Sorted(maps.Keys(leaders)))
		}
		t.Logf("Raft settled %v after the first master started; leader %v", time.Since(began).Round(time.Millisecond), slices.Collect(maps.Keys(leaders)))
		for _, a := range agents {
			waitFor(t, 90*time.Second, "node "+a.name+" Ready", func() (bool, string) { return nodeReady(cs, a.name) })
		}
		t.Logf("both nodes Ready %v after the first master started", time.Since(began).Round(time.Millisecond))
	})

	var url string
	step("2 workload", func(t *testing.T) {
		kubeconfig = readyWithToolbox(t, ctx, cs, admin, masters[0], image, "n1", "n2")
		created := time.Now()
		if _, err := cs.AppsV1().Deployments("default").Create(ctx, echoDeployment(3), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		svc, err := cs.CoreV1().Services("default").Create(ctx, echoService("echo", corev1.ServiceTypeNodePort), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodePort := ""
		for _, p := range svc.Spec.Ports {
			if p.Protocol == corev1.ProtocolTCP {
				nodePort = strconv.Itoa(int(p.NodePort))
			}
		}
		if svc.Spec.ClusterIP == "" || nodePort == "" || nodePort == "0" {
			t.Fatalf("Service without a ClusterIP or a NodePort: %+v", svc.Spec)
		}
		url = "http://" + svc.Spec.ClusterIP + "/"
		eps, _ := waitEndpoints(t, cs, "echo", 3, 0)
		pods := podNames(eps)
		t.Logf("3 endpoints ready %v after the Deployment was created: %v", time.Since(created).Round(time.Millisecond), eps)

		for _, h := range nodeHosts {
			// Round robin over three ready endpoints: six requests in a
			// row reach each, once the proxy has all three.
			waitFor(t, 30*time.Second, h.name+" reaching all three pods through "+url, func() (bool, string) {
				seen, err := getN(ctx, h, url, 6)
				return err == nil && slices.Equal(slices.Sorted(maps.Keys(seen)), pods), fmt.Sprintf("answers %v, %v", seen, err)
			})
			seen, err := getN(ctx, h, url, 12)
			if err != nil {
				t.Fatalf("ClusterIP from %s: %v", h.name, err)
			}
			t.Logf("ClusterIP from %s: %v", h.name, seen)
			for _, to := range nodeHosts {
				u := "http://" + net.JoinHostPort(to.ip, nodePort) + "/"
				waitServed(t, ctx, h, u)
				seen, err := getN(ctx, h, u, 6)
				if err != nil {
					t.Fatalf("NodePort from %s: %v", h.name, err)
				}
				t.Logf("NodePort %s from %s: %v", u, h.name, seen)
			}
		}

		out, err := kubectl("logs", pods[0])
		if err != nil || !strings.Contains(out, "GET / from ") {
			t.Fatalf("kubectl logs %s: %v: %q", pods[0], err, out)
		}
		out, err = kubectl("exec", pods[1], "--", "/toolbox", "hostname")
		if err != nil || strings.TrimSpace(out) != pods[1] {
			t.Fatalf("kubectl exec %s -- /toolbox hostname: %v: %q", pods[1], err, out)
		}
		for _, n := range []int{4, 3} {
			out, err := kubectl("scale", "deployment/echo", fmt.Sprintf("--replicas=%d", n))
			if err != nil {
				t.Fatalf("kubectl scale --replicas=%d: %v", n, err)
			}
			scaled := time.Now()
			waitEndpoints(t, cs, "echo", n, 0)
			t.Logf("%s: %d ready endpoints %v later", strings.TrimSpace(out), n, time.Since(scaled).Round(time.Millisecond))
		}
	})

	step("3 rolling update", func(t *testing.T) {
		deps := cs.AppsV1().Deployments("default")
		before := activeReplicaSet(t, ctx, cs, 3)
		var streams []*stream
		for _, h := range nodeHosts {
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

		rollout := time.Now()
		if out, err := kubectl("set", "env", "deployment/echo", "HA_REVISION=2"); err != nil {
			t.Fatalf("kubectl set env: %v", err)
		} else {
			t.Log(strings.TrimSpace(out))
		}
		if out, err := kubectl("rollout", "status", "deployment/echo", "--timeout=3m"); err != nil {
			t.Fatalf("kubectl rollout status: %v", err)
		} else {
			t.Logf("rollout status returned %v after set env: %s", time.Since(rollout).Round(time.Millisecond), lastLine(out))
		}
		updated := activeReplicaSet(t, ctx, cs, 3)
		if updated.Name == before.Name {
			t.Fatalf("ReplicaSet %s still active after the template changed", before.Name)
		}
		// The old pods serve on for their term delay after SIGTERM: the
		// streams keep going until they are gone, and a little after.
		waitOnlyPodsOf(t, ctx, cs, updated, 3)
		t.Logf("old pods gone %v after set env", time.Since(rollout).Round(time.Millisecond))
		after := []int{streams[0].count(), streams[1].count()}
		waitFor(t, 20*time.Second, "twenty more requests in each stream", func() (bool, string) {
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
		// The containers really run the new template.
		pods := liveEchoPods(t, ctx, cs)
		out, err := kubectl("exec", pods[0].Name, "--", "/toolbox", "env")
		if err != nil || !slices.Contains(strings.Split(out, "\n"), "HA_REVISION=2") {
			t.Fatalf("kubectl exec %s -- /toolbox env: %v: want HA_REVISION=2 in %q", pods[0].Name, err, out)
		}

		undo := time.Now()
		if out, err := kubectl("rollout", "undo", "deployment/echo"); err != nil {
			t.Fatalf("kubectl rollout undo: %v", err)
		} else {
			t.Log(strings.TrimSpace(out))
		}
		if _, err := kubectl("rollout", "status", "deployment/echo", "--timeout=3m"); err != nil {
			t.Fatalf("kubectl rollout status after undo: %v", err)
		}
		restored := activeReplicaSet(t, ctx, cs, 3)
		if restored.Name != before.Name {
			t.Fatalf("after undo ReplicaSet %s is active, want the first one, %s", restored.Name, before.Name)
		}
		d, err := deps.Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if env := d.Spec.Template.Spec.Containers[0].Env; len(env) != 0 {
			t.Fatalf("after undo the template still has env %v", env)
		}
		t.Logf("undo: revision %s, %v to roll back", d.Annotations["deployment.kubernetes.io/revision"], time.Since(undo).Round(time.Millisecond))
		waitOnlyPodsOf(t, ctx, cs, restored, 3)
		waitEndpoints(t, cs, "echo", 3, 0)
	})

	// victim is the agent step 6 kills; survivor keeps the pods, and step 9
	// restarts it.
	var victim, survivor *node
	step("6 agent node killed", func(t *testing.T) {
		perNode := map[string]int{}
		for _, p := range liveEchoPods(t, ctx, cs) {
			perNode[p.Spec.NodeName]++
		}
		victim, survivor = agents[0], agents[1]
		if perNode[survivor.name] > perNode[victim.name] {
			victim, survivor = survivor, victim
		}
		t.Logf("echo pods per node %v: killing %s", perNode, victim.name)

		// Killing the agent alone leaves its containers serving: the host
		// goes off the network with it, as a machine that dies does.
		victim.host.linkDown()
		victim.kill()
		down := time.Now()
		waitFor(t, 60*time.Second, victim.name+" NotReady (Unknown)", func() (bool, string) {
			ready, msg := nodeReady(cs, victim.name)
			return !ready && strings.Contains(msg, "Unknown"), msg
		})
		t.Logf("%s NotReady %v after it died", victim.name, time.Since(down).Round(time.Millisecond))
		waitFor(t, 120*time.Second, "three echo pods running and ready on "+survivor.name, func() (bool, string) {
			pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			if err != nil {
				return false, err.Error()
			}
			var live, ready []string
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.DeletionTimestamp != nil {
					continue
				}
				live = append(live, p.Name+"@"+p.Spec.NodeName)
				if p.Spec.NodeName == survivor.name && podIsReady(p) {
					ready = append(ready, p.Name)
				}
			}
			return len(live) == 3 && len(ready) == 3, fmt.Sprintf("pods %v, ready on %s %v", live, survivor.name, ready)
		})
		t.Logf("all three replicas running on %s %v after %s died", survivor.name, time.Since(down).Round(time.Millisecond), victim.name)
		waitFor(t, 30*time.Second, "twenty requests in a row through the ClusterIP from "+survivor.name, func() (bool, string) {
			seen, err := getN(ctx, survivor.host, url, 20)
			return err == nil, fmt.Sprintf("answers %v, %v", seen, err)
		})

		// Back: the cable in, the agent started again on its data dir. Its
		// gossip member was declared dead; it joins afresh.
		victim.host.linkUp()
		victim.start()
		back := time.Now()
		waitFor(t, 90*time.Second, victim.name+" Ready again", func() (bool, string) { return nodeReady(cs, victim.name) })
		t.Logf("%s Ready %v after its agent restarted", victim.name, time.Since(back).Round(time.Millisecond))
		// Its pods were deleted while it was away: it finishes them, and
		// their containers go.
		waitFor(t, 60*time.Second, "the evicted pods and their containers gone from "+victim.name, func() (bool, string) {
			pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			if err != nil {
				return false, err.Error()
			}
			var left []string
			for _, p := range pods.Items {
				if p.Spec.NodeName == victim.name {
					left = append(left, p.Name)
				}
			}
			if len(left) > 0 {
				return false, fmt.Sprintf("pods %v still on %s", left, victim.name)
			}
			tasks, err := ctrTasks(containerd, victim.ns)
			return err == nil && len(tasks) == 0, fmt.Sprintf("tasks %v, %v", tasks, err)
		})
		t.Logf("%s clean %v after its agent restarted", victim.name, time.Since(back).Round(time.Millisecond))
	})

	step("9 agent restart", func(t *testing.T) {
		a := survivor
		before := podsOn(t, ctx, cs, a.name)
		if len(before) == 0 {
			t.Fatalf("no echo pods on %s", a.name)
		}
		tasksBefore := waitTasksMatch(t, containerd, a, before)
		// A client on the other node sees no failure meanwhile: the
		// agent leaves gossip when it stops, and the masters give a
		// member that left the grace of a silent node instead of
		// declaring it unreachable, so its pods stay in the Endpoints.
		s := startStream(ctx, victim.host, url, 25*time.Millisecond)
		defer s.stop()
		waitFor(t, 10*time.Second, "a stream from "+victim.name, func() (bool, string) { return s.count() >= 10, fmt.Sprint(s.count()) })
		stopped := time.Now()
		a.stop() // SIGTERM: a graceful stop, as for an upgrade
		a.start()
		restarted := time.Now()
		waitFor(t, 90*time.Second, a.name+" Ready after its agent restarted", func() (bool, string) { return nodeReady(cs, a.name) })
		t.Logf("%s's agent stopped in %v; Ready %v after it started again", a.name, restarted.Sub(stopped).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
		waitEndpoints(t, cs, "echo", 3, 0)
		n := s.count()
		waitFor(t, 10*time.Second, "twenty more requests from "+victim.name, func() (bool, string) { return s.count() >= n+20, fmt.Sprint(s.count()) })
		s.stop()
		ok, failures, _ := s.result()
		t.Logf("stream from %s through the ClusterIP across the restart: %d requests, %d failed", victim.name, ok+len(failures), len(failures))
		if len(failures) > 0 {
			t.Errorf("%d requests through the ClusterIP failed while %s's agent restarted (its containers serve on); first %s, last %s",
				len(failures), a.name, failures[0], failures[len(failures)-1])
		}

		// Status flows from the new agent: a pod turning not ready moves
		// to notReadyAddresses, and back.
		p := before[0]
		base := "http://" + net.JoinHostPort(p.Status.PodIP, "8080")
		if _, err := httpGetIn(ctx, a.host, base+"/ready/off"); err != nil {
			t.Fatal(err)
		}
		flipped := time.Now()
		_, notReady := waitEndpoints(t, cs, "echo", 2, 1)
		if _, ok := notReady[p.Status.PodIP]; !ok {
			t.Fatalf("not ready: %v, want %s", notReady, p.Name)
		}
		t.Logf("%s in notReadyAddresses %v after /ready/off", p.Name, time.Since(flipped).Round(time.Millisecond))
		if _, err := httpGetIn(ctx, a.host, base+"/ready/on"); err != nil {
			t.Fatal(err)
		}
		waitEndpoints(t, cs, "echo", 3, 0)

		// The same pods with the same containers, none restarted: the
		// agent adopted them. Read after the flip, so the statuses are
		// the new agent's.
		after := podsOn(t, ctx, cs, a.name)
		if len(after) != len(before) {
			t.Fatalf("%d echo pods on %s before the restart, %d after", len(before), a.name, len(after))
		}
		for i := range before {
			b, c := before[i], after[i]
			if b.Name != c.Name || b.UID != c.UID {
				t.Fatalf("pod %s (%s) became %s (%s)", b.Name, b.UID, c.Name, c.UID)
			}
			bs, as := b.Status.ContainerStatuses[0], c.Status.ContainerStatuses[0]
			if bs.ContainerID != as.ContainerID || bs.RestartCount != as.RestartCount {
				t.Fatalf("pod %s: container %s (restarts %d) became %s (restarts %d)", b.Name, bs.ContainerID, bs.RestartCount, as.ContainerID, as.RestartCount)
			}
		}
		// No duplicates, and the same processes: one task per pod, each
		// with the pid it had.
		tasksAfter := waitTasksMatch(t, containerd, a, after)
		if !maps.Equal(tasksBefore, tasksAfter) {
			t.Fatalf("tasks (id → pid) before the restart %v, after %v", tasksBefore, tasksAfter)
		}
		t.Logf("%d pods kept their containers across the restart: %v", len(after), tasksAfter)
	})

	step("4 leader killed under writes", func(t *testing.T) {
		var clients []kubernetes.Interface
		for _, m := range masters {
			clients = append(clients, clientIn(t, admin, m))
		}
		peers, err := raftPeers(ctx, admin, masters[0])
		if err != nil {
			t.Fatal(err)
		}
		old, problem := raftSettled(peers, 3)
		if problem != "" {
			t.Fatalf("before the kill: %s", problem)
		}
		var leader *server
		var survivors []int
		for i, m := range masters {
			if m.name == old {
				leader = m
			} else {
				survivors = append(survivors, i)
			}
		}
		if leader == nil {
			t.Fatalf("leader %q is none of the masters", old)
		}

		w := startWriteLoad(ctx, clients, 20*time.Millisecond)
		defer w.stop()
		waitFor(t, 30*time.Second, "twenty writes acknowledged", func() (bool, string) {
			n, _, _ := w.progress()
			return n >= 20, fmt.Sprintf("%d acknowledged", n)
		})
		leader.kill()
		killed := time.Now()
		other := masters[survivors[0]]
		waitFor(t, 30*time.Second, "a new leader", func() (bool, string) {
			peers, err := raftPeers(ctx, admin, other)
			if err != nil {
				return false, err.Error()
			}
			for _, p := range peers {
				if p.State == "leader" && p.ID != old {
					return true, ""
				}
			}
			return false, fmt.Sprintf("peers %+v", peers)
		})
		t.Logf("new leader seen %v after kill -9 of %s", time.Since(killed).Round(time.Millisecond), old)
		var resumed time.Duration
		waitFor(t, 60*time.Second, "writes acknowledged again", func() (bool, string) {
			at, ok := w.firstAckSentAfter(killed)
			resumed = at.Sub(killed)
			n, errs, last := w.progress()
			return ok, fmt.Sprintf("%d acknowledged, %d errors, last %s", n, errs, last)
		})
		n, _, _ := w.progress()
		waitFor(t, 30*time.Second, "twenty more writes", func() (bool, string) {
			m, _, _ := w.progress()
			return m >= n+20, fmt.Sprint(m)
		})
		w.stop()
		acked, existed, errs, gap := w.result()
		t.Logf("writes resumed %v after kill -9 of the leader; %d acknowledged (%d found existing on a retry), %d failed attempts, longest gap between acknowledgements %v",
			resumed.Round(time.Millisecond), len(acked), existed, errs, gap.Round(time.Millisecond))

		// Every acknowledged write survived the leader.
		checkAcked := func(through *server, c kubernetes.Interface) {
			t.Helper()
			list, err := c.CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{LabelSelector: writerLabel})
			if err != nil {
				t.Fatalf("list ConfigMaps through %s: %v", through.name, err)
			}
			have := map[string]bool{}
			for _, cm := range list.Items {
				have[cm.Name] = true
			}
			var lost []string
			for _, name := range acked {
				if !have[name] {
					lost = append(lost, name)
				}
			}
			if len(lost) > 0 {
				t.Fatalf("%d of %d acknowledged ConfigMaps missing through %s: %v", len(lost), len(acked), through.name, lost)
			}
		}
		sc := clients[survivors[0]]
		checkAcked(masters[survivors[0]], sc)

		// The scheduler and the controllers carry on on the new leader.
		scaled := time.Now()
		scale(t, ctx, sc, "echo", 4)
		waitEndpoints(t, sc, "echo", 4, 0)
		t.Logf("scaled to 4 on the new leader: 4 ready endpoints in %v", time.Since(scaled).Round(time.Millisecond))

		// The killed master comes back on its data dir as a voter.
		leader.start()
		back := time.Now()
		for _, m := range masters {
			waitFor(t, 90*time.Second, "list-peers through "+m.name+" showing three voters again", func() (bool, string) {
				peers, err := raftPeers(ctx, admin, m)
				if err != nil {
					return false, err.Error()
				}
				_, problem := raftSettled(peers, 3)
				return problem == "", problem
			})
		}
		t.Logf("%s back among three voters %v after its restart", old, time.Since(back).Round(time.Millisecond))
		// And it has caught up: it serves every acknowledged write.
		checkAcked(leader, clients[slices.Index(masters, leader)])
	})

	step("8 whole cluster restarted", func(t *testing.T) {
		before := liveEchoPods(t, ctx, cs)
		tasksBefore := map[string]map[string]string{}
		for _, a := range agents {
			tasksBefore[a.name] = waitTasksMatch(t, containerd, a, podsOn(t, ctx, cs, a.name))
		}
		stopped := time.Now()
		for _, m := range masters {
			m.stop()
		}
		t.Logf("three masters stopped in %v", time.Since(stopped).Round(time.Millisecond))
		started := time.Now()
		for _, m := range masters {
			m.start()
		}
		waitFor(t, 60*time.Second, "a leader and three voters again", func() (bool, string) {
			peers, err := raftPeers(ctx, admin, masters[0])
			if err != nil {
				return false, err.Error()
			}
			_, problem := raftSettled(peers, 3)
			return problem == "", problem
		})
		t.Logf("leader and three voters %v after the start", time.Since(started).Round(time.Millisecond))
		// The agents find the restarted masters on their own (they call
		// the join addresses back while no master is alive): the masters'
		// gossip sees them alive, which the stored Ready alone would not
		// prove.
		hc := adminHTTP(t, admin, masters[0], 5*time.Second)
		waitFor(t, 90*time.Second, "both agents alive in the masters' gossip", func() (bool, string) {
			resp, err := hc.Get("https://" + masters[0].apiAddr() + "/flotilla/v1/operator/members")
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			var ms []cluster.Member
			if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
				return false, err.Error()
			}
			alive := 0
			for _, m := range ms {
				if (m.Name == "n1" || m.Name == "n2") && m.Status == cluster.StatusAlive {
					alive++
				}
			}
			return alive == 2, fmt.Sprintf("%+v", ms)
		})
		t.Logf("both agents back in gossip %v after the start", time.Since(started).Round(time.Millisecond))
		// Every object kept, every container adopted rather than restarted.
		after := liveEchoPods(t, ctx, cs)
		if len(after) != len(before) {
			t.Fatalf("%d echo pods before the restart, %d after", len(before), len(after))
		}
		for i := range before {
			b, c := before[i], after[i]
			bs, as := b.Status.ContainerStatuses[0], c.Status.ContainerStatuses[0]
			if b.UID != c.UID || bs.ContainerID != as.ContainerID || bs.RestartCount != as.RestartCount {
				t.Fatalf("pod %s (%s, %s, %d restarts) became %s (%s, %s, %d restarts)",
					b.Name, b.UID, bs.ContainerID, bs.RestartCount, c.Name, c.UID, as.ContainerID, as.RestartCount)
			}
		}
		for _, a := range agents {
			if got := waitTasksMatch(t, containerd, a, podsOn(t, ctx, cs, a.name)); !maps.Equal(got, tasksBefore[a.name]) {
				t.Fatalf("%s's tasks (id → pid) before %v, after %v", a.name, tasksBefore[a.name], got)
			}
		}
		// And the cluster works: a scale-up runs new pods.
		scale(t, ctx, cs, "echo", len(before)+1)
		waitFor(t, 90*time.Second, fmt.Sprintf("%d echo pods ready", len(before)+1), func() (bool, string) {
			n := 0
			for _, p := range liveEchoPods(t, ctx, cs) {
				if podIsReady(&p) {
					n++
				}
			}
			return n == len(before)+1, fmt.Sprint(n, " ready")
		})
	})

	step("cleanup", func(t *testing.T) {
		if err := cs.CoreV1().Services("default").Delete(ctx, "echo", metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
		if err := cs.AppsV1().Deployments("default").Delete(ctx, "echo", metav1.DeleteOptions{PropagationPolicy: ptr(metav1.DeletePropagationBackground)}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "every echo pod gone", func() (bool, string) {
			l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
			return err == nil && len(l.Items) == 0, fmt.Sprint(err, " ", len(l.Items), " left")
		})
		for _, a := range agents {
			waitFor(t, 30*time.Second, "no containers left in "+a.name+"'s namespace", func() (bool, string) {
				out, err := ctr(containerd, a.ns, 10*time.Second, "containers", "ls", "-q")
				return err == nil && strings.TrimSpace(out) == "", fmt.Sprintf("%v: %q", err, out)
			})
		}
	})
	t.Logf("whole scenario %v", time.Since(began).Round(time.Millisecond))
}

// raftPeers runs `flotilla operator raft list-peers` against s from inside
// h and parses its table, as an operator reads it.
func raftPeers(ctx context.Context, h *testHost, s *server) ([]cluster.Peer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := h.flotilla(ctx, append([]string{"operator", "raft", "list-peers"}, s.opArgs()...)...)
	if err != nil {
		return nil, err
	}
	rows := tableRows(out)
	if len(rows) == 0 || !slices.Equal(rows[0], []string{"ID", "ADDRESS", "STATE", "VOTER", "LAST", "INDEX"}) {
		return nil, fmt.Errorf("list-peers through %s: no peer table: %q", s.name, out)
	}
	var peers []cluster.Peer
	for _, r := range rows[1:] {
		if len(r) != 5 {
			return nil, fmt.Errorf("list-peers through %s: row %q", s.name, r)
		}
		voter, err := strconv.ParseBool(r[3])
		if err != nil {
			return nil, fmt.Errorf("list-peers through %s: voter %q: %w", s.name, r[3], err)
		}
		last, err := strconv.ParseUint(r[4], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("list-peers through %s: last index %q: %w", s.name, r[4], err)
		}
		peers = append(peers, cluster.Peer{ID: r[0], Address: r[1], State: r[2], Voter: voter, LastIndex: last})
	}
	return peers, nil
}

// raftSettled checks that peers are n voters, one the leader and the
// others followers that answered (a last index); it returns the leader, or
// what is not so yet.
func raftSettled(peers []cluster.Peer, n int) (leader, problem string) {
	if len(peers) != n {
		return "", fmt.Sprintf("%d peers, want %d: %+v", len(peers), n, peers)
	}
	for _, p := range peers {
		switch {
		case !p.Voter:
			return "", fmt.Sprintf("%s is not a voter: %+v", p.ID, peers)
		case p.State == "leader" && leader == "":
			leader = p.ID
		case p.State == "follower" && p.LastIndex > 0:
		default:
			return "", fmt.Sprintf("%s is %s (last index %d): %+v", p.ID, p.State, p.LastIndex, peers)
		}
	}
	if leader == "" {
		return "", fmt.Sprintf("no leader: %+v", peers)
	}
	return leader, ""
}

func podIsReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// liveEchoPods lists the echo pods not being deleted, by name.
func liveEchoPods(t testing.TB, ctx context.Context, cs kubernetes.Interface) []corev1.Pod {
	t.Helper()
	l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range l.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// podsOn lists the live echo pods on one node, by name, each running and
// ready with a container ID.
func podsOn(t testing.TB, ctx context.Context, cs kubernetes.Interface, node string) []corev1.Pod {
	t.Helper()
	var out []corev1.Pod
	for _, p := range liveEchoPods(t, ctx, cs) {
		if p.Spec.NodeName != node {
			continue
		}
		if !podIsReady(&p) || len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].ContainerID == "" {
			t.Fatalf("pod %s on %s is not running and ready: %+v", p.Name, node, p.Status)
		}
		out = append(out, p)
	}
	return out
}

// activeReplicaSet waits until exactly one of echo's ReplicaSets wants
// pods, with replicas of them ready, and returns it.
func activeReplicaSet(t testing.TB, ctx context.Context, cs kubernetes.Interface, replicas int32) *appsv1.ReplicaSet {
	t.Helper()
	var active *appsv1.ReplicaSet
	waitFor(t, 30*time.Second, fmt.Sprintf("one active ReplicaSet of echo with %d ready", replicas), func() (bool, string) {
		l, err := cs.AppsV1().ReplicaSets("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, err.Error()
		}
		var desc []string
		active = nil
		n := 0
		for i := range l.Items {
			rs := &l.Items[i]
			desc = append(desc, fmt.Sprintf("%s: %d wanted, %d ready", rs.Name, ptrValue(rs.Spec.Replicas), rs.Status.ReadyReplicas))
			if ptrValue(rs.Spec.Replicas) > 0 {
				active = rs
				n++
			}
		}
		return n == 1 && ptrValue(active.Spec.Replicas) == replicas && active.Status.ReadyReplicas == replicas, strings.Join(desc, "; ")
	})
	return active
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// waitOnlyPodsOf waits until echo's pods, those being deleted included,
// are n, all of ReplicaSet rs.
func waitOnlyPodsOf(t testing.TB, ctx context.Context, cs kubernetes.Interface, rs *appsv1.ReplicaSet, n int) {
	t.Helper()
	hash := rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	waitFor(t, 60*time.Second, fmt.Sprintf("only the %d pods of %s", n, rs.Name), func() (bool, string) {
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return false, err.Error()
		}
		var others []string
		for _, p := range l.Items {
			if p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] != hash {
				others = append(others, p.Name)
			}
		}
		return len(l.Items) == n && len(others) == 0, fmt.Sprintf("%d pods, not of %s: %v", len(l.Items), rs.Name, others)
	})
}

// ctrTasks lists the tasks of a containerd namespace: id → pid.
func ctrTasks(containerd, ns string) (map[string]string, error) {
	out, err := ctr(containerd, ns, 10*time.Second, "tasks", "ls")
	if err != nil {
		return nil, err
	}
	tasks := map[string]string{}
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 {
			continue // the header
		}
		if len(f) != 3 || f[2] != "RUNNING" {
			return nil, fmt.Errorf("task line %q", line)
		}
		tasks[f[0]] = f[1]
	}
	return tasks, nil
}

// waitTasksMatch waits until the tasks in a's containerd namespace are
// exactly the containers of pods (no duplicate, nothing left over) and
// returns them.
func waitTasksMatch(t testing.TB, containerd string, a *node, pods []corev1.Pod) map[string]string {
	t.Helper()
	var want []string
	for _, p := range pods {
		want = append(want, strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://"))
	}
	slices.Sort(want)
	var tasks map[string]string
	waitFor(t, 30*time.Second, "one task per pod in "+a.name+"'s namespace", func() (bool, string) {
		var err error
		if tasks, err = ctrTasks(containerd, a.ns); err != nil {
			return false, err.Error()
		}
		got := slices.Sorted(maps.Keys(tasks))
		return slices.Equal(got, want), fmt.Sprintf("tasks %v, pods' containers %v", got, want)
	})
	return tasks
}

// writerLabel marks the write load's ConfigMaps.
const writerLabel = "flotilla-test=ha-writer"

// writeLoad creates ConfigMaps one after another through a set of masters,
// moving to the next master whenever one fails, and keeps those it was
// told exist.
type writeLoad struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	acks    []writeAck
	existed int // creates retried after a failure that found the object already there
	errs    int
	lastErr string
}

type writeAck struct {
	name     string
	sent, at time.Time
}

func startWriteLoad(ctx context.Context, clients []kubernetes.Interface, interval time.Duration) *writeLoad {
	ctx, cancel := context.WithCancel(ctx)
	w := &writeLoad{cancel: cancel, done: make(chan struct{})}
	k, v, _ := strings.Cut(writerLabel, "=")
	go func() {
		defer close(w.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		m := 0
		for i := 0; ctx.Err() == nil; {
			name := fmt.Sprintf("ha-write-%05d", i)
			cm := &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{k: v}},
				Data:       map[string]string{"i": strconv.Itoa(i)},
			}
			sent := time.Now()
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := clients[m].CoreV1().ConfigMaps("default").Create(rctx, cm, metav1.CreateOptions{})
			rcancel()
			if ctx.Err() != nil {
				return // stopped mid-request: neither acknowledged nor failed
			}
			w.mu.Lock()
			switch {
			case err == nil || apierrors.IsAlreadyExists(err):
				// Already there: an earlier attempt was committed but
				// its answer lost with the master that gave it.
				if err != nil {
					w.existed++
				}
				w.acks = append(w.acks, writeAck{name: name, sent: sent, at: time.Now()})
				i++
			default:
				w.errs++
				w.lastErr = fmt.Sprintf("%s through master %d: %v", name, m, err)
				m = (m + 1) % len(clients)
			}
			w.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *writeLoad) stop() {
	w.cancel()
	<-w.done
}

// progress is the number of acknowledged writes and failed attempts so
// far, and the last failure.
func (w *writeLoad) progress() (acked, errs int, lastErr string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks), w.errs, w.lastErr
}

// firstAckSentAfter is when the first write sent after t was acknowledged.
func (w *writeLoad) firstAckSentAfter(t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acks {
		if a.sent.After(t) {
			return a.at, true
		}
	}
	return time.Time{}, false
}

// result is the acknowledged names, how many of them a retry found
// existing, the failed attempts, and the longest time between two
// acknowledgements.
func (w *writeLoad) result() (names []string, existed, errs int, gap time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, a := range w.acks {
		names = append(names, a.name)
		if i > 0 {
			gap = max(gap, a.at.Sub(w.acks[i-1].at))
		}
	}
	return names, w.existed, w.errs, gap
}
