package api

import (
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// RBAC: rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding and
// ClusterRoleBinding, served by the generic handlers like every other
// resource and stored under /rbac.authorization.k8s.io/<plural>/... The api
// package only stores them; the authorizer (api/auth) reads them from the
// local store. Defaulting and validation follow kube-apiserver's rbac
// strategy, with two Flotilla decisions:
//
//   - A ServiceAccount subject of a RoleBinding without a namespace gets the
//     binding's namespace written in (kube leaves it empty and the
//     authorizer reads it as the binding's namespace); storing it makes the
//     object say what it grants, and the authorizer needs no special case.
//   - ClusterRole aggregationRule is refused (422): no controller aggregates
//     roles here, and a field that would be silently ignored is refused
//     everywhere in this API. The default admin, edit and view roles carry
//     their rules directly instead (rbac_defaults.go).

// rbacName validates RBAC object names as kube does: any string that is a
// safe URL path segment (so "system:node" is a valid name).
func rbacName(name string, prefix bool) []string {
	if prefix {
		return content.IsPathSegmentPrefix(name)
	}
	return content.IsPathSegmentName(name)
}

func validateRole(o object) field.ErrorList {
	return validateRules(o.(*rbacv1.Role).Rules, true, field.NewPath("rules"))
}

func validateClusterRole(o object) field.ErrorList {
	cr := o.(*rbacv1.ClusterRole)
	errs := validateRules(cr.Rules, false, field.NewPath("rules"))
	if cr.AggregationRule != nil {
		errs = append(errs, unsupported(field.NewPath("aggregationRule"), "ClusterRole aggregation"))
	}
	return errs
}

// validateRules checks policy rules as kube's ValidatePolicyRule does: every
// rule needs verbs; a resource rule needs apiGroups and resources; a
// non-resource rule is allowed only in a ClusterRole and names no resources.
func validateRules(rules []rbacv1.PolicyRule, namespaced bool, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, r := range rules {
		p := path.Index(i)
		if len(r.Verbs) == 0 {
			errs = append(errs, field.Required(p.Child("verbs"), "verbs must contain at least one value"))
		}
		if len(r.NonResourceURLs) > 0 {
			if namespaced {
				errs = append(errs, field.Invalid(p.Child("nonResourceURLs"), r.NonResourceURLs, "namespaced rules cannot apply to non-resource URLs"))
			}
			if len(r.APIGroups) > 0 || len(r.Resources) > 0 || len(r.ResourceNames) > 0 {
				errs = append(errs, field.Invalid(p.Child("nonResourceURLs"), r.NonResourceURLs, "rules cannot apply to both regular resources and non-resource URLs"))
			}
			continue
		}
		if len(r.APIGroups) == 0 {
			errs = append(errs, field.Required(p.Child("apiGroups"), "resource rules must supply at least one api group"))
		}
		if len(r.Resources) == 0 {
			errs = append(errs, field.Required(p.Child("resources"), "resource rules must supply at least one resource"))
		}
	}
	return errs
}

// defaultRoleBinding fills roleRef.apiGroup and the subjects' apiGroups as
// kube's v1 defaults do, and a ServiceAccount subject's namespace (see above).
func defaultRoleBinding(o object) {
	rb := o.(*rbacv1.RoleBinding)
	defaultRoleRef(&rb.RoleRef)
	defaultSubjects(rb.Subjects, rb.Namespace)
}

func defaultClusterRoleBinding(o object) {
	crb := o.(*rbacv1.ClusterRoleBinding)
	defaultRoleRef(&crb.RoleRef)
	defaultSubjects(crb.Subjects, "")
}

func defaultRoleRef(ref *rbacv1.RoleRef) {
	if ref.APIGroup == "" {
		ref.APIGroup = rbacv1.GroupName
	}
}

// defaultSubjects: User and Group default to the rbac group, as in kube;
// ns (the RoleBinding's namespace, "" for a ClusterRoleBinding) fills a
// ServiceAccount's missing namespace.
func defaultSubjects(subjects []rbacv1.Subject, ns string) {
	for i := range subjects {
		s := &subjects[i]
		switch s.Kind {
		case rbacv1.UserKind, rbacv1.GroupKind:
			if s.APIGroup == "" {
				s.APIGroup = rbacv1.GroupName
			}
		case rbacv1.ServiceAccountKind:
			if s.Namespace == "" {
				s.Namespace = ns
			}
		}
	}
}

func validateRoleBinding(o object) field.ErrorList {
	rb := o.(*rbacv1.RoleBinding)
	return validateBinding(rb.RoleRef, rb.Subjects, []string{"Role", "ClusterRole"})
}

func validateClusterRoleBinding(o object) field.ErrorList {
	crb := o.(*rbacv1.ClusterRoleBinding)
	return validateBinding(crb.RoleRef, crb.Subjects, []string{"ClusterRole"})
}

// validateBinding checks roleRef (group, kind among kinds, name) and every
// subject. A ServiceAccount subject always needs a namespace here: a
// RoleBinding's was defaulted to its own.
func validateBinding(ref rbacv1.RoleRef, subjects []rbacv1.Subject, kinds []string) field.ErrorList {
	var errs field.ErrorList
	rp := field.NewPath("roleRef")
	if ref.APIGroup != rbacv1.GroupName {
		errs = append(errs, field.NotSupported(rp.Child("apiGroup"), ref.APIGroup, []string{rbacv1.GroupName}))
	}
	kindOK := false
	for _, k := range kinds {
		kindOK = kindOK || ref.Kind == k
	}
	if !kindOK {
		errs = append(errs, field.NotSupported(rp.Child("kind"), ref.Kind, kinds))
	}
	if ref.Name == "" {
		errs = append(errs, field.Required(rp.Child("name"), ""))
	} else {
		for _, msg := range rbacName(ref.Name, false) {
			errs = append(errs, field.Invalid(rp.Child("name"), ref.Name, msg))
		}
	}
	sp := field.NewPath("subjects")
	for i, s := range subjects {
		p := sp.Index(i)
		if s.Name == "" {
			errs = append(errs, field.Required(p.Child("name"), ""))
		}
		switch s.Kind {
		case rbacv1.ServiceAccountKind:
			if s.Name != "" {
				for _, msg := range dnsSubdomain(s.Name, false) {
					errs = append(errs, field.Invalid(p.Child("name"), s.Name, msg))
				}
			}
			if s.APIGroup != "" {
				errs = append(errs, field.NotSupported(p.Child("apiGroup"), s.APIGroup, []string{""}))
			}
			if s.Namespace == "" {
				errs = append(errs, field.Required(p.Child("namespace"), ""))
			}
		case rbacv1.UserKind, rbacv1.GroupKind:
			if s.APIGroup != rbacv1.GroupName {
				errs = append(errs, field.NotSupported(p.Child("apiGroup"), s.APIGroup, []string{rbacv1.GroupName}))
			}
		default:
			errs = append(errs, field.NotSupported(p.Child("kind"), s.Kind,
				[]string{rbacv1.ServiceAccountKind, rbacv1.UserKind, rbacv1.GroupKind}))
		}
	}
	return errs
}

// roleRef is immutable: changing what a binding grants means a new binding,
// so that a watcher (the authorizer's cache, an auditor) never sees one
// binding mean two different roles.
func validateRoleBindingUpdate(o, old object) field.ErrorList {
	return validateRoleRefUpdate(o.(*rbacv1.RoleBinding).RoleRef, old.(*rbacv1.RoleBinding).RoleRef)
}

func validateClusterRoleBindingUpdate(o, old object) field.ErrorList {
	return validateRoleRefUpdate(o.(*rbacv1.ClusterRoleBinding).RoleRef, old.(*rbacv1.ClusterRoleBinding).RoleRef)
}

func validateRoleRefUpdate(ref, old rbacv1.RoleRef) field.ErrorList {
	if ref != old {
		return field.ErrorList{field.Invalid(field.NewPath("roleRef"), ref, "cannot change roleRef")}
	}
	return nil
}
