package openapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/kube-openapi/pkg/spec3"
	"k8s.io/kube-openapi/pkg/validation/spec"
)

var (
	parsedMu sync.Mutex
	parsedV3 = map[schema.GroupVersion]*spec3.OpenAPI{}
)

// v3Doc parses the served v3 document of gv, once: parsing is the slow part
// of these tests under the race detector. Callers must not modify it.
func v3Doc(t *testing.T, gv schema.GroupVersion) *spec3.OpenAPI {
	t.Helper()
	parsedMu.Lock()
	defer parsedMu.Unlock()
	if doc, ok := parsedV3[gv]; ok {
		return doc
	}
	d, ok := testDocs(t).v3[gvKey(gv)]
	if !ok {
		t.Fatalf("no v3 document for %s", gv)
	}
	var doc spec3.OpenAPI
	if err := json.Unmarshal(d.json, &doc); err != nil {
		t.Fatal(err)
	}
	parsedV3[gv] = &doc
	return &doc
}

func v2Doc(t *testing.T) *spec.Swagger {
	t.Helper()
	var doc spec.Swagger
	if err := json.Unmarshal(testDocs(t).v2.json, &doc); err != nil {
		t.Fatal(err)
	}
	return &doc
}

var (
	coreGV = schema.GroupVersion{Version: "v1"}
	appsGV = schema.GroupVersion{Group: "apps", Version: "v1"}
)

// TestEveryKindHasSchema: kubectl finds a kind's schema by
// x-kubernetes-group-version-kind, in v3 (explain, apply) and v2 (client
// validation), for objects and lists.
func TestEveryKindHasSchema(t *testing.T) {
	v2 := v2Doc(t)
	for _, r := range testResources {
		gv := schema.GroupVersion{Group: r.Group, Version: r.Version}
		v3 := v3Doc(t, gv)
		for _, kind := range []string{r.Kind, r.Kind + "List"} {
			gvk := gv.WithKind(kind)
			var n3, n2 int
			for _, s := range v3.Components.Schemas {
				if hasGVK(s.Extensions, gvk) {
					n3++
				}
			}
			for _, s := range v2.Definitions {
				if hasGVK(s.Extensions, gvk) {
					n2++
				}
			}
			if n3 != 1 || n2 != 1 {
				t.Errorf("%s: %d v3 schemas and %d v2 definitions carry it, want 1 each", gvk, n3, n2)
			}
		}
	}
}

