package satoken

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func sampleClaims() Claims {
	return Claims{
		Namespace: "team", ServiceAccount: "builder", ServiceAccountUID: "sa-uid",
		PodName: "web-1", PodUID: "pod-uid", Audiences: []string{Issuer, "vault"},
		IssuedAt: t0, Expiry: t0.Add(time.Hour), ID: "jti-1",
	}
}

func TestRoundTrip(t *testing.T) {
	key := newKey(t)
	for name, c := range map[string]Claims{
		"bound to a pod": sampleClaims(),
		"unbound": {Namespace: "default", ServiceAccount: "default", ServiceAccountUID: "u",
			IssuedAt: t0, Expiry: t0.Add(10 * time.Minute)},
	} {
		t.Run(name, func(t *testing.T) {
			tok, err := Issue(key, c)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Verify(&key.PublicKey, tok, t0.Add(time.Minute))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := c
			if len(want.Audiences) == 0 {
				want.Audiences = []string{Issuer}
			}
			if want.ID == "" {
				if len(got.ID) != 36 {
					t.Errorf("generated jti %q is not a UUID", got.ID)
				}
				want.ID = got.ID
			}
			want.IssuedAt, want.Expiry = want.IssuedAt.Local(), want.Expiry.Local()
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("claims\n got %+v\nwant %+v", *got, want)
			}
		})
	}
}

// The token carries Kubernetes' layout: what client libraries and people
// decoding a projected token look for.
func TestLayout(t *testing.T) {
	key := newKey(t)
	tok, err := Issue(key, sampleClaims())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok, ".")
	var h map[string]any
	mustJSON(t, parts[0], &h)
	kid, err := KeyID(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if h["alg"] != "ES256" || h["kid"] != kid || len(kid) != 43 {
		t.Errorf("header %v (kid want %s)", h, kid)
	}
	var p map[string]any
	mustJSON(t, parts[1], &p)
	want := map[string]any{
		"iss": Issuer, "sub": "system:serviceaccount:team:builder", "jti": "jti-1",
		"aud": []any{Issuer, "vault"},
		"iat": float64(t0.Unix()), "nbf": float64(t0.Unix()), "exp": float64(t0.Add(time.Hour).Unix()),
		"kubernetes.io": map[string]any{
			"namespace":      "team",
			"serviceaccount": map[string]any{"name": "builder", "uid": "sa-uid"},
			"pod":            map[string]any{"name": "web-1", "uid": "pod-uid"},
		},
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("payload\n got %v\nwant %v", p, want)
	}
}

func mustJSON(t *testing.T, seg string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// sign makes a token from raw header and payload JSON with key, to test
// what Issue would never write.
func sign(t testing.TB, key *ecdsa.PrivateKey, header, payload string) string {
	t.Helper()
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	d := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig)
}

