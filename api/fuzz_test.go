package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"flotilla/api/apitest"
)

// fuzzTargets are the create endpoints the decode fuzzer posts to, with a
// valid body each for the seed corpus.
var fuzzTargets = []struct{ path, seed string }{
	{"/api/v1/namespaces/default/pods", `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"b"}},"spec":{"volumes":[{"name":"v","emptyDir":{}}],"containers":[{"name":"c","image":"nginx","ports":[{"containerPort":80}],"volumeMounts":[{"name":"v","mountPath":"/v"}],"resources":{"limits":{"cpu":"1"}}}]}}`},
	{"/api/v1/namespaces/default/services", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"type":"NodePort","selector":{"a":"b"},"ports":[{"port":80,"targetPort":"http"}]}}`},
	{"/api/v1/namespaces", `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n"}}`},
	{"/api/v1/nodes", `{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"},"spec":{"podCIDR":"10.244.0.0/24","taints":[{"key":"k","effect":"NoSchedule"}]}}`},
	{"/api/v1/namespaces/default/endpoints", `{"apiVersion":"v1","kind":"Endpoints","metadata":{"name":"e"},"subsets":[{"addresses":[{"ip":"10.0.0.1"}],"ports":[{"port":80}]}]}`},
	{"/api/v1/namespaces/default/serviceaccounts", `{"metadata":{"name":"sa"}}`},
	{"/api/v1/namespaces/default/configmaps", `{"metadata":{"name":"c"},"data":{"k":"v"},"binaryData":{"b":"AAE="}}`},
	{"/api/v1/namespaces/default/secrets", `{"metadata":{"name":"s"},"type":"kubernetes.io/tls","data":{"tls.crt":"YQ==","tls.key":"Yg=="}}`},
	{"/api/v1/namespaces/default/events", `{"metadata":{"name":"e"},"involvedObject":{"kind":"Pod","name":"p"},"reason":"R"}`},
	{"/apis/apps/v1/namespaces/default/deployments", `{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},"spec":{"selector":{"matchExpressions":[{"key":"a","operator":"In","values":["b"]}]},"strategy":{"rollingUpdate":{"maxSurge":"50%","maxUnavailable":0}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}}`},
	{"/apis/apps/v1/namespaces/default/replicasets", `{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"r"},"spec":{"replicas":2,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}}`},
}

var contentTypes = []string{"application/json", "application/yaml", "application/vnd.kubernetes.protobuf", ""}

var (
	fuzzOnce sync.Once
	fuzzSrv  *apitest.Server
)

// fuzzServer is one server per fuzz worker process; requests go straight to
// the handler, without a socket.
func fuzzServer(t *testing.T) http.Handler {
	fuzzOnce.Do(func() { fuzzSrv = apitest.NewServer(t) })
	return fuzzSrv.API.Handler()
}

func serve(h http.Handler, method, path, ctype string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(rec, req)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		panic(fmt.Sprintf("%s %s %q: no answer in 5s", method, path, body))
	}
	return rec
}

// FuzzDecodeCreate: no request body, for any resource and content type,
// gives a panic or a 5xx.
func FuzzDecodeCreate(f *testing.F) {
	for i, tc := range fuzzTargets {
		f.Add(uint8(i), uint8(0), []byte(tc.seed), "")
		f.Add(uint8(i), uint8(0), []byte(tc.seed), "Strict")
	}
	f.Add(uint8(0), uint8(1), []byte("metadata:\n  name: y\nspec:\n  containers: [{name: c, image: x}]\n"), "")
	f.Add(uint8(0), uint8(2), []byte("k8s\x00\x0a\x02v1"), "")
	f.Fuzz(func(t *testing.T, target, ct uint8, body []byte, fv string) {
		h := fuzzServer(t)
		tc := fuzzTargets[int(target)%len(fuzzTargets)]
		path := tc.path
		if fv != "" {
			path += "?fieldValidation=" + url.QueryEscape(fv)
		}
		rec := serve(h, "POST", path, contentTypes[int(ct)%len(contentTypes)], body)
		if rec.Code >= 500 {
			t.Fatalf("POST %s %q: %d %s", path, body, rec.Code, rec.Body.String())
		}
	})
}

var patchTypes = []string{"application/merge-patch+json", "application/json-patch+json", "application/strategic-merge-patch+json"}

// FuzzPatch: no patch of an existing object gives a panic or a 5xx.
func FuzzPatch(f *testing.F) {
	f.Add(uint8(0), uint8(0), []byte(`{"spec":{"replicas":3}}`))
	f.Add(uint8(0), uint8(1), []byte(`[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"y"}]`))
	f.Add(uint8(0), uint8(2), []byte(`{"spec":{"template":{"spec":{"containers":[{"name":"c","$patch":"delete"}]}}}}`))
	f.Add(uint8(1), uint8(2), []byte(`{"spec":{"containers":[{"name":"c","image":"z"}]}}`))
	f.Add(uint8(2), uint8(0), []byte(`{"spec":{"ports":[{"port":81}],"type":"NodePort"}}`))
	f.Add(uint8(0), uint8(1), []byte(`[{"op":"copy","from":"/spec","path":"/spec/template/x"}]`))
	paths := []string{
		"/apis/apps/v1/namespaces/default/deployments/fz",
		"/api/v1/namespaces/default/pods/fz",
		"/api/v1/namespaces/default/services/fz",
		"/apis/apps/v1/namespaces/default/deployments/fz/scale",
		"/api/v1/namespaces/default/pods/fz/status",
	}
	f.Fuzz(func(t *testing.T, target, pt uint8, body []byte) {
		h := fuzzServer(t)
		for _, seed := range []struct{ path, body string }{
			{"/apis/apps/v1/namespaces/default/deployments", `{"metadata":{"name":"fz"},"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}}`},
			{"/api/v1/namespaces/default/pods", `{"metadata":{"name":"fz"},"spec":{"containers":[{"name":"c","image":"x"}]}}`},
			{"/api/v1/namespaces/default/services", `{"metadata":{"name":"fz"},"spec":{"ports":[{"port":80}]}}`},
		} {
			serve(h, "POST", seed.path, "application/json", []byte(seed.body)) // 201 or 409
		}
		path := paths[int(target)%len(paths)]
		rec := serve(h, "PATCH", path, patchTypes[int(pt)%len(patchTypes)], body)
		if rec.Code >= 500 {
			t.Fatalf("PATCH %s %q: %d %s", path, body, rec.Code, rec.Body.String())
		}
	})
}
