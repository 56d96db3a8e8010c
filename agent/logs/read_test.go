package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)

// rec is one record to put in a test log: second s after t0.
type rec struct {
	s       int
	stream  string
	partial bool
	content string
}

func out(s int, content string) rec  { return rec{s, Stdout, false, content} }
func errl(s int, content string) rec { return rec{s, Stderr, false, content} }
func part(s int, content string) rec { return rec{s, Stdout, true, content} }

func writeLog(t *testing.T, path string, recs ...rec) {
	t.Helper()
	var b []byte
	for _, r := range recs {
		b = appendRecord(b, t0.Add(time.Duration(r.s)*time.Second), r.stream, r.partial, []byte(r.content))
	}
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

// rotatedLog makes path.2, path.1 and path with lines "l0".."l8", one a
// second, three per file.
func rotatedLog(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "0.log")
	for f, name := range []string{path + ".2", path + ".1", path} {
		var recs []rec
		for i := 3 * f; i < 3*f+3; i++ {
			recs = append(recs, out(i, fmt.Sprintf("l%d", i)))
		}
		writeLog(t, name, recs...)
		// Since skips rotated files by their modification time.
		mt := t0.Add(time.Duration(3*f+2) * time.Second)
		if err := os.Chtimes(name, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func lines(from, to int) string {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "l%d\n", i)
	}
	return b.String()
}

func TestRead(t *testing.T) {
	path := rotatedLog(t)
	ts := func(s int, content string) string {
		return t0.Add(time.Duration(s)*time.Second).Format(outTimeFormat) + " " + content + "\n"
	}
	tests := []struct {
		name string
		o    ReadOptions
		want string
	}{
		{"all", ReadOptions{TailLines: -1}, lines(0, 9)},
		{"tail 0", ReadOptions{TailLines: 0}, ""},
		{"tail in current", ReadOptions{TailLines: 2}, lines(7, 9)},
		{"tail whole current", ReadOptions{TailLines: 3}, lines(6, 9)},
		{"tail across files", ReadOptions{TailLines: 5}, lines(4, 9)},
		{"tail more than all", ReadOptions{TailLines: 100}, lines(0, 9)},
		{"since", ReadOptions{TailLines: -1, Since: t0.Add(4 * time.Second)}, lines(4, 9)},
		{"since skips old files", ReadOptions{TailLines: -1, Since: t0.Add(7 * time.Second)}, lines(7, 9)},
		{"since after all", ReadOptions{TailLines: -1, Since: t0.Add(time.Hour)}, ""},
		{"tail then since", ReadOptions{TailLines: 4, Since: t0.Add(7 * time.Second)}, lines(7, 9)},
		{"timestamps", ReadOptions{TailLines: 2, Timestamps: true}, ts(7, "l7") + ts(8, "l8")},
		{"limit", ReadOptions{TailLines: -1, LimitBytes: 7}, "l0\nl1\nl"},
		{"limit exact", ReadOptions{TailLines: -1, LimitBytes: 6}, "l0\nl1\n"},
		{"limit beyond", ReadOptions{TailLines: -1, LimitBytes: 1000}, lines(0, 9)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readAll(t, path, tt.o); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadJoinsFragments(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	// A line split across a rotation, stderr interleaved with a stdout
	// line mid-way, garbage lines, and a line never finished.
	writeLog(t, path+".1", out(0, "a"), part(1, "long "))
	writeLog(t, path, part(2, "line "), out(3, "ends"), part(4, "x"), errl(5, "err"),
		out(6, "y"), out(7, "b"))
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "not a record\n%s stdin F nope\n%s", t0.Format(timeFormat), appendRecord(nil, t0.Add(8*time.Second), Stdout, true, []byte("unfinished")))
	f.Close()

	tests := []struct {
		name string
		o    ReadOptions
		want string
	}{
		{"all", ReadOptions{TailLines: -1}, "a\nlong line ends\nx\nerr\ny\nb\nunfinished"},
		// The line's first fragment is the one Since and timestamps see.
		{"timestamps", ReadOptions{TailLines: -1, Timestamps: true, Since: t0.Add(time.Second)},
			t0.Add(1*time.Second).Format(outTimeFormat) + " long line ends\n" +
				t0.Add(4*time.Second).Format(outTimeFormat) + " x\n" +
				t0.Add(5*time.Second).Format(outTimeFormat) + " err\n" +
				t0.Add(6*time.Second).Format(outTimeFormat) + " y\n" +
				t0.Add(7*time.Second).Format(outTimeFormat) + " b\n" +
				t0.Add(8*time.Second).Format(outTimeFormat) + " unfinished"},
		{"since mid-line skips the whole line", ReadOptions{TailLines: -1, Since: t0.Add(2 * time.Second)}, "x\nerr\ny\nb\nunfinished"},
		{"tail counts whole lines", ReadOptions{TailLines: 2}, "y\nb\nunfinished"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readAll(t, path, tt.o); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	err := Read(context.Background(), filepath.Join(dir, "none.log"), ReadOptions{TailLines: -1}, &bytes.Buffer{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing log: error %v, want ErrNotExist", err)
	}
	path := filepath.Join(dir, "0.log")
	writeLog(t, path, out(0, "x"))
	err = Read(context.Background(), path, ReadOptions{LimitBytes: -1}, &bytes.Buffer{})
	if !errors.Is(err, ErrBadOptions) {
		t.Fatalf("negative limit: error %v, want ErrBadOptions", err)
	}
	// Only rotated files (caught mid-rotation) still read.
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path, all); got != "x\n" {
		t.Fatalf("got %q", got)
	}
}

func testWriter(t *testing.T, path string, o RotateOptions) *fileWriter {
	t.Helper()
	w, err := newFileWriter(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.close() })
	return w
}

// syncBuffer is what a follow writes to while the test reads it.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	flushes atomic.Int64
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Flush() { s.flushes.Add(1) }

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type following struct {
	buf    *syncBuffer
	done   chan error
	cancel context.CancelFunc
}

func startFollow(t *testing.T, path string, o ReadOptions) *following {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &following{buf: &syncBuffer{}, done: make(chan error, 1), cancel: cancel}
	o.Follow = true
	go func() { f.done <- Read(ctx, path, o, f.buf) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-f.done:
		case <-time.After(10 * time.Second):
			t.Error("follow did not end with its context")
		}
	})
	return f
}

func (f *following) wait(t *testing.T, timeout time.Duration, want string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for f.buf.String() != want {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for follow output\n%q\ngot\n%q", timeout, want, f.buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *following) end(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-f.done:
		f.done <- err
		return err
	case <-time.After(timeout):
		t.Fatal("follow did not end")
		return nil
	}
}

func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w := testWriter(t, path, RotateOptions{MaxSize: 300, MaxFiles: 3})
	put := func(content string) {
		w.write(appendRecord(nil, time.Now(), Stdout, false, []byte(content)))
	}
	put("before")
	put("start")

	f := startFollow(t, path, ReadOptions{TailLines: 1})
	f.wait(t, 5*time.Second, "start\n")
	if f.buf.flushes.Load() == 0 {
		t.Error("a follow that caught up did not flush its client")
	}
	want := "start\n"
	// Enough lines to rotate several times, one at a time so the
	// follower sees each rotation.
	for i := range 12 {
		line := fmt.Sprintf("line %02d %s", i, strings.Repeat(".", 40))
		put(line)
		want += line + "\n"
		f.wait(t, 5*time.Second, want)
	}
	if _, err := os.Stat(path + ".2"); err != nil {
		t.Fatalf("the log never rotated twice: %v", err)
	}
	// A line's halves written apart are joined.
	w.write(appendRecord(nil, time.Now(), Stdout, true, []byte("half ")))
	waitFor(t, 5*time.Second, "the first half", func() bool { return f.buf.String() == want+"half " })
	put("and half")
	want += "half and half\n"
	f.wait(t, 5*time.Second, want)

	f.cancel()
	if err := f.end(t, 5*time.Second); err != nil {
		t.Fatalf("follow ended by its context: %v", err)
	}
}

// TestFollowFastRotation: many rotations between two polls lose nothing
// while the files are still kept.
func TestFollowFastRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w := testWriter(t, path, RotateOptions{MaxSize: 200, MaxFiles: 100})
	w.write(appendRecord(nil, time.Now(), Stdout, false, []byte("first")))
	f := startFollow(t, path, ReadOptions{TailLines: -1})
	f.wait(t, 5*time.Second, "first\n")
	want := "first\n"
	var batch []byte
	for i := range 200 {
		line := fmt.Sprintf("fast %03d", i)
		batch = appendRecord(batch, time.Now(), Stdout, false, []byte(line))
		want += line + "\n"
		if i%10 == 9 {
			w.write(batch)
			batch = batch[:0]
		}
	}
	f.wait(t, 10*time.Second, want)
}