func TestVerifyRejects(t *testing.T) {
	key, other := newKey(t), newKey(t)
	good, err := Issue(key, sampleClaims())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding
	tamper := func(c Claims) string {
		// A payload from different claims under the original signature.
		tok, err := Issue(other, c)
		if err != nil {
			t.Fatal(err)
		}
		return parts[0] + "." + strings.Split(tok, ".")[1] + "." + parts[2]
	}
	otherNS := sampleClaims()
	otherNS.Namespace = "kube-system"
	flipped := []byte(parts[2])
	if flipped[5] = 'A'; parts[2][5] == 'A' {
		flipped[5] = 'B'
	}
	payload := func(mut func(map[string]any)) string {
		var p map[string]any
		mustJSON(t, parts[1], &p)
		mut(p)
		b, _ := json.Marshal(p)
		return string(b)
	}
	hdr := `{"alg":"ES256"}`
	cases := []struct {
		name  string
		token string
		pub   *ecdsa.PublicKey
		now   time.Time
		want  error
	}{
		{"wrong key", good, &other.PublicKey, t0, ErrSignature},
		{"expired", good, &key.PublicKey, t0.Add(time.Hour + Leeway + time.Second), ErrExpired},
		{"not yet valid", good, &key.PublicKey, t0.Add(-Leeway - time.Second), ErrExpired},
		{"tampered payload", tamper(otherNS), &key.PublicKey, t0, ErrSignature},
		{"tampered signature", parts[0] + "." + parts[1] + "." + string(flipped), &key.PublicKey, t0, nil},
		{"wrong issuer", sign(t, key, hdr, payload(func(p map[string]any) { p["iss"] = "https://evil" })), &key.PublicKey, t0, ErrIssuer},
		{"no exp", sign(t, key, hdr, payload(func(p map[string]any) { delete(p, "exp") })), &key.PublicKey, t0, ErrMalformed},
		{"sub mismatch", sign(t, key, hdr, payload(func(p map[string]any) { p["sub"] = "system:serviceaccount:kube-system:admin" })), &key.PublicKey, t0, ErrMalformed},
		{"alg none", enc.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + ".", &key.PublicKey, t0, ErrMalformed},
		{"alg HS256", sign(t, key, `{"alg":"HS256"}`, payload(func(map[string]any) {})), &key.PublicKey, t0, ErrMalformed},
		{"crit header", sign(t, key, `{"alg":"ES256","crit":["exp"]}`, payload(func(map[string]any) {})), &key.PublicKey, t0, ErrMalformed},
		{"two parts", parts[0] + "." + parts[1], &key.PublicKey, t0, ErrMalformed},
		{"padded", good + "=", &key.PublicKey, t0, ErrMalformed},
		{"empty", "", &key.PublicKey, t0, ErrMalformed},
		{"huge", strings.Repeat("a", MaxTokenSize+1), &key.PublicKey, t0, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Verify(tc.pub, tc.token, tc.now)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	// Inside the leeway both ends still verify.
	for _, now := range []time.Time{t0.Add(-Leeway + time.Second), t0.Add(time.Hour + Leeway - time.Second)} {
		if _, err := Verify(&key.PublicKey, good, now); err != nil {
			t.Errorf("at %v: %v", now, err)
		}
	}
}

func TestIssueRefuses(t *testing.T) {
	key := newKey(t)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	noUID := sampleClaims()
	noUID.ServiceAccountUID = ""
	halfPod := sampleClaims()
	halfPod.PodUID = ""
	backwards := sampleClaims()
	backwards.Expiry = backwards.IssuedAt
	for name, tc := range map[string]struct {
		key *ecdsa.PrivateKey
		c   Claims
	}{
		"nil key": {nil, sampleClaims()}, "P-384": {p384, sampleClaims()},
		"no sa uid": {key, noUID}, "half pod": {key, halfPod}, "expiry not after iat": {key, backwards},
	} {
		if tok, err := Issue(tc.key, tc.c); err == nil {
			t.Errorf("%s: issued %s", name, tok)
		}
	}
}

func TestParseKey(t *testing.T) {
	key := newKey(t)
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.MarshalECPrivateKey(p384)
	pemOf := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	for name, tc := range map[string]struct {
		in []byte
		ok bool
	}{
		"sec1":                {pemOf("EC PRIVATE KEY", sec1), true},
		"pkcs8":               {pemOf("PRIVATE KEY", pkcs8), true},
		"after a certificate": {append(pemOf("CERTIFICATE", []byte("x")), pemOf("EC PRIVATE KEY", sec1)...), true},
		"p384":                {pemOf("EC PRIVATE KEY", der384), false},
		"garbage":             {pemOf("EC PRIVATE KEY", []byte("nope")), false},
		"no pem":              {[]byte("hello"), false},
	} {
		got, err := ParseKey(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v", name, err)
			continue
		}
		if tc.ok && !got.Equal(key) {
			t.Errorf("%s: a different key", name)
		}
	}
}

func TestUserAndGroups(t *testing.T) {
	if got := UserName("ns", "sa"); got != "system:serviceaccount:ns:sa" {
		t.Errorf("UserName %q", got)
	}
	if got := Groups("ns"); !reflect.DeepEqual(got, []string{"system:serviceaccounts", "system:serviceaccounts:ns"}) {
		t.Errorf("Groups %v", got)
	}
	c := sampleClaims()
	if !c.HasAudience("vault") || c.HasAudience("other") {
		t.Errorf("HasAudience")
	}
}

// FuzzVerify: no input panics, and nothing but the untouched token of
// this key verifies.
func FuzzVerify(f *testing.F) {
	key := newKey(f)
	good, err := Issue(key, sampleClaims())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add(good[:len(good)-3])
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := Verify(&key.PublicKey, tok, t0)
		if err != nil {
			return
		}
		// ECDSA signatures are malleable only as (r, n-s): a second valid
		// spelling must still carry the same signed header and payload.
		if !strings.HasPrefix(tok, good[:strings.LastIndex(good, ".")+1]) {
			t.Fatalf("verified a token with a different signed part: %q -> %+v", tok, c)
		}
	})
}
