// Package apitest runs the API against an in-memory cluster double, for the
// tests of api and of every API client (controllers, scheduler, agent).
package apitest

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/api"
	"flotilla/fsm"
)

// Cluster is a single-member, in-memory stand-in for *cluster.Node: Apply
// encodes the transaction and applies it to an fsm.Store at the next index,
// as Raft would on every master; ReadIndex returns at once. It satisfies
// api.Cluster.
type Cluster struct {
	mu    sync.Mutex
	store *fsm.Store
	index uint64
	// applyErr, when set, fails every Apply (to test error mapping).
	applyErr error
	readErr  error
}

// NewCluster returns an empty cluster double over a store with cfg.
func NewCluster(cfg fsm.Config) *Cluster {
	return &Cluster{store: fsm.New(cfg)}
}

// Apply validates, encodes and applies txn, like cluster.Node.Apply.
func (c *Cluster) Apply(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := txn.Validate(); err != nil {
		return nil, err
	}
	data, err := fsm.EncodeTxn(txn)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applyErr != nil {
		return nil, c.applyErr
	}
	c.index++
	res := c.store.Apply(&raft.Log{Index: c.index, Term: 1, Type: raft.LogCommand, Data: data})
	return res.(*fsm.TxnResult), nil
}

// ReadIndex returns at once (the double is its own leader) unless an error
// was injected.
func (c *Cluster) ReadIndex(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readErr != nil {
		return c.readErr
	}
	return ctx.Err()
}

// Store is the local store.
func (c *Cluster) Store() *fsm.Store { return c.store }

// FailApply makes every later Apply return err (nil heals).
func (c *Cluster) FailApply(err error) {
	c.mu.Lock()
	c.applyErr = err
	c.mu.Unlock()
}

// FailReadIndex makes every later ReadIndex return err (nil heals).
func (c *Cluster) FailReadIndex(err error) {
	c.mu.Lock()
	c.readErr = err
	c.mu.Unlock()
}

// Server is a running API over a Cluster double.
type Server struct {
	*httptest.Server
	API     *api.Server
	Cluster *Cluster
	// Config reaches the server with client-go (JSON, high QPS).
	Config *rest.Config
	// Client is a typed clientset for Config.
	Client kubernetes.Interface
}

// Options adjusts NewServer.
type Options struct {
	// Store configures the double's fsm.Store (e.g. a tiny history).
	Store fsm.Config
	// API adjusts the api.Config before New (Cluster is already set).
	API func(*api.Config)
	// SkipDefaults leaves out the default namespaces and Service.
	SkipDefaults bool
	// Wrap wraps the API handler (e.g. to observe responses).
	Wrap func(http.Handler) http.Handler
}

// NewServer starts an API server on loopback over a fresh in-memory
// cluster, with the default namespaces, and stops it when the test ends.
func NewServer(t testing.TB, opts ...Options) *Server {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	c := NewCluster(o.Store)
	cfg := api.Config{
		Cluster: c,
		Logger:  slog.New(slog.DiscardHandler),
	}
	if o.API != nil {
		o.API(&cfg)
	}
	srv, err := api.New(cfg)
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	if !o.SkipDefaults {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.EnsureDefaults(ctx); err != nil {
			t.Fatalf("EnsureDefaults: %v", err)
		}
	}
	var h http.Handler = srv.Handler()
	if o.Wrap != nil {
		h = o.Wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	rc := &rest.Config{
		Host:          hs.URL,
		ContentConfig: rest.ContentConfig{ContentType: "application/json"},
		QPS:           1000,
		Burst:         2000,
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return &Server{Server: hs, API: srv, Cluster: c, Config: rc, Client: cs}
}
