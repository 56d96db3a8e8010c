package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		txn  *Txn
	}{
		{"empty", &Txn{}},
		{"one put", &Txn{Ops: []Op{{Type: OpPut, Key: "/core/pods/ns/a", Value: []byte(`{"x":1}`)}}}},
		{"put empty value", &Txn{Ops: []Op{{Type: OpPut, Key: "/k"}}}},
		{"put with expiry", &Txn{Ops: []Op{{Type: OpPut, Key: "/k", Value: []byte("v"), ExpiresAt: 1_700_000_000_000_000_000}}}},
		{"delete", &Txn{Ops: []Op{{Type: OpDelete, Key: "/k"}}}},
		{"every compare", &Txn{
			Compares: []Compare{
				{Key: "/a", Target: CompareExists},
				{Key: "/b", Target: CompareAbsent},
				{Key: "/c", Target: CompareModRevision, ModRevision: 1 << 40},
			},
			Ops: []Op{
				{Type: OpPut, Key: "/a", Value: bytes.Repeat([]byte{0xff}, 300)},
				{Type: OpDelete, Key: "/c"},
			},
		}},
		{"binary key", &Txn{Ops: []Op{{Type: OpPut, Key: "/\x00\xff/é", Value: []byte{0}}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, err := EncodeTxn(tc.txn)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			if CommandType(data[0]) != CmdTxn {
				t.Fatalf("type byte %d, want %d", data[0], CmdTxn)
			}
			if len(data) != 1+tc.txn.encodedSize() {
				t.Fatalf("encoded %d bytes, encodedSize says %d", len(data)-1, tc.txn.encodedSize())
			}
			got, err := DecodeTxn(data[1:])
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, normalize(tc.txn)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.txn)
			}
			// The decoded txn must not alias the buffer.
			for i := range data {
				data[i] = 0xAA
			}
			if !reflect.DeepEqual(got, normalize(tc.txn)) {
				t.Fatal("decoded txn changed with its buffer")
			}
		})
	}
}

// normalize maps a txn to what decoding it gives: nil slices and values
// for empty ones.
func normalize(t *Txn) *Txn {
	out := &Txn{}
	if len(t.Compares) > 0 {
		out.Compares = append([]Compare(nil), t.Compares...)
	}
	for _, op := range t.Ops {
		if len(op.Value) == 0 {
			op.Value = nil
		}
		out.Ops = append(out.Ops, op)
	}
	return out
}

