package api_test

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/api/apitest"
)

const saMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// tokenVolume returns the pod's kube-api-access volume, if any.
func tokenVolume(p *corev1.Pod) *corev1.Volume {
	for i := range p.Spec.Volumes {
		if strings.HasPrefix(p.Spec.Volumes[i].Name, "kube-api-access-") {
			return &p.Spec.Volumes[i]
		}
	}
	return nil
}

func mountsAt(c corev1.Container, path string) []corev1.VolumeMount {
	var out []corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			out = append(out, m)
		}
	}
	return out
}

func TestServiceAccountAdmission(t *testing.T) {
	s, _ := newKeyedServer(t)
	ctx := ctxT(t)
	no, yes := false, true
	sas := s.Client.CoreV1().ServiceAccounts("default")
	for _, sa := range []*corev1.ServiceAccount{
		{ObjectMeta: metav1.ObjectMeta{Name: "quiet"}, AutomountServiceAccountToken: &no},
		{ObjectMeta: metav1.ObjectMeta{Name: "puller"}, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "regcred"}}},
	} {
		if _, err := sas.Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods := s.Client.CoreV1().Pods("default")

	t.Run("default service account, mounted everywhere", func(t *testing.T) {
		p := newPod("plain", nil)
		p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}}
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "busybox"})
		got, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Spec.ServiceAccountName != "default" || got.Spec.DeprecatedServiceAccount != "default" {
			t.Errorf("serviceAccountName %q / %q", got.Spec.ServiceAccountName, got.Spec.DeprecatedServiceAccount)
		}
		v := tokenVolume(got)
		if v == nil {
			t.Fatalf("no kube-api-access volume: %+v", got.Spec.Volumes)
		}
		if len(v.Name) != len("kube-api-access-")+5 || v.Projected == nil || len(v.Projected.Sources) != 3 {
			t.Fatalf("volume %+v", v)
		}
		src := v.Projected.Sources
		if tk := src[0].ServiceAccountToken; tk == nil || tk.Path != "token" || tk.ExpirationSeconds == nil || *tk.ExpirationSeconds != 3607 {
			t.Errorf("token source %+v", src[0])
		}
		if cm := src[1].ConfigMap; cm == nil || cm.Name != "kube-root-ca.crt" || len(cm.Items) != 1 || cm.Items[0].Key != "ca.crt" || cm.Items[0].Path != "ca.crt" {
			t.Errorf("ca source %+v", src[1])
		}
		if d := src[2].DownwardAPI; d == nil || len(d.Items) != 1 || d.Items[0].Path != "namespace" || d.Items[0].FieldRef.FieldPath != "metadata.namespace" {
			t.Errorf("namespace source %+v", src[2])
		}
		if v.Projected.DefaultMode == nil || *v.Projected.DefaultMode != 0o644 {
			t.Errorf("defaultMode %v", v.Projected.DefaultMode)
		}
		for _, c := range append(got.Spec.InitContainers, got.Spec.Containers...) {
			m := mountsAt(c, saMountPath)
			if len(m) != 1 || m[0].Name != v.Name || !m[0].ReadOnly {
				t.Errorf("container %s mounts %+v", c.Name, c.VolumeMounts)
			}
		}
	})

	t.Run("a container's own mount there is kept", func(t *testing.T) {
		p := newPod("own-mount", nil)
		p.Spec.Volumes = []corev1.Volume{{Name: "mine", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: saMountPath}}
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Image: "busybox"})
		got, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if m := mountsAt(got.Spec.Containers[0], saMountPath); len(m) != 1 || m[0].Name != "mine" {
			t.Errorf("container c mounts %+v", got.Spec.Containers[0].VolumeMounts)
		}
		if v := tokenVolume(got); v == nil || len(mountsAt(got.Spec.Containers[1], saMountPath)) != 1 {
			t.Errorf("side container not given the token: %+v", got.Spec)
		}
	})

	t.Run("not mounted", func(t *testing.T) {
		for name, mod := range map[string]func(*corev1.Pod){
			"pod says no":                    func(p *corev1.Pod) { p.Spec.AutomountServiceAccountToken = &no },
			"service account says no":        func(p *corev1.Pod) { p.Spec.ServiceAccountName = "quiet" },
			"deprecated field names the one": func(p *corev1.Pod) { p.Spec.DeprecatedServiceAccount = "quiet" },
		} {
			p := newPod("off-"+strings.ReplaceAll(name, " ", "-"), nil)
			mod(p)
			got, err := pods.Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if v := tokenVolume(got); v != nil || len(got.Spec.Containers[0].VolumeMounts) != 0 {
				t.Errorf("%s: mounted anyway: %+v", name, got.Spec)
			}
		}
	})

	t.Run("the pod overrides its service account", func(t *testing.T) {
		p := newPod("on-anyway", nil)
		p.Spec.ServiceAccountName = "quiet"
		p.Spec.AutomountServiceAccountToken = &yes
		got, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if tokenVolume(got) == nil {
			t.Errorf("not mounted")
		}
	})

	t.Run("image pull secrets from the service account", func(t *testing.T) {
		p := newPod("pulls", nil)
		p.Spec.ServiceAccountName = "puller"
		got, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.ImagePullSecrets) != 1 || got.Spec.ImagePullSecrets[0].Name != "regcred" {
			t.Errorf("imagePullSecrets %v", got.Spec.ImagePullSecrets)
		}
	})

	t.Run("missing service account is forbidden", func(t *testing.T) {
		p := newPod("orphan", nil)
		p.Spec.ServiceAccountName = "ghost"
		_, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "error looking up service account default/ghost") {
			t.Fatalf("want 403 error looking up service account, got %v", err)
		}
	})

	t.Run("an existing token volume is not doubled", func(t *testing.T) {
		first, err := pods.Get(ctx, "plain", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := first.DeepCopy()
		p.ObjectMeta = metav1.ObjectMeta{Name: "copy"}
		got, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, v := range got.Spec.Volumes {
			if strings.HasPrefix(v.Name, "kube-api-access-") {
				n++
			}
		}
		if n != 1 || tokenVolume(got).Name != tokenVolume(first).Name || len(mountsAt(got.Spec.Containers[0], saMountPath)) != 1 {
			t.Errorf("copy: %+v", got.Spec)
		}
	})

	t.Run("a user's serviceAccountToken projection is accepted", func(t *testing.T) {
		p := newPod("own-token", nil)
		exp := int64(7200)
		p.Spec.Volumes = []corev1.Volume{{Name: "vault-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "vault", Path: "token", ExpirationSeconds: &exp}}},
		}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "vault-token", MountPath: "/var/run/vault"}}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	})
}

// Without a signing key nothing could fill the volume, so none is added;
// the service account is still defaulted and checked.
func TestServiceAccountAdmissionWithoutKey(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	got, err := s.Client.CoreV1().Pods("default").Create(ctx, newPod("p", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.ServiceAccountName != "default" || tokenVolume(got) != nil || len(got.Spec.Containers[0].VolumeMounts) != 0 {
		t.Errorf("spec %+v", got.Spec)
	}
	p := newPod("q", nil)
	p.Spec.ServiceAccountName = "ghost"
	if _, err := s.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("want 403, got %v", err)
	}
}
