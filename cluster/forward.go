package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

const (
	// headerForwarded marks a request one master forwarded to the leader;
	// the receiver serves it itself or refuses, never forwards again.
	headerForwarded = "X-Flotilla-Forwarded"
	// maxForwardBody bounds a forwarded transaction (encoding overhead on
	// top of the transaction limit).
	maxForwardBody = fsm.MaxTxnBytes + 1<<20
)

// Apply commits a transaction from any node; a follower forwards it to the
// leader. It validates limits first (fsm.Txn.Validate). A failed compare is
// a result (Succeeded false), not an error. Errors: ErrNoLeader when no
// leader could be reached in time, ErrOutcomeUnknown when the write may
// have been committed, ErrShutdown, or the validation error.
func (n *Node) Apply(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	buf, err := encodeTxn(txn)
	if err != nil {
		return nil, err
	}
	var res *fsm.TxnResult
	err = n.withLeader(ctx,
		func(ctx context.Context, r *raft.Raft) (err error) {
			res, err = n.applyLocal(ctx, r, buf)
			return err
		},
		func(ctx context.Context, addr string) (err error) {
			res, err = n.forwardApply(ctx, addr, buf)
			return err
		})
	return res, err
}

func encodeTxn(txn *fsm.Txn) ([]byte, error) {
	if txn == nil {
		return nil, fmt.Errorf("%w: nil transaction", fsm.ErrInvalidTxn)
	}
	if err := txn.Validate(); err != nil {
		return nil, err
	}
	buf, err := fsm.EncodeTxn(txn)
	if err != nil {
		return nil, fmt.Errorf("encode transaction: %w", err)
	}
	return buf, nil
}

// applyAsLeader applies on this node only if it leads (leader services:
// a deposed leader must not forward its work to the next one).
func (n *Node) applyAsLeader(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	buf, err := encodeTxn(txn)
	if err != nil {
		return nil, err
	}
	r, err := n.raft()
	if err != nil {
		return nil, err
	}
	return n.applyLocal(ctx, r, buf)
}

