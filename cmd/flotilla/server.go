package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/agent/gossip"
	"flotilla/api"
	"flotilla/cluster"
	"flotilla/cluster/controllers"
	"flotilla/internal/join"
	"flotilla/internal/pki"
	"flotilla/internal/satoken"
	"flotilla/internal/seal"
	"flotilla/scheduler"
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
	agent             bool
	agentFlags        agentFlags
	token             string
	caHash            string
	tlsSANs           []string
	auditLog          string
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
	f.BoolVar(&o.agent, "agent", false, "also run a node agent in this process (all-in-one); its Node is named after --name and the agent flags below apply")
	f.StringVar(&o.token, "token", "", "the cluster's shared server token (default: the data dir's token file; the first server of a new cluster generates it), or a join token from `flotilla token create --role server`")
	f.StringVar(&o.caHash, "ca-hash", "", "with a join token: the cluster CA's hash that `flotilla token create` printed (sha256:...); the server refuses a cluster whose CA does not match")
	f.StringArrayVar(&o.tlsSANs, "tls-san", nil, "extra host name or IP address for this server's certificate; repeatable")
	f.StringVar(&o.auditLog, "audit-log", "", "append one JSON line per mutating API request (who, what, when, result) to this file")
	o.agentFlags.register(cmd)
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
	var nodeIP string
	if o.agent {
		// Checked before anything starts, so bad agent flags fail fast.
		if err := o.agentFlags.check(); err != nil {
			return err
		}
		var err error
		if nodeIP, err = nodeAddress(o.bind, o.advertise); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	// The cluster locks its Raft state later, too late to keep a second
	// server from reissuing the certificates here under another name.
	lock, err := cluster.LockDataDir(o.dataDir, "server.lock")
	if err != nil {
		return err
	}
	defer lock.Close()
	creds := join.NewServerCreds(o.dataDir)
	if err := creds.LoadError(); err != nil {
		// Never make a new CA over damaged keys: that would split the
		// cluster's trust in two.
		return fmt.Errorf("the keys in %s: %w", filepath.Join(o.dataDir, "tls"), err)
	}
	if !creds.Ready() && fileExists(filepath.Join(o.dataDir, "cluster-id")) {
		// A server learns its cluster's ID only once it is in Raft, which
		// needs the keys (Raft is mutual TLS): this dir predates them or
		// lost them, and making new ones would split the cluster's trust.
		return fmt.Errorf("data dir %s holds cluster state but no cluster keys (%s): it was made by a Flotilla without security, or tls/ was removed; start this server with a fresh data dir (make run: remove ./data) and restore a snapshot if the state matters",
			o.dataDir, filepath.Join(o.dataDir, "tls"))
	}
	token, err := serverToken(o.dataDir, o.token, o.bootstrapExpect > 0, creds.Ready(), log)
	if err != nil {
		return err
	}
	names, err := serverCertNames(o.name, o.bind, o.advertise, o.tlsSANs, serviceIP)
	if err != nil {
		return err
	}
	_, _, tokenErr := pki.ParseJoinToken(token)
	isJoinToken := tokenErr == nil
	switch {
	case creds.Ready():
		if err := creds.EnsureServerCert(o.name, names.ips, names.dns); err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
	case len(o.join) > 0 && !isJoinToken && joinRunning(ctx, o, token, names, creds, log):
		// A fresh server of a cluster that already runs (a late or a
		// replacement one): it got the keys like any joiner.
	case o.bootstrapExpect == 0 || isJoinToken:
		// A fresh server joining a running cluster gets the cluster's keys
		// before anything listens: Raft is mutual TLS.
		if len(o.join) == 0 {
			return errors.New("--join is required to join with a token")
		}
		log.Info("joining the cluster's credentials", "via", apiAddrsFor(o.join, o.apiPort))
		if err := fetchKeys(ctx, creds, token, o.caHash, names, o.name, apiAddrsFor(o.join, o.apiPort), cluster.DefaultJoinTimeout); err != nil {
			return fmt.Errorf("join: %w", err)
		}
	}
	gossipKeys, err := loadGossipKeys(o.dataDir, creds, token)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Leader-only work reaches the API like any other client, over the
	// local API port with this server's certificate, so it behaves the
	// same on every master and a new leader picks up where the old one
	// stopped.
	localAPI := net.JoinHostPort(loopbackFor(o.bind), strconv.Itoa(o.apiPort))
	var apiServer *api.Server // set below, once the cluster's keys are here
	apiReady := make(chan struct{})
	var health *gossipHealth // likewise
	var node *cluster.Node   // likewise
	leaderServices := []cluster.LeaderService{
		{Name: "api-defaults", Run: func(ctx context.Context) error {
			select {
			case <-apiReady:
			case <-ctx.Done():
				return nil
			}
			return retry(ctx, log, "api-defaults", func(ctx context.Context) error { return apiServer.EnsureDefaults(ctx) })
		}},
		{Name: "gossip-key", Run: func(ctx context.Context) error {
			select {
			case <-apiReady:
			case <-ctx.Done():
				return nil
			}
			return takeOverGossipKey(ctx, node, token, log)
		}},
		supervised(log, "scheduler", func(ctx context.Context) error {
			cs, err := localClient(localAPI, o.dataDir, "scheduler")
			if err != nil {
				return err
			}
			s, err := scheduler.New(scheduler.Config{Client: cs, Logger: log.With("component", "scheduler")})
			if err != nil {
				return err
			}
			return s.Run(ctx)
		}),
		supervised(log, "controllers", func(ctx context.Context) error {
			cs, err := localClient(localAPI, o.dataDir, "controller-manager")
			if err != nil {
				return err
			}
			return controllers.NewManager(controllers.Config{
				Client:     cs,
				Logger:     log.With("component", "controllers"),
				NodeHealth: health,
				Masters:    func() []string { return gossip.APIAddrs(health.node.Members()) },
				RootCA:     creds.CAPEM(),
			}).Run(ctx)
		}),
	}

	sealer := &lateSealer{}
	serverTLS, clientTLS := pki.MutualTLS(creds, pki.OrgServers)
	node, err = cluster.New(cluster.Config{
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
		LeaderServices:    leaderServices,
		Network:           cluster.TLSNetwork(nil, serverTLS, clientTLS),
		HTTPClient:        mastersClient(clientTLS),
		APIScheme:         "https",
		GossipKeys:        gossipKeys,
		KeyringFile:       filepath.Join(o.dataDir, "tls", "gossip.json"),
		Seal:              sealer,
		PreBootstrap:      preBootstrap(creds, token, names, o.name, log),
	})
	if err != nil {
		return err
	}
	health = &gossipHealth{node: node, changes: node.MembershipChanges()}

	// The API port comes up before the node joins: followers forward writes
	// and read-index requests to the leader's API port, a new cluster's
	// servers hand out its keys there, and operators need it while the
	// cluster is still forming. Until this server has the cluster's keys,
	// only those are served.
	joinHandler := join.NewHandler(creds, token, node, log.With("component", "join"))
	early := http.NewServeMux()
	early.Handle("/flotilla/v1/join/", joinHandler)
	early.Handle("/internal/", requireServerCert(node.Handler()))
	early.HandleFunc("/", notReady)
	handler := &switchHandler{fallback: early}
	tlsCfg, err := newAPITLS(creds)
	if err != nil {
		_ = node.Shutdown(context.Background())
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(o.bind, strconv.Itoa(o.apiPort)))
	if err != nil {
		_ = node.Shutdown(context.Background())
		return fmt.Errorf("api listener: %w", err)
	}
	srv := &http.Server{
		Handler:           handler,
		TLSConfig:         tlsCfg.config(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ServeTLS(ln, "", "") }()

	if err := node.Start(ctx); err != nil {
		_ = srv.Close()
		_ = node.Shutdown(context.Background())
		return err
	}
	fetchCtx, stopFetch := context.WithCancel(ctx)
	defer stopFetch()
	go fetchCreds(fetchCtx, creds, token, names, o.name, node.Members, log)
	if !creds.Ready() {
		log.Info("waiting for the cluster's keys")
		if err := waitCreds(ctx, creds); err != nil {
			_ = srv.Close()
			_ = node.Shutdown(context.Background())
			return err
		}
	}
	stopFetch()

	// The cluster's keys are here: the API proper.
	bundle := creds.Bundle()
	live, err := seal.Open(filepath.Join(o.dataDir, "tls", "secrets.json"))
	if err != nil {
		_ = srv.Close()
		_ = node.Shutdown(context.Background())
		return fmt.Errorf("secrets encryption keys: %w", err)
	}
	sealer.set(live)
	saKey, err := satoken.ParseKey(bundle.SAKey)
	if err != nil {
		_ = srv.Close()
		_ = node.Shutdown(context.Background())
		return fmt.Errorf("service account key: %w", err)
	}
	authn, err := newServerAuth(ctx, node, bundle, saKey, o.auditLog, log)
	if err != nil {
		_ = srv.Close()
		_ = node.Shutdown(context.Background())
		return err
	}
	_, agentTLS := pki.MutualTLS(creds, pki.OrgNodes)
	apiServer, err = api.New(api.Config{
		Cluster:           node,
		Logger:            log,
		Registerer:        reg,
		Gatherer:          reg,
		APIPort:           o.apiPort,
		Middleware:        authn.Middleware,
		Authorizer:        authn,
		Seal:              live,
		ServiceAccountKey: saKey,
		RootCA:            creds.CAPEM(),
		AgentTLS:          agentTLS,
		Ready: func() error {
			if id, _ := node.Leader(); id == "" {
				return cluster.ErrNoLeader
			}
			return nil
		},
	})
	if err != nil {
		_ = srv.Close()
		_ = node.Shutdown(context.Background())
		return err
	}
	close(apiReady)
	handler.set(serverMux(node, apiServer, authn.Middleware, joinHandler, join.NewTokensHandler(creds, node),
		seal.RotateHandler(live, apiServer, sealPeers(node, o.apiPort), mastersClient(clientTLS)), seal.PushHandler(live)))
	// Shutdown waits for handlers, and a watch would otherwise hold it for
	// its whole timeout: end the streams so clients re-watch elsewhere.
	srv.RegisterOnShutdown(apiServer.CloseWatches)

	kcAddr := net.JoinHostPort(o.bind, strconv.Itoa(o.apiPort))
	if o.advertise != "" {
		kcAddr = net.JoinHostPort(o.advertise, strconv.Itoa(o.apiPort))
	} else if ip := net.ParseIP(o.bind); ip == nil || ip.IsUnspecified() {
		kcAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(o.apiPort))
	}
	kc, err := writeKubeconfig(o.dataDir, kcAddr, creds.CAPEM(), bundle.AdminToken)
	if err != nil {
		log.Warn("no kubeconfig written", "err", err)
	}
	log.Info("server started", "name", o.name, "api", "https://"+ln.Addr().String(), "data_dir", o.dataDir, "kubeconfig", kc, "ca_hash", creds.CAHash())

	agentErr := make(chan error, 1)
	actx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	if o.agent {
		nc, err := localNodeCreds(creds, o.name, net.ParseIP(nodeIP))
		if err != nil {
			return fmt.Errorf("agent credentials: %w", err)
		}
		// The agent shares this server's gossip membership (one member per
		// process, so the Node's health is this member's) and tries the
		// local API first.
		go func() {
			agentErr <- runAgent(actx, &o.agentFlags, agentSetup{
				nodeName: o.name,
				dataDir:  o.dataDir,
				nodeIP:   nodeIP,
				members:  node.Members,
				servers:  []string{localAPI},
				registry: reg,
				creds:    nc,
			}, log)
		}()
	}

	var runErr error
	agentDone := !o.agent
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-serveErr:
		log.Error("api server stopped", "err", err)
	case err := <-agentErr:
		log.Error("agent stopped", "err", err)
		runErr = fmt.Errorf("agent: %w", err)
		agentDone = true
	}
	// The agent stops first: it leaves its containers running for the
	// next start, and needs nothing of the server to do so.
	stopAgent()
	if !agentDone {
		<-agentErr
	}
	// Stop in reverse: the node first (a leader hands leadership over while
	// the API still answers forwarded writes), then the listener.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nerr := node.Shutdown(sctx)
	_ = srv.Shutdown(sctx)
	return errors.Join(runErr, nerr)
}