func TestDecodeTxnRejectsGarbage(t *testing.T) {
	valid := mustEncode(t, &Txn{
		Compares: []Compare{{Key: "/a", Target: CompareModRevision, ModRevision: 300}},
		Ops:      []Op{{Type: OpPut, Key: "/a", Value: []byte("hello"), ExpiresAt: 5}},
	})[1:]
	cases := []struct {
		name string
		buf  []byte
		want string
	}{
		{"empty", nil, "truncated varint"},
		{"huge compare count", []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, "cannot fit"},
		{"huge op count", []byte{0x00, 0xff, 0xff, 0x03}, "cannot fit"},
		{"varint overflow", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "overflows"},
		{"non-minimal varint", []byte{0x80, 0x00, 0x00}, "shortest form"},
		{"unknown compare target", []byte{1, 9, 1, 'k', 0, 0}, "unknown target"},
		{"unknown op type", []byte{0, 1, 7, 1, 'k'}, "unknown type"},
		{"key longer than buffer", []byte{0, 1, byte(OpDelete), 50, 'k'}, "exceeds"},
		{"value longer than buffer", []byte{0, 1, byte(OpPut), 1, 'k', 9, 'v', 0}, "exceeds"},
		{"expiresAt overflows int64", []byte{0, 1, byte(OpPut), 1, 'k', 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "overflows int64"},
		{"trailing bytes", append(append([]byte(nil), valid...), 0), "trailing"},
		{"truncated", valid[:len(valid)-1], "truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			txn, err := DecodeTxn(tc.buf)
			if err == nil {
				t.Fatalf("decoded garbage into %+v", txn)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
	// Every strict prefix of a valid payload fails cleanly.
	for i := range len(valid) {
		if _, err := DecodeTxn(valid[:i]); err == nil {
			t.Fatalf("prefix of %d bytes decoded", i)
		}
	}
}

func TestValidate(t *testing.T) {
	key := "/core/pods/a/b"
	ops := func(n int) []Op {
		out := make([]Op, n)
		for i := range out {
			out[i] = Op{Type: OpDelete, Key: key}
		}
		return out
	}
	cases := []struct {
		name string
		txn  *Txn
		want error
		msg  string
	}{
		{"ok", &Txn{Ops: []Op{{Type: OpPut, Key: key, Value: []byte("v")}}}, nil, ""},
		{"empty txn is fine", &Txn{}, nil, ""},
		{"max value", &Txn{Ops: []Op{{Type: OpPut, Key: key, Value: make([]byte, MaxValueSize)}}}, nil, ""},
		{"max ops", &Txn{Ops: ops(MaxTxnOps)}, nil, ""},
		{"nil", nil, ErrInvalidTxn, "nil txn"},
		{"empty op key", &Txn{Ops: []Op{{Type: OpPut}}}, ErrInvalidTxn, "op 0: empty key: invalid transaction"},
		{"empty compare key", &Txn{Compares: []Compare{{Target: CompareExists}}}, ErrInvalidTxn, "compare 0"},
		{"long key", &Txn{Ops: []Op{{Type: OpDelete, Key: strings.Repeat("k", MaxKeySize+1)}}}, ErrInvalidTxn, "op 0 key kkkk"}, // shortened
		{"long key limit", &Txn{Ops: []Op{{Type: OpDelete, Key: strings.Repeat("k", MaxKeySize+1)}}}, ErrInvalidTxn, "...: key is 4097 bytes, limit 4096"},
		{"unknown op", &Txn{Ops: []Op{{Type: 9, Key: key}}}, ErrInvalidTxn, "unknown type 9"},
		{"zero op", &Txn{Ops: []Op{{Key: key}}}, ErrInvalidTxn, "unknown type 0"},
		{"unknown compare", &Txn{Compares: []Compare{{Key: key, Target: 7}}}, ErrInvalidTxn, "unknown target 7"},
		{"negative expiry", &Txn{Ops: []Op{{Type: OpPut, Key: key, ExpiresAt: -1}}}, ErrInvalidTxn, "negative expiresAt"},
		{"delete with value", &Txn{Ops: []Op{{Type: OpDelete, Key: key, Value: []byte("x")}}}, ErrInvalidTxn, "delete carries"},
		{"value too large", &Txn{Ops: []Op{
			{Type: OpDelete, Key: "/x"}, {Type: OpDelete, Key: "/y"}, {Type: OpDelete, Key: "/z"},
			{Type: OpPut, Key: key, Value: make([]byte, 2000000)},
		}}, ErrValueTooLarge, "op 3 key /core/pods/a/b: value is 2000000 bytes, limit 1572864: value too large"},
		{"too many ops", &Txn{Ops: ops(MaxTxnOps + 1)}, ErrTxnTooLarge, "1001 compares and ops, limit 1000"},
		{"too many entries", &Txn{Compares: make([]Compare, 600), Ops: ops(401)}, ErrTxnTooLarge, "1001 compares and ops"},
		{"too many bytes", &Txn{Ops: []Op{
			{Type: OpPut, Key: "/1", Value: make([]byte, MaxValueSize)},
			{Type: OpPut, Key: "/2", Value: make([]byte, MaxValueSize)},
			{Type: OpPut, Key: "/3", Value: make([]byte, MaxValueSize)},
		}}, ErrTxnTooLarge, "bytes encoded, limit 4194304"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.txn.Validate()
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Validate = %v, want %v", err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
			if _, encErr := EncodeTxn(tc.txn); !errors.Is(encErr, tc.want) || (tc.want == nil) != (encErr == nil) {
				t.Fatalf("EncodeTxn error %v, want %v", encErr, tc.want)
			}
		})
	}
}

func FuzzDecodeTxn(f *testing.F) {
	seeds := []*Txn{
		{},
		{Ops: []Op{{Type: OpPut, Key: "/core/pods/ns/a", Value: []byte("v"), ExpiresAt: 12345}}},
		{Compares: []Compare{{Key: "/a", Target: CompareAbsent}, {Key: "/b", Target: CompareModRevision, ModRevision: 77}},
			Ops: []Op{{Type: OpDelete, Key: "/b"}, {Type: OpPut, Key: "/a"}}},
	}
	for _, s := range seeds {
		f.Add(mustEncode(f, s)[1:])
	}
	f.Add([]byte{0x80, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		txn, err := DecodeTxn(data)
		if err != nil {
			return
		}
		// Decoding is strict, so a payload has one encoding.
		if again := appendTxn(nil, txn); !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, data)
		}
		if txn.Validate() == nil {
			enc, err := EncodeTxn(txn)
			if err != nil {
				t.Fatalf("encode valid txn: %v", err)
			}
			if !bytes.Equal(enc[1:], data) || len(enc)-1 != txn.encodedSize() {
				t.Fatalf("EncodeTxn differs:\n got %x\nwant %x", enc[1:], data)
			}
		}
	})
}
