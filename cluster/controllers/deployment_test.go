package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	"k8s.io/kubectl/pkg/polymorphichelpers"
)

var deploymentGK = schema.GroupKind{Group: "apps", Kind: "Deployment"}

func newDeployment(name string, replicas int32, image string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels, image),
		},
	}
}

// deployEnv runs the ReplicaSet and Deployment controllers and a kubelet
// that makes every pod ready unless its image starts with "bad".
func deployEnv(t *testing.T) *env {
	e := newEnv(t, Config{Controllers: []string{ReplicaSet, Deployment}})
	startKubelet(t, e.client, kubeletOpts{ready: func(p *corev1.Pod) bool {
		return !strings.HasPrefix(p.Spec.Containers[0].Image, "bad")
	}})
	return e
}

func (e *env) createDeployment(d *appsv1.Deployment) *appsv1.Deployment {
	e.t.Helper()
	out, err := e.client.AppsV1().Deployments(d.Namespace).Create(e.ctx, d, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create deployment: %v", err)
	}
	return out
}

func (e *env) patchDeployment(name, patch string) {
	e.t.Helper()
	if _, err := e.client.AppsV1().Deployments("default").Patch(e.ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		e.t.Fatalf("patch deployment %s: %v", name, err)
	}
}

func (e *env) setImage(name, image string) {
	e.t.Helper()
	e.patchDeployment(name, fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"c","image":%q}]}}}}`, image))
}

func (e *env) deployment(name string) *appsv1.Deployment {
	e.t.Helper()
	d, err := e.client.AppsV1().Deployments("default").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatalf("get deployment: %v", err)
	}
	return d
}

// rolloutStatus is kubectl rollout status's verdict on the deployment.
func (e *env) rolloutStatus(name string) (string, bool, error) {
	d, err := e.client.AppsV1().Deployments("default").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", false, err
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(d)
	if err != nil {
		return "", false, err
	}
	sv, err := polymorphichelpers.StatusViewerFor(deploymentGK)
	if err != nil {
		return "", false, err
	}
	return sv.Status(&unstructured.Unstructured{Object: u}, 0)
}

// waitRolledOut waits until kubectl rollout status would return success.
func (e *env) waitRolledOut(name string) {
	e.t.Helper()
	var msg string
	waitFor(e.t, 30*time.Second, "rollout of "+name, func() (bool, error) {
		m, done, err := e.rolloutStatus(name)
		msg = m
		if err != nil {
			return false, err
		}
		return done, nil
	})
	if !strings.Contains(msg, "successfully rolled out") {
		e.t.Fatalf("rollout status = %q", msg)
	}
}

func (e *env) replicaSets(name string) []appsv1.ReplicaSet {
	e.t.Helper()
	list, err := e.client.AppsV1().ReplicaSets("default").List(e.ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	if err != nil {
		e.t.Fatal(err)
	}
	return list.Items
}

func rsByRevision(list []appsv1.ReplicaSet) map[string]appsv1.ReplicaSet {
	out := map[string]appsv1.ReplicaSet{}
	for _, rs := range list {
		out[rs.Annotations[annRevision]] = rs
	}
	return out
}

func condition(d *appsv1.Deployment, t appsv1.DeploymentConditionType) appsv1.DeploymentCondition {
	if c := getDeploymentCondition(d.Status, t); c != nil {
		return *c
	}
	return appsv1.DeploymentCondition{}
}

// watchInvariant polls while a rollout runs and reports a violation of check.
func (e *env) watchInvariant(check func() string) (stop func() []string) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var bad []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if msg := check(); msg != "" {
				mu.Lock()
				bad = append(bad, msg)
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond) // polling interval of the monitor, not synchronisation
		}
	}()
	return func() []string {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return bad
	}
}

func TestDeploymentRollingUpdate(t *testing.T) {
	e := deployEnv(t)
	d := newDeployment("web", 4, "nginx:1")
	d.Annotations = map[string]string{"kubernetes.io/change-cause": "first"}
	d.Spec.MinReadySeconds = 0
	e.createDeployment(d)
	e.waitRolledOut("web")

	rss := e.replicaSets("web")
	if len(rss) != 1 {
		t.Fatalf("replicasets = %d, want 1", len(rss))
	}
	rs := rss[0]
	hash := rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	if hash == "" || rs.Name != "web-"+hash || rs.Spec.Selector.MatchLabels[appsv1.DefaultDeploymentUniqueLabelKey] != hash {
		t.Errorf("replicaset %s: labels %v selector %v, want the pod-template-hash", rs.Name, rs.Labels, rs.Spec.Selector)
	}
	for k, want := range map[string]string{annRevision: "1", annDesiredReplicas: "4", annMaxReplicas: "5", "kubernetes.io/change-cause": "first"} {
		if got := rs.Annotations[k]; got != want {
			t.Errorf("replicaset annotation %s = %q, want %q", k, got, want)
		}
	}
	for _, p := range e.pods("default", "app=web") {
		if p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] != hash {
			t.Errorf("pod %s labels %v, want pod-template-hash %s", p.Name, p.Labels, hash)
		}
	}
	got := e.deployment("web")
	if got.Annotations[annRevision] != "1" {
		t.Errorf("deployment revision = %q, want 1", got.Annotations[annRevision])
	}
	if c := condition(got, appsv1.DeploymentAvailable); c.Status != corev1.ConditionTrue || c.Reason != "MinimumReplicasAvailable" {
		t.Errorf("Available = %+v", c)
	}
	if c := condition(got, appsv1.DeploymentProgressing); c.Status != corev1.ConditionTrue || c.Reason != reasonNewRSAvailable {
		t.Errorf("Progressing = %+v", c)
	}

	// Roll to a new image: never more than replicas+maxSurge pods asked
	// for, never fewer than replicas-maxUnavailable available.
	stop := e.watchInvariant(func() string {
		list, err := e.client.AppsV1().ReplicaSets("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return ""
		}
		var want, avail int32
		for _, rs := range list.Items {
			want += *rs.Spec.Replicas
			avail += rs.Status.AvailableReplicas
		}
		if want > 5 {
			return fmt.Sprintf("replicasets ask for %d pods, max 5", want)
		}
		if avail < 3 {
			return fmt.Sprintf("%d available, min 3", avail)
		}
		return ""
	})
	e.patchDeployment("web", `{"metadata":{"annotations":{"kubernetes.io/change-cause":"second"}},"spec":{"template":{"spec":{"containers":[{"name":"c","image":"nginx:2"}]}}}}`)
	e.waitRolledOut("web")
	for _, msg := range stop() {
		t.Error(msg)
	}

	byRev := rsByRevision(e.replicaSets("web"))
	if len(byRev) != 2 || *byRev["1"].Spec.Replicas != 0 || *byRev["2"].Spec.Replicas != 4 {
		t.Fatalf("replicasets by revision: %v", byRev)
	}
	if byRev["2"].Spec.Template.Spec.Containers[0].Image != "nginx:2" {
		t.Errorf("revision 2 runs %s", byRev["2"].Spec.Template.Spec.Containers[0].Image)
	}
	got = e.deployment("web")
	st := got.Status
	if st.Replicas != 4 || st.UpdatedReplicas != 4 || st.ReadyReplicas != 4 || st.AvailableReplicas != 4 || st.UnavailableReplicas != 0 || st.ObservedGeneration != got.Generation {
		t.Errorf("status = %+v", st)
	}
	if got.Annotations[annRevision] != "2" {
		t.Errorf("deployment revision = %q, want 2", got.Annotations[annRevision])
	}
	if n := len(e.activePods("default", "app=web")); n != 4 {
		t.Errorf("pods = %d, want 4", n)
	}
	ev := e.waitEvent("default", "ScalingReplicaSet")
	if !strings.HasPrefix(ev.Message, "Scaled up replica set web-") {
		t.Errorf("event message %q", ev.Message)
	}

	// kubectl rollout history reads the revisions and change causes.
	hv, err := polymorphichelpers.HistoryViewerFor(deploymentGK, e.client)
	if err != nil {
		t.Fatal(err)
	}
	hist, err := hv.ViewHistory("default", "web", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(hist, "1         first") || !strings.Contains(hist, "2         second") {
		t.Errorf("rollout history:\n%s", hist)
	}
}

func TestDeploymentRecreate(t *testing.T) {
	e := deployEnv(t)
	d := newDeployment("db", 3, "pg:1")
	d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	e.createDeployment(d)
	e.waitRolledOut("db")
	oldHash := e.replicaSets("db")[0].Labels[appsv1.DefaultDeploymentUniqueLabelKey]
	stop := e.watchInvariant(func() string {
		list, err := e.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=db"})
		if err != nil {
			return ""
		}
		old, cur := 0, 0
		for _, p := range list.Items {
			if p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] == oldHash {
				old++
			} else {
				cur++
			}
		}
		if old > 0 && cur > 0 {
			return fmt.Sprintf("%d old and %d new pods at once", old, cur)
		}
		return ""
	})
	e.setImage("db", "pg:2")
	e.waitRolledOut("db")
	for _, msg := range stop() {
		t.Error(msg)
	}
	byRev := rsByRevision(e.replicaSets("db"))
	if *byRev["1"].Spec.Replicas != 0 || *byRev["2"].Spec.Replicas != 3 {
		t.Errorf("replicasets by revision: %v", byRev)
	}
}

func TestDeploymentPauseResume(t *testing.T) {
	e := deployEnv(t)
	e.createDeployment(newDeployment("web", 2, "nginx:1"))
	e.waitRolledOut("web")
	e.patchDeployment("web", `{"spec":{"paused":true}}`)
	e.setImage("web", "nginx:2")
	waitFor(t, 10*time.Second, "paused condition", func() (bool, error) {
		d := e.deployment("web")
		c := condition(d, appsv1.DeploymentProgressing)
		return d.Status.ObservedGeneration == d.Generation && c.Reason == reasonPaused && c.Status == corev1.ConditionUnknown, nil
	})
	if n := len(e.replicaSets("web")); n != 1 {
		t.Errorf("replicasets while paused = %d, want 1", n)
	}
	// Scaling still works while paused.
	e.patchDeployment("web", `{"spec":{"replicas":3}}`)
	waitFor(t, 10*time.Second, "scaled while paused", func() (bool, error) {
		rss := e.replicaSets("web")
		return len(rss) == 1 && *rss[0].Spec.Replicas == 3 && rss[0].Status.AvailableReplicas == 3, nil
	})
	if _, done, _ := e.rolloutStatus("web"); done {
		t.Error("rollout status done while paused with a changed template")
	}
	e.patchDeployment("web", `{"spec":{"paused":false}}`)
	e.waitRolledOut("web")
	byRev := rsByRevision(e.replicaSets("web"))
	if len(byRev) != 2 || *byRev["2"].Spec.Replicas != 3 {
		t.Errorf("replicasets by revision: %v", byRev)
	}
	if c := condition(e.deployment("web"), appsv1.DeploymentProgressing); c.Reason != reasonNewRSAvailable {
		t.Errorf("Progressing = %+v", c)
	}
}

func TestDeploymentProgressDeadline(t *testing.T) {
	e := deployEnv(t)
	d := newDeployment("web", 2, "nginx:1")
	deadline := int32(1)
	d.Spec.ProgressDeadlineSeconds = &deadline
	e.createDeployment(d)
	e.waitRolledOut("web")
	e.setImage("web", "bad:1")
	waitFor(t, 20*time.Second, "ProgressDeadlineExceeded", func() (bool, error) {
		c := condition(e.deployment("web"), appsv1.DeploymentProgressing)
		return c.Status == corev1.ConditionFalse && c.Reason == reasonTimedOut, nil
	})
	if _, _, err := e.rolloutStatus("web"); err == nil || !strings.Contains(err.Error(), "exceeded its progress deadline") {
		t.Errorf("rollout status error = %v, want progress deadline exceeded", err)
	}
	// Still available on the old pods.
	if c := condition(e.deployment("web"), appsv1.DeploymentAvailable); c.Status != corev1.ConditionTrue {
		t.Errorf("Available = %+v", c)
	}
	// A good template recovers.
	e.setImage("web", "nginx:3")
	e.waitRolledOut("web")
}

func TestDeploymentRollbackAndHistoryLimit(t *testing.T) {
	e := deployEnv(t)
	d := newDeployment("web", 2, "nginx:1")
	e.createDeployment(d)
	e.waitRolledOut("web")
	e.setImage("web", "nginx:2")
	e.waitRolledOut("web")

	// kubectl rollout undo: patches the template back from revision 1's RS.
	rb, err := polymorphichelpers.RollbackerFor(deploymentGK, e.client)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Rollback(e.deployment("web"), nil, 0, cmdutil.DryRunNone); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	e.waitRolledOut("web")
	rss := e.replicaSets("web")
	if len(rss) != 2 {
		t.Fatalf("replicasets = %d, want 2 (the old one reused)", len(rss))
	}
	byRev := rsByRevision(rss)
	r3, ok := byRev["3"]
	if !ok || r3.Spec.Template.Spec.Containers[0].Image != "nginx:1" || r3.Annotations[annRevisionHistory] != "1" || *r3.Spec.Replicas != 2 {
		t.Errorf("revision 3 = %+v", r3.ObjectMeta)
	}
	if e.deployment("web").Annotations[annRevision] != "3" {
		t.Errorf("deployment revision = %q, want 3", e.deployment("web").Annotations[annRevision])
	}

	// revisionHistoryLimit 1: one old ReplicaSet stays.
	e.patchDeployment("web", `{"spec":{"revisionHistoryLimit":1}}`)
	e.setImage("web", "nginx:4")
	e.waitRolledOut("web")
	e.setImage("web", "nginx:5")
	e.waitRolledOut("web")
	waitFor(t, 10*time.Second, "old replicasets cleaned up", func() (bool, error) {
		return len(e.replicaSets("web")) == 2, nil
	})
	byRev = rsByRevision(e.replicaSets("web"))
	if _, ok := byRev["5"]; !ok {
		t.Errorf("revisions kept: %v, want 4 and 5", byRev)
	}
	if _, ok := byRev["4"]; !ok {
		t.Errorf("revisions kept: %v, want 4 and 5", byRev)
	}
}

func TestDeploymentScaleAndRestart(t *testing.T) {
	e := deployEnv(t)
	d := newDeployment("web", 2, "nginx:1")
	d.Spec.MinReadySeconds = 1
	e.createDeployment(d)
	e.waitRolledOut("web")
	rs := e.replicaSets("web")[0]
	if rs.Spec.MinReadySeconds != 1 {
		t.Errorf("replicaset minReadySeconds = %d, want 1", rs.Spec.MinReadySeconds)
	}
	e.patchDeployment("web", `{"spec":{"replicas":5}}`)
	e.waitRolledOut("web")
	rss := e.replicaSets("web")
	if len(rss) != 1 || *rss[0].Spec.Replicas != 5 || rss[0].Annotations[annDesiredReplicas] != "5" {
		t.Fatalf("after scale: %d replicasets, first %v", len(rss), rss[0].Annotations)
	}
	// kubectl rollout restart: a template annotation.
	e.patchDeployment("web", `{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2026-01-01T00:00:00Z"}}}}}`)
	e.waitRolledOut("web")
	byRev := rsByRevision(e.replicaSets("web"))
	if len(byRev) != 2 || *byRev["2"].Spec.Replicas != 5 {
		t.Errorf("after restart: %v", byRev)
	}
}

