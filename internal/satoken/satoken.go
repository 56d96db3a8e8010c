package satoken

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
	"time"
)

// Issuer is the iss of every token, and the default audience: the API's
// in-cluster URL, as kube-apiserver's default --service-account-issuer.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// Leeway is the clock skew Verify tolerates on exp and nbf.
const Leeway = 60 * time.Second

// MaxTokenSize bounds what Verify parses; real tokens are under 2 KiB.
const MaxTokenSize = 16 << 10

// userPrefix starts every ServiceAccount's user name.
const userPrefix = "system:serviceaccount:"

// Sentinel errors; Verify wraps one of them with the detail.
var (
	// ErrMalformed: not a well-formed ES256 JWT of this layout.
	ErrMalformed = errors.New("malformed service account token")
	// ErrSignature: the signature does not verify with the key.
	ErrSignature = errors.New("service account token signature is invalid")
	// ErrIssuer: iss is not Issuer.
	ErrIssuer = errors.New("service account token has the wrong issuer")
	// ErrExpired: exp is past (beyond Leeway) or nbf is ahead.
	ErrExpired = errors.New("service account token is expired or not yet valid")
)

// Claims is what a token says. Pod fields are empty for a token not bound
// to a pod.
type Claims struct {
	Namespace         string
	ServiceAccount    string
	ServiceAccountUID string
	PodName           string
	PodUID            string
	Audiences         []string
	IssuedAt          time.Time
	Expiry            time.Time
	// ID is the jti; Issue makes a random one when empty.
	ID string
}

// HasAudience reports whether aud is among the token's audiences.
func (c *Claims) HasAudience(aud string) bool {
	for _, a := range c.Audiences {
		if a == aud {
			return true
		}
	}
	return false
}

// UserName is the user a ServiceAccount authenticates as.
func UserName(ns, sa string) string { return userPrefix + ns + ":" + sa }

// Groups are the groups of every ServiceAccount of namespace ns.
func Groups(ns string) []string {
	return []string{"system:serviceaccounts", "system:serviceaccounts:" + ns}
}

// ParseKey reads an ECDSA P-256 private key from PEM: SEC 1 ("EC PRIVATE
// KEY") or PKCS #8 ("PRIVATE KEY"), the first key block found.
func ParseKey(pemBytes []byte) (*ecdsa.PrivateKey, error) {
	rest := pemBytes
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("parse service account key: no EC PRIVATE KEY or PRIVATE KEY PEM block")
		}
		var key any
		var err error
		switch block.Type {
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse service account key: %w", err)
		}
		ec, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("parse service account key: %T is not an ECDSA key", key)
		}
		if ec.Curve != elliptic.P256() {
			return nil, fmt.Errorf("parse service account key: curve %s, want P-256", ec.Curve.Params().Name)
		}
		return ec, nil
	}
}

