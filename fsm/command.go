package fsm

import (
	"encoding/binary"
	"fmt"
	"math"
)

// CommandType is the first byte of every Raft log entry the store applies.
// New types only at the end; the high bit means "skip if unknown".
type CommandType uint8

const (
	// CmdTxn carries an encoded Txn.
	CmdTxn CommandType = 1
	// SkipIfUnknown is the high bit: a store that does not know the type ignores the entry.
	SkipIfUnknown CommandType = 0x80
)

// Wire format of a CmdTxn payload (after the type byte). Every integer is an
// unsigned varint (encoding/binary) in its shortest form; bytes are a varint
// length then the bytes:
//
//	ncompares  { target:u8  key:bytes  modRevision:uvarint }*ncompares
//	nops       { type:u8    key:bytes  [OpPut: value:bytes  expiresAt:uvarint] }*nops
//
// Decoding is strict: shortest varints only, no trailing bytes, so a payload
// has exactly one encoding and EncodeTxn(DecodeTxn(p)) == p. The layout of an
// op depends on its type, so a new op type or compare target needs a new
// CommandType, not a new value here.

// EncodeTxn validates t (Txn.Validate) and encodes it as a Raft log entry:
// the CmdTxn byte then the payload.
func EncodeTxn(t *Txn) ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	buf := make([]byte, 0, 1+t.encodedSize())
	buf = append(buf, byte(CmdTxn))
	return appendTxn(buf, t), nil
}

// appendTxn appends the payload of t to buf. t must have known op types and
// compare targets (Validate checks that); it does not check limits.
func appendTxn(buf []byte, t *Txn) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(t.Compares)))
	for i := range t.Compares {
		c := &t.Compares[i]
		buf = append(buf, byte(c.Target))
		buf = appendString(buf, c.Key)
		buf = binary.AppendUvarint(buf, c.ModRevision)
	}
	buf = binary.AppendUvarint(buf, uint64(len(t.Ops)))
	for i := range t.Ops {
		op := &t.Ops[i]
		buf = append(buf, byte(op.Type))
		buf = appendString(buf, op.Key)
		if op.Type == OpPut {
			buf = binary.AppendUvarint(buf, uint64(len(op.Value)))
			buf = append(buf, op.Value...)
			buf = binary.AppendUvarint(buf, uint64(op.ExpiresAt))
		}
	}
	return buf
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

// uvarintLen is the encoded size of v.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// encodedSize is len(appendTxn(nil, t)).
func (t *Txn) encodedSize() int {
	n := uvarintLen(uint64(len(t.Compares))) + uvarintLen(uint64(len(t.Ops)))
	for i := range t.Compares {
		c := &t.Compares[i]
		n += 1 + uvarintLen(uint64(len(c.Key))) + len(c.Key) + uvarintLen(c.ModRevision)
	}
	for i := range t.Ops {
		op := &t.Ops[i]
		n += 1 + uvarintLen(uint64(len(op.Key))) + len(op.Key)
		if op.Type == OpPut {
			n += uvarintLen(uint64(len(op.Value))) + len(op.Value) + uvarintLen(uint64(op.ExpiresAt))
		}
	}
	return n
}

// decoder reads a payload; the first error sticks and later reads return zero values.
type decoder struct {
	buf []byte
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("offset %d: %s", d.off, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf[d.off:])
	switch {
	case n == 0:
		d.fail("%s: truncated varint", what)
		return 0
	case n < 0:
		d.fail("%s: varint overflows 64 bits", what)
		return 0
	case n > 1 && d.buf[d.off+n-1] == 0:
		// A last byte of zero means a shorter encoding existed.
		d.fail("%s: varint not in shortest form", what)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) u8(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.buf) {
		d.fail("%s: truncated", what)
		return 0
	}
	b := d.buf[d.off]
	d.off++
	return b
}

// bytes returns the next length-prefixed field, aliasing buf.
func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.buf)-d.off) {
		d.fail("%s: length %d exceeds the %d bytes left", what, n, len(d.buf)-d.off)
		return nil
	}
	b := d.buf[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return b
}

// count reads an element count and checks that count elements of at least
// minSize bytes each fit in what is left, so garbage cannot make us allocate.
func (d *decoder) count(what string, minSize int) int {
	n := d.uvarint(what)
	if d.err != nil {
		return 0
	}
	if left := uint64(len(d.buf) - d.off); n > left/uint64(minSize) {
		d.fail("%s: %d entries cannot fit in %d bytes", what, n, left)
		return 0
	}
	return int(n)
}

// Smallest encodings: a compare is target, key length, modRevision; an op is
// type and key length (a delete of the empty key).
const (
	minCompareSize = 3
	minOpSize      = 2
)