func TestDeploymentProportionalScaling(t *testing.T) {
	e := deployEnv(t)
	d := newDeployment("web", 10, "nginx:1")
	surge, unavail := intstr.FromInt32(3), intstr.FromInt32(2)
	d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &surge, MaxUnavailable: &unavail}
	e.createDeployment(d)
	e.waitRolledOut("web")
	// A template whose pods never get ready stalls the rollout midway.
	e.setImage("web", "bad:1")
	waitFor(t, 10*time.Second, "stalled rollout", func() (bool, error) {
		byRev := rsByRevision(e.replicaSets("web"))
		r1, r2 := byRev["1"], byRev["2"]
		return r2.Spec.Replicas != nil && *r1.Spec.Replicas == 8 && *r2.Spec.Replicas == 5, nil
	})
	// Scale 10 → 20 mid-rollout: the 13 pods allowed (10 + surge 3) become
	// 23, shared in proportion: 8:5 → 14:9.
	e.patchDeployment("web", `{"spec":{"replicas":20}}`)
	waitFor(t, 10*time.Second, "proportional scale", func() (bool, error) {
		byRev := rsByRevision(e.replicaSets("web"))
		r1, r2 := byRev["1"], byRev["2"]
		return *r1.Spec.Replicas == 14 && *r2.Spec.Replicas == 9, nil
	})
}

