package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"flotilla/fsm"
	"flotilla/internal/httprec"
)

// Config configures an Auth. Zero values are defaults, except Store.
type Config struct {
	// Store is this master's local FSM: the RBAC objects, pods and
	// ServiceAccounts are read from it (required).
	Store *fsm.Store
	// AdminToken is the bearer token of flotilla:admin (system:masters);
	// "" = no admin token.
	AdminToken string
	// VerifySA checks a ServiceAccount token's signature, issuer and
	// validity period (internal/satoken.Verify with the SA public key,
	// adapted); nil = ServiceAccount tokens are refused.
	VerifySA func(token string) (*SAClaims, error)
	// Audiences are the audiences a ServiceAccount token must carry one of
	// (default [DefaultAudience]).
	Audiences []string
	// ReadIndex, when set, makes the local store linearizable; it is called
	// once when a check that depends on an object (a node writing a pod, a
	// token's ServiceAccount or pod) does not find it, because the object
	// may be newer than this master's store. Without it such checks fail
	// closed.
	ReadIndex func(ctx context.Context) error
	// AuditLog receives one JSON line per mutating request (nil = no audit).
	AuditLog io.Writer
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Anonymous are the paths served without credentials, each with its
	// sub-paths (default DefaultAnonymous).
	Anonymous []string
	// Now is the clock for token expiry and audit timestamps (default time.Now).
	Now func() time.Time
}

// DefaultAnonymous are the paths anyone may reach: health, version and the
// join endpoints (which check their own token).
var DefaultAnonymous = []string{"/healthz", "/livez", "/readyz", "/version", "/flotilla/v1/join"}

// Auth authenticates, authorizes and audits API requests.
type Auth struct {
	cfg       Config
	log       *slog.Logger
	admin     []byte
	adminUser *User
	rbac      *rbacCache
	pods      *podIndex
	objs      objCache
	sa        saTokens
	audit     *auditLog
	anonymous []string

	startOnce sync.Once
	wg        sync.WaitGroup
}

// New builds an Auth. Call Start before serving: until then RBAC grants
// nothing and nodes cannot read Secrets or ConfigMaps.
func New(cfg Config) (*Auth, error) {
	if cfg.Store == nil {
		return nil, errors.New("auth: Config.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Audiences) == 0 {
		cfg.Audiences = []string{DefaultAudience}
	}
	if cfg.Anonymous == nil {
		cfg.Anonymous = DefaultAnonymous
	}
	log := cfg.Logger.With("component", "auth")
	a := &Auth{
		cfg:       cfg,
		log:       log,
		admin:     []byte(cfg.AdminToken),
		adminUser: &User{Name: adminUser, Groups: []string{groupMasters, GroupAuthenticated}},
		rbac:      newRBACCache(log),
		pods:      newPodIndex(log),
	}
	for _, p := range cfg.Anonymous {
		if p = strings.TrimSuffix(p, "/"); p != "" {
			a.anonymous = append(a.anonymous, p)
		}
	}
	if cfg.AuditLog != nil {
		a.audit = &auditLog{w: cfg.AuditLog}
	}
	return a, nil
}

// Start loads the RBAC cache and the pod index from the local store and
// keeps them current with watches until ctx ends. It returns once both are
// loaded; calling it again is an error.
func (a *Auth) Start(ctx context.Context) error {
	err := errors.New("auth: already started")
	a.startOnce.Do(func() {
		if err = startMirror(ctx, a.cfg.Store, rbacPrefix, a.rbac, a.log, &a.wg); err != nil {
			return
		}
		err = startMirror(ctx, a.cfg.Store, podPrefix, a.pods, a.log, &a.wg)
	})
	return err
}

// Wait blocks until the watches started by Start have stopped (after its
// ctx ended).
func (a *Auth) Wait() { a.wg.Wait() }

// Middleware authenticates every request, answers 401 to anonymous ones
// outside the anonymous paths, authorizes the rest (403 when denied),
// writes the audit line of mutating requests, and passes the user on in
// the request's context (UserFrom).
func (a *Auth) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := a.cfg.Now()
		u, err := a.Authenticate(r)
		if a.isAnonymousPath(r.URL.Path) {
			// Credentials here may be for the endpoint itself (a join
			// token), so bad ones are not an error.
			if err != nil || u == nil {
				u = anonymous
			}
			a.serve(w, r.WithContext(WithUser(r.Context(), u)), next, u, start)
			return
		}
		if err != nil || u == nil {
			if err != nil {
				a.log.Debug("authentication failed", "path", r.URL.Path, "remote", r.RemoteAddr, "error", err)
			}
			writeStatus(w, unauthorized())
			a.auditDenied(r, nil, http.StatusUnauthorized, start)
			return
		}
		r = r.WithContext(WithUser(r.Context(), u))
		if !a.fastAllow(u, r.URL.Path) {
			at := RequestAttributes(r)
			if isNodeCreate(u, &at) {
				name, body, err := nodeNameFromBody(r)
				if err != nil {
					writeStatus(w, badRequest(err.Error()))
					return
				}
				r.Body, at.Name = body, name
			}
			if ok, reason := a.Authorize(r.Context(), at); !ok {
				writeStatus(w, forbidden(&at, reason))
				a.auditDenied(r, u, http.StatusForbidden, start)
				return
			}
		}
		a.serve(w, r, next, u, start)
	})
}

