package join

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"flotilla/internal/pki"
)

// File names inside a tls directory (<data>/tls).
const (
	FileCACert     = "ca.crt"
	FileCAKey      = "ca.key"
	FileServerCert = "server.crt"
	FileServerKey  = "server.key"
	FileSAKey      = "sa.key"
	FileAdminToken = "admin.token"
	FileSecrets    = "secrets.json"
	FileGossip     = "gossip.json"
	FileNodeCert   = "node.crt"
	FileNodeKey    = "node.key"
)

// CACommonName is the CN of the cluster CA NewBundle makes.
const CACommonName = "flotilla-ca"

// GossipKeySize is the size of a memberlist AES-256 key.
const GossipKeySize = 32

// Bundle is what every server holds (and hands a joining server): the
// cluster's shared secrets.
type Bundle struct {
	CACert []byte `json:"caCert"` // PEM
	CAKey  []byte `json:"caKey"`  // PEM
	SAKey  []byte `json:"saKey"`  // PEM, ECDSA P-256; signs ServiceAccount tokens
	// AdminToken is the bearer token of pki.AdminUser.
	AdminToken string `json:"adminToken"`
	// GossipKeys are memberlist keys, primary first, GossipKeySize bytes each.
	GossipKeys [][]byte `json:"gossipKeys"`
	// SecretsKeyring is the JSON of the seal keyring (opaque here).
	SecretsKeyring []byte `json:"secretsKeyring"`
}

// NewBundle makes a cluster's secrets at bootstrap: a new CA, a
// ServiceAccount signing key, an admin token, a secrets keyring and the
// gossip key derived from the server token (so servers that share the token
// can gossip before any bundle has been handed out).
func NewBundle(serverToken string) (*Bundle, error) {
	if serverToken == "" {
		return nil, errors.New("new bundle: empty server token")
	}
	ca, err := pki.NewCA(CACommonName)
	if err != nil {
		return nil, err
	}
	sa, err := pki.NewKeyPEM()
	if err != nil {
		return nil, err
	}
	keyring, err := newSecretsKeyring()
	if err != nil {
		return nil, err
	}
	return &Bundle{
		CACert:         ca.CertPEM,
		CAKey:          ca.KeyPEM,
		SAKey:          sa,
		AdminToken:     pki.NewServerToken(),
		GossipKeys:     [][]byte{GossipKeyFromToken(serverToken)},
		SecretsKeyring: keyring,
	}, nil
}

// newSecretsKeyring writes seal.Keyring's JSON form with one fresh key
// ({"primary":"k1","keys":{"k1":"<base64 32 bytes>"}}). It is written here
// rather than by internal/seal so the credentials package does not depend
// on the secrets-at-rest package.
func newSecretsKeyring() ([]byte, error) {
	return json.Marshal(struct {
		Primary string            `json:"primary"`
		Keys    map[string]string `json:"keys"`
	}{"k1", map[string]string{"k1": base64.StdEncoding.EncodeToString(pki.RandomKey())}})
}

// GossipKeyFromToken derives the first gossip key from the server token:
// HKDF-SHA256(token, no salt, info "flotilla gossip key v1"), 32 bytes.
func GossipKeyFromToken(serverToken string) []byte {
	return derive(serverToken, "flotilla gossip key v1")
}

// derive is HKDF-SHA256 of the server token with info, 32 bytes.
func derive(token, info string) []byte {
	k, err := hkdf.Key(sha256.New, []byte(token), nil, info, 32)
	if err != nil {
		panic("hkdf: " + err.Error()) // only for lengths over 255*32 bytes
	}
	return k
}

// Validate checks that every part of b is present and well formed.
func (b *Bundle) Validate() error {
	if _, err := pki.ParseCA(b.CACert, b.CAKey); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if _, err := pki.ParseKey(b.SAKey); err != nil {
		return fmt.Errorf("bundle: service account key: %w", err)
	}
	if b.AdminToken == "" || strings.ContainsAny(b.AdminToken, " \t\r\n") {
		return errors.New("bundle: admin token empty or not one word")
	}
	if err := validGossipKeys(b.GossipKeys); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if !json.Valid(b.SecretsKeyring) {
		return errors.New("bundle: secrets keyring is not JSON")
	}
	return nil
}

func validGossipKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("no gossip key")
	}
	for i, k := range keys {
		if len(k) != GossipKeySize {
			return fmt.Errorf("gossip key %d is %d bytes, want %d", i, len(k), GossipKeySize)
		}
	}
	return nil
}

// Save writes b into tlsDir, keys 0600 and the CA certificate 0644. The CA
// certificate is written last: LoadBundle needs every file, and a crash
// halfway leaves a directory that a new Save simply completes.
func (b *Bundle) Save(tlsDir string) error {
	if err := b.Validate(); err != nil {
		return err
	}
	gossip, err := marshalGossipKeys(b.GossipKeys)
	if err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{FileCAKey, b.CAKey, 0o600},
		{FileSAKey, b.SAKey, 0o600},
		{FileAdminToken, []byte(b.AdminToken + "\n"), 0o600},
		{FileSecrets, b.SecretsKeyring, 0o600},
		{FileGossip, gossip, 0o600},
		{FileCACert, b.CACert, 0o644},
	}
	for _, f := range files {
		if err := pki.WriteFile(filepath.Join(tlsDir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("save bundle: %w", err)
		}
	}
	return nil
}

// LoadBundle reads a bundle Save wrote. When any of its files is missing
// the error wraps os.ErrNotExist.
func LoadBundle(tlsDir string) (*Bundle, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(tlsDir, name))
		if err != nil {
			return nil, fmt.Errorf("load bundle: %w", err)
		}
		return b, nil
	}
	b := &Bundle{}
	var err error
	if b.CACert, err = read(FileCACert); err != nil {
		return nil, err
	}
	if b.CAKey, err = read(FileCAKey); err != nil {
		return nil, err
	}
	if b.SAKey, err = read(FileSAKey); err != nil {
		return nil, err
	}
	admin, err := read(FileAdminToken)
	if err != nil {
		return nil, err
	}
	b.AdminToken = strings.TrimSpace(string(admin))
	if b.SecretsKeyring, err = read(FileSecrets); err != nil {
		return nil, err
	}
	if b.GossipKeys, err = loadGossipKeys(filepath.Join(tlsDir, FileGossip)); err != nil {
		return nil, fmt.Errorf("load bundle: %w", err)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("load bundle from %s: %w", tlsDir, err)
	}
	return b, nil
}

// gossipFile is the JSON of gossip.json, the same layout as the gossip
// keyring record in the FSM: {"primary":0,"keys":["<base64>",...]}.
// Writers put the primary first; readers honour "primary" anyway.
type gossipFile struct {
	Primary int      `json:"primary"`
	Keys    [][]byte `json:"keys"`
}

func marshalGossipKeys(keys [][]byte) ([]byte, error) {
	if err := validGossipKeys(keys); err != nil {
		return nil, err
	}
	return json.Marshal(gossipFile{Primary: 0, Keys: keys})
}

func loadGossipKeys(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f gossipFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Primary < 0 || f.Primary >= len(f.Keys) {
		return nil, fmt.Errorf("%s: primary %d out of range (%d keys)", path, f.Primary, len(f.Keys))
	}
	keys := append([][]byte{f.Keys[f.Primary]}, f.Keys[:f.Primary]...)
	keys = append(keys, f.Keys[f.Primary+1:]...)
	if err := validGossipKeys(keys); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys, nil
}
