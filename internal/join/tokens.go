package join

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla/fsm"
	"flotilla/internal/pki"
)

const (
	// TokenPrefix is where join token records live in the FSM.
	TokenPrefix = "/flotilla/jointokens/"
	// PathTokens is the tokens endpoint.
	PathTokens = "/flotilla/v1/tokens"
	// DefaultTokenTTL is a new token's lifetime when none is asked for.
	DefaultTokenTTL = 24 * time.Hour
	maxDescription  = 1024
)

// ErrTokenNotFound: no join token with that id.
var ErrTokenNotFound = errors.New("join token not found")

// TokenInfo describes a join token (never its secret).
type TokenInfo struct {
	ID          string    `json:"id"`
	Role        string    `json:"role"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
}

// tokenRecord is the FSM value at TokenPrefix+id.
type tokenRecord struct {
	ID          string    `json:"id"`
	SecretHash  string    `json:"secretHash"`
	Role        string    `json:"role"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
}

func (r *tokenRecord) info() TokenInfo {
	return TokenInfo{ID: r.ID, Role: r.Role, Description: r.Description, Created: r.Created, Expires: r.Expires}
}

// getToken reads a record from the local store (nil when absent).
func getToken(s *fsm.Store, id string) (*tokenRecord, error) {
	kv, _ := s.Get(TokenPrefix + id)
	if kv == nil {
		return nil, nil
	}
	var rec tokenRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, fmt.Errorf("join token %s: %w", id, err)
	}
	return &rec, nil
}

// CreateToken stores a new join token for role (RoleAgent or RoleServer)
// that expires after ttl, and returns it as "<id>.<secret>". Only the
// secret's hash is stored; the record carries the FSM expiry so the
// leader's expiry loop deletes it.
func CreateToken(ctx context.Context, st Store, role string, ttl time.Duration, desc string) (string, TokenInfo, error) {
	if role != RoleAgent && role != RoleServer {
		return "", TokenInfo{}, fmt.Errorf("role %q: want %q or %q", role, RoleAgent, RoleServer)
	}
	if ttl <= 0 {
		return "", TokenInfo{}, fmt.Errorf("ttl %v: must be positive", ttl)
	}
	if len(desc) > maxDescription {
		return "", TokenInfo{}, fmt.Errorf("description: at most %d bytes", maxDescription)
	}
	// A clash of 6-character ids is rare; the compare makes it harmless.
	for range 5 {
		id, secret := pki.NewJoinToken()
		now := time.Now().UTC().Truncate(time.Second)
		rec := tokenRecord{
			ID: id, SecretHash: pki.HashSecret(secret), Role: role, Description: desc,
			Created: now, Expires: now.Add(ttl),
		}
		val, err := json.Marshal(rec)
		if err != nil {
			return "", TokenInfo{}, err
		}
		key := TokenPrefix + id
		res, err := st.Apply(ctx, &fsm.Txn{
			Compares: []fsm.Compare{{Key: key, Target: fsm.CompareAbsent}},
			Ops:      []fsm.Op{{Type: fsm.OpPut, Key: key, Value: val, ExpiresAt: rec.Expires.UnixNano()}},
		})
		if err != nil {
			return "", TokenInfo{}, fmt.Errorf("store join token: %w", err)
		}
		if res.Succeeded {
			return id + "." + secret, rec.info(), nil
		}
	}
	return "", TokenInfo{}, errors.New("store join token: id clashes; try again")
}

