package seal

import (
	"bytes"
	"testing"
)

// FuzzKeyringDecrypt: Decrypt never panics; unsealed input comes back as
// it is; anything it opens it opened with the keyring's key (re-sealing
// and opening again gives the same plaintext); and no input other than an
// untouched sealed value of a seed opens.
func FuzzKeyringDecrypt(f *testing.F) {
	k := keyringWith(f, "kfuzz", bytes.Repeat([]byte{0x42}, keySize))
	known := []byte(`{"data":{"a":"Yg=="}}`)
	sealed, _ := k.Encrypt(known)
	empty, _ := k.Encrypt(nil)
	for _, seed := range [][]byte{sealed, empty, nil, []byte("{}"), []byte(Prefix), []byte(Prefix + "kfuzz:"), []byte(Prefix + ":"), []byte(Prefix + "nokey:0123456789ab0123456789abcdef"), sealed[:len(sealed)-1]} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		plain, err := k.Decrypt(b)
		if !bytes.HasPrefix(b, []byte(Prefix)) {
			if err != nil || !bytes.Equal(plain, b) {
				t.Fatalf("unsealed input %q: got %q, %v", b, plain, err)
			}
			return
		}
		if err != nil {
			return
		}
		// Forging a valid tag is infeasible: whatever opened must be one of
		// the plaintexts sealed for the seeds (the fuzzing workers seal them
		// again with their own nonces, so compare plaintexts, not inputs).
		if !bytes.Equal(plain, known) && len(plain) != 0 {
			t.Fatalf("forged input %q opened to %q", b, plain)
		}
		again, err := k.Encrypt(plain)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := k.Decrypt(again); err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("re-seal round trip: %q, %v", back, err)
		}
	})
}
