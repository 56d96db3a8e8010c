// Package netproxy is the Service proxy every agent runs (and `flotilla
// proxy` runs alone): a userspace proxy in the manner of kube-proxy's old
// userspace mode, because this kernel has no dummy interface for IPVS and
// a userspace proxy can consult gossip on every connection.
//
// The control plane (proxy.go, desired.go) watches Services and Endpoints
// through client-go informers and turns each Service into frontends: one
// per ClusterIP:port, the ClusterIP added as a host address on lo, and
// one per node address:nodePort. It applies the traffic policies and
// hands each frontend its endpoints. The data plane (frontend.go, tcp.go,
// udp.go) listens, picks an endpoint per connection or UDP flow (round
// robin, ClientIP affinity, endpoints on nodes gossip reports dead
// skipped, a failed dial moving on to the next), copies bytes, and drains
// connections to endpoints that left. types.go is the contract between
// the two halves.
package netproxy
