package api

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"flotilla/internal/httprec"
)

var schemaGRNone = schema.GroupResource{}

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	watches  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "flotilla", Subsystem: "apiserver", Name: "request_total",
			Help: "API requests by verb, resource, subresource and HTTP code.",
		}, []string{"verb", "resource", "subresource", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "flotilla", Subsystem: "apiserver", Name: "request_duration_seconds",
			Help:    "API request latency by verb and resource (watches excluded).",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"verb", "resource", "subresource"}),
		watches: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "flotilla", Subsystem: "apiserver", Name: "watches_open",
			Help: "Open watch streams by resource.",
		}, []string{"resource"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.latency, m.watches} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// reqInfo is filled by the handlers so that the metrics middleware around
// them can label the request.
type reqInfo struct {
	verb, resource, subresource string
}

type reqInfoKey struct{}

func infoFrom(ctx context.Context) *reqInfo {
	if ri, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		return ri
	}
	return &reqInfo{}
}

func (s *Server) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &reqInfo{}
		rec := &httprec.Recorder{ResponseWriter: w}
		h.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri)))
		verb := ri.verb
		if verb == "" {
			verb = "other"
		}
		code := rec.Code
		if code == 0 {
			code = http.StatusOK
		}
		s.metrics.requests.WithLabelValues(verb, ri.resource, ri.subresource, strconv.Itoa(code)).Inc()
		if verb != "watch" {
			s.metrics.latency.WithLabelValues(verb, ri.resource, ri.subresource).Observe(time.Since(start).Seconds())
		}
	})
}
