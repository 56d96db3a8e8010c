package openapi

import (
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"sync"

	openapi_v2 "github.com/google/gnostic-models/openapiv2"
	openapi_v3 "github.com/google/gnostic-models/openapiv3"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/kube-openapi/pkg/handler3"
)

// The info block of every document. Nothing reads it; it names the server.
const (
	title       = "Flotilla"
	infoVersion = "unversioned"
)

// Docs holds the OpenAPI documents of one set of served resources. New
// builds them once; afterwards Docs is read-only and safe for concurrent
// use.
type Docs struct {
	v2     *document            // /openapi/v2: every group-version
	v3root *document            // /openapi/v3: the index of group-versions
	v3     map[string]*document // /openapi/v3/<api/v1|apis/<group>/<version>>
}

// document is one served document: its JSON, the hash kube calls its ETag,
// and the protobuf form, made on first request because only kubectl's
// fallbacks ask for it. There is no Last-Modified: masters started at
// different times serve identical documents, and the ETag says so.
type document struct {
	json []byte
	etag string

	toProto   func([]byte) ([]byte, error)
	protoOnce sync.Once
	proto     []byte
	protoErr  error
}

func newDocument(v any, toProto func([]byte) ([]byte, error)) (*document, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &document{json: b, etag: fmt.Sprintf("%X", sha512.Sum512(b)), toProto: toProto}, nil
}

func (d *document) protobuf() ([]byte, error) {
	d.protoOnce.Do(func() { d.proto, d.protoErr = d.toProto(d.json) })
	return d.proto, d.protoErr
}

// v2Proto and v3Proto convert JSON documents to the gnostic protobuf
// messages client-go decodes (discovery's OpenAPISchema asks /openapi/v2 for
// protobuf only).
func v2Proto(b []byte) ([]byte, error) {
	doc, err := openapi_v2.ParseDocument(b)
	if err != nil {
		return nil, fmt.Errorf("convert openapi v2 to protobuf: %w", err)
	}
	return proto.Marshal(doc)
}

func v3Proto(b []byte) ([]byte, error) {
	doc, err := openapi_v3.ParseDocument(b)
	if err != nil {
		return nil, fmt.Errorf("convert openapi v3 to protobuf: %w", err)
	}
	return proto.Marshal(doc)
}

// New builds the documents for resources: schemas by reflection over their
// Go types, paths from their verbs and subresources. An error means a
// resource is malformed (unknown verb or subresource, no Go type) or a type
// has no JSON form; it is a programming error, so callers may panic on it.
func New(resources []Resource) (*Docs, error) {
	served := map[schema.GroupVersion]bool{}
	byGV := map[schema.GroupVersion][]path{}
	seen := map[string]bool{}
	for _, in := range resources {
		r, err := newResource(in)
		if err != nil {
			return nil, err
		}
		key := r.prefix() + "/" + r.Plural
		if seen[key] {
			return nil, fmt.Errorf("resource %s listed twice", key)
		}
		seen[key] = true
		gv := r.GroupVersionKind().GroupVersion()
		served[gv] = true
		byGV[gv] = append(byGV[gv], r.paths()...)
	}
	gvs := make([]schema.GroupVersion, 0, len(byGV))
	for gv := range byGV {
		gvs = append(gvs, gv)
	}
	sort.Slice(gvs, func(i, j int) bool { return gvKey(gvs[i]) < gvKey(gvs[j]) })

	reg := newRegistry(served)
	var all []path
	for _, gv := range gvs {
		byGV[gv] = append(byGV[gv], discoveryPath(gv))
		all = append(all, byGV[gv]...)
	}
	for _, t := range roots(all) {
		if err := reg.add(t); err != nil {
			return nil, err
		}
	}

	d := &Docs{v3: map[string]*document{}}
	index := handler3.OpenAPIV3Discovery{Paths: map[string]handler3.OpenAPIV3DiscoveryGroupVersion{}}
	for _, gv := range gvs {
		doc, err := newDocument(reg.v3Doc(byGV[gv]), v3Proto)
		if err != nil {
			return nil, fmt.Errorf("openapi v3 %s: %w", gv, err)
		}
		key := gvKey(gv)
		d.v3[key] = doc
		index.Paths[key] = handler3.OpenAPIV3DiscoveryGroupVersion{ServerRelativeURL: v3URL(key, doc.etag)}
	}
	var err error
	if d.v3root, err = newDocument(index, nil); err != nil {
		return nil, fmt.Errorf("openapi v3 index: %w", err)
	}
	if d.v2, err = newDocument(reg.v2Doc(all), v2Proto); err != nil {
		return nil, fmt.Errorf("openapi v2: %w", err)
	}
	return d, nil
}

// v3URL is where a group-version's document is served, with the hash that
// makes the URL immutable (clients cache it forever).
func v3URL(key, etag string) string {
	return (&url.URL{Path: "/openapi/v3/" + key, RawQuery: url.Values{"hash": {etag}}.Encode()}).String()
}
