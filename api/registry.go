package api

import (
	"reflect"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// object is what every served type is: a runtime.Object with ObjectMeta.
type object interface {
	runtime.Object
	metav1.Object
}

// resource describes one served resource. The handlers are generic; every
// difference between resources is a field here.
type resource struct {
	gvk        schema.GroupVersionKind
	plural     string
	singular   string
	shortNames []string
	categories []string
	namespaced bool
	listKind   string

	newObj  func() object
	newList func() runtime.Object

	// nameFn validates metadata.name (DNS-1123 subdomain or label).
	nameFn apivalidation.ValidateNameFunc
	// hasStatus: the type has a Status field split off into the status
	// subresource: writes to the object keep the stored status and writes
	// to /status change only status.
	hasStatus bool
	// statusOnCreate: keep the client's status on create (nodes, whose agent
	// registers them with status); otherwise status is reset on create.
	statusOnCreate bool
	// generation: metadata.generation starts at 1 and bumps when Spec changes.
	generation bool
	// scale: serves the scale subresource (spec.replicas).
	scale bool
	// createOnUpdate: PUT of a missing object creates it.
	createOnUpdate bool
	// subresources served beyond status and scale, e.g. "binding".
	subresources []string

	// prepareCreate resets server-owned fields of a new object (after the
	// generic metadata stamping, before defaulting).
	prepareCreate func(obj object)
	// defaults fills defaults as kube-apiserver does for the fields we serve.
	defaults func(obj object)
	// validate checks a new object; validateUpdate checks an update against
	// the stored object (immutable fields). Metadata is validated generically.
	validate       func(obj object) field.ErrorList
	validateUpdate func(obj, old object) field.ErrorList
	// fields returns the field-selector fields beyond metadata.name and
	// metadata.namespace; their keys are the supported selector fields.
	fields func(obj object) fields.Set

	// review makes the resource a review (SelfSubjectAccessReview,
	// SelfSubjectReview): create is its only verb, nothing is stored, and
	// the answer is what review returns for the decoded request (selfreview.go).
	review func(q *request, obj object) (runtime.Object, error)
}

// group is the key segment of the group: core for the legacy group.
func (r *resource) group() string {
	if r.gvk.Group == "" {
		return "core"
	}
	return r.gvk.Group
}

// gvr is the group-version-resource.
func (r *resource) gvr() schema.GroupVersionResource {
	return r.gvk.GroupVersion().WithResource(r.plural)
}

// groupResource names the resource in errors, as apierrors wants.
func (r *resource) groupResource() schema.GroupResource {
	return schema.GroupResource{Group: r.gvk.Group, Resource: r.plural}
}

// key is the FSM key of one object.
func (r *resource) key(ns, name string) string {
	if r.namespaced {
		return "/" + r.group() + "/" + r.plural + "/" + ns + "/" + name
	}
	return "/" + r.group() + "/" + r.plural + "/" + name
}

// prefix is the FSM key prefix of a list: one namespace, or all of them ("").
// It always ends in "/" so that namespace "a" does not match "ab".
func (r *resource) prefix(ns string) string {
	if r.namespaced && ns != "" {
		return "/" + r.group() + "/" + r.plural + "/" + ns + "/"
	}
	return "/" + r.group() + "/" + r.plural + "/"
}

// hasSub reports whether the resource serves subresource sub.
func (r *resource) hasSub(sub string) bool {
	switch sub {
	case "status":
		return r.hasStatus
	case "scale":
		return r.scale
	}
	for _, s := range r.subresources {
		if s == sub {
			return true
		}
	}
	return false
}

// selectableFields is the field set of obj for field selectors.
func (r *resource) selectableFields(obj object) fields.Set {
	set := fields.Set{"metadata.name": obj.GetName()}
	if r.namespaced {
		set["metadata.namespace"] = obj.GetNamespace()
	}
	if r.fields != nil {
		for k, v := range r.fields(obj) {
			set[k] = v
		}
	}
	return set
}

// supportsField reports whether a field selector may name field.
func (r *resource) supportsField(name string) bool {
	if name == "metadata.name" || name == "metadata.namespace" {
		return true
	}
	if r.fields == nil {
		return false
	}
	_, ok := r.fields(r.newObj())[name]
	return ok
}

// Reflection helpers for the Spec/Status split: every served type with a
// status has fields named Spec and Status, so one helper serves them all.

func fieldOf(obj runtime.Object, name string) reflect.Value {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return reflect.Value{}
	}
	return v.Elem().FieldByName(name)
}

// copyField sets dst.name = src.name (a deep copy is the caller's business:
// src is always a freshly decoded object no one else holds).
func copyField(dst, src runtime.Object, name string) {
	d, s := fieldOf(dst, name), fieldOf(src, name)
	if d.IsValid() && s.IsValid() && d.CanSet() {
		d.Set(s)
	}
}

