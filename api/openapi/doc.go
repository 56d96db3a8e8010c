// Package openapi builds and serves the OpenAPI documents kubectl reads:
// /openapi/v2 (swagger 2.0, every group-version, JSON or gnostic protobuf),
// the /openapi/v3 index, and one OpenAPI 3 document per group-version at
// /openapi/v3/api/v1 and /openapi/v3/apis/<group>/<version>.
//
// It owns the documents and their HTTP semantics (ETag, ?hash=, immutable
// caching, content negotiation), nothing else: the api package decides what
// is served and passes a []Resource to New; this package never handles a
// resource request. New runs once at startup; Docs is read-only afterwards.
//
// # What kubectl reads (k8s.io/kubectl and client-go at v0.37.2)
//
//   - `kubectl apply|create --validate=strict` (the default) asks
//     cli-runtime's QueryParamVerifierV3 whether the kind's PATCH operation,
//     found by its x-kubernetes-group-version-kind, has a query parameter
//     named fieldValidation. If so the server validates; if not, kubectl
//     downloads /openapi/v2 as protobuf and validates on the client. It
//     always does the latter for `kind: List` files. Parameters are
//     therefore inline on every operation, never $refs.
//   - `kubectl apply` computes its three-way strategic merge patch from the
//     v3 schema whose x-kubernetes-group-version-kind lists the kind, when
//     the kind's PATCH accepts application/strategic-merge-patch+json; it
//     reads x-kubernetes-patch-strategy and -merge-key on properties and
//     follows allOf[0].$ref. Wrong extensions would change what apply does,
//     so the tests compare its patches with those from the Go struct tags.
//   - `kubectl explain` finds the kind from the GVK of the collection or
//     item path's operations, then the schema whose GVK list contains it
//     (compared with reflect.DeepEqual: exactly group, version, kind);
//     `-o plaintext-openapiv2` reads the v2 protobuf.
//   - client-go's discovery only ever asks /openapi/v2 for protobuf, which
//     is gnostic's conversion of the JSON document, made on first request.
//
// # Why reflection
//
// The schemas are built at startup by reflection over the k8s.io/api Go
// types we serve, not by kube-openapi's generator: there is no generated
// file to keep in step with go.mod, and a type added to the served list is
// described with no further step. The types carry what the generator would
// use: json tags (names, omitempty, inlined embedded structs), patchStrategy
// and patchMergeKey tags, SwaggerDoc() (descriptions, generated into
// k8s.io/api from the same comments), OpenAPIModelName() (definition names),
// and OpenAPISchemaType/Format/V3OneOfTypes (Quantity, IntOrString, Time,
// MicroTime, Duration). Kinds for x-kubernetes-group-version-kind come from
// client-go's scheme; query parameters from the fields of ListOptions,
// CreateOptions, PatchOptions, DeleteOptions, PodLogOptions, ... The output
// was compared once, by hand, with a kube-apiserver swagger.json: the same
// definition names, types, formats, patch extensions, operation IDs, actions
// and kinds for everything we serve, and no reflection error for any type
// in client-go's scheme. The tests check behaviour with kubectl's own code
// instead of comparing with a copied document.
//
// # What is approximate
//
//   - required: the +optional marker is a comment, invisible at runtime. A
//     field is called required when encoding/json always writes it and its
//     zero value is not null (see isRequired). Kube requires a few more
//     (slices like PodSpec.containers, pointers like Deployment selector) and
//     a few fewer (Event.reportingComponent/reportingInstance,
//     NodeRuntimeHandler.name; in groups we do not serve yet RoleRef.apiGroup,
//     NetworkPolicySpec.podSelector, PriorityClass.value, ...). Because
//     kubectl rejects a manifest that lacks a required field when it
//     validates on the client, only the v3 documents (explain's -required-
//     label) carry required; v2 carries none, and the server checks.
//   - No default values, enum lists, x-kubernetes-list-type/-list-map-keys,
//     -map-type or -unions: they come from comment markers. kubectl reads
//     none of them; server-side apply's type converter would treat every
//     list as atomic (it builds, see TestTypeConverter).
//   - Patch bodies list JSON patch, merge patch and strategic merge patch,
//     not apply-patch (server-side apply is not served).
//   - DELETE responses are documented as Status; the legacy /watch/ paths
//     and proxy/{path} are not documented.
//   - A type outside client-go's scheme gets no x-kubernetes-group-version-
//     kind on its schema (its operations still carry the kind), so kubectl
//     cannot find its schema; register such types in client-go's scheme.
package openapi
