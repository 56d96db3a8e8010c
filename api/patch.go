package api

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

// maxJSONPatchOperations is kube-apiserver's bound on one JSON patch.
const maxJSONPatchOperations = 10000

// patchRequest is a decoded PATCH: its type, body and field validation.
type patchRequest struct {
	pt   types.PatchType
	body []byte
	fv   fieldValidation
}

func (q *request) readPatch() (*patchRequest, error) {
	fv, err := parseFieldValidation(q.query.Get("fieldValidation"))
	if err != nil {
		return nil, err
	}
	mt, _, err := mime.ParseMediaType(q.r.Header.Get("Content-Type"))
	if err != nil {
		mt = ""
	}
	pt := types.PatchType(mt)
	switch pt {
	case types.JSONPatchType, types.MergePatchType, types.StrategicMergePatchType:
	case types.ApplyYAMLPatchType, types.ApplyCBORPatchType:
		return nil, &apierrors.StatusError{ErrStatus: metav1.Status{
			Status: metav1.StatusFailure, Code: http.StatusUnsupportedMediaType, Reason: metav1.StatusReasonUnsupportedMediaType,
			Message: "server-side apply is not supported by Flotilla; use client-side apply (kubectl apply without --server-side)",
		}}
	default:
		return nil, unsupportedMediaType(string(types.JSONPatchType) + ", " + string(types.MergePatchType) + ", " + string(types.StrategicMergePatchType))
	}
	body, err := readBody(q.r, q.s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, badRequest("the patch body is empty")
	}
	return &patchRequest{pt: pt, body: body, fv: fv}, nil
}

// apply patches the JSON document cur; schema is an empty object of the
// document's type (strategic merge reads its patch strategy from the Go type).
func (p *patchRequest) apply(cur []byte, schema runtime.Object, limit int64) ([]byte, error) {
	var out []byte
	var err error
	switch p.pt {
	case types.JSONPatchType:
		var patch jsonpatch.Patch
		patch, err = jsonpatch.DecodePatch(p.body)
		if err != nil {
			return nil, apierrors.NewBadRequest(err.Error())
		}
		if len(patch) > maxJSONPatchOperations {
			return nil, apierrors.NewRequestEntityTooLargeError(
				fmt.Sprintf("The allowed maximum operations in a JSON patch is %d, got %d", maxJSONPatchOperations, len(patch)))
		}
		out, err = patch.Apply(cur)
	case types.MergePatchType:
		if !json.Valid(p.body) {
			return nil, apierrors.NewBadRequest("invalid JSON in merge patch")
		}
		out, err = jsonpatch.MergePatch(cur, p.body)
	case types.StrategicMergePatchType:
		var m map[string]any
		if jerr := json.Unmarshal(p.body, &m); jerr != nil {
			return nil, apierrors.NewBadRequest("invalid JSON in strategic merge patch: " + jerr.Error())
		}
		out, err = strategicpatch.StrategicMergePatch(cur, p.body, schema)
	}
	if err != nil {
		return nil, apierrors.NewGenericServerResponse(http.StatusUnprocessableEntity, "", schemaGRNone, "", err.Error(), 0, false)
	}
	if int64(len(out)) > 2*limit {
		return nil, apierrors.NewRequestEntityTooLargeError("the patched object is too large")
	}
	return out, nil
}

func init() {
	// Bound what "copy" operations of one JSON patch may build, as kube does.
	if jsonpatch.AccumulatedCopySizeLimit == 0 {
		jsonpatch.AccumulatedCopySizeLimit = 3 << 20
	}
}

func (q *request) patch() error {
	dry, err := q.dryRun()
	if err != nil {
		return err
	}
	p, err := q.readPatch()
	if err != nil {
		return err
	}
	warned := false
	updated, err := q.s.updateObject(q.ctx, q.res, q.ns, q.name, "", func(cur object) (object, string, error) {
		next, err := q.patchedObject(p, cur, !warned)
		warned = true
		if err != nil {
			return nil, "", err
		}
		precond := next.GetResourceVersion()
		if precond == cur.GetResourceVersion() {
			precond = ""
		}
		switch q.sub {
		case "":
			preserveServerFields(q.res, next, cur)
			return next, precond, nil
		default: // status
			copyField(cur, next, "Status")
			return cur, precond, nil
		}
	}, updateOptions{dryRun: dry})
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusOK, updated)
	return nil
}

// patchedObject applies the patch to cur and decodes the result.
func (q *request) patchedObject(p *patchRequest, cur object, warn bool) (object, error) {
	curJSON, err := json.Marshal(cur)
	if err != nil {
		return nil, err
	}
	patched, err := p.apply(curJSON, q.res.newObj(), q.s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	obj, warnings, err := decodeBody(patched, mediaJSON, q.res.gvk, newTyped(q.res), p.fv)
	if err != nil {
		return nil, err
	}
	if warn {
		addWarnings(q.w, warnings)
	}
	return obj.(object), nil
}
