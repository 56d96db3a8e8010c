package auth

import (
	"crypto/ecdsa"
	"time"

	"flotilla/internal/satoken"
)

// VerifySAWith is Config.VerifySA for tokens signed by the key whose public
// half is pub (internal/satoken's ES256 tokens, as TokenRequest issues).
func VerifySAWith(pub *ecdsa.PublicKey) func(token string) (*SAClaims, error) {
	return func(tok string) (*SAClaims, error) {
		c, err := satoken.Verify(pub, tok, time.Now())
		if err != nil {
			return nil, err
		}
		return &SAClaims{
			Namespace: c.Namespace, ServiceAccount: c.ServiceAccount, ServiceAccountUID: c.ServiceAccountUID,
			PodName: c.PodName, PodUID: c.PodUID, Audiences: c.Audiences, Expiry: c.Expiry,
		}, nil
	}
}
