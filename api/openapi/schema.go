package openapi

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/kube-openapi/pkg/util"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

// The extensions kubectl reads.
const (
	extGVK           = "x-kubernetes-group-version-kind"
	extAction        = "x-kubernetes-action"
	extPatchStrategy = "x-kubernetes-patch-strategy"
	extPatchMergeKey = "x-kubernetes-patch-merge-key"
	extIntOrString   = "x-kubernetes-int-or-string"
)

// dialect is the OpenAPI version a schema is rendered for. The two differ in
// where definitions live and in how a reference carries a description: v2
// (as kube-apiserver serves it) puts siblings next to $ref, v3 wraps the
// reference in allOf because $ref siblings are ignored there.
type dialect int

const (
	v2 dialect = iota
	v3
)

func (d dialect) ref(name string) spec.Ref {
	if d == v2 {
		return spec.MustCreateRef("#/definitions/" + name)
	}
	return spec.MustCreateRef("#/components/schemas/" + name)
}

// model is one named schema: a Go struct, or a type that declares its own
// OpenAPI type (resource.Quantity, intstr.IntOrString, metav1.Time, ...).
type model struct {
	name string
	typ  reflect.Type
	doc  string
	// fields of a struct, embedded structs flattened as encoding/json does.
	fields []field
	// oapiType, format and oneOf come from OpenAPISchemaType,
	// OpenAPISchemaFormat and OpenAPIV3OneOfTypes, the methods the types
	// themselves provide for kube-openapi's generator.
	oapiType []string
	format   string
	oneOf    []string
	// deps are the models this one refers to.
	deps []reflect.Type
}

type field struct {
	name          string
	doc           string
	typ           reflect.Type
	required      bool
	patchStrategy string
	patchMergeKey string
}

// registry holds the models of every type reachable from the served kinds.
// It is built once by New and only read afterwards.
type registry struct {
	models map[reflect.Type]*model
	names  map[string]reflect.Type
	// served are the served group-versions: a model's
	// x-kubernetes-group-version-kind lists only kinds in them, as
	// kube-apiserver lists only what it serves (DeleteOptions is a kind in
	// every group-version).
	served map[schema.GroupVersion]bool
}

func newRegistry(served map[schema.GroupVersion]bool) *registry {
	return &registry{
		models: map[reflect.Type]*model{},
		names:  map[string]reflect.Type{},
		served: served,
	}
}

var (
	byteSlice  = reflect.TypeFor[[]byte]()
	jsonMarsh  = reflect.TypeFor[json.Marshaler]()
	typeNamer  = reflect.TypeFor[interface{ OpenAPISchemaType() []string }]()
	formatter  = reflect.TypeFor[interface{ OpenAPISchemaFormat() string }]()
	oneOfNamer = reflect.TypeFor[interface{ OpenAPIV3OneOfTypes() []string }]()
	swaggerDoc = reflect.TypeFor[interface{ SwaggerDoc() map[string]string }]()
	modelNamer = reflect.TypeFor[util.OpenAPIModelNamer]()
)

// implements reports whether t or *t has the method set of iface; the k8s
// types declare these methods on values, but a pointer receiver is allowed.
func implements(t, iface reflect.Type) bool {
	return t.Implements(iface) || reflect.PointerTo(t).Implements(iface)
}

// call invokes method m of a zero t (through a pointer when needed).
func call(t reflect.Type, m string) reflect.Value {
	v := reflect.New(t)
	if meth := v.Elem().MethodByName(m); meth.IsValid() {
		return meth.Call(nil)[0]
	}
	return v.MethodByName(m).Call(nil)[0]
}

// isModel reports whether t gets a named definition. Named structs do, and
// so do types with their own OpenAPI type; everything else (named strings,
// ResourceList maps, ...) is inlined, as kube's generator does.
func isModel(t reflect.Type) bool {
	if implements(t, typeNamer) {
		return true
	}
	return t.Kind() == reflect.Struct && t.Name() != ""
}

// own calls method m of t if t declares it itself: a method promoted from an
// embedded field (every type embedding metav1.TypeMeta gets TypeMeta's
// OpenAPIModelName and SwaggerDoc) describes the embedded type, not t.
func own(t, iface reflect.Type, m string) (reflect.Value, bool) {
	if !implements(t, iface) {
		return reflect.Value{}, false
	}
	v := call(t, m)
	if t.Kind() == reflect.Struct {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if ft := deref(f.Type); f.Anonymous && implements(ft, iface) && reflect.DeepEqual(call(ft, m).Interface(), v.Interface()) {
				return reflect.Value{}, false
			}
		}
	}
	return v, true
}

