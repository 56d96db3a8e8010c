package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"flotilla/cluster"
	"flotilla/cluster/clustertest"
)

func jsonDecode(r io.Reader, out any) error { return json.NewDecoder(r).Decode(out) }

func parseUint(s string) uint64 {
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

func TestDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	n, err := cluster.New(testConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cluster.New(testConfig(t, dir))
	want := "data dir " + dir + " is in use by another flotilla server (lock file " + filepath.Join(dir, "LOCK") + ")"
	if err == nil || err.Error() != want {
		t.Fatalf("second server: err = %v, want %q", err, want)
	}
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	n, err = cluster.New(testConfig(t, dir))
	if err != nil {
		t.Fatalf("after the first released the lock: %v", err)
	}
	n.Shutdown(context.Background())
}

func TestUnwritableDataDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root can write anywhere")
	}
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	_, err := cluster.New(testConfig(t, dir))
	if err == nil || !strings.Contains(err.Error(), "data dir "+dir+" is not writable") {
		t.Fatalf("err = %v", err)
	}
}

func TestCorruptRaftDB(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "raft"), 0o700); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "raft", "raft.db")
	junk := bytes.Repeat([]byte("not a bolt database "), 1000)
	if err := os.WriteFile(db, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := cluster.New(testConfig(t, dir))
	if err == nil || !strings.Contains(err.Error(), "open raft log "+db) {
		t.Fatalf("err = %v", err)
	}
	if got, _ := os.ReadFile(db); !bytes.Equal(got, junk) {
		t.Error("the corrupt raft.db was modified")
	}
}

func TestCorruptSnapshot(t *testing.T) {
	c := newTestCluster(t, 1)
	s := c.Server(0)
	mustPut(t, s.Node, "/test/x", "y")
	if err := s.Node.Snapshot(ctxT(t), io.Discard); err != nil {
		t.Fatal(err)
	}
	c.Stop(0)
	dirs, _ := filepath.Glob(filepath.Join(s.Config.DataDir, "raft", "snapshots", "*"))
	if len(dirs) == 0 {
		t.Fatal("no snapshot on disk")
	}
	state := filepath.Join(dirs[len(dirs)-1], "state.bin")
	buf, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	buf[len(buf)/2] ^= 0xff
	os.WriteFile(state, buf, 0o600)
	_, err = cluster.New(s.Config)
	if err == nil || !strings.Contains(err.Error(), "snapshot "+state+" is corrupt") {
		t.Fatalf("corrupt state.bin: err = %v", err)
	}
	meta := filepath.Join(dirs[len(dirs)-1], "meta.json")
	os.WriteFile(meta, []byte("{not json"), 0o600)
	_, err = cluster.New(s.Config)
	if err == nil || !strings.Contains(err.Error(), "snapshot "+meta+" is corrupt") {
		t.Fatalf("corrupt meta.json: err = %v", err)
	}
	_ = clustertest.Logger
}
