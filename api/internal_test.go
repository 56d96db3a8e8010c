package api

import (
	"math/rand"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/randfill"
)

func TestPullPolicyDefault(t *testing.T) {
	for image, want := range map[string]corev1.PullPolicy{
		"nginx":                       corev1.PullAlways,
		"nginx:latest":                corev1.PullAlways,
		"nginx:1.27":                  corev1.PullIfNotPresent,
		"registry:5000/nginx":         corev1.PullAlways,
		"registry:5000/nginx:1":       corev1.PullIfNotPresent,
		"nginx@sha256:0123456789abcd": corev1.PullIfNotPresent,
	} {
		if got := defaultPullPolicy(image); got != want {
			t.Errorf("%s: got %s, want %s", image, got, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x:1", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}}}}
	defaultPod(p)
	s := p.Spec
	c := s.Containers[0]
	if s.RestartPolicy != corev1.RestartPolicyAlways || *s.TerminationGracePeriodSeconds != 30 || s.DNSPolicy != corev1.DNSClusterFirst ||
		s.SchedulerName != "default-scheduler" || s.SecurityContext == nil || !*s.EnableServiceLinks ||
		c.TerminationMessagePath != "/dev/termination-log" || c.TerminationMessagePolicy != corev1.TerminationMessageReadFile ||
		c.Ports[0].Protocol != corev1.ProtocolTCP || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Fatalf("pod defaults: %+v", s)
	}
	before := p.DeepCopy()
	defaultPod(p)
	if !equalJSON(t, before, p) {
		t.Fatal("pod defaulting is not idempotent")
	}
	d := &appsv1.Deployment{}
	defaultDeployment(d)
	if *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType ||
		*d.Spec.Strategy.RollingUpdate.MaxSurge != intstr.FromString("25%") || *d.Spec.Strategy.RollingUpdate.MaxUnavailable != intstr.FromString("25%") ||
		*d.Spec.RevisionHistoryLimit != 10 || *d.Spec.ProgressDeadlineSeconds != 600 {
		t.Fatalf("deployment defaults: %+v", d.Spec)
	}
	r := &appsv1.ReplicaSet{}
	defaultReplicaSet(r)
	if *r.Spec.Replicas != 1 {
		t.Fatal("replicaset replicas")
	}
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 8080}}}}
	defaultService(svc)
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.SessionAffinity != corev1.ServiceAffinityNone ||
		svc.Spec.Ports[0].Protocol != corev1.ProtocolTCP || svc.Spec.Ports[0].TargetPort != intstr.FromInt32(8080) ||
		svc.Spec.IPFamilies[0] != corev1.IPv4Protocol || *svc.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack ||
		*svc.Spec.InternalTrafficPolicy != corev1.ServiceInternalTrafficPolicyCluster {
		t.Fatalf("service defaults: %+v", svc.Spec)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	return specEqual(a.(*corev1.Pod), b.(*corev1.Pod))
}

func TestContinueToken(t *testing.T) {
	tok := encodeContinue(42, "/core/pods/default/x")
	got, err := decodeContinue(tok, "/core/pods/default/")
	if err != nil || got.RV != 42 || got.Start != "/core/pods/default/x" {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := decodeContinue(tok, "/core/pods/other/"); err == nil {
		t.Fatal("a token for another prefix was accepted")
	}
}

func TestAllocatorRange(t *testing.T) {
	s, err := New(Config{Cluster: nilCluster{}})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.alloc.reservedIP().String(); got != "10.96.0.1" {
		t.Fatalf("reserved %s", got)
	}
	if got := uintToIP4(s.alloc.last).String(); got != "10.111.255.254" {
		t.Fatalf("last %s", got)
	}
}

// FuzzValidation: defaulting and validating random objects of every
// resource, as creates and as updates, never panics.
func FuzzValidation(f *testing.F) {
	f.Add(int64(1), uint8(0))
	f.Add(int64(7), uint8(3))
	reg := newRegistry(resources())
	f.Fuzz(func(t *testing.T, seed int64, which uint8) {
		res := reg.all[int(which)%len(reg.all)]
		fill := randfill.New().NilChance(0.3).NumElements(0, 3).RandSource(rand.NewSource(seed))
		obj, old := res.newObj(), res.newObj()
		fill.Fill(obj)
		fill.Fill(old)
		if res.prepareCreate != nil {
			res.prepareCreate(obj)
		}
		if res.defaults != nil {
			res.defaults(obj)
			res.defaults(old)
		}
		s := &Server{}
		_ = s.validateCreate(res, obj)
		_ = s.validateUpdate(res, obj, old)
		_ = res.selectableFields(obj)
		if svc, ok := obj.(*corev1.Service); ok {
			prepareServiceUpdate(svc, old.(*corev1.Service))
		}
	})
}

// nilCluster satisfies Cluster for tests that never touch the store.
type nilCluster struct{ Cluster }