func TestTemplateHashStable(t *testing.T) {
	a := podTemplate(map[string]string{"app": "x"}, "nginx:1")
	b := podTemplate(map[string]string{"app": "x"}, "nginx:1")
	if templateHash(&a, nil) != templateHash(&b, nil) {
		t.Error("equal templates hash differently")
	}
	one := int32(1)
	if templateHash(&a, nil) == templateHash(&a, &one) {
		t.Error("collision count does not change the hash")
	}
	c := podTemplate(map[string]string{"app": "x"}, "nginx:2")
	if templateHash(&a, nil) == templateHash(&c, nil) {
		t.Error("different templates hash the same")
	}
}

func TestResolveFenceposts(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		replicas               int32
		surge, unavail         intstr.IntOrString
		wantSurge, wantUnavail int32
	}{
		{"percent rounds surge up, unavailable down", 10, intstr.FromString("25%"), intstr.FromString("25%"), 3, 2},
		{"numbers", 4, intstr.FromInt32(1), intstr.FromInt32(0), 1, 0},
		{"both zero leaves one unavailable", 2, intstr.FromString("1%"), intstr.FromInt32(0), 1, 0},
		{"zero and zero", 3, intstr.FromInt32(0), intstr.FromInt32(0), 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDeployment("x", tc.replicas, "i")
			d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &tc.surge, MaxUnavailable: &tc.unavail}}
			s, u := resolveFenceposts(d)
			if s != tc.wantSurge || u != tc.wantUnavail {
				t.Errorf("resolveFenceposts = %d, %d; want %d, %d", s, u, tc.wantSurge, tc.wantUnavail)
			}
		})
	}
}

