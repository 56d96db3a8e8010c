package cluster

// Gossip encryption and key rotation.
//
// Every member (servers and agents) encrypts gossip with memberlist's
// keyring (AES-256-GCM); GossipVerifyIncoming/Outgoing are on, so a member
// without a key of the ring can neither join nor be heard. Each member
// advertises the fingerprints of the keys it has installed (MetaKeys,
// primary first), which is how the leader knows who may be asked to switch.
//
// The cluster's keyring lives in the store at GossipKeyringKey (sealed with
// Config.Seal when set), so a server that was down during a rotation gets
// the keys it missed from Raft, which does not need gossip, and can then
// gossip again. Every server watches the key in its own store, applies what
// it says to its memberlist keyring and saves it to Config.KeyringFile; the
// leader writes the first record from its own keys when there is none.
// Agents cannot read the store: they poll GET /flotilla/v1/gossip/keyring
// and call agent/gossip's Pool.SetKeys.
//
// A rotation never cuts off a live member: the new key is added everywhere
// first and made primary only once every alive member advertises it; the
// old keys are removed only once every alive member encrypts with the new
// one. Dead members are not waited for (they catch up as above); left ones
// do not count. A rotation interrupted (leader lost, a laggard) is resumed
// by the next one: a record with more than one key means "finish moving to
// the newest".

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

// GossipKeyringKey is where the cluster's gossip keyring lives in the store.
const GossipKeyringKey = "/flotilla/gossip/keyring"

// GossipKeySize is the size of a gossip key: 32 bytes select AES-256.
const GossipKeySize = 32

// MaxGossipKeys bounds a keyring: a rotation holds two keys at most, and
// every key costs 9 bytes of the 512 bytes of member metadata.
const MaxGossipKeys = 8

// GossipRotateWait bounds each wait of a rotation for the members to catch
// up (the ctx given to RotateGossipKey may end it sooner).
const GossipRotateWait = 60 * time.Second

// ErrGossipNotEncrypted: the operation needs gossip encryption, which this
// server runs without (no GossipKeys and no KeyringFile).
var ErrGossipNotEncrypted = errors.New("gossip encryption is not enabled")

// KeyFingerprint names a gossip key without revealing it: the first 4 bytes
// of its SHA-256, in hex.
func KeyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:4])
}

// KeyFingerprints is the MetaKeys value for keys (primary first).
func KeyFingerprints(keys [][]byte) string {
	fps := make([]string, len(keys))
	for i, k := range keys {
		fps[i] = KeyFingerprint(k)
	}
	return strings.Join(fps, ",")
}

// SplitFingerprints parses a MetaKeys value; "" gives none.
func SplitFingerprints(v string) []string {
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// ValidateGossipKeys checks a keyring given primary first: 1 to
// MaxGossipKeys keys of GossipKeySize bytes, no duplicates.
func ValidateGossipKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("gossip keyring: no keys")
	}
	if len(keys) > MaxGossipKeys {
		return fmt.Errorf("gossip keyring: %d keys, at most %d", len(keys), MaxGossipKeys)
	}
	for i, k := range keys {
		if len(k) != GossipKeySize {
			return fmt.Errorf("gossip keyring: key %d has %d bytes, want %d", i, len(k), GossipKeySize)
		}
		for _, o := range keys[:i] {
			if bytes.Equal(o, k) {
				return fmt.Errorf("gossip keyring: key %d (%s) is there twice", i, KeyFingerprint(k))
			}
		}
	}
	return nil
}

// NewGossipKeyring is a memberlist keyring holding keys (primary first).
func NewGossipKeyring(keys [][]byte) (*memberlist.Keyring, error) {
	if err := ValidateGossipKeys(keys); err != nil {
		return nil, err
	}
	return memberlist.NewKeyring(cloneKeys(keys[1:]), bytes.Clone(keys[0]))
}

