// Package httprec is the response writer wrapper that remembers a
// response's status code, for the API's metrics and its audit log. It keeps
// what the wrapped writer can do that handlers rely on: Flush (watches,
// log streams), Hijack (exec and port-forward upgrades) and Unwrap (for
// http.ResponseController).
package httprec
