package cluster

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, GossipKeySize) }

func TestKeyFingerprints(t *testing.T) {
	a, b := testKey(1), testKey(2)
	fa := KeyFingerprint(a)
	if len(fa) != 8 || strings.Trim(fa, "0123456789abcdef") != "" {
		t.Fatalf("fingerprint %q: want 8 hex digits", fa)
	}
	if fa == KeyFingerprint(b) {
		t.Fatal("two keys share a fingerprint")
	}
	if got := KeyFingerprints([][]byte{b, a}); got != KeyFingerprint(b)+","+fa {
		t.Errorf("KeyFingerprints = %q", got)
	}
	if got := SplitFingerprints(""); got != nil {
		t.Errorf("SplitFingerprints(\"\") = %q", got)
	}
	if got := SplitFingerprints(fa + "," + fa); len(got) != 2 {
		t.Errorf("SplitFingerprints = %q", got)
	}
}

func TestValidateGossipKeys(t *testing.T) {
	for _, c := range []struct {
		name string
		keys [][]byte
		ok   bool
	}{
		{"one", [][]byte{testKey(1)}, true},
		{"two", [][]byte{testKey(1), testKey(2)}, true},
		{"none", nil, false},
		{"short", [][]byte{make([]byte, 16)}, false},
		{"twice", [][]byte{testKey(1), testKey(1)}, false},
		{"too many", func() [][]byte {
			var ks [][]byte
			for i := 0; i <= MaxGossipKeys; i++ {
				ks = append(ks, testKey(byte(i)))
			}
			return ks
		}(), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := ValidateGossipKeys(c.keys); (err == nil) != c.ok {
				t.Errorf("ValidateGossipKeys: %v, want ok=%v", err, c.ok)
			}
		})
	}
}

// TestApplyGossipKeys: the ring ends with exactly the wanted keys, primary
// first, and reports whether it changed.
func TestApplyGossipKeys(t *testing.T) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	for _, c := range []struct {
		name        string
		start, want [][]byte
		changed     bool
	}{
		{"same", [][]byte{k1}, [][]byte{k1}, false},
		{"add", [][]byte{k1}, [][]byte{k1, k2}, true},
		{"switch primary", [][]byte{k1, k2}, [][]byte{k2, k1}, true},
		{"remove old", [][]byte{k2, k1}, [][]byte{k2}, true},
		{"all at once", [][]byte{k1}, [][]byte{k2}, true},
		{"middle removed", [][]byte{k1, k2, k3}, [][]byte{k1, k3}, true},
		{"replace all", [][]byte{k1, k2}, [][]byte{k3}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ring, err := NewGossipKeyring(c.start)
			if err != nil {
				t.Fatal(err)
			}
			changed, err := ApplyGossipKeys(ring, c.want)
			if err != nil {
				t.Fatal(err)
			}
			if changed != c.changed {
				t.Errorf("changed = %v, want %v", changed, c.changed)
			}
			if got := KeyFingerprints(ring.GetKeys()); got != KeyFingerprints(c.want) {
				t.Errorf("ring = %s, want %s", got, KeyFingerprints(c.want))
			}
		})
	}
	ring, _ := memberlist.NewKeyring(nil, k1)
	if _, err := ApplyGossipKeys(ring, nil); err == nil {
		t.Error("applying no keys succeeded")
	}
	if got := KeyFingerprints(ring.GetKeys()); got != KeyFingerprint(k1) {
		t.Errorf("a refused keyring changed the ring: %s", got)
	}
}

// aesSealer is a real AES-256-GCM sealer, as the secrets keyring is.
type aesSealer struct{ aead cipher.AEAD }

func newAESSealer(t *testing.T) *aesSealer {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &aesSealer{aead: aead}
}

func (s *aesSealer) Encrypt(plain []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plain, nil), nil
}

func (s *aesSealer) Decrypt(sealed []byte) ([]byte, error) {
	if len(sealed) < s.aead.NonceSize() {
		return nil, errors.New("sealed value too short")
	}
	n := s.aead.NonceSize()
	return s.aead.Open(nil, sealed[:n], sealed[n:], nil)
}

func TestKeyringRecordSealing(t *testing.T) {
	rec := &keyringRecord{Primary: 1, Keys: [][]byte{testKey(1), testKey(2)}}
	for _, c := range []struct {
		name string
		seal Sealer
	}{
		{"plain", nil},
		{"sealed", newAESSealer(t)},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := &Node{cfg: Config{Seal: c.seal}}
			buf, err := n.encodeKeyringRecord(rec)
			if err != nil {
				t.Fatal(err)
			}
			if sealed := !bytes.Contains(buf, []byte(`"keys"`)); sealed != (c.seal != nil) {
				t.Errorf("stored value %q: sealed = %v", buf, sealed)
			}
			plain := buf
			if c.seal != nil {
				if plain, err = c.seal.Decrypt(buf); err != nil {
					t.Fatal(err)
				}
			}
			got, err := decodeKeyringRecord(plain)
			if err != nil {
				t.Fatal(err)
			}
			if KeyFingerprints(got.ordered()) != KeyFingerprints([][]byte{testKey(2), testKey(1)}) {
				t.Errorf("ordered = %s", KeyFingerprints(got.ordered()))
			}
		})
	}
	if _, err := decodeKeyringRecord([]byte(`{"primary":2,"keys":[]}`)); err == nil {
		t.Error("a record whose primary is out of range decoded")
	}
}

func TestKeyringFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.json")
	if _, err := LoadKeyringFile(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	keys := [][]byte{testKey(2), testKey(1)}
	if err := SaveKeyringFile(path, keys); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v, %v; want 0600", st.Mode(), err)
	}
	got, err := LoadKeyringFile(path)
	if err != nil || KeyFingerprints(got) != KeyFingerprints(keys) {
		t.Fatalf("loaded %s, %v", KeyFingerprints(got), err)
	}
	if err := os.WriteFile(path, []byte(`{"primary":0,"keys":["c2hvcnQ="]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyringFile(path); err == nil {
		t.Error("a file with a short key loaded")
	}
}

// TestMetaSizeWithKeys: the largest server metadata (IPv6 addresses, all
// flags, a full keyring) fits memberlist's limit.
func TestMetaSizeWithKeys(t *testing.T) {
	var keys [][]byte
	for i := 0; i < MaxGossipKeys; i++ {
		keys = append(keys, testKey(byte(i)))
	}
	v6 := "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"
	meta := map[string]string{
		MetaRole:      RoleServer,
		MetaRaftAddr:  v6,
		MetaAPIAddr:   v6,
		MetaClusterID: newClusterID(),
		MetaNew:       "1",
		MetaExpect:    strconv.Itoa(99),
		MetaLeaving:   "1",
		MetaKeys:      KeyFingerprints(keys),
	}
	buf, err := EncodeMeta(meta)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("largest server metadata: %d of %d bytes", len(buf), MaxMetaSize)
}