// ApplyGossipKeys makes kr hold exactly keys (primary first), in the only
// order that never leaves a live member unable to read the others: add the
// missing keys, switch the primary, then remove the keys no longer wanted.
// It reports whether anything changed.
//
// Removal goes from the end of the ring: memberlist's RemoveKey shifts the
// later keys down in place, in the slice its readers may be iterating over,
// while removing the last key writes nothing they can see.
func ApplyGossipKeys(kr *memberlist.Keyring, keys [][]byte) (changed bool, err error) {
	if err := ValidateGossipKeys(keys); err != nil {
		return false, err
	}
	for _, k := range keys {
		if !containsKey(kr.GetKeys(), k) {
			if err := kr.AddKey(bytes.Clone(k)); err != nil {
				return changed, fmt.Errorf("gossip keyring: add key %s: %w", KeyFingerprint(k), err)
			}
			changed = true
		}
	}
	if !bytes.Equal(kr.GetPrimaryKey(), keys[0]) {
		if err := kr.UseKey(keys[0]); err != nil {
			return changed, fmt.Errorf("gossip keyring: use key %s: %w", KeyFingerprint(keys[0]), err)
		}
		changed = true
	}
	cur := kr.GetKeys()
	for i := len(cur) - 1; i > 0; i-- {
		if !containsKey(keys, cur[i]) {
			if err := kr.RemoveKey(cur[i]); err != nil {
				return changed, fmt.Errorf("gossip keyring: remove key %s: %w", KeyFingerprint(cur[i]), err)
			}
			changed = true
		}
	}
	return changed, nil
}

func containsKey(keys [][]byte, k []byte) bool {
	return slices.ContainsFunc(keys, func(o []byte) bool { return bytes.Equal(o, k) })
}

func cloneKeys(keys [][]byte) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = bytes.Clone(k)
	}
	return out
}

// keyringRecord is the stored form of a keyring (the store record, once
// unsealed, and the keyring file): the keys in the order they were added,
// and which one is primary. Keeping the order of addition lets an
// interrupted rotation be resumed: the newest key is the last one.
type keyringRecord struct {
	Primary int      `json:"primary"`
	Keys    [][]byte `json:"keys"`
}

// ordered returns the keys primary first.
func (r *keyringRecord) ordered() [][]byte {
	out := [][]byte{r.Keys[r.Primary]}
	for i, k := range r.Keys {
		if i != r.Primary {
			out = append(out, k)
		}
	}
	return out
}

func (r *keyringRecord) validate() error {
	if r.Primary < 0 || r.Primary >= len(r.Keys) {
		return fmt.Errorf("gossip keyring: primary %d of %d keys", r.Primary, len(r.Keys))
	}
	return ValidateGossipKeys(r.Keys)
}

func decodeKeyringRecord(buf []byte) (*keyringRecord, error) {
	var r keyringRecord
	if err := json.Unmarshal(buf, &r); err != nil {
		return nil, fmt.Errorf("decode gossip keyring: %w", err)
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// LoadKeyringFile reads a keyring file written by SaveKeyringFile (or by a
// server applying the cluster's keyring) and returns its keys primary first.
// A missing file is an error wrapping os.ErrNotExist.
func LoadKeyringFile(path string) ([][]byte, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring %s: %w", path, err)
	}
	r, err := decodeKeyringRecord(buf)
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring %s: %w", path, err)
	}
	return r.ordered(), nil
}

// SaveKeyringFile saves keys (primary first) as JSON
// {"primary":0,"keys":[base64...]}, readable by its owner only, atomically
// (temp file, fsync, rename).
func SaveKeyringFile(path string, keys [][]byte) error {
	if err := ValidateGossipKeys(keys); err != nil {
		return err
	}
	buf, err := json.Marshal(&keyringRecord{Primary: 0, Keys: keys})
	if err != nil {
		return fmt.Errorf("write gossip keyring %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write gossip keyring %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(buf)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write gossip keyring %s: %w", path, err)
	}
	return nil
}

// keyringState is this server's side of gossip encryption.
type keyringState struct {
	// ring is memberlist's keyring; nil = gossip in the clear. Set once,
	// in Start before memberlist is created; atomic because the handler
	// may be served before Start.
	ring atomic.Pointer[memberlist.Keyring]
	// rotate is held while this server runs a rotation.
	rotate sync.Mutex

	// saved is what KeyringFile holds (fingerprints, primary first); only
	// initKeyring and then the keyring loop touch it.
	saved string

	mu sync.Mutex
	// warned is the last error logged (keyringError).
	warned string
}

// initKeyring builds the memberlist keyring from KeyringFile (what this
// server last applied from the store, so the newest keys it knows) or else
// from GossipKeys. It runs in Start before memberlist is created.
func (n *Node) initKeyring() error {
	ks := &n.gossip.keys
	keys := n.cfg.GossipKeys
	if path := n.cfg.KeyringFile; path != "" {
		fromFile, err := LoadKeyringFile(path)
		switch {
		case err == nil:
			keys = fromFile
			ks.saved = KeyFingerprints(fromFile)
		case errors.Is(err, os.ErrNotExist):
		default:
			return err
		}
	}
	if len(keys) == 0 {
		return nil
	}
	ring, err := NewGossipKeyring(keys)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	ks.ring.Store(ring)
	return nil
}