// serverMux routes the API port: the join exchange (its own proof), the
// masters' internal endpoints (server certificates only), operator, token
// and key endpoints (authenticated and authorized like the API: admins),
// and the Kubernetes API, whose own middleware authenticates.
func serverMux(node *cluster.Node, apiServer *api.Server, authn func(http.Handler) http.Handler,
	joinH, tokensH, sealRotate, sealPush http.Handler) http.Handler {
	mux := http.NewServeMux()
	nh := node.Handler()
	mux.Handle("/flotilla/v1/join/", joinH)
	mux.Handle("/internal/", requireServerCert(nh))
	mux.Handle("/internal/v1/seal/", requireServerCert(sealPush))
	mux.Handle("/flotilla/", authn(nh))
	mux.Handle("/flotilla/v1/tokens", authn(tokensH))
	mux.Handle("/flotilla/v1/tokens/", authn(tokensH))
	mux.Handle("/flotilla/v1/operator/secrets/", authn(sealRotate))
	mux.Handle("/", apiServer.Handler())
	return mux
}

// gossipHealth is node health as gossip sees it, for the node lifecycle
// controller.
type gossipHealth struct {
	node    *cluster.Node
	changes <-chan struct{}
}

func (g *gossipHealth) Alive(name string) (alive, known bool) { return g.node.MemberAlive(name) }
func (g *gossipHealth) Changes() <-chan struct{}              { return g.changes }

