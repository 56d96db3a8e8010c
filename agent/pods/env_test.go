package pods

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api/apitest"
)

// Every container learns where the API is from default/kubernetes, as
// rest.InClusterConfig expects: KUBERNETES_SERVICE_HOST, _PORT and
// _PORT_HTTPS, whatever the namespace and even with enableServiceLinks
// off; the container's own env wins, and a Service named kubernetes in the
// pod's namespace (with service links on) shadows the master's, as with
// the kubelet.
func TestKubernetesServiceEnv(t *testing.T) {
	s := apitest.NewServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	master, err := s.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip := master.Spec.ClusterIP
	if ip == "" {
		t.Fatal("default/kubernetes has no ClusterIP")
	}
	for _, ns := range []string{"team", "shadowed"} {
		if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	shadow, err := s.Client.CoreV1().Services("shadowed").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "web", Port: 8080, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{cfg: Config{Client: s.Client}}
	off := false
	masterEnv := map[string]string{
		"KUBERNETES_SERVICE_HOST":       ip,
		"KUBERNETES_SERVICE_PORT":       "443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "443",
		"KUBERNETES_PORT":               "tcp://" + ip + ":443",
	}
	cases := []struct {
		name  string
		ns    string
		links *bool
		env   []corev1.EnvVar
		want  map[string]string
	}{
		{"default namespace", "default", nil, nil, masterEnv},
		{"other namespace", "team", nil, nil, masterEnv},
		{"service links off", "team", &off, nil, masterEnv},
		{"container env wins", "team", nil, []corev1.EnvVar{{Name: "KUBERNETES_SERVICE_HOST", Value: "api.example"}}, map[string]string{
			"KUBERNETES_SERVICE_HOST": "api.example", "KUBERNETES_SERVICE_PORT": "443", "KUBERNETES_SERVICE_PORT_HTTPS": "443",
		}},
		{"shadowed by the namespace's own", "shadowed", nil, nil, map[string]string{
			"KUBERNETES_SERVICE_HOST": shadow.Spec.ClusterIP, "KUBERNETES_SERVICE_PORT": "8080", "KUBERNETES_SERVICE_PORT_WEB": "8080",
			"KUBERNETES_SERVICE_PORT_HTTPS": "",
		}},
		{"shadow ignored with service links off", "shadowed", &off, nil, masterEnv},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: tc.ns},
				Spec: corev1.PodSpec{EnableServiceLinks: tc.links, Containers: []corev1.Container{
					{Name: "c", Image: "x", Env: tc.env},
				}},
			}
			env, err := m.containerEnv(ctx, pod, nil, &pod.Spec.Containers[0])
			if err != nil {
				t.Fatal(err)
			}
			for k, want := range tc.want {
				got, ok := env.vals[k]
				if want == "" {
					if ok {
						t.Errorf("%s = %q, want unset", k, got)
					}
					continue
				}
				if got != want {
					t.Errorf("%s = %q, want %q (env %v)", k, got, want, env.pairs())
				}
			}
		})
	}
}
