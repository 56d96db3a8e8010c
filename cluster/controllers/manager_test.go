package controllers

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"flotilla/api/apitest"
)

func TestManagerStopsAndANewOnePicksUp(t *testing.T) {
	creates := &requestCounter{method: http.MethodPost, fragment: "/pods"}
	srv := apitest.NewServer(t, apitest.Options{Wrap: creates.wrap})
	e := &env{t: t, srv: srv, client: srv.Client, ctx: context.Background()}
	startKubelet(t, e.client, kubeletOpts{})
	cfg := Config{NodeHealth: newFakeHealth("node-1"), Workers: 2, PodGCPeriod: 100 * time.Millisecond}

	// Every controller runs, then the context ends: Run must return.
	stop := e.startManager(cfg)
	e.createDeployment(newDeployment("web", 3, "nginx:1"))
	e.waitRolledOut("web")

	// Lose leadership in the middle of a rollout.
	e.setImage("web", "nginx:2")
	waitFor(t, 10*time.Second, "rollout under way", func() (bool, error) {
		rs, ok := rsByRevision(e.replicaSets("web"))["2"]
		return ok && rs.Status.Replicas > 0, nil
	})
	start := time.Now()
	stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	stop = e.startManager(cfg)
	e.waitRolledOut("web")
	stop()

	// Changes made while no leader runs are picked up by the next one.
	e.setImage("web", "nginx:3")
	e.startManager(cfg)
	e.waitRolledOut("web")
	if n := len(e.activePods("default", "app=web")); n != 3 {
		t.Errorf("pods = %d, want 3", n)
	}
	byRev := rsByRevision(e.replicaSets("web"))
	if len(byRev) != 3 || *byRev["3"].Spec.Replicas != 3 || *byRev["2"].Spec.Replicas != 0 {
		t.Errorf("replicasets: %v", byRev)
	}
	// 3 pods per revision: none created twice across the leader changes.
	if n := creates.count.Load(); n != 9 {
		t.Errorf("pod creates = %d, want 9", n)
	}
}

func TestManagerConfigErrors(t *testing.T) {
	srv := apitest.NewServer(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no client", Config{}, "Client is required"},
		{"unknown controller", Config{Client: srv.Client, Controllers: []string{"cronjob"}}, "unknown controller"},
		{"bad cidr", Config{Client: srv.Client, ClusterCIDR: "10.0.0.0"}, "not an IPv4 CIDR"},
		{"mask too small", Config{Client: srv.Client, ClusterCIDR: "10.0.0.0/16", NodeCIDRMaskSize: 8}, "does not fit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := NewManager(tc.cfg).Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
