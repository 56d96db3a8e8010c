package api

import (
	"fmt"
	"sync"

	"flotilla/api/openapi"
)

// The OpenAPI documents depend only on the served types, so every Server in
// the process shares one build (it takes a few hundred milliseconds).
var (
	openAPIOnce sync.Once
	openAPIDocs *openapi.Docs
	openAPIErr  error
)

// openAPISubresources are the subresources the OpenAPI documents describe;
// namespaces/finalize is served but, as in kube-apiserver, not documented.
var openAPISubresources = map[string]bool{
	"status": true, "scale": true, "binding": true, "eviction": true, "log": true, "exec": true,
}

// openAPIResources describes the registry for the OpenAPI generator.
func openAPIResources(reg *registry) []openapi.Resource {
	var out []openapi.Resource
	for _, r := range reg.all {
		var subs []string
		if r.hasStatus {
			subs = append(subs, "status")
		}
		if r.scale {
			subs = append(subs, "scale")
		}
		for _, s := range r.subresources {
			if openAPISubresources[s] {
				subs = append(subs, s)
			}
		}
		res := openapi.Resource{
			Group:        r.gvk.Group,
			Version:      r.gvk.Version,
			Kind:         r.gvk.Kind,
			Plural:       r.plural,
			Namespaced:   r.namespaced,
			Verbs:        r.verbs(""),
			Subresources: subs,
			Object:       r.newObj(),
		}
		if r.newList != nil {
			res.List = r.newList()
		}
		out = append(out, res)
	}
	return out
}

// openAPI returns the process-wide documents for the served resources.
func openAPI(reg *registry) (*openapi.Docs, error) {
	openAPIOnce.Do(func() {
		openAPIDocs, openAPIErr = openapi.New(openAPIResources(reg))
		if openAPIErr != nil {
			openAPIErr = fmt.Errorf("build openapi documents: %w", openAPIErr)
		}
	})
	return openAPIDocs, openAPIErr
}
