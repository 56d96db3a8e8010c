package api

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Media types the API speaks. Responses are JSON unless the client accepts
// only YAML or protobuf; request bodies may be any of the three.
const (
	mediaJSON     = "application/json"
	mediaYAML     = "application/yaml"
	mediaProtobuf = "application/vnd.kubernetes.protobuf"
)

// outputMedia picks the response media type from Accept: the first
// acceptable entry wins. Entries asking for a transformed form (as=Table,
// as=PartialObjectMetadata) are skipped so the client falls back to the
// plain object, as kubectl does.
func outputMedia(r *http.Request) (string, error) {
	accept := r.Header.Get("Accept")
	if accept == "" {
		return mediaJSON, nil
	}
	// JSON whenever the client takes it (client-go's typed clients send
	// "application/vnd.kubernetes.protobuf,application/json"); protobuf and
	// YAML only when asked for alone.
	var other string
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if params["as"] != "" {
			continue
		}
		switch mt {
		case mediaJSON, "*/*", "application/*":
			return mediaJSON, nil
		case mediaYAML, mediaProtobuf:
			if other == "" {
				other = mt
			}
		}
	}
	if other != "" {
		return other, nil
	}
	return "", notAcceptable()
}

// encode serialises obj as media, with apiVersion and kind set from the scheme.
func encode(obj runtime.Object, media string, gv schema.GroupVersion) ([]byte, error) {
	var enc runtime.Encoder
	switch media {
	case mediaYAML:
		enc = yamlOut
	case mediaProtobuf:
		info, ok := runtime.SerializerInfoForMediaType(codecs.SupportedMediaTypes(), mediaProtobuf)
		if !ok {
			return nil, notAcceptable()
		}
		enc = info.Serializer
	default:
		enc = jsonOut
	}
	var buf bytes.Buffer
	e := runtime.WithVersionEncoder{Version: gv, Encoder: enc, ObjectTyper: scheme}
	if err := e.Encode(obj, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeObject sends obj with the given HTTP code in the negotiated media type.
func (s *Server) writeObject(w http.ResponseWriter, r *http.Request, code int, obj runtime.Object) {
	media, err := outputMedia(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	gv := obj.GetObjectKind().GroupVersionKind().GroupVersion()
	body, err := encode(obj, media, gv)
	if err != nil {
		s.log.Error("encode response", "error", err)
		s.writeStatus(w, mediaJSON, toStatus(apierrors.NewInternalError(err)))
		return
	}
	w.Header().Set("Content-Type", media)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// writeError sends err as a metav1.Status.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	st := toStatus(err)
	if st.Code >= 500 && st.Code != http.StatusServiceUnavailable && st.Code != http.StatusGatewayTimeout {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	media, merr := outputMedia(r)
	if merr != nil {
		media = mediaJSON
	}
	s.writeStatus(w, media, st)
}

func (s *Server) writeStatus(w http.ResponseWriter, media string, st *metav1.Status) {
	if st.Code == 0 {
		st.Code = http.StatusInternalServerError
	}
	if st.Details != nil && st.Details.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(st.Details.RetryAfterSeconds)))
	}
	st.APIVersion, st.Kind = "v1", "Status"
	body, err := encode(st, media, coreV1)
	if err != nil {
		media = mediaJSON
		body, _ = encode(st, mediaJSON, coreV1)
	}
	w.Header().Set("Content-Type", media)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(int(st.Code))
	_, _ = w.Write(body)
}

// readBody reads the whole request body within the body limit.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.Body == nil {
		return nil, nil
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, bodyTooLarge(limit)
		}
		return nil, badRequest("read request body: %v", err)
	}
	return data, nil
}

// fieldValidation is the fieldValidation query parameter.
type fieldValidation int

const (
	validationWarn fieldValidation = iota
	validationStrict
	validationIgnore
)

func parseFieldValidation(v string) (fieldValidation, error) {
	switch v {
	case "", "Warn":
		return validationWarn, nil
	case "Strict":
		return validationStrict, nil
	case "Ignore":
		return validationIgnore, nil
	}
	return 0, badRequest("fieldValidation: Unsupported value: %q: supported values: \"Ignore\", \"Strict\", \"Warn\"", v)
}

// decodeBody decodes a request body of the request's Content-Type into
// into, whose kind is gvk. Unknown and duplicate fields are handled as
// fieldValidation says: Strict → 400, Warn → warnings, Ignore → nothing.
func decodeBody(data []byte, contentType string, gvk schema.GroupVersionKind, into runtime.Object, fv fieldValidation) (runtime.Object, []string, error) {
	media := mediaJSON
	if contentType != "" {
		mt, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, nil, unsupportedMediaType("application/json, application/yaml, application/vnd.kubernetes.protobuf")
		}
		media = mt
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, badRequest("the request body is empty")
	}
	var dec runtime.Decoder
	switch media {
	case mediaJSON:
		dec = strictJSON
		if fv == validationIgnore {
			dec = laxJSON
		}
	case mediaYAML, "application/yml", "text/yaml":
		dec = strictYAML
		if fv == validationIgnore {
			dec = laxYAML
		}
	case mediaProtobuf:
		dec = codecs.UniversalDeserializer()
	default:
		return nil, nil, unsupportedMediaType("application/json, application/yaml, application/vnd.kubernetes.protobuf")
	}
	obj, actual, err := dec.Decode(data, &gvk, into)
	var warnings []string
	if sde, ok := runtime.AsStrictDecodingError(err); ok {
		msgs := make([]string, 0, len(sde.Errors()))
		for _, e := range sde.Errors() {
			msgs = append(msgs, e.Error())
		}
		if fv == validationStrict {
			return nil, nil, apierrors.NewBadRequest("strict decoding error: " + strings.Join(msgs, ", "))
		}
		warnings = msgs
		err = nil
	}
	if err != nil {
		return nil, nil, apierrors.NewBadRequest("the object provided is unrecognized or could not be decoded: " + err.Error())
	}
	if actual != nil && (actual.Kind != gvk.Kind || actual.Group != gvk.Group) && !(actual.Kind == "" && actual.Version == "") {
		return nil, nil, apierrors.NewBadRequest("the API version in the data (" + actual.GroupVersion().String() +
			") does not match the expected API version (" + gvk.GroupVersion().String() + ") or kind " + actual.Kind + " is not " + gvk.Kind)
	}
	if actual != nil && actual.Version != "" && actual.Version != gvk.Version {
		return nil, nil, apierrors.NewBadRequest("the API version in the data (" + actual.GroupVersion().String() +
			") does not match the expected API version (" + gvk.GroupVersion().String() + ")")
	}
	if obj != into {
		return nil, nil, apierrors.NewBadRequest("the object provided is not a " + gvk.Kind)
	}
	return obj, warnings, nil
}

// addWarnings sets kube-style Warning headers.
func addWarnings(w http.ResponseWriter, warnings []string) {
	for _, msg := range warnings {
		w.Header().Add("Warning", `299 - `+strconv.Quote(msg))
	}
}
