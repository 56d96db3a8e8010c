package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

// populate writes a mix of creates, updates, deletes and expiring keys.
func populate(t testing.TB, s *Store) {
	t.Helper()
	for i := range 200 {
		put(t, s, fmt.Sprintf("/core/pods/ns%d/p%03d", i%3, i), strings.Repeat("x", i))
	}
	for i := 0; i < 200; i += 7 {
		del(t, s, fmt.Sprintf("/core/pods/ns%d/p%03d", i%3, i))
	}
	for i := 0; i < 200; i += 5 {
		put(t, s, fmt.Sprintf("/core/pods/ns%d/p%03d", i%3, i), "updated")
	}
	for i := range 10 {
		apply(t, s, &Txn{Ops: []Op{{Type: OpPut, Key: fmt.Sprintf("/leases/l%d", i), Value: []byte("l"), ExpiresAt: int64(1000 + i)}}})
	}
	put(t, s, "/empty", "")
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := New(Config{})
	populate(t, src)
	data := snapshotBytes(t, src)

	dst := New(Config{})
	put(t, dst, "/stale/key", "must disappear")
	if err := dst.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	r1, h1 := src.Hash()
	r2, h2 := dst.Hash()
	if r1 != r2 || h1 != h2 || dst.Revision() != src.Revision() {
		t.Fatalf("hash %d/%x vs %d/%x", r1, h1, r2, h2)
	}
	if a, b := dump(t, src, ""), dump(t, dst, ""); !reflect.DeepEqual(a, b) {
		t.Fatalf("lists differ: %d vs %d keys", len(a), len(b))
	}
	if kv, _ := dst.Get("/stale/key"); kv != nil {
		t.Fatal("restore kept old state")
	}
	if a, b := src.Expired(time.Unix(0, 1005), 0), dst.Expired(time.Unix(0, 1005), 0); len(a) != 6 || !reflect.DeepEqual(a, b) {
		t.Fatalf("expiry index: %d vs %d", len(a), len(b))
	}
	if kv, _ := dst.Get("/empty"); kv == nil || len(kv.Value) != 0 {
		t.Fatalf("/empty = %+v", kv)
	}
	// A snapshot of the restored store is byte for byte the same.
	if again := snapshotBytes(t, dst); !bytes.Equal(again, data) {
		t.Fatal("snapshot of restored store differs")
	}
	// Applying continues after the snapshot's revision.
	put(t, dst, "/after", "restore")
	if kv, _ := dst.Get("/after"); kv.ModRevision != r1+1 {
		t.Fatalf("after restore: %+v", kv)
	}
}

