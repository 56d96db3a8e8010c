package integration

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/sys/unix"

	"flotilla/cluster"
	"flotilla/testimages"
)

// The master-side fault scenarios of issue 8, on real server processes in
// lab hosts m1..m3 (--bootstrap-expect 3 --join m1), so a master can be cut
// off by iptables. Clients run in a fourth host, c, that is never cut: it
// reaches every master, as an operator's machine would.
//
// What the tests check is what a client could see: a write the API
// acknowledged is never lost and is visible to every later linearizable
// read; a write that failed may or may not exist (its outcome is unknown),
// but nothing exists that no client sent. Agreement between masters is
// checked by listing objects through each master with resourceVersion=0,
// which reads that master's own copy: the servers expose their applied
// index (GET /internal/v1/status, flotilla_store_revision in /metrics) but
// no digest of the state, and the index alone says nothing about content.

// masterLab is a set of masters in lab hosts, with a client host.
type masterLab struct {
	t        *testing.T
	lab      *lab
	client   *testHost
	hosts    []*testHost
	masters  []*server
	cs       []kubernetes.Interface // from the client host, one per master
	http     *http.Client           // from the client host, with a server certificate
	httpOnce sync.Once
}

// newMasterLab makes hosts m1..m3 and c and describes (does not start) a
// master in each m host.
func newMasterLab(t *testing.T) *masterLab {
	t.Helper()
	ml := &masterLab{t: t, lab: newLab(t)}
	for i := 1; i <= 3; i++ {
		ml.hosts = append(ml.hosts, ml.lab.host(fmt.Sprintf("m%d", i)))
	}
	ml.client = ml.lab.host("c")
	for i, h := range ml.hosts {
		ml.masters = append(ml.masters, newServerIn(t, h, fmt.Sprintf("m%d", i+1), "--bootstrap-expect", "3", "--join", ml.seed()))
		ml.cs = append(ml.cs, clientIn(t, ml.client, ml.masters[i]))
		dumpOnFailure(t, ml.masters[i])
	}
	return ml
}

// seed is every master's --join address: m1's gossip port.
func (ml *masterLab) seed() string { return net.JoinHostPort(ml.hosts[0].ip, "7946") }

// addMaster describes one more master, in a new host, that joins through
// the seed; its index is the returned value.
func (ml *masterLab) addMaster(name string) int {
	ml.t.Helper()
	h := ml.lab.host(name)
	s := newServerIn(ml.t, h, name, "--join", ml.seed())
	dumpOnFailure(ml.t, s)
	ml.hosts = append(ml.hosts, h)
	ml.masters = append(ml.masters, s)
	ml.cs = append(ml.cs, clientIn(ml.t, ml.client, s))
	return len(ml.masters) - 1
}

// startAll starts m1..m3 and waits for a leader and three voters.
func (ml *masterLab) startAll() {
	ml.t.Helper()
	began := time.Now()
	for _, s := range ml.masters {
		s.start()
	}
	ml.waitHealthy(0, 3, 60*time.Second)
	// The first leader makes the default namespaces just after its
	// election; a create before that is refused.
	waitFor(ml.t, 30*time.Second, "namespace default", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := ml.cs[0].CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil, fmt.Sprint(err)
	})
	ml.t.Logf("three masters up, a leader elected, after %s", time.Since(began).Round(time.Millisecond))
}

// peers is `flotilla operator raft list-peers -o json` against master i,
// run in the client host (lab addresses are not reachable from outside).
func (ml *masterLab) peers(i int) ([]cluster.Peer, error) {
	return listPeersIn(ml.client, ml.masters[i], 10*time.Second)
}

// operator runs `flotilla operator ARGS --server <master i>` in the client
// host and fails the test on error.
func (ml *masterLab) operator(i int, args ...string) string {
	ml.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := ml.client.flotilla(ctx, append(append([]string{"operator"}, args...), ml.masters[i].opArgs()...)...)
	if err != nil {
		ml.t.Fatalf("operator %v: %v", args, err)
	}
	return out
}

// healthy reports whether master i sees exactly want voters, one leader,
// and every voter answering as leader or follower with a log.
func (ml *masterLab) healthy(i, want int) (bool, string) {
	peers, err := ml.peers(i)
	if err != nil {
		return false, err.Error()
	}
	voters, leaders := 0, 0
	for _, p := range peers {
		if !p.Voter {
			continue
		}
		voters++
		switch p.State {
		case "leader":
			leaders++
		case "follower":
		default:
			return false, fmt.Sprintf("%s is %s: %+v", p.ID, p.State, peers)
		}
		if p.LastIndex == 0 {
			return false, fmt.Sprintf("%s has no log yet: %+v", p.ID, peers)
		}
	}
	return voters == want && leaders == 1, fmt.Sprintf("%d voters, %d leaders: %+v", voters, leaders, peers)
}

func (ml *masterLab) waitHealthy(via, voters int, timeout time.Duration) {
	ml.t.Helper()
	waitFor(ml.t, timeout, fmt.Sprintf("%d voters and a leader, seen from %s", voters, ml.masters[via].name), func() (bool, string) {
		return ml.healthy(via, voters)
	})
}

