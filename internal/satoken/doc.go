// Package satoken issues and verifies ServiceAccount tokens: the JWTs a pod
// presents to the API as system:serviceaccount:<namespace>:<name>.
//
// The layout is Kubernetes' bound token, so client libraries, kubectl and
// anything that decodes a projected token find what they expect: header
// {"alg":"ES256","kid":...}; claims iss, sub, aud (always an array), exp,
// iat, nbf (= iat), jti and "kubernetes.io": {namespace, serviceaccount
// {name, uid}, pod {name, uid}}. The kid is kube's: the unpadded base64url
// SHA-256 of the public key's PKIX DER, so a verifier holding several keys
// could pick the right one; Verify still trusts only the signature.
//
// Why ES256 and the standard library only: the signing key is one ECDSA
// P-256 key per cluster (<data>/tls/sa.key), every master holds it, and a
// JWT with one fixed algorithm needs no JOSE library. Verify refuses any
// other alg (in particular "none" and HMAC algs, the classic confusions),
// any "crit" header, padded or non-canonical base64, a signature that is
// not exactly 64 bytes, and tokens over MaxTokenSize.
//
// What it does not do: Verify checks the signature, the issuer, the
// subject's shape and the time window (exp, nbf, with Leeway either side);
// the audience and whether the ServiceAccount and the bound pod still
// exist are the caller's checks (the API authenticator does both: a token
// for another audience must not open the API, and a token outlives
// neither its ServiceAccount nor its pod).
package satoken
