package openapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/munnerz/goautoneg"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// representation is one media type a document is served in.
type representation struct {
	typ, subtype string
	contentType  string // what the response says
	proto        bool
	etagSuffix   string // keeps a cached JSON body from answering a protobuf request
}

// The media types kube-apiserver serves; the @v1.0 spellings are the old
// names client-go still sends for v2.
var (
	v2Types = []representation{
		{typ: "application", subtype: "json", contentType: "application/json"},
		{typ: "application", subtype: "com.github.proto-openapi.spec.v2@v1.0+protobuf", contentType: "application/com.github.proto-openapi.spec.v2.v1.0+protobuf", proto: true, etagSuffix: "-pb"},
		{typ: "application", subtype: "com.github.proto-openapi.spec.v2.v1.0+protobuf", contentType: "application/com.github.proto-openapi.spec.v2.v1.0+protobuf", proto: true, etagSuffix: "-pb"},
	}
	v3Types = []representation{
		{typ: "application", subtype: "json", contentType: "application/json"},
		{typ: "application", subtype: "com.github.proto-openapi.spec.v3@v1.0+protobuf", contentType: "application/com.github.proto-openapi.spec.v3.v1.0+protobuf", proto: true, etagSuffix: "-pb"},
		{typ: "application", subtype: "com.github.proto-openapi.spec.v3.v1.0+protobuf", contentType: "application/com.github.proto-openapi.spec.v3.v1.0+protobuf", proto: true, etagSuffix: "-pb"},
	}
)

// Register mounts the handler on the API's router for GET and HEAD of
// /openapi/v2, /openapi/v3 and /openapi/v3/....
func (d *Docs) Register(r *mux.Router) {
	h := d.Handler()
	r.Handle("/openapi/v2", h).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/openapi/v3", h).Methods(http.MethodGet, http.MethodHead)
	r.PathPrefix("/openapi/v3/").Handler(h).Methods(http.MethodGet, http.MethodHead)
}

// Handler serves the documents as kube-apiserver does:
//
//   - /openapi/v2: JSON or protobuf by Accept, 406 for anything else.
//   - /openapi/v3: the index {"paths": {"api/v1": {"serverRelativeURL":
//     "/openapi/v3/api/v1?hash=<etag>"}, ...}}.
//   - /openapi/v3/<gv>: JSON or protobuf. With ?hash= equal to the
//     document's hash the response is immutable (Cache-Control: public,
//     immutable; Expires a year ahead); with a stale hash, 301 to the
//     current URL.
//
// Every response carries an ETag and honours If-None-Match (304).
func (d *Docs) Handler() http.Handler { return http.HandlerFunc(d.serveHTTP) }

func (d *Docs) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeStatus(w, http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	p := r.URL.Path
	switch {
	case p == "/openapi/v2":
		serve(w, r, d.v2, v2Types)
	case p == "/openapi/v3" || p == "/openapi/v3/":
		serve(w, r, d.v3root, nil) // JSON whatever the Accept, as kube-apiserver
	case strings.HasPrefix(p, "/openapi/v3/"):
		key := strings.TrimPrefix(p, "/openapi/v3/")
		doc, ok := d.v3[key]
		if !ok {
			writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "no OpenAPI document for "+key)
			return
		}
		if hash := r.URL.Query().Get("hash"); hash != "" {
			if hash != doc.etag {
				http.Redirect(w, r, v3URL(key, doc.etag), http.StatusMovedPermanently)
				return
			}
			w.Header().Set("Cache-Control", "public, immutable")
			w.Header().Set("Expires", time.Now().AddDate(1, 0, 0).UTC().Format(http.TimeFormat))
		}
		serve(w, r, doc, v3Types)
	default:
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "no OpenAPI document at "+p)
	}
}

// serve writes doc in the first of reps the request accepts; nil reps means
// JSON without negotiation.
func serve(w http.ResponseWriter, r *http.Request, doc *document, reps []representation) {
	rep, ok := v2Types[0], true
	if reps != nil {
		w.Header().Add("Vary", "Accept")
		rep, ok = negotiate(r.Header.Get("Accept"), reps)
	}
	if !ok {
		writeStatus(w, http.StatusNotAcceptable, metav1.StatusReasonNotAcceptable, "the OpenAPI document is served as "+offered(reps))
		return
	}
	body := doc.json
	if rep.proto {
		var err error
		if body, err = doc.protobuf(); err != nil {
			writeStatus(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error())
			return
		}
	}
	w.Header().Set("Content-Type", rep.contentType)
	w.Header().Set("Etag", strconv.Quote(doc.etag+rep.etagSuffix))
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// negotiate picks the representation the Accept header prefers (q order,
// then the header's order); an empty header accepts anything.
func negotiate(accept string, reps []representation) (representation, bool) {
	if accept == "" {
		accept = "*/*"
	}
	for _, c := range goautoneg.ParseAccept(accept) {
		if c.Q <= 0 {
			continue
		}
		for _, rep := range reps {
			if (c.Type == rep.typ || c.Type == "*") && (c.SubType == rep.subtype || c.SubType == "*") {
				return rep, true
			}
		}
	}
	return representation{}, false
}

func offered(reps []representation) string {
	var names []string
	for _, r := range reps {
		names = append(names, r.typ+"/"+r.subtype)
	}
	return strings.Join(names, ", ")
}

// writeStatus writes an error as the metav1.Status every API error is.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	b, _ := json.Marshal(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: msg, Reason: reason, Code: int32(code),
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