// modelName is the name kube publishes for t: OpenAPIModelName() where the
// type declares it (every k8s.io/api and apimachinery type does), else the
// reversed-domain form of its package path (k8s.io/api/core/v1.Pod →
// io.k8s.api.core.v1.Pod), as kube-openapi's util does.
func modelName(t reflect.Type) string {
	if v, ok := own(t, modelNamer, "OpenAPIModelName"); ok {
		return v.String()
	}
	path := t.PkgPath()
	if i := strings.LastIndex(path, "/vendor/"); i >= 0 {
		path = path[i+len("/vendor/"):]
	}
	if path == "" {
		return t.Name()
	}
	return util.ToRESTFriendlyName(path + "." + t.Name())
}

// docs is t's SwaggerDoc: "" describes the type, the other keys its fields
// by JSON name. k8s.io/api generates one for every type.
func docs(t reflect.Type) map[string]string {
	if v, ok := own(t, swaggerDoc, "SwaggerDoc"); ok {
		return v.Interface().(map[string]string)
	}
	return nil
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// add registers the model for t and every model it reaches. t may be a
// pointer.
func (r *registry) add(t reflect.Type) error {
	t = deref(t)
	if !isModel(t) {
		return r.addInline(t, 0)
	}
	if _, ok := r.models[t]; ok {
		return nil
	}
	m := &model{name: modelName(t), typ: t, doc: docs(t)[""]}
	if other, ok := r.names[m.name]; ok {
		return fmt.Errorf("types %s and %s both have OpenAPI name %s", other, t, m.name)
	}
	r.models[t] = m
	r.names[m.name] = t

	if implements(t, typeNamer) {
		m.oapiType = call(t, "OpenAPISchemaType").Interface().([]string)
		if implements(t, formatter) {
			m.format = call(t, "OpenAPISchemaFormat").String()
		}
		if implements(t, oneOfNamer) {
			m.oneOf = call(t, "OpenAPIV3OneOfTypes").Interface().([]string)
		}
		return nil
	}
	fields, err := structFields(t, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	m.fields = fields
	for _, f := range fields {
		for _, d := range modelsIn(f.typ) {
			if !slices.Contains(m.deps, d) {
				m.deps = append(m.deps, d)
			}
		}
		if err := r.add(f.typ); err != nil {
			return err
		}
	}
	return nil
}

// addInline walks a type that is rendered inline, registering the models
// inside it and rejecting what JSON cannot carry.
func (r *registry) addInline(t reflect.Type, depth int) error {
	if depth > 32 {
		return fmt.Errorf("type %s nests too deep", t)
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		if t == byteSlice {
			return nil
		}
		return r.addAny(t.Elem(), depth+1)
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return fmt.Errorf("map %s: only string keys have a JSON form", t)
		}
		return r.addAny(t.Elem(), depth+1)
	case reflect.Struct: // anonymous struct
		fields, err := structFields(t, 0)
		if err != nil {
			return err
		}
		for _, f := range fields {
			if err := r.addAny(f.typ, depth+1); err != nil {
				return err
			}
		}
		return nil
	case reflect.Chan, reflect.Func, reflect.Complex64, reflect.Complex128, reflect.UnsafePointer:
		return fmt.Errorf("type %s has no JSON form", t)
	}
	return nil
}

func (r *registry) addAny(t reflect.Type, depth int) error {
	t = deref(t)
	if isModel(t) {
		return r.add(t)
	}
	return r.addInline(t, depth)
}

// modelsIn lists the model types a field of type t refers to directly.
func modelsIn(t reflect.Type) []reflect.Type {
	t = deref(t)
	if isModel(t) {
		return []reflect.Type{t}
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map:
		if t == byteSlice {
			return nil
		}
		return modelsIn(t.Elem())
	case reflect.Struct:
		fields, _ := structFields(t, 0)
		var out []reflect.Type
		for _, f := range fields {
			out = append(out, modelsIn(f.typ)...)
		}
		return out
	}
	return nil
}

// structFields lists the JSON fields of struct t: embedded structs without a
// JSON name are flattened (TypeMeta, VolumeSource, ProbeHandler), and an
// outer field hides an embedded one of the same name, as in encoding/json.
// Descriptions come from the SwaggerDoc of the type that declares the field.
func structFields(t reflect.Type, depth int) ([]field, error) {
	if depth > 8 {
		return nil, fmt.Errorf("%s: embedded structs nest too deep", t)
	}
	doc := docs(t)
	var own, embedded []field
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if sf.Anonymous && name == "" && deref(sf.Type).Kind() == reflect.Struct {
			inner, err := structFields(deref(sf.Type), depth+1)
			if err != nil {
				return nil, err
			}
			embedded = append(embedded, inner...)
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		own = append(own, field{
			name:          name,
			doc:           doc[name],
			typ:           sf.Type,
			required:      isRequired(sf.Type, opts),
			patchStrategy: sf.Tag.Get("patchStrategy"),
			patchMergeKey: sf.Tag.Get("patchMergeKey"),
		})
	}
	out := own
	for _, f := range embedded {
		if !slices.ContainsFunc(out, func(o field) bool { return o.name == f.name }) {
			out = append(out, f)
		}
	}
	return out, nil
}

// isRequired approximates the `+optional` marker, which is a comment and so
// invisible here. A field is required only when encoding/json always writes
// it (no omitempty or omitzero) and its zero value is not null: pointers,
// slices, maps and metav1.Time can be null in objects the server itself
// returns. Kube's generator also requires non-pointer slices without
// omitempty (PodSpec.containers) and pointers without +optional
// (DeploymentSpec.selector); this does not. It requires a few non-omitempty
// fields kube marks +optional (Event.reportingComponent, RoleRef.apiGroup);
// that is why only the v3 documents carry required (see object).
func isRequired(t reflect.Type, opts string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == "omitempty" || o == "omitzero" {
			return false
		}
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Map, reflect.Interface:
		return false
	}
	if implements(t, jsonMarsh) {
		b, err := json.Marshal(reflect.New(t).Elem().Interface())
		return err == nil && string(b) != "null"
	}
	return true
}

