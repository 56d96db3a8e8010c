package cluster_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla/cluster"
	"flotilla/cluster/clustertest"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newTestCluster(t, 1, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
		cfg.Registerer = reg
	}})
	s := c.Server(0)
	mustPut(t, s.Node, "/test/m", "x")
	if err := s.Node.ReadIndex(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			v := m.GetGauge().GetValue()
			if h := m.GetHistogram(); h != nil {
				v = float64(h.GetSampleCount())
			}
			labels := ""
			for _, l := range m.GetLabel() {
				labels += "," + l.GetName() + "=" + l.GetValue()
			}
			got[f.GetName()+labels] += v
		}
	}
	for name, min := range map[string]float64{
		"flotilla_raft_state,state=leader":                       1,
		"flotilla_raft_commit_index":                             1,
		"flotilla_raft_applied_index":                            1,
		"flotilla_store_keys":                                    1,
		"flotilla_gossip_members,role=server,status=alive":       1,
		"flotilla_raft_apply_duration_seconds,result=ok":         1,
		"flotilla_cluster_read_index_duration_seconds,result=ok": 1,
	} {
		if got[name] < min {
			t.Errorf("%s = %v, want ≥ %v (have %v)", name, got[name], min, got)
		}
	}
	// A restarted server registers again after Shutdown unregistered.
	c.Stop(0)
	c.Restart(0)
}
