package cluster

import (
	"errors"
	"fmt"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

// Errors callers map (api: ErrNotLeader/ErrNoLeader → 503, ErrOutcomeUnknown → 504).
var (
	// ErrNotLeader: this node is not the leader and the operation needs the leader.
	ErrNotLeader = errors.New("not the leader")
	// ErrNoLeader: no leader is known (election in progress or no quorum).
	ErrNoLeader = errors.New("no leader")
	// ErrOutcomeUnknown: the write may or may not have been committed
	// (raft.ErrLeadershipLost, a forwarding connection lost after sending).
	ErrOutcomeUnknown = errors.New("outcome unknown")
	// ErrShutdown: the node is shutting down.
	ErrShutdown = errors.New("node is shutting down")
	// ErrNotStarted: the node was created but Start has not run yet.
	ErrNotStarted = errors.New("node not started")
	// ErrClusterIDMismatch: Start met members of another cluster (the
	// message names both cluster IDs).
	ErrClusterIDMismatch = errors.New("cluster ID mismatch")
	// ErrUnknownPeer: the server ID is not in the Raft configuration.
	ErrUnknownPeer = errors.New("no such server in the raft configuration")
)

// errRetry marks an error after which the operation certainly did not take
// effect, so it may be retried, typically on a new leader.
type errRetry struct{ err error }

func (e *errRetry) Error() string { return e.err.Error() }
func (e *errRetry) Unwrap() error { return e.err }

func retryable(err error) bool {
	var r *errRetry
	return errors.As(err, &r)
}

// mapRaftError turns raft's errors into this package's, keeping the raft
// error in the chain. Not-leader errors are retryable: raft rejected the
// request before it reached the log.
func mapRaftError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return &errRetry{fmt.Errorf("%w: %w", ErrNotLeader, err)}
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		// The entry may have been appended before raft stopped.
		return fmt.Errorf("%w (%w): %w", ErrShutdown, ErrOutcomeUnknown, err)
	default:
		return err
	}
}

// Error codes carried in JSON error bodies between masters, so a forwarded
// error comes back as the same sentinel.
const (
	codeNotLeader      = "not_leader"
	codeNoLeader       = "no_leader"
	codeOutcomeUnknown = "outcome_unknown"
	codeShutdown       = "shutdown"
	codeInvalidTxn     = "invalid_txn"
	codeTxnTooLarge    = "txn_too_large"
	codeValueTooLarge  = "value_too_large"
	codeUnknownPeer    = "unknown_peer"
	codeBadRequest     = "bad_request"
	codeInternal       = "internal"
)

// errorCode classifies err for the wire. ErrOutcomeUnknown comes first: it
// must never be mistaken for a retryable error.
func errorCode(err error) (code string, status int) {
	switch {
	case errors.Is(err, ErrOutcomeUnknown):
		return codeOutcomeUnknown, 504
	case errors.Is(err, ErrNotLeader):
		return codeNotLeader, 503
	case errors.Is(err, ErrNoLeader):
		return codeNoLeader, 503
	case errors.Is(err, ErrShutdown), errors.Is(err, ErrNotStarted):
		return codeShutdown, 503
	case errors.Is(err, fsm.ErrInvalidTxn):
		return codeInvalidTxn, 400
	case errors.Is(err, fsm.ErrTxnTooLarge):
		return codeTxnTooLarge, 413
	case errors.Is(err, fsm.ErrValueTooLarge):
		return codeValueTooLarge, 413
	case errors.Is(err, ErrUnknownPeer):
		return codeUnknownPeer, 404
	case errors.Is(err, errBadRequest):
		return codeBadRequest, 400
	default:
		return codeInternal, 500
	}
}

var errBadRequest = errors.New("bad request")

// errorFromCode rebuilds the sentinel chain of an error a peer sent.
func errorFromCode(code, msg string) error {
	var base error
	switch code {
	case codeOutcomeUnknown:
		base = ErrOutcomeUnknown
	case codeNotLeader:
		return &errRetry{fmt.Errorf("%w: peer: %s", ErrNotLeader, msg)}
	case codeNoLeader:
		return &errRetry{fmt.Errorf("%w: peer: %s", ErrNoLeader, msg)}
	case codeShutdown:
		// The peer refused before doing anything (an in-flight write caught by
		// shutdown is reported as outcome_unknown).
		return &errRetry{fmt.Errorf("%w: peer: %s", ErrNotLeader, msg)}
	case codeInvalidTxn:
		base = fsm.ErrInvalidTxn
	case codeTxnTooLarge:
		base = fsm.ErrTxnTooLarge
	case codeValueTooLarge:
		base = fsm.ErrValueTooLarge
	case codeUnknownPeer:
		base = ErrUnknownPeer
	case codeBadRequest:
		base = errBadRequest
	default:
		return fmt.Errorf("leader: %s", msg)
	}
	return fmt.Errorf("%w (from leader: %s)", base, msg)
}
