// Package join owns a cluster's credentials lifecycle: the bundle of shared
// secrets every server holds (CA, ServiceAccount key, admin token, gossip
// keys, secrets keyring), a server's live certificates (ServerCreds), the
// join endpoints that hand credentials to new members, the joiner side of
// those endpoints, and join tokens stored in the FSM.
//
// Two ways in, and why:
//
//   - The shared server token (`--token`, as k3s) lets fresh servers started
//     together (--bootstrap-expect) obtain the bundle before any of them has
//     a CA the others could check. POST /flotilla/v1/join/server: the joiner
//     proves it knows the token with an HMAC over a fresh nonce, its clock
//     time and its name (keys are HKDF-SHA256 of the token with separate
//     infos); the server answers the bundle sealed with AES-256-GCM under
//     another token-derived key. TLS on this exchange authenticates nothing
//     (the joiner has no CA yet); the seal does: a stranger can neither
//     read the answer nor forge one. Replays: requests older or newer than
//     5 minutes are refused, and every server remembers the nonces it saw
//     for 10 minutes. The server picks the GCM nonce itself and uses the
//     request's MAC input as additional data, so no two answers share a GCM
//     nonce (even when one request is replayed to several servers) and an
//     old answer cannot be passed off for a new request. The token is
//     only as strong as its entropy: a generated one is 256 bits; a
//     human-chosen one can be guessed offline from a captured request.
//   - Join tokens (`flotilla token create`, kubeadm's <id>.<secret> form)
//     for agents and later servers. The joiner fetches the CA anonymously,
//     checks it against the hash it was given (kubeadm's discovery hash)
//     and only then sends its token, over TLS verified against that CA to a
//     peer whose certificate has O flotilla:servers (an agent's certificate,
//     from the same CA, cannot pose as a server). Host names are not
//     checked: a server may be reached by any of its addresses. Agents send
//     a CSR and get a system:node:<name> certificate; their key never
//     leaves them. A server token-joiner gets the bundle and issues its own
//     certificate. Only the SHA-256 of a token's secret is stored, under
//     /flotilla/jointokens/<id> with the FSM expiry set, so the leader's
//     expiry loop deletes it; the handler also checks the expiry itself,
//     after a linearizable read, so revocation and creation are seen at once
//     on every server. Every token failure answers the same 401.
//
// Files live in <data>/tls (see the File constants); writes are atomic.
// gossip.json has the layout of the FSM gossip keyring record,
// {"primary":0,"keys":["<base64>",...]}; secrets.json is the seal keyring's
// own JSON, which this package only carries (NewBundle writes a fresh one
// in seal's documented layout rather than importing internal/seal).
// ServerCreds.Bundle re-reads both files so a joining server gets the keys
// as rotated, not as they were at bootstrap.
//
// Errors answered by the handlers are metav1.Status JSON.
package join
