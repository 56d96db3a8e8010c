package linearizability

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// History records operations from concurrent clients, with call and
// return times on one monotonic clock. It is safe for concurrent use.
type History struct {
	start time.Time

	mu    sync.Mutex
	ops   []porcupine.Operation
	notes []porcupine.Annotation
}

// NewHistory starts an empty history; its clock starts now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now is the time to record as an operation's call or return.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Add records an operation of client; meta (the node asked, an error) is
// shown in the visualization. An operation whose outcome is unknown
// (out.Unknown) is recorded with Return = Infinity whatever ret says.
func (h *History) Add(client int, in Input, call int64, out Output, ret int64, meta string) {
	if out.Unknown {
		ret = Infinity
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret, Metadata: meta})
}

// Note records an event that is not an operation (a fault, say) under tag,
// from start to end; it shows in the visualization.
func (h *History) Note(tag string, start, end int64, what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notes = append(h.notes, porcupine.Annotation{Tag: tag, Start: start, End: end, Description: what})
}

// Check checks the history so far; see the package function Check.
func (h *History) Check(timeout time.Duration, dir string) (porcupine.CheckResult, string, error) {
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	notes := append([]porcupine.Annotation(nil), h.notes...)
	h.mu.Unlock()
	return Check(ops, notes, timeout, dir)
}

// Operations returns a copy of what was recorded.
func (h *History) Operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

// Stats counts a history's operations by kind and outcome.
type Stats struct {
	Gets, Puts, CASes, CASFailed, Unknown int
}

func (s Stats) String() string {
	return fmt.Sprintf("%d gets, %d puts, %d cas (%d failed compares), %d with unknown outcome",
		s.Gets, s.Puts, s.CASes, s.CASFailed, s.Unknown)
}

// Count returns the Stats of ops.
func Count(ops []porcupine.Operation) Stats {
	var s Stats
	for _, op := range ops {
		in, out := op.Input.(Input), op.Output.(Output)
		switch in.Kind {
		case Get:
			s.Gets++
		case Put:
			s.Puts++
		case CAS:
			s.CASes++
			if !out.Unknown && !out.OK {
				s.CASFailed++
			}
		}
		if out.Unknown {
			s.Unknown++
		}
	}
	return s
}

// Check checks ops against Model within timeout. Unless the result is Ok it
// writes porcupine's visualization, with notes, to a new file in dir (the
// system's temporary directory when dir is "") and returns its path.
func Check(ops []porcupine.Operation, notes []porcupine.Annotation, timeout time.Duration, dir string) (porcupine.CheckResult, string, error) {
	res, info := porcupine.CheckOperationsVerbose(Model, ops, timeout)
	if res == porcupine.Ok {
		return res, "", nil
	}
	info.AddAnnotations(notes)
	f, err := os.CreateTemp(dir, "flotilla-linearizability-*.html")
	if err != nil {
		return res, "", fmt.Errorf("create visualization file: %w", err)
	}
	defer f.Close()
	if err := porcupine.Visualize(Model, info, f); err != nil {
		return res, f.Name(), fmt.Errorf("write visualization %s: %w", f.Name(), err)
	}
	return res, f.Name(), f.Close()
}
