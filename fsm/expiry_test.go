package fsm

import (
	"bytes"
	"io"
	"reflect"
	"testing"
	"time"
)

func TestExpiryIndex(t *testing.T) {
	at := func(ns int64) time.Time { return time.Unix(0, ns) }
	keys := func(kvs []*KeyValue) []string {
		out := []string{}
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	putExp := func(s *Store, key string, exp int64) {
		apply(t, s, &Txn{Ops: []Op{{Type: OpPut, Key: key, Value: []byte("v"), ExpiresAt: exp}}})
	}
	cases := []struct {
		name  string
		setup func(s *Store)
		now   int64
		limit int
		want  []string
	}{
		{"none", func(s *Store) { put(t, s, "/a", "v") }, 1 << 62, 0, []string{}},
		{"due and not due", func(s *Store) { putExp(s, "/a", 100); putExp(s, "/b", 200) }, 150, 0, []string{"/a"}},
		{"boundary is due", func(s *Store) { putExp(s, "/a", 100) }, 100, 0, []string{"/a"}},
		{"oldest first, ties by key", func(s *Store) {
			putExp(s, "/c", 50)
			putExp(s, "/b", 70)
			putExp(s, "/a", 70)
			putExp(s, "/d", 10)
		}, 100, 0, []string{"/d", "/c", "/a", "/b"}},
		{"limit", func(s *Store) { putExp(s, "/a", 1); putExp(s, "/b", 2); putExp(s, "/c", 3) }, 100, 2, []string{"/a", "/b"}},
		{"overwrite moves it", func(s *Store) { putExp(s, "/a", 100); putExp(s, "/a", 300) }, 200, 0, []string{}},
		{"overwrite without expiresAt clears it", func(s *Store) { putExp(s, "/a", 100); put(t, s, "/a", "v") }, 200, 0, []string{}},
		{"delete clears it", func(s *Store) { putExp(s, "/a", 100); putExp(s, "/b", 100); del(t, s, "/a") }, 200, 0, []string{"/b"}},
		{"delete and re-put in one txn", func(s *Store) {
			putExp(s, "/a", 100)
			apply(t, s, &Txn{Ops: []Op{{Type: OpDelete, Key: "/a"}, {Type: OpPut, Key: "/a", Value: []byte("v"), ExpiresAt: 150}}})
		}, 120, 0, []string{}},
		{"failed txn leaves it", func(s *Store) {
			putExp(s, "/a", 100)
			apply(t, s, &Txn{Compares: []Compare{{Key: "/a", Target: CompareAbsent}}, Ops: []Op{{Type: OpDelete, Key: "/a"}}})
		}, 120, 0, []string{"/a"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			tc.setup(s)
			got := s.Expired(at(tc.now), tc.limit)
			if !reflect.DeepEqual(keys(got), tc.want) {
				t.Fatalf("Expired = %q, want %q", keys(got), tc.want)
			}
			for _, kv := range got {
				if kv.ExpiresAt == 0 || kv.ExpiresAt > tc.now {
					t.Fatalf("%+v is not due", kv)
				}
			}
			// The index survives a snapshot.
			r := New(Config{})
			if err := r.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, s)))); err != nil {
				t.Fatal(err)
			}
			if got := r.Expired(at(tc.now), tc.limit); !reflect.DeepEqual(keys(got), tc.want) {
				t.Fatalf("after restore Expired = %q, want %q", keys(got), tc.want)
			}
			if r.expiry.Len() != s.expiry.Len() {
				t.Fatalf("index sizes %d vs %d", r.expiry.Len(), s.expiry.Len())
			}
		})
	}
}
