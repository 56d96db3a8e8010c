package controllers

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNamespaceDeletionEmptiesIt(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{Namespace, ReplicaSet, ServiceAccount}})
	startKubelet(t, e.client, kubeletOpts{})
	e.createNamespace("doomed")
	e.createNamespace("kept")
	ctx := e.ctx
	for _, ns := range []string{"doomed", "kept"} {
		if _, err := e.client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"a": "b"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}, StringData: map[string]string{"a": "b"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "svc"}, Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
		if _, err := e.client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		e.createRS(newReplicaSet(ns, "web", 2, map[string]string{"app": "web"}))
		waitFor(t, 10*time.Second, "running pods in "+ns, func() (bool, error) {
			n := 0
			for _, p := range e.pods(ns, "") {
				if p.Status.Phase == corev1.PodRunning {
					n++
				}
			}
			return n == 2, nil
		})
		waitFor(t, 10*time.Second, "default serviceaccount in "+ns, func() (bool, error) {
			_, err := e.client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
			return err == nil, err
		})
	}
	ns, err := e.client.CoreV1().Namespaces().Get(ctx, "doomed", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !hasFinalizer(ns.Spec.Finalizers, corev1.FinalizerKubernetes) {
		t.Fatalf("new namespace has spec.finalizers %v, want kubernetes", ns.Spec.Finalizers)
	}

	if err := e.client.CoreV1().Namespaces().Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "namespace doomed gone", func() (bool, error) {
		_, err := e.client.CoreV1().Namespaces().Get(ctx, "doomed", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if n := len(e.pods("doomed", "")); n != 0 {
		t.Errorf("%d pods left in doomed", n)
	}
	for what, list := range map[string]func(string) (int, error){
		"configmaps": func(ns string) (int, error) {
			l, err := e.client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
		"secrets": func(ns string) (int, error) {
			l, err := e.client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
		"services": func(ns string) (int, error) {
			l, err := e.client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
		"replicasets": func(ns string) (int, error) {
			l, err := e.client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
		"serviceaccounts": func(ns string) (int, error) {
			l, err := e.client.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{})
			return len(l.Items), err
		},
	} {
		if n, err := list("doomed"); err != nil || n != 0 {
			t.Errorf("%s left in doomed: %d (%v)", what, n, err)
		}
		if n, err := list("kept"); err != nil || n != 1 {
			t.Errorf("%s in kept: %d (%v), want 1", what, n, err)
		}
	}
	if n := len(e.pods("kept", "")); n != 2 {
		t.Errorf("pods in kept = %d, want 2", n)
	}
}

func TestServiceAccountDefault(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{ServiceAccount}})
	e.createNamespace("team")
	get := func() error {
		_, err := e.client.CoreV1().ServiceAccounts("team").Get(e.ctx, "default", metav1.GetOptions{})
		return err
	}
	waitFor(t, 10*time.Second, "default serviceaccount", func() (bool, error) { return get() == nil, nil })
	// The bootstrap namespaces get one too.
	for _, ns := range []string{"default", "kube-system", "kube-public"} {
		waitFor(t, 10*time.Second, "default serviceaccount in "+ns, func() (bool, error) {
			_, err := e.client.CoreV1().ServiceAccounts(ns).Get(e.ctx, "default", metav1.GetOptions{})
			return err == nil, nil
		})
	}
	if err := e.client.CoreV1().ServiceAccounts("team").Delete(e.ctx, "default", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "default serviceaccount recreated", func() (bool, error) { return get() == nil, nil })
}
