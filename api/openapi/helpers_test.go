package openapi

import (
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/gorilla/mux"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
)

// testResources is what the api package serves (issue 3).
var testResources = []Resource{
	{Version: "v1", Kind: "Namespace", Plural: "namespaces", Object: &corev1.Namespace{}, List: &corev1.NamespaceList{}, Subresources: []string{"status"}},
	{Version: "v1", Kind: "Node", Plural: "nodes", Subresources: []string{"status"}},
	{Version: "v1", Kind: "Pod", Plural: "pods", Namespaced: true, Object: &corev1.Pod{}, List: &corev1.PodList{},
		Subresources: []string{"status", "binding", "eviction", "log", "exec"}},
	{Version: "v1", Kind: "Service", Plural: "services", Namespaced: true, Subresources: []string{"status"}},
	{Version: "v1", Kind: "Endpoints", Plural: "endpoints", Namespaced: true},
	{Version: "v1", Kind: "ServiceAccount", Plural: "serviceaccounts", Namespaced: true},
	{Version: "v1", Kind: "ConfigMap", Plural: "configmaps", Namespaced: true},
	{Version: "v1", Kind: "Secret", Plural: "secrets", Namespaced: true},
	{Version: "v1", Kind: "Event", Plural: "events", Namespaced: true},
	{Group: "apps", Version: "v1", Kind: "Deployment", Plural: "deployments", Namespaced: true,
		Object: &appsv1.Deployment{}, List: &appsv1.DeploymentList{}, Subresources: []string{"status", "scale"}},
	{Group: "apps", Version: "v1", Kind: "ReplicaSet", Plural: "replicasets", Namespaced: true, Subresources: []string{"status", "scale"},
		Verbs: []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}},
}

var (
	testDocsOnce sync.Once
	testDocsVal  *Docs
	testDocsErr  error
)

// testDocs builds the documents of testResources once per test binary:
// building is deterministic and the race detector makes it slow.
func testDocs(t testing.TB) *Docs {
	t.Helper()
	testDocsOnce.Do(func() { testDocsVal, testDocsErr = New(testResources) })
	if testDocsErr != nil {
		t.Fatalf("New: %v", testDocsErr)
	}
	return testDocsVal
}

// newTestServer serves the documents through the API's router, as the api
// package mounts them, and returns a client config for it.
func newTestServer(t testing.TB) *rest.Config {
	t.Helper()
	r := mux.NewRouter()
	testDocs(t).Register(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return &rest.Config{Host: srv.URL}
}