// loopbackFor is the address this process reaches its own API at.
func loopbackFor(bind string) string {
	if ip := net.ParseIP(bind); ip == nil || ip.IsUnspecified() {
		return "127.0.0.1"
	}
	return bind
}

// localClient is a clientset for the leader's own components: this
// server's certificate (group system:masters) over the local API port.
func localClient(addr, dataDir, component string) (kubernetes.Interface, error) {
	tlsDir := filepath.Join(dataDir, "tls")
	cfg := &rest.Config{
		Host:      "https://" + addr,
		UserAgent: "flotilla-" + component,
		QPS:       -1, // the API's in-flight limit protects it, not a client-side bucket
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   filepath.Join(tlsDir, "ca.crt"),
			CertFile: filepath.Join(tlsDir, "server.crt"),
			KeyFile:  filepath.Join(tlsDir, "server.key"),
		},
	}
	return kubernetes.NewForConfig(cfg)
}

// supervised runs fn for the whole term, restarting it with back-off when
// it fails: a leader service that stops early would leave the cluster
// without its scheduler until the next election.
func supervised(log *slog.Logger, name string, fn func(ctx context.Context) error) cluster.LeaderService {
	return cluster.LeaderService{Name: name, Run: func(ctx context.Context) error {
		backoff := 100 * time.Millisecond
		for {
			err := fn(ctx)
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("leader service failed; restarting", "service", name, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}}
}

// retry runs fn until it succeeds or ctx ends.
func retry(ctx context.Context, log *slog.Logger, name string, fn func(ctx context.Context) error) error {
	backoff := 100 * time.Millisecond
	for {
		err := fn(ctx)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		log.Warn("leader task failed; retrying", "task", name, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