// masterStatus is a server's own view of itself (GET /internal/v1/status,
// what list-peers collects from each server).
type masterStatus struct {
	ID           string
	State        string
	Leader       string
	Term         uint64
	LastIndex    uint64
	CommitIndex  uint64
	AppliedIndex uint64
}

// status asks master i directly. Unlike list-peers it does not ask the
// others, so it answers at once on a master that is cut off.
func (ml *masterLab) status(i int) (masterStatus, error) {
	var st masterStatus
	resp, err := ml.httpc().Get("https://" + ml.masters[i].apiAddr() + "/internal/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s: %s", resp.Status, b)
	}
	return st, json.Unmarshal(b, &st)
}

// leader is the index of the master that leads, as every master agrees.
func (ml *masterLab) leader() int {
	ml.t.Helper()
	var idx int
	waitFor(ml.t, 30*time.Second, "the masters to agree on a leader", func() (bool, string) {
		seen := map[string]bool{}
		for i := range ml.masters {
			st, err := ml.status(i)
			if err != nil {
				return false, err.Error()
			}
			seen[st.Leader] = true
			if st.State == "leader" {
				idx = i
			}
		}
		return len(seen) == 1 && !seen[""], fmt.Sprintf("leaders seen: %v", seen)
	})
	return idx
}

// index is the position of the master with this name.
func (ml *masterLab) index(name string) int {
	for i, s := range ml.masters {
		if s.name == name {
			return i
		}
	}
	ml.t.Fatalf("no master %q", name)
	return -1
}

// members is the gossip pool as master i sees it: name → status.
func (ml *masterLab) members(i int) (map[string]string, error) {
	resp, err := ml.httpc().Get("https://" + ml.masters[i].apiAddr() + "/flotilla/v1/operator/members")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("members: %s", resp.Status)
	}
	var ms []cluster.Member
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range ms {
		out[m.Name] = m.Status
	}
	return out, nil
}

// localObjects lists the cluster's objects through master i with
// resourceVersion=0, so from that master's own store: kind/ns/name →
// resourceVersion, uid and (for ConfigMaps) a digest of the data.
func (ml *masterLab) localObjects(i int) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, opts := ml.cs[i], metav1.ListOptions{ResourceVersion: "0"}
	lists := []struct {
		kind string
		list func() (runtime.Object, error)
	}{
		{"namespaces", func() (runtime.Object, error) { return cs.CoreV1().Namespaces().List(ctx, opts) }},
		{"configmaps", func() (runtime.Object, error) { return cs.CoreV1().ConfigMaps("").List(ctx, opts) }},
		{"secrets", func() (runtime.Object, error) { return cs.CoreV1().Secrets("").List(ctx, opts) }},
		{"services", func() (runtime.Object, error) { return cs.CoreV1().Services("").List(ctx, opts) }},
		{"endpoints", func() (runtime.Object, error) { return cs.CoreV1().Endpoints("").List(ctx, opts) }},
		{"serviceaccounts", func() (runtime.Object, error) { return cs.CoreV1().ServiceAccounts("").List(ctx, opts) }},
		{"nodes", func() (runtime.Object, error) { return cs.CoreV1().Nodes().List(ctx, opts) }},
		{"pods", func() (runtime.Object, error) { return cs.CoreV1().Pods("").List(ctx, opts) }},
		{"deployments", func() (runtime.Object, error) { return cs.AppsV1().Deployments("").List(ctx, opts) }},
		{"replicasets", func() (runtime.Object, error) { return cs.AppsV1().ReplicaSets("").List(ctx, opts) }},
	}
	objs := map[string]string{}
	for _, l := range lists {
		list, err := l.list()
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", l.kind, err)
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", l.kind, err)
		}
		for _, it := range items {
			o, err := meta.Accessor(it)
			if err != nil {
				return nil, fmt.Errorf("list %s: %w", l.kind, err)
			}
			v := o.GetResourceVersion() + " " + string(o.GetUID())
			if cm, ok := it.(*corev1.ConfigMap); ok {
				b, _ := json.Marshal(cm.Data)
				v += fmt.Sprintf(" %x", sha256.Sum256(b))
			}
			objs[l.kind+"/"+o.GetNamespace()+"/"+o.GetName()] = v
		}
	}
	return objs, nil
}

// waitAgree waits until the given masters hold the same objects (read
// locally from each) and returns them.
func (ml *masterLab) waitAgree(timeout time.Duration, idx ...int) map[string]string {
	ml.t.Helper()
	var objs map[string]string
	began := time.Now()
	waitFor(ml.t, timeout, "the masters to hold the same objects", func() (bool, string) {
		var first map[string]string
		for n, i := range idx {
			o, err := ml.localObjects(i)
			if err != nil {
				return false, ml.masters[i].name + ": " + err.Error()
			}
			if n == 0 {
				first = o
				continue
			}
			if d := objectDiff(first, o); d != "" {
				return false, fmt.Sprintf("%s and %s differ: %s", ml.masters[idx[0]].name, ml.masters[i].name, d)
			}
		}
		objs = first
		return true, ""
	})
	ml.t.Logf("%d objects the same on %d masters (agreed after %s)", len(objs), len(idx), time.Since(began).Round(time.Millisecond))
	return objs
}