func TestSnapshotIsPointInTime(t *testing.T) {
	s := New(Config{})
	populate(t, s)
	rev, hash := s.Hash()
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	// Writes after Snapshot (while raft would be persisting) do not leak in.
	for i := range 100 {
		put(t, s, fmt.Sprintf("/core/pods/ns0/p%03d", i), "later")
		del(t, s, fmt.Sprintf("/leases/l%d", i%10))
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	dst := New(Config{})
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if r, h := dst.Hash(); r != rev || h != hash {
		t.Fatalf("restored %d/%x, snapshot taken at %d/%x", r, h, rev, hash)
	}
}

func TestPersistCancelsOnError(t *testing.T) {
	s := New(Config{})
	populate(t, s)
	size := len(snapshotBytes(t, s))
	snap, _ := s.Snapshot()
	for _, failAfter := range []int{1, 100, size / 2, size - 1} {
		sink := &memSink{failAfter: failAfter}
		err := snap.Persist(sink)
		if !errors.Is(err, errSinkFull) || !sink.cancelled || sink.closed {
			t.Fatalf("failAfter %d: err %v cancelled %v closed %v", failAfter, err, sink.cancelled, sink.closed)
		}
	}
}

func TestRestoreResetsWatchersHistoryViews(t *testing.T) {
	src := New(Config{})
	populate(t, src)
	data := snapshotBytes(t, src)

	s := New(Config{})
	for i := range 600 {
		put(t, s, fmt.Sprintf("/a/%d", i), "v")
	}
	w1, _ := s.Watch("/a/", 0)
	w2, _ := s.Watch("", 3)
	page, err := s.List("/a/", ListOptions{Limit: 2})
	if err != nil || !page.More {
		t.Fatal(err)
	}
	if err := s.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*Watcher{w1, w2} {
		if err := expectClosed(t, w, waitTime); !errors.Is(err, ErrRestored) {
			t.Fatalf("watcher ended with %v", err)
		}
	}
	rev := s.Revision()
	if rev != src.Revision() {
		t.Fatalf("revision %d, want %d", rev, src.Revision())
	}
	if _, err := s.Watch("/", rev-1); !errors.Is(err, ErrCompacted) {
		t.Fatalf("watch before the snapshot: %v", err)
	}
	if _, err := s.List("/a/", ListOptions{Revision: page.Revision, After: page.KVs[1].Key}); err == nil {
		t.Fatal("list view survived a restore")
	}
	w, err := s.Watch("/", rev)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	put(t, s, "/new", "v")
	if ev := recv(t, w, 1, waitTime)[0]; ev.Revision != rev+1 || ev.KV.Key != "/new" {
		t.Fatalf("event after restore %+v", ev)
	}
	waitFor(t, waitTime, "old watchers removed", func() bool { return s.Stats().Watchers == 1 })
	if st := s.Stats(); st.History != 1 {
		t.Fatalf("history %d after restore and one put", st.History)
	}
}

func TestRestoreRejectsCorrupt(t *testing.T) {
	src := New(Config{})
	populate(t, src)
	good := snapshotBytes(t, src)

	type tc struct {
		name string
		data []byte
	}
	mutate := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	cases := []tc{
		{"empty", nil},
		{"bad magic", mutate(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"bad version", mutate(func(b []byte) []byte { b[8] = 2; return b })},
		{"trailing garbage", mutate(func(b []byte) []byte { return append(b, 0) })},
		{"huge record length", append(append([]byte(nil), good[:10]...), 0xff, 0xff, 0xff, 0xff, 0x0f)},
	}
	// Truncation anywhere, and a flipped bit anywhere, is caught.
	step := max(1, len(good)/300)
	for n := 0; n < len(good); n += step {
		cases = append(cases, tc{fmt.Sprintf("truncated to %d", n), good[:n]})
	}
	cases = append(cases, tc{"truncated by one", good[:len(good)-1]})
	for i := 0; i < len(good); i += step {
		cases = append(cases, tc{fmt.Sprintf("bit flipped at %d", i), mutate(func(b []byte) []byte { b[i] ^= 0x10; return b })})
	}

	s := New(Config{})
	put(t, s, "/keep/me", "1")
	put(t, s, "/keep/too", "2")
	w, _ := s.Watch("/keep/", 0)
	defer w.Stop()
	rev, hash := s.Hash()
	for _, c := range cases {
		err := s.Restore(io.NopCloser(bytes.NewReader(c.data)))
		if err == nil {
			t.Fatalf("%s: restored", c.name)
		}
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("%s: error %v is not ErrCorruptSnapshot", c.name, err)
		}
		if r, h := s.Hash(); r != rev || h != hash {
			t.Fatalf("%s: state changed", c.name)
		}
	}
	if w.Err() != nil {
		t.Fatalf("watcher closed by a failed restore: %v", w.Err())
	}
	put(t, s, "/keep/3", "3")
	if ev := recv(t, w, 1, waitTime)[0]; ev.KV.Key != "/keep/3" {
		t.Fatalf("event %+v", ev)
	}
}

// errReader fails after its data, like a broken connection.
type errReader struct{ r io.Reader }

func (e errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, errors.New("connection reset")
	}
	return n, err
}

func TestRestoreReadError(t *testing.T) {
	src := New(Config{})
	populate(t, src)
	good := snapshotBytes(t, src)
	s := New(Config{})
	err := s.Restore(io.NopCloser(errReader{bytes.NewReader(good[:len(good)/2])}))
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("err %v", err)
	}
}
