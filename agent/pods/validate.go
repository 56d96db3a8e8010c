package pods

import (
	"fmt"
	"reflect"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// unsupported says what of the pod this package cannot do ("" when it can
// do everything). The API refuses such pods up front; this is the agent's
// own guard, so that a pod that slipped through fails cleanly rather than
// half-runs.
func unsupported(pod *corev1.Pod) string {
	var why []string
	for _, v := range pod.Spec.Volumes {
		srcs := volumeSources(v.VolumeSource)
		switch {
		case len(srcs) != 1:
			why = append(why, fmt.Sprintf("volume %q must set exactly one source", v.Name))
		case !supportedVolume[srcs[0]]:
			why = append(why, fmt.Sprintf("volume %q: type %s is not supported", v.Name, srcs[0]))
		case v.EmptyDir != nil && v.EmptyDir.Medium != corev1.StorageMediumDefault && v.EmptyDir.Medium != corev1.StorageMediumMemory:
			why = append(why, fmt.Sprintf("volume %q: emptyDir medium %s is not supported", v.Name, v.EmptyDir.Medium))
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.ClusterTrustBundle != nil || s.PodCertificate != nil {
					why = append(why, fmt.Sprintf("volume %q: this projected source is not supported", v.Name))
				}
			}
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil {
			why = append(why, fmt.Sprintf("init container %q: restartPolicy (sidecar containers) is not supported", c.Name))
		}
		why = append(why, containerUnsupported(c)...)
	}
	for _, c := range pod.Spec.Containers {
		why = append(why, containerUnsupported(c)...)
	}
	if len(pod.Spec.EphemeralContainers) > 0 {
		why = append(why, "ephemeral containers are not supported")
	}
	if len(why) == 0 {
		return ""
	}
	return "Flotilla's agent cannot run this pod: " + strings.Join(why, "; ")
}

func containerUnsupported(c corev1.Container) []string {
	var why []string
	for kind, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p != nil && p.GRPC != nil {
			why = append(why, fmt.Sprintf("container %q: gRPC %s probes are not supported", c.Name, kind))
		}
	}
	if l := c.Lifecycle; l != nil {
		for hook, h := range map[string]*corev1.LifecycleHandler{"postStart": l.PostStart, "preStop": l.PreStop} {
			if h != nil && h.TCPSocket != nil {
				why = append(why, fmt.Sprintf("container %q: %s tcpSocket hooks are not supported", c.Name, hook))
			}
		}
	}
	for _, vm := range c.VolumeMounts {
		if vm.MountPropagation != nil && *vm.MountPropagation != corev1.MountPropagationNone {
			why = append(why, fmt.Sprintf("container %q: mount propagation %s is not supported", c.Name, *vm.MountPropagation))
		}
	}
	return why
}

var supportedVolume = map[string]bool{
	"emptyDir": true, "configMap": true, "secret": true, "hostPath": true, "projected": true, "downwardAPI": true,
}

// volumeSources lists the json names of the sources a volume sets.
func volumeSources(src corev1.VolumeSource) []string {
	var out []string
	v := reflect.ValueOf(src)
	t := v.Type()
	for i := 0; i < v.NumField(); i++ {
		if f := v.Field(i); f.Kind() == reflect.Pointer && !f.IsNil() {
			out = append(out, strings.Split(t.Field(i).Tag.Get("json"), ",")[0])
		}
	}
	return out
}
