package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// Prefix starts every sealed value; the key id and a colon follow it.
const Prefix = "flotilla:enc:aesgcm:v1:"

const (
	keySize   = 32 // AES-256
	nonceSize = 12 // GCM standard nonce
	maxIDLen  = 64
)

var (
	// ErrUnknownKey: the value was sealed with a key this keyring lacks.
	ErrUnknownKey = errors.New("sealed with a key not in the keyring")
	// ErrCorrupt: the value has the sealed prefix but is malformed or fails
	// authentication (tampered, truncated, or sealed with other key material
	// under the same id).
	ErrCorrupt = errors.New("sealed value is corrupt")
	// ErrKeyConflict: two keyrings hold one key id with different keys.
	ErrKeyConflict = errors.New("key id holds different key material")
)

// Keyring is a set of AES-256-GCM keys by id; the primary encrypts and any
// key decrypts. Encrypt, Decrypt and the read methods are safe for
// concurrent use; AddKey, SetPrimary and Rotate are not (Live never
// mutates a keyring it has published: it installs a new one).
type Keyring struct {
	primary string
	keys    map[string][]byte
	aeads   map[string]cipher.AEAD
}

// keyringJSON is the file and wire form:
// {"primary":"k1a2b3c4d","keys":{"k1a2b3c4d":"<base64 of 32 bytes>"}}.
type keyringJSON struct {
	Primary string            `json:"primary"`
	Keys    map[string][]byte `json:"keys"`
}

// NewKeyring returns a keyring with one fresh key, primary.
func NewKeyring() *Keyring {
	k := &Keyring{keys: map[string][]byte{}, aeads: map[string]cipher.AEAD{}}
	k.primary = k.AddKey()
	return k
}

// ParseKeyring reads the JSON form written by Marshal.
func ParseKeyring(b []byte) (*Keyring, error) {
	var j keyringJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("parse keyring: %w", err)
	}
	if len(j.Keys) == 0 {
		return nil, errors.New("parse keyring: no keys")
	}
	k := &Keyring{keys: map[string][]byte{}, aeads: map[string]cipher.AEAD{}}
	for id, key := range j.Keys {
		if err := k.add(id, key); err != nil {
			return nil, fmt.Errorf("parse keyring: %w", err)
		}
	}
	if _, ok := k.keys[j.Primary]; !ok {
		return nil, fmt.Errorf("parse keyring: primary %q is not one of its keys", j.Primary)
	}
	k.primary = j.Primary
	return k, nil
}

// Marshal returns the JSON form (it holds the keys: store it 0600).
func (k *Keyring) Marshal() ([]byte, error) {
	return json.Marshal(keyringJSON{Primary: k.primary, Keys: k.keys})
}

// PrimaryID is the id of the key that encrypts.
func (k *Keyring) PrimaryID() string { return k.primary }

