package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"flotilla/api/openapi"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/version"

	"flotilla/fsm"
)

// Cluster is what the API needs from the Raft node. *cluster.Node satisfies
// it; tests use apitest's in-memory double.
type Cluster interface {
	// Apply commits a transaction (a follower forwards it to the leader).
	Apply(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error)
	// ReadIndex returns once the local store has applied every write
	// committed before the call: local reads after it are linearizable.
	ReadIndex(ctx context.Context) error
	// Store is the local state machine for reads and watches.
	Store() *fsm.Store
}

// Config configures a Server. Zero values are defaults, except Cluster.
type Config struct {
	// Cluster is the replicated store (required).
	Cluster Cluster
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Registerer receives the API metrics; nil = a private registry. When it
	// is also a prometheus.Gatherer, /metrics serves it.
	Registerer prometheus.Registerer
	// Gatherer is what /metrics serves when Registerer is not a Gatherer.
	Gatherer prometheus.Gatherer
	// Ready reports whether this master may serve (a leader is known and this
	// master has caught up); nil = always ready. /readyz answers 500 with its error.
	Ready func() error
	// MaxBodyBytes bounds a request body (default 3 MiB, kube-apiserver's).
	MaxBodyBytes int64
	// MaxMutatingInFlight bounds concurrent writes (default 400);
	// MaxReadOnlyInFlight bounds concurrent reads (default 800). Watches are
	// not counted. Past the bound a request gets 429 with Retry-After.
	MaxMutatingInFlight int
	MaxReadOnlyInFlight int
	// RequestTimeout bounds a non-watch request (default 60s).
	RequestTimeout time.Duration
	// MaxWatchTimeout bounds every watch, timeoutSeconds or not (default 30m).
	MaxWatchTimeout time.Duration
	// BookmarkInterval is how often a watch with allowWatchBookmarks gets a
	// BOOKMARK (default 30s).
	BookmarkInterval time.Duration
	// FutureRevisionWait is how long a read or watch at a resourceVersion
	// this master has not applied yet waits before 504 (default 3s).
	FutureRevisionWait time.Duration
	// ServiceCIDR is the ClusterIP range (default 10.96.0.0/12); its first
	// address is reserved for the default/kubernetes Service.
	ServiceCIDR netip.Prefix
	// NodePortMin and NodePortMax bound NodePorts (default 30000–32767).
	NodePortMin, NodePortMax int
	// APIPort is the target port of the default/kubernetes Service (default 6443).
	APIPort int
	// Now is the clock for creationTimestamp and deletionTimestamp (default time.Now).
	Now func() time.Time
	// Version is what /version reports (default: the Kubernetes version of
	// the k8s.io libraries, with a +flotilla suffix).
	Version *version.Info
	// Middleware wraps the resource and discovery handlers: the seam for
	// authentication and authorization (nil = none).
	Middleware func(http.Handler) http.Handler
	// Authorizer answers SelfSubjectAccessReviews for the user Middleware
	// put in the request context (*auth.Auth); nil = they answer 503.
	Authorizer Authorizer
	// Seal encrypts Secrets at rest: the stored bytes of every Secret go
	// through it on write and back on read (nil = stored as plaintext).
	Seal Sealer
	// ServiceAccountKey signs ServiceAccount tokens (TokenRequest); nil =
	// the token subresource answers 503.
	ServiceAccountKey *ecdsa.PrivateKey
	// RootCA is the cluster CA certificate (PEM) published to pods.
	RootCA []byte
	// AgentTLS is the client side of API → agent connections (logs, exec,
	// port-forward, images): HTTPS with it, plain HTTP when nil.
	AgentTLS *tls.Config
	// Extra mounts more handlers on the router (e.g. /openapi/v2 and
	// /openapi/v3). They run inside Middleware and the in-flight limit.
	Extra []func(*mux.Router)
}

// Sealer encrypts and decrypts stored values (Secrets at rest).
type Sealer interface {
	Encrypt(plain []byte) ([]byte, error)
	Decrypt(sealed []byte) ([]byte, error)
}

// Server is the Kubernetes-compatible API of one master.
type Server struct {
	cfg     Config
	log     *slog.Logger
	reg     *registry
	metrics *metrics
	gather  prometheus.Gatherer
	router  *mux.Router
	handler http.Handler
	mutSem  chan struct{}
	roSem   chan struct{}
	alloc   *allocator
	openapi *openapi.Docs
	// watchesClosed is closed by CloseWatches; every watch handler selects
	// on it, so shutdown need not wait out MaxWatchTimeout.
	watchesClosed chan struct{}
	closeOnce     sync.Once
	// agentTransport and agentScheme reach the agents (Config.AgentTLS).
	agentTransport *http.Transport
	agentScheme    string
}

