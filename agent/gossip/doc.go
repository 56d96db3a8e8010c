// Package gossip is an agent's membership in the cluster's memberlist pool:
// it joins through any member's address, advertises the agent role (and the
// cluster ID once a server told it), and reads the servers' API addresses
// from their metadata, so an agent needs one address of any member to find
// every master.
//
// Agents exchange nothing but metadata: health travels in memberlist's own
// probes, which is what the leader's node lifecycle controller watches.
//
// Gossip is encrypted with the cluster's keyring (Config.Keys, AES-256-GCM,
// nothing accepted or sent in the clear), and the metadata advertises the
// installed keys' fingerprints (cluster.MetaKeys), which is what the
// leader's key rotation waits on before each step. Agents cannot read the
// servers' store, so whoever runs the pool polls the keyring over the API
// and calls Pool.SetKeys; SetKeys applies keys in the order that never cuts
// a live member off (add, switch primary, remove). An agent that missed a
// rotation is cut off until its poll brings the new keys; then the reconnect
// loop (cluster.Reconnect) calls the members it saw die, and it is back.
// One restarted with keys nobody accepts any more would never join: Start
// asks Config.FetchKeys for the current keys between join attempts.
package gossip