// fastAllow is the path that needs no attributes: system:masters outside
// /internal.
func (a *Auth) fastAllow(u *User, p string) bool {
	return u.InGroup(groupMasters) && !isInternal(p)
}

func (a *Auth) serve(w http.ResponseWriter, r *http.Request, next http.Handler, u *User, start time.Time) {
	if a.audit == nil || !mutating(r.Method) {
		next.ServeHTTP(w, r)
		return
	}
	rec := &httprec.Recorder{ResponseWriter: w}
	defer func() {
		code := rec.Code
		switch {
		case code == 0 && rec.Hijacked:
			code = http.StatusSwitchingProtocols
		case code == 0:
			code = http.StatusOK
		}
		a.writeAudit(r, u, code, start)
	}()
	next.ServeHTTP(rec, r)
}

func (a *Auth) auditDenied(r *http.Request, u *User, code int, start time.Time) {
	if a.audit != nil && mutating(r.Method) {
		a.writeAudit(r, u, code, start)
	}
}

// isAnonymousPath: p is one of the anonymous paths or below one. Only
// clean paths qualify, so "/healthz/../api/v1/secrets" is not anonymous
// whatever a router later makes of it.
func (a *Auth) isAnonymousPath(p string) bool {
	if !isClean(p) {
		return false
	}
	for _, ap := range a.anonymous {
		if p == ap || (strings.HasPrefix(p, ap) && p[len(ap)] == '/') {
			return true
		}
	}
	return false
}

func isClean(p string) bool {
	c := path.Clean(p)
	return c == p || c+"/" == p
}

// isInternal: server-to-server endpoints, also as an unclean path that a
// router may clean into one.
func isInternal(p string) bool {
	in := func(p string) bool { return p == "/internal" || strings.HasPrefix(p, "/internal/") }
	return in(p) || (!isClean(p) && in(path.Clean(p)))
}

// Authorize decides whether at.User may do at. The order: /internal/ is
// for servers only (O flotilla:servers, also before system:masters: the
// admin token is not a server); system:masters may do anything; the node
// authorizer decides for nodes what it knows about (its denials of writes
// to nodes and pods are final, as NodeRestriction's); then RBAC; then deny.
// The reason explains a denial (or names the grant of an allow).
//
// A GET of pods/exec, pods/attach or pods/portforward (a websocket upgrade
// that runs a command) also needs create, as kube-apiserver requires since
// 1.31: "get" alone was long granted by roles that never meant it.
func (a *Auth) Authorize(ctx context.Context, at Attributes) (bool, string) {
	ok, reason := a.authorize(ctx, at)
	if ok && at.ResourceRequest && at.Verb == "get" && at.APIGroup == "" && at.Resource == "pods" &&
		(at.Subresource == "exec" || at.Subresource == "attach" || at.Subresource == "portforward") {
		c := at
		c.Verb = "create"
		if ok, _ := a.authorize(ctx, c); !ok {
			return false, fmt.Sprintf("a websocket %s also needs the create verb", at.Subresource)
		}
	}
	return ok, reason
}

func (a *Auth) authorize(ctx context.Context, at Attributes) (bool, string) {
	u := at.User
	if u == nil {
		return false, ""
	}
	if !at.ResourceRequest && isInternal(at.Path) {
		if u.InGroup(orgServers) {
			return true, ""
		}
		return false, "only servers of this cluster may use /internal/"
	}
	if u.InGroup(groupMasters) {
		return true, ""
	}
	if node, ok := nodeName(u); ok {
		switch d, reason := a.authorizeNode(ctx, node, &at); d {
		case allow:
			return true, reason
		case deny:
			return false, reason
		}
	}
	return a.rbac.snap.Load().allows(&at)
}

// nodeName returns the node a user is, when it is one: name
// system:node:<name> and group system:nodes, as kube requires both.
func nodeName(u *User) (string, bool) {
	name, ok := strings.CutPrefix(u.Name, nodeUserPrefix)
	return name, ok && name != "" && u.InGroup(orgNodes)
}