// gossipKeys returns a copy of the installed keys, primary first (nil when
// gossip is not encrypted).
func (n *Node) gossipKeys() [][]byte {
	ring := n.gossip.keys.ring.Load()
	if ring == nil {
		return nil
	}
	return cloneKeys(ring.GetKeys())
}

// readKeyringRecord returns the store's keyring record and its ModRevision
// (nil, 0 when there is none).
func (n *Node) readKeyringRecord() (*keyringRecord, uint64, error) {
	kv, _ := n.store.Get(GossipKeyringKey)
	if kv == nil {
		return nil, 0, nil
	}
	buf := kv.Value
	if n.cfg.Seal != nil {
		var err error
		if buf, err = n.cfg.Seal.Decrypt(buf); err != nil {
			return nil, kv.ModRevision, fmt.Errorf("unseal gossip keyring: %w", err)
		}
	}
	r, err := decodeKeyringRecord(buf)
	if err != nil {
		return nil, kv.ModRevision, err
	}
	return r, kv.ModRevision, nil
}

// encodeKeyringRecord is the stored (sealed) value of r.
func (n *Node) encodeKeyringRecord(r *keyringRecord) ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, err
	}
	buf, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode gossip keyring: %w", err)
	}
	if n.cfg.Seal != nil {
		if buf, err = n.cfg.Seal.Encrypt(buf); err != nil {
			return nil, fmt.Errorf("seal gossip keyring: %w", err)
		}
	}
	return buf, nil
}

// runGossipKeyring keeps this server's memberlist keyring in line with the
// store's record, and, while this server leads, writes the first record
// when there is none. It runs from Start until Shutdown on every server.
func (n *Node) runGossipKeyring() {
	defer n.wg.Done()
	if n.gossip.keys.ring.Load() == nil {
		return
	}
	t := time.NewTicker(max(n.pollInterval(), 100*time.Millisecond))
	defer t.Stop()
	for n.ctx.Err() == nil {
		// Watch first, then read: a change between the two is not lost.
		w, err := n.store.Watch(GossipKeyringKey, 0)
		if err != nil {
			n.log.Warn("watch the gossip keyring", "err", err)
			select {
			case <-n.ctx.Done():
				return
			case <-t.C:
				continue
			}
		}
		// synced is false after a failed sync (e.g. the seal not ready
		// yet), which the ticker then retries.
		synced := n.syncKeyring()
	events:
		for {
			select {
			case <-n.ctx.Done():
				w.Stop()
				return
			case _, ok := <-w.Events():
				if !ok {
					// A snapshot restore or a slow watcher: start over.
					break events
				}
				synced = n.syncKeyring()
			case <-n.leaderChangedCh():
				n.writeInitialKeyring()
			case <-t.C:
				if !synced {
					synced = n.syncKeyring()
				}
				n.writeInitialKeyring()
			}
		}
	}
}

// syncKeyring applies the store's record to memberlist, advertises the new
// fingerprints and saves the keyring file. It reports false when it should
// be tried again.
func (n *Node) syncKeyring() bool {
	ks := &n.gossip.keys
	r, _, err := n.readKeyringRecord()
	if err != nil {
		n.keyringError("gossip keyring in the store is unusable; keeping the current keys", err)
		return false
	}
	if r == nil {
		return true
	}
	keys := r.ordered()
	ring := ks.ring.Load()
	changed, err := ApplyGossipKeys(ring, keys)
	if changed {
		n.log.Info("gossip keyring changed", "keys", KeyFingerprints(ring.GetKeys()))
		n.refreshMeta()
	}
	if err != nil {
		n.keyringError("apply gossip keyring", err)
		return false
	}
	// Only this loop writes the file (initKeyring ran before it started).
	fps := KeyFingerprints(keys)
	if n.cfg.KeyringFile == "" || ks.saved == fps {
		return true
	}
	if err := SaveKeyringFile(n.cfg.KeyringFile, keys); err != nil {
		n.keyringError("save gossip keyring", err)
		return false
	}
	ks.saved = fps
	return true
}

