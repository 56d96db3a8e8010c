package api

import (
	"encoding/json"
	"mime"
	"net/http"
	"runtime"
	"strconv"
	"strings"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
)

// The Kubernetes version Flotilla speaks: the minor of the k8s.io libraries.
const (
	kubeMajor = "1"
	kubeMinor = "37"
	kubePatch = "2"
)

func defaultVersion() version.Info {
	return version.Info{
		Major:      kubeMajor,
		Minor:      kubeMinor,
		GitVersion: "v" + kubeMajor + "." + kubeMinor + "." + kubePatch + "+flotilla",
		GoVersion:  runtime.Version(),
		Compiler:   runtime.Compiler,
		Platform:   runtime.GOOS + "/" + runtime.GOARCH,
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// writeJSON sends a discovery document (these have no protobuf form here).
func writeJSON(w http.ResponseWriter, contentType string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request) {
	infoFrom(r.Context()).verb = "get"
	writeJSON(w, mediaJSON, s.cfg.Version)
}

const aggregatedMedia = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

// wantsAggregated: the client lists the v2 aggregated discovery form first
// among what it accepts (as current kubectl and client-go do).
func wantsAggregated(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if mt == mediaJSON && params["g"] == "apidiscovery.k8s.io" && params["v"] == "v2" && params["as"] == "APIGroupDiscoveryList" {
			return true
		}
		if mt == mediaJSON || mt == "*/*" {
			return false
		}
	}
	return false
}

func (s *Server) serveCoreVersions(w http.ResponseWriter, r *http.Request) {
	infoFrom(r.Context()).verb = "get"
	if wantsAggregated(r) {
		writeJSON(w, aggregatedMedia, s.aggregated(true))
		return
	}
	writeJSON(w, mediaJSON, &metav1.APIVersions{
		TypeMeta:                   metav1.TypeMeta{Kind: "APIVersions"},
		Versions:                   []string{"v1"},
		ServerAddressByClientCIDRs: []metav1.ServerAddressByClientCIDR{{ClientCIDR: "0.0.0.0/0", ServerAddress: serverAddress(r)}},
	})
}

func serverAddress(r *http.Request) string { return r.Host }

func (s *Server) apiGroup(group string) metav1.APIGroup {
	g := metav1.APIGroup{TypeMeta: metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}, Name: group}
	for _, gv := range s.reg.groupVersions() {
		if gv.Group == group {
			v := metav1.GroupVersionForDiscovery{GroupVersion: gv.String(), Version: gv.Version}
			g.Versions = append(g.Versions, v)
			if g.PreferredVersion.Version == "" {
				g.PreferredVersion = v
			}
		}
	}
	return g
}

func (s *Server) serveGroups(w http.ResponseWriter, r *http.Request) {
	infoFrom(r.Context()).verb = "get"
	if wantsAggregated(r) {
		writeJSON(w, aggregatedMedia, s.aggregated(false))
		return
	}
	list := metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}}
	seen := map[string]bool{}
	for _, gv := range s.reg.groupVersions() {
		if gv.Group == "" || seen[gv.Group] {
			continue
		}
		seen[gv.Group] = true
		list.Groups = append(list.Groups, s.apiGroup(gv.Group))
	}
	writeJSON(w, mediaJSON, &list)
}

func (s *Server) serveGroup(group string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		infoFrom(r.Context()).verb = "get"
		g := s.apiGroup(group)
		writeJSON(w, mediaJSON, &g)
	}
}

// subresourcesOf lists a resource's subresources for discovery.
func (r *resource) subresourceNames() []string {
	var out []string
	if r.hasStatus {
		out = append(out, "status")
	}
	if r.scale {
		out = append(out, "scale")
	}
	return append(out, r.subresources...)
}

