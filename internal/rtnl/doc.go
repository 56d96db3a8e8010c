// Package rtnl is the little rtnetlink Flotilla speaks: one request with
// its ack, route attributes, and the addresses of an interface. The agent's
// pod network (routes) and the Service proxy (ClusterIPs on lo) both need
// it; neither wants a netlink library or the iproute2 binary at run time.
//
// Sockets are opened by the calling goroutine, so a request acts in the
// network namespace of the thread it runs on.
package rtnl
