package pods

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/testimages"
)

// Environment from values, the downward API, resources, ConfigMaps and
// Secrets; volumes (emptyDir shared through an init container, configMap
// with items and a subPath, secret, downwardAPI, projected).
func TestEnvAndVolumes(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	if _, err := h.client.CoreV1().ConfigMaps(testNS).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "conf"},
		Data:       map[string]string{"color": "blue", "app.conf": "x=1\n", "1st": "not an env name"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.CoreV1().Secrets(testNS).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "creds"},
		Data:       map[string][]byte{"password": []byte("hunter2")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.start()
	tb := testimages.ToolboxRef
	mounts := []corev1.VolumeMount{
		{Name: "shared", MountPath: "/shared"},
		{Name: "conf", MountPath: "/conf"},
		{Name: "conf", MountPath: "/etc/app.conf", SubPath: "app.conf"},
		{Name: "creds", MountPath: "/creds"},
		{Name: "info", MountPath: "/info"},
		{Name: "all", MountPath: "/all"},
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: testNS, Labels: map[string]string{"tier": "web"}},
		Spec: corev1.PodSpec{
			NodeName:      testNode,
			HostNetwork:   true,
			RestartPolicy: corev1.RestartPolicyNever,
			InitContainers: []corev1.Container{{
				Name: "writer", Image: tb, Args: []string{"write", "/shared/greeting", "hello from init"},
				VolumeMounts: []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}},
			}},
			Containers: []corev1.Container{
				{
					Name: "env", Image: tb, Args: []string{"env"},
					Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: mustQuantity("64Mi")}},
					EnvFrom: []corev1.EnvFromSource{
						{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}}},
						{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}}},
					},
					Env: []corev1.EnvVar{
						{Name: "PLAIN", Value: "plain"},
						{Name: "EXPANDED", Value: "$(PLAIN)-$(CM_color)-$(UNDEFINED)-$$(PLAIN)"},
						{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
						{Name: "POD_NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
						{Name: "POD_UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
						{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
						{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
						{Name: "TIER", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['tier']"}}},
						{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: mustQuantity("1Mi")}}},
						{Name: "COLOR", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}, Key: "color"}}},
						{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}},
						{Name: "OPTIONAL", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "x", Optional: ptr(true)}}},
					},
				},
				{Name: "shared", Image: tb, Args: []string{"cat", "/shared/greeting"}, VolumeMounts: mounts},
				{Name: "conf", Image: tb, Args: []string{"cat", "/conf/color"}, VolumeMounts: mounts},
				{Name: "subpath", Image: tb, Args: []string{"cat", "/etc/app.conf"}, VolumeMounts: mounts},
				{Name: "secret", Image: tb, Args: []string{"cat", "/creds/pw"}, VolumeMounts: mounts},
				{Name: "labels", Image: tb, Args: []string{"cat", "/info/labels"}, VolumeMounts: mounts},
				{Name: "projected", Image: tb, Args: []string{"cat", "/all/name"}, VolumeMounts: mounts},
				{Name: "readonly", Image: tb, Args: []string{"write", "/conf/new", "x"}, VolumeMounts: mounts},
			},
			Volumes: []corev1.Volume{
				{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "conf", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}}}},
				{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds", Items: []corev1.KeyToPath{{Key: "password", Path: "pw"}}}}},
				{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				}}}},
				{Name: "all", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "conf"}, Items: []corev1.KeyToPath{{Key: "color", Path: "c"}}}},
				}}}},
			},
		},
	}
	h.create(pod)
	p := h.waitPod(pod.Name, 60*time.Second, "Failed (the read-only write fails)", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	for _, c := range p.Spec.Containers {
		cs := containerStatus(p, c.Name)
		want := int32(0)
		if c.Name == "readonly" {
			want = 1
		}
		if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != want {
			t.Errorf("container %s: want exit %d:\n%s", c.Name, want, describeStatus(p))
		}
	}
	if ic := containerStatus(p, "writer"); ic.State.Terminated == nil || ic.State.Terminated.ExitCode != 0 || !ic.Ready {
		t.Errorf("init container: %s", describeStatus(p))
	}

	env := map[string]string{}
	for _, l := range h.logLines(p, "env", 0) {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	want := map[string]string{
		"PLAIN":       "plain",
		"EXPANDED":    "plain-blue-$(UNDEFINED)-$(PLAIN)",
		"POD_NAME":    "cfg",
		"POD_NS":      testNS,
		"POD_UID":     string(p.UID),
		"POD_IP":      testNodeIP,
		"NODE":        testNode,
		"TIER":        "web",
		"MEM_MI":      "64",
		"COLOR":       "blue",
		"PASSWORD":    "hunter2",
		"CM_color":    "blue",
		"CM_app.conf": "x=1",
		"CM_1st":      "not an env name",
		"color":       "blue",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if _, ok := env["1st"]; ok {
		t.Errorf("invalid env name 1st was set")
	}
	if _, ok := env["OPTIONAL"]; ok {
		t.Errorf("optional env from a missing secret was set")
	}
	if env["KUBERNETES_SERVICE_HOST"] == "" || env["KUBERNETES_SERVICE_PORT"] == "" {
		t.Errorf("service env missing: %v", keys(env))
	}
	h.waitEvent(pod.Name, "InvalidEnvironmentVariableNames", 5*time.Second)

	for name, want := range map[string]string{
		"shared":    "hello from init",
		"conf":      "blue",
		"subpath":   "x=1",
		"secret":    "hunter2",
		"labels":    `tier="web"`,
		"projected": "cfg",
	} {
		lines := h.logLines(p, name, 0)
		if strings.Join(lines, "\n") != want {
			t.Errorf("container %s printed %q, want %q", name, lines, want)
		}
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// A ConfigMap that does not exist blocks the container (env) or the pod
// (volume) with the kubelet's reasons, and the pod starts once it appears.
func TestMissingConfigMap(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	h.start()
	envPod := toolboxPod("envcm", true, "sleep", "1h")
	envPod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{
		ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "late"}, Key: "k"}}}}
	volPod := toolboxPod("volcm", true, "sleep", "1h")
	volPod.Spec.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "late"}}}}}
	volPod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "v", MountPath: "/v"}}
	h.create(envPod)
	h.create(volPod)
	h.waitPod("envcm", 30*time.Second, "CreateContainerConfigError", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == "CreateContainerConfigError" &&
			strings.Contains(cs.State.Waiting.Message, `configmap "late" not found`)
	})
	h.waitPod("volcm", 30*time.Second, "ContainerCreating", func(p *corev1.Pod) bool {
		cs := containerStatus(p, "main")
		return cs != nil && cs.State.Waiting != nil && cs.State.Waiting.Reason == "ContainerCreating"
	})
	h.waitEvent("volcm", `FailedMount: MountVolume.SetUp failed for volume "v" : configmap "late" not found`, 10*time.Second)
	if _, err := h.client.CoreV1().ConfigMaps(testNS).Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "late"}, Data: map[string]string{"k": "v"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitPod("envcm", 30*time.Second, "Running", isRunningReady)
	h.waitPod("volcm", 30*time.Second, "Running", isRunningReady)
}
