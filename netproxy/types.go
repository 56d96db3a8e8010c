package netproxy

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The contract between the control plane (proxy.go: informers, desired
// state, addresses on lo) and the data plane (frontend.go, tcp.go, udp.go:
// listeners, endpoint choice, copying). The control plane decides which
// frontends exist and which endpoints each may use; the data plane never
// looks at an API object.

// ServicePortName names one port of one Service, for logs and metric
// labels ("ns/name" and the port's name).
type ServicePortName struct {
	types.NamespacedName
	Port string
}

func (s ServicePortName) String() string {
	if s.Port == "" {
		return s.NamespacedName.String()
	}
	return fmt.Sprintf("%s:%s", s.NamespacedName, s.Port)
}

// Endpoint is one ready backend of a Service port.
type Endpoint struct {
	Addr netip.AddrPort
	// Node is the endpoint's nodeName, "" when the Endpoints do not say.
	// An endpoint on a node that gossip reports dead is skipped.
	Node string
}

// BackendSet is what one frontend spreads its traffic over. The control
// plane has already applied the traffic policies; the data plane applies
// node health, round robin and affinity.
type BackendSet struct {
	Endpoints []Endpoint
	// AffinityTimeout > 0 turns on ClientIP session affinity: a client IP
	// keeps its endpoint while that endpoint stays in the set and the
	// client was seen within the timeout.
	AffinityTimeout time.Duration
}

// frontendSpec is where a frontend listens and what for.
type frontendSpec struct {
	Service ServicePortName
	// Addr is ClusterIP:port, or a node address:nodePort.
	Addr netip.AddrPort
	// Protocol is TCP or UDP (the control plane skips the others).
	Protocol corev1.Protocol
	// NodePort says which of the two kinds it is (a metric label).
	NodePort bool
}

// dataplaneOptions are shared by every frontend of one Proxy.
type dataplaneOptions struct {
	// NodeAlive reports whether gossip believes a node alive; nil means
	// every node is. Called on every endpoint choice: it must be cheap.
	NodeAlive func(node string) bool
	// DialTimeout bounds one connection attempt to one endpoint; a failed
	// attempt moves on to the next endpoint.
	DialTimeout time.Duration
	// DrainTimeout is how long connections to an endpoint that left the
	// set (or of a frontend that closed) may go on before they are closed.
	DrainTimeout time.Duration
	// UDPIdleTimeout ends a UDP flow that carried nothing for that long.
	UDPIdleTimeout time.Duration
	Metrics        *Metrics
	Logger         *slog.Logger
}

// frontend is one listener (TCP) or socket (UDP) of one Service port.
type frontend interface {
	// Update swaps the backend set in; connections to endpoints still in
	// the set are untouched.
	Update(BackendSet)
	// Backends is the set in use now.
	Backends() BackendSet
	// Close stops listening at once; open connections and flows drain for
	// DrainTimeout, then are closed. It does not wait for the drain.
	Close()
}