// IDs lists the key ids, sorted.
func (k *Keyring) IDs() []string {
	ids := make([]string, 0, len(k.keys))
	for id := range k.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Clone returns an independent copy.
func (k *Keyring) Clone() *Keyring {
	c := &Keyring{primary: k.primary, keys: make(map[string][]byte, len(k.keys)), aeads: make(map[string]cipher.AEAD, len(k.aeads))}
	for id, key := range k.keys {
		c.keys[id] = key // never mutated after add
		c.aeads[id] = k.aeads[id]
	}
	return c
}

// AddKey adds a fresh random key, not primary, and returns its id.
func (k *Keyring) AddKey() string {
	for {
		var b [4]byte
		rand.Read(b[:])
		id := "k" + hex.EncodeToString(b[:])
		if _, taken := k.keys[id]; taken {
			continue
		}
		key := make([]byte, keySize)
		rand.Read(key)
		if err := k.add(id, key); err != nil {
			panic(err) // id and key are well formed by construction
		}
		return id
	}
}

// SetPrimary makes the key id the one that encrypts.
func (k *Keyring) SetPrimary(id string) error {
	if _, ok := k.keys[id]; !ok {
		return fmt.Errorf("set primary: %w: %q", ErrUnknownKey, id)
	}
	k.primary = id
	return nil
}

// Rotate adds a new key and makes it primary; the old keys stay for
// decryption. It returns the new id.
func (k *Keyring) Rotate() (id string) {
	id = k.AddKey()
	k.primary = id
	return id
}

// Merge adds other's keys to k (keys already held are kept) and takes
// other's primary. A shared id with different key material is
// ErrKeyConflict, and k is then unchanged.
func (k *Keyring) Merge(other *Keyring) error {
	for id, key := range other.keys {
		if mine, ok := k.keys[id]; ok && subtle.ConstantTimeCompare(mine, key) != 1 {
			return fmt.Errorf("merge keyring: %w: %q", ErrKeyConflict, id)
		}
	}
	for id, key := range other.keys {
		if _, ok := k.keys[id]; !ok {
			k.keys[id], k.aeads[id] = key, other.aeads[id]
		}
	}
	k.primary = other.primary
	return nil
}

// Encrypt seals plain with the primary key.
func (k *Keyring) Encrypt(plain []byte) ([]byte, error) {
	aead := k.aeads[k.primary]
	if aead == nil {
		return nil, errors.New("encrypt: keyring has no primary key")
	}
	hdr := Prefix + k.primary + ":"
	out := make([]byte, len(hdr)+nonceSize, len(hdr)+nonceSize+len(plain)+aead.Overhead())
	copy(out, hdr)
	nonce := out[len(hdr):]
	rand.Read(nonce)
	return aead.Seal(out, nonce, plain, []byte(hdr)), nil
}

// Decrypt opens a value sealed with any key of the keyring. A value without
// Prefix is returned as it is (written before encryption was turned on;
// the caller must not modify it).
func (k *Keyring) Decrypt(b []byte) ([]byte, error) {
	if !bytes.HasPrefix(b, []byte(Prefix)) {
		return b, nil
	}
	id, body, ok := split(b)
	if !ok {
		return nil, fmt.Errorf("decrypt: %w: no key id", ErrCorrupt)
	}
	aead := k.aeads[id]
	if aead == nil {
		return nil, fmt.Errorf("decrypt: %w: %q", ErrUnknownKey, id)
	}
	if len(body) < nonceSize+aead.Overhead() {
		return nil, fmt.Errorf("decrypt: %w: too short", ErrCorrupt)
	}
	hdr := b[:len(b)-len(body)]
	plain, err := aead.Open(nil, body[:nonceSize], body[nonceSize:], hdr)
	if err != nil {
		return nil, fmt.Errorf("decrypt with key %q: %w: authentication failed", id, ErrCorrupt)
	}
	return plain, nil
}

// KeyID reports which key sealed b; ok is false when b is not sealed (or
// its header is malformed).
func KeyID(b []byte) (id string, ok bool) {
	if !bytes.HasPrefix(b, []byte(Prefix)) {
		return "", false
	}
	id, _, ok = split(b)
	return id, ok
}

// split parses a value known to start with Prefix into its key id and the
// nonce+ciphertext after the id's colon.
func split(b []byte) (id string, body []byte, ok bool) {
	rest := b[len(Prefix):]
	i := bytes.IndexByte(rest, ':')
	if i <= 0 || i > maxIDLen || !validID(string(rest[:i])) {
		return "", nil, false
	}
	return string(rest[:i]), rest[i+1:], true
}

func (k *Keyring) add(id string, key []byte) error {
	if !validID(id) {
		return fmt.Errorf("key id %q: want 1-%d letters, digits, '-', '_' or '.'", id, maxIDLen)
	}
	if len(key) != keySize {
		return fmt.Errorf("key %q: want %d bytes, have %d", id, keySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return fmt.Errorf("key %q: %w", id, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return fmt.Errorf("key %q: %w", id, err)
	}
	k.keys[id] = bytes.Clone(key)
	k.aeads[id] = aead
	return nil
}

// validID: ids go into the sealed header between colons, so they are a
// small safe alphabet.
func validID(id string) bool {
	if id == "" || len(id) > maxIDLen {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}
