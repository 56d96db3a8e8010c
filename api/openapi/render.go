package openapi

import (
	"net/http"
	"reflect"
	"slices"

	"k8s.io/kube-openapi/pkg/spec3"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

// The media types object responses are documented in; what the API can
// encode.
var objectTypes = []string{"application/json", "application/yaml"}

const watchStream = "application/json;stream=watch"

// ref is a reference to the model of t.
func (r *registry) ref(t reflect.Type, d dialect) *spec.Schema {
	return &spec.Schema{SchemaProps: spec.SchemaProps{Ref: d.ref(r.models[deref(t)].name)}}
}

// roots lists the types the operations of paths refer to.
func roots(paths []path) []reflect.Type {
	var out []reflect.Type
	add := func(t reflect.Type) {
		if t != nil && !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	for _, p := range paths {
		for _, o := range p.ops {
			add(o.body)
			add(o.result)
			if o.watch {
				add(watchEventType)
			}
		}
	}
	return out
}

func extensions(o operation) spec.Extensions {
	ext := spec.Extensions{}
	if o.action != "" {
		ext[extAction] = o.action
	}
	if o.gvk != nil {
		ext[extGVK] = gvkMap(*o.gvk)
	}
	return ext
}

// --- OpenAPI v3 ---

func (r *registry) v3Doc(paths []path) *spec3.OpenAPI {
	doc := &spec3.OpenAPI{
		Version:    "3.0.0",
		Info:       &spec.Info{InfoProps: spec.InfoProps{Title: title, Version: infoVersion}},
		Paths:      &spec3.Paths{Paths: map[string]*spec3.Path{}},
		Components: &spec3.Components{Schemas: map[string]*spec.Schema{}},
	}
	for _, p := range paths {
		item := &spec3.Path{}
		for _, prm := range p.params {
			item.Parameters = append(item.Parameters, v3Param(prm))
		}
		for _, o := range p.ops {
			op := r.v3Op(o)
			switch o.method {
			case "get":
				item.Get = op
			case "put":
				item.Put = op
			case "post":
				item.Post = op
			case "patch":
				item.Patch = op
			case "delete":
				item.Delete = op
			}
		}
		doc.Paths.Paths[p.path] = item
	}
	for _, m := range r.closure(roots(paths)) {
		s := r.definition(m, v3)
		doc.Components.Schemas[m.name] = &s
	}
	return doc
}

// v3Param puts every parameter inline on its operation: kubectl's
// QueryParamVerifierV3 looks for fieldValidation among the PATCH
// operation's own parameters.
func v3Param(p param) *spec3.Parameter {
	return &spec3.Parameter{ParameterProps: spec3.ParameterProps{
		Name: p.name, In: p.in, Description: p.doc, Required: p.required,
		Schema: &spec.Schema{SchemaProps: spec.SchemaProps{Type: spec.StringOrArray{p.typ}, UniqueItems: true}},
	}}
}

func (r *registry) v3Op(o operation) *spec3.Operation {
	op := &spec3.Operation{OperationProps: spec3.OperationProps{
		Tags: []string{o.tag}, Description: o.doc, OperationId: o.id,
		Responses: &spec3.Responses{ResponsesProps: spec3.ResponsesProps{StatusCodeResponses: map[int]*spec3.Response{}}},
	}}
	op.Extensions = extensions(o)
	for _, p := range o.params {
		op.Parameters = append(op.Parameters, v3Param(p))
	}
	if o.body != nil {
		types := []string{"*/*"}
		if o.patch {
			types = patchTypes
		}
		content := map[string]*spec3.MediaType{}
		for _, t := range types {
			content[t] = &spec3.MediaType{MediaTypeProps: spec3.MediaTypeProps{Schema: r.ref(o.body, v3)}}
		}
		op.RequestBody = &spec3.RequestBody{RequestBodyProps: spec3.RequestBodyProps{Content: content, Required: true}}
	}
	for _, code := range o.codes {
		content := map[string]*spec3.MediaType{}
		if o.result == nil {
			content["*/*"] = &spec3.MediaType{MediaTypeProps: spec3.MediaTypeProps{Schema: spec.StringProperty()}}
		} else {
			for _, t := range objectTypes {
				content[t] = &spec3.MediaType{MediaTypeProps: spec3.MediaTypeProps{Schema: r.ref(o.result, v3)}}
			}
			if o.watch {
				content[watchStream] = &spec3.MediaType{MediaTypeProps: spec3.MediaTypeProps{Schema: r.ref(watchEventType, v3)}}
			}
		}
		op.Responses.StatusCodeResponses[code] = &spec3.Response{ResponseProps: spec3.ResponseProps{
			Description: http.StatusText(code), Content: content,
		}}
	}
	op.Responses.StatusCodeResponses[http.StatusUnauthorized] = &spec3.Response{ResponseProps: spec3.ResponseProps{
		Description: http.StatusText(http.StatusUnauthorized),
	}}
	return op
}

// --- OpenAPI v2 (swagger 2.0) ---

func (r *registry) v2Doc(paths []path) *spec.Swagger {
	doc := &spec.Swagger{SwaggerProps: spec.SwaggerProps{
		Swagger:     "2.0",
		Info:        &spec.Info{InfoProps: spec.InfoProps{Title: title, Version: infoVersion}},
		Paths:       &spec.Paths{Paths: map[string]spec.PathItem{}},
		Definitions: spec.Definitions{},
	}}
	for _, p := range paths {
		item := spec.PathItem{}
		for _, prm := range p.params {
			item.Parameters = append(item.Parameters, v2Param(prm))
		}
		for _, o := range p.ops {
			op := r.v2Op(o)
			switch o.method {
			case "get":
				item.Get = op
			case "put":
				item.Put = op
			case "post":
				item.Post = op
			case "patch":
				item.Patch = op
			case "delete":
				item.Delete = op
			}
		}
		doc.Paths.Paths[p.path] = item
	}
	for _, m := range r.closure(roots(paths)) {
		doc.Definitions[m.name] = r.definition(m, v2)
	}
	return doc
}

func v2Param(p param) spec.Parameter {
	return spec.Parameter{
		ParamProps:        spec.ParamProps{Name: p.name, In: p.in, Description: p.doc, Required: p.required},
		SimpleSchema:      spec.SimpleSchema{Type: p.typ},
		CommonValidations: spec.CommonValidations{UniqueItems: true},
	}
}

func (r *registry) v2Op(o operation) *spec.Operation {
	op := &spec.Operation{OperationProps: spec.OperationProps{
		Description: o.doc, Consumes: []string{"*/*"}, Produces: objectTypes, Schemes: []string{"https"},
		Tags: []string{o.tag}, ID: o.id,
		Responses: &spec.Responses{ResponsesProps: spec.ResponsesProps{StatusCodeResponses: map[int]spec.Response{}}},
	}}
	op.Extensions = extensions(o)
	if o.patch {
		op.Consumes = patchTypes
	}
	if o.watch {
		op.Produces = append(slices.Clone(objectTypes), watchStream)
	}
	for _, p := range o.params {
		op.Parameters = append(op.Parameters, v2Param(p))
	}
	if o.body != nil {
		op.Parameters = append(op.Parameters, spec.Parameter{ParamProps: spec.ParamProps{
			Name: "body", In: "body", Required: true, Schema: r.ref(o.body, v2),
		}})
	}
	schema := spec.StringProperty()
	if o.result != nil {
		schema = r.ref(o.result, v2)
	} else {
		op.Produces = []string{"*/*"}
	}
	for _, code := range o.codes {
		op.Responses.StatusCodeResponses[code] = spec.Response{ResponseProps: spec.ResponseProps{
			Description: http.StatusText(code), Schema: schema,
		}}
	}
	op.Responses.StatusCodeResponses[http.StatusUnauthorized] = spec.Response{ResponseProps: spec.ResponseProps{
		Description: http.StatusText(http.StatusUnauthorized),
	}}
	return op
}