// objectDiff describes the first few differences between two object maps.
func objectDiff(a, b map[string]string) string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "only first: "+k)
		} else if w != v {
			d = append(d, fmt.Sprintf("%s: %s vs %s", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "only second: "+k)
		}
	}
	sort.Strings(d)
	if len(d) > 5 {
		d = append(d[:5], fmt.Sprintf("and %d more", len(d)-5))
	}
	return strings.Join(d, "; ")
}

// cmWriter creates ConfigMaps default/<prefix>-NNNNN one after another,
// each under a new name, through the masters it is given: it stays on one
// while it succeeds and moves to the next on an error, as a client that
// knows every master's address would. Every tenth write it lists its
// ConfigMaps (a linearizable read) through the master it is on and checks
// that everything acknowledged before the list is in it.
type cmWriter struct {
	t       *testing.T
	prefix  string
	targets []int
	timeout time.Duration // per request
	// clients and names by master index, copied when the writer starts:
	// the lab may add masters while it runs.
	clients []kubernetes.Interface
	names   []string

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	cur      int
	acks     []cmAck
	tried    map[string]bool // every name sent: only these may exist
	failures []cmFailure
	lists    int
	listErrs int
}

type cmAck struct {
	name, via string
	at        time.Time
}

type cmFailure struct {
	name, via string
	took      time.Duration
	err       string
	stopped   bool // cancelled by stop, not failed by the cluster
}

// writer starts a cmWriter over the given masters; it is stopped at the
// latest when the test ends.
func (ml *masterLab) writer(prefix string, targets ...int) *cmWriter {
	w := &cmWriter{t: ml.t, prefix: prefix, targets: targets, timeout: 10 * time.Second,
		clients: slices.Clone(ml.cs), done: make(chan struct{}), tried: map[string]bool{}}
	for _, s := range ml.masters {
		w.names = append(w.names, s.name)
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	go w.run()
	ml.t.Cleanup(w.stop)
	return w
}

func (w *cmWriter) run() {
	defer close(w.done)
	for i := 0; w.ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%s-%05d", w.prefix, i)
		w.mu.Lock()
		via := w.targets[w.cur]
		w.tried[name] = true
		w.mu.Unlock()
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"writer": w.prefix}},
			Data:       map[string]string{"seq": fmt.Sprint(i), "via": w.names[via]},
		}
		ctx, cancel := context.WithTimeout(w.ctx, w.timeout)
		sent := time.Now()
		_, err := w.clients[via].CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{})
		cancel()
		now := time.Now()
		pause := 50 * time.Millisecond
		w.mu.Lock()
		if err == nil {
			w.acks = append(w.acks, cmAck{name: name, via: w.names[via], at: now})
		} else {
			w.failures = append(w.failures, cmFailure{name: name, via: w.names[via], took: now.Sub(sent), err: err.Error(), stopped: w.ctx.Err() != nil})
			w.cur = (w.cur + 1) % len(w.targets)
			pause = 100 * time.Millisecond
		}
		w.mu.Unlock()
		if i%10 == 9 {
			w.checkList()
		}
		// A pace, not a wait for anything: keeps the writer from taking the
		// CPU the masters need on a small machine.
		select {
		case <-w.ctx.Done():
		case <-time.After(pause):
		}
	}
}

// checkList lists the writer's ConfigMaps through its current master.
func (w *cmWriter) checkList() {
	w.mu.Lock()
	via := w.targets[w.cur]
	w.mu.Unlock()
	err := w.linearizable(via, w.timeout)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lists++
	if err != nil {
		w.listErrs++
		w.cur = (w.cur + 1) % len(w.targets)
	}
}

// linearizable lists the writer's ConfigMaps through master via (a default,
// linearizable list). A list that fails is returned as an error; one that
// lacks a write acknowledged before it started, or holds a name nobody
// sent, fails the test.
func (w *cmWriter) linearizable(via int, timeout time.Duration) error {
	w.mu.Lock()
	before := make([]string, len(w.acks))
	for i, a := range w.acks {
		before[i] = a.name
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(w.ctx, timeout)
	defer cancel()
	l, err := w.clients[via].CoreV1().ConfigMaps("default").List(ctx, metav1.ListOptions{LabelSelector: "writer=" + w.prefix})
	if err != nil {
		return err
	}
	got := map[string]bool{}
	for _, cm := range l.Items {
		got[cm.Name] = true
	}
	for _, n := range before {
		if !got[n] {
			w.t.Errorf("a linearizable list through %s (resourceVersion %s) lacks %s, acknowledged before the list", w.names[via], l.ResourceVersion, n)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for n := range got {
		if !w.tried[n] {
			w.t.Errorf("a list through %s holds %s, which the writer never sent", w.names[via], n)
		}
	}
	return nil
}

// stop ends the writer (an in-flight request is cancelled: a failure marked
// stopped) and waits for it.
func (w *cmWriter) stop() {
	w.cancel()
	<-w.done
}

func (w *cmWriter) ackCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks)
}

// lastAck is when the last write was acknowledged (zero: none yet).
func (w *cmWriter) lastAck() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acks) == 0 {
		return time.Time{}
	}
	return w.acks[len(w.acks)-1].at
}

