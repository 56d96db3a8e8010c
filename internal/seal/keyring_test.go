package seal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	k := NewKeyring()
	for _, tc := range []struct {
		name  string
		plain []byte
	}{
		{"empty", []byte{}},
		{"json", []byte(`{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}`)},
		{"binary", bytes.Repeat([]byte{0, 1, 2, 0xff}, 1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sealed, err := k.Encrypt(tc.plain)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(sealed, []byte(Prefix+k.PrimaryID()+":")) {
				t.Fatalf("sealed value %q lacks the header", sealed[:min(len(sealed), 40)])
			}
			if len(tc.plain) > 8 && bytes.Contains(sealed, tc.plain) {
				t.Fatal("sealed value contains the plaintext")
			}
			got, err := k.Decrypt(sealed)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.plain) {
				t.Fatalf("round trip: got %q, want %q", got, tc.plain)
			}
			again, _ := k.Encrypt(tc.plain)
			if bytes.Equal(again, sealed) {
				t.Fatal("two encryptions of one value are identical: nonce reused")
			}
			if id, ok := KeyID(sealed); !ok || id != k.PrimaryID() {
				t.Fatalf("KeyID = %q, %v; want %q", id, ok, k.PrimaryID())
			}
		})
	}
}

func TestWrongKeyFails(t *testing.T) {
	a, b := NewKeyring(), NewKeyring()
	sealed, err := a.Encrypt([]byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Decrypt(sealed); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("decrypt with another keyring: err = %v, want ErrUnknownKey", err)
	}
	// Same id, other key material: authentication must fail.
	impostor := keyringWith(t, a.PrimaryID(), bytes.Repeat([]byte{7}, keySize))
	if _, err := impostor.Decrypt(sealed); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decrypt with other material under the same id: err = %v, want ErrCorrupt", err)
	}
}

func TestTamperedFails(t *testing.T) {
	k := NewKeyring()
	sealed, err := k.Encrypt([]byte("the quick brown fox"))
	if err != nil {
		t.Fatal(err)
	}
	hdr := len(Prefix) + len(k.PrimaryID()) + 1
	// Flip one bit at every position past the prefix: in the key id, the
	// colon, the nonce, the ciphertext and the tag.
	for i := len(Prefix); i < len(sealed); i++ {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := k.Decrypt(bad); err == nil {
			t.Fatalf("bit flipped at byte %d (header ends at %d) still decrypts", i, hdr)
		}
	}
	for n := hdr; n < len(sealed); n++ {
		if _, err := k.Decrypt(sealed[:n]); err == nil {
			t.Fatalf("truncated to %d bytes still decrypts", n)
		}
	}
	if _, err := k.Decrypt(append(bytes.Clone(sealed), 0)); err == nil {
		t.Fatal("value with a byte appended still decrypts")
	}
}

func TestRotationKeepsOldDataReadable(t *testing.T) {
	k := NewKeyring()
	first := k.PrimaryID()
	old, _ := k.Encrypt([]byte("written under the first key"))
	id := k.Rotate()
	if id == first || k.PrimaryID() != id {
		t.Fatalf("Rotate returned %q, primary %q, first %q", id, k.PrimaryID(), first)
	}
	if got, err := k.Decrypt(old); err != nil || string(got) != "written under the first key" {
		t.Fatalf("old value after rotation: %q, %v", got, err)
	}
	fresh, _ := k.Encrypt([]byte("new"))
	if kid, _ := KeyID(fresh); kid != id {
		t.Fatalf("after rotation values are sealed with %q, want %q", kid, id)
	}
	// Through the file form too.
	data, err := k.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseKeyring(data)
	if err != nil {
		t.Fatal(err)
	}
	if back.PrimaryID() != id || strings.Join(back.IDs(), ",") != strings.Join(k.IDs(), ",") {
		t.Fatalf("parsed keyring: primary %q ids %v; want %q %v", back.PrimaryID(), back.IDs(), id, k.IDs())
	}
	if got, err := back.Decrypt(old); err != nil || string(got) != "written under the first key" {
		t.Fatalf("old value through the parsed keyring: %q, %v", got, err)
	}
}

func TestUnprefixedPassesThrough(t *testing.T) {
	k := NewKeyring()
	for _, v := range [][]byte{nil, {}, []byte(`{"kind":"Secret"}`), []byte("flotilla:enc:aesgcm:v2:k:x"), []byte("flotilla:enc")} {
		got, err := k.Decrypt(v)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Decrypt(%q) = %q, %v; want it unchanged", v, got, err)
		}
	}
}

func TestParseKeyringRejects(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, keySize))
	short := base64.StdEncoding.EncodeToString([]byte("short"))
	for _, tc := range []struct{ name, json string }{
		{"not json", `nope`},
		{"no keys", `{"primary":"a","keys":{}}`},
		{"primary missing", `{"primary":"b","keys":{"a":"` + key + `"}}`},
		{"short key", `{"primary":"a","keys":{"a":"` + short + `"}}`},
		{"colon in id", `{"primary":"a:b","keys":{"a:b":"` + key + `"}}`},
		{"empty id", `{"primary":"","keys":{"":"` + key + `"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseKeyring([]byte(tc.json)); err == nil {
				t.Fatal("parsed")
			}
		})
	}
	if k, err := ParseKeyring([]byte(`{"primary":"a","keys":{"a":"` + key + `"}}`)); err != nil || k.PrimaryID() != "a" {
		t.Fatalf("valid keyring: %v", err)
	}
}

func TestMerge(t *testing.T) {
	a := NewKeyring()
	b := a.Clone()
	newID := b.Rotate()
	if err := a.Merge(b); err != nil {
		t.Fatal(err)
	}
	if a.PrimaryID() != newID || len(a.IDs()) != 2 {
		t.Fatalf("after merge: primary %q ids %v", a.PrimaryID(), a.IDs())
	}
	// Merging a keyring that lacks a key keeps it.
	c := NewKeyring()
	if err := a.Merge(c); err != nil {
		t.Fatal(err)
	}
	if len(a.IDs()) != 3 || a.PrimaryID() != c.PrimaryID() {
		t.Fatalf("after second merge: primary %q ids %v", a.PrimaryID(), a.IDs())
	}
	// Same id, other key: refused, nothing changed.
	evil := keyringWith(t, newID, bytes.Repeat([]byte{9}, keySize))
	before := a.PrimaryID()
	if err := a.Merge(evil); !errors.Is(err, ErrKeyConflict) {
		t.Fatalf("conflicting merge: err = %v", err)
	}
	if a.PrimaryID() != before {
		t.Fatal("a failed merge changed the primary")
	}
}

// keyringWith is a keyring of one given key, built through the file form.
func keyringWith(t testing.TB, id string, key []byte) *Keyring {
	t.Helper()
	k, err := ParseKeyring([]byte(`{"primary":"` + id + `","keys":{"` + id + `":"` + base64.StdEncoding.EncodeToString(key) + `"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return k
}
