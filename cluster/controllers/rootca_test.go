package controllers

import (
	"maps"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB...test...\n-----END CERTIFICATE-----\n"

// rootCAIs waits until ns's kube-root-ca.crt holds exactly testCA.
func (e *env) rootCAIs(ns string) *corev1.ConfigMap {
	e.t.Helper()
	var cm *corev1.ConfigMap
	waitFor(e.t, 10*time.Second, "kube-root-ca.crt in "+ns, func() (bool, error) {
		var err error
		cm, err = e.client.CoreV1().ConfigMaps(ns).Get(e.ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return maps.Equal(cm.Data, map[string]string{"ca.crt": testCA}) && len(cm.BinaryData) == 0, nil
	})
	return cm
}

func TestRootCAPublished(t *testing.T) {
	// One worker: namespaces are synced in the order their events come.
	e := newEnv(t, Config{Controllers: []string{RootCAPublisher}, RootCA: []byte(testCA), Workers: 1})
	for _, ns := range []string{"default", "kube-system", "kube-public"} {
		cm := e.rootCAIs(ns)
		if cm.Annotations["kubernetes.io/description"] == "" {
			t.Errorf("%s: no description annotation", ns)
		}
	}
	e.createNamespace("team")
	e.rootCAIs("team")
	cms := e.client.CoreV1().ConfigMaps("team")

	t.Run("deleted is recreated", func(t *testing.T) {
		if err := cms.Delete(e.ctx, "kube-root-ca.crt", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.rootCAIs("team")
	})

	t.Run("edited is repaired", func(t *testing.T) {
		cm, err := cms.Get(e.ctx, "kube-root-ca.crt", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data = map[string]string{"ca.crt": "forged", "extra": "x"}
		cm.BinaryData = map[string][]byte{"bin": {1}}
		cm.Labels = map[string]string{"kept": "yes"}
		if _, err := cms.Update(e.ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := e.rootCAIs("team"); got.Labels["kept"] != "yes" {
			t.Errorf("repair dropped the labels: %v", got.Labels)
		}
	})

	t.Run("terminating namespace is left alone", func(t *testing.T) {
		// No namespace controller runs: the namespace stays Terminating.
		if err := e.client.CoreV1().Namespaces().Delete(e.ctx, "team", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "namespace terminating", func() (bool, error) {
			ns, err := e.client.CoreV1().Namespaces().Get(e.ctx, "team", metav1.GetOptions{})
			return err == nil && ns.Status.Phase == corev1.NamespaceTerminating, err
		})
		if err := cms.Delete(e.ctx, "kube-root-ca.crt", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// A fresh namespace is served after the terminating one's event,
		// so once it has its ConfigMap the controller has seen team's delete.
		e.createNamespace("later")
		e.rootCAIs("later")
		if _, err := cms.Get(e.ctx, "kube-root-ca.crt", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("recreated in a terminating namespace: %v", err)
		}
	})
}

// Without a CA the controller does not run.
func TestRootCAOff(t *testing.T) {
	e := newEnv(t, Config{Controllers: []string{RootCAPublisher, ServiceAccount}})
	// The serviceaccount controller's work shows the Manager is running.
	waitFor(t, 10*time.Second, "default serviceaccount", func() (bool, error) {
		_, err := e.client.CoreV1().ServiceAccounts("default").Get(e.ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if _, err := e.client.CoreV1().ConfigMaps("default").Get(e.ctx, "kube-root-ca.crt", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("published without a CA: %v", err)
	}
}
