package api_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/api/apitest"
)

// TestDefaultClientset: a clientset built from a config without a content
// type sends protobuf bodies (client-go's default for built-in types), as
// controllers and kubectl describe do.
func TestDefaultClientset(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: s.URL})
	if err != nil {
		t.Fatal(err)
	}
	pods := cs.CoreV1().Pods("default")
	p, err := pods.Create(ctx, newPod("pb", map[string]string{"a": "b"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels["a"] = "c"
	if p, err = pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil || p.Labels["a"] != "c" {
		t.Fatalf("update: %v", err)
	}
	if err := pods.Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "pb"}, Target: corev1.ObjectReference{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	if err := pods.EvictV1(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "pb"}}); err != nil {
		t.Fatalf("evict: %v", err)
	}
	if err := pods.Delete(ctx, "pb", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := pods.Get(ctx, "pb", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after delete: %v", err)
	}
	d, err := cs.AppsV1().Deployments("default").Create(ctx, newDeployment("pbd", 2), metav1.CreateOptions{})
	if err != nil || d.Generation != 1 {
		t.Fatalf("deployment: %v", err)
	}
}
