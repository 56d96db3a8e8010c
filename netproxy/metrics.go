package netproxy

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Service proxy's Prometheus metrics. Per-Service series
// carry the labels service ("ns/name"), port (the port's name) and
// protocol; a ClusterIP frontend and the NodePort frontends of the same
// port add to the same series.
type Metrics struct {
	connections  *prometheus.CounterVec
	active       *prometheus.GaugeVec
	bytes        *prometheus.CounterVec
	dialFailures *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	syncLatency  prometheus.Histogram
	services     prometheus.Gauge
	endpoints    prometheus.Gauge
}

// NewMetrics makes the proxy's metrics and registers them with reg. With a
// nil reg they are recorded but exported nowhere. A registry that already
// has them (a second proxy in one process) lends its collectors, so both
// add to the same series instead of failing.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	svc := []string{"service", "port", "protocol"}
	m := &Metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_netproxy_connections_total",
			Help: "TCP connections that reached an endpoint, and new UDP flows.",
		}, svc),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flotilla_netproxy_active_connections",
			Help: "Open TCP connections and UDP flows.",
		}, svc),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_netproxy_bytes_total",
			Help: "Bytes copied, by direction (to_endpoint, to_client).",
		}, append(svc, "direction")),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_netproxy_dial_failures_total",
			Help: "Connection attempts to an endpoint that failed (the proxy then tries the next one).",
		}, []string{"service", "port"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flotilla_netproxy_rejected_total",
			Help: "TCP connections reset and UDP datagrams dropped, by reason (no_endpoints, dial_failed).",
		}, append(svc, "reason")),
		syncLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flotilla_netproxy_sync_latency_seconds",
			Help:    "Time from a Service or Endpoints change to its frontends being up to date.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1ms .. 32.8s
		}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_netproxy_services",
			Help: "Services with at least one frontend on this node.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flotilla_netproxy_endpoints",
			Help: "Distinct endpoints over all proxied Services.",
		}),
	}
	if reg != nil {
		m.connections = register(reg, m.connections)
		m.active = register(reg, m.active)
		m.bytes = register(reg, m.bytes)
		m.dialFailures = register(reg, m.dialFailures)
		m.rejected = register(reg, m.rejected)
		m.syncLatency = register(reg, m.syncLatency)
		m.services = register(reg, m.services)
		m.endpoints = register(reg, m.endpoints)
	}
	return m
}

// register registers c, or returns the equal collector reg already has.
// Any other failure (a same-named metric of another shape) leaves c
// unregistered: the proxy must not stop over its metrics.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	return c
}

// ObserveSync records how long a change took to reach the frontends.
func (m *Metrics) ObserveSync(d time.Duration) {
	m.syncLatency.Observe(d.Seconds())
}

// SetCounts sets how many Services and endpoints the proxy serves.
func (m *Metrics) SetCounts(services, endpoints int) {
	m.services.Set(float64(services))
	m.endpoints.Set(float64(endpoints))
}

// Forget removes every series of one Service port, once it has no
// frontend left. Frontends still draining hold their own series handles
// (see frontendMetrics), so they do not bring the series back.
func (m *Metrics) Forget(svc ServicePortName) {
	l := prometheus.Labels{"service": svc.NamespacedName.String(), "port": svc.Port}
	m.connections.DeletePartialMatch(l)
	m.active.DeletePartialMatch(l)
	m.bytes.DeletePartialMatch(l)
	m.dialFailures.DeletePartialMatch(l)
	m.rejected.DeletePartialMatch(l)
}

// frontendMetrics are one frontend's series, looked up once at start: the
// hot path does no label hashing, and after Forget a draining frontend
// counts into series that are no longer exported rather than recreating
// them (an active gauge brought back at -1 would be worse than none).
type frontendMetrics struct {
	connections prometheus.Counter
	active      prometheus.Gauge
	toEndpoint  prometheus.Counter
	toClient    prometheus.Counter
	dialFailed  prometheus.Counter // one attempt failed
	noEndpoints prometheus.Counter // rejected: nothing to try
	allFailed   prometheus.Counter // rejected: every attempt failed
}

func (m *Metrics) forFrontend(spec frontendSpec) *frontendMetrics {
	svc, port, proto := spec.Service.NamespacedName.String(), spec.Service.Port, string(spec.Protocol)
	return &frontendMetrics{
		connections: m.connections.WithLabelValues(svc, port, proto),
		active:      m.active.WithLabelValues(svc, port, proto),
		toEndpoint:  m.bytes.WithLabelValues(svc, port, proto, "to_endpoint"),
		toClient:    m.bytes.WithLabelValues(svc, port, proto, "to_client"),
		dialFailed:  m.dialFailures.WithLabelValues(svc, port),
		noEndpoints: m.rejected.WithLabelValues(svc, port, proto, "no_endpoints"),
		allFailed:   m.rejected.WithLabelValues(svc, port, proto, "dial_failed"),
	}
}
