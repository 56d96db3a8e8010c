package api

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// DefaultNamespaces are the namespaces every cluster has.
var DefaultNamespaces = []string{"default", "kube-system", "kube-public", "kube-node-lease"}

// EnsureDefaults creates what every cluster has, when missing: the default
// namespaces, the default/kubernetes Service on the first ClusterIP and the
// default RBAC ClusterRoles and ClusterRoleBindings (rbac_defaults.go). It
// is idempotent and never overwrites an existing object; the leader calls it
// once per term.
func (s *Server) EnsureDefaults(ctx context.Context) error {
	nsRes := s.reg.lookup("", "v1", "namespaces")
	for _, name := range DefaultNamespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelMetadataName: name}}}
		if _, err := s.createObject(ctx, nsRes, "", ns, false); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("ensure namespace %s: %w", name, err)
		}
	}
	svcRes := s.reg.lookup("", "v1", "services")
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{
			"component": "apiserver", "provider": "kubernetes",
		}},
		Spec: corev1.ServiceSpec{
			ClusterIP: s.alloc.reservedIP().String(),
			Ports: []corev1.ServicePort{{
				Name: "https", Port: 443, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(s.cfg.APIPort)),
			}},
		},
	}
	if _, err := s.createObject(ctx, svcRes, "default", svc, false); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("ensure service default/kubernetes: %w", err)
	}
	return s.ensureRBACDefaults(ctx)
}