// New builds a Server. It does not listen; serve Handler().
func New(cfg Config) (*Server, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("api: Config.Cluster is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 3 << 20
	}
	if cfg.MaxMutatingInFlight <= 0 {
		cfg.MaxMutatingInFlight = 400
	}
	if cfg.MaxReadOnlyInFlight <= 0 {
		cfg.MaxReadOnlyInFlight = 800
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 60 * time.Second
	}
	if cfg.MaxWatchTimeout <= 0 {
		cfg.MaxWatchTimeout = 30 * time.Minute
	}
	if cfg.BookmarkInterval <= 0 {
		cfg.BookmarkInterval = 30 * time.Second
	}
	if cfg.FutureRevisionWait <= 0 {
		cfg.FutureRevisionWait = 3 * time.Second
	}
	if !cfg.ServiceCIDR.IsValid() {
		cfg.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	}
	if !cfg.ServiceCIDR.Addr().Is4() || cfg.ServiceCIDR.Bits() > 30 {
		return nil, fmt.Errorf("api: service CIDR %s: want an IPv4 range of at least 4 addresses", cfg.ServiceCIDR)
	}
	cfg.ServiceCIDR = cfg.ServiceCIDR.Masked()
	if cfg.NodePortMin <= 0 {
		cfg.NodePortMin = 30000
	}
	if cfg.NodePortMax <= 0 {
		cfg.NodePortMax = 32767
	}
	if cfg.NodePortMax < cfg.NodePortMin || cfg.NodePortMax > 65535 {
		return nil, fmt.Errorf("api: node port range %d-%d is invalid", cfg.NodePortMin, cfg.NodePortMax)
	}
	if cfg.APIPort <= 0 {
		cfg.APIPort = 6443
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Version == nil {
		v := defaultVersion()
		cfg.Version = &v
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "api"),
		reg:    newRegistry(resources()),
		mutSem: make(chan struct{}, cfg.MaxMutatingInFlight),
		roSem:  make(chan struct{}, cfg.MaxReadOnlyInFlight),

		watchesClosed: make(chan struct{}),
	}
	s.agentTransport, s.agentScheme = newAgentTransport(cfg.AgentTLS), "http"
	if cfg.AgentTLS != nil {
		s.agentScheme = "https"
	}
	s.alloc = newAllocator(cfg.ServiceCIDR, cfg.NodePortMin, cfg.NodePortMax)
	reg := cfg.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, s.gather = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		s.gather = g
	}
	if cfg.Gatherer != nil {
		s.gather = cfg.Gatherer
	}
	if s.gather == nil {
		s.gather = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	if s.openapi, err = openAPI(s.reg); err != nil {
		return nil, err
	}
	s.router = s.routes()
	s.handler = s.wrap(s.router)
	return s, nil
}

// Handler is the whole API: resources, discovery, health and metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// CloseWatches ends every open watch stream cleanly (the client sees the
// stream end and re-watches, as when kube-apiserver shuts down) and refuses
// later watches with 503. Other requests are untouched, so
// http.Server.Shutdown can let them finish: register it with
// RegisterOnShutdown. It is safe to call more than once.
func (s *Server) CloseWatches() {
	s.closeOnce.Do(func() { close(s.watchesClosed) })
}

// Router is the route table; callers may add routes before serving.
func (s *Server) Router() *mux.Router { return s.router }

