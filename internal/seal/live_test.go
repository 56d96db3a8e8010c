package seal

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestLivePersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tls", "secrets.json")
	if _, err := Open(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenLive of a missing file: %v, want not-exist", err)
	}
	first := NewKeyring()
	live, err := NewLive(path, first)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring file mode %v, want 0600", fi.Mode().Perm())
	}
	old, _ := live.Encrypt([]byte("before"))

	next := live.Keyring()
	id := next.Rotate()
	if live.PrimaryID() == id {
		t.Fatal("changing the copy from Keyring() changed the live keyring")
	}
	if err := live.Install(next); err != nil {
		t.Fatal(err)
	}
	if live.PrimaryID() != id {
		t.Fatalf("primary after Install = %q, want %q", live.PrimaryID(), id)
	}

	// A restart reads what was installed.
	reopened, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if reopened.PrimaryID() != id || len(reopened.Keyring().IDs()) != 2 {
		t.Fatalf("reopened: primary %q ids %v", reopened.PrimaryID(), reopened.Keyring().IDs())
	}
	if got, err := reopened.Decrypt(old); err != nil || string(got) != "before" {
		t.Fatalf("reopened keyring decrypts the old value: %q, %v", got, err)
	}
	sealed, _ := live.Encrypt([]byte("after"))
	if got, err := reopened.Decrypt(sealed); err != nil || string(got) != "after" {
		t.Fatalf("reopened keyring decrypts the new value: %q, %v", got, err)
	}

	// Install never drops a key: a keyring holding only a fresh key adds it.
	other := NewKeyring()
	if err := live.Install(other); err != nil {
		t.Fatal(err)
	}
	if got, err := live.Decrypt(old); err != nil || string(got) != "before" {
		t.Fatalf("after installing a keyring without the first key: %q, %v", got, err)
	}
	if n := len(live.Keyring().IDs()); n != 3 {
		t.Fatalf("keys after merge = %d, want 3", n)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only secrets.json (temporary files left behind?)", len(entries))
	}
}

func TestLiveInstallFailureChangesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "secrets.json")
	live, err := NewLive(path, NewKeyring())
	if err != nil {
		t.Fatal(err)
	}
	before := live.PrimaryID()
	// A directory where the file should be makes the rename fail.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	next := live.Keyring()
	next.Rotate()
	if err := live.Install(next); err == nil {
		t.Fatal("Install succeeded though the file could not be written")
	}
	if live.PrimaryID() != before {
		t.Fatal("a failed Install swapped the keyring in")
	}
}

// TestLiveConcurrent: readers never see a torn keyring while Install runs (-race).
func TestLiveConcurrent(t *testing.T) {
	live, err := NewLive("", NewKeyring())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				s, err := live.Encrypt([]byte("x"))
				if err != nil {
					t.Error(err)
					return
				}
				if p, err := live.Decrypt(s); err != nil || string(p) != "x" {
					t.Errorf("decrypt: %q, %v", p, err)
					return
				}
			}
		}()
	}
	for range 20 {
		k := live.Keyring()
		k.Rotate()
		if err := live.Install(k); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}
