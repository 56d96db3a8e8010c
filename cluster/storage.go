package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	lockFileName      = "LOCK"
	clusterIDFileName = "cluster-id"
	raftDirName       = "raft"
	raftDBFileName    = "raft.db"
	snapshotsDirName  = "snapshots" // raft.FileSnapshotStore's own layout
	snapshotsRetained = 2
	// logCacheSize is in entries of up to fsm.MaxTxnBytes each: 512 of the
	// memory benchmark's 100 KiB transactions held ~50 MiB of heap that a
	// lagging follower can as well be served from bolt.
	logCacheSize    = 64
	boltOpenTimeout = time.Second
)

// storage is what lives in the data dir: the lock, the Raft log and stable
// store, and the snapshot store.
type storage struct {
	dataDir string
	raftDir string
	lock    *os.File
	// logState is what the read-only inspection of raft.db found.
	logState raftDBState
	// bolt, logs and snaps are opened read-write by openLog (snaps earlier
	// when a snapshot store already exists).
	bolt  *raftboltdb.BoltStore
	logs  raft.LogStore // bolt behind a cache of recent entries
	snaps *raft.FileSnapshotStore
}

// openStorage locks dataDir and checks the existing files read-only, so a
// corrupt raft.db or snapshot fails with an error naming the file and nothing
// modified. The stores are opened read-write later, by openLog.
func openStorage(dataDir string, logger hclog.Logger) (_ *storage, err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", dataDir, err)
	}
	s := &storage{dataDir: dataDir, raftDir: filepath.Join(dataDir, raftDirName)}
	if s.lock, err = lockDataDir(dataDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if err := checkWritable(dataDir); err != nil {
		return nil, err
	}
	if err := checkWritable(s.raftDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if err := checkSnapshots(filepath.Join(s.raftDir, snapshotsDirName)); err != nil {
		return nil, err
	}
	dbPath := filepath.Join(s.raftDir, raftDBFileName)
	if s.logState, err = inspectRaftDB(dbPath); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.raftDir, snapshotsDirName)); err == nil {
		// Only an existing snapshot store is opened here: creating one would
		// modify a data dir that may yet be refused (another cluster's).
		if s.snaps, err = raft.NewFileSnapshotStoreWithLogger(s.raftDir, snapshotsRetained, logger); err != nil {
			return nil, fmt.Errorf("open snapshot store %s: %w", filepath.Join(s.raftDir, snapshotsDirName), err)
		}
	}
	return s, nil
}

// openLog opens the Raft log, stable store and snapshot store read-write.
// It runs only once the node is known to belong here (after the gossip join),
// because opening bolt read-write writes to raft.db even when nothing else
// changes.
func (s *storage) openLog(logger hclog.Logger) (err error) {
	if err := os.MkdirAll(s.raftDir, 0o700); err != nil {
		return fmt.Errorf("create raft dir %s: %w", s.raftDir, err)
	}
	dbPath := filepath.Join(s.raftDir, raftDBFileName)
	s.bolt, err = raftboltdb.New(raftboltdb.Options{
		Path: dbPath,
		// The timeout bounds waiting for bolt's own file lock; our LOCK
		// already keeps a second server out, so hitting it means something
		// else holds the file.
		BoltOptions: &bbolt.Options{Timeout: boltOpenTimeout, NoFreelistSync: true},
	})
	if err != nil {
		return fmt.Errorf("open raft log %s: %w", dbPath, err)
	}
	if s.logs, err = raft.NewLogCache(logCacheSize, s.bolt); err != nil {
		return fmt.Errorf("raft log cache: %w", err)
	}
	if s.snaps == nil {
		if s.snaps, err = raft.NewFileSnapshotStoreWithLogger(s.raftDir, snapshotsRetained, logger); err != nil {
			return fmt.Errorf("open snapshot store %s: %w", filepath.Join(s.raftDir, snapshotsDirName), err)
		}
	}
	return nil
}

// raftDBState is what inspectRaftDB learns from an existing raft.db.
type raftDBState struct {
	exists  bool
	hasLogs bool // at least one log entry
	hasTerm bool // a current term was ever stored
}

// Bucket and key names of raft-boltdb's layout, read here without opening
// the store read-write.
var (
	boltLogsBucket = []byte("logs")
	boltConfBucket = []byte("conf")
	boltTermKey    = []byte("CurrentTerm")
)

// inspectRaftDB opens an existing raft.db read-only, checks every page (a
// corrupt file makes bolt panic deep inside a read, so the check runs under
// recover) and reports whether it holds Raft state. A missing file is no
// state, not an error.
func inspectRaftDB(path string) (raftDBState, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return raftDBState{}, nil
	}
	// Corrupt pages can also send bolt's traversal round in circles, so the
	// walk runs on its own goroutine under a deadline; a walk that does not
	// finish is reported as corruption (the goroutine is abandoned: the
	// caller fails and the process exits).
	type result struct {
		st  raftDBState
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := walkRaftDB(path)
		done <- result{st, err}
	}()
	select {
	case r := <-done:
		return r.st, r.err
	case <-time.After(raftDBInspectTimeout):
		return raftDBState{}, fmt.Errorf("raft log %s is corrupt: reading it did not finish within %s", path, raftDBInspectTimeout)
	}
}

// raftDBInspectTimeout bounds inspectRaftDB. A healthy raft.db holds at most
// the trailing logs since the last snapshot and is read in well under a
// second.
const raftDBInspectTimeout = 10 * time.Second

