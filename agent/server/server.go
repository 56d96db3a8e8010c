package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sort"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flotilla/agent/network"
	"flotilla/agent/runtime"
)

// Network is what the endpoint needs from the pod network (*network.Manager
// satisfies it): whether a pod has its own namespace, and a dialer inside it.
type Network interface {
	// Lookup reports the pod's network; false for a pod without its own
	// namespace (hostNetwork).
	Lookup(uid string) (network.Attachment, bool)
	// DialContext dials addr from inside the pod's network namespace.
	DialContext(ctx context.Context, uid, network, addr string) (net.Conn, error)
}

// The pod network manager is what the agent passes as Config.Network.
var _ Network = (*network.Manager)(nil)

// Config configures the endpoint. Runtime is required.
type Config struct {
	// Runtime runs the containers whose logs, exec and images are served.
	Runtime runtime.Runtime
	// Network dials into pods' namespaces for port-forward; nil = every pod
	// is dialled on the node's loopback (as hostNetwork pods are).
	Network Network
	// Logger; default slog.Default().
	Logger *slog.Logger
	// StreamIdleTimeout closes an exec or port-forward connection that
	// carried nothing for this long (default 4h, the kubelet's).
	StreamIdleTimeout time.Duration
	// StreamCreationTimeout bounds how long a SPDY client may take to open
	// the streams it asked for (default 30s, the kubelet's).
	StreamCreationTimeout time.Duration
	// Extra routes ("GET /metrics" and the like) from the agent's other
	// parts, served beside the kubelet-style ones.
	Extra map[string]http.Handler
}

// ImageList is the body of GET /images and of the answer to POST /images.
type ImageList struct {
	Images []Image `json:"images"`
}

// Image is one image in the node's runtime.
type Image struct {
	// Ref is the full reference, e.g. "docker.io/library/busybox:1.36".
	Ref string `json:"ref"`
	// ID is the config digest ("sha256:...").
	ID string `json:"id"`
	// Size is the content size in bytes.
	Size int64 `json:"size"`
}

type server struct {
	rt       runtime.Runtime
	net      Network
	log      *slog.Logger
	idle     time.Duration
	creation time.Duration
}

// New returns the endpoint's handler. It does not listen.
func New(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StreamIdleTimeout <= 0 {
		cfg.StreamIdleTimeout = 4 * time.Hour
	}
	if cfg.StreamCreationTimeout <= 0 {
		cfg.StreamCreationTimeout = 30 * time.Second
	}
	s := &server{
		rt:       cfg.Runtime,
		net:      cfg.Network,
		log:      cfg.Logger.With("component", "agent-server"),
		idle:     cfg.StreamIdleTimeout,
		creation: cfg.StreamCreationTimeout,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "ok")
	})
	mux.Handle("GET /containerLogs/{namespace}/{pod}/{container}", s.handle(s.serveLogs))
	exec := s.handle(s.serveExec)
	mux.Handle("GET /exec/{namespace}/{pod}/{container}", exec)
	mux.Handle("POST /exec/{namespace}/{pod}/{container}", exec)
	mux.Handle("GET /exec/{namespace}/{pod}/{uid}/{container}", exec)
	mux.Handle("POST /exec/{namespace}/{pod}/{uid}/{container}", exec)
	pf := s.handle(s.servePortForward)
	mux.Handle("GET /portForward/{namespace}/{pod}", pf)
	mux.Handle("POST /portForward/{namespace}/{pod}", pf)
	mux.Handle("GET /portForward/{namespace}/{pod}/{uid}", pf)
	mux.Handle("POST /portForward/{namespace}/{pod}/{uid}", pf)
	mux.Handle("GET /images", s.handle(s.listImages))
	mux.Handle("POST /images", s.handle(s.importImages))
	for pattern, h := range cfg.Extra {
		mux.Handle(pattern, h)
	}
	return s.recover(notFoundAsStatus(mux))
}

// errStatus is a handler's failure: the HTTP code and kubelet's message.
type errStatus struct {
	code   int
	reason metav1.StatusReason
	msg    string
}

func (e *errStatus) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &errStatus{http.StatusBadRequest, metav1.StatusReasonBadRequest, fmt.Sprintf(format, a...)}
}

func notFound(format string, a ...any) error {
	return &errStatus{http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf(format, a...)}
}

