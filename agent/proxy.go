package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"flotilla/agent/gossip"
	"flotilla/netproxy"
)

// livenessInterval is how often the proxy's view of dead nodes is
// refreshed from gossip: well under the second a dead node's endpoints
// may go on being chosen after memberlist declared it dead.
const livenessInterval = 200 * time.Millisecond

// startProxy starts the Service proxy beside the pods. It fails only on a
// configuration the proxy cannot run with; later errors are the proxy's
// to retry.
func (a *Agent) startProxy(ctx context.Context, wg *sync.WaitGroup, errp *error) error {
	live := gossip.NewLiveness(a.cfg.Members)
	p, err := netproxy.New(netproxy.Config{
		Client:            a.client,
		NodeName:          a.cfg.NodeName,
		NodePortAddresses: a.cfg.NodePortAddresses,
		NodeAlive:         live.Alive,
		Registerer:        a.cfg.Registry,
		Logger:            a.cfg.Logger,
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.proxy = p
	a.mu.Unlock()
	wg.Add(2)
	go func() { defer wg.Done(); live.Run(ctx, livenessInterval) }()
	go func() { defer wg.Done(); *errp = p.Run(ctx) }()
	return nil
}

// extraRoutes are the agent endpoint's routes beyond the kubelet-style
// ones: metrics, and what the proxy serves now (for people debugging a
// Service).
func (a *Agent) extraRoutes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /metrics": promhttp.HandlerFor(a.cfg.Registry, promhttp.HandlerOpts{}),
		"GET /proxy/frontends": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			a.mu.Lock()
			p := a.proxy
			a.mu.Unlock()
			fes := []netproxy.FrontendStatus{}
			if p != nil {
				fes = p.Frontends()
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(fes)
		}),
	}
}
