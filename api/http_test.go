package api_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/cluster"
)

const podJSON = `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"%s"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}`

func podBody(name string) string { return strings.Replace(podJSON, "%s", name, 1) }

// TestErrorCodes: every error is a metav1.Status with kube's code and reason.
func TestErrorCodes(t *testing.T) {
	s := apitest.NewServer(t, apitest.Options{API: func(c *api.Config) { c.MaxBodyBytes = 64 << 10 }})
	if r := do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json", podBody("exists")); r.code != 201 {
		t.Fatalf("setup: %d %s", r.code, r.body)
	}
	big := `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"k":"` + strings.Repeat("x", 70<<10) + `"}}`
	cases := []struct {
		name, method, path, ctype string
		body                      string
		code                      int
		reason                    metav1.StatusReason
		msg                       string
	}{
		{"bad json", "POST", "/api/v1/namespaces/default/pods", "application/json", `{"metadata":`, 400, metav1.StatusReasonBadRequest, ""},
		{"empty body", "POST", "/api/v1/namespaces/default/pods", "application/json", ``, 400, metav1.StatusReasonBadRequest, ""},
		{"strict unknown field", "POST", "/api/v1/namespaces/default/pods?fieldValidation=Strict", "application/json",
			`{"metadata":{"name":"s"},"spec":{"bogus":1,"containers":[{"name":"c","image":"x"}]}}`, 400, metav1.StatusReasonBadRequest, `unknown field "spec.bogus"`},
		{"strict duplicate field", "POST", "/api/v1/namespaces/default/pods?fieldValidation=Strict", "application/json",
			`{"metadata":{"name":"s","name":"t"},"spec":{"containers":[{"name":"c","image":"x"}]}}`, 400, metav1.StatusReasonBadRequest, `duplicate field`},
		{"bad fieldValidation", "POST", "/api/v1/namespaces/default/pods?fieldValidation=Loose", "application/json", podBody("x"), 400, metav1.StatusReasonBadRequest, ""},
		{"wrong kind", "POST", "/api/v1/namespaces/default/pods", "application/json", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"k"}}`, 400, metav1.StatusReasonBadRequest, ""},
		{"namespace mismatch", "POST", "/api/v1/namespaces/default/pods", "application/json",
			`{"metadata":{"name":"n","namespace":"other"},"spec":{"containers":[{"name":"c","image":"x"}]}}`, 400, metav1.StatusReasonBadRequest, ""},
		{"resourceVersion on create", "POST", "/api/v1/namespaces/default/pods", "application/json",
			`{"metadata":{"name":"n","resourceVersion":"5"},"spec":{"containers":[{"name":"c","image":"x"}]}}`, 400, metav1.StatusReasonBadRequest, ""},
		{"name mismatch", "PUT", "/api/v1/namespaces/default/pods/exists", "application/json", podBody("other"), 400, metav1.StatusReasonBadRequest, "does not match"},
		{"bad label selector", "GET", "/api/v1/pods?labelSelector=a+in+(", "", "", 400, metav1.StatusReasonBadRequest, ""},
		{"unsupported field selector", "GET", "/api/v1/pods?fieldSelector=spec.image%3Dx", "", "", 400, metav1.StatusReasonBadRequest, "field label not supported"},
		{"bad dryRun", "POST", "/api/v1/namespaces/default/pods?dryRun=Some", "application/json", podBody("x"), 400, metav1.StatusReasonBadRequest, ""},
		{"bad json patch", "PATCH", "/api/v1/namespaces/default/pods/exists", "application/json-patch+json", `{"op":1}`, 400, metav1.StatusReasonBadRequest, ""},
		{"unknown resource", "GET", "/api/v1/foos", "", "", 404, metav1.StatusReasonNotFound, ""},
		{"unknown group", "GET", "/apis/batch/v1/jobs", "", "", 404, metav1.StatusReasonNotFound, ""},
		{"cluster resource in namespace", "GET", "/api/v1/namespaces/default/nodes", "", "", 404, metav1.StatusReasonNotFound, ""},
		{"unknown subresource", "GET", "/api/v1/namespaces/default/pods/exists/bogus", "", "", 404, metav1.StatusReasonNotFound, ""},
		{"missing object", "GET", "/api/v1/namespaces/default/pods/nope", "", "", 404, metav1.StatusReasonNotFound, `pods "nope" not found`},
		{"missing namespace", "POST", "/api/v1/namespaces/nope/pods", "application/json", podBody("x"), 404, metav1.StatusReasonNotFound, `namespaces "nope" not found`},
		{"put collection", "PUT", "/api/v1/namespaces/default/pods", "application/json", podBody("x"), 405, metav1.StatusReasonMethodNotAllowed, ""},
		{"post to name", "POST", "/api/v1/namespaces/default/pods/exists", "application/json", podBody("x"), 405, metav1.StatusReasonMethodNotAllowed, ""},
		{"delete status", "DELETE", "/api/v1/namespaces/default/pods/exists/status", "", "", 405, metav1.StatusReasonMethodNotAllowed, ""},
		{"get binding", "GET", "/api/v1/namespaces/default/pods/exists/binding", "", "", 405, metav1.StatusReasonMethodNotAllowed, ""},
		{"options", "OPTIONS", "/api/v1/namespaces/default/pods", "", "", 405, metav1.StatusReasonMethodNotAllowed, ""},
		{"already exists", "POST", "/api/v1/namespaces/default/pods", "application/json", podBody("exists"), 409, metav1.StatusReasonAlreadyExists, ""},
		{"stale update", "PUT", "/api/v1/namespaces/default/pods/exists", "application/json",
			`{"metadata":{"name":"exists","resourceVersion":"1"},"spec":{"containers":[{"name":"c","image":"nginx"}]}}`, 409, metav1.StatusReasonConflict, "the object has been modified"},
		{"expired continue", "GET", "/api/v1/namespaces/default/pods?limit=1&continue=" + base64Token(t, 1, "/core/pods/default/a"), "", "", 410, metav1.StatusReasonExpired, ""},
		{"body too large", "POST", "/api/v1/namespaces/default/configmaps", "application/json", big, 413, metav1.StatusReasonRequestEntityTooLarge, ""},
		{"unknown content type", "POST", "/api/v1/namespaces/default/pods", "text/plain", podBody("x"), 415, metav1.StatusReasonUnsupportedMediaType, ""},
		{"apply patch", "PATCH", "/api/v1/namespaces/default/pods/exists", "application/apply-patch+yaml", "metadata: {}", 415, metav1.StatusReasonUnsupportedMediaType, "server-side apply"},
		{"patch as json", "PATCH", "/api/v1/namespaces/default/pods/exists", "application/json", `{}`, 415, metav1.StatusReasonUnsupportedMediaType, ""},
		{"no containers", "POST", "/api/v1/namespaces/default/pods", "application/json", `{"metadata":{"name":"v"},"spec":{}}`, 422, metav1.StatusReasonInvalid, "spec.containers: Required value"},
		{"bad name", "POST", "/api/v1/namespaces/default/pods", "application/json", podBody("Bad_Name"), 422, metav1.StatusReasonInvalid, "metadata.name"},
		{"unsupported volume", "POST", "/api/v1/namespaces/default/pods", "application/json",
			`{"metadata":{"name":"v"},"spec":{"volumes":[{"name":"d","nfs":{"server":"s","path":"/"}}],"containers":[{"name":"c","image":"x"}]}}`, 422, metav1.StatusReasonInvalid, "not supported by Flotilla"},
		{"duplicate containers", "POST", "/api/v1/namespaces/default/pods", "application/json",
			`{"metadata":{"name":"v"},"spec":{"containers":[{"name":"c","image":"x"},{"name":"c","image":"y","ports":[{"containerPort":70000}]}]}}`, 422, metav1.StatusReasonInvalid, "containerPort"},
		{"selector mismatch", "POST", "/apis/apps/v1/namespaces/default/deployments", "application/json",
			`{"metadata":{"name":"d"},"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"c"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}}`, 422, metav1.StatusReasonInvalid, "`selector` does not match template `labels`"},
		{"bad label value", "POST", "/api/v1/namespaces/default/configmaps", "application/json",
			`{"metadata":{"name":"l","labels":{"k":"-bad-"}}}`, 422, metav1.StatusReasonInvalid, "metadata.labels"},
		{"pod spec immutable", "PATCH", "/api/v1/namespaces/default/pods/exists", "application/merge-patch+json",
			`{"spec":{"restartPolicy":"Never"}}`, 422, metav1.StatusReasonInvalid, "pod updates may not change fields"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var body any
			if tc.body != "" {
				body = tc.body
			}
			r := do(t, s, tc.method, tc.path, tc.ctype, body)
			if r.code != tc.code || r.status.Reason != tc.reason || r.status.Kind != "Status" || r.status.Code != int32(tc.code) {
				t.Fatalf("got %d %q (%s), want %d %q", r.code, r.status.Reason, r.body, tc.code, tc.reason)
			}
			if tc.msg != "" && !strings.Contains(r.status.Message, tc.msg) {
				t.Fatalf("message %q lacks %q", r.status.Message, tc.msg)
			}
		})
	}
	t.Run("invalid names each field", func(t *testing.T) {
		r := do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json",
			`{"metadata":{"name":"v"},"spec":{"restartPolicy":"Sometimes","containers":[{"name":"c"}]}}`)
		fields := map[string]bool{}
		for _, c := range r.status.Details.Causes {
			fields[c.Field] = true
		}
		if r.code != 422 || !fields["spec.restartPolicy"] || !fields["spec.containers[0].image"] {
			t.Fatalf("causes %+v", r.status.Details)
		}
	})
	t.Run("unknown fields warn by default", func(t *testing.T) {
		r := do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json",
			`{"metadata":{"name":"warned"},"spec":{"bogus":1,"containers":[{"name":"c","image":"x"}]}}`)
		if r.code != 201 || !strings.Contains(r.header.Get("Warning"), `unknown field \"spec.bogus\"`) {
			t.Fatalf("%d warning %q", r.code, r.header.Get("Warning"))
		}
		r = do(t, s, "POST", "/api/v1/namespaces/default/pods?fieldValidation=Ignore", "application/json",
			`{"metadata":{"name":"ignored"},"spec":{"bogus":1,"containers":[{"name":"c","image":"x"}]}}`)
		if r.code != 201 || r.header.Get("Warning") != "" {
			t.Fatalf("%d warning %q", r.code, r.header.Get("Warning"))
		}
	})
	t.Run("dry run writes nothing", func(t *testing.T) {
		r := do(t, s, "POST", "/api/v1/namespaces/default/pods?dryRun=All", "application/json", podBody("dry"))
		if r.code != 201 {
			t.Fatalf("%d %s", r.code, r.body)
		}
		if r := do(t, s, "GET", "/api/v1/namespaces/default/pods/dry", "", nil); r.code != 404 {
			t.Fatalf("dry-run object exists: %d", r.code)
		}
	})
	t.Run("not acceptable", func(t *testing.T) {
		req, _ := http.NewRequest("GET", s.URL+"/api/v1/namespaces/default/pods/exists", nil)
		req.Header.Set("Accept", "text/html")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 406 {
			t.Fatalf("got %d", resp.StatusCode)
		}
	})
	t.Run("yaml and protobuf", func(t *testing.T) {
		r := do(t, s, "POST", "/api/v1/namespaces/default/configmaps", "application/yaml", "metadata:\n  name: fromyaml\ndata:\n  a: b\n")
		if r.code != 201 {
			t.Fatalf("yaml create: %d %s", r.code, r.body)
		}
		req, _ := http.NewRequest("GET", s.URL+"/api/v1/namespaces/default/configmaps/fromyaml", nil)
		req.Header.Set("Accept", "application/vnd.kubernetes.protobuf")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(data), "k8s\x00") {
			t.Fatalf("protobuf get: %d %q", resp.StatusCode, data[:min(len(data), 20)])
		}
	})
}