// schemaOf renders a field type: a reference for models, inline otherwise.
func (r *registry) schemaOf(t reflect.Type, d dialect) spec.Schema {
	t = deref(t)
	if isModel(t) {
		return spec.Schema{SchemaProps: spec.SchemaProps{Ref: d.ref(r.models[t].name)}}
	}
	if t == byteSlice {
		return *spec.StrFmtProperty("byte")
	}
	switch t.Kind() {
	case reflect.Bool:
		return *spec.BooleanProperty()
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Uint8, reflect.Uint16:
		return *spec.Int32Property()
	case reflect.Int, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return *spec.Int64Property()
	case reflect.Float32:
		return *spec.Float32Property()
	case reflect.Float64:
		return *spec.Float64Property()
	case reflect.String:
		return *spec.StringProperty()
	case reflect.Slice, reflect.Array:
		items := r.schemaOf(t.Elem(), d)
		return *spec.ArrayProperty(&items)
	case reflect.Map:
		values := r.schemaOf(t.Elem(), d)
		return *spec.MapProperty(&values)
	case reflect.Struct: // anonymous struct
		fields, _ := structFields(t, 0)
		return r.object(fields, d)
	}
	// An interface holds anything: no type, no properties.
	return spec.Schema{}
}

// object renders struct fields as an object schema.
func (r *registry) object(fields []field, d dialect) spec.Schema {
	s := spec.Schema{SchemaProps: spec.SchemaProps{Type: spec.StringOrArray{"object"}}}
	for _, f := range fields {
		if s.Properties == nil {
			s.Properties = map[string]spec.Schema{}
		}
		s.Properties[f.name] = r.property(f, d)
		// Only v3 says what is required: kubectl's client-side validation
		// reads v2 and rejects a manifest missing a required field, and
		// required here is a guess (see isRequired); the server checks
		// required fields itself. v3 feeds `kubectl explain`, where a wrong
		// guess is a wrong label, not a rejected manifest.
		if f.required && d == v3 {
			s.Required = append(s.Required, f.name)
		}
	}
	return s
}

