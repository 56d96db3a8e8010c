package fsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"

	"github.com/google/btree"
	"github.com/hashicorp/raft"
)

// Snapshot stream, version 1. Integers are unsigned varints unless noted.
//
//	header   magic "FLOTSNAP", version byte 1, revision
//	records  one per key in key order: body length (> 0), then the body
//	         key:bytes value:bytes createRevision modRevision expiresAt
//	trailer  0 (an empty record: the end), record count,
//	         CRC-32C of every byte before it (4 bytes, big endian)
//
// The trailer makes a truncated or corrupted stream fail Restore instead of
// restoring part of the state.

const (
	snapshotMagic   = "FLOTSNAP"
	snapshotVersion = 1
	// maxRecordSize bounds one record so a corrupt length cannot make
	// Restore allocate without limit (the largest valid record is under
	// MaxKeySize + MaxValueSize + 50 bytes).
	maxRecordSize = 16 << 20
)

// ErrCorruptSnapshot: Restore read a snapshot that is truncated, corrupt or
// of an unknown version; the store was left as it was.
var ErrCorruptSnapshot = errors.New("corrupt snapshot")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot implements raft.FSM. It only takes a copy-on-write clone of the
// tree at the current revision; Persist writes it while Apply goes on.
func (s *Store) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{v: s.currentView(), s: s}, nil
}

type fsmSnapshot struct {
	v *view
	s *Store
}

// Persist implements raft.FSMSnapshot. It streams one record per key
// through a buffer; on any error it cancels the sink.
func (p *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	n, err := writeSnapshot(sink, p.v)
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot at revision %d: %w", p.v.rev, err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("close snapshot at revision %d: %w", p.v.rev, err)
	}
	p.s.log.Info("persisted snapshot", "revision", p.v.rev, "keys", n, "id", sink.ID())
	return nil
}

// Release implements raft.FSMSnapshot. The clone is garbage once dropped.
func (p *fsmSnapshot) Release() {}

// crcWriter sums everything written through it.
type crcWriter struct {
	w   io.Writer
	crc uint32
}

func (c *crcWriter) Write(p []byte) (int, error) {
	c.crc = crc32.Update(c.crc, castagnoli, p)
	return c.w.Write(p)
}

func writeSnapshot(w io.Writer, v *view) (int, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	cw := &crcWriter{w: bw}
	buf := append([]byte(snapshotMagic), snapshotVersion)
	buf = binary.AppendUvarint(buf, v.rev)
	if _, err := cw.Write(buf); err != nil {
		return 0, err
	}
	var err error
	n := 0
	v.tree.Ascend(func(kv *KeyValue) bool {
		// The value is written from where it lies, not copied into buf.
		buf = binary.AppendUvarint(buf[:0], uint64(recordSize(kv)))
		buf = appendRecordHead(buf, kv)
		if _, err = cw.Write(buf); err != nil {
			return false
		}
		if _, err = cw.Write(kv.Value); err != nil {
			return false
		}
		if _, err = cw.Write(appendRecordTail(buf[:0], kv)); err != nil {
			return false
		}
		n++
		return true
	})
	if err != nil {
		return n, err
	}
	buf = binary.AppendUvarint(buf[:0], 0)
	buf = binary.AppendUvarint(buf, uint64(n))
	if _, err := cw.Write(buf); err != nil {
		return n, err
	}
	if _, err := bw.Write(binary.BigEndian.AppendUint32(buf[:0], cw.crc)); err != nil {
		return n, err
	}
	return n, bw.Flush()
}

// appendRecordHead appends a record body up to the value bytes.
func appendRecordHead(buf []byte, kv *KeyValue) []byte {
	buf = appendString(buf, kv.Key)
	return binary.AppendUvarint(buf, uint64(len(kv.Value)))
}

// appendRecordTail appends the rest of a record body after the value.
func appendRecordTail(buf []byte, kv *KeyValue) []byte {
	buf = binary.AppendUvarint(buf, kv.CreateRevision)
	buf = binary.AppendUvarint(buf, kv.ModRevision)
	return binary.AppendUvarint(buf, uint64(kv.ExpiresAt))
}

func recordSize(kv *KeyValue) int {
	return uvarintLen(uint64(len(kv.Key))) + len(kv.Key) +
		uvarintLen(uint64(len(kv.Value))) + len(kv.Value) +
		uvarintLen(kv.CreateRevision) + uvarintLen(kv.ModRevision) + uvarintLen(uint64(kv.ExpiresAt))
}

// Restore implements raft.FSM. It reads the whole stream into new state
// aside, checking order, revisions, count and checksum; only then does it
// swap the state in. Every watcher ends with ErrRestored, the watch history
// starts over at the snapshot's revision (older watches get ErrCompacted)
// and retained list views are dropped. On error the store is unchanged.
func (s *Store) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := readSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}

	s.mu.Lock()
	s.tree = st.tree
	s.expiry = st.expiry
	s.rev.Store(st.rev)
	s.cur = nil
	s.hist = newHistory(st.rev)
	s.closeWatchers(ErrRestored)
	if s.revCh != nil {
		close(s.revCh)
		s.revCh = nil
	}
	s.mu.Unlock()

	s.viewsMu.Lock()
	clear(s.views)
	s.viewsMu.Unlock()

	s.log.Info("restored snapshot", "revision", st.rev, "keys", st.tree.Len())
	return nil
}

