// Package seal encrypts Secrets at rest: the keyring of AES-256-GCM keys,
// the live copy a server uses (swapped atomically, persisted to a file), and
// the rotation endpoints that move every server to a new key.
//
// # What it owns
//
// Keyring: named 32-byte keys, one of them primary. The primary encrypts;
// every key decrypts, so values written before a rotation stay readable.
// A sealed value is
//
//	"flotilla:enc:aesgcm:v1:" + keyID + ":" + nonce (12 bytes) + ciphertext+tag
//
// and the text before the nonce is the GCM additional data, so the header
// cannot be edited without failing authentication. Values without the
// prefix pass through Decrypt unchanged: they were written before
// encryption was turned on (a stored Secret is JSON and starts with "{",
// so the two never collide). ReencryptSecrets in package api rewrites them.
//
// Live holds the keyring in use. Install persists the new keyring to its
// file first (atomic rename, 0600) and only then swaps it in, so what a
// server encrypts with is always on its disk. Install merges: keys are only
// ever added, never dropped, and the incoming keyring only chooses the
// primary. Two rotations started at once on two servers therefore cannot
// make either's key vanish from anyone (the worst case is servers that
// disagree on the primary until the next rotation, and both keys decrypt
// everywhere); a key id that arrives with different key material is
// refused.
//
// RotateHandler (POST /flotilla/v1/operator/secrets/rotate, on any server):
// make a key; push the keyring holding it, not primary, to every server
// (PushHandler, POST /internal/v1/seal/keyring); only when every server has
// it, push again with it primary; then re-encrypt every Secret. Two phases,
// because a server that encrypted with a key some other server lacks would
// write Secrets that server cannot read. A failed push in the first phase
// aborts with 503 naming the server and nothing was made primary; in the
// second phase the servers already switched are switched back (best
// effort) before the same 503.
//
// # What it must not do
//
// It never logs or returns key material or plaintext in errors. It does
// not authenticate callers: PushHandler must be mounted under /internal/,
// which the API's authorizer opens to server certificates only, and
// RotateHandler under /flotilla/v1/operator/ (admins).
//
// # Decisions
//
// Key ids are random ("k" + 8 hex digits), not a counter: two servers that
// rotate at the same moment must not both mint "k2" with different keys.
// Nonces are random (96 bits), safe for far more writes than a cluster's
// Secrets see between rotations. No key derivation: each key is 32 random
// bytes from crypto/rand.
package seal
