package cluster

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

// Handler serves the internal and operator endpoints, mounted on the API port:
// /internal/v1/apply, /internal/v1/readindex, /flotilla/v1/operator/...
//
// Requests another master forwarded (header X-Flotilla-Forwarded) are
// served here or refused with 503 not_leader, never forwarded again.
// Authentication is the API server's business: it wraps this handler.
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /internal/v1/apply", n.handleApply)
	mux.HandleFunc("GET /internal/v1/readindex", n.handleReadIndex)
	mux.HandleFunc("GET /internal/v1/status", n.handleStatus)
	mux.HandleFunc("GET /flotilla/v1/operator/raft/peers", n.handlePeers)
	mux.HandleFunc("DELETE /flotilla/v1/operator/raft/peers/{id}", n.handleRemovePeer)
	mux.HandleFunc("POST /flotilla/v1/operator/raft/transfer-leader", n.handleTransfer)
	mux.HandleFunc("GET /flotilla/v1/operator/snapshot", n.handleSnapshotSave)
	mux.HandleFunc("POST /flotilla/v1/operator/snapshot", n.handleSnapshotRestore)
	mux.HandleFunc("GET /flotilla/v1/operator/members", n.handleMembers)
	mux.HandleFunc("GET /flotilla/v1/gossip/keyring", n.handleGossipKeyring)
	mux.HandleFunc("POST /flotilla/v1/operator/gossip/rotate", n.handleGossipRotate)
	return mux
}

// GossipKeyringBody is the answer of GET /flotilla/v1/gossip/keyring: the
// cluster's gossip keys, primary first (base64 in JSON).
type GossipKeyringBody struct {
	Keys [][]byte `json:"keys"`
}

// GossipRotateBody is the answer of POST /flotilla/v1/operator/gossip/rotate:
// the fingerprints of the keys now installed, primary first.
type GossipRotateBody struct {
	Keys []string `json:"keys"`
}

// handleGossipKeyring serves the keys agents poll (an agent that missed a
// rotation cannot gossip until it has them). Who may read them is the API
// server's business, as for every endpoint here.
func (n *Node) handleGossipKeyring(w http.ResponseWriter, _ *http.Request) {
	keys, err := n.GossipKeyring()
	if errors.Is(err, ErrGossipNotEncrypted) {
		writeJSON(w, http.StatusNotFound, errorBody{Error: err.Error(), Code: "not_found"})
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, GossipKeyringBody{Keys: keys})
}

func (n *Node) handleGossipRotate(w http.ResponseWriter, req *http.Request) {
	var err error
	if req.Header.Get(headerForwarded) != "" {
		err = n.rotateHere(req.Context())
	} else {
		err = n.RotateGossipKey(req.Context())
	}
	if errors.Is(err, ErrGossipNotEncrypted) {
		err = fmt.Errorf("%w: %w", errBadRequest, err)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, GossipRotateBody{Keys: SplitFingerprints(KeyFingerprints(n.gossipKeys()))})
}

// handleApply is the leader's side of a forwarded write: the body is an
// encoded transaction, the answer the JSON fsm.TxnResult.
func (n *Node) handleApply(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, maxForwardBody))
	if err != nil {
		writeError(w, fmt.Errorf("%w: read transaction: %v", fsm.ErrTxnTooLarge, err))
		return
	}
	// Decode and validate: an entry that reached the log undecodable would
	// stop every master's FSM.
	if len(body) == 0 || fsm.CommandType(body[0]) != fsm.CmdTxn {
		writeError(w, fmt.Errorf("%w: not an encoded transaction", fsm.ErrInvalidTxn))
		return
	}
	txn, err := fsm.DecodeTxn(body[1:])
	if err != nil {
		writeError(w, fmt.Errorf("%w: %v", fsm.ErrInvalidTxn, err))
		return
	}
	if err := txn.Validate(); err != nil {
		writeError(w, err)
		return
	}
	r, err := n.raft()
	if err != nil {
		writeError(w, err)
		return
	}
	if r.State() != raft.Leader {
		writeError(w, ErrNotLeader)
		return
	}
	res, err := n.applyLocal(req.Context(), r, body)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (n *Node) handleReadIndex(w http.ResponseWriter, req *http.Request) {
	if !n.IsLeader() {
		writeError(w, ErrNotLeader)
		return
	}
	idx, err := n.leaderReads.get(req.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, readIndexBody{Index: idx})
}

func (n *Node) handleStatus(w http.ResponseWriter, _ *http.Request) {
	st, err := n.status()
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (n *Node) handlePeers(w http.ResponseWriter, req *http.Request) {
	peers, err := n.Peers(req.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, peers)
}

func (n *Node) handleMembers(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, n.Members())
}

