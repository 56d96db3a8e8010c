package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
)

const (
	tokenIDLen     = 6
	tokenSecretLen = 16
	tokenAlphabet  = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// ErrMalformedToken: a string that is not <id>.<secret> in kubeadm's form.
// The message never repeats the token.
var ErrMalformedToken = errors.New("malformed join token: want <6 of [a-z0-9]>.<16 of [a-z0-9]>")

// NewJoinToken makes a join token in kubeadm's form: id [a-z0-9]{6},
// secret [a-z0-9]{16} (about 83 bits).
func NewJoinToken() (id, secret string) {
	return randomString(tokenIDLen), randomString(tokenSecretLen)
}

// ParseJoinToken splits "<id>.<secret>" and checks both parts' form.
func ParseJoinToken(s string) (id, secret string, err error) {
	if len(s) != tokenIDLen+1+tokenSecretLen || s[tokenIDLen] != '.' {
		return "", "", ErrMalformedToken
	}
	id, secret = s[:tokenIDLen], s[tokenIDLen+1:]
	if !validTokenPart(id) || !validTokenPart(secret) {
		return "", "", ErrMalformedToken
	}
	return id, secret, nil
}

// ValidTokenID reports whether id has a join token id's form.
func ValidTokenID(id string) bool {
	return len(id) == tokenIDLen && validTokenPart(id)
}

func validTokenPart(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// HashSecret is the hex sha256 of a join token's secret: what is stored.
// The secret has ~83 bits of entropy, so a plain hash is enough.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewServerToken is the shared server token: 32 random bytes in hex
// (64 characters, no '.', so never of a join token's form).
func NewServerToken() string {
	return hex.EncodeToString(RandomKey())
}

// RandomKey is 32 random bytes.
func RandomKey() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (it crashes the program instead)
	return b
}

// randomString draws n characters uniformly from tokenAlphabet.
func randomString(n int) string {
	// 252 = 7*36: bytes at or above it are rejected so every character is
	// equally likely.
	const limit = 256 - 256%len(tokenAlphabet)
	out := make([]byte, 0, n)
	var buf [32]byte
	for len(out) < n {
		_, _ = rand.Read(buf[:])
		for _, b := range buf {
			if int(b) < limit && len(out) < n {
				out = append(out, tokenAlphabet[int(b)%len(tokenAlphabet)])
			}
		}
	}
	return string(out)
}