// specEqual reports whether a and b have the same Spec (true when there is none).
func specEqual(a, b runtime.Object) bool {
	sa, sb := fieldOf(a, "Spec"), fieldOf(b, "Spec")
	if !sa.IsValid() || !sb.IsValid() {
		return true
	}
	return reflect.DeepEqual(sa.Interface(), sb.Interface())
}

// registry is the set of served resources.
type registry struct {
	all []*resource
	// byGVR maps "group/version/plural" to the resource.
	byGVR map[string]*resource
}

func newRegistry(rs []*resource) *registry {
	reg := &registry{all: rs, byGVR: map[string]*resource{}}
	for _, r := range rs {
		reg.byGVR[r.gvk.Group+"/"+r.gvk.Version+"/"+r.plural] = r
	}
	return reg
}

func (reg *registry) lookup(group, version, plural string) *resource {
	return reg.byGVR[group+"/"+version+"/"+plural]
}

// groupVersions returns the served group-versions, core first.
func (reg *registry) groupVersions() []schema.GroupVersion {
	seen := map[schema.GroupVersion]bool{}
	var out []schema.GroupVersion
	for _, r := range reg.all {
		gv := r.gvk.GroupVersion()
		if !seen[gv] {
			seen[gv] = true
			out = append(out, gv)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if (out[i].Group == "") != (out[j].Group == "") {
			return out[i].Group == ""
		}
		return out[i].String() < out[j].String()
	})
	return out
}

func (reg *registry) inGroupVersion(gv schema.GroupVersion) []*resource {
	var out []*resource
	for _, r := range reg.all {
		if r.gvk.GroupVersion() == gv {
			out = append(out, r)
		}
	}
	return out
}

// verbs lists the verbs of a resource (or of one subresource) for discovery.
func (r *resource) verbs(sub string) []string {
	switch sub {
	case "":
		if r.review != nil {
			return []string{"create"}
		}
		return []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
	case "status", "scale", "finalize":
		if sub == "finalize" {
			return []string{"update"}
		}
		return []string{"get", "patch", "update"}
	case "binding", "eviction":
		return []string{"create"}
	case "log":
		return []string{"get"}
	case "exec", "attach", "portforward":
		return []string{"create", "get"}
	case "proxy":
		// kube-apiserver also lists delete; Flotilla's proxy carries
		// GET, POST, PUT and PATCH.
		return []string{"create", "get", "patch", "update"}
	}
	return nil
}

// subKind is the kind a subresource speaks.
func (r *resource) subKind(sub string) (group, version, kind string) {
	switch sub {
	case "scale":
		return "autoscaling", "v1", "Scale"
	case "binding":
		return "", "v1", "Binding"
	case "eviction":
		return "policy", "v1", "Eviction"
	case "log":
		return "", "v1", r.gvk.Kind
	case "exec":
		return "", "v1", "PodExecOptions"
	case "attach":
		return "", "v1", "PodAttachOptions"
	case "portforward":
		return "", "v1", "PodPortForwardOptions"
	case "proxy":
		return "", "v1", r.gvk.Kind + "ProxyOptions"
	}
	return r.gvk.Group, r.gvk.Version, r.gvk.Kind
}

func dnsSubdomain(name string, prefix bool) []string {
	return apivalidation.NameIsDNSSubdomain(name, prefix)
}

func dnsLabel(name string, prefix bool) []string { return apivalidation.NameIsDNSLabel(name, prefix) }

