package openapi

import (
	"reflect"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// param is a path or query parameter.
type param struct {
	name, in, doc string
	typ           string // string, boolean or integer
	required      bool
}

// operation is one method on one path, in a form both dialects render from.
type operation struct {
	method string // get, put, post, patch, delete
	id     string
	doc    string
	action string // x-kubernetes-action
	gvk    *schema.GroupVersionKind
	params []param
	// body is the request body type; patch bodies are metav1.Patch in the
	// patch media types.
	body  reflect.Type
	patch bool
	// result is the response type; nil means text (logs, exec streams).
	result reflect.Type
	codes  []int
	watch  bool // the response may be a stream of watch events
	tag    string
}

type path struct {
	path   string
	params []param // shared by every operation on the path
	ops    []operation
}

// The patch media types the API accepts. kubectl apply computes a strategic
// merge patch only when the PATCH operation of a kind lists
// application/strategic-merge-patch+json.
var patchTypes = []string{
	"application/json-patch+json",
	"application/merge-patch+json",
	"application/strategic-merge-patch+json",
}

var (
	patchType         = reflect.TypeFor[metav1.Patch]()
	statusType        = reflect.TypeFor[metav1.Status]()
	deleteOptionsType = reflect.TypeFor[metav1.DeleteOptions]()
	watchEventType    = reflect.TypeFor[metav1.WatchEvent]()
	resourceListType  = reflect.TypeFor[metav1.APIResourceList]()
)

// Query parameters come from the fields of the options types, as
// kube-apiserver's own are: ListOptions gives labelSelector, watch, limit,
// continue, ...; CreateOptions, UpdateOptions and PatchOptions give dryRun,
// fieldManager and fieldValidation, whose presence on PATCH is what makes
// kubectl leave validation to the server.
var (
	listParams = optionParams(reflect.TypeFor[metav1.ListOptions]())
	// collectionParams select what deletecollection deletes; it cannot watch.
	collectionParams = slices.DeleteFunc(slices.Clone(listParams), func(p param) bool {
		return p.name == "watch" || p.name == "allowWatchBookmarks"
	})
	createParams = optionParams(reflect.TypeFor[metav1.CreateOptions]())
	updateParams = optionParams(reflect.TypeFor[metav1.UpdateOptions]())
	patchParams  = optionParams(reflect.TypeFor[metav1.PatchOptions]())
	deleteParams = optionParams(deleteOptionsType)

	prettyParam = param{
		name: "pretty", in: "query", typ: "string",
		doc: "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
	}
	namespaceParam = param{
		name: "namespace", in: "path", typ: "string", required: true,
		doc: "object name and auth scope, such as for teams and projects",
	}
)

// optionParams turns the scalar fields of an options type into query
// parameters; struct fields (DeleteOptions.preconditions) only travel in a
// body, and kind/apiVersion are not parameters.
func optionParams(t reflect.Type) []param {
	if t == nil {
		return nil
	}
	fields, err := structFields(t, 0)
	if err != nil {
		panic(err) // the options types are fixed at compile time
	}
	var out []param
	for _, f := range fields {
		if f.name == "kind" || f.name == "apiVersion" {
			continue
		}
		p := param{name: f.name, in: "query", doc: f.doc, typ: "string"}
		ft := deref(f.typ)
		switch ft.Kind() {
		case reflect.Bool:
			p.typ = "boolean"
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			p.typ = "integer"
		case reflect.Struct:
			if !implements(ft, typeNamer) { // metav1.Time is a string
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

func join(lists ...[]param) []param {
	var out []param
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// paths builds every path of one resource.
func (r *resource) paths() []path {
	gvk := r.GroupVersionKind()
	gv := gvk.GroupVersion()
	tag := tagOf(gv)
	idPart := opGroup(gv) // e.g. CoreV1, AppsV1
	ns := ""
	if r.Namespaced {
		ns = "Namespaced"
	}
	collection := r.prefix() + r.collectionSuffix()
	scopeParams := []param{prettyParam}
	if r.Namespaced {
		scopeParams = []param{namespaceParam, prettyParam}
	}
	nameParam := param{name: "name", in: "path", typ: "string", required: true, doc: "name of the " + r.Kind}
	itemParams := append([]param{nameParam}, scopeParams...)
	op := func(method, verb, doc, action string, params []param) operation {
		return operation{
			method: method, id: verb + idPart + ns + r.Kind, doc: doc, action: action,
			gvk: &gvk, params: params, result: r.obj, codes: []int{200}, tag: tag,
		}
	}

	var out []path
	coll := path{path: collection, params: scopeParams}
	if r.has("list") {
		o := op("get", "list", "list or watch objects of kind "+r.Kind, "list", listParams)
		o.result, o.watch = r.list, r.has("watch")
		coll.ops = append(coll.ops, o)
	}
	if r.has("create") {
		o := op("post", "create", "create a "+r.Kind, "post", createParams)
		o.body, o.codes = r.obj, []int{200, 201, 202}
		coll.ops = append(coll.ops, o)
	}
	if r.has("deletecollection") {
		o := op("delete", "delete", "delete collection of "+r.Kind, "deletecollection", join(deleteParams, collectionParams))
		o.id = "delete" + idPart + "Collection" + ns + r.Kind
		o.body, o.result = deleteOptionsType, statusType
		coll.ops = append(coll.ops, o)
	}
	out = appendPath(out, coll)

	item := path{path: collection + "/{name}", params: itemParams}
	if r.has("get") {
		item.ops = append(item.ops, op("get", "read", "read the specified "+r.Kind, "get", nil))
	}
	if r.has("update") {
		o := op("put", "replace", "replace the specified "+r.Kind, "put", updateParams)
		o.body, o.codes = r.obj, []int{200, 201}
		item.ops = append(item.ops, o)
	}
	if r.has("patch") {
		o := op("patch", "patch", "partially update the specified "+r.Kind, "patch", patchParams)
		o.body, o.patch, o.codes = patchType, true, []int{200, 201}
		item.ops = append(item.ops, o)
	}
	if r.has("delete") {
		o := op("delete", "delete", "delete a "+r.Kind, "delete", deleteParams)
		o.body, o.result, o.codes = deleteOptionsType, statusType, []int{200, 202}
		item.ops = append(item.ops, o)
	}
	out = appendPath(out, item)

	if r.Namespaced && r.has("list") {
		o := op("get", "list", "list or watch objects of kind "+r.Kind, "list", listParams)
		o.id = "list" + idPart + r.Kind + "ForAllNamespaces"
		o.result, o.watch = r.list, r.has("watch")
		out = appendPath(out, path{path: r.prefix() + "/" + r.Plural, params: []param{prettyParam}, ops: []operation{o}})
	}

	for _, name := range r.Subresources {
		out = appendPath(out, r.subresourcePath(name, itemParams, idPart, ns, tag))
	}
	return out
}

func (r *resource) subresourcePath(name string, params []param, gvPart, ns, tag string) path {
	sub := subresources[name]
	gvk := r.GroupVersionKind()
	title := subTitle(name)
	if sub.action == "connect" { // a stream has nothing to pretty-print
		params = slices.DeleteFunc(slices.Clone(params), func(p param) bool { return p.name == "pretty" })
	}
	p := path{path: r.prefix() + r.collectionSuffix() + "/{name}/" + name, params: params}
	idPart := gvPart + ns

	body, result := r.obj, r.obj
	if sub.object != nil {
		obj := sub.object()
		body = reflect.TypeOf(obj).Elem()
		result = body
		gvk = kindOf(obj, gvk)
	}
	var opts []param
	if !sub.same && sub.object == nil {
		body, result = nil, nil
		if t := optionsType(gvk.GroupVersion(), r.Kind+sub.options); t != nil {
			opts = optionParams(t)
			if sub.action == "connect" {
				gvk = gvk.GroupVersion().WithKind(r.Kind + sub.options)
			}
		}
	}
	for _, m := range sub.methods {
		o := operation{
			method: m, gvk: &gvk, result: result, codes: []int{200}, tag: tag, params: opts,
		}
		switch {
		case sub.action == "connect":
			o.id = "connect" + gvPart + strings.ToUpper(m[:1]) + m[1:] + ns + r.Kind + title
			o.doc = "connect " + strings.ToUpper(m) + " requests to " + name + " of " + r.Kind
			o.action = "connect"
		case m == "get":
			o.id = "read" + idPart + r.Kind + title
			o.doc = "read " + name + " of the specified " + r.Kind
			o.action = "get"
		case m == "put":
			o.id = "replace" + idPart + r.Kind + title
			o.doc = "replace " + name + " of the specified " + r.Kind
			o.action, o.body, o.params, o.codes = "put", body, updateParams, []int{200, 201}
		case m == "patch":
			o.id = "patch" + idPart + r.Kind + title
			o.doc = "partially update " + name + " of the specified " + r.Kind
			o.action, o.body, o.patch, o.params, o.codes = "patch", patchType, true, patchParams, []int{200, 201}
		case m == "post":
			o.id = "create" + idPart + r.Kind + title
			o.doc = "create " + name + " of a " + r.Kind
			o.action, o.body, o.params, o.codes = "post", body, createParams, []int{200, 201, 202}
		}
		p.ops = append(p.ops, o)
	}
	return p
}

// collectionSuffix is the collection path below the group-version prefix.
func (r *resource) collectionSuffix() string {
	if r.Namespaced {
		return "/namespaces/{namespace}/" + r.Plural
	}
	return "/" + r.Plural
}

// discoveryPath is GET /api/v1/ (the APIResourceList), which kube-apiserver
// documents in each group-version's document.
func discoveryPath(gv schema.GroupVersion) path {
	return path{path: gvPrefix(gv) + "/", ops: []operation{{
		method: "get", id: "get" + opGroup(gv) + "APIResources", doc: "get available resources",
		result: resourceListType, codes: []int{200}, tag: tagOf(gv),
	}}}
}

func appendPath(paths []path, p path) []path {
	if len(p.ops) == 0 {
		return paths
	}
	return append(paths, p)
}

// kindOf is obj's kind in client-go's scheme, or def when it has none.
func kindOf(obj runtime.Object, def schema.GroupVersionKind) schema.GroupVersionKind {
	gvks, err := schemeKinds(obj)
	if err != nil || len(gvks) == 0 {
		return def
	}
	return gvks[0]
}

// opGroup is the group-version as kube writes it in operation IDs:
// CoreV1, AppsV1, RbacAuthorizationV1.
func opGroup(gv schema.GroupVersion) string {
	g := strings.TrimSuffix(gv.Group, ".k8s.io")
	if g == "" {
		g = "core"
	}
	var b strings.Builder
	for _, part := range strings.FieldsFunc(g+"."+gv.Version, func(r rune) bool { return r == '.' || r == '-' }) {
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

// tagOf is the operation tag: core_v1, apps_v1, rbacAuthorization_v1.
func tagOf(gv schema.GroupVersion) string {
	g := strings.TrimSuffix(gv.Group, ".k8s.io")
	if g == "" {
		g = "core"
	}
	parts := strings.Split(g, ".")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, "") + "_" + gv.Version
}

// subTitle is a subresource name in an operation ID: Status, Scale,
// Portforward (kube capitalises only the first letter).
func subTitle(name string) string { return strings.ToUpper(name[:1]) + name[1:] }