// failureCount counts the writes the cluster failed (not those stop
// cancelled).
func (w *cmWriter) failureCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, f := range w.failures {
		if !f.stopped {
			n++
		}
	}
	return n
}

// maxGap is the longest time within [from, to] without an acknowledged write.
func (w *cmWriter) maxGap(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var gap time.Duration
	prev := from
	for _, a := range w.acks {
		if a.at.Before(from) || a.at.After(to) {
			continue
		}
		gap = max(gap, a.at.Sub(prev))
		prev = a.at
	}
	return max(gap, to.Sub(prev))
}

// summary says what the writer did, for the test log.
func (w *cmWriter) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var slowest time.Duration
	for _, f := range w.failures {
		slowest = max(slowest, f.took)
	}
	s := fmt.Sprintf("writer %s: %d acknowledged, %d failed (slowest failure %s), %d linearizable lists (%d failed)",
		w.prefix, len(w.acks), len(w.failures), slowest.Round(time.Millisecond), w.lists, w.listErrs)
	for i, f := range w.failures {
		if i == 5 {
			s += fmt.Sprintf("\n  and %d more failures", len(w.failures)-5)
			break
		}
		s += fmt.Sprintf("\n  %s via %s failed after %s: %s", f.name, f.via, f.took.Round(time.Millisecond), f.err)
	}
	return s
}

// checkDurable checks objs (objects the masters agreed on) against the
// writer: every acknowledged write is there, and nothing it never sent.
func (w *cmWriter) checkDurable(objs map[string]string) {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.acks {
		if _, ok := objs["configmaps/default/"+a.name]; !ok {
			w.t.Errorf("acknowledged write %s (through %s at %s) is lost", a.name, a.via, a.at.Format(time.StampMilli))
		}
	}
	for k := range objs {
		name, ok := strings.CutPrefix(k, "configmaps/default/"+w.prefix+"-")
		if ok && !w.tried[w.prefix+"-"+name] {
			w.t.Errorf("%s exists but the writer never sent it", k)
		}
	}
	acked := map[string]bool{}
	for _, a := range w.acks {
		acked[a.name] = true
	}
	unknown := 0
	for _, f := range w.failures {
		if _, ok := objs["configmaps/default/"+f.name]; ok && !acked[f.name] {
			unknown++
		}
	}
	w.t.Logf("writer %s: %d acknowledged writes checked; %d of %d failed writes were applied anyway (outcome unknown to the client)",
		w.prefix, len(w.acks), unknown, len(w.failures))
}