// writeStatus answers err as a metav1.Status, the form the API and client-go
// decode: a runtime that cannot be reached is 503, anything unexpected 500.
func writeStatus(w http.ResponseWriter, err error) {
	var es *errStatus
	switch {
	case errors.As(err, &es):
	case errors.Is(err, runtime.ErrUnavailable):
		es = &errStatus{http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable, err.Error()}
	case errors.Is(err, runtime.ErrNotFound):
		es = &errStatus{http.StatusNotFound, metav1.StatusReasonNotFound, err.Error()}
	default:
		es = &errStatus{http.StatusInternalServerError, metav1.StatusReasonInternalError, err.Error()}
	}
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure,
		Message:  es.msg,
		Reason:   es.reason,
		Code:     int32(es.code),
	}
	body, _ := json.Marshal(&st)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(es.code)
	_, _ = w.Write(body)
}

// handle adapts a handler that returns its failure.
func (s *server) handle(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			var es *errStatus
			if !errors.As(err, &es) {
				s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeStatus(w, err)
		}
	})
}

// notFoundAsStatus answers unknown paths and methods with a Status rather
// than ServeMux's plain text, so the API can show them.
func notFoundAsStatus(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			// ServeMux answers 405 for a known path with another method;
			// tell them apart by asking again with GET.
			probe := r.Clone(r.Context())
			probe.Method = http.MethodGet
			if _, p := mux.Handler(probe); p != "" {
				writeStatus(w, &errStatus{http.StatusMethodNotAllowed, metav1.StatusReasonMethodNotAllowed,
					fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path)})
				return
			}
			writeStatus(w, notFound("the path %s is not served by this agent", r.URL.Path))
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// recover turns a handler's panic into a 500 (when nothing was written yet)
// and a log line, so one bad request cannot take the agent down.
func (s *server) recover(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeStatus(w, fmt.Errorf("internal error: %v", v))
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// podContainers returns the containers of pod namespace/name (of uid, when
// given), newest attempt first. With no uid and several pods of that name
// (one deleted and made again while its containers linger), the pod with
// the most recently created container wins.
func (s *server) podContainers(ctx context.Context, namespace, name, uid string) ([]runtime.Container, error) {
	all, err := s.rt.ListContainers(ctx)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	byUID := map[string][]runtime.Container{}
	newest := map[string]time.Time{}
	for _, c := range all {
		if c.PodNamespace != namespace || c.PodName != name || (uid != "" && c.PodUID != uid) {
			continue
		}
		byUID[c.PodUID] = append(byUID[c.PodUID], c)
		if c.CreatedAt.After(newest[c.PodUID]) || newest[c.PodUID].IsZero() {
			newest[c.PodUID] = c.CreatedAt
		}
	}
	var pick string
	for u := range byUID {
		if pick == "" || newest[u].After(newest[pick]) || (newest[u].Equal(newest[pick]) && u > pick) {
			pick = u
		}
	}
	if pick == "" {
		return nil, notFound("pod %q does not exist on this node", namespace+"/"+name)
	}
	cs := byUID[pick]
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].Attempt != cs[j].Attempt {
			return cs[i].Attempt > cs[j].Attempt
		}
		return cs[i].CreatedAt.After(cs[j].CreatedAt)
	})
	return cs, nil
}

// containerAttempts returns the instances of one container of a pod,
// newest attempt first.
func (s *server) containerAttempts(ctx context.Context, namespace, pod, uid, container string) ([]runtime.Container, error) {
	cs, err := s.podContainers(ctx, namespace, pod, uid)
	if err != nil {
		return nil, err
	}
	var out []runtime.Container
	for _, c := range cs {
		if c.Name == container {
			out = append(out, c)
		}
	}
	return out, nil
}

func (s *server) listImages(w http.ResponseWriter, r *http.Request) error {
	imgs, err := s.rt.ListImages(r.Context())
	if err != nil {
		return fmt.Errorf("list images: %w", err)
	}
	writeJSON(w, imageList(imgs))
	return nil
}

// importImages loads the archive in the body. The body is not bounded:
// images are as large as they are, and only the API (which authorizes
// nodes/proxy) reaches this endpoint.
func (s *server) importImages(w http.ResponseWriter, r *http.Request) error {
	imgs, err := s.rt.ImportImage(r.Context(), r.Body)
	if err != nil {
		if errors.Is(err, runtime.ErrUnavailable) {
			return fmt.Errorf("import image: %w", err)
		}
		// Anything else is almost always the archive: not a tar, no
		// index.json or manifest.json, a missing blob.
		return badRequest("import image: %v", err)
	}
	s.log.Info("imported images", "count", len(imgs))
	writeJSON(w, imageList(imgs))
	return nil
}

func imageList(imgs []runtime.Image) *ImageList {
	out := &ImageList{Images: make([]Image, 0, len(imgs))}
	for _, i := range imgs {
		out.Images = append(out.Images, Image{Ref: i.Ref, ID: i.ID, Size: i.Size})
	}
	sort.Slice(out.Images, func(i, j int) bool { return out.Images[i].Ref < out.Images[j].Ref })
	return out
}

func writeJSON(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeStatus(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
