// Package gossip is an agent's membership in the cluster's memberlist pool:
// it joins through any member's address, advertises the agent role (and the
// cluster ID once a server told it), and reads the servers' API addresses
// from their metadata, so an agent needs one address of any member to find
// every master.
//
// Agents exchange nothing but metadata: health travels in memberlist's own
// probes, which is what the leader's node lifecycle controller watches.
package gossip