// TestHAMastersLeaderIsolated (issue 8, scenario 5): the leader is cut off
// from both followers. It must stop acknowledging writes and step down; the
// other two elect a leader and take writes; after healing, every
// acknowledged write is there, nothing sent to the isolated side is, and the
// three masters hold the same objects.
func TestHAMastersLeaderIsolated(t *testing.T) {
	ml := newMasterLab(t)
	ml.startAll()
	li := ml.leader()
	L := ml.masters[li]
	var maj []int
	for i := range ml.masters {
		if i != li {
			maj = append(maj, i)
		}
	}
	base := ml.writer("base", li)
	waitFor(t, 30*time.Second, "writes before the partition", func() (bool, string) {
		return base.ackCount() >= 10, base.summary()
	})
	base.stop()

	for _, i := range maj {
		ml.lab.cut(ml.hosts[li], ml.hosts[i])
	}
	cut := time.Now()
	t.Logf("cut leader %s from %s and %s", L.name, ml.masters[maj[0]].name, ml.masters[maj[1]].name)
	// Clients on both sides: one that only knows the isolated master, one
	// that knows the other two.
	iso := ml.writer("iso", li)
	majw := ml.writer("maj", maj...)

	waitFor(t, 30*time.Second, L.name+" to step down", func() (bool, string) {
		st, err := ml.status(li)
		if err != nil {
			return false, err.Error()
		}
		return st.State != "leader", fmt.Sprintf("%+v", st)
	})
	t.Logf("isolated %s stepped down %s after the cut", L.name, time.Since(cut).Round(time.Millisecond))
	var newLeader string
	waitFor(t, 30*time.Second, "the majority to elect a leader", func() (bool, string) {
		st, err := ml.status(maj[0])
		if err != nil {
			return false, err.Error()
		}
		newLeader = st.Leader
		return st.Leader != "" && st.Leader != L.name, fmt.Sprintf("%+v", st)
	})
	elected := time.Since(cut)
	t.Logf("majority elected %s %s after the cut", newLeader, elected.Round(time.Millisecond))
	waitFor(t, 90*time.Second, "the majority to acknowledge writes", func() (bool, string) {
		return majw.ackCount() >= 20, majw.summary()
	})
	// Expect the first acknowledgement about one client timeout after the
	// cut, not one election: a write that reached a follower while it still
	// followed the isolated leader is forwarded there and waits, with no
	// timeout of the master's own, until the client gives up.
	t.Logf("first write acknowledged by the majority %s after the cut (election after %s)",
		func() time.Duration {
			majw.mu.Lock()
			defer majw.mu.Unlock()
			return majw.acks[0].at.Sub(cut).Round(time.Millisecond)
		}(), elected.Round(time.Millisecond))
	// The isolated master answers no write and no linearizable read.
	waitFor(t, 90*time.Second, "writes sent to the isolated master to end", func() (bool, string) {
		return iso.failureCount() >= 1, iso.summary()
	})
	if err := majw.linearizable(li, 3*time.Second); err == nil {
		t.Errorf("a linearizable list through the isolated %s succeeded", L.name)
	} else {
		t.Logf("linearizable list through the isolated %s: %v", L.name, err)
	}
	iso.stop()
	majw.stop()
	t.Log(iso.summary())
	t.Log(majw.summary())
	if n := iso.ackCount(); n > 0 {
		t.Fatalf("the isolated %s acknowledged %d writes", L.name, n)
	}

	for _, i := range maj {
		ml.lab.heal(ml.hosts[li], ml.hosts[i])
	}
	healed := time.Now()
	// Agreement is Raft's: every master names the same leader in the same
	// term, and the healed one has applied what the majority committed.
	// (list-peers asks each server through gossip, which re-merges on
	// its own time: checked below.)
	lst, err := ml.status(ml.index(newLeader))
	if err != nil {
		t.Fatal(err)
	}
	var leaderNow string
	waitFor(t, 60*time.Second, L.name+" to follow the leader and catch up", func() (bool, string) {
		var msgs []string
		terms, leaders := map[uint64]bool{}, map[string]bool{}
		caughtUp := false
		for i := range ml.masters {
			st, err := ml.status(i)
			if err != nil {
				return false, err.Error()
			}
			msgs = append(msgs, fmt.Sprintf("%+v", st))
			terms[st.Term], leaders[st.Leader] = true, true
			leaderNow = st.Leader
			if i == li {
				caughtUp = st.State == "follower" && st.AppliedIndex >= lst.CommitIndex
			}
		}
		return caughtUp && len(terms) == 1 && len(leaders) == 1 && leaderNow != "", strings.Join(msgs, "; ")
	})
	t.Logf("%s follows %s and caught up %s after healing", L.name, leaderNow, time.Since(healed).Round(time.Millisecond))
	if leaderNow != newLeader {
		t.Logf("leadership moved from %s to %s after healing", newLeader, leaderNow)
	}
	objs := ml.waitAgree(60*time.Second, 0, 1, 2)
	// Gossip re-merges too, also after a partition that outlasted its
	// failure detector: each side calls back the members it declared dead
	// (cluster.ReconnectInterval), so no master stays dead in another's
	// view (where dead-server cleanup would later remove it from Raft).
	waitFor(t, 60*time.Second, "every master to see all three alive in gossip", func() (bool, string) {
		var views []string
		all := true
		for i := range ml.masters {
			ms, err := ml.members(i)
			if err != nil {
				return false, err.Error()
			}
			views = append(views, fmt.Sprintf("%s: %v", ml.masters[i].name, ms))
			for _, m := range ml.masters {
				if ms[m.name] != cluster.StatusAlive {
					all = false
				}
			}
		}
		return all, strings.Join(views, "; ")
	})
	t.Logf("gossip re-merged %s after healing", time.Since(healed).Round(time.Millisecond))
	base.checkDurable(objs)
	majw.checkDurable(objs)
	for k := range objs {
		if strings.HasPrefix(k, "configmaps/default/iso-") {
			t.Errorf("%s, sent only to the isolated master, exists", k)
		}
	}
}