func TestFollowEndsWhenDone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w := testWriter(t, path, RotateOptions{})
	w.write(appendRecord(nil, time.Now(), Stdout, false, []byte("running")))
	var exited atomic.Bool
	f := startFollow(t, path, ReadOptions{TailLines: -1, Done: exited.Load})
	f.wait(t, 5*time.Second, "running\n")
	// Still following while the container runs.
	select {
	case err := <-f.done:
		t.Fatalf("follow ended while the container runs: %v", err)
	case <-time.After(3 * followPoll):
	}
	// The container exits; its last words land just after.
	exited.Store(true)
	w.write(appendRecord(nil, time.Now(), Stderr, false, []byte("last words")))
	if err := f.end(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := f.buf.String(); got != "running\nlast words\n" {
		t.Fatalf("got %q", got)
	}
}

func TestFollowLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w := testWriter(t, path, RotateOptions{})
	w.write(appendRecord(nil, time.Now(), Stdout, false, []byte("12345")))
	f := startFollow(t, path, ReadOptions{TailLines: -1, LimitBytes: 10})
	f.wait(t, 5*time.Second, "12345\n")
	for _, l := range []string{"67890", "more"} {
		w.write(appendRecord(nil, time.Now(), Stdout, false, []byte(l)))
	}
	if err := f.end(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := f.buf.String(); got != "12345\n6789" {
		t.Fatalf("got %q", got)
	}
}