// resources is the table of everything Flotilla serves.
func resources() []*resource {
	cgv := corev1.SchemeGroupVersion
	agv := appsv1.SchemeGroupVersion
	rgv := rbacv1.SchemeGroupVersion
	return []*resource{
		{
			gvk: cgv.WithKind("Namespace"), plural: "namespaces", singular: "namespace", shortNames: []string{"ns"},
			listKind: "NamespaceList",
			newObj:   func() object { return &corev1.Namespace{} }, newList: func() runtime.Object { return &corev1.NamespaceList{} },
			nameFn: dnsLabel, hasStatus: true, subresources: []string{"finalize"},
			prepareCreate: prepareNamespace, defaults: defaultNamespace,
			validate: validateNamespace, validateUpdate: validateNamespaceUpdate,
			fields: func(o object) fields.Set {
				return fields.Set{"status.phase": string(o.(*corev1.Namespace).Status.Phase)}
			},
		},
		{
			gvk: cgv.WithKind("Node"), plural: "nodes", singular: "node", shortNames: []string{"no"},
			listKind: "NodeList",
			newObj:   func() object { return &corev1.Node{} }, newList: func() runtime.Object { return &corev1.NodeList{} },
			nameFn: dnsSubdomain, hasStatus: true, statusOnCreate: true, subresources: []string{"proxy"},
			validate: validateNode, validateUpdate: validateNodeUpdate,
			fields: func(o object) fields.Set {
				return fields.Set{"spec.unschedulable": boolString(o.(*corev1.Node).Spec.Unschedulable)}
			},
		},
		{
			gvk: cgv.WithKind("Pod"), plural: "pods", singular: "pod", shortNames: []string{"po"}, categories: []string{"all"},
			namespaced: true, listKind: "PodList",
			newObj: func() object { return &corev1.Pod{} }, newList: func() runtime.Object { return &corev1.PodList{} },
			nameFn: dnsSubdomain, hasStatus: true, generation: true,
			subresources:  []string{"binding", "eviction", "log", "exec", "attach", "portforward"},
			prepareCreate: preparePod, defaults: func(o object) { defaultPod(o.(*corev1.Pod)) },
			validate: validatePod, validateUpdate: validatePodUpdate,
			fields: podFields,
		},
		{
			gvk: cgv.WithKind("Service"), plural: "services", singular: "service", shortNames: []string{"svc"}, categories: []string{"all"},
			namespaced: true, listKind: "ServiceList",
			newObj: func() object { return &corev1.Service{} }, newList: func() runtime.Object { return &corev1.ServiceList{} },
			nameFn: apivalidation.NameIsDNS1035Label, hasStatus: true,
			prepareCreate: func(o object) { o.(*corev1.Service).Status = corev1.ServiceStatus{} },
			defaults:      func(o object) { defaultService(o.(*corev1.Service)) },
			validate:      validateService, validateUpdate: validateServiceUpdate,
			fields: func(o object) fields.Set {
				s := o.(*corev1.Service)
				return fields.Set{"spec.clusterIP": s.Spec.ClusterIP, "spec.type": string(s.Spec.Type)}
			},
		},
		{
			gvk: cgv.WithKind("Endpoints"), plural: "endpoints", singular: "endpoints", shortNames: []string{"ep"},
			namespaced: true, listKind: "EndpointsList", createOnUpdate: true,
			newObj: func() object { return &corev1.Endpoints{} }, newList: func() runtime.Object { return &corev1.EndpointsList{} },
			nameFn: dnsSubdomain, defaults: func(o object) { defaultEndpoints(o.(*corev1.Endpoints)) },
			validate: validateEndpoints,
		},
		{
			gvk: cgv.WithKind("ServiceAccount"), plural: "serviceaccounts", singular: "serviceaccount", shortNames: []string{"sa"},
			namespaced: true, listKind: "ServiceAccountList",
			newObj: func() object { return &corev1.ServiceAccount{} }, newList: func() runtime.Object { return &corev1.ServiceAccountList{} },
			nameFn: dnsSubdomain, subresources: []string{"token"},
		},
		{
			gvk: cgv.WithKind("ConfigMap"), plural: "configmaps", singular: "configmap", shortNames: []string{"cm"},
			namespaced: true, listKind: "ConfigMapList",
			newObj: func() object { return &corev1.ConfigMap{} }, newList: func() runtime.Object { return &corev1.ConfigMapList{} },
			nameFn: dnsSubdomain, validate: validateConfigMap, validateUpdate: validateConfigMapUpdate,
		},
		{
			gvk: cgv.WithKind("Secret"), plural: "secrets", singular: "secret",
			namespaced: true, listKind: "SecretList",
			newObj: func() object { return &corev1.Secret{} }, newList: func() runtime.Object { return &corev1.SecretList{} },
			nameFn: dnsSubdomain, defaults: func(o object) { defaultSecret(o.(*corev1.Secret)) },
			validate: validateSecret, validateUpdate: validateSecretUpdate,
			fields: func(o object) fields.Set { return fields.Set{"type": string(o.(*corev1.Secret).Type)} },
		},
		{
			gvk: cgv.WithKind("Event"), plural: "events", singular: "event", shortNames: []string{"ev"},
			namespaced: true, listKind: "EventList", createOnUpdate: true,
			newObj: func() object { return &corev1.Event{} }, newList: func() runtime.Object { return &corev1.EventList{} },
			nameFn: dnsSubdomain, validate: validateEvent, fields: eventFields,
		},
		{
			gvk: agv.WithKind("Deployment"), plural: "deployments", singular: "deployment", shortNames: []string{"deploy"},
			categories: []string{"all"}, namespaced: true, listKind: "DeploymentList",
			newObj: func() object { return &appsv1.Deployment{} }, newList: func() runtime.Object { return &appsv1.DeploymentList{} },
			nameFn: dnsSubdomain, hasStatus: true, generation: true, scale: true,
			prepareCreate: func(o object) { o.(*appsv1.Deployment).Status = appsv1.DeploymentStatus{} },
			defaults:      func(o object) { defaultDeployment(o.(*appsv1.Deployment)) },
			validate:      validateDeployment, validateUpdate: validateDeploymentUpdate,
		},
		{
			gvk: agv.WithKind("ReplicaSet"), plural: "replicasets", singular: "replicaset", shortNames: []string{"rs"},
			categories: []string{"all"}, namespaced: true, listKind: "ReplicaSetList",
			newObj: func() object { return &appsv1.ReplicaSet{} }, newList: func() runtime.Object { return &appsv1.ReplicaSetList{} },
			nameFn: dnsSubdomain, hasStatus: true, generation: true, scale: true,
			prepareCreate: func(o object) { o.(*appsv1.ReplicaSet).Status = appsv1.ReplicaSetStatus{} },
			defaults:      func(o object) { defaultReplicaSet(o.(*appsv1.ReplicaSet)) },
			validate:      validateReplicaSet, validateUpdate: validateReplicaSetUpdate,
			fields: func(o object) fields.Set {
				return fields.Set{"status.replicas": itoa(int64(o.(*appsv1.ReplicaSet).Status.Replicas))}
			},
		},
		{
			gvk: rgv.WithKind("Role"), plural: "roles", singular: "role",
			namespaced: true, listKind: "RoleList",
			newObj: func() object { return &rbacv1.Role{} }, newList: func() runtime.Object { return &rbacv1.RoleList{} },
			nameFn: rbacName, validate: validateRole,
		},
		{
			gvk: rgv.WithKind("ClusterRole"), plural: "clusterroles", singular: "clusterrole",
			listKind: "ClusterRoleList",
			newObj:   func() object { return &rbacv1.ClusterRole{} }, newList: func() runtime.Object { return &rbacv1.ClusterRoleList{} },
			nameFn: rbacName, validate: validateClusterRole,
		},
		{
			gvk: rgv.WithKind("RoleBinding"), plural: "rolebindings", singular: "rolebinding",
			namespaced: true, listKind: "RoleBindingList",
			newObj: func() object { return &rbacv1.RoleBinding{} }, newList: func() runtime.Object { return &rbacv1.RoleBindingList{} },
			nameFn: rbacName, defaults: defaultRoleBinding,
			validate: validateRoleBinding, validateUpdate: validateRoleBindingUpdate,
		},
		{
			gvk: rgv.WithKind("ClusterRoleBinding"), plural: "clusterrolebindings", singular: "clusterrolebinding",
			listKind: "ClusterRoleBindingList",
			newObj:   func() object { return &rbacv1.ClusterRoleBinding{} }, newList: func() runtime.Object { return &rbacv1.ClusterRoleBindingList{} },
			nameFn: rbacName, defaults: defaultClusterRoleBinding,
			validate: validateClusterRoleBinding, validateUpdate: validateClusterRoleBindingUpdate,
		},
		{
			gvk: selfSubjectAccessReviewGVK, plural: "selfsubjectaccessreviews", singular: "selfsubjectaccessreview",
			newObj: func() object { return &authorizationv1.SelfSubjectAccessReview{} },
			review: (*request).selfSubjectAccessReview,
		},
		{
			gvk: selfSubjectReviewGVK, plural: "selfsubjectreviews", singular: "selfsubjectreview",
			newObj: func() object { return &authenticationv1.SelfSubjectReview{} },
			review: (*request).selfSubjectReview,
		},
	}
}