// KeyID is the kid of tokens signed by pub's private key: the unpadded
// base64url SHA-256 of its PKIX DER (as kube-apiserver computes it).
func KeyID(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("service account key id: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// header is the JOSE header.
type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid,omitempty"`
	Typ  string          `json:"typ,omitempty"`
	Crit json.RawMessage `json:"crit,omitempty"`
}

// payload is the JWT claim set in Kubernetes' layout.
type payload struct {
	Aud  audiences  `json:"aud"`
	Exp  int64      `json:"exp"`
	Iat  int64      `json:"iat"`
	Iss  string     `json:"iss"`
	Jti  string     `json:"jti,omitempty"`
	Kube kubeClaims `json:"kubernetes.io"`
	Nbf  int64      `json:"nbf"`
	Sub  string     `json:"sub"`
}

type kubeClaims struct {
	Namespace      string `json:"namespace"`
	Pod            *ref   `json:"pod,omitempty"`
	ServiceAccount ref    `json:"serviceaccount"`
}

type ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// audiences is aud: a string or an array of strings in a JWT (RFC 7519
// 4.1.3); always written as an array, as kube does.
type audiences []string

func (a *audiences) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audiences{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*a = many
	return nil
}

// Issue signs c with key (ES256). IssuedAt zero means now; Audiences empty
// means [Issuer]; Expiry must be after IssuedAt.
func Issue(key *ecdsa.PrivateKey, c Claims) (string, error) {
	if key == nil || key.Curve != elliptic.P256() {
		return "", errors.New("issue service account token: need an ECDSA P-256 key")
	}
	if c.Namespace == "" || c.ServiceAccount == "" || c.ServiceAccountUID == "" {
		return "", errors.New("issue service account token: namespace, service account and its uid are required")
	}
	if (c.PodName == "") != (c.PodUID == "") {
		return "", errors.New("issue service account token: a pod binding needs both name and uid")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if !c.Expiry.After(c.IssuedAt) {
		return "", errors.New("issue service account token: expiry must be after issue time")
	}
	if len(c.Audiences) == 0 {
		c.Audiences = []string{Issuer}
	}
	if c.ID == "" {
		c.ID = newID()
	}
	kid, err := KeyID(&key.PublicKey)
	if err != nil {
		return "", err
	}
	h, err := json.Marshal(header{Alg: "ES256", Kid: kid})
	if err != nil {
		return "", err
	}
	p := payload{
		Aud: c.Audiences, Exp: c.Expiry.Unix(), Iat: c.IssuedAt.Unix(), Nbf: c.IssuedAt.Unix(),
		Iss: Issuer, Jti: c.ID, Sub: UserName(c.Namespace, c.ServiceAccount),
		Kube: kubeClaims{Namespace: c.Namespace, ServiceAccount: ref{Name: c.ServiceAccount, UID: c.ServiceAccountUID}},
	}
	if c.PodName != "" {
		p.Kube.Pod = &ref{Name: c.PodName, UID: c.PodUID}
	}
	body, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(h) + "." + enc.EncodeToString(body)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", fmt.Errorf("issue service account token: sign: %w", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig), nil
}

// Verify checks token's signature with pub, its issuer, its subject's
// shape and its time window at now (Leeway either side) and returns its
// claims. The audience is the caller's to check (Claims.HasAudience).
func Verify(pub *ecdsa.PublicKey, token string, now time.Time) (*Claims, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("verify service account token: need an ECDSA P-256 public key")
	}
	if len(token) > MaxTokenSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: %d parts, want 3", ErrMalformed, len(parts))
	}
	hb, err := decodeSegment(parts[0])
	if err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	var h header
	if err := strictUnmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if h.Alg != "ES256" {
		return nil, fmt.Errorf("%w: alg %q, want ES256", ErrMalformed, h.Alg)
	}
	if len(h.Crit) > 0 {
		return nil, fmt.Errorf("%w: critical header extensions are not supported", ErrMalformed)
	}
	sig, err := decodeSegment(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, fmt.Errorf("%w: signature is not 64 bytes of base64url", ErrMalformed)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return nil, ErrSignature
	}
	// Only a signed payload is parsed.
	pb, err := decodeSegment(parts[1])
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	var p payload
	if err := strictUnmarshal(pb, &p); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if p.Iss != Issuer {
		return nil, fmt.Errorf("%w: %q", ErrIssuer, p.Iss)
	}
	k := p.Kube
	if k.Namespace == "" || k.ServiceAccount.Name == "" || k.ServiceAccount.UID == "" {
		return nil, fmt.Errorf("%w: kubernetes.io claims lack the namespace or service account", ErrMalformed)
	}
	if p.Sub != UserName(k.Namespace, k.ServiceAccount.Name) {
		return nil, fmt.Errorf("%w: sub %q does not match the kubernetes.io claims", ErrMalformed, p.Sub)
	}
	if k.Pod != nil && (k.Pod.Name == "" || k.Pod.UID == "") {
		return nil, fmt.Errorf("%w: pod claim lacks name or uid", ErrMalformed)
	}
	if p.Exp == 0 {
		return nil, fmt.Errorf("%w: no exp", ErrMalformed)
	}
	exp, nbf := time.Unix(p.Exp, 0), time.Unix(p.Nbf, 0)
	if now.After(exp.Add(Leeway)) {
		return nil, fmt.Errorf("%w: expired at %s", ErrExpired, exp.UTC().Format(time.RFC3339))
	}
	if p.Nbf != 0 && now.Add(Leeway).Before(nbf) {
		return nil, fmt.Errorf("%w: not valid before %s", ErrExpired, nbf.UTC().Format(time.RFC3339))
	}
	c := &Claims{
		Namespace: k.Namespace, ServiceAccount: k.ServiceAccount.Name, ServiceAccountUID: k.ServiceAccount.UID,
		Audiences: p.Aud, IssuedAt: time.Unix(p.Iat, 0), Expiry: exp, ID: p.Jti,
	}
	if k.Pod != nil {
		c.PodName, c.PodUID = k.Pod.Name, k.Pod.UID
	}
	return c, nil
}

// decodeSegment decodes unpadded base64url, refusing non-canonical forms
// (trailing bits set), so one token has exactly one spelling.
func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.Strict().DecodeString(s)
}

// strictUnmarshal decodes one JSON value and nothing after it.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// newID is a random UUID (version 4), the jti.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