// keyringError logs err unless it is the one logged last, so the loops
// that retry do not repeat themselves.
func (n *Node) keyringError(msg string, err error) {
	ks := &n.gossip.keys
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.warned == msg+err.Error() {
		return
	}
	ks.warned = msg + err.Error()
	n.log.Error(msg, "err", err)
}

// writeInitialKeyring stores this server's keyring as the cluster's when
// it leads (after its term's barrier, so its store is current) and the
// store has none. The compare makes it a no-op if another leader did it.
func (n *Node) writeInitialKeyring() {
	if n.readyTerm.Load() == 0 || !n.IsLeader() {
		return
	}
	if kv, _ := n.store.Get(GossipKeyringKey); kv != nil {
		return
	}
	keys := n.gossipKeys()
	val, err := n.encodeKeyringRecord(&keyringRecord{Primary: 0, Keys: keys})
	if err != nil {
		n.keyringError("store the gossip keyring", err)
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.Timing.ApplyTimeout)
	defer cancel()
	res, err := n.applyAsLeader(ctx, &fsm.Txn{
		Compares: []fsm.Compare{{Key: GossipKeyringKey, Target: fsm.CompareAbsent}},
		Ops:      []fsm.Op{{Type: fsm.OpPut, Key: GossipKeyringKey, Value: val}},
	})
	switch {
	case err != nil:
		if n.ctx.Err() == nil {
			n.log.Warn("store the gossip keyring", "err", err)
		}
	case res.Succeeded:
		n.log.Info("stored the gossip keyring", "keys", KeyFingerprints(keys))
	}
}

// GossipKeyring returns the cluster's gossip keys, primary first, as this
// server's store has them (what agents poll); before the leader stored the
// first record, this server's own keys. ErrGossipNotEncrypted when gossip
// runs in the clear.
func (n *Node) GossipKeyring() ([][]byte, error) {
	if n.gossip.keys.ring.Load() == nil {
		return nil, ErrGossipNotEncrypted
	}
	r, _, err := n.readKeyringRecord()
	if err != nil {
		return nil, err
	}
	if r == nil {
		return n.gossipKeys(), nil
	}
	return cloneKeys(r.ordered()), nil
}

// RotateGossipKey replaces the cluster's gossip key with a new random one,
// on the leader (a follower forwards the request). It adds the key, waits
// until every alive member advertises it, makes it primary, waits until
// every alive member encrypts with it, removes the old keys and waits until
// they are gone everywhere. Each wait is bounded by GossipRotateWait; on
// timeout the error names the members that lag and the keyring stays where
// it got to (never a primary some alive member lacks). Calling it again
// resumes an unfinished rotation rather than starting another.
func (n *Node) RotateGossipKey(ctx context.Context) error {
	if n.gossip.keys.ring.Load() == nil {
		return ErrGossipNotEncrypted
	}
	return n.withLeader(ctx,
		func(ctx context.Context, r *raft.Raft) error { return n.rotateLocal(ctx, r) },
		func(ctx context.Context, addr string) error {
			return n.call(ctx, http.MethodPost, addr, "/flotilla/v1/operator/gossip/rotate", nil, nil, true)
		})
}

// rotateHere runs a forwarded rotation if this server leads.
func (n *Node) rotateHere(ctx context.Context) error {
	if n.gossip.keys.ring.Load() == nil {
		return ErrGossipNotEncrypted
	}
	r, err := n.raft()
	if err != nil {
		return err
	}
	return n.rotateLocal(ctx, r)
}

