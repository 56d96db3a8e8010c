package api_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api/apitest"
)

// TestKeyLayout pins the FSM layout other components and tools rely on.
func TestKeyLayout(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	p, err := s.Client.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p.Name, "web-") || len(p.Name) != len("web-")+5 {
		t.Fatalf("generateName gave %q", p.Name)
	}
	st := s.Cluster.Store()
	kv, _ := st.Get("/core/pods/default/" + p.Name)
	if kv == nil || strings.Contains(string(kv.Value), "resourceVersion") || !strings.Contains(string(kv.Value), `"kind":"Pod"`) {
		t.Fatalf("stored pod: %v", kv)
	}
	if rv := p.ResourceVersion; rv != formatUint(kv.ModRevision) {
		t.Fatalf("rv %s, modRevision %d", rv, kv.ModRevision)
	}
	for _, key := range []string{"/core/namespaces/default", "/core/services/default/kubernetes", "/flotilla/allocations/clusterips/10.96.0.1"} {
		if kv, _ := st.Get(key); kv == nil {
			t.Errorf("missing %s", key)
		}
	}
	if kv, _ := st.Get("/flotilla/allocations/clusterips/10.96.0.1"); kv == nil || string(kv.Value) != "/core/services/default/kubernetes" {
		t.Errorf("allocation owner %v", kv)
	}
	ns, _ := s.Client.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if ns.Labels[corev1.LabelMetadataName] != "kube-system" {
		t.Errorf("namespace labels %v", ns.Labels)
	}
}

func formatUint(n uint64) string {
	const digits = "0123456789"
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{digits[n%10]}, b...)
	}
	return string(b)
}
