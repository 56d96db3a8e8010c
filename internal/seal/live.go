package seal

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Live is the keyring a server uses now. Encrypt and Decrypt read the
// current keyring without locking; Install replaces it (persisting first).
// It satisfies api.Sealer.
type Live struct {
	path string
	mu   sync.Mutex // serialises Install: merge, write, swap
	cur  atomic.Pointer[Keyring]
}

// NewLive saves k to path (0600, atomically) and returns a Live holding it.
// An empty path keeps the keyring in memory only (tests).
func NewLive(path string, k *Keyring) (*Live, error) {
	l := &Live{path: path}
	k = k.Clone()
	if err := l.save(k); err != nil {
		return nil, err
	}
	l.cur.Store(k)
	return l, nil
}

// Open loads the keyring saved at path (an error wrapping
// os.ErrNotExist when there is none).
func Open(path string) (*Live, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secrets keyring: %w", err)
	}
	k, err := ParseKeyring(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	l := &Live{path: path}
	l.cur.Store(k)
	return l, nil
}

// Keyring returns a copy of the current keyring (changing it changes
// nothing until Install).
func (l *Live) Keyring() *Keyring { return l.cur.Load().Clone() }

// PrimaryID is the id of the key that encrypts now.
func (l *Live) PrimaryID() string { return l.cur.Load().PrimaryID() }

// Marshal is the JSON of the current keyring (e.g. for a joining server's bundle).
func (l *Live) Marshal() ([]byte, error) { return l.cur.Load().Marshal() }

// Encrypt seals with the current primary key.
func (l *Live) Encrypt(plain []byte) ([]byte, error) { return l.cur.Load().Encrypt(plain) }

// Decrypt opens a value sealed with any current key; unsealed values pass through.
func (l *Live) Decrypt(b []byte) ([]byte, error) { return l.cur.Load().Decrypt(b) }

// Install merges k into the current keyring (keys are only added; k's
// primary becomes the primary), writes the result to the file and then
// swaps it in. On error nothing changed.
func (l *Live) Install(k *Keyring) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := l.cur.Load().Clone()
	if err := next.Merge(k); err != nil {
		return err
	}
	if err := l.save(next); err != nil {
		return err
	}
	l.cur.Store(next)
	return nil
}

// save writes k to l.path atomically: a temporary file in the same
// directory, fsynced, renamed over the old one, then the directory fsynced,
// so a crash leaves the old keyring or the new one, never a torn file.
func (l *Live) save(k *Keyring) error {
	if l.path == "" {
		return nil
	}
	data, err := k.Marshal()
	if err != nil {
		return err
	}
	dir := filepath.Dir(l.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	f, err := os.CreateTemp(dir, ".secrets-*.tmp")
	if err != nil {
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("save secrets keyring: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
