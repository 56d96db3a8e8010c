// Package faultnet is a fault-injecting network for in-process cluster
// tests: an implementation of cluster.Network over real loopback TCP whose
// links can be cut, whose hosts can be frozen, and whose writes can be
// slowed.
//
// Each master gets a *Host from one *Network. A Host owns one loopback
// address (127.77.N.K, its own per host, so the address a connection comes
// from says which host dialled it); it listens and dials only from that
// address, and wraps every listener and connection so the faults below
// apply to them:
//
//   - Isolate cuts the links between a host and some peers (or all peers
//     and everything outside the Network). A cut link is a black hole, in
//     both directions: new dials across it are refused at once (as if an
//     ICMP unreachable came back), and existing connections stall: nothing
//     is delivered across the link until it heals. Reads block until the
//     heal, the conn's read deadline, or Close; writes go into the socket
//     buffers until they fill, then block, as TCP sending into a black
//     hole does. Bytes written are not lost: they arrive after the heal, as
//     TCP would retransmit them. Heal restores the links.
//   - Pause freezes a host as the other hosts see a SIGSTOPped process: its
//     listeners accept nothing, its dials wait, reads and writes on all its
//     connections block until Resume. Only the network is frozen: goroutines
//     and timers inside the paused node keep running (a real SIGSTOP would
//     stop them too), so a paused leader still notices it lost contact with
//     its followers and steps down on time, where a stopped process would
//     notice only after SIGCONT.
//   - SetLatency delays every write of the host by a fixed time (the writer
//     waits, so it also serialises a connection's writes, like a slow link).
//   - Crash closes every connection of the host at once and refuses every
//     dial to or from it until Restart, as for a machine whose process
//     died; CloseConns only closes the connections.
//
// Gossip (memberlist) binds its own sockets and does not go through
// cluster.Network, so faults here do not reach it: an isolated master still
// looks alive to gossip. That is intended; Raft and write forwarding are
// what the tests break.
//
// faultnet must not be used outside tests. It does not simulate packet loss
// or reordering inside a connection: TCP guarantees neither happens.
package faultnet
