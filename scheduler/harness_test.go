package scheduler

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The harness: a real Engine (cache, queue, chain, scores) with a recording
// binder and reporter and a hand-driven clock. No API, no HTTP.

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type bindCall struct {
	Pod  string
	Node string
}

// recordingBinder records binds; fail, when set, decides per call.
type recordingBinder struct {
	mu    sync.Mutex
	calls []bindCall
	bound map[string]string
	fail  func(pod *v1.Pod, node string) error
}

func (b *recordingBinder) Bind(_ context.Context, pod *v1.Pod, node string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, bindCall{podKey(pod), node})
	if b.fail != nil {
		if err := b.fail(pod, node); err != nil {
			return err
		}
	}
	if b.bound == nil {
		b.bound = make(map[string]string)
	}
	b.bound[podKey(pod)] = node
	return nil
}

func (b *recordingBinder) boundTo(key string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bound[key]
}

func (b *recordingBinder) numBound() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.bound)
}

func (b *recordingBinder) setFail(f func(*v1.Pod, string) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail = f
}

type report struct {
	Pod, Reason, Message string
}

type recordingReporter struct {
	mu            sync.Mutex
	scheduled     map[string]string
	unschedulable []report
}

func (r *recordingReporter) Scheduled(_ context.Context, pod *v1.Pod, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.scheduled == nil {
		r.scheduled = make(map[string]string)
	}
	r.scheduled[podKey(pod)] = node
}

func (r *recordingReporter) Unschedulable(_ context.Context, pod *v1.Pod, reason, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unschedulable = append(r.unschedulable, report{podKey(pod), reason, message})
}

func (r *recordingReporter) reports() []report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.unschedulable)
}

type harness struct {
	t        testing.TB
	e        *Engine
	binder   *recordingBinder
	reporter *recordingReporter
	clock    *fakeClock
}

// newHarness builds an engine over nodes. Unless opts says otherwise it
// checks every node each cycle, so results do not depend on sampling.
func newHarness(t testing.TB, opts Options, nodes ...*v1.Node) *harness {
	t.Helper()
	h := &harness{t: t, binder: &recordingBinder{}, reporter: &recordingReporter{}, clock: newFakeClock()}
	if opts.PercentageOfNodesToScore == 0 {
		opts.PercentageOfNodesToScore = 100
	}
	if opts.Now == nil {
		opts.Now = h.clock.Now
	}
	e, err := NewEngine(EngineConfig{Options: opts, Binder: h.binder, Reporter: h.reporter})
	if err != nil {
		t.Fatal(err)
	}
	h.e = e
	for _, n := range nodes {
		e.AddNode(n)
	}
	return h
}

// cycleOnce runs one scheduling cycle synchronously (the pod must be
// active) and waits for its bind or report.
func (h *harness) cycleOnce() {
	h.t.Helper()
	if h.e.Queue().Stats().Active == 0 {
		h.t.Fatal("cycleOnce: no active pod")
	}
	h.e.ScheduleOne(context.Background())
	h.e.work.Wait()
}

// filter runs the filter chain alone over every node and returns the
// feasible node names (sorted) and the diagnosis.
func (h *harness) filter(pod *v1.Pod) ([]string, Diagnosis) {
	e := h.e
	e.cycleMu.Lock()
	defer e.cycleMu.Unlock()
	e.cache.UpdateSnapshot(e.snap)
	e.cyc.reset(newPodInfo(pod), e.snap.Len())
	e.src.reset(e.snap.nodes, 0)
	var names []string
	feasible := e.chain.wire()
	for n := feasible.Next(); n != nil; n = feasible.Next() {
		names = append(names, n.Name())
	}
	slices.Sort(names)
	d := e.cyc.diag
	d.Rejections = slices.Clone(d.Rejections)
	return names, d
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Object builders.

type nodeOpt func(*v1.Node)

func makeNode(name string, opts ...nodeOpt) *v1.Node {
	n := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("node-" + name), Labels: map[string]string{v1.LabelHostname: name}},
		Status: v1.NodeStatus{
			Allocatable: v1.ResourceList{
				v1.ResourceCPU:    resource.MustParse("4"),
				v1.ResourceMemory: resource.MustParse("8Gi"),
				v1.ResourcePods:   resource.MustParse("110"),
			},
			Conditions: []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue}},
		},
	}
	n.Status.Capacity = n.Status.Allocatable.DeepCopy()
	for _, o := range opts {
		o(n)
	}
	return n
}

func nodeLabels(kv ...string) nodeOpt {
	return func(n *v1.Node) {
		for i := 0; i+1 < len(kv); i += 2 {
			n.Labels[kv[i]] = kv[i+1]
		}
	}
}

func nodeTaint(key, value string, effect v1.TaintEffect) nodeOpt {
	return func(n *v1.Node) {
		n.Spec.Taints = append(n.Spec.Taints, v1.Taint{Key: key, Value: value, Effect: effect})
	}
}

func cordoned() nodeOpt { return func(n *v1.Node) { n.Spec.Unschedulable = true } }

func nodeReady(s v1.ConditionStatus) nodeOpt {
	return func(n *v1.Node) {
		if s == "" {
			n.Status.Conditions = nil
			return
		}
		n.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: s}}
	}
}