func TestDeploymentRollingUpdateBounds(t *testing.T) {
	for _, tc := range []struct {
		name            string
		replicas        int32
		surge, unavail  intstr.IntOrString
		maxPods, minAvl int32
	}{
		{"surge only", 6, intstr.FromString("50%"), intstr.FromInt32(0), 9, 6},
		{"unavailable only", 5, intstr.FromInt32(0), intstr.FromInt32(2), 5, 3},
		{"both percentages", 10, intstr.FromString("20%"), intstr.FromString("10%"), 12, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := deployEnv(t)
			d := newDeployment("web", tc.replicas, "nginx:1")
			d.Spec.Strategy.RollingUpdate = &appsv1.RollingUpdateDeployment{MaxSurge: &tc.surge, MaxUnavailable: &tc.unavail}
			e.createDeployment(d)
			e.waitRolledOut("web")
			stop := e.watchInvariant(func() string {
				list, err := e.client.AppsV1().ReplicaSets("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
				if err != nil {
					return ""
				}
				var want, avail int32
				for _, rs := range list.Items {
					want += *rs.Spec.Replicas
					avail += rs.Status.AvailableReplicas
				}
				if want > tc.maxPods || avail < tc.minAvl {
					return fmt.Sprintf("replicasets ask for %d pods (max %d), %d available (min %d)", want, tc.maxPods, avail, tc.minAvl)
				}
				return ""
			})
			e.setImage("web", "nginx:2")
			e.waitRolledOut("web")
			for _, msg := range stop() {
				t.Error(msg)
			}
			if n := len(e.activePods("default", "app=web")); n != int(tc.replicas) {
				t.Errorf("pods = %d, want %d", n, tc.replicas)
			}
		})
	}
}
