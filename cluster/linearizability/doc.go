// Package linearizability checks that the cluster's key/value operations
// are linearizable: concurrent clients put, get and compare-and-swap a few
// keys on an in-process three-master cluster while a nemesis kills,
// isolates and pauses masters (through cluster/faultnet), and
// github.com/anishathalye/porcupine checks the recorded history against a
// sequential model. The package holds the model and the history recorder;
// the tests are the point.
//
// The model (Model) is a map of independent keys, partitioned by key. Each
// key is a register of (value, ModRevision):
//
//   - get returns the value and ModRevision;
//   - put sets the value; the ModRevision it returns must be above the
//     key's current one (revisions are Raft indexes and only grow);
//   - cas sets the value only if ModRevision equals the expected one (0 for
//     an absent key); when it fails, the store reports the key as it found
//     it, which the model checks like a read.
//
// Every written value is unique, so a read names the write it saw.
//
// Unknown outcomes. A write that timed out, lost its connection after
// sending, or returned cluster.ErrOutcomeUnknown stays in the history with
// Return = Infinity: porcupine may linearize it anywhere after its call,
// including after everything else, which is the same as never applying it.
// Its revision is unknown, so the model keeps only a lower bound for the
// key's revision until a read sees the value and pins it. A write that
// certainly failed (ErrNoLeader or ErrNotLeader: nothing reached the log;
// a validation error) is left out, and so is a failed read: reads have no
// effect.
//
// The tests (package linearizability_test):
//
//   - TestLinearizability: five clients do get / put / cas on four keys,
//     each on a random master (followers forward writes, reads go through
//     ReadIndex), while a nemesis repeatedly crashes (Close), shuts down
//     gracefully, isolates, cuts one link of, or pauses the leader (three
//     times in four) or a random master, sometimes two masters at once,
//     each fault for 50 ms to 1.5 s; killed masters restart from their data
//     dirs. Snapshots are taken every 100 entries so restarts and lagging
//     followers go through snapshot restore. At the end everything heals,
//     every master must answer a linearizable read of every key, and the
//     whole history is checked. make test runs 3 seeds of 8 s;
//     FLOTILLA_SOAK=1 (make soak) runs 50 of 15 s, where one fault in eight
//     lasts 11 s, past the Raft transport's I/O timeout; FLOTILLA_SEED=n runs
//     one seed's schedule again (timing itself does not replay). A failure
//     names the visualization (HTML) and the cluster's log, both kept in
//     the temporary directory; a master whose stop hangs fails the test
//     with a goroutine dump instead of hanging it.
//   - TestStaleReadIsCaught proves the checker can fail: it reads an
//     isolated former leader's local store after the majority committed a
//     newer value, and the checker must call that history illegal, while
//     the same read done through ReadIndex must fail while isolated and be
//     linearizable once healed.
//
// It must not reach into cluster internals: it drives nodes only through
// their exported API and the Network seam, as any client would.
package linearizability