// TestOperations checks what kubectl reads from the paths: every PATCH of a
// kind declares fieldValidation and accepts strategic merge patches (kubectl
// takes the first PATCH with the kind's GVK, in map order, so all of them
// must), and explain finds the kind from the collection or item path.
func TestOperations(t *testing.T) {
	for _, gv := range []schema.GroupVersion{coreGV, appsGV} {
		doc := v3Doc(t, gv)
		ids := map[string]string{}
		for p, item := range doc.Paths.Paths {
			for method, op := range map[string]*spec3.Operation{"get": item.Get, "put": item.Put, "post": item.Post, "patch": item.Patch, "delete": item.Delete} {
				if op == nil {
					continue
				}
				if prev, ok := ids[op.OperationId]; ok {
					t.Errorf("operationId %s on %s and %s %s", op.OperationId, prev, method, p)
				}
				ids[op.OperationId] = method + " " + p
				if _, ok := op.Extensions.GetString(extAction); !ok && !strings.HasSuffix(p, "/") { // discovery has none
					t.Errorf("%s %s: no %s", method, p, extAction)
				}
				if method != "patch" {
					continue
				}
				names := map[string]bool{}
				for _, prm := range op.Parameters {
					if prm.In == "query" {
						names[prm.Name] = true
					}
				}
				for _, want := range []string{"fieldValidation", "dryRun", "fieldManager", "force"} {
					if !names[want] {
						t.Errorf("PATCH %s lacks query parameter %s", p, want)
					}
				}
				if op.RequestBody == nil || op.RequestBody.Content["application/strategic-merge-patch+json"] == nil {
					t.Errorf("PATCH %s does not accept strategic merge patches", p)
				}
			}
		}
	}

	doc := v3Doc(t, coreGV)
	for path, want := range map[string][]string{
		"/api/v1/namespaces/{namespace}/pods":             {"labelSelector", "fieldSelector", "watch", "allowWatchBookmarks", "limit", "continue", "resourceVersion", "timeoutSeconds"},
		"/api/v1/pods":                                    {"labelSelector", "watch", "limit"},
		"/api/v1/namespaces/{namespace}/pods/{name}":      {"namespace", "name", "pretty"},
		"/api/v1/namespaces/{namespace}/pods/{name}/log":  {"container", "follow", "previous", "tailLines", "timestamps"},
		"/api/v1/namespaces/{namespace}/pods/{name}/exec": {"command", "container", "stdin", "stdout", "tty"},
		"/api/v1/nodes/{name}/status":                     {"name", "pretty"},
	} {
		item := doc.Paths.Paths[path]
		if item == nil {
			t.Errorf("no path %s", path)
			continue
		}
		have := map[string]bool{}
		for _, p := range item.Parameters {
			have[p.Name] = true
		}
		if item.Get != nil {
			for _, p := range item.Get.Parameters {
				have[p.Name] = true
			}
		}
		for _, w := range want {
			if !have[w] {
				t.Errorf("GET %s lacks parameter %s", path, w)
			}
		}
	}
	for path, want := range map[string]string{
		"/api/v1/namespaces/{namespace}/pods/{name}/binding":  "Binding",
		"/api/v1/namespaces/{namespace}/pods/{name}/eviction": "Eviction",
		"/api/v1/namespaces/{namespace}/pods/{name}/exec":     "PodExecOptions",
	} {
		if item := doc.Paths.Paths[path]; item == nil || item.Post == nil || !strings.Contains(gvkString(item.Post.Extensions), want) {
			t.Errorf("POST %s: want kind %s", path, want)
		}
	}
	apps := v3Doc(t, appsGV)
	scale := apps.Paths.Paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"]
	if scale == nil || scale.Put == nil || gvkString(scale.Put.Extensions) != "autoscaling/v1, Kind=Scale" {
		t.Errorf("deployments/scale: want autoscaling/v1 Scale")
	}
	if apps.Components.Schemas["io.k8s.api.autoscaling.v1.Scale"] == nil {
		t.Errorf("apps/v1 lacks the Scale schema its scale paths refer to")
	}
	for _, name := range []string{"ObjectMeta", "ListMeta", "Status", "DeleteOptions", "WatchEvent", "Patch", "APIResourceList", "Time"} {
		if doc.Components.Schemas["io.k8s.apimachinery.pkg.apis.meta.v1."+name] == nil {
			t.Errorf("api/v1 lacks meta/v1 %s", name)
		}
	}
}

func gvkString(ext spec.Extensions) string {
	var m map[string]string
	if err := ext.GetObject(extGVK, &m); err != nil {
		return ""
	}
	return schema.GroupVersionKind{Group: m["group"], Version: m["version"], Kind: m["kind"]}.String()
}

// TestRefsResolve: every $ref names a schema in the same document.
func TestRefsResolve(t *testing.T) {
	check := func(name string, raw []byte, prefix string, defs map[string]json.RawMessage) {
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				if ref, ok := v["$ref"].(string); ok {
					if _, ok := defs[strings.TrimPrefix(ref, prefix)]; !strings.HasPrefix(ref, prefix) || !ok {
						t.Errorf("%s: dangling $ref %s", name, ref)
					}
				}
				for _, e := range v {
					walk(e)
				}
			case []any:
				for _, e := range v {
					walk(e)
				}
			}
		}
		var doc any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		walk(doc)
	}
	d := testDocs(t)
	for key, doc := range d.v3 {
		var parsed struct {
			Components struct{ Schemas map[string]json.RawMessage }
		}
		json.Unmarshal(doc.json, &parsed)
		check(key, doc.json, "#/components/schemas/", parsed.Components.Schemas)
	}
	var parsed struct{ Definitions map[string]json.RawMessage }
	json.Unmarshal(d.v2.json, &parsed)
	check("v2", d.v2.json, "#/definitions/", parsed.Definitions)
}