func podFields(o object) fields.Set {
	p := o.(*corev1.Pod)
	return fields.Set{
		"spec.nodeName":            p.Spec.NodeName,
		"spec.restartPolicy":       string(p.Spec.RestartPolicy),
		"spec.schedulerName":       p.Spec.SchedulerName,
		"spec.serviceAccountName":  p.Spec.ServiceAccountName,
		"spec.hostNetwork":         boolString(p.Spec.HostNetwork),
		"status.phase":             string(p.Status.Phase),
		"status.podIP":             p.Status.PodIP,
		"status.nominatedNodeName": p.Status.NominatedNodeName,
	}
}

func eventFields(o object) fields.Set {
	e := o.(*corev1.Event)
	source := e.Source.Component
	if source == "" {
		source = e.ReportingController
	}
	return fields.Set{
		"involvedObject.kind":            e.InvolvedObject.Kind,
		"involvedObject.namespace":       e.InvolvedObject.Namespace,
		"involvedObject.name":            e.InvolvedObject.Name,
		"involvedObject.uid":             string(e.InvolvedObject.UID),
		"involvedObject.apiVersion":      e.InvolvedObject.APIVersion,
		"involvedObject.resourceVersion": e.InvolvedObject.ResourceVersion,
		"involvedObject.fieldPath":       e.InvolvedObject.FieldPath,
		"reason":                         e.Reason,
		"reportingComponent":             e.ReportingController,
		"source":                         source,
		"type":                           e.Type,
	}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}
