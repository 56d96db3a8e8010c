package openapi

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	openapi_v2 "github.com/google/gnostic-models/openapiv2"
	openapi_v3 "github.com/google/gnostic-models/openapiv3"
	"github.com/gorilla/mux"
	"google.golang.org/protobuf/proto"
	"k8s.io/kube-openapi/pkg/handler3"
)

const (
	pbV2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
	pbV3 = "application/com.github.proto-openapi.spec.v3@v1.0+protobuf"
)

func TestHandler(t *testing.T) {
	r := mux.NewRouter()
	testDocs(t).Register(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(t *testing.T, method, path string, header ...string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	// The index lists each group-version with its hash, in JSON whatever
	// the client accepts.
	resp, body := get(t, "GET", "/openapi/v3", "Accept", "application/vnd.kubernetes.protobuf")
	var index handler3.OpenAPIV3Discovery
	if err := json.Unmarshal(body, &index); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/openapi/v3: %d %v %s", resp.StatusCode, err, body)
	}
	if len(index.Paths) != 2 || index.Paths["api/v1"].ServerRelativeURL == "" || index.Paths["apis/apps/v1"].ServerRelativeURL == "" {
		t.Fatalf("index %+v", index)
	}
	apiV1 := index.Paths["api/v1"].ServerRelativeURL
	if !strings.HasPrefix(apiV1, "/openapi/v3/api/v1?hash=") {
		t.Fatalf("api/v1 at %s", apiV1)
	}

	t.Run("hash makes it immutable", func(t *testing.T) {
		resp, body := get(t, "GET", apiV1)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "public, immutable" {
			t.Errorf("Cache-Control %q", cc)
		}
		if resp.Header.Get("Expires") == "" || resp.Header.Get("Etag") == "" {
			t.Errorf("headers %v", resp.Header)
		}
		if !json.Valid(body) {
			t.Errorf("not JSON")
		}
	})
	t.Run("no hash, no caching promise", func(t *testing.T) {
		resp, _ := get(t, "GET", "/openapi/v3/api/v1")
		if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "" {
			t.Errorf("%d Cache-Control %q", resp.StatusCode, resp.Header.Get("Cache-Control"))
		}
	})
	t.Run("stale hash redirects", func(t *testing.T) {
		resp, _ := get(t, "GET", "/openapi/v3/api/v1?hash=STALE")
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != apiV1 {
			t.Errorf("%d Location %q, want 301 to %s", resp.StatusCode, resp.Header.Get("Location"), apiV1)
		}
	})
	t.Run("etag", func(t *testing.T) {
		for _, p := range []string{"/openapi/v2", "/openapi/v3", apiV1} {
			resp, _ := get(t, "GET", p)
			etag := resp.Header.Get("Etag")
			resp, body := get(t, "GET", p, "If-None-Match", etag)
			if resp.StatusCode != http.StatusNotModified || len(body) != 0 {
				t.Errorf("%s with If-None-Match: %d", p, resp.StatusCode)
			}
		}
	})
	t.Run("v3 protobuf", func(t *testing.T) {
		resp, body := get(t, "GET", apiV1, "Accept", pbV3)
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "protobuf") {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var doc openapi_v3.Document
		if err := proto.Unmarshal(body, &doc); err != nil || doc.GetComponents().GetSchemas() == nil {
			t.Fatalf("protobuf: %v", err)
		}
	})
	t.Run("v2 negotiation", func(t *testing.T) {
		resp, body := get(t, "GET", "/openapi/v2")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !json.Valid(body) {
			t.Errorf("default: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		jsonTag := resp.Header.Get("Etag")
		resp, body = get(t, "GET", "/openapi/v2", "Accept", pbV2+", application/json;q=0.5")
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "protobuf") {
			t.Fatalf("protobuf: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if resp.Header.Get("Etag") == jsonTag {
			t.Errorf("protobuf and JSON share an ETag")
		}
		var doc openapi_v2.Document
		if err := proto.Unmarshal(body, &doc); err != nil || len(doc.GetDefinitions().GetAdditionalProperties()) == 0 {
			t.Fatalf("protobuf: %v", err)
		}
		resp, _ = get(t, "GET", "/openapi/v2", "Accept", "text/html")
		if resp.StatusCode != http.StatusNotAcceptable {
			t.Errorf("text/html: %d, want 406", resp.StatusCode)
		}
	})
	t.Run("head", func(t *testing.T) {
		resp, body := get(t, "HEAD", "/openapi/v2")
		if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength <= 0 {
			t.Errorf("HEAD: %d, %d bytes, length %d", resp.StatusCode, len(body), resp.ContentLength)
		}
	})
	t.Run("errors are Status", func(t *testing.T) {
		for path, code := range map[string]int{
			"/openapi/v3/apis/batch/v1": http.StatusNotFound,
			"/openapi/v3/apis":          http.StatusNotFound,
		} {
			resp, body := get(t, "GET", path)
			var st struct{ Kind, Reason string }
			json.Unmarshal(body, &st)
			if resp.StatusCode != code || st.Kind != "Status" {
				t.Errorf("%s: %d %s", path, resp.StatusCode, body)
			}
		}
		rec := httptest.NewRecorder()
		testDocs(t).Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/openapi/v2", nil))
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, HEAD" {
			t.Errorf("POST: %d Allow %q", rec.Code, rec.Header().Get("Allow"))
		}
	})
}
