// Package netproxy is the Service proxy every agent runs: ClusterIP and
// NodePort listeners that spread TCP and UDP traffic over ready endpoints. It
// watches Services and Endpoints through client-go and nothing else (issue 6
// builds it).
package netproxy