// property renders one field with its description and patch extensions.
// kubectl computes strategic merge patches from these extensions
// (strategicpatch.PatchMetaFromOpenAPIV3), so they sit on the property
// itself, never inside the allOf.
func (r *registry) property(f field, d dialect) spec.Schema {
	s := r.schemaOf(f.typ, d)
	ext := spec.Extensions{}
	if f.patchStrategy != "" {
		ext[extPatchStrategy] = f.patchStrategy
	}
	if f.patchMergeKey != "" {
		ext[extPatchMergeKey] = f.patchMergeKey
	}
	if d == v3 && s.Ref.String() != "" && (f.doc != "" || len(ext) > 0) {
		s = spec.Schema{SchemaProps: spec.SchemaProps{AllOf: []spec.Schema{s}}}
	}
	s.Description = f.doc
	if len(ext) > 0 {
		s.Extensions = ext
	}
	return s
}

// definition renders model m.
func (r *registry) definition(m *model, d dialect) spec.Schema {
	var s spec.Schema
	switch {
	case m.oapiType != nil && d == v3 && len(m.oneOf) > 0:
		for _, t := range m.oneOf {
			s.OneOf = append(s.OneOf, spec.Schema{SchemaProps: spec.SchemaProps{Type: spec.StringOrArray{t}}})
		}
		s.Format = m.format
		if m.format == "int-or-string" {
			s.Extensions = spec.Extensions{extIntOrString: true}
		}
	case m.oapiType != nil:
		s.Type = m.oapiType
		s.Format = m.format
	default:
		s = r.object(m.fields, d)
	}
	s.Description = m.doc
	if gvks := r.kinds(m.typ); len(gvks) > 0 {
		if s.Extensions == nil {
			s.Extensions = spec.Extensions{}
		}
		s.Extensions[extGVK] = gvks
	}
	return s
}

// kinds is the x-kubernetes-group-version-kind list of a model: the kinds
// client-go's scheme registers the type as, in served group-versions when
// there are any (DeleteOptions is a kind in every group-version), else all of
// them (autoscaling/v1 Scale in apps/v1's document).
func (r *registry) kinds(t reflect.Type) []any {
	obj, ok := reflect.New(t).Interface().(runtime.Object)
	if !ok {
		return nil
	}
	all, err := schemeKinds(obj)
	if err != nil {
		return nil
	}
	var served, other []schema.GroupVersionKind
	for _, gvk := range all {
		switch {
		case r.served[gvk.GroupVersion()]:
			served = append(served, gvk)
		default:
			other = append(other, gvk)
		}
	}
	if len(served) == 0 {
		served = other
	}
	return gvkList(served)
}

// schemeKinds lists the external kinds client-go's scheme registers obj's
// type as, sorted.
func schemeKinds(obj runtime.Object) ([]schema.GroupVersionKind, error) {
	all, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		return nil, err
	}
	var out []schema.GroupVersionKind
	for _, gvk := range all {
		if gvk.Version != runtime.APIVersionInternal {
			out = append(out, gvk)
		}
	}
	sortGVKs(out)
	return out, nil
}

func sortGVKs(gvks []schema.GroupVersionKind) {
	sort.Slice(gvks, func(i, j int) bool {
		a, b := gvks[i], gvks[j]
		if a.Group != b.Group {
			return a.Group < b.Group
		}
		if a.Version != b.Version {
			return a.Version < b.Version
		}
		return a.Kind < b.Kind
	})
}

func gvkList(gvks []schema.GroupVersionKind) []any {
	sortGVKs(gvks)
	gvks = slices.Compact(gvks)
	out := make([]any, 0, len(gvks))
	for _, gvk := range gvks {
		out = append(out, gvkMap(gvk))
	}
	return out
}

// gvkMap is the JSON form of a group-version-kind in the extensions; kubectl
// explain compares it with reflect.DeepEqual, so it has exactly these keys.
func gvkMap(gvk schema.GroupVersionKind) map[string]any {
	return map[string]any{"group": gvk.Group, "version": gvk.Version, "kind": gvk.Kind}
}

// closure lists the models reachable from roots, sorted by name.
func (r *registry) closure(roots []reflect.Type) []*model {
	seen := map[reflect.Type]bool{}
	var out []*model
	var visit func(t reflect.Type)
	visit = func(t reflect.Type) {
		for _, mt := range modelsIn(t) {
			if seen[mt] {
				continue
			}
			seen[mt] = true
			m := r.models[mt]
			out = append(out, m)
			for _, d := range m.deps {
				visit(d)
			}
		}
	}
	for _, t := range roots {
		visit(t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
