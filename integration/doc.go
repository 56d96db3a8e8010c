// Package integration holds the end-to-end tests and benchmarks: the built
// flotilla binary run as real processes, on loopback addresses or in test
// hosts (network namespaces the tests make), with faults injected by kill -9,
// SIGSTOP/SIGCONT and iptables inside the tests' own namespaces. Everything a
// test creates, it removes, also when it fails.
package integration