// DecodeTxn decodes the payload EncodeTxn made (after the type byte). It never
// panics: garbage gives an error. Keys and values are copied, so the result
// does not alias buf. A zero-length value decodes as nil. DecodeTxn checks
// the encoding only; limits are Txn.Validate's job.
func DecodeTxn(buf []byte) (*Txn, error) {
	d := decoder{buf: buf}
	t := &Txn{}
	// Slices grow as entries decode, so a garbage count cannot allocate
	// more than the entries actually present.
	if n := d.count("compare count", minCompareSize); n > 0 {
		t.Compares = make([]Compare, 0, min(n, MaxTxnOps))
		for i := 0; i < n && d.err == nil; i++ {
			c := Compare{Target: CompareTarget(d.u8("compare target"))}
			c.Key = string(d.bytes("compare key"))
			c.ModRevision = d.uvarint("compare modRevision")
			if d.err == nil && !c.Target.known() {
				d.fail("compare %d: unknown target %d", i, c.Target)
			}
			t.Compares = append(t.Compares, c)
		}
	}
	if n := d.count("op count", minOpSize); n > 0 {
		t.Ops = make([]Op, 0, min(n, MaxTxnOps))
		for i := 0; i < n && d.err == nil; i++ {
			op := Op{Type: OpType(d.u8("op type"))}
			op.Key = string(d.bytes("op key"))
			switch op.Type {
			case OpPut:
				if v := d.bytes("op value"); len(v) > 0 {
					op.Value = append([]byte(nil), v...)
				}
				exp := d.uvarint("op expiresAt")
				if exp > math.MaxInt64 {
					d.fail("op %d: expiresAt %d overflows int64", i, exp)
				}
				op.ExpiresAt = int64(exp)
			case OpDelete:
			default:
				d.fail("op %d: unknown type %d", i, op.Type)
			}
			t.Ops = append(t.Ops, op)
		}
	}
	if d.err == nil && d.off != len(buf) {
		d.fail("%d trailing bytes", len(buf)-d.off)
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode txn: %w", d.err)
	}
	return t, nil
}

func (c CompareTarget) known() bool {
	return c == CompareExists || c == CompareAbsent || c == CompareModRevision
}

// Validate checks the limits and shape of a transaction before it reaches
// Raft. Errors wrap ErrInvalidTxn, ErrValueTooLarge or ErrTxnTooLarge and
// name the offending compare or op. Apply never calls Validate: limits may
// change between versions, and a committed entry must apply the same way on
// every master.
func (t *Txn) Validate() error {
	if t == nil {
		return fmt.Errorf("nil txn: %w", ErrInvalidTxn)
	}
	if n := len(t.Compares) + len(t.Ops); n > MaxTxnOps {
		return fmt.Errorf("txn has %d compares and ops, limit %d: %w", n, MaxTxnOps, ErrTxnTooLarge)
	}
	for i := range t.Compares {
		c := &t.Compares[i]
		if err := checkKey(c.Key); err != nil {
			return fmt.Errorf("compare %d%s: %w", i, keyPart(c.Key), err)
		}
		if !c.Target.known() {
			return fmt.Errorf("compare %d key %s: unknown target %d: %w", i, c.Key, c.Target, ErrInvalidTxn)
		}
	}
	for i := range t.Ops {
		op := &t.Ops[i]
		if err := checkKey(op.Key); err != nil {
			return fmt.Errorf("op %d%s: %w", i, keyPart(op.Key), err)
		}
		switch op.Type {
		case OpPut:
			if len(op.Value) > MaxValueSize {
				return fmt.Errorf("op %d key %s: value is %d bytes, limit %d: %w",
					i, op.Key, len(op.Value), MaxValueSize, ErrValueTooLarge)
			}
			if op.ExpiresAt < 0 {
				return fmt.Errorf("op %d key %s: negative expiresAt %d: %w", i, op.Key, op.ExpiresAt, ErrInvalidTxn)
			}
		case OpDelete:
			if op.Value != nil || op.ExpiresAt != 0 {
				return fmt.Errorf("op %d key %s: delete carries a value or expiresAt: %w", i, op.Key, ErrInvalidTxn)
			}
		default:
			return fmt.Errorf("op %d key %s: unknown type %d: %w", i, op.Key, op.Type, ErrInvalidTxn)
		}
	}
	if n := t.encodedSize(); n > MaxTxnBytes {
		return fmt.Errorf("txn is %d bytes encoded, limit %d: %w", n, MaxTxnBytes, ErrTxnTooLarge)
	}
	return nil
}

func checkKey(k string) error {
	if k == "" {
		return fmt.Errorf("empty key: %w", ErrInvalidTxn)
	}
	if len(k) > MaxKeySize {
		return fmt.Errorf("key is %d bytes, limit %d: %w", len(k), MaxKeySize, ErrInvalidTxn)
	}
	return nil
}

// keyPart names a bad key in an error message, if there is one.
func keyPart(k string) string {
	if k == "" {
		return ""
	}
	return " key " + shortKey(k)
}

// shortKey keeps error messages readable when a key is over the limit.
func shortKey(k string) string {
	const max = 64
	if len(k) <= max {
		return k
	}
	return k[:max] + "..."
}
