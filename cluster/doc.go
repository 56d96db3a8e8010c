// Package cluster is one Flotilla master's membership in the control plane:
// the Raft node around the state machine (flotilla/fsm), the gossip member
// that finds the other masters and agents, and the plumbing between them.
//
// It owns:
//
//   - storage: the data dir lock (<data-dir>/LOCK), the Raft log and stable
//     store (<data-dir>/raft/raft.db, raft-boltdb/v2) and the file snapshot
//     store (<data-dir>/raft/snapshots, two kept);
//   - the Raft transport, over a StreamLayer that dials and listens through
//     Config.Network so TLS and tests' fault injection plug in
//     (TLSNetwork: the masters' mutual TLS, tlsnet.go);
//   - gossip (memberlist): member metadata (role, Raft and API addresses,
//     cluster ID, key fingerprints), refusal of members of another cluster,
//     join with retry; encryption with memberlist's AES-256-GCM keyring
//     (Config.GossipKeys) whose source of truth after bootstrap is a sealed
//     record in the store, applied by every master and rotated by the
//     leader without cutting anyone off (keyring.go);
//   - PreBootstrap: the hook a new cluster's servers run once they have all
//     been seen, before Raft bootstraps (they fetch the cluster's keys
//     there: Raft is mutual TLS);
//   - bootstrap (BootstrapExpect) and membership: the leader adds alive
//     servers as voters and removes long-dead ones while quorum stays safe;
//   - writes (Apply) from any master: followers forward to the leader over
//     HTTP(S) (POST /internal/v1/apply);
//   - linearizable reads (ReadIndex), batched so one VerifyLeader serves
//     every waiting caller;
//   - the leadership loop: leader-only services run under a context that
//     ends with the term, exactly one start and one stop per term;
//   - operator endpoints (peers, remove-peer, transfer-leader, snapshot
//     save/restore, members) and Prometheus metrics.
//
// It must not know what a pod is: it moves opaque transactions into Raft
// and leaves their meaning to fsm (storage) and api (types). It never reads
// the clock inside the FSM; the leader stamps times before raft.Apply.
//
// Decisions worth knowing:
//
//   - Cluster ID. The first leader of a new cluster picks a random ID and
//     commits it to the store under ClusterIDKey; every master persists the
//     value it applies to <data-dir>/cluster-id and advertises it in gossip.
//     A member whose metadata names another cluster ID is refused by the
//     alive and merge delegates; a server that already has an ID and meets
//     another cluster while joining fails Start naming both IDs. Members that
//     do not know an ID yet (fresh servers, agents before their first join)
//     are accepted. The file wins over the store: if a snapshot restored from
//     another cluster carries a different ID, the leader writes its own back.
//
//   - Bootstrap. A fresh server (no Raft state) advertises "new" and its
//     BootstrapExpect in gossip. Once it sees at least BootstrapExpect alive
//     fresh servers with the same expectation, and no server that already
//     has Raft state, it bootstraps with all of them sorted by ID; every
//     bootstrapping server computes the same configuration from the same
//     view. Starting more fresh servers with the same expectation than
//     expected at once is an operator error (as with Consul).
//
//   - A server with existing Raft state never bootstraps; if none of its Join
//     addresses answers, Start still succeeds (its Raft configuration knows
//     its peers) and the join is retried in the background. A fresh server
//     whose joins all fail makes Start return an error.
//
//   - Membership. The leader adds every alive server of this cluster that
//     is not a voter (AddVoter; a changed Raft address is updated the same
//     way) and removes a voter gossip has not seen alive for
//     DeadServerCleanup only under the rule on deadServerToRemove: never
//     itself, only while the alive voters are a strict majority before and
//     after, one removal per pass. A removed server (by that rule or by an
//     operator) is added again only once gossip has seen it fail or leave
//     and come back; that memory lives on the leader that removed it.
//     Raft runs with ShutdownOnRemove off, so a removed live server idles
//     as a follower without a vote until it is added back.
//
//   - Reads. raft's AppliedIndex says an entry was handed to the FSM
//     goroutine, not that the store applied it, and no-ops and barriers
//     never reach the store; ReadIndex therefore waits for AppliedIndex and
//     then for the store's revision to reach the last command at or before
//     the read index (see waitApplied).
//
//   - Peers. hashicorp/raft does not expose the leader's view of its
//     followers, so each server's state and last index are its own answer
//     to GET /internal/v1/status; a server that does not answer shows
//     "unknown" (or "leader" if Raft names it) with LastIndex 0.
//
//   - Gossip status reports alive, dead or left; memberlist does not tell
//     its users about suspicion, so "suspect" is not reported.
//
//   - Logging: raft gets an hclog.Logger adapter over the injected slog
//     logger; memberlist gets a standard logger whose "[LEVEL]" prefixes
//     become slog levels (slog.NewLogLogger would log its chatty DEBUG
//     lines at one fixed level).
package cluster
