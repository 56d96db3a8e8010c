package auth

import (
	"net/http"
	"net/url"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validation/path"
	"k8s.io/apimachinery/pkg/fields"
)

// Attributes is what an authorizer decides on: kube's authorizer.Attributes.
type Attributes struct {
	User        *User
	Verb        string
	APIGroup    string
	APIVersion  string
	Resource    string
	Subresource string
	Namespace   string
	Name        string
	// Path is the request path; non-resource rules match it.
	Path string
	// ResourceRequest: under /api/<version>/ or /apis/<group>/<version>/;
	// otherwise Verb is the lower-case HTTP method and only Path matters.
	ResourceRequest bool
}

// RequestAttributes describes r as kube-apiserver's RequestInfo does, with
// the user from r's context. Where kube and Flotilla's handlers would read
// a request differently, it follows the handlers, because the decision must
// be about what will be served:
//   - segments are split on the escaped path and unescaped one by one (an
//     encoded "/" stays inside its segment), as the api router does;
//   - watch=true or watch=1 (only those) makes a GET a watch, also on a
//     named object, where kube would say "get";
//   - a path with an empty segment is not a resource request (the router
//     answers 404 to it).
func RequestAttributes(r *http.Request) Attributes {
	u, _ := UserFrom(r.Context())
	a := Attributes{User: u, Path: r.URL.Path, Verb: strings.ToLower(r.Method)}
	parts := splitPath(r.URL.EscapedPath())
	if len(parts) < 3 || (parts[0] != "api" && parts[0] != "apis") || slices.Contains(parts, "") {
		// An empty segment ("//") is no resource path the router serves
		// (it answers 404): only non-resource rules can match it.
		return a
	}
	prefix := parts[0]
	parts = parts[1:]
	if prefix == "apis" {
		if len(parts) < 3 {
			return a // /apis/<group>/<version>: discovery
		}
		a.APIGroup, parts = parts[0], parts[1:]
	}
	a.ResourceRequest = true
	a.APIVersion, parts = parts[0], parts[1:]

	byMethod := false
	if parts[0] == "watch" || parts[0] == "proxy" {
		a.Verb, parts = parts[0], parts[1:]
		if len(parts) == 0 {
			return a // kube refuses it; nothing but "*" rules match an empty resource
		}
	} else {
		byMethod = true
		switch r.Method {
		case http.MethodPost:
			a.Verb = "create"
		case http.MethodGet, http.MethodHead:
			a.Verb = "get"
		case http.MethodPut:
			a.Verb = "update"
		case http.MethodPatch:
			a.Verb = "patch"
		case http.MethodDelete:
			a.Verb = "delete"
		default:
			a.Verb = ""
		}
	}
	if parts[0] == "namespaces" && len(parts) > 1 {
		a.Namespace = parts[1]
		// /namespaces/<ns>/status and /finalize are the namespace's own
		// subresources; anything else after <ns> is a namespaced resource.
		if len(parts) > 2 && parts[2] != "status" && parts[2] != "finalize" {
			parts = parts[2:]
		}
	}
	switch {
	case len(parts) >= 3 && a.Verb != "proxy":
		a.Subresource = parts[2]
		fallthrough
	case len(parts) >= 2:
		a.Name = parts[1]
		fallthrough
	default:
		a.Resource = parts[0]
	}
	if byMethod && a.Verb == "get" {
		q := r.URL.Query()
		if w := q.Get("watch"); w == "true" || w == "1" {
			a.Verb = "watch"
		} else if a.Name == "" {
			a.Verb = "list"
		}
		if a.Name == "" {
			if fs := q.Get("fieldSelector"); fs != "" {
				if sel, err := fields.ParseSelector(fs); err == nil {
					if name, ok := sel.RequiresExactMatch("metadata.name"); ok && len(path.IsValidPathSegmentName(name)) == 0 {
						a.Name = name
					}
				}
			}
		}
	}
	if a.Name == "" && a.Verb == "delete" {
		a.Verb = "deletecollection"
	}
	return a
}

// splitPath splits an escaped path into unescaped segments.
func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if strings.IndexByte(s, '%') < 0 {
			continue
		}
		if u, err := url.PathUnescape(s); err == nil {
			parts[i] = u
		}
	}
	return parts
}

// mutating reports whether a request changes state (what is audited).
func mutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodConnect:
		return false
	}
	return true
}
