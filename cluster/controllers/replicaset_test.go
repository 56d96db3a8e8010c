package controllers

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/api/apitest"
)

func newReplicaSet(ns, name string, replicas int32, labels map[string]string) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels, "nginx:1"),
		},
	}
}

func (e *env) createRS(rs *appsv1.ReplicaSet) *appsv1.ReplicaSet {
	e.t.Helper()
	out, err := e.client.AppsV1().ReplicaSets(rs.Namespace).Create(e.ctx, rs, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create replicaset: %v", err)
	}
	return out
}

func (e *env) scaleRS(ns, name string, n int32) {
	e.t.Helper()
	sc, err := e.client.AppsV1().ReplicaSets(ns).GetScale(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	sc.Spec.Replicas = n
	if _, err := e.client.AppsV1().ReplicaSets(ns).UpdateScale(e.ctx, name, sc, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// waitRSStatus waits until the ReplicaSet's status satisfies ok.
func (e *env) waitRSStatus(ns, name string, what string, ok func(*appsv1.ReplicaSet) bool) *appsv1.ReplicaSet {
	e.t.Helper()
	var rs *appsv1.ReplicaSet
	waitFor(e.t, 15*time.Second, what, func() (bool, error) {
		var err error
		rs, err = e.client.AppsV1().ReplicaSets(ns).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return ok(rs), nil
	})
	return rs
}

// settled: the status reports n pods, all ready and available, for the
// current generation.
func settled(n int32) func(*appsv1.ReplicaSet) bool {
	return func(rs *appsv1.ReplicaSet) bool {
		s := rs.Status
		return s.ObservedGeneration == rs.Generation && s.Replicas == n && s.ReadyReplicas == n &&
			s.AvailableReplicas == n && s.FullyLabeledReplicas == n
	}
}

func TestReplicaSetScaleUpAndDown(t *testing.T) {
	creates := &requestCounter{method: http.MethodPost, fragment: "/pods"}
	e := newEnv(t, Config{Controllers: []string{ReplicaSet}}, apitest.Options{Wrap: creates.wrap})
	startKubelet(t, e.client, kubeletOpts{})
	labels := map[string]string{"app": "web"}
	e.createRS(newReplicaSet("default", "web", 3, labels))
	e.waitRSStatus("default", "web", "3 ready replicas", settled(3))

	e.scaleRS("default", "web", 5)
	e.waitRSStatus("default", "web", "5 ready replicas", settled(5))

	e.scaleRS("default", "web", 1)
	e.waitRSStatus("default", "web", "1 ready replica", settled(1))
	waitFor(t, 10*time.Second, "4 pods deleted", func() (bool, error) { return len(e.pods("default", "app=web")) == 1, nil })
	if n := creates.count.Load(); n != 5 {
		t.Errorf("pod creates = %d, want 5 (3 then 2 more)", n)
	}
	e.waitEvent("default", "SuccessfulCreate")
	e.waitEvent("default", "SuccessfulDelete")
}

// lagWriter delays each write of a watch stream, making the informer's
// cache lag behind the API.
type lagWriter struct {
	http.ResponseWriter
	delay time.Duration
}

func (w lagWriter) Write(p []byte) (int, error) {
	time.Sleep(w.delay)
	return w.ResponseWriter.Write(p)
}

func (w lagWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func TestReplicaSetLaggingCacheNeverCreatesTwice(t *testing.T) {
	creates := &requestCounter{method: http.MethodPost, fragment: "/pods"}
	lag := func(next http.Handler) http.Handler {
		h := creates.wrap(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("watch") == "true" && strings.HasSuffix(r.URL.Path, "/pods") {
				w = lagWriter{w, 150 * time.Millisecond}
			}
			h.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, Config{Controllers: []string{ReplicaSet}}, apitest.Options{Wrap: lag})
	e.createRS(newReplicaSet("default", "web", 6, map[string]string{"app": "web"}))
	// Status updates and resyncs re-run sync long before the cache shows
	// the pods; expectations hold it back.
	e.waitRSStatus("default", "web", "6 replicas", func(rs *appsv1.ReplicaSet) bool { return rs.Status.Replicas == 6 })
	e.scaleRS("default", "web", 8)
	e.waitRSStatus("default", "web", "8 replicas", func(rs *appsv1.ReplicaSet) bool { return rs.Status.Replicas == 8 })
	if n := len(e.pods("default", "")); n != 8 {
		t.Errorf("pods = %d, want 8", n)
	}
	if n := creates.count.Load(); n != 8 {
		t.Errorf("pod creates = %d, want 8", n)
	}
}

func TestReplicaSetSlowStartStopsOnFailure(t *testing.T) {
	creates := &requestCounter{method: http.MethodPost, fragment: "/pods"}
	creates.setFail(func(int64) bool { return true })
	e := newEnv(t, Config{Controllers: []string{ReplicaSet}}, apitest.Options{Wrap: creates.wrap})
	e.createRS(newReplicaSet("default", "web", 20, map[string]string{"app": "web"}))
	// While every create fails, each sync tries exactly one pod.
	waitFor(t, 10*time.Second, "3 failed creates", func() (bool, error) { return creates.count.Load() >= 3, nil })
	rs := e.waitRSStatus("default", "web", "ReplicaFailure condition", func(rs *appsv1.ReplicaSet) bool {
		return len(rs.Status.Conditions) == 1
	})
	if c := rs.Status.Conditions[0]; c.Type != appsv1.ReplicaSetReplicaFailure || c.Reason != "FailedCreate" {
		t.Errorf("condition = %+v, want ReplicaFailure/FailedCreate", c)
	}
	e.waitEvent("default", "FailedCreate")
	if m := creates.maxInFlight.Load(); m != 1 {
		t.Errorf("%d creates in flight at once while failing, want 1", m)
	}
	creates.setFail(nil)
	failed := creates.count.Load()
	e.waitRSStatus("default", "web", "20 replicas, no failure", func(rs *appsv1.ReplicaSet) bool {
		return rs.Status.Replicas == 20 && len(rs.Status.Conditions) == 0
	})
	if n := len(e.pods("default", "")); n != 20 {
		t.Errorf("pods = %d, want 20", n)
	}
	// A failing request that raced the heal may have succeeded; none more.
	if n := creates.count.Load() - failed; n < 19 || n > 20 {
		t.Errorf("%d creates after healing, want 20 (or 19)", n)
	}
}

func TestSlowStartBatches(t *testing.T) {
	var mu sync.Mutex
	var calls int
	fail := errors.New("boom")
	created, err := slowStart(10, func() error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 4 {
			return fail
		}
		return nil
	})
	// Batches 1, 2, 4: the 4-batch has the failure, so the 3-batch never runs.
	if calls != 7 || created != 6 || !errors.Is(err, fail) {
		t.Errorf("slowStart = %d created, %d calls, err %v; want 6, 7, boom", created, calls, err)
	}
	calls = 0
	created, err = slowStart(10, func() error { mu.Lock(); calls++; mu.Unlock(); return nil })
	if calls != 10 || created != 10 || err != nil {
		t.Errorf("slowStart = %d created, %d calls, err %v; want 10, 10, nil", created, calls, err)
	}
	if created, _ := slowStart(0, func() error { t.Error("called"); return nil }); created != 0 {
		t.Errorf("slowStart(0) = %d", created)
	}
}

func TestReplicaSetAdoptsAndReleases(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{ReplicaSet}})
	labels := map[string]string{"app": "web"}
	orphan := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "orphan", Namespace: "default", Labels: map[string]string{"app": "web"}},
		Spec:       podTemplate(nil, "nginx:1").Spec,
	}
	if _, err := e.client.CoreV1().Pods("default").Create(e.ctx, orphan, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rs := newReplicaSet("default", "web", 3, labels)
	rs.Spec.Template.Labels = map[string]string{"app": "web", "tier": "front"}
	rs = e.createRS(rs)
	got := e.waitRSStatus("default", "web", "3 replicas", func(rs *appsv1.ReplicaSet) bool { return rs.Status.Replicas == 3 })
	// The orphan lacks the template's tier label.
	if got.Status.FullyLabeledReplicas != 2 {
		t.Errorf("fullyLabeledReplicas = %d, want 2", got.Status.FullyLabeledReplicas)
	}
	if n := len(e.pods("default", "")); n != 3 {
		t.Errorf("pods = %d, want 3 (the orphan adopted, 2 created)", n)
	}
	p, err := e.client.CoreV1().Pods("default").Get(e.ctx, "orphan", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ref := metav1.GetControllerOf(p); ref == nil || ref.UID != rs.UID || ref.Kind != "ReplicaSet" || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		t.Fatalf("orphan's controller = %+v, want the ReplicaSet", ref)
	}

	// Relabel it: released, and replaced.
	patch := []byte(`{"metadata":{"labels":{"app":"other"}}}`)
	if _, err := e.client.CoreV1().Pods("default").Patch(e.ctx, "orphan", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "orphan released", func() (bool, error) {
		p, err := e.client.CoreV1().Pods("default").Get(e.ctx, "orphan", metav1.GetOptions{})
		return err == nil && metav1.GetControllerOf(p) == nil, err
	})
	got = e.waitRSStatus("default", "web", "3 fully labeled replicas", func(rs *appsv1.ReplicaSet) bool {
		return rs.Status.Replicas == 3 && rs.Status.FullyLabeledReplicas == 3
	})
	if n := len(e.pods("default", "app=web")); n != 3 {
		t.Errorf("app=web pods = %d, want 3", n)
	}
}

func TestReplicaSetStatusMinReadySeconds(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{ReplicaSet}})
	startKubelet(t, e.client, kubeletOpts{ready: func(*corev1.Pod) bool { return false }})
	rs := newReplicaSet("default", "web", 2, map[string]string{"app": "web"})
	rs.Spec.MinReadySeconds = 1
	e.createRS(rs)
	e.waitRSStatus("default", "web", "2 running, none ready", func(rs *appsv1.ReplicaSet) bool {
		return rs.Status.Replicas == 2 && rs.Status.ReadyReplicas == 0
	})
	waitFor(t, 10*time.Second, "2 running pods", func() (bool, error) {
		n := 0
		for _, p := range e.pods("default", "app=web") {
			if p.Status.Phase == corev1.PodRunning {
				n++
			}
		}
		return n == 2, nil
	})
	for _, p := range e.pods("default", "app=web") {
		setPodReady(t, e.client, "default", p.Name, true)
	}
	// Availability counts from the Ready condition's transition time,
	// which the API keeps in whole seconds: the earliest moment both may
	// be available is the later transition plus minReadySeconds.
	var readySince time.Time
	for _, p := range e.pods("default", "app=web") {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.LastTransitionTime.After(readySince) {
				readySince = c.LastTransitionTime.Time
			}
		}
	}
	got := e.waitRSStatus("default", "web", "2 ready", func(rs *appsv1.ReplicaSet) bool { return rs.Status.ReadyReplicas == 2 })
	if got.Status.AvailableReplicas == 2 && time.Now().Before(readySince.Add(time.Second)) {
		t.Errorf("available before minReadySeconds (ready since %v): %+v", readySince, got.Status)
	}
	e.waitRSStatus("default", "web", "2 available", settled(2))

	// Not ready again: neither ready nor available.
	p := e.pods("default", "app=web")[0]
	setPodReady(t, e.client, "default", p.Name, false)
	e.waitRSStatus("default", "web", "1 ready, 1 available", func(rs *appsv1.ReplicaSet) bool {
		return rs.Status.ReadyReplicas == 1 && rs.Status.AvailableReplicas == 1
	})
}

