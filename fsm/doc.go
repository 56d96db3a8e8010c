// Package fsm is Flotilla's state store and the Raft state machine: a
// revisioned key/value store in the manner of etcd, replicated by applying
// the same committed log on every master.
//
// What it owns:
//
//   - the command encoding (one CommandType byte, then the payload; new
//     types only at the end; the high bit SkipIfUnknown lets an older
//     server skip a newer command during a rolling upgrade);
//   - Apply of the one write command, a transaction: compares on existence
//     or ModRevision, then puts and deletes, all or nothing, at the Raft
//     index of its entry (CreateRevision/ModRevision = that index);
//   - reads: Get, prefix List (paginated, each page walk on a copy-on-write
//     clone of the tree taken at one revision), Count;
//   - Watch: replay from a bounded, local event history, then live, in
//     revision order with no gaps or duplicates;
//   - Snapshot/Restore (a streamed, checksummed record per key), the expiry
//     index, Hash and Stats.
//
// What it must not do:
//
//   - know about pods or any Kubernetes type: keys are strings
//     (/<group>/<resource>/<namespace>/<name> by convention of the api
//     package), values are opaque bytes;
//   - import any other Flotilla package;
//   - make Apply depend on anything but the log: no clock, no randomness, no
//     I/O, no limit checks (Txn.Validate runs before raft.Apply, because
//     limits may change between versions while committed entries must apply
//     the same way forever). The one clock read on the apply path stamps the
//     local watch history for age trimming (Config.Now); it never reaches
//     replicated state. Expired keys are not deleted by Apply: the leader
//     reads Expired and commits deletes;
//   - let a reader or watcher slow Apply: reads hold the lock only for a
//     point lookup or an O(1) clone, and watchers read the history without
//     the lock.
//
// Decisions worth knowing:
//
//   - Every entry handed to Apply/ApplyBatch advances Revision to its index,
//     including failed transactions, skipped commands and configuration
//     entries. Raft does not hand LogNoop/LogBarrier entries to the FSM, so
//     Revision can be below raft's AppliedIndex; wait for the index of an
//     entry you know reached the FSM.
//   - A failed transaction reports Revision = its own index (what Revision()
//     says after it; the data there is the data before it).
//   - A corrupt entry of a known type, an unknown type without the high bit,
//     or an index that does not increase panics with the index: a replica
//     that cannot apply the log must stop, not diverge.
//   - Values are stored once: history events point at the same *KeyValue as
//     the tree. Values handed out are shared and must not be modified.
//   - WatcherBuffer counts, per watcher, events that matched its prefix and
//     are not yet taken from Events(). A watcher whose goroutine stays more
//     than HistoryMaxEvents+WatcherBuffer events behind the head is closed
//     too (it would otherwise pin old history in memory).
//
// See README.md for the pipeline.
package fsm