// withLeader runs local on the leader, or remote with the leader's API
// address on a follower, retrying retryable failures (nothing was done) on
// whichever server leads next. It gives up with ErrNoLeader once no usable
// leader has been found for Timing.leaderWait, or when ctx ends.
func (n *Node) withLeader(ctx context.Context,
	local func(context.Context, *raft.Raft) error,
	remote func(ctx context.Context, apiAddr string) error,
) error {
	var giveUp time.Time
	backoff := 5 * time.Millisecond
	for {
		r, err := n.raft()
		if err != nil {
			return err
		}
		changed := n.leaderChangedCh()
		if r.State() == raft.Leader {
			err = local(ctx, r)
		} else if id, addr := n.Leader(); id == "" {
			err = &errRetry{ErrNoLeader}
		} else if addr == "" {
			err = &errRetry{fmt.Errorf("%w: leader %s has no API address in gossip yet", ErrNoLeader, id)}
		} else {
			err = remote(ctx, addr)
		}
		if err == nil || !retryable(err) {
			return err
		}
		now := time.Now()
		if giveUp.IsZero() {
			giveUp = now.Add(n.cfg.Timing.leaderWait())
		}
		if now.After(giveUp) {
			return fmt.Errorf("%w (last attempt: %v)", ErrNoLeader, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %w (last attempt: %v)", ErrNoLeader, ctx.Err(), err)
		case <-n.ctx.Done():
			t.Stop()
			return ErrShutdown
		}
		t.Stop()
		backoff = min(2*backoff, 100*time.Millisecond)
	}
}

// applyLocal is raft.Apply on this node plus waiting for the result.
func (n *Node) applyLocal(ctx context.Context, r *raft.Raft, buf []byte) (*fsm.TxnResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	f := r.Apply(buf, n.cfg.Timing.ApplyTimeout)
	if ctx.Done() != nil {
		done := make(chan struct{})
		go func() {
			_ = f.Error()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
		}
	}
	res, err := applyResult(f)
	n.metrics.observeApply(time.Since(start), err)
	return res, err
}

// applyResult is the one place that unwraps a raft apply: first the
// future's error (raft's: not leader, leadership lost, ...), then the FSM's
// response (*fsm.TxnResult, or an error value for a domain error).
func applyResult(f raft.ApplyFuture) (*fsm.TxnResult, error) {
	if err := f.Error(); err != nil {
		return nil, mapRaftError(err)
	}
	switch resp := f.Response().(type) {
	case *fsm.TxnResult:
		return resp, nil
	case error:
		return nil, resp
	case nil:
		return nil, errors.New("apply: the store returned no result")
	default:
		return nil, fmt.Errorf("apply: unexpected result %T from the store", resp)
	}
}

// errLeaderChanged is the cause with which forwardApply stops a forward
// whose target is no longer the leader this node sees.
var errLeaderChanged = errors.New("leader changed while the forwarded write was in flight")

// leaderPollInterval is how often a forward in flight rechecks the leader's
// API address, which comes from gossip and has no notification.
const leaderPollInterval = 100 * time.Millisecond

// forwardApply sends an encoded transaction to the leader at addr. A
// failure before the request was fully written is retryable; after it the
// outcome is unknown.
//
// A leader cut off by a partition never answers, so the forward stops once
// this node sees another leader (or none), and in any case after
// forwardTimeout. Unsent, it is retried on the next leader by withLeader;
// sent, it is not: the old leader may have appended the entry and a
// follower that has it may win the election and commit it, and Apply
// takes unconditional transactions, which a retry would apply twice (and a
// compare-and-swap one would fail its compare against its own first
// attempt, misreporting a success as a conflict).
func (n *Node) forwardApply(ctx context.Context, addr string, buf []byte) (*fsm.TxnResult, error) {
	start := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timeout := n.forwardTimeout()
	ctx, cancelTimeout := context.WithTimeoutCause(ctx, timeout,
		fmt.Errorf("%w: no answer from the leader within %s", context.DeadlineExceeded, timeout))
	defer cancelTimeout()
	go n.cancelOnLeaderChange(ctx, addr, cancel)

	var res fsm.TxnResult
	err := n.call(ctx, http.MethodPost, addr, "/internal/v1/apply", bytes.NewReader(buf), &res, true)
	if err != nil && !errors.Is(err, ErrOutcomeUnknown) && errors.Is(err, errLeaderChanged) {
		err = &errRetry{fmt.Errorf("%w: %w", ErrNotLeader, err)}
	}
	n.metrics.observeForward(time.Since(start), err)
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// forwardTimeout bounds waiting for the leader's answer to a forwarded
// write. The leader waits up to ApplyTimeout to enqueue the entry, then
// for the commit, which fails by itself within a lease timeout if it loses
// its quorum; leaderWait on top covers a slow commit under load. Past that
// the leader is unreachable, not slow.
func (n *Node) forwardTimeout() time.Duration {
	return n.cfg.Timing.ApplyTimeout + n.cfg.Timing.leaderWait()
}

// cancelOnLeaderChange cancels a forward to addr with errLeaderChanged once
// the leader this node sees is no longer at addr; it returns when ctx ends.
func (n *Node) cancelOnLeaderChange(ctx context.Context, addr string, cancel context.CancelCauseFunc) {
	t := time.NewTicker(leaderPollInterval)
	defer t.Stop()
	for {
		changed := n.leaderChangedCh()
		if id, cur := n.Leader(); cur != addr {
			if id == "" {
				id = "none"
			}
			cancel(fmt.Errorf("%w (now: %s)", errLeaderChanged, id))
			return
		}
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// call makes one request to another master's endpoint and decodes a JSON
// answer into out (nil = discard). Errors come back as this package's
// sentinels; connection failures are retryable unless write is true and
// the request had been sent (then the outcome is unknown).
func (n *Node) call(ctx context.Context, method, addr, path string, body io.Reader, out any, write bool) error {
	url := n.cfg.APIScheme + "://" + addr + path
	var sent atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(info httptrace.WroteRequestInfo) {
		if info.Err == nil {
			sent.Store(true)
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, url, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	req.Header.Set(headerForwarded, n.cfg.Name)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := n.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			// Why the request was stopped says more than "context canceled".
			err = context.Cause(ctx)
		}
		switch {
		case write && sent.Load():
			return fmt.Errorf("%w: %s %s: %w", ErrOutcomeUnknown, method, url, err)
		case ctx.Err() != nil:
			return fmt.Errorf("%s %s: %w", method, url, err)
		default:
			return &errRetry{fmt.Errorf("%s %s: %w", method, url, err)}
		}
	}
	defer func() {
		// Drain so the connection goes back to the pool.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
	}()
	if resp.StatusCode/100 != 2 {
		return readError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		err = fmt.Errorf("%s %s: read answer: %w", method, url, err)
		if write {
			return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		return err
	}
	return nil
}

// errorBody is every JSON error of the endpoints.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

func readError(resp *http.Response) error {
	var eb errorBody
	buf, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err := json.Unmarshal(buf, &eb); err != nil || eb.Error == "" {
		eb.Error = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(buf))
	}
	if eb.Code == "" {
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			eb.Code = codeNotLeader
		case http.StatusGatewayTimeout:
			eb.Code = codeOutcomeUnknown
		}
	}
	return errorFromCode(eb.Code, eb.Error)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code, status := errorCode(err)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, errorBody{Error: err.Error(), Code: code})
}
