package linearizability

import (
	"fmt"
	"hash/fnv"
	"strconv"

	"github.com/anishathalye/porcupine"
)

// Kind is what an operation does.
type Kind uint8

const (
	// Get is a linearizable read of one key: ReadIndex, then the local
	// store's Get.
	Get Kind = iota + 1
	// Put is an unconditional write of one key (a Txn with one OpPut).
	Put
	// CAS writes the key only if its ModRevision equals Input.Rev (0: the
	// key is absent): a Txn with one CompareModRevision and one OpPut.
	CAS
)

// Input is what a client asked.
type Input struct {
	Kind Kind
	Key  string
	// Value is the value a Put or CAS writes. The workload makes every
	// written value unique, so a read says which write it saw.
	Value string
	// Rev is the ModRevision a CAS compares with.
	Rev uint64
}

// Output is what the client got back.
type Output struct {
	// Unknown: a write whose outcome is unknown (a timeout, a lost
	// connection, ErrOutcomeUnknown). It may have been applied or not, and
	// its operation's Return is Infinity.
	Unknown bool
	// OK: a CAS succeeded (always true for a known Put).
	OK bool
	// Rev is the ModRevision a successful write gave the key
	// (TxnResult.Revision).
	Rev uint64
	// Exists, Value and ModRev are the key as a Get read it, or as a failed
	// CAS found it (TxnResult.Current).
	Exists bool
	Value  string
	ModRev uint64
}

// Infinity is the Return time of an operation whose outcome is unknown: it
// may take effect at any point after its call, or never.
const Infinity int64 = 1<<63 - 1

// state is one key in the model. Without deletes, a key that exists has a
// ModRevision > 0 and an absent key has 0.
type state struct {
	exists bool
	value  string
	// rev is the key's ModRevision when known. After a write whose outcome
	// is unknown it is not: rev is then a strict lower bound, and the first
	// read that sees the write's value pins the real revision.
	rev   uint64
	known bool
}

func (s state) String() string {
	switch {
	case !s.exists:
		return "absent"
	case s.known:
		return fmt.Sprintf("%s@%d", s.value, s.rev)
	default:
		return fmt.Sprintf("%s@>%d", s.value, s.rev)
	}
}

// observe returns the state after a read of it that saw (exists, value,
// modRev), and whether that read is possible at all.
func (s state) observe(exists bool, value string, modRev uint64) (state, bool) {
	if !exists {
		return s, !s.exists
	}
	if !s.exists || s.value != value {
		return s, false
	}
	if s.known {
		return s, s.rev == modRev
	}
	if modRev <= s.rev {
		return s, false
	}
	return state{exists: true, value: value, rev: modRev, known: true}, true
}

// compare says whether a CAS expecting rev certainly holds, and whether it
// may hold.
func (s state) compare(rev uint64) (holds, maybe bool) {
	if s.known {
		return s.rev == rev, s.rev == rev
	}
	// Unknown revision: the key exists with a revision above s.rev.
	return false, rev > s.rev
}

// step returns every state the key may be in after the operation, none when
// the operation cannot have happened in state s.
func step(s state, in Input, out Output) []state {
	switch in.Kind {
	case Get:
		if next, ok := s.observe(out.Exists, out.Value, out.ModRev); ok {
			return []state{next}
		}
		return nil
	case Put:
		if out.Unknown {
			// Applied at this point, at a revision above the current one.
			// (Not applied at all is the same as applied after everything
			// else: its Return is Infinity.)
			return []state{{exists: true, value: in.Value, rev: s.rev}}
		}
		if out.Rev <= s.rev {
			return nil // revisions only grow
		}
		return []state{{exists: true, value: in.Value, rev: out.Rev, known: true}}
	case CAS:
		holds, maybe := s.compare(in.Rev)
		if out.Unknown {
			var next []state
			if maybe {
				next = append(next, state{exists: true, value: in.Value, rev: max(in.Rev, s.rev)})
			}
			if !holds {
				next = append(next, s)
			}
			return next
		}
		if out.OK {
			if !maybe || out.Rev <= in.Rev {
				return nil
			}
			return []state{{exists: true, value: in.Value, rev: out.Rev, known: true}}
		}
		// Failed: the store says the compare did not hold, and shows the key.
		now := uint64(0)
		if out.Exists {
			now = out.ModRev
		}
		if now == in.Rev {
			return nil
		}
		if next, ok := s.observe(out.Exists, out.Value, out.ModRev); ok {
			return []state{next}
		}
		return nil
	default:
		panic(fmt.Sprintf("linearizability: unknown operation kind %d", in.Kind))
	}
}

// Model is the sequential specification the histories are checked
// against: a map of independent keys, each a register of (value,
// ModRevision), partitioned by key so porcupine checks each key alone.
var Model = (&porcupine.NondeterministicModel{
	Partition: partitionByKey,
	Init:      func() []any { return []any{state{known: true}} },
	Step: func(s, in, out any) []any {
		next := step(s.(state), in.(Input), out.(Output))
		states := make([]any, len(next))
		for i, n := range next {
			states[i] = n
		}
		return states
	},
	Equal: func(a, b any) bool { return a.(state) == b.(state) },
	Hash: func(s any) uint64 {
		st := s.(state)
		h := fnv.New64a()
		h.Write([]byte(st.value))
		h.Write([]byte{0, boolByte(st.exists), boolByte(st.known)})
		return h.Sum64() ^ st.rev*0x9e3779b97f4a7c15
	},
	DescribeOperation: func(in, out any) string { return describe(in.(Input), out.(Output)) },
	DescribeState:     func(s any) string { return s.(state).String() },
}).ToModel()

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

func partitionByKey(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := make(map[string][]porcupine.Operation)
	var keys []string
	for _, op := range history {
		k := op.Input.(Input).Key
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], op)
	}
	parts := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, byKey[k])
	}
	return parts
}

func describe(in Input, out Output) string {
	observed := func() string {
		if !out.Exists {
			return "absent"
		}
		return out.Value + "@" + strconv.FormatUint(out.ModRev, 10)
	}
	var call string
	switch in.Kind {
	case Get:
		return fmt.Sprintf("get(%s) → %s", in.Key, observed())
	case Put:
		call = fmt.Sprintf("put(%s, %s)", in.Key, in.Value)
	case CAS:
		call = fmt.Sprintf("cas(%s, @%d → %s)", in.Key, in.Rev, in.Value)
	}
	switch {
	case out.Unknown:
		return call + " → ?"
	case in.Kind == Put || out.OK:
		return fmt.Sprintf("%s → @%d", call, out.Rev)
	default:
		return fmt.Sprintf("%s → failed, was %s", call, observed())
	}
}