// TestHAMastersRollingRestart (issue 8, scenario 7): each master in turn is
// stopped with SIGTERM and started again on its data dir, the next one only
// once the last is a caught-up voter again, while a client writes and lists
// ConfigMaps through whichever master answers. Nothing acknowledged may be
// lost; the longest time without an acknowledged write is logged (about
// one election is expected, for the leader's turn).
func TestHAMastersRollingRestart(t *testing.T) {
	ml := newMasterLab(t)
	ml.startAll()
	w := ml.writer("roll", 0, 1, 2)
	waitFor(t, 30*time.Second, "the first writes", func() (bool, string) { return w.ackCount() >= 10, w.summary() })

	began := time.Now()
	for i, s := range ml.masters {
		other := (i + 1) % len(ml.masters)
		role := "follower"
		if ml.masters[ml.leader()] == s {
			role = "leader"
		}
		t0 := time.Now()
		s.stop()
		stopped := time.Since(t0)
		s.start()
		// Caught up: it has applied what the cluster had committed when it
		// came back, and the others list it as a voter again.
		st, err := ml.status(other)
		if err != nil {
			t.Fatal(err)
		}
		target := st.CommitIndex
		waitFor(t, 60*time.Second, s.name+" a caught-up voter again", func() (bool, string) {
			own, err := ml.status(i)
			if err != nil {
				return false, err.Error()
			}
			if own.AppliedIndex < target || (own.State != "follower" && own.State != "leader") {
				return false, fmt.Sprintf("%+v, want applied ≥ %d", own, target)
			}
			return ml.healthy(other, 3)
		})
		back := time.Now()
		// Writes after it is back close its window.
		n := w.ackCount()
		waitFor(t, 60*time.Second, "writes after "+s.name+" is back", func() (bool, string) {
			return w.ackCount() >= n+10, w.summary()
		})
		t.Logf("%s (%s): SIGTERM took %s, a caught-up voter again %s after the signal; longest write gap meanwhile %s",
			s.name, role, stopped.Round(time.Millisecond), back.Sub(t0).Round(time.Millisecond),
			w.maxGap(t0, w.lastAck()).Round(time.Millisecond))
	}
	w.stop()
	t.Logf("rolling restart of three masters took %s; longest time without an acknowledged write: %s",
		time.Since(began).Round(time.Millisecond), w.maxGap(began, w.lastAck()).Round(time.Millisecond))
	t.Log(w.summary())
	ml.waitHealthy(0, 3, 60*time.Second)
	w.checkDurable(ml.waitAgree(60*time.Second, 0, 1, 2))
}

// TestHAMastersClusterRestart (issue 8, scenario 8): all three masters are
// stopped with SIGTERM at once and started again from their data dirs.
// Every object must be there as before, unchanged, on every master.
//
// Masters only: with an agent in the cluster, two product bugs get in the
// way. The agent never finds the restarted masters: it joins gossip once,
// at start, and nothing rejoins a member that everyone else saw leave, so
// its watches fail with "gossip knows no master yet" from then on and the
// leader marks its Node unreachable 40 s later. And a master with open
// watches takes the whole 30 s shutdown timeout to exit on SIGTERM: the
// watch streams are not ended when the server shuts down.
func TestHAMastersClusterRestart(t *testing.T) {
	ml := newMasterLab(t)
	ml.startAll()
	cs := ml.cs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := range 20 {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("keep-%02d", i)}, Data: map[string]string{"i": fmt.Sprint(i)}}
		if _, err := cs.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Two replicas that stay Pending (there are no nodes): the ReplicaSet
	// and its pods must survive as they are, not be made again.
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: testimages.ToolboxRef}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var want map[string]string
	waitFor(t, 60*time.Second, "the Deployment's ReplicaSet and two pods", func() (bool, string) {
		var err error
		if want, err = lastingObjects(ctx, cs, ""); err != nil {
			return false, err.Error()
		}
		n := 0
		for k := range want {
			if strings.HasPrefix(k, "pods/web-") {
				n++
			}
		}
		return n == 2, fmt.Sprint(want)
	})

	t0 := time.Now()
	var wg sync.WaitGroup
	for _, s := range ml.masters {
		wg.Add(1)
		go func() { defer wg.Done(); s.stop() }()
	}
	wg.Wait()
	t.Logf("SIGTERM to all three masters at once: all gone after %s", time.Since(t0).Round(time.Millisecond))
	t1 := time.Now()
	for _, s := range ml.masters {
		s.start()
	}
	ml.waitHealthy(0, 3, 60*time.Second)
	t.Logf("started again from their data dirs: a leader and three voters after %s", time.Since(t1).Round(time.Millisecond))
	for i, s := range ml.masters {
		waitFor(t, 30*time.Second, "the objects through "+s.name, func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := lastingObjects(ctx, ml.cs[i], "0")
			if err != nil {
				return false, err.Error()
			}
			d := objectDiff(want, got)
			return d == "", d
		})
	}
	t.Logf("%d ConfigMaps, Deployments, ReplicaSets, Pods and Services unchanged on all three masters", len(want))
	// And the cluster works: a write, and the controllers' view of it.
	scale := &appsv1.Deployment{}
	waitFor(t, 30*time.Second, "a scale-down to be carried out", func() (bool, string) {
		d, err := cs.AppsV1().Deployments("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if *d.Spec.Replicas != 1 {
			d.Spec.Replicas = ptr(int32(1))
			if scale, err = cs.AppsV1().Deployments("default").Update(ctx, d, metav1.UpdateOptions{}); err != nil {
				return false, err.Error()
			}
		}
		l, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err.Error()
		}
		return len(l.Items) == 1, fmt.Sprintf("%d pods", len(l.Items))
	})
	t.Logf("scaled web to 1 after the restart (generation %d)", scale.Generation)
}