func TestPodsToDeleteOrder(t *testing.T) {
	now := time.Now()
	ts := func(d time.Duration) metav1.Time { return metav1.NewTime(now.Add(d).Truncate(time.Second)) }
	pod := func(name, node string, phase corev1.PodPhase, ready bool, readySince, created time.Duration, restarts int32) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: ts(created)},
			Spec:       corev1.PodSpec{NodeName: node},
			Status:     corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{{RestartCount: restarts}}},
		}
		if ready {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: ts(readySince)}}
		}
		return p
	}
	pods := []*corev1.Pod{
		pod("old-ready", "n1", corev1.PodRunning, true, -time.Hour, -2*time.Hour, 0),
		pod("pending", "n1", corev1.PodPending, false, 0, -time.Hour, 0),
		pod("unscheduled", "", corev1.PodPending, false, 0, -3*time.Hour, 0),
		pod("not-ready", "n1", corev1.PodRunning, false, 0, -time.Hour, 0),
		pod("new-ready", "n1", corev1.PodRunning, true, -time.Minute, -2*time.Hour, 0),
		pod("restarty", "n1", corev1.PodRunning, true, -time.Hour, -2*time.Hour, 5),
		pod("newest", "n1", corev1.PodRunning, true, -time.Hour, -time.Hour, 0),
		pod("crowded", "n2", corev1.PodRunning, true, -time.Hour, -3*time.Hour, 0),
		pod("crowded2", "n2", corev1.PodRunning, true, -time.Hour, -3*time.Hour, 0),
	}
	// n2 has 2 pods, n1 has 6: pods on n1 go first among ready ones.
	got := podsToDelete(pods, len(pods)-1)
	var names []string
	for _, p := range got {
		names = append(names, p.Name)
	}
	want := "unscheduled pending not-ready new-ready restarty newest old-ready crowded2"
	if strings.Join(names, " ") != want {
		t.Errorf("order = %s\n want %s", strings.Join(names, " "), want)
	}
}

func TestExpectations(t *testing.T) {
	e := newExpectations()
	if !e.satisfied("a") {
		t.Fatal("no record: want satisfied")
	}
	e.expectCreations("a", 2)
	e.creationObserved("a")
	if e.satisfied("a") {
		t.Fatal("1 of 2 creations seen: want unsatisfied")
	}
	e.creationObserved("a")
	if !e.satisfied("a") {
		t.Fatal("2 of 2 creations seen: want satisfied")
	}
	e.expectDeletions("a", []string{"ns/p1", "ns/p2"})
	e.deletionObserved("a", "ns/p1")
	e.deletionObserved("a", "ns/p1") // seen twice: update with deletionTimestamp, then delete
	if e.satisfied("a") {
		t.Fatal("p2 not seen: want unsatisfied")
	}
	var clock atomic.Int64
	e.now = func() time.Time { return time.Unix(0, clock.Load()) }
	e.expectCreations("b", 1)
	clock.Add(int64(expectationsTTL + time.Second))
	if !e.satisfied("b") {
		t.Fatal("expired: want satisfied")
	}
	e.forget("a")
	if !e.satisfied("a") {
		t.Fatal("forgotten: want satisfied")
	}
}