// TestProtectionAndClusterErrors: 429, 500, 503 and 504.
func TestProtectionAndClusterErrors(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	s := apitest.NewServer(t, apitest.Options{API: func(c *api.Config) {
		c.MaxReadOnlyInFlight = 1
		c.Extra = []func(*mux.Router){func(r *mux.Router) {
			r.HandleFunc("/test/block", func(w http.ResponseWriter, r *http.Request) {
				entered <- struct{}{}
				<-release
			})
			r.HandleFunc("/test/panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
		}}
	}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(s.URL + "/test/block")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	r := do(t, s, "GET", "/api/v1/namespaces", "", nil)
	if r.code != 429 || r.status.Reason != metav1.StatusReasonTooManyRequests || r.header.Get("Retry-After") == "" {
		t.Fatalf("want 429 with Retry-After, got %d %s", r.code, r.body)
	}
	// Watches are not counted.
	resp, err := http.Get(s.URL + "/api/v1/namespaces?watch=1&timeoutSeconds=1")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("watch while full: %v", err)
	}
	resp.Body.Close()
	close(release)
	<-done

	if r := do(t, s, "GET", "/test/panic", "", nil); r.code != 500 || r.status.Reason != metav1.StatusReasonInternalError {
		t.Fatalf("panic: %d %s", r.code, r.body)
	}

	s.Cluster.FailApply(cluster.ErrNoLeader)
	r = do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json", podBody("x"))
	if r.code != 503 || r.status.Reason != metav1.StatusReasonServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("no leader: %d %s", r.code, r.body)
	}
	s.Cluster.FailApply(cluster.ErrOutcomeUnknown)
	r = do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json", podBody("x"))
	if r.code != 504 || r.status.Reason != metav1.StatusReasonTimeout {
		t.Fatalf("outcome unknown: %d %s", r.code, r.body)
	}
	s.Cluster.FailApply(nil)
	s.Cluster.FailReadIndex(cluster.ErrNotLeader)
	if r := do(t, s, "GET", "/api/v1/namespaces/default/pods", "", nil); r.code != 503 {
		t.Fatalf("read index: %d %s", r.code, r.body)
	}
	if r := do(t, s, "GET", "/api/v1/namespaces/default/pods?resourceVersion=0", "", nil); r.code != 200 {
		t.Fatalf("rv=0 read needs no leader: %d %s", r.code, r.body)
	}
}

func TestDiscoveryHealthMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	ready := func() error { return nil }
	notReady := false
	s := apitest.NewServer(t, apitest.Options{API: func(c *api.Config) {
		c.Registerer = reg
		c.Ready = func() error {
			if notReady {
				return cluster.ErrNoLeader
			}
			return ready()
		}
	}})
	dc, err := discovery.NewDiscoveryClientForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	groups, lists, err := dc.ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 5 { // core, apps, authentication, authorization, rbac
		t.Fatalf("groups %+v", groups)
	}
	found := map[string]metav1.APIResource{}
	for _, l := range lists {
		for _, r := range l.APIResources {
			found[l.GroupVersion+"/"+r.Name] = r
		}
	}
	for _, want := range []string{"v1/pods", "v1/pods/status", "v1/pods/binding", "v1/pods/eviction", "v1/pods/log", "v1/nodes", "v1/namespaces",
		"v1/services", "v1/endpoints", "v1/serviceaccounts", "v1/configmaps", "v1/secrets", "v1/events",
		"apps/v1/deployments", "apps/v1/deployments/scale", "apps/v1/replicasets", "apps/v1/replicasets/status",
		"rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/clusterroles",
		"rbac.authorization.k8s.io/v1/rolebindings", "rbac.authorization.k8s.io/v1/clusterrolebindings",
		"authorization.k8s.io/v1/selfsubjectaccessreviews", "authentication.k8s.io/v1/selfsubjectreviews"} {
		if _, ok := found[want]; !ok {
			t.Errorf("discovery lacks %s", want)
		}
	}
	if p := found["v1/pods"]; !p.Namespaced || p.ShortNames[0] != "po" || p.Kind != "Pod" || len(p.Verbs) != 8 || p.Categories[0] != "all" {
		t.Errorf("pods: %+v", p)
	}
	if n := found["v1/nodes"]; n.Namespaced {
		t.Error("nodes namespaced")
	}
	// The non-aggregated forms.
	for _, path := range []string{"/api", "/apis", "/api/v1", "/apis/apps/v1", "/apis/apps", "/version"} {
		if r := do(t, s, "GET", path, "", nil); r.code != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
			t.Errorf("%s: %d %s", path, r.code, r.body)
		}
	}
	v, err := dc.ServerVersion()
	if err != nil || v.Major != "1" {
		t.Fatalf("version %v %v", v, err)
	}
	for _, path := range []string{"/healthz", "/livez", "/readyz", "/readyz?verbose"} {
		if r := do(t, s, "GET", path, "", nil); r.code != 200 {
			t.Errorf("%s: %d", path, r.code)
		}
	}
	notReady = true
	if r := do(t, s, "GET", "/readyz", "", nil); r.code != 500 || !strings.Contains(string(r.body), "no leader") {
		t.Errorf("readyz not ready: %d %s", r.code, r.body)
	}
	r := do(t, s, "GET", "/metrics", "", nil)
	for _, m := range []string{`flotilla_apiserver_request_total{code="200",resource="",subresource="",verb="get"}`, "flotilla_apiserver_request_duration_seconds_bucket"} {
		if !strings.Contains(string(r.body), m) {
			t.Errorf("metrics lack %s", m)
		}
	}
	_ = time.Second
}