func (n *Node) rotateLocal(ctx context.Context, r *raft.Raft) error {
	ks := &n.gossip.keys
	// A second request while one runs would only start another rotation
	// right after it.
	if !ks.rotate.TryLock() {
		return errors.New("gossip key rotation: one is already in progress on the leader")
	}
	defer ks.rotate.Unlock()
	if r.State() != raft.Leader {
		return &errRetry{ErrNotLeader}
	}
	if err := n.ReadIndex(ctx); err != nil {
		return err
	}
	rec, rev, err := n.readKeyringRecord()
	if err != nil {
		return err
	}
	if rec == nil {
		// No record yet (a leader of a few milliseconds): ours is the
		// cluster's.
		rec = &keyringRecord{Primary: 0, Keys: n.gossipKeys()}
	}
	if len(rec.Keys) == 1 {
		key := make([]byte, GossipKeySize)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("gossip key rotation: new key: %w", err)
		}
		rec = &keyringRecord{Primary: rec.Primary, Keys: [][]byte{rec.Keys[0], key}}
		if rev, err = n.writeKeyringRecord(ctx, rec, rev); err != nil {
			return err
		}
		n.log.Info("gossip key rotation: new key installed", "key", KeyFingerprint(key))
	} else {
		n.log.Info("gossip key rotation: resuming", "key", KeyFingerprint(rec.Keys[len(rec.Keys)-1]))
	}
	newKey := rec.Keys[len(rec.Keys)-1]
	fp := KeyFingerprint(newKey)

	if err := n.waitAdvertised(ctx, "install the new key "+fp, func(fps []string) bool {
		return slices.Contains(fps, fp)
	}); err != nil {
		return fmt.Errorf("%w; it stays installed, not primary", err)
	}
	if rec.Primary != len(rec.Keys)-1 {
		rec = &keyringRecord{Primary: len(rec.Keys) - 1, Keys: rec.Keys}
		if rev, err = n.writeKeyringRecord(ctx, rec, rev); err != nil {
			return err
		}
	}
	if err := n.waitAdvertised(ctx, "make "+fp+" primary", func(fps []string) bool {
		return len(fps) > 0 && fps[0] == fp
	}); err != nil {
		return fmt.Errorf("%w; the old keys stay installed", err)
	}
	if _, err = n.writeKeyringRecord(ctx, &keyringRecord{Primary: 0, Keys: [][]byte{newKey}}, rev); err != nil {
		return err
	}
	if err := n.waitAdvertised(ctx, "remove the old keys", func(fps []string) bool {
		return len(fps) == 1 && fps[0] == fp
	}); err != nil {
		return fmt.Errorf("%w; %s is primary everywhere, so they can catch up", err, fp)
	}
	n.log.Info("gossip key rotation done", "key", fp)
	return nil
}

// writeKeyringRecord stores r if the record is still at rev (0 = absent)
// and returns the new ModRevision.
func (n *Node) writeKeyringRecord(ctx context.Context, r *keyringRecord, rev uint64) (uint64, error) {
	val, err := n.encodeKeyringRecord(r)
	if err != nil {
		return 0, err
	}
	cmp := fsm.Compare{Key: GossipKeyringKey, Target: fsm.CompareAbsent}
	if rev != 0 {
		cmp = fsm.Compare{Key: GossipKeyringKey, Target: fsm.CompareModRevision, ModRevision: rev}
	}
	res, err := n.applyAsLeader(ctx, &fsm.Txn{
		Compares: []fsm.Compare{cmp},
		Ops:      []fsm.Op{{Type: fsm.OpPut, Key: GossipKeyringKey, Value: val}},
	})
	if err != nil {
		if errors.Is(err, ErrOutcomeUnknown) && ctx.Err() == nil {
			// Leadership lost with the write in flight. Every step is a
			// compare-and-swap that the next leader's rotation reads back
			// and resumes from, so trying again there is safe.
			return 0, &errRetry{fmt.Errorf("%w: gossip key rotation: store the keyring: %v", ErrNotLeader, err)}
		}
		return 0, fmt.Errorf("gossip key rotation: store the keyring: %w", err)
	}
	if !res.Succeeded {
		return 0, errors.New("gossip key rotation: the keyring changed meanwhile (another rotation?); try again")
	}
	return res.Revision, nil
}

// waitAdvertised waits until every alive member's advertised fingerprints
// satisfy ok, for at most GossipRotateWait. Dead members are not waited
// for (they get the keyring when they come back); members that left or are
// leaving do not count.
func (n *Node) waitAdvertised(ctx context.Context, what string, ok func(fps []string) bool) error {
	deadline := time.Now().Add(GossipRotateWait)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		var lag []string
		for _, m := range n.gossip.list("") {
			if m.Status != StatusAlive || m.Meta[MetaLeaving] == "1" {
				continue
			}
			if !ok(SplitFingerprints(m.Meta[MetaKeys])) {
				lag = append(lag, fmt.Sprintf("%s (%s, keys %q)", m.Name, m.Role, m.Meta[MetaKeys]))
			}
		}
		if len(lag) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			sort.Strings(lag)
			return fmt.Errorf("gossip key rotation: %d alive member(s) did not %s within %s: %s",
				len(lag), what, GossipRotateWait, strings.Join(lag, ", "))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gossip key rotation: waiting for the members to %s: %w", what, ctx.Err())
		case <-n.ctx.Done():
			return ErrShutdown
		case <-t.C:
		}
	}
}
