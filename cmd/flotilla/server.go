package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"flotilla/cluster"
)

type serverOptions struct {
	name              string
	dataDir           string
	bind              string
	advertise         string
	raftPort          int
	gossipPort        int
	apiPort           int
	bootstrapExpect   int
	join              []string
	deadServerCleanup time.Duration
}

func newServerCommand(logs *logOptions) *cobra.Command {
	o := &serverOptions{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a master: Raft member, gossip member and API server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return runServer(cmd.Context(), o, log)
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.name, "name", host, "server name: Raft server ID and gossip node name, unique in the cluster")
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/flotilla", "directory for Raft log, snapshots and keys")
	f.StringVar(&o.bind, "bind", "0.0.0.0", "address to listen on")
	f.StringVar(&o.advertise, "advertise", "", "address other members reach this server at (default: the bind address, or the first non-loopback address)")
	f.IntVar(&o.raftPort, "raft-port", 6444, "Raft transport port")
	f.IntVar(&o.gossipPort, "gossip-port", 7946, "gossip port (TCP and UDP)")
	f.IntVar(&o.apiPort, "api-port", 6443, "API port (also serves operator and internal endpoints)")
	f.IntVar(&o.bootstrapExpect, "bootstrap-expect", 0, "bootstrap a new cluster once this many servers are seen (0: join an existing one)")
	f.StringArrayVar(&o.join, "join", nil, "gossip address (host:port) of any member to join; repeatable")
	f.DurationVar(&o.deadServerCleanup, "dead-server-cleanup", 5*time.Minute, "remove a server from Raft after it has been dead this long (only while quorum stays safe)")
	return cmd
}

func runServer(ctx context.Context, o *serverOptions, log *slog.Logger) error {
	if o.name == "" {
		return errors.New("--name is required (the hostname could not be read)")
	}
	if o.bootstrapExpect == 0 && len(o.join) == 0 {
		return errors.New("nothing to do: give --bootstrap-expect N to form a new cluster or --join ADDR to join one")
	}
	for _, p := range []struct {
		flag string
		port int
	}{{"--raft-port", o.raftPort}, {"--gossip-port", o.gossipPort}, {"--api-port", o.apiPort}} {
		if p.port <= 0 || p.port > 65535 {
			return fmt.Errorf("%s %d: not a port", p.flag, p.port)
		}
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	node, err := cluster.New(cluster.Config{
		Name:              o.name,
		DataDir:           o.dataDir,
		BindAddr:          o.bind,
		AdvertiseAddr:     o.advertise,
		RaftPort:          o.raftPort,
		GossipPort:        o.gossipPort,
		APIPort:           o.apiPort,
		BootstrapExpect:   o.bootstrapExpect,
		Join:              o.join,
		DeadServerCleanup: o.deadServerCleanup,
		Logger:            log.With("component", "cluster"),
		Registerer:        reg,
	})
	if err != nil {
		return err
	}

	// The API port comes up before the node joins: followers forward writes
	// and read-index requests to the leader's API port, and operators need it
	// while the cluster is still forming.
	ln, err := net.Listen("tcp", net.JoinHostPort(o.bind, strconv.Itoa(o.apiPort)))
	if err != nil {
		_ = node.Shutdown(context.Background())
		return fmt.Errorf("api listener: %w", err)
	}
	srv := &http.Server{
		Handler:           serverMux(node, reg),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	if err := node.Start(ctx); err != nil {
		_ = srv.Close()
		_ = node.Shutdown(context.Background())
		return err
	}
	kcAddr := net.JoinHostPort(o.bind, strconv.Itoa(o.apiPort))
	if o.advertise != "" {
		kcAddr = net.JoinHostPort(o.advertise, strconv.Itoa(o.apiPort))
	} else if ip := net.ParseIP(o.bind); ip == nil || ip.IsUnspecified() {
		kcAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(o.apiPort))
	}
	kc, err := writeKubeconfig(o.dataDir, kcAddr)
	if err != nil {
		log.Warn("no kubeconfig written", "err", err)
	}
	log.Info("server started", "name", o.name, "api", ln.Addr().String(), "data_dir", o.dataDir, "kubeconfig", kc)

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		log.Error("api server stopped", "err", err)
	}
	// Stop in reverse: the node first (a leader hands leadership over while
	// the API still answers forwarded writes), then the listener.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nerr := node.Shutdown(sctx)
	_ = srv.Shutdown(sctx)
	return nerr
}

// serverMux routes the API port: internal and operator endpoints go to the
// cluster node, the rest to the Kubernetes API.
func serverMux(node *cluster.Node, reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	nh := node.Handler()
	mux.Handle("/internal/", nh)
	mux.Handle("/flotilla/", nh)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }
	mux.HandleFunc("/healthz", ok)
	mux.HandleFunc("/livez", ok)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if id, _ := node.Leader(); id == "" {
			http.Error(w, "no leader", http.StatusServiceUnavailable)
			return
		}
		ok(w, r)
	})
	return mux
}