// lastingObjects lists the ConfigMaps, Services, Deployments, ReplicaSets
// and Pods in default (resourceVersion rv: "" linearizable, "0" local) with
// what must survive a restart unchanged: uid, resourceVersion and content
// for ConfigMaps and Services; uid, generation and spec for Deployments;
// the uid of ReplicaSets and Pods, whose status the controllers and the
// scheduler may rewrite.
func lastingObjects(ctx context.Context, cs kubernetes.Interface, rv string) (map[string]string, error) {
	opts := metav1.ListOptions{ResourceVersion: rv}
	objs := map[string]string{}
	cms, err := cs.CoreV1().ConfigMaps("default").List(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, o := range cms.Items {
		b, _ := json.Marshal(o.Data)
		objs["configmaps/"+o.Name] = fmt.Sprintf("%s %s %s", o.UID, o.ResourceVersion, b)
	}
	svcs, err := cs.CoreV1().Services("default").List(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, o := range svcs.Items {
		b, _ := json.Marshal(o.Spec)
		objs["services/"+o.Name] = fmt.Sprintf("%s %s %s", o.UID, o.ResourceVersion, b)
	}
	rss, err := cs.AppsV1().ReplicaSets("default").List(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, o := range rss.Items {
		objs["replicasets/"+o.Name] = string(o.UID)
	}
	pods, err := cs.CoreV1().Pods("default").List(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, o := range pods.Items {
		objs["pods/"+o.Name] = fmt.Sprintf("%s %s", o.UID, o.Spec.NodeName)
	}
	deps, err := cs.AppsV1().Deployments("default").List(ctx, opts)
	if err != nil {
		return nil, err
	}
	for _, o := range deps.Items {
		b, _ := json.Marshal(o.Spec)
		objs["deployments/"+o.Name] = fmt.Sprintf("%s %d %s", o.UID, o.Generation, b)
	}
	return objs, nil
}

// TestHAMastersMembership (issue 8, scenario 10): a fourth master joins
// (four voters), is killed with SIGKILL and removed with `flotilla operator
// raft remove-peer` (three voters), while a client keeps writing.
func TestHAMastersMembership(t *testing.T) {
	ml := newMasterLab(t)
	ml.startAll()
	w := ml.writer("member", 0, 1, 2)
	waitFor(t, 30*time.Second, "the first writes", func() (bool, string) { return w.ackCount() >= 10, w.summary() })
	// progress waits for n more acknowledged writes: the cluster is taking
	// writes at this point of the scenario.
	progress := func(what string, n int) {
		t.Helper()
		from := w.ackCount()
		waitFor(t, 60*time.Second, fmt.Sprintf("%d writes %s", n, what), func() (bool, string) {
			return w.ackCount() >= from+n, w.summary()
		})
	}
	began := time.Now()

	i4 := ml.addMaster("m4")
	m4 := ml.masters[i4]
	t0 := time.Now()
	m4.start()
	waitFor(t, 60*time.Second, "m4 a voter", func() (bool, string) {
		ok, msg := ml.healthy(0, 4)
		if !ok {
			return false, msg
		}
		// And m4 itself follows the same leader.
		st, err := ml.status(i4)
		return err == nil && st.State == "follower" && st.Leader != "", fmt.Sprintf("%+v %v", st, err)
	})
	t.Logf("m4 a voter (4 voters) %s after it started", time.Since(t0).Round(time.Millisecond))
	if out := ml.operator(0, "raft", "list-peers"); strings.Count(out, "true") != 4 {
		t.Fatalf("list-peers should show 4 voters:\n%s", out)
	}
	progress("with four voters", 10)

	m4.kill()
	t1 := time.Now()
	if out := ml.operator(1, "raft", "remove-peer", "m4"); !strings.Contains(out, "removed peer m4") {
		t.Fatalf("remove-peer m4: %s", out)
	}
	waitFor(t, 30*time.Second, "three voters without m4", func() (bool, string) {
		peers, err := ml.peers(0)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range peers {
			if p.ID == "m4" {
				return false, fmt.Sprintf("%+v", peers)
			}
		}
		return len(peers) == 3, fmt.Sprintf("%+v", peers)
	})
	t.Logf("m4 removed %s after kill -9", time.Since(t1).Round(time.Millisecond))
	// Long enough for gossip to declare m4 dead: it must stay out.
	waitFor(t, 60*time.Second, "gossip to see m4 gone", func() (bool, string) {
		ms, err := ml.members(0)
		if err != nil {
			return false, err.Error()
		}
		return ms["m4"] != cluster.StatusAlive, fmt.Sprint(ms)
	})
	progress("after the removal", 20)
	ml.waitHealthy(0, 3, 30*time.Second)
	w.stop()
	t.Logf("membership changes took %s; longest time without an acknowledged write: %s",
		time.Since(began).Round(time.Millisecond), w.maxGap(began, w.lastAck()).Round(time.Millisecond))
	t.Log(w.summary())
	if n := w.failureCount(); n > 0 {
		t.Errorf("%d writes failed while a voter was added and removed", n)
	}
	w.checkDurable(ml.waitAgree(60*time.Second, 0, 1, 2))
}

// TestHAMastersDiskFull (issue 8, scenario 12): a follower's data dir is a
// small tmpfs, filled up while the cluster takes writes. That master must
// say why it cannot store the log and keep what it has intact; the other
// two keep quorum and take writes; once space is freed it catches up.
func TestHAMastersDiskFull(t *testing.T) {
	ml := newMasterLab(t)
	const fi = 2 // m3's disk fills up
	full := ml.masters[fi]
	if err := os.MkdirAll(full.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", full.dataDir, "tmpfs", 0, "size=64m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", full.dataDir, err)
	}
	t.Cleanup(func() {
		full.kill() // the mount is busy while the server runs
		if failed := unmountUnder(full.dataDir); len(failed) > 0 {
			t.Errorf("unmount %s: %v", full.dataDir, failed)
		}
	})
	ml.startAll()
	if ml.leader() == fi {
		ml.operator(0, "raft", "transfer-leader", "m1")
		waitFor(t, 30*time.Second, "m1 to lead", func() (bool, string) {
			return ml.leader() == 0, "not yet"
		})
	}
	w := ml.writer("disk", 0, 1)
	waitFor(t, 30*time.Second, "the first writes", func() (bool, string) { return w.ackCount() >= 10, w.summary() })

	fill := filepath.Join(full.dataDir, "fill")
	size := fillDisk(t, fill)
	filled := time.Now()
	t.Logf("filled %s's data dir with %d MiB", full.name, size>>20)
	waitFor(t, 60*time.Second, full.name+" to report the full disk", func() (bool, string) {
		return strings.Contains(full.output(), "no space left on device"), "no ENOSPC in its log yet"
	})
	for _, l := range strings.Split(full.output(), "\n") {
		if strings.Contains(l, "no space left on device") {
			t.Logf("%s says: %s", full.name, l)
			break
		}
	}
	stuck, err := ml.status(fi)
	if err != nil {
		t.Fatal(err)
	}
	progress := w.ackCount()
	waitFor(t, 60*time.Second, "the cluster to take writes through m1 and m2", func() (bool, string) {
		return w.ackCount() >= progress+30, w.summary()
	})
	st, err := ml.status(fi)
	if err != nil {
		t.Fatalf("%s stopped answering with a full disk: %v", full.name, err)
	}
	lst, err := ml.status(ml.leader())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("while full: %s last index %d → %d, applied %d; the leader's commit index %d",
		full.name, stuck.LastIndex, st.LastIndex, st.AppliedIndex, lst.CommitIndex)
	if st.LastIndex >= lst.CommitIndex {
		t.Errorf("%s's log kept up with a full disk: last index %d, commit index %d", full.name, st.LastIndex, lst.CommitIndex)
	}
	// A write through the full master is forwarded to the leader, and a
	// linearizable read through it must not answer stale.
	probe := ml.writer("probe", fi)
	waitFor(t, 60*time.Second, "a write through "+full.name+" to end", func() (bool, string) {
		probe.mu.Lock()
		defer probe.mu.Unlock()
		return len(probe.acks)+len(probe.failures) > 0, "none yet"
	})
	probe.stop()
	t.Logf("through %s with a full disk: %s", full.name, probe.summary())
	if err := w.linearizable(fi, 5*time.Second); err != nil {
		t.Logf("a linearizable list through %s with a full disk fails: %v", full.name, err)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	t.Logf("freed the space after %s full", freed.Sub(filled).Round(time.Millisecond))
	target := lst.CommitIndex
	waitFor(t, 60*time.Second, full.name+" to catch up", func() (bool, string) {
		st, err := ml.status(fi)
		if err != nil {
			return false, err.Error()
		}
		return st.AppliedIndex >= target, fmt.Sprintf("%+v, want applied ≥ %d", st, target)
	})
	t.Logf("%s caught up (applied ≥ %d) %s after the space was freed, without a restart",
		full.name, target, time.Since(freed).Round(time.Millisecond))
	progress = w.ackCount()
	waitFor(t, 60*time.Second, "writes after the space came back", func() (bool, string) {
		return w.ackCount() >= progress+10, w.summary()
	})
	w.stop()
	t.Log(w.summary())
	w.checkDurable(ml.waitAgree(60*time.Second, 0, 1, 2))

	// Its data dir is intact: it starts again from it (a server checks
	// raft.db page by page and its snapshots before it starts) and still
	// holds the same objects.
	full.stop()
	full.start()
	ml.waitHealthy(fi, 3, 60*time.Second)
	objs := ml.waitAgree(60*time.Second, 0, 1, 2)
	w.checkDurable(objs)
	probe.checkDurable(objs)
}

// fillDisk writes zeros into path until the file system is full and
// returns how much it wrote.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int64
	for _, chunk := range []int{1 << 20, 4 << 10, 512} {
		buf := make([]byte, chunk)
		for {
			m, err := f.Write(buf)
			n += int64(m)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatalf("fill %s: %v", path, err)
			}
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(path), &st); err == nil && st.Bavail > 0 {
		t.Logf("%d blocks still free after filling %s", st.Bavail, path)
	}
	return n
}

// httpc is a client holding a master's server certificate (the internal
// and operator endpoints answer it), made once the first master has one.
func (ml *masterLab) httpc() *http.Client {
	ml.httpOnce.Do(func() { ml.http = serverCertHTTP(ml.t, ml.client, ml.masters[0], 5*time.Second) })
	return ml.http
}
