package linearizability

import (
	"os"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// Builders for hand-written histories.
func get(key string, call, ret int64, exists bool, value string, rev uint64) porcupine.Operation {
	return porcupine.Operation{Input: Input{Kind: Get, Key: key}, Call: call,
		Output: Output{Exists: exists, Value: value, ModRev: rev}, Return: ret}
}

func put(key, value string, call, ret int64, rev uint64) porcupine.Operation {
	return porcupine.Operation{Input: Input{Kind: Put, Key: key, Value: value}, Call: call,
		Output: Output{OK: true, Rev: rev}, Return: ret}
}

func putUnknown(key, value string, call int64) porcupine.Operation {
	return porcupine.Operation{Input: Input{Kind: Put, Key: key, Value: value}, Call: call,
		Output: Output{Unknown: true}, Return: Infinity}
}

func cas(key string, expect uint64, value string, call, ret int64, rev uint64) porcupine.Operation {
	return porcupine.Operation{Input: Input{Kind: CAS, Key: key, Value: value, Rev: expect}, Call: call,
		Output: Output{OK: true, Rev: rev}, Return: ret}
}

func casFailed(key string, expect uint64, value string, call, ret int64, exists bool, was string, wasRev uint64) porcupine.Operation {
	return porcupine.Operation{Input: Input{Kind: CAS, Key: key, Value: value, Rev: expect}, Call: call,
		Output: Output{Exists: exists, Value: was, ModRev: wasRev}, Return: ret}
}

func casUnknown(key string, expect uint64, value string, call int64) porcupine.Operation {
	return porcupine.Operation{Input: Input{Kind: CAS, Key: key, Value: value, Rev: expect}, Call: call,
		Output: Output{Unknown: true}, Return: Infinity}
}

func TestModel(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ops   []porcupine.Operation
		legal bool
	}{
		{"read your write", []porcupine.Operation{
			put("k", "a", 0, 10, 1), get("k", 11, 20, true, "a", 1)}, true},
		{"read of a never-written key", []porcupine.Operation{
			get("k", 0, 10, false, "", 0)}, true},
		{"stale read after an acknowledged overwrite", []porcupine.Operation{
			put("k", "a", 0, 10, 1), put("k", "b", 11, 20, 2), get("k", 21, 30, true, "a", 1)}, false},
		{"read concurrent with the overwrite may see the old value", []porcupine.Operation{
			put("k", "a", 0, 10, 1), put("k", "b", 5, 25, 2), get("k", 12, 20, true, "a", 1)}, true},
		{"read sees the value with another revision", []porcupine.Operation{
			put("k", "a", 0, 10, 1), get("k", 11, 20, true, "a", 2)}, false},
		{"value from nowhere", []porcupine.Operation{
			put("k", "a", 0, 10, 1), get("k", 11, 20, true, "z", 5)}, false},
		{"revision goes backwards", []porcupine.Operation{
			put("k", "a", 0, 10, 5), put("k", "b", 20, 30, 3)}, false},
		{"two readers disagree on the order", []porcupine.Operation{
			put("k", "a", 0, 100, 1), put("k", "b", 0, 100, 2),
			get("k", 10, 20, true, "b", 2), get("k", 30, 40, true, "a", 1)}, false},
		{"unknown put observed", []porcupine.Operation{
			putUnknown("k", "x", 0), get("k", 10, 20, true, "x", 5)}, true},
		{"unknown put never observed", []porcupine.Operation{
			putUnknown("k", "x", 0), get("k", 10, 20, false, "", 0)}, true},
		{"unknown put observed, then gone", []porcupine.Operation{
			putUnknown("k", "x", 0), get("k", 10, 20, true, "x", 5), get("k", 30, 40, false, "", 0)}, false},
		{"unknown put observed before it was called", []porcupine.Operation{
			get("k", 0, 10, true, "x", 5), putUnknown("k", "x", 20)}, false},
		{"unknown put observed at a revision below the key's", []porcupine.Operation{
			put("k", "a", 0, 10, 7), putUnknown("k", "x", 20), get("k", 30, 40, true, "x", 6)}, false},
		{"unknown put pinned by its first read", []porcupine.Operation{
			putUnknown("k", "x", 0), get("k", 10, 20, true, "x", 5), get("k", 30, 40, true, "x", 6)}, false},
		{"create with cas", []porcupine.Operation{
			get("k", 0, 10, false, "", 0),
			cas("k", 0, "a", 11, 20, 2),
			casFailed("k", 0, "b", 21, 30, true, "a", 2),
			get("k", 31, 40, true, "a", 2)}, true},
		{"cas failed although its compare held", []porcupine.Operation{
			put("k", "a", 0, 10, 2), casFailed("k", 2, "c", 11, 20, true, "a", 2)}, false},
		{"cas failed and reported a stale value", []porcupine.Operation{
			put("k", "a", 0, 10, 2), put("k", "b", 11, 20, 3), casFailed("k", 2, "c", 21, 30, true, "a", 2)}, false},
		{"cas succeeded although its compare failed", []porcupine.Operation{
			put("k", "a", 0, 10, 2), cas("k", 1, "c", 11, 20, 3)}, false},
		{"unknown cas applied", []porcupine.Operation{
			put("k", "a", 0, 10, 2), casUnknown("k", 2, "c", 11),
			get("k", 20, 30, true, "a", 2), get("k", 40, 50, true, "c", 7)}, true},
		{"unknown cas applied although its compare failed", []porcupine.Operation{
			put("k", "a", 0, 10, 2), casUnknown("k", 1, "c", 11), get("k", 20, 30, true, "c", 7)}, false},
		{"cas on the revision of an unknown put", []porcupine.Operation{
			putUnknown("k", "x", 0), get("k", 10, 20, true, "x", 5),
			cas("k", 5, "y", 21, 30, 6), get("k", 31, 40, true, "y", 6)}, true},
		{"unknown cas over an unknown put", []porcupine.Operation{
			putUnknown("k", "x", 0), casUnknown("k", 7, "y", 1), get("k", 10, 20, true, "y", 9)}, true},
		{"unknown cas over an unknown put, revision too low", []porcupine.Operation{
			putUnknown("k", "x", 0), casUnknown("k", 7, "y", 1), get("k", 10, 20, true, "y", 6)}, false},
		{"keys are independent", []porcupine.Operation{
			put("k", "a", 0, 10, 1), put("j", "b", 11, 20, 2),
			get("k", 21, 30, true, "a", 1), get("j", 21, 30, true, "b", 2)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := porcupine.CheckOperations(Model, tc.ops)
			if res != tc.legal {
				t.Fatalf("linearizable = %v, want %v", res, tc.legal)
			}
		})
	}
}

func TestCheckWritesVisualization(t *testing.T) {
	ops := []porcupine.Operation{
		put("k", "a", 0, 10, 1), put("k", "b", 11, 20, 2), get("k", 21, 30, true, "a", 1)}
	dir := t.TempDir()
	res, path, err := Check(ops, nil, 10*time.Second, dir)
	if err != nil {
		t.Fatal(err)
	}
	if res != porcupine.Illegal {
		t.Fatalf("result %s, want Illegal", res)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("visualization: %v", err)
	}
	if st.Size() == 0 {
		t.Fatalf("visualization %s is empty", path)
	}
}
