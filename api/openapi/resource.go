package openapi

import (
	"fmt"
	"reflect"
	"slices"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
)

// Resource is one served resource, as discovery lists it.
type Resource struct {
	Group, Version, Kind string
	// Plural is the resource name in URLs, e.g. "pods".
	Plural string
	// Namespaced resources live under /namespaces/{namespace}/ and also get
	// a list across all namespaces.
	Namespaced bool
	// Verbs are discovery verbs: get, list, watch, create, update, patch,
	// delete, deletecollection. Empty means all of them.
	Verbs []string
	// Subresources served under /{name}/: status, scale, binding, eviction,
	// log, exec, attach, portforward, proxy. Their shapes are the same for
	// every resource (scale is always autoscaling/v1 Scale), so a name is
	// enough; an unknown name is an error rather than a guess.
	Subresources []string
	// Object is a pointer to the served Go type, e.g. &corev1.Pod{}. Nil
	// means: look the kind up in client-go's scheme.
	Object runtime.Object
	// List is a pointer to the list type, e.g. &corev1.PodList{}. Nil means:
	// look Kind+"List" up in client-go's scheme; without the list verb
	// there is none.
	List runtime.Object
}

// GroupVersionKind is the resource's kind.
func (r Resource) GroupVersionKind() schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: r.Kind}
}

// allVerbs is what an empty Resource.Verbs means, in discovery's order.
var allVerbs = []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}

// subresource is the shape of one subresource. Kubernetes gives each name the
// same shape on every resource that has it, which is why Resource only lists
// names.
type subresource struct {
	// methods documented on /{name}/<sub>: get, put, patch, post.
	methods []string
	// same: the bodies are the parent's own type (status).
	same bool
	// object makes the body type when it is another kind (Scale, Binding,
	// Eviction). Without same or object the response is text or a stream.
	object func() runtime.Object
	// options is the suffix of the kind whose fields are the query
	// parameters, e.g. "LogOptions": PodLogOptions for pods.
	options string
	// action is "connect" for streams (exec, attach, ...), whose operations
	// carry the options kind, as kube-apiserver's do.
	action string
}

var subresources = map[string]subresource{
	"status":      {methods: []string{"get", "put", "patch"}, same: true},
	"scale":       {methods: []string{"get", "put", "patch"}, object: func() runtime.Object { return &autoscalingv1.Scale{} }},
	"binding":     {methods: []string{"post"}, object: func() runtime.Object { return &corev1.Binding{} }},
	"eviction":    {methods: []string{"post"}, object: func() runtime.Object { return &policyv1.Eviction{} }},
	"log":         {methods: []string{"get"}, options: "LogOptions"},
	"exec":        {methods: []string{"get", "post"}, options: "ExecOptions", action: "connect"},
	"attach":      {methods: []string{"get", "post"}, options: "AttachOptions", action: "connect"},
	"portforward": {methods: []string{"get", "post"}, options: "PortForwardOptions", action: "connect"},
	"proxy":       {methods: []string{"get", "post"}, options: "ProxyOptions", action: "connect"},
}

// resource is a validated Resource with its Go types resolved.
type resource struct {
	Resource
	obj, list reflect.Type
	verbs     map[string]bool
}

func (r *resource) has(verb string) bool { return r.verbs[verb] }

// prefix is the group-version's URL prefix: /api/v1 or /apis/<group>/<version>.
func (r *resource) prefix() string { return gvPrefix(r.GroupVersionKind().GroupVersion()) }

func gvPrefix(gv schema.GroupVersion) string {
	if gv.Group == "" {
		return "/api/" + gv.Version
	}
	return "/apis/" + gv.Group + "/" + gv.Version
}

// gvKey is a group-version's key in the /openapi/v3 index: api/v1 or
// apis/<group>/<version>, what client-go's openapi3.Root looks for.
func gvKey(gv schema.GroupVersion) string { return gvPrefix(gv)[1:] }

func newResource(in Resource) (*resource, error) {
	gvk := in.GroupVersionKind()
	if in.Version == "" || in.Kind == "" || in.Plural == "" {
		return nil, fmt.Errorf("resource %+v: version, kind and plural are required", gvk)
	}
	r := &resource{Resource: in, verbs: map[string]bool{}}
	verbs := in.Verbs
	if len(verbs) == 0 {
		verbs = allVerbs
	}
	for _, v := range verbs {
		if !slices.Contains(allVerbs, v) {
			return nil, fmt.Errorf("resource %s: unknown verb %q", in.Plural, v)
		}
		r.verbs[v] = true
	}
	for _, s := range in.Subresources {
		if _, ok := subresources[s]; !ok {
			return nil, fmt.Errorf("resource %s: unknown subresource %q", in.Plural, s)
		}
	}
	var err error
	if r.obj, err = goType(in.Object, gvk); err != nil {
		return nil, fmt.Errorf("resource %s: %w", in.Plural, err)
	}
	if !r.has("list") {
		return r, nil // a review (create only) has no list kind
	}
	if r.list, err = goType(in.List, gvk.GroupVersion().WithKind(gvk.Kind+"List")); err != nil {
		return nil, fmt.Errorf("resource %s: %w", in.Plural, err)
	}
	return r, nil
}

// goType is the struct type of obj, or of kind in client-go's scheme when obj
// is nil.
func goType(obj runtime.Object, kind schema.GroupVersionKind) (reflect.Type, error) {
	if obj == nil {
		var err error
		if obj, err = scheme.Scheme.New(kind); err != nil {
			return nil, fmt.Errorf("no Go type given for %s and the scheme has none: %w", kind, err)
		}
	}
	t := reflect.TypeOf(obj)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("%s: want a pointer to a struct, got %s", kind, t)
	}
	return t.Elem(), nil
}

// optionsType is the Go type of the subresource options kind (e.g.
// PodLogOptions), or nil when the scheme has none.
func optionsType(gv schema.GroupVersion, kind string) reflect.Type {
	obj, err := scheme.Scheme.New(gv.WithKind(kind))
	if err != nil {
		return nil
	}
	return reflect.TypeOf(obj).Elem()
}
