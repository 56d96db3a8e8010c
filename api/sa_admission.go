package api

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
)

// What ServiceAccount admission puts in a pod: kube's names and layout,
// which rest.InClusterConfig and every client library read.
const (
	// defaultServiceAccountName is the ServiceAccount of a pod that names none.
	defaultServiceAccountName = "default"
	// serviceAccountVolumePrefix starts the generated volume's name.
	serviceAccountVolumePrefix = "kube-api-access-"
	// serviceAccountMountPath is where every container finds token,
	// ca.crt and namespace.
	serviceAccountMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"
	// rootCAConfigMap is the ConfigMap (key ca.crt) holding the cluster CA
	// in every namespace, kept by the rootca controller.
	rootCAConfigMap = "kube-root-ca.crt"
	// serviceAccountTokenSeconds is kube's odd lifetime for the projected
	// token (3607 s), recognisable in audits as the admission default.
	serviceAccountTokenSeconds = 3607
)

// admitPod is kube's ServiceAccount admission plugin, run on pod create
// before defaults and validation:
//
//   - spec.serviceAccountName defaults to the deprecated serviceAccount
//     field, else "default";
//   - the ServiceAccount must exist: otherwise 403 "error looking up
//     service account", as kube. Exception: a missing "default" is
//     accepted. The serviceaccount controller creates it asynchronously
//     after the namespace, and kube-apiserver would retry until it shows
//     up; Flotilla does not wait, so a pod created right after its
//     namespace is never refused or delayed. Such a pod is admitted as if
//     the ServiceAccount had no automount setting and no pull secrets;
//     its token is fetched later, when the ServiceAccount exists;
//   - the pod gets the ServiceAccount's imagePullSecrets when it has none;
//   - unless automountServiceAccountToken is false on the pod (or, when
//     the pod leaves it unset, on the ServiceAccount), the projected
//     volume kube-api-access-<random> (token, ca.crt, namespace) is added
//     and mounted read-only at serviceAccountMountPath in every container
//     and init container that has nothing mounted there yet. A pod that
//     already has a kube-api-access-* volume keeps it (a re-created copy
//     of a pod is not given two).
//
// With no Config.ServiceAccountKey no token can be issued, so no volume is
// added: mounting one would leave every pod in ContainerCreating.
func (s *Server) admitPod(ctx context.Context, pod *corev1.Pod) error {
	name := pod.Spec.ServiceAccountName
	if name == "" {
		name = pod.Spec.DeprecatedServiceAccount
	}
	if name == "" {
		name = defaultServiceAccountName
	}
	pod.Spec.ServiceAccountName = name
	var sa *corev1.ServiceAccount
	saRes := s.reg.lookup("", "v1", "serviceaccounts")
	obj, _, err := s.getFresh(ctx, saRes, pod.Namespace, name)
	switch {
	case err == nil:
		sa = obj.(*corev1.ServiceAccount)
	case apierrors.IsNotFound(err) && name == defaultServiceAccountName:
	case apierrors.IsNotFound(err):
		return apierrors.NewForbidden(s.reg.lookup("", "v1", "pods").groupResource(), pod.Name,
			fmt.Errorf("error looking up service account %s/%s: %w", pod.Namespace, name, err))
	default:
		return err
	}
	if sa != nil && len(pod.Spec.ImagePullSecrets) == 0 && len(sa.ImagePullSecrets) > 0 {
		pod.Spec.ImagePullSecrets = append([]corev1.LocalObjectReference(nil), sa.ImagePullSecrets...)
	}
	if s.cfg.ServiceAccountKey == nil || !automount(pod, sa) {
		return nil
	}
	mountServiceAccountToken(pod)
	return nil
}

// automount: the pod's setting wins, then the ServiceAccount's, then yes.
func automount(pod *corev1.Pod, sa *corev1.ServiceAccount) bool {
	if v := pod.Spec.AutomountServiceAccountToken; v != nil {
		return *v
	}
	if sa != nil && sa.AutomountServiceAccountToken != nil {
		return *sa.AutomountServiceAccountToken
	}
	return true
}

// mountServiceAccountToken adds the token volume and its mounts.
func mountServiceAccountToken(pod *corev1.Pod) {
	volName := ""
	names := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		names[v.Name] = true
		if volName == "" && strings.HasPrefix(v.Name, serviceAccountVolumePrefix) {
			volName = v.Name
		}
	}
	haveVolume := volName != ""
	for !haveVolume && (volName == "" || names[volName]) {
		volName = serviceAccountVolumePrefix + utilrand.String(5)
	}
	mount := corev1.VolumeMount{Name: volName, ReadOnly: true, MountPath: serviceAccountMountPath}
	needed := false
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if hasMountAt(&cs[i], serviceAccountMountPath) {
				continue
			}
			cs[i].VolumeMounts = append(cs[i].VolumeMounts, mount)
			needed = true
		}
	}
	if needed && !haveVolume {
		pod.Spec.Volumes = append(pod.Spec.Volumes, serviceAccountVolume(volName))
	}
}

func hasMountAt(c *corev1.Container, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath == path {
			return true
		}
	}
	return false
}

// serviceAccountVolume is kube's kube-api-access projected volume.
func serviceAccountVolume(name string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptrTo(int64(serviceAccountTokenSeconds))}},
			{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: rootCAConfigMap},
				Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
			}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
				Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"},
			}}}},
		},
		DefaultMode: ptrTo(corev1.ProjectedVolumeSourceDefaultMode),
	}}}
}
