package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Authenticator finds who made a request. (nil, nil) means no credentials
// were given; an error means credentials were given and are not valid (401).
type Authenticator interface {
	Authenticate(r *http.Request) (*User, error)
}

// SAClaims is what the ServiceAccount token verifier vouches for. The
// verifier (Config.VerifySA) checks the signature, issuer and validity
// period; the audiences and the existence of the ServiceAccount and pod
// are checked here.
type SAClaims struct {
	Namespace         string
	ServiceAccount    string
	ServiceAccountUID string
	// PodName and PodUID are set for a token bound to a pod.
	PodName, PodUID string
	Audiences       []string
	Expiry          time.Time
}

// errInvalid is the one 401 for every kind of bad credentials: the client
// learns nothing about why (the log does).
var errInvalid = errors.New("invalid bearer token")

// saDeletedGrace: a bound token stays valid this long after its pod's
// deletionTimestamp (kube's rule: a terminating pod may still talk to the
// API while it shuts down).
const saDeletedGrace = 60 * time.Second

// Authenticate runs the chain: a verified client certificate, then a bearer
// token (the admin token, then a ServiceAccount token).
func (a *Auth) Authenticate(r *http.Request) (*User, error) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		// The TLS layer verified the chain against the cluster CA, with
		// the client-auth key usage; subject CN/O are the identity.
		c := r.TLS.VerifiedChains[0][0]
		if c.Subject.CommonName == "" {
			return nil, errors.New("client certificate has no common name")
		}
		groups := make([]string, 0, len(c.Subject.Organization)+1)
		groups = append(groups, c.Subject.Organization...)
		return &User{Name: c.Subject.CommonName, Groups: append(groups, GroupAuthenticated)}, nil
	}
	tok, ok := bearerToken(r)
	if !ok {
		return nil, nil
	}
	if len(a.admin) > 0 && subtle.ConstantTimeCompare([]byte(tok), a.admin) == 1 {
		return a.adminUser, nil
	}
	if a.cfg.VerifySA != nil && strings.Count(tok, ".") == 2 {
		return a.authenticateSA(r.Context(), tok)
	}
	return nil, errInvalid
}

// bearerToken parses "Authorization: Bearer <token>" as kube does.
func bearerToken(r *http.Request) (string, bool) {
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if h == "" {
		return "", false
	}
	parts := strings.SplitN(h, " ", 3)
	if len(parts) < 2 || !strings.EqualFold(parts[0], "bearer") {
		return "", false
	}
	tok := strings.TrimSpace(parts[1])
	return tok, tok != ""
}

// saEntry is a token whose signature was verified, until it expires.
type saEntry struct {
	claims *SAClaims
	user   *User
}

// saTokens caches verified tokens: checking an ES256 signature costs more
// than the rest of a request's authorization together. Existence of the
// ServiceAccount and pod is still checked on every request.
type saTokens struct {
	mu sync.Mutex
	m  map[string]saEntry
}

const maxSATokens = 4096

func (a *Auth) authenticateSA(ctx context.Context, tok string) (*User, error) {
	now := a.cfg.Now()
	a.sa.mu.Lock()
	e, ok := a.sa.m[tok]
	a.sa.mu.Unlock()
	if !ok || !now.Before(e.claims.Expiry) {
		c, err := a.cfg.VerifySA(tok)
		if err != nil {
			a.log.Debug("service account token refused", "error", err)
			return nil, errInvalid
		}
		if c.Namespace == "" || c.ServiceAccount == "" {
			return nil, errInvalid
		}
		if !slices.ContainsFunc(c.Audiences, func(aud string) bool { return slices.Contains(a.cfg.Audiences, aud) }) {
			a.log.Debug("service account token refused: audience", "audiences", c.Audiences)
			return nil, errInvalid
		}
		e = saEntry{claims: c, user: &User{
			Name:   ServiceAccountUserName(c.Namespace, c.ServiceAccount),
			UID:    c.ServiceAccountUID,
			Groups: []string{groupSAs, groupSAs + ":" + c.Namespace, GroupAuthenticated},
		}}
		if !c.Expiry.IsZero() {
			a.sa.mu.Lock()
			if a.sa.m == nil || len(a.sa.m) >= maxSATokens {
				a.sa.m = make(map[string]saEntry)
			}
			a.sa.m[tok] = e
			a.sa.mu.Unlock()
		}
	}
	if err := a.checkSAObjects(ctx, e.claims, now); err != nil {
		a.log.Debug("service account token refused", "user", e.user.Name, "error", err)
		return nil, errInvalid
	}
	return e.user, nil
}

// checkSAObjects: the ServiceAccount must exist with the token's UID and,
// for a bound token, the pod must exist with its UID and not have finished
// deleting. A miss asks for a read index once (the object may be newer than
// this master's store).
func (a *Auth) checkSAObjects(ctx context.Context, c *SAClaims, now time.Time) error {
	check := func() error {
		sa := a.objs.get(a.cfg.Store, "/core/serviceaccounts/"+c.Namespace+"/"+c.ServiceAccount)
		if sa == nil {
			return fmt.Errorf("service account %s/%s not found", c.Namespace, c.ServiceAccount)
		}
		if c.ServiceAccountUID != "" && sa.Metadata.UID != c.ServiceAccountUID {
			return fmt.Errorf("service account %s/%s has uid %s, token %s", c.Namespace, c.ServiceAccount, sa.Metadata.UID, c.ServiceAccountUID)
		}
		if c.PodName == "" {
			return nil
		}
		pod := a.objs.get(a.cfg.Store, podPrefix+c.Namespace+"/"+c.PodName)
		if pod == nil {
			return fmt.Errorf("pod %s/%s not found", c.Namespace, c.PodName)
		}
		if c.PodUID != "" && pod.Metadata.UID != c.PodUID {
			return fmt.Errorf("pod %s/%s has uid %s, token %s", c.Namespace, c.PodName, pod.Metadata.UID, c.PodUID)
		}
		if dt := pod.Metadata.DeletionTimestamp; dt != nil && dt.Add(saDeletedGrace).Before(now) {
			return fmt.Errorf("pod %s/%s was deleted", c.Namespace, c.PodName)
		}
		return nil
	}
	err := check()
	if err != nil && a.cfg.ReadIndex != nil {
		if rerr := a.cfg.ReadIndex(ctx); rerr == nil {
			err = check()
		}
	}
	return err
}