// TestSchemas checks the reflection rules on the types kubectl cares about.
func TestSchemas(t *testing.T) {
	core := v3Doc(t, coreGV).Components.Schemas
	defs := v2Doc(t).Definitions
	prop := func(model, field string) spec.Schema {
		t.Helper()
		m := core[model]
		if m == nil {
			t.Fatalf("no schema %s", model)
		}
		p, ok := m.Properties[field]
		if !ok {
			t.Fatalf("%s has no property %s", model, field)
		}
		return p
	}
	ref := func(s spec.Schema) string {
		if len(s.AllOf) == 1 {
			s = s.AllOf[0]
		}
		return strings.TrimPrefix(s.Ref.String(), "#/components/schemas/")
	}
	const pod, podSpec, container = "io.k8s.api.core.v1.Pod", "io.k8s.api.core.v1.PodSpec", "io.k8s.api.core.v1.Container"

	t.Run("descriptions from SwaggerDoc", func(t *testing.T) {
		if !strings.HasPrefix(core[pod].Description, "Pod is a collection of containers") {
			t.Errorf("Pod description %q", core[pod].Description)
		}
		if d := prop(pod, "spec").Description; !strings.Contains(d, "Specification of the desired behavior") {
			t.Errorf("Pod.spec description %q", d)
		}
	})
	t.Run("patch extensions", func(t *testing.T) {
		for _, tc := range []struct{ model, field, strategy, key string }{
			{podSpec, "containers", "merge", "name"},
			{podSpec, "volumes", "merge,retainKeys", "name"},
			{container, "ports", "merge", "containerPort"},
			{container, "env", "merge", "name"},
			{"io.k8s.api.core.v1.ServiceSpec", "ports", "merge", "port"},
			{"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "finalizers", "merge", ""},
		} {
			for dialect, s := range map[string]spec.Schema{"v3": prop(tc.model, tc.field), "v2": defs[tc.model].Properties[tc.field]} {
				if got, _ := s.Extensions.GetString(extPatchStrategy); got != tc.strategy {
					t.Errorf("%s %s.%s: strategy %q, want %q", dialect, tc.model, tc.field, got, tc.strategy)
				}
				if got, _ := s.Extensions.GetString(extPatchMergeKey); got != tc.key {
					t.Errorf("%s %s.%s: merge key %q, want %q", dialect, tc.model, tc.field, got, tc.key)
				}
			}
		}
	})
	t.Run("references and inlining", func(t *testing.T) {
		if r := ref(prop(pod, "metadata")); r != "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" {
			t.Errorf("Pod.metadata refers to %q", r)
		}
		if p := prop(pod, "metadata"); len(p.AllOf) != 1 || p.Description == "" {
			t.Errorf("v3 reference with a description must be wrapped in allOf: %+v", p)
		}
		if r := refString(defs[pod].Properties["metadata"]); r != "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta" {
			t.Errorf("v2 Pod.metadata refers to %q", r)
		}
		items := prop(podSpec, "containers").Items.Schema
		if r := ref(*items); r != container {
			t.Errorf("PodSpec.containers items refer to %q", r)
		}
		// TypeMeta, VolumeSource and ProbeHandler are embedded with json:"".
		for model, fields := range map[string][]string{
			pod:                         {"apiVersion", "kind"},
			"io.k8s.api.core.v1.Volume": {"name", "hostPath", "emptyDir", "configMap"},
			"io.k8s.api.core.v1.Probe":  {"exec", "httpGet", "tcpSocket", "periodSeconds"},
		} {
			for _, f := range fields {
				prop(model, f)
			}
		}
		if _, ok := core["io.k8s.apimachinery.pkg.apis.meta.v1.TypeMeta"]; ok {
			t.Errorf("TypeMeta is inlined, not a schema")
		}
	})
	t.Run("special types", func(t *testing.T) {
		v3 := func(name string) *spec.Schema { return core[name] }
		ios := v3("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
		if ios == nil || ios.Format != "int-or-string" || len(ios.OneOf) != 2 || ios.Extensions[extIntOrString] != true {
			t.Errorf("v3 IntOrString: %+v", ios)
		}
		if s := defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]; !s.Type.Contains("string") || s.Format != "int-or-string" {
			t.Errorf("v2 IntOrString: %+v", s)
		}
		if s := defs["io.k8s.apimachinery.pkg.api.resource.Quantity"]; !s.Type.Contains("string") || len(s.Properties) > 0 {
			t.Errorf("v2 Quantity: %+v", s)
		}
		if s := v3("io.k8s.apimachinery.pkg.apis.meta.v1.Time"); !s.Type.Contains("string") || s.Format != "date-time" {
			t.Errorf("Time: %+v", s)
		}
		if s := v3("io.k8s.apimachinery.pkg.runtime.RawExtension"); !s.Type.Contains("object") || s.Properties != nil {
			t.Errorf("RawExtension: %+v", s)
		}
		if s := prop("io.k8s.api.core.v1.Secret", "data"); s.AdditionalProperties == nil || s.AdditionalProperties.Schema.Format != "byte" {
			t.Errorf("Secret.data: %+v", s)
		}
		if s := prop("io.k8s.api.core.v1.ResourceRequirements", "limits"); ref(*s.AdditionalProperties.Schema) != "io.k8s.apimachinery.pkg.api.resource.Quantity" {
			t.Errorf("ResourceRequirements.limits: %+v", s)
		}
		if s := prop(container, "name"); !s.Type.Contains("string") {
			t.Errorf("Container.name: %+v", s)
		}
		if s := prop("io.k8s.api.core.v1.ContainerPort", "containerPort"); !s.Type.Contains("integer") || s.Format != "int32" {
			t.Errorf("containerPort: %+v", s)
		}
		if s := prop(podSpec, "activeDeadlineSeconds"); s.Format != "int64" {
			t.Errorf("activeDeadlineSeconds: %+v", s)
		}
		if s := prop(podSpec, "hostNetwork"); !s.Type.Contains("boolean") {
			t.Errorf("hostNetwork: %+v", s)
		}
	})
	t.Run("required", func(t *testing.T) {
		for _, tc := range []struct {
			model, field string
			want         bool
		}{
			{container, "name", true},
			{"io.k8s.api.core.v1.ContainerPort", "containerPort", true},
			{"io.k8s.api.core.v1.HTTPGetAction", "port", true}, // IntOrString, zero is 0
			{"io.k8s.api.apps.v1.DeploymentSpec", "template", true},
			{container, "image", false},                                          // omitempty
			{podSpec, "containers", false},                                       // a slice may be null
			{"io.k8s.api.apps.v1.DeploymentSpec", "selector", false},             // pointer
			{"io.k8s.api.core.v1.PodCondition", "lastTransitionTime", false},     // omitempty
			{"io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent", "object", false}, // zero RawExtension is null
		} {
			m := core[tc.model]
			if m == nil {
				m = v3Doc(t, appsGV).Components.Schemas[tc.model]
			}
			if m == nil {
				t.Fatalf("no schema %s", tc.model)
			}
			if got := slices.Contains(m.Required, tc.field); got != tc.want {
				t.Errorf("v3 %s.%s required = %v, want %v", tc.model, tc.field, got, tc.want)
			}
		}
		for name, d := range defs {
			if len(d.Required) > 0 {
				t.Errorf("v2 %s has required %v; v2 must not (client-side validation)", name, d.Required)
			}
		}
	})
	t.Run("group-version-kind", func(t *testing.T) {
		var gvks []map[string]string
		if err := core["io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"].Extensions.GetObject(extGVK, &gvks); err != nil {
			t.Fatal(err)
		}
		want := []map[string]string{
			{"group": "", "version": "v1", "kind": "DeleteOptions"},
			{"group": "apps", "version": "v1", "kind": "DeleteOptions"},
		}
		if !reflect.DeepEqual(gvks, want) {
			t.Errorf("DeleteOptions kinds %v, want those of the served group-versions %v", gvks, want)
		}
		if _, ok := core[podSpec].Extensions[extGVK]; ok {
			t.Errorf("PodSpec is not a kind")
		}
	})
}

// tree is recursive through a slice and a pointer.
type tree struct {
	metav1.TypeMeta `json:",inline"`
	Name            string `json:"name"`
	Children        []tree `json:"children,omitempty"`
	Parent          *tree  `json:"parent,omitempty"`
	Anon            struct {
		X int32 `json:"x"`
	} `json:"anon"`
	hidden int
}

func (t *tree) DeepCopyObject() runtime.Object { c := *t; return &c }

func TestRecursiveAndForeignTypes(t *testing.T) {
	docs, err := New([]Resource{{Group: "example.com", Version: "v1", Kind: "Tree", Plural: "trees", Object: &tree{}, List: &corev1.PodList{}}})
	if err != nil {
		t.Fatal(err)
	}
	var doc spec3.OpenAPI
	if err := json.Unmarshal(docs.v3["apis/example.com/v1"].json, &doc); err != nil {
		t.Fatal(err)
	}
	const name = "flotilla.api.openapi.tree"
	s := doc.Components.Schemas[name]
	if s == nil {
		t.Fatalf("no %s among %v", name, keys(doc.Components.Schemas))
	}
	if got := refString(*s.Properties["children"].Items.Schema); got != "#/components/schemas/"+name {
		t.Errorf("children items: %s", got)
	}
	if got := refString(s.Properties["parent"]); got != "#/components/schemas/"+name {
		t.Errorf("parent: %s", got)
	}
	if x := s.Properties["anon"].Properties["x"]; !x.Type.Contains("integer") {
		t.Errorf("anon.x: %+v", x)
	}
	if _, ok := s.Properties["hidden"]; ok {
		t.Errorf("unexported field published")
	}
	if !slices.Equal(s.Required, []string{"name", "anon"}) {
		t.Errorf("required %v", s.Required)
	}
	var gvks []map[string]string
	s.Extensions.GetObject(extGVK, &gvks)
	if len(gvks) != 0 {
		// Not in client-go's scheme: the paths carry the kind, the schema cannot.
		t.Errorf("unexpected kinds %v", gvks)
	}
}

func refString(s spec.Schema) string { return s.Ref.String() }

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestNewErrors(t *testing.T) {
	pods := Resource{Version: "v1", Kind: "Pod", Plural: "pods", Namespaced: true}
	for _, tc := range []struct {
		name string
		in   []Resource
		want string
	}{
		{"unknown verb", []Resource{{Version: "v1", Kind: "Pod", Plural: "pods", Verbs: []string{"frobnicate"}}}, "unknown verb"},
		{"unknown subresource", []Resource{{Version: "v1", Kind: "Pod", Plural: "pods", Subresources: []string{"frob"}}}, "unknown subresource"},
		{"twice", []Resource{pods, pods}, "twice"},
		{"no plural", []Resource{{Version: "v1", Kind: "Pod"}}, "required"},
		{"unknown kind", []Resource{{Group: "example.com", Version: "v1", Kind: "Thing", Plural: "things"}}, "no Go type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestDeterministic: every master builds byte-identical documents, so a
// client's cached hash is valid against any master.
func TestDeterministic(t *testing.T) {
	again, err := New(testResources)
	if err != nil {
		t.Fatal(err)
	}
	d := testDocs(t)
	if !bytes.Equal(again.v2.json, d.v2.json) || !bytes.Equal(again.v3root.json, d.v3root.json) {
		t.Errorf("documents differ between two builds")
	}
}