type restored struct {
	tree   *btree.BTreeG[*KeyValue]
	expiry *btree.BTreeG[expiryItem]
	rev    uint64
}

// crcReader sums everything read through it.
type crcReader struct {
	r   *bufio.Reader
	crc uint32
	one [1]byte
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.one[0] = b
		c.crc = crc32.Update(c.crc, castagnoli, c.one[:])
	}
	return b, err
}

func (c *crcReader) full(buf []byte) error {
	if _, err := io.ReadFull(c.r, buf); err != nil {
		return err
	}
	c.crc = crc32.Update(c.crc, castagnoli, buf)
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

// truncated turns an EOF in the middle of the stream into a corruption error.
func truncated(what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt("%s: truncated", what)
	}
	return fmt.Errorf("read %s: %w", what, err)
}

func readSnapshot(r io.Reader) (*restored, error) {
	cr := &crcReader{r: bufio.NewReaderSize(r, 64<<10)}
	head := make([]byte, len(snapshotMagic)+1)
	if err := cr.full(head); err != nil {
		return nil, truncated("header", err)
	}
	if string(head[:len(snapshotMagic)]) != snapshotMagic {
		return nil, corrupt("bad magic %q", head[:len(snapshotMagic)])
	}
	if v := head[len(snapshotMagic)]; v != snapshotVersion {
		return nil, corrupt("unknown version %d", v)
	}
	rev, err := binary.ReadUvarint(cr)
	if err != nil {
		return nil, truncated("header", err)
	}

	st := &restored{tree: newTree(), expiry: newExpiryIndex(), rev: rev}
	var body []byte
	var prev string
	n := 0
	for ; ; n++ {
		size, err := binary.ReadUvarint(cr)
		if err != nil {
			return nil, truncated(fmt.Sprintf("record %d", n), err)
		}
		if size == 0 {
			break
		}
		if size > maxRecordSize {
			return nil, corrupt("record %d: %d bytes, limit %d", n, size, maxRecordSize)
		}
		if uint64(cap(body)) < size {
			body = make([]byte, size)
		}
		body = body[:size]
		if err := cr.full(body); err != nil {
			return nil, truncated(fmt.Sprintf("record %d", n), err)
		}
		kv, err := decodeRecord(body)
		if err != nil {
			return nil, corrupt("record %d: %v", n, err)
		}
		switch {
		case n > 0 && kv.Key <= prev:
			return nil, corrupt("record %d: key %q not after %q", n, shortKey(kv.Key), shortKey(prev))
		case kv.CreateRevision == 0 || kv.CreateRevision > kv.ModRevision || kv.ModRevision > rev:
			return nil, corrupt("record %d key %s: revisions create %d mod %d at snapshot revision %d",
				n, shortKey(kv.Key), kv.CreateRevision, kv.ModRevision, rev)
		}
		prev = kv.Key
		st.tree.ReplaceOrInsert(kv)
		if kv.ExpiresAt != 0 {
			st.expiry.ReplaceOrInsert(expiryItem{at: kv.ExpiresAt, key: kv.Key})
		}
	}
	count, err := binary.ReadUvarint(cr)
	if err != nil {
		return nil, truncated("trailer", err)
	}
	if count != uint64(n) {
		return nil, corrupt("trailer counts %d records, read %d", count, n)
	}
	want := cr.crc
	var sum [4]byte
	if _, err := io.ReadFull(cr.r, sum[:]); err != nil {
		return nil, truncated("trailer", err)
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return nil, corrupt("checksum %08x, computed %08x", got, want)
	}
	if _, err := cr.r.ReadByte(); err != io.EOF {
		if err == nil {
			return nil, corrupt("data after the trailer")
		}
		return nil, fmt.Errorf("read after trailer: %w", err)
	}
	return st, nil
}

// decodeRecord parses a record body; the key and value are copied out of it.
func decodeRecord(body []byte) (*KeyValue, error) {
	d := decoder{buf: body}
	key := d.bytes("key")
	value := d.bytes("value")
	kv := &KeyValue{
		CreateRevision: d.uvarint("createRevision"),
		ModRevision:    d.uvarint("modRevision"),
	}
	exp := d.uvarint("expiresAt")
	if d.err == nil && d.off != len(body) {
		d.fail("%d trailing bytes", len(body)-d.off)
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(key) == 0 {
		return nil, errors.New("empty key")
	}
	if exp > math.MaxInt64 {
		return nil, fmt.Errorf("expiresAt %d overflows int64", exp)
	}
	kv.Key = string(key)
	if len(value) > 0 {
		kv.Value = append([]byte(nil), value...)
	}
	kv.ExpiresAt = int64(exp)
	return kv, nil
}