// walkRaftDB opens path read-only and reads every key of every bucket.
func walkRaftDB(path string) (st raftDBState, err error) {
	st.exists = true
	var db *bbolt.DB
	defer func() {
		if r := recover(); r != nil {
			// Not closing db: after a panic inside a transaction its locks
			// may be held, and Close would wait on them.
			err = fmt.Errorf("raft log %s is corrupt: %v", path, r)
		} else if db != nil {
			db.Close()
		}
	}()
	db, err = bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: boltOpenTimeout})
	if err != nil {
		return st, fmt.Errorf("open raft log %s: %w", path, err)
	}
	err = db.View(func(tx *bbolt.Tx) error {
		// Walk every bucket and key here, in this goroutine, so a page
		// assertion panics where recover sees it (tx.Check runs its walk on a
		// goroutine of its own).
		if err := tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error { return nil })
		}); err != nil {
			return err
		}
		if b := tx.Bucket(boltLogsBucket); b != nil {
			k, _ := b.Cursor().First()
			st.hasLogs = k != nil
		}
		if b := tx.Bucket(boltConfBucket); b != nil {
			v := b.Get(boltTermKey)
			st.hasTerm = len(v) == 8 && !bytes.Equal(v, make([]byte, 8))
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("raft log %s is corrupt: %w", path, err)
	}
	return st, nil
}

// lockDataDir takes an exclusive flock on <dir>/LOCK. flock is per open file
// description, so it also keeps out a second Node in the same process.
func lockDataDir(dir string) (*os.File, error) {
	f, err := LockDataDir(dir, lockFileName)
	if err != nil {
		return nil, err
	}
	// The pid is for people; the lock is the flock.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// LockDataDir takes an exclusive flock on <dir>/<name>, held until the file
// is closed; a second holder gets "in use by another flotilla server". The
// server process takes its own lock (another name) before it touches the
// keys in the data dir.
func LockDataDir(dir, name string) (*os.File, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another flotilla server (lock file %s)", dir, path)
		}
		return nil, fmt.Errorf("lock data dir %s (lock file %s): %w", dir, path, err)
	}
	return f, nil
}

func checkWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return err
		}
		return fmt.Errorf("data dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// snapshotMetaFile is the part of raft's meta.json the checks need.
type snapshotMetaFile struct {
	Version int
	ID      string
	Index   uint64
	Term    uint64
	Size    int64
	CRC     []byte
}

// checkSnapshots reads every snapshot's meta.json and verifies the newest
// snapshot's state.bin (size and CRC), the one raft will restore. raft's file
// store silently skips a snapshot whose metadata it cannot read; with the
// log compacted behind it that would lose state, so it is an error here.
func checkSnapshots(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read snapshot dir %s: %w", dir, err)
	}
	var metas []snapshotMetaFile
	for _, e := range entries {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		path := filepath.Join(dir, e.Name(), "meta.json")
		buf, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("snapshot %s is corrupt: %w", path, err)
		}
		var m snapshotMetaFile
		if err := json.Unmarshal(buf, &m); err != nil {
			return fmt.Errorf("snapshot %s is corrupt: %w", path, err)
		}
		if m.ID != e.Name() {
			return fmt.Errorf("snapshot %s is corrupt: id %q does not match its directory", path, m.ID)
		}
		metas = append(metas, m)
	}
	if len(metas) == 0 {
		return nil
	}
	// Newest as raft orders them: term, index, then ID.
	sort.Slice(metas, func(i, j int) bool {
		a, b := metas[i], metas[j]
		if a.Term != b.Term {
			return a.Term > b.Term
		}
		if a.Index != b.Index {
			return a.Index > b.Index
		}
		return a.ID > b.ID
	})
	m := metas[0]
	path := filepath.Join(dir, m.ID, "state.bin")
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot %s is corrupt: %w", path, err)
	}
	defer f.Close()
	h := crc64.New(crc64.MakeTable(crc64.ECMA))
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if n != m.Size {
		return fmt.Errorf("snapshot %s is corrupt: %d bytes, meta.json says %d", path, n, m.Size)
	}
	if !bytes.Equal(h.Sum(nil), m.CRC) {
		return fmt.Errorf("snapshot %s is corrupt: checksum mismatch", path)
	}
	return nil
}

func (s *storage) close() error {
	var errs []error
	if s.bolt != nil {
		if err := s.bolt.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft log: %w", err))
		}
		s.bolt = nil
	}
	if s.lock != nil {
		// Closing the descriptor releases the flock.
		if err := s.lock.Close(); err != nil {
			errs = append(errs, fmt.Errorf("release data dir lock: %w", err))
		}
		s.lock = nil
	}
	return errors.Join(errs...)
}

// hasState reports whether the data dir holds Raft state (as
// raft.HasExistingState decides it: a term, a log entry or a snapshot),
// without opening the log read-write.
func (s *storage) hasState() (bool, error) {
	if s.logState.hasLogs || s.logState.hasTerm {
		return true, nil
	}
	if s.snaps == nil {
		return false, nil
	}
	snaps, err := s.snaps.List()
	if err != nil {
		return false, err
	}
	return len(snaps) > 0, nil
}

// readClusterID returns the persisted cluster ID ("" when none yet).
func readClusterID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, clusterIDFileName)
	buf, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read cluster id %s: %w", path, err)
	}
	id := strings.TrimSpace(string(buf))
	if !validClusterID(id) {
		return "", fmt.Errorf("cluster id file %s is corrupt: %q", path, id)
	}
	return id, nil
}

// writeClusterID persists id atomically (temp file, fsync, rename).
func writeClusterID(dataDir, id string) error {
	path := filepath.Join(dataDir, clusterIDFileName)
	f, err := os.CreateTemp(dataDir, ".cluster-id-*")
	if err != nil {
		return fmt.Errorf("write cluster id %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(id + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write cluster id %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write cluster id %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write cluster id %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write cluster id %s: %w", path, err)
	}
	return nil
}

func validClusterID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return false
		}
	}
	return true
}