// subresourceKind and subresourceVerbs are the registry's subKind and
// verbs plus serviceaccounts/token (TokenRequest, create only), which the
// registry's tables do not list.
func subresourceKind(r *resource, sub string) (group, version, kind string) {
	if sub == "token" {
		return tokenRequestGVK.Group, tokenRequestGVK.Version, tokenRequestGVK.Kind
	}
	return r.subKind(sub)
}

func subresourceVerbs(r *resource, sub string) []string {
	if v := r.verbs(sub); v != nil || sub != "token" {
		return v
	}
	return []string{"create"}
}

func (s *Server) resourceList(gv schema.GroupVersion) *metav1.APIResourceList {
	list := &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: gv.String()}
	for _, r := range s.reg.inGroupVersion(gv) {
		list.APIResources = append(list.APIResources, metav1.APIResource{
			Name: r.plural, SingularName: r.singular, Namespaced: r.namespaced, Kind: r.gvk.Kind,
			Verbs: r.verbs(""), ShortNames: r.shortNames, Categories: r.categories,
			StorageVersionHash: "",
		})
		for _, sub := range r.subresourceNames() {
			g, v, k := subresourceKind(r, sub)
			ar := metav1.APIResource{Name: r.plural + "/" + sub, Namespaced: r.namespaced, Kind: k, Verbs: subresourceVerbs(r, sub)}
			if g != r.gvk.Group || v != r.gvk.Version {
				ar.Group, ar.Version = g, v
			}
			list.APIResources = append(list.APIResources, ar)
		}
	}
	return list
}

func (s *Server) serveResourceList(group, version string) http.HandlerFunc {
	gv := schema.GroupVersion{Group: group, Version: version}
	return func(w http.ResponseWriter, r *http.Request) {
		infoFrom(r.Context()).verb = "get"
		writeJSON(w, mediaJSON, s.resourceList(gv))
	}
}

// aggregated is the v2 aggregated discovery document of the core group
// (for /api) or of the named groups (for /apis).
func (s *Server) aggregated(core bool) *apidiscoveryv2.APIGroupDiscoveryList {
	out := &apidiscoveryv2.APIGroupDiscoveryList{
		TypeMeta: metav1.TypeMeta{Kind: "APIGroupDiscoveryList", APIVersion: "apidiscovery.k8s.io/v2"},
	}
	index := map[string]int{}
	for _, gv := range s.reg.groupVersions() {
		if (gv.Group == "") != core {
			continue
		}
		i, ok := index[gv.Group]
		if !ok {
			i = len(out.Items)
			index[gv.Group] = i
			out.Items = append(out.Items, apidiscoveryv2.APIGroupDiscovery{ObjectMeta: metav1.ObjectMeta{Name: gv.Group}})
		}
		vd := apidiscoveryv2.APIVersionDiscovery{Version: gv.Version, Freshness: apidiscoveryv2.DiscoveryFreshnessCurrent}
		for _, r := range s.reg.inGroupVersion(gv) {
			scope := apidiscoveryv2.ScopeCluster
			if r.namespaced {
				scope = apidiscoveryv2.ScopeNamespace
			}
			rd := apidiscoveryv2.APIResourceDiscovery{
				Resource:         r.plural,
				ResponseKind:     &metav1.GroupVersionKind{Group: r.gvk.Group, Version: r.gvk.Version, Kind: r.gvk.Kind},
				Scope:            scope,
				SingularResource: r.singular,
				Verbs:            r.verbs(""),
				ShortNames:       r.shortNames,
				Categories:       r.categories,
			}
			for _, sub := range r.subresourceNames() {
				g, v, k := subresourceKind(r, sub)
				rd.Subresources = append(rd.Subresources, apidiscoveryv2.APISubresourceDiscovery{
					Subresource:  sub,
					ResponseKind: &metav1.GroupVersionKind{Group: g, Version: v, Kind: k},
					Verbs:        subresourceVerbs(r, sub),
				})
			}
			vd.Resources = append(vd.Resources, rd)
		}
		out.Items[i].Versions = append(out.Items[i].Versions, vd)
	}
	return out
}