// TestFollowWriter follows a log a Writer copies a stream into, with
// rotation.
func TestFollowWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{MaxSize: 512, MaxFiles: 20})
	var exited atomic.Bool
	f := startFollow(t, path, ReadOptions{TailLines: -1, Done: exited.Load})
	var want strings.Builder
	for i := range 100 {
		fmt.Fprintf(c.stdout, "container line %03d\n", i)
		fmt.Fprintf(&want, "container line %03d\n", i)
	}
	f.wait(t, 10*time.Second, want.String())
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	exited.Store(true)
	if err := f.end(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestTailOffsetLongLines(t *testing.T) {
	// Records of the largest size span the backward scan's chunks.
	path := filepath.Join(t.TempDir(), "0.log")
	var recs []rec
	var want strings.Builder
	for i := range 12 {
		content := strings.Repeat(string(rune('a'+i)), maxRecordContent)
		recs = append(recs, out(i, content))
		if i >= 7 {
			want.WriteString(content + "\n")
		}
	}
	writeLog(t, path, recs...)
	if got := readAll(t, path, ReadOptions{TailLines: 5}); got != want.String() {
		t.Fatalf("tail 5 gave %d bytes, want %d", len(got), want.Len())
	}
	// A file of garbage without a single newline.
	if err := os.WriteFile(path, []byte(strings.Repeat("z", 200<<10)), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tail := range []int64{2, -1} {
		if got := readAll(t, path, ReadOptions{TailLines: tail}); got != "" {
			t.Fatalf("tail %d of garbage gave %q", tail, got)
		}
	}
}