func nodeAllocatable(cpu, mem, pods string, extra ...string) nodeOpt {
	return func(n *v1.Node) {
		n.Status.Allocatable = v1.ResourceList{
			v1.ResourceCPU:    resource.MustParse(cpu),
			v1.ResourceMemory: resource.MustParse(mem),
			v1.ResourcePods:   resource.MustParse(pods),
		}
		for i := 0; i+1 < len(extra); i += 2 {
			n.Status.Allocatable[v1.ResourceName(extra[i])] = resource.MustParse(extra[i+1])
		}
	}
}

type podOpt func(*v1.Pod)

var podSeq int

func makePod(name string, opts ...podOpt) *v1.Pod {
	podSeq++
	p := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:         "default",
			Name:              name,
			UID:               types.UID(fmt.Sprintf("uid-%s-%d", name, podSeq)),
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		},
		Spec: v1.PodSpec{
			SchedulerName: DefaultSchedulerName,
			Containers:    []v1.Container{{Name: "c", Image: "busybox"}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func requests(cpu, mem string, extra ...string) podOpt {
	return func(p *v1.Pod) {
		rl := v1.ResourceList{}
		if cpu != "" {
			rl[v1.ResourceCPU] = resource.MustParse(cpu)
		}
		if mem != "" {
			rl[v1.ResourceMemory] = resource.MustParse(mem)
		}
		for i := 0; i+1 < len(extra); i += 2 {
			rl[v1.ResourceName(extra[i])] = resource.MustParse(extra[i+1])
		}
		p.Spec.Containers[0].Resources.Requests = rl
	}
}

func initRequests(cpu, mem string) podOpt {
	return func(p *v1.Pod) {
		p.Spec.InitContainers = append(p.Spec.InitContainers, v1.Container{
			Name: "init", Image: "busybox",
			Resources: v1.ResourceRequirements{Requests: v1.ResourceList{
				v1.ResourceCPU: resource.MustParse(cpu), v1.ResourceMemory: resource.MustParse(mem),
			}},
		})
	}
}

func overhead(cpu string) podOpt {
	return func(p *v1.Pod) {
		p.Spec.Overhead = v1.ResourceList{v1.ResourceCPU: resource.MustParse(cpu)}
	}
}

func hostPort(port int32, proto v1.Protocol, ip string) podOpt {
	return func(p *v1.Pod) {
		c := &p.Spec.Containers[0]
		c.Ports = append(c.Ports, v1.ContainerPort{ContainerPort: port, HostPort: port, Protocol: proto, HostIP: ip})
	}
}

func nodeSelector(kv ...string) podOpt {
	return func(p *v1.Pod) {
		p.Spec.NodeSelector = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Spec.NodeSelector[kv[i]] = kv[i+1]
		}
	}
}

func toleration(key string, op v1.TolerationOperator, value string, effect v1.TaintEffect) podOpt {
	return func(p *v1.Pod) {
		p.Spec.Tolerations = append(p.Spec.Tolerations, v1.Toleration{Key: key, Operator: op, Value: value, Effect: effect})
	}
}

func priority(v int32) podOpt { return func(p *v1.Pod) { p.Spec.Priority = &v } }

func created(t time.Time) podOpt {
	return func(p *v1.Pod) { p.CreationTimestamp = metav1.NewTime(t) }
}

func ownedBy(uid string) podOpt {
	return func(p *v1.Pod) {
		yes := true
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs-" + uid, UID: types.UID(uid), Controller: &yes}}
	}
}

func podLabels(kv ...string) podOpt {
	return func(p *v1.Pod) {
		p.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Labels[kv[i]] = kv[i+1]
		}
	}
}

func boundTo(node string) podOpt { return func(p *v1.Pod) { p.Spec.NodeName = node } }

func schedulerName(n string) podOpt { return func(p *v1.Pod) { p.Spec.SchedulerName = n } }

// requiredTerms sets required node affinity with the given terms (ORed).
func requiredTerms(terms ...v1.NodeSelectorTerm) podOpt {
	return func(p *v1.Pod) {
		ensureNodeAffinity(p).RequiredDuringSchedulingIgnoredDuringExecution = &v1.NodeSelector{NodeSelectorTerms: terms}
	}
}

func preferredTerm(weight int32, term v1.NodeSelectorTerm) podOpt {
	return func(p *v1.Pod) {
		na := ensureNodeAffinity(p)
		na.PreferredDuringSchedulingIgnoredDuringExecution = append(na.PreferredDuringSchedulingIgnoredDuringExecution,
			v1.PreferredSchedulingTerm{Weight: weight, Preference: term})
	}
}

func ensureNodeAffinity(p *v1.Pod) *v1.NodeAffinity {
	if p.Spec.Affinity == nil {
		p.Spec.Affinity = &v1.Affinity{}
	}
	if p.Spec.Affinity.NodeAffinity == nil {
		p.Spec.Affinity.NodeAffinity = &v1.NodeAffinity{}
	}
	return p.Spec.Affinity.NodeAffinity
}

func expr(key string, op v1.NodeSelectorOperator, values ...string) v1.NodeSelectorRequirement {
	return v1.NodeSelectorRequirement{Key: key, Operator: op, Values: values}
}

func term(exprs ...v1.NodeSelectorRequirement) v1.NodeSelectorTerm {
	return v1.NodeSelectorTerm{MatchExpressions: exprs}
}