// authorizeNode is Kubernetes' Node authorizer plus NodeRestriction.
func (a *Auth) authorizeNode(ctx context.Context, node string, at *Attributes) (decision, string) {
	if !at.ResourceRequest {
		if at.Path == "/flotilla/v1/gossip/keyring" && (at.Verb == "get" || at.Verb == "head") {
			return allow, ""
		}
		return noOpinion, ""
	}
	if at.APIGroup != "" {
		return noOpinion, ""
	}
	read := at.Verb == "get" || at.Verb == "list" || at.Verb == "watch"
	switch at.Resource {
	case "nodes":
		switch {
		case at.Subresource != "" && at.Subresource != "status":
			return noOpinion, ""
		case read:
			return allow, ""
		case at.Verb == "create" || at.Verb == "update" || at.Verb == "patch":
			if at.Name == node {
				return allow, ""
			}
			return deny, fmt.Sprintf("node %q is not allowed to modify node %q", node, at.Name)
		}
		return deny, fmt.Sprintf("node %q is not allowed to %s nodes", node, at.Verb)
	case "pods":
		switch {
		case read && (at.Subresource == "" || at.Subresource == "status"):
			return allow, ""
		case at.Subresource == "status" && (at.Verb == "update" || at.Verb == "patch"),
			at.Subresource == "" && at.Verb == "delete":
			return a.podOnNode(ctx, node, at)
		case at.Subresource == "":
			return deny, fmt.Sprintf("node %q is not allowed to %s pods", node, at.Verb)
		}
		return noOpinion, ""
	case "services", "endpoints", "namespaces":
		if read && at.Subresource == "" {
			return allow, ""
		}
	case "events":
		if at.Subresource == "" && (at.Verb == "create" || at.Verb == "update" || at.Verb == "patch") {
			return allow, ""
		}
	case "secrets", "configmaps", "serviceaccounts":
		kind := byte(refSecret)
		switch at.Resource {
		case "configmaps":
			kind = refConfigMap
		case "serviceaccounts":
			kind = refServiceAccount
		}
		ok := (at.Subresource == "" && at.Verb == "get") ||
			(kind == refServiceAccount && at.Subresource == "token" && at.Verb == "create")
		if ok && at.Name != "" && at.Namespace != "" && a.pods.hasWaiting(ctx, refKey(node, kind, at.Namespace, at.Name)) {
			return allow, ""
		}
		return noOpinion, fmt.Sprintf("no relationship found between node %q and this object", node)
	}
	return noOpinion, ""
}

// podOnNode allows a write to a pod bound to node, read by key from the
// local store. A pod that is missing even after a read index is allowed
// through, so the handler answers 404 (the agent treats that as done).
func (a *Auth) podOnNode(ctx context.Context, node string, at *Attributes) (decision, string) {
	key := podPrefix + at.Namespace + "/" + at.Name
	if at.Namespace == "" || at.Name == "" {
		return deny, ""
	}
	p := a.objs.get(a.cfg.Store, key)
	if (p == nil || p.Spec.NodeName != node) && a.cfg.ReadIndex != nil {
		if err := a.cfg.ReadIndex(ctx); err == nil {
			p = a.objs.get(a.cfg.Store, key)
			if p == nil {
				return allow, ""
			}
		}
	}
	if p != nil && p.Spec.NodeName == node {
		return allow, ""
	}
	return deny, fmt.Sprintf("node %q can only modify pods bound to it", node)
}

// isNodeCreate: a node creating a Node names it in the body, not the URL.
func isNodeCreate(u *User, at *Attributes) bool {
	_, ok := nodeName(u)
	return ok && at.ResourceRequest && at.APIGroup == "" && at.Resource == "nodes" && at.Subresource == "" && at.Verb == "create"
}

// maxNodeBody bounds the body read to find a new Node's name.
const maxNodeBody = 3 << 20

// nodeNameFromBody reads a Node create body (JSON, YAML or protobuf) for
// its name and returns a body the handler can read again.
func nodeNameFromBody(r *http.Request) (string, io.ReadCloser, error) {
	if r.Body == nil {
		return "", http.NoBody, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxNodeBody+1))
	r.Body.Close()
	if err != nil {
		return "", nil, fmt.Errorf("read body: %w", err)
	}
	if len(data) > maxNodeBody {
		return "", nil, errors.New("request body too large")
	}
	body := io.NopCloser(bytes.NewReader(data))
	name, err := nodeDecoder.Decode(data)
	if err != nil {
		return "", body, nil // an unreadable body names no node: denied
	}
	return name, body, nil
}
