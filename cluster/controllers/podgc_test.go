package controllers

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

func TestPodGC(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{PodGC}, PodGCPeriod: 50 * time.Millisecond, TerminatedPodGCThreshold: 2})
	ensureNode(t, e.client, "n1")
	mk := func(name, node string, phase corev1.PodPhase) {
		t.Helper()
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}
		out, err := e.client.CoreV1().Pods("default").Create(e.ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if phase != corev1.PodPending {
			out.Status.Phase = phase
			if _, err := e.client.CoreV1().Pods("default").UpdateStatus(e.ctx, out, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 5; i++ {
		phase := corev1.PodSucceeded
		if i%2 == 1 {
			phase = corev1.PodFailed
		}
		mk(fmt.Sprintf("done-%d", i), "n1", phase)
	}
	mk("running", "n1", corev1.PodRunning)
	mk("pending", "", corev1.PodPending)
	mk("orphan", "ghost", corev1.PodRunning)
	want := "done-3 done-4 pending running"
	var got string
	waitFor(t, 10*time.Second, "pods "+want, func() (bool, error) {
		var names []string
		for _, p := range e.pods("default", "") {
			names = append(names, p.Name)
		}
		sort.Strings(names)
		got = strings.Join(names, " ")
		return got == want, nil
	})
}

func TestPodGCLiveCheckCoversInformerLag(t *testing.T) {
	// The node cache has not seen node "new" yet; the live read has.
	e := newEnv(t, Config{Controllers: []string{PodGC}, PodGCPeriod: time.Hour})
	ensureNode(t, e.client, "new")
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "new"}}
	if err := pods.Add(pod); err != nil {
		t.Fatal(err)
	}
	c := &podGCController{
		base:      &base{client: e.client, cfg: Config{TerminatedPodGCThreshold: -1}},
		log:       testLogger(t),
		podLister: corelisters.NewPodLister(pods), nodeLister: corelisters.NewNodeLister(nodes),
		suspects: map[types.UID]bool{},
	}
	list := []*corev1.Pod{pod}
	if got := c.orphaned(e.ctx, list); len(got) != 0 {
		t.Fatalf("first scan deleted %d pods", len(got))
	}
	if got := c.orphaned(e.ctx, list); len(got) != 0 {
		t.Fatalf("second scan deleted %d pods although the node exists", len(got))
	}
	// Really gone: deleted on the scan after it is first seen missing.
	pod2 := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "q", Namespace: "default", UID: "u2"}, Spec: corev1.PodSpec{NodeName: "gone"}}
	list = []*corev1.Pod{pod2}
	if got := c.orphaned(e.ctx, list); len(got) != 0 {
		t.Fatalf("first scan deleted %d pods", len(got))
	}
	if got := c.orphaned(e.ctx, list); len(got) != 1 {
		t.Fatalf("second scan found %d orphans, want 1", len(got))
	}
}
