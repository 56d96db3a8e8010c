package controllers

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func ownedBy(owner *corev1.ConfigMap, block bool) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID, BlockOwnerDeletion: &block}
}

func (e *env) configMap(name string, refs []metav1.OwnerReference, finalizers ...string) *corev1.ConfigMap {
	e.t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", OwnerReferences: refs, Finalizers: finalizers}}
	out, err := e.client.CoreV1().ConfigMaps("default").Create(e.ctx, cm, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create configmap %s: %v", name, err)
	}
	return out
}

func (e *env) getCM(name string) (*corev1.ConfigMap, error) {
	return e.client.CoreV1().ConfigMaps("default").Get(e.ctx, name, metav1.GetOptions{})
}

func (e *env) waitGone(what string, get func() error) {
	e.t.Helper()
	waitFor(e.t, 15*time.Second, what+" deleted", func() (bool, error) {
		err := get()
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

func (e *env) deleteCM(name string, policy metav1.DeletionPropagation) {
	e.t.Helper()
	if err := e.client.CoreV1().ConfigMaps("default").Delete(e.ctx, name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil {
		e.t.Fatalf("delete configmap %s: %v", name, err)
	}
}

func TestGarbageCollectorBackground(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{GarbageCollector}})
	owner := e.configMap("owner", nil)
	other := e.configMap("other", nil)
	e.configMap("dep-cm", []metav1.OwnerReference{ownedBy(owner, false)})
	if _, err := e.client.CoreV1().Secrets("default").Create(e.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name: "dep-secret", OwnerReferences: []metav1.OwnerReference{ownedBy(owner, false)}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "dep-pod", Namespace: "default", OwnerReferences: []metav1.OwnerReference{ownedBy(owner, true)}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if _, err := e.client.CoreV1().Pods("default").Create(e.ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.configMap("two-owners", []metav1.OwnerReference{ownedBy(owner, false), ownedBy(other, false)})

	e.deleteCM("owner", metav1.DeletePropagationBackground)
	e.waitGone("dep-cm", func() error { _, err := e.getCM("dep-cm"); return err })
	e.waitGone("dep-secret", func() error {
		_, err := e.client.CoreV1().Secrets("default").Get(e.ctx, "dep-secret", metav1.GetOptions{})
		return err
	})
	e.waitGone("dep-pod", func() error {
		_, err := e.client.CoreV1().Pods("default").Get(e.ctx, "dep-pod", metav1.GetOptions{})
		return err
	})
	// A dependent with another owner stays, without the reference to the gone one.
	waitFor(t, 10*time.Second, "two-owners keeps only other", func() (bool, error) {
		cm, err := e.getCM("two-owners")
		if err != nil {
			return false, err
		}
		refs := cm.OwnerReferences
		return len(refs) == 1 && refs[0].UID == other.UID, nil
	})

	// An owner reference to an object that never existed (by uid) is dangling.
	ghost := metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: "other", UID: types.UID("not-the-uid")}
	e.configMap("dangling", []metav1.OwnerReference{ghost})
	e.waitGone("dangling", func() error { _, err := e.getCM("dangling"); return err })
	// A reference to a kind Flotilla does not serve is left alone.
	e.configMap("foreign", []metav1.OwnerReference{{APIVersion: "example.com/v1", Kind: "Widget", Name: "w", UID: "w1"}})
	e.configMap("marker", []metav1.OwnerReference{ghost})
	e.waitGone("marker", func() error { _, err := e.getCM("marker"); return err })
	if _, err := e.getCM("foreign"); err != nil {
		t.Errorf("object owned by an unknown kind: %v", err)
	}
}

func TestGarbageCollectorForeground(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{GarbageCollector}})
	owner := e.configMap("owner", nil)
	e.configMap("blocking", []metav1.OwnerReference{ownedBy(owner, true)}, "test/hold")
	e.configMap("free", []metav1.OwnerReference{ownedBy(owner, false)})
	e.deleteCM("owner", metav1.DeletePropagationForeground)
	e.waitGone("free", func() error { _, err := e.getCM("free"); return err })
	waitFor(t, 10*time.Second, "blocking dependent being deleted", func() (bool, error) {
		cm, err := e.getCM("blocking")
		return err == nil && cm.DeletionTimestamp != nil, err
	})
	o, err := e.getCM("owner")
	if err != nil {
		t.Fatalf("owner gone before its blocking dependent: %v", err)
	}
	if o.DeletionTimestamp == nil || !hasString(o.Finalizers, metav1.FinalizerDeleteDependents) {
		t.Fatalf("owner = %+v, want deleting with the foregroundDeletion finalizer", o.ObjectMeta)
	}
	// Let the blocking dependent go: then the owner goes.
	if _, err := e.client.CoreV1().ConfigMaps("default").Patch(e.ctx, "blocking", types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("owner", func() error { _, err := e.getCM("owner"); return err })
}

func TestGarbageCollectorOrphan(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{GarbageCollector}})
	owner := e.configMap("owner", nil)
	e.configMap("a", []metav1.OwnerReference{ownedBy(owner, true)})
	e.configMap("b", []metav1.OwnerReference{ownedBy(owner, false)})
	e.deleteCM("owner", metav1.DeletePropagationOrphan)
	e.waitGone("owner", func() error { _, err := e.getCM("owner"); return err })
	for _, name := range []string{"a", "b"} {
		cm, err := e.getCM(name)
		if err != nil {
			t.Fatalf("orphaned dependent %s: %v", name, err)
		}
		if len(cm.OwnerReferences) != 0 {
			t.Errorf("%s still has owner references %v", name, cm.OwnerReferences)
		}
	}
}

func TestGarbageCollectorDeploymentCascade(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{ReplicaSet, Deployment, GarbageCollector}})
	startKubelet(t, e.client, kubeletOpts{})
	for _, name := range []string{"bg", "fg"} {
		e.createDeployment(newDeployment(name, 2, "nginx:1"))
		e.waitRolledOut(name)
	}
	bg := metav1.DeletePropagationBackground
	if err := e.client.AppsV1().Deployments("default").Delete(e.ctx, "bg", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "bg's replicasets and pods deleted", func() (bool, error) {
		return len(e.replicaSets("bg")) == 0 && len(e.pods("default", "app=bg")) == 0, nil
	})

	fg := metav1.DeletePropagationForeground
	if err := e.client.AppsV1().Deployments("default").Delete(e.ctx, "fg", metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil {
		t.Fatal(err)
	}
	// The deployment goes last: after its ReplicaSet, after its pods.
	waitFor(t, 15*time.Second, "fg deleted", func() (bool, error) {
		_, err := e.client.AppsV1().Deployments("default").Get(e.ctx, "fg", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if n, m := len(e.replicaSets("fg")), len(e.pods("default", "app=fg")); n+m != 0 {
				t.Fatalf("deployment gone with %d replicasets and %d pods left", n, m)
			}
			return true, nil
		}
		return false, err
	})
}
