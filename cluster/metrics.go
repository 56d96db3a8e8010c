package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are this node's Prometheus metrics. Gauges are read live at
// scrape time by nodeCollector; only latencies and counters are recorded
// as things happen. A nil *metrics (no Registerer) records nothing.
type metrics struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector

	applyDuration     *prometheus.HistogramVec
	forwardDuration   *prometheus.HistogramVec
	readIndexDuration *prometheus.HistogramVec
}

func newMetrics(n *Node, reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	buckets := prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5ms .. 16s
	m := &metrics{
		reg: reg,
		applyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flotilla_raft_apply_duration_seconds",
			Help:    "Time from raft.Apply on the leader to the store's result.",
			Buckets: buckets,
		}, []string{"result"}),
		forwardDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flotilla_cluster_forward_duration_seconds",
			Help:    "Time to forward a write to the leader and get its result.",
			Buckets: buckets,
		}, []string{"result"}),
		readIndexDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "flotilla_cluster_read_index_duration_seconds",
			Help:    "Time for a linearizable read barrier (ReadIndex).",
			Buckets: buckets,
		}, []string{"result"}),
	}
	m.collectors = []prometheus.Collector{m.applyDuration, m.forwardDuration, m.readIndexDuration, newNodeCollector(n)}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) unregister() {
	if m == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

func resultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrOutcomeUnknown):
		return "unknown"
	default:
		return "error"
	}
}

func (m *metrics) observeApply(d time.Duration, err error) {
	if m != nil {
		m.applyDuration.WithLabelValues(resultLabel(err)).Observe(d.Seconds())
	}
}

func (m *metrics) observeForward(d time.Duration, err error) {
	if m != nil {
		m.forwardDuration.WithLabelValues(resultLabel(err)).Observe(d.Seconds())
	}
}

func (m *metrics) observeReadIndex(d time.Duration, err error) {
	if m != nil {
		m.readIndexDuration.WithLabelValues(resultLabel(err)).Observe(d.Seconds())
	}
}

// nodeCollector reads raft, store and gossip state at scrape time.
type nodeCollector struct {
	n *Node

	state, term, commit, applied, last, lastContact *prometheus.Desc
	snapshotIndex                                   *prometheus.Desc
	keys, watchers, history, revision               *prometheus.Desc
	members                                         *prometheus.Desc
}

func newNodeCollector(n *Node) *nodeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &nodeCollector{
		n:             n,
		state:         d("flotilla_raft_state", "1 for this server's current Raft state.", "state"),
		term:          d("flotilla_raft_term", "Current Raft term."),
		commit:        d("flotilla_raft_commit_index", "Raft commit index."),
		applied:       d("flotilla_raft_applied_index", "Last Raft index handed to the store."),
		last:          d("flotilla_raft_last_index", "Last Raft log index."),
		lastContact:   d("flotilla_raft_last_contact_seconds", "Seconds since a follower last heard from the leader (0 on the leader)."),
		snapshotIndex: d("flotilla_raft_last_snapshot_index", "Index of the latest snapshot."),
		keys:          d("flotilla_store_keys", "Keys in the store."),
		watchers:      d("flotilla_store_watchers", "Active store watchers."),
		history:       d("flotilla_store_history_events", "Events in the watch history."),
		revision:      d("flotilla_store_revision", "Store revision (Raft index of the last applied command)."),
		members:       d("flotilla_gossip_members", "Gossip members by role and status.", "role", "status"),
	}
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.term, c.commit, c.applied, c.last, c.lastContact,
		c.snapshotIndex, c.keys, c.watchers, c.history, c.revision, c.members} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := c.n
	if r := n.raftPtr.Load(); r != nil && !n.closing.Load() {
		cur := r.State()
		for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
			v := 0.0
			if s == cur {
				v = 1
			}
			gauge(c.state, v, strings.ToLower(s.String()))
		}
		gauge(c.term, float64(r.CurrentTerm()))
		gauge(c.commit, float64(r.CommitIndex()))
		gauge(c.applied, float64(r.AppliedIndex()))
		gauge(c.last, float64(r.LastIndex()))
		if cur == raft.Leader {
			gauge(c.lastContact, 0)
		} else if lc := r.LastContact(); !lc.IsZero() {
			gauge(c.lastContact, time.Since(lc).Seconds())
		}
		if list, err := n.st.snaps.List(); err == nil && len(list) > 0 {
			gauge(c.snapshotIndex, float64(list[0].Index))
		}
	}
	st := n.store.Stats()
	gauge(c.keys, float64(st.Keys))
	gauge(c.watchers, float64(st.Watchers))
	gauge(c.history, float64(st.History))
	gauge(c.revision, float64(n.store.Revision()))
	counts := map[[2]string]int{}
	for _, m := range n.gossip.list("") {
		counts[[2]string{m.Role, m.Status}]++
	}
	for k, v := range counts {
		gauge(c.members, float64(v), k[0], k[1])
	}
}
