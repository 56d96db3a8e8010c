package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"flotilla/netproxy"
)

// newProxyCommand is `flotilla proxy`: the Service proxy alone, for a
// node whose agent runs with --proxy=false (as kube-proxy runs beside a
// kubelet).
func newProxyCommand(logs *logOptions) *cobra.Command {
	var (
		kubeconfig  string
		nodeName    string
		nodePorts   []string
		metricsBind string
	)
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the Service proxy alone: ClusterIPs on lo and NodePorts, spread over the ready endpoints",
		Long: `Run the Service proxy alone. Every agent runs it already (unless started with
--proxy=false); run this on a node whose agent does not. Without the agent's
gossip membership it learns that a node died from the Node's Ready condition,
which the masters set a few seconds after gossip knows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if nodeName == "" {
				return errors.New("--node-name is required (the hostname could not be read)")
			}
			addrs, err := parseAddrs("--nodeport-addresses", nodePorts)
			if err != nil {
				return err
			}
			if len(addrs) == 0 {
				ip, err := nodeAddress("0.0.0.0", "")
				if err != nil {
					return err
				}
				addrs = []netip.Addr{netip.MustParseAddr(ip).Unmap(), netip.MustParseAddr("127.0.0.1")}
			}
			cs, err := kubeconfigClient(kubeconfig, "flotilla-proxy")
			if err != nil {
				return err
			}
			return runProxy(cmd.Context(), cs, nodeName, addrs, metricsBind, log)
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "path to the kubeconfig (default: $KUBECONFIG, then "+strings.Join(defaultKubeconfigs, ", ")+", then ~/.kube/config)")
	f.StringVar(&nodeName, "node-name", host, "this node's name (for the Local traffic policies)")
	f.StringSliceVar(&nodePorts, "nodeport-addresses", nil, "addresses NodePorts listen on (default: the first non-loopback IPv4 address and 127.0.0.1)")
	f.StringVar(&metricsBind, "metrics-bind", "127.0.0.1:10249", "address serving /metrics and /proxy/frontends; empty: none")
	return cmd
}

func runProxy(ctx context.Context, cs kubernetes.Interface, nodeName string, addrs []netip.Addr, metricsBind string, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ready := newNodeReadiness(cs)
	p, err := netproxy.New(netproxy.Config{
		Client:            cs,
		NodeName:          nodeName,
		NodePortAddresses: addrs,
		NodeAlive:         ready.alive,
		Registerer:        reg,
		Logger:            log,
	})
	if err != nil {
		return err
	}
	if metricsBind != "" {
		// Plain HTTP, as kube-proxy's metrics port: said out loud when it
		// is reachable from elsewhere than this machine.
		if host, _, err := net.SplitHostPort(metricsBind); err == nil {
			if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
				log.Warn("serving /metrics and /proxy/frontends in plain HTTP beyond loopback", "metrics_bind", metricsBind)
			}
		}
		ln, err := net.Listen("tcp", metricsBind)
		if err != nil {
			return fmt.Errorf("--metrics-bind: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /proxy/frontends", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(p.Frontends())
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	go ready.run(ctx)
	return p.Run(ctx)
}

// nodeReadiness is the standalone proxy's stand-in for gossip: a node
// whose Ready condition is not True has its endpoints skipped.
type nodeReadiness struct {
	inf cache.SharedIndexInformer

	mu       sync.RWMutex
	notReady map[string]bool
}

func newNodeReadiness(cs kubernetes.Interface) *nodeReadiness {
	r := &nodeReadiness{notReady: map[string]bool{}}
	r.inf = informers.NewSharedInformerFactory(cs, 0).Core().V1().Nodes().Informer()
	set := func(obj any) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				ready = c.Status == corev1.ConditionTrue
			}
		}
		r.mu.Lock()
		r.notReady[n.Name] = !ready
		r.mu.Unlock()
	}
	_, _ = r.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, cur any) { set(cur) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				r.mu.Lock()
				delete(r.notReady, n.Name)
				r.mu.Unlock()
			}
		},
	})
	return r
}

func (r *nodeReadiness) run(ctx context.Context) { r.inf.Run(ctx.Done()) }

func (r *nodeReadiness) alive(node string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return !r.notReady[node]
}