// ListTokens lists the unexpired join tokens in the local store, oldest
// first. Call st.ReadIndex first for a linearizable list.
func ListTokens(st Store) ([]TokenInfo, error) {
	res, err := st.Store().List(TokenPrefix, fsm.ListOptions{})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([]TokenInfo, 0, len(res.KVs))
	for _, kv := range res.KVs {
		var rec tokenRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("join token %s: %w", kv.Key, err)
		}
		if now.Before(rec.Expires) {
			out = append(out, rec.info())
		}
	}
	slices.SortFunc(out, func(a, b TokenInfo) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// DeleteToken revokes a join token. ErrTokenNotFound when there is none.
func DeleteToken(ctx context.Context, st Store, id string) error {
	if !pki.ValidTokenID(id) {
		return fmt.Errorf("%w: %q", ErrTokenNotFound, id)
	}
	key := TokenPrefix + id
	res, err := st.Apply(ctx, &fsm.Txn{
		Compares: []fsm.Compare{{Key: key, Target: fsm.CompareExists}},
		Ops:      []fsm.Op{{Type: fsm.OpDelete, Key: key}},
	})
	if err != nil {
		return fmt.Errorf("delete join token: %w", err)
	}
	if !res.Succeeded {
		return fmt.Errorf("%w: %q", ErrTokenNotFound, id)
	}
	return nil
}

// Wire types of the tokens endpoint.
type (
	// CreateTokenRequest is the body of POST PathTokens.
	CreateTokenRequest struct {
		Role        string `json:"role,omitempty"` // default RoleAgent
		TTL         string `json:"ttl,omitempty"`  // Go duration, default 24h
		Description string `json:"description,omitempty"`
	}
	// CreateTokenResponse is the answer to POST PathTokens.
	CreateTokenResponse struct {
		Token  string    `json:"token"`
		CAHash string    `json:"caHash"`
		Info   TokenInfo `json:"info"`
	}
)

type tokensHandler struct {
	creds *ServerCreds
	st    Store
}

// NewTokensHandler serves PathTokens: POST creates, GET lists, DELETE
// PathTokens/<id> revokes. It accepts the full paths or the same with
// PathTokens stripped. Authorisation (admins only) is the caller's.
func NewTokensHandler(creds *ServerCreds, st Store) http.Handler {
	return &tokensHandler{creds: creds, st: st}
}

var tokensGR = schema.GroupResource{Group: "flotilla", Resource: "jointokens"}

func (h *tokensHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route := strings.TrimPrefix(r.URL.Path, PathTokens)
	switch {
	case route == "" || route == "/":
		switch r.Method {
		case http.MethodGet:
			h.list(w, r)
		case http.MethodPost:
			h.create(w, r)
		default:
			writeStatus(w, apierrors.NewMethodNotSupported(tokensGR, r.Method))
		}
	case strings.HasPrefix(route, "/") && !strings.Contains(route[1:], "/"):
		if r.Method != http.MethodDelete {
			writeStatus(w, apierrors.NewMethodNotSupported(tokensGR, r.Method))
			return
		}
		h.delete(w, r, route[1:])
	default:
		writeStatus(w, apierrors.NewNotFound(schema.GroupResource{}, r.URL.Path))
	}
}

func (h *tokensHandler) create(w http.ResponseWriter, r *http.Request) {
	var req CreateTokenRequest
	if err := decodeJSON(r.Body, &req); err != nil {
		writeStatus(w, apierrors.NewBadRequest(err.Error()))
		return
	}
	if req.Role == "" {
		req.Role = RoleAgent
	}
	ttl := DefaultTokenTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("ttl %q: %v", req.TTL, err)))
			return
		}
		ttl = d
	}
	if req.Role != RoleAgent && req.Role != RoleServer {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("role %q: want %q or %q", req.Role, RoleAgent, RoleServer)))
		return
	}
	if ttl <= 0 || len(req.Description) > maxDescription {
		writeStatus(w, apierrors.NewBadRequest(fmt.Sprintf("ttl must be positive and the description at most %d bytes", maxDescription)))
		return
	}
	hash := h.creds.CAHash()
	if hash == "" {
		writeStatus(w, unavailable("this server has no cluster CA yet", 1))
		return
	}
	token, info, err := CreateToken(r.Context(), h.st, req.Role, ttl, req.Description)
	if err != nil {
		writeStatus(w, unavailable(err.Error(), 1))
		return
	}
	writeJSON(w, http.StatusCreated, CreateTokenResponse{Token: token, CAHash: hash, Info: info})
}

func (h *tokensHandler) list(w http.ResponseWriter, r *http.Request) {
	if err := h.st.ReadIndex(r.Context()); err != nil {
		writeStatus(w, unavailable("cannot read the cluster state: "+err.Error(), 1))
		return
	}
	list, err := ListTokens(h.st)
	if err != nil {
		writeStatus(w, apierrors.NewInternalError(err))
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (h *tokensHandler) delete(w http.ResponseWriter, r *http.Request, id string) {
	err := DeleteToken(r.Context(), h.st, id)
	switch {
	case errors.Is(err, ErrTokenNotFound):
		writeStatus(w, apierrors.NewNotFound(tokensGR, id))
	case err != nil:
		writeStatus(w, unavailable(err.Error(), 1))
	default:
		writeJSON(w, http.StatusOK, &metav1.Status{
			TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
			Status:   metav1.StatusSuccess,
			Code:     http.StatusOK,
			Details:  &metav1.StatusDetails{Name: id, Group: tokensGR.Group, Kind: tokensGR.Resource},
		})
	}
}