func (s *Server) routes() *mux.Router {
	r := mux.NewRouter()
	r.SkipClean(true)
	r.UseEncodedPath()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		s.writeError(w, req, notFoundPath())
	})
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		s.writeError(w, req, apierrors.NewMethodNotSupported(schemaGRNone, req.Method))
	})
	get := []string{http.MethodGet, http.MethodHead}
	r.HandleFunc("/healthz", s.health(nil)).Methods(get...)
	r.HandleFunc("/livez", s.health(nil)).Methods(get...)
	r.HandleFunc("/readyz", s.health(s.cfg.Ready)).Methods(get...)
	r.HandleFunc("/healthz/{check:.*}", s.health(nil)).Methods(get...)
	r.HandleFunc("/livez/{check:.*}", s.health(nil)).Methods(get...)
	r.HandleFunc("/readyz/{check:.*}", s.health(s.cfg.Ready)).Methods(get...)
	r.Handle("/metrics", promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{})).Methods(get...)
	r.HandleFunc("/version", s.serveVersion).Methods(get...)
	r.HandleFunc("/version/", s.serveVersion).Methods(get...)
	r.HandleFunc("/api", s.serveCoreVersions).Methods(get...)
	r.HandleFunc("/api/", s.serveCoreVersions).Methods(get...)
	r.HandleFunc("/apis", s.serveGroups).Methods(get...)
	r.HandleFunc("/apis/", s.serveGroups).Methods(get...)
	r.HandleFunc("/api/v1", s.serveResourceList("", "v1")).Methods(get...)
	r.HandleFunc("/api/v1/", s.serveResourceList("", "v1")).Methods(get...)
	r.PathPrefix("/api/v1/").HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		s.serveResource(w, req, "", "v1", strings.TrimPrefix(req.URL.EscapedPath(), "/api/v1/"))
	})
	for _, gv := range s.reg.groupVersions() {
		if gv.Group == "" {
			continue
		}
		gv := gv
		base := "/apis/" + gv.Group
		r.HandleFunc(base, s.serveGroup(gv.Group)).Methods(get...)
		r.HandleFunc(base+"/", s.serveGroup(gv.Group)).Methods(get...)
		r.HandleFunc(base+"/"+gv.Version, s.serveResourceList(gv.Group, gv.Version)).Methods(get...)
		r.HandleFunc(base+"/"+gv.Version+"/", s.serveResourceList(gv.Group, gv.Version)).Methods(get...)
		r.PathPrefix(base + "/" + gv.Version + "/").HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			s.serveResource(w, req, gv.Group, gv.Version, strings.TrimPrefix(req.URL.EscapedPath(), base+"/"+gv.Version+"/"))
		})
	}
	s.openapi.Register(r)
	for _, f := range s.cfg.Extra {
		f(r)
	}
	return r
}

// wrap adds, outermost first: panic recovery, metrics, the authn/z seam,
// the in-flight limit and the body limit.
func (s *Server) wrap(h http.Handler) http.Handler {
	h = s.limitBody(h)
	h = s.limitInFlight(h)
	if s.cfg.Middleware != nil {
		h = s.cfg.Middleware(h)
	}
	h = s.instrument(h)
	return s.recoverPanics(h)
}

func (s *Server) recoverPanics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				s.writeError(w, r, apierrors.NewInternalError(fmt.Errorf("panic: %v", v)))
			}
		}()
		h.ServeHTTP(w, r)
	})
}

func (s *Server) limitBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAgentProxy(r) {
			h.ServeHTTP(w, r) // image archives: see isAgentProxy
			return
		}
		if r.ContentLength > s.cfg.MaxBodyBytes {
			s.writeError(w, r, bodyTooLarge(s.cfg.MaxBodyBytes))
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		}
		h.ServeHTTP(w, r)
	})
}

func bodyTooLarge(limit int64) error {
	return apierrors.NewRequestEntityTooLargeError("limit is " + strconv.FormatInt(limit, 10))
}

// isLongRunning: watches (and the streaming pod subresources) do not count
// against the in-flight limit, as in kube-apiserver.
func isLongRunning(r *http.Request) bool {
	q := r.URL.Query().Get("watch")
	if q == "true" || q == "1" {
		return true
	}
	p := r.URL.Path
	if strings.HasPrefix(p, "/api/v1/watch/") || (strings.HasPrefix(p, "/apis/") && strings.Contains(p, "/watch/")) {
		return true
	}
	return strings.HasSuffix(p, "/exec") || strings.HasSuffix(p, "/log") || strings.HasSuffix(p, "/attach") || strings.HasSuffix(p, "/portforward") || isAgentProxy(r)
}

func (s *Server) limitInFlight(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isLongRunning(r) {
			h.ServeHTTP(w, r)
			return
		}
		sem := s.roSem
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			sem = s.mutSem
		}
		select {
		case sem <- struct{}{}:
		default:
			s.writeError(w, r, apierrors.NewTooManyRequests("too many requests in flight on this master, please try again later", retryAfterSeconds))
			return
		}
		defer func() { <-sem }()
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

func (s *Server) health(check func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if check != nil {
			if err := check(); err != nil {
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprintf(w, "[-]ready failed: %v\nreadyz check failed\n", err)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
		if _, ok := r.URL.Query()["verbose"]; ok {
			fmt.Fprint(w, "[+]ping ok\n[+]ready ok\nhealthz check passed\n")
			return
		}
		fmt.Fprint(w, "ok")
	}
}