func (n *Node) handleRemovePeer(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	var err error
	if req.Header.Get(headerForwarded) != "" {
		var r *raft.Raft
		if r, err = n.raft(); err == nil {
			err = n.removePeerLocal(r, id)
		}
	} else {
		err = n.RemovePeer(req.Context(), id)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": id})
}

func (n *Node) handleTransfer(w http.ResponseWriter, req *http.Request) {
	id := req.URL.Query().Get("id")
	var err error
	if req.Header.Get(headerForwarded) != "" {
		var r *raft.Raft
		if r, err = n.raft(); err == nil {
			err = n.transferLocal(req.Context(), r, id)
		}
	} else {
		err = n.TransferLeadership(req.Context(), id)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	leader, _ := n.Leader()
	writeJSON(w, http.StatusOK, map[string]string{"leader": leader})
}

func (n *Node) handleSnapshotSave(w http.ResponseWriter, req *http.Request) {
	// Errors before the first byte get a JSON answer; later ones can only
	// cut the stream short, which the restore side detects (size, digest).
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="flotilla-snapshot.tar"`)
	lw := &lazyHeaderWriter{w: w}
	if err := n.Snapshot(req.Context(), lw); err != nil {
		if !lw.written {
			w.Header().Del("Content-Disposition")
			writeError(w, err)
		}
		n.log.Error("snapshot save", "err", err)
	}
}

// lazyHeaderWriter delays the 200 until the first byte, so an error before
// it can still be a JSON error.
type lazyHeaderWriter struct {
	w       http.ResponseWriter
	written bool
}

func (l *lazyHeaderWriter) Write(p []byte) (int, error) {
	l.written = true
	return l.w.Write(p)
}

func (n *Node) handleSnapshotRestore(w http.ResponseWriter, req *http.Request) {
	var err error
	if req.Header.Get(headerForwarded) != "" {
		err = n.restoreHere(req.Context(), req.Body)
	} else {
		err = n.Restore(req.Context(), req.Body)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"restored": "ok"})
}

// Snapshot archive: a tar of meta.json (raft.SnapshotMeta), state.bin (the
// store's snapshot as raft keeps it) and state.sha256 (hex digest of
// state.bin), in that order.
const (
	archiveMeta   = "meta.json"
	archiveState  = "state.bin"
	archiveDigest = "state.sha256"
)

// Snapshot writes a snapshot archive of this node's store to w, after a
// ReadIndex so it holds every write committed before the call. Restore
// reads it back.
func (n *Node) Snapshot(ctx context.Context, w io.Writer) error {
	if err := n.ReadIndex(ctx); err != nil {
		return err
	}
	r, err := n.raft()
	if err != nil {
		return err
	}
	meta, rc, err := n.openSnapshot(r)
	if err != nil {
		return err
	}
	defer rc.Close()
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("encode snapshot meta: %w", err)
	}
	tw := tar.NewWriter(w)
	now := time.Now()
	if err := writeTarFile(tw, archiveMeta, now, int64(len(metaJSON)), bytes.NewReader(metaJSON)); err != nil {
		return err
	}
	h := sha256.New()
	if err := writeTarFile(tw, archiveState, now, meta.Size, io.TeeReader(rc, h)); err != nil {
		return err
	}
	digest := []byte(hex.EncodeToString(h.Sum(nil)) + "\n")
	if err := writeTarFile(tw, archiveDigest, now, int64(len(digest)), bytes.NewReader(digest)); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write snapshot archive: %w", err)
	}
	return nil
}

// openSnapshot takes a user snapshot, or opens the latest one when nothing
// changed since it.
func (n *Node) openSnapshot(r *raft.Raft) (*raft.SnapshotMeta, io.ReadCloser, error) {
	f := r.Snapshot()
	err := f.Error()
	if err == nil {
		meta, rc, err := f.Open()
		if err != nil {
			return nil, nil, fmt.Errorf("open snapshot: %w", err)
		}
		return meta, rc, nil
	}
	if !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil, nil, fmt.Errorf("take snapshot: %w", err)
	}
	list, lerr := n.st.snaps.List()
	if lerr != nil {
		return nil, nil, fmt.Errorf("list snapshots: %w", lerr)
	}
	if len(list) == 0 {
		return nil, nil, fmt.Errorf("take snapshot: %w", err)
	}
	meta, rc, err := n.st.snaps.Open(list[0].ID)
	if err != nil {
		return nil, nil, fmt.Errorf("open snapshot %s: %w", list[0].ID, err)
	}
	return meta, rc, nil
}

func writeTarFile(tw *tar.Writer, name string, mod time.Time, size int64, r io.Reader) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: mod, Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("write snapshot archive %s: %w", name, err)
	}
	if n, err := io.Copy(tw, r); err != nil {
		return fmt.Errorf("write snapshot archive %s: %w", name, err)
	} else if n != size {
		return fmt.Errorf("write snapshot archive %s: %d bytes, expected %d", name, n, size)
	}
	return nil
}

// Restore replaces the whole cluster state with a snapshot archive made by
// Snapshot (raft.Restore on the leader; a follower forwards the archive).
// The archive is checked (digest, and a trial restore into a scratch store)
// before raft sees it: raft panics when the store rejects a restore. It is
// disaster recovery: watchers everywhere end with fsm.ErrRestored.
func (n *Node) Restore(ctx context.Context, src io.Reader) error {
	f, err := n.spool(src)
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := readArchive(f, func(*raft.SnapshotMeta, io.Reader) error { return nil }); err != nil {
		return err
	}
	return n.withLeader(ctx,
		func(ctx context.Context, r *raft.Raft) error { return n.restoreFile(ctx, r, f) },
		func(ctx context.Context, addr string) error {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
			// io.NopCloser keeps the client from closing our file.
			return n.call(ctx, http.MethodPost, addr, "/flotilla/v1/operator/snapshot", io.NopCloser(f), nil, true)
		})
}

// restoreHere restores a forwarded archive if this node leads.
func (n *Node) restoreHere(ctx context.Context, src io.Reader) error {
	r, err := n.raft()
	if err != nil {
		return err
	}
	if r.State() != raft.Leader {
		return ErrNotLeader
	}
	f, err := n.spool(src)
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := readArchive(f, func(*raft.SnapshotMeta, io.Reader) error { return nil }); err != nil {
		return err
	}
	return n.restoreFile(ctx, r, f)
}

func (n *Node) spool(src io.Reader) (*os.File, error) {
	f, err := os.CreateTemp(n.st.raftDir, "restore-*.tar")
	if err != nil {
		return nil, fmt.Errorf("spool snapshot: %w", err)
	}
	if _, err := io.Copy(f, src); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("%w: read snapshot archive: %v", errBadRequest, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("spool snapshot: %w", err)
	}
	return f, nil
}

// restoreFile trial-restores the archive into a scratch store, then hands
// it to raft.Restore.
func (n *Node) restoreFile(ctx context.Context, r *raft.Raft, f *os.File) error {
	if r.State() != raft.Leader {
		return &errRetry{ErrNotLeader}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := readArchive(f, func(_ *raft.SnapshotMeta, data io.Reader) error {
		scratch := fsm.New(fsm.Config{Logger: n.log})
		if err := scratch.Restore(io.NopCloser(data)); err != nil {
			return fmt.Errorf("%w: snapshot data is not a store snapshot: %v", errBadRequest, err)
		}
		return nil
	}); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	timeout := 5 * time.Minute
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	_, err := readArchive(f, func(meta *raft.SnapshotMeta, data io.Reader) error {
		n.log.Warn("restoring snapshot (operator)", "snapshot_index", meta.Index, "size", meta.Size)
		return mapRaftError(r.Restore(meta, data, timeout))
	})
	return err
}

// readArchive reads a snapshot archive, calling use with the metadata and
// the state data (which use must consume or not; the digest is checked on
// whatever remains), and verifies the digest.
func readArchive(f io.Reader, use func(*raft.SnapshotMeta, io.Reader) error) (*raft.SnapshotMeta, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: snapshot archive: %s", errBadRequest, fmt.Sprintf(format, args...))
	}
	tr := tar.NewReader(f)
	hdr, err := tr.Next()
	if err != nil || hdr.Name != archiveMeta {
		return nil, bad("expected %s first (%v)", archiveMeta, err)
	}
	var meta raft.SnapshotMeta
	if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&meta); err != nil {
		return nil, bad("%s: %v", archiveMeta, err)
	}
	hdr, err = tr.Next()
	if err != nil || hdr.Name != archiveState {
		return nil, bad("expected %s second (%v)", archiveState, err)
	}
	if hdr.Size != meta.Size {
		return nil, bad("%s has %d bytes, %s says %d", archiveState, hdr.Size, archiveMeta, meta.Size)
	}
	h := sha256.New()
	data := io.TeeReader(tr, h)
	if err := use(&meta, data); err != nil {
		return nil, err
	}
	if _, err := io.Copy(io.Discard, data); err != nil {
		return nil, bad("read %s: %v", archiveState, err)
	}
	hdr, err = tr.Next()
	if err != nil || hdr.Name != archiveDigest {
		return nil, bad("expected %s third (%v)", archiveDigest, err)
	}
	want, err := io.ReadAll(io.LimitReader(tr, 256))
	if err != nil {
		return nil, bad("read %s: %v", archiveDigest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != string(bytes.TrimSpace(want)) {
		return nil, bad("digest mismatch: %s is damaged", archiveState)
	}
	return &meta, nil
}
