package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pipe(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// copying is a Writer copying two pipes, as the runtime copies a
// container's FIFOs: the test writes into stdout and stderr.
type copying struct {
	w              *Writer
	stdout, stderr *os.File // write ends
	outR, errR     *os.File // read ends, which Copy reads
	done           chan error
	cancel         context.CancelFunc
}

func startCopy(t *testing.T, path string, o RotateOptions) *copying {
	t.Helper()
	w, err := NewWriter(path, o)
	if err != nil {
		t.Fatal(err)
	}
	outR, outW := pipe(t)
	errR, errW := pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	c := &copying{w: w, stdout: outW, stderr: errW, outR: outR, errR: errR, done: make(chan error, 1), cancel: cancel}
	go func() {
		errs := make(chan error, 1)
		go func() { errs <- w.Copy(ctx, Stderr, errR) }()
		err := w.Copy(ctx, Stdout, outR)
		c.done <- errors.Join(err, <-errs, w.Close())
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Error("copy did not stop")
		}
	})
	return c
}

// wait closes both streams and returns the copy's result (Copy's errors,
// then Close's).
func (c *copying) wait(t *testing.T) error {
	t.Helper()
	c.stdout.Close()
	c.stderr.Close()
	return c.result(t)
}

func (c *copying) result(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("copy did not finish")
		return nil
	}
}

func readRecords(t *testing.T, path string) []record {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []record
	for line := range bytes.Lines(data) {
		r, err := parseLine(line)
		if err != nil {
			t.Fatalf("%s holds a bad line %q: %v", path, line, err)
		}
		if !bytes.HasSuffix(line, []byte{'\n'}) {
			t.Fatalf("%s ends mid-line: %q", path, line)
		}
		recs = append(recs, r)
	}
	return recs
}

func readAll(t *testing.T, path string, o ReadOptions) string {
	t.Helper()
	var buf bytes.Buffer
	if err := Read(context.Background(), path, o, &buf); err != nil {
		t.Fatalf("Read(%s, %+v): %v", path, o, err)
	}
	return buf.String()
}

var all = ReadOptions{TailLines: -1}

func TestWriterWritesRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{})
	// The file exists once the writer is made.
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	fmt.Fprint(c.stdout, "one\ntwo\n")
	waitFor(t, 5*time.Second, "stdout lines in the file", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Count(b, []byte{'\n'}) == 2
	})
	fmt.Fprint(c.stderr, "oops\r\n")
	waitFor(t, 5*time.Second, "stderr line in the file", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Count(b, []byte{'\n'}) == 3
	})
	fmt.Fprint(c.stdout, "\nlast words")
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, path)
	want := []struct{ stream, content string }{
		{Stdout, "one"}, {Stdout, "two"}, {Stderr, "oops"}, {Stdout, ""},
	}
	if len(recs) < len(want)+1 {
		t.Fatalf("got %d records, want at least %d: %+v", len(recs), len(want)+1, recs)
	}
	for i, w := range want {
		r := recs[i]
		if r.stream != w.stream || string(r.content) != w.content || r.partial {
			t.Errorf("record %d = %s %q partial=%v, want %s %q F", i, r.stream, r.content, r.partial, w.stream, w.content)
		}
	}
	for i, r := range recs {
		if r.time.Before(before.Add(-time.Second)) || r.time.After(time.Now()) {
			t.Errorf("record %d time %v is not now", i, r.time)
		}
	}
	// The unterminated last line ends with the stream; a terminal's \r\n
	// ends a line as \n does.
	if got := readAll(t, path, all); got != "one\ntwo\noops\n\nlast words\n" {
		t.Fatalf("log = %q", got)
	}
}

// TestWriterLatency: a line is in the file as soon as it is read, not
// batched (the bound is loose for loaded CI machines; the log says what
// it was here).
func TestWriterLatency(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{})
	var worst time.Duration
	for i := range 20 {
		line := fmt.Sprintf("line %d\n", i)
		start := time.Now()
		fmt.Fprint(c.stdout, line)
		waitFor(t, 5*time.Second, "the line", func() bool {
			b, _ := os.ReadFile(path)
			return bytes.HasSuffix(b, []byte(" F "+line))
		})
		worst = max(worst, time.Since(start))
	}
	t.Logf("worst write-to-file latency of 20 lines: %s", worst)
	if worst > time.Second {
		t.Errorf("a line took %s to reach the file", worst)
	}
}

func TestWriterAppendsToExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	// An earlier writer died mid-record: the new one must not glue its
	// first record onto the torn one.
	old := appendRecord(nil, time.Now(), Stdout, false, []byte("before"))
	torn := "2024-05-01T10:00:00Z stdout F tor"
	if err := os.WriteFile(path, append(old, torn...), 0o640); err != nil {
		t.Fatal(err)
	}
	c := startCopy(t, path, RotateOptions{})
	fmt.Fprint(c.stdout, "after\n")
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path, all); got != "before\ntor\nafter\n" {
		t.Fatalf("log = %q", got)
	}
}

func TestWriterSplitsLongLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{})
	long := strings.Repeat("x", 2*maxRecordContent+100)
	// Written in odd pieces, as a container would.
	go func() {
		for i := 0; i < len(long); i += 5000 {
			c.stdout.Write([]byte(long[i:min(i+5000, len(long))]))
		}
		c.stdout.Write([]byte("\nshort\n"))
		c.stdout.Close()
	}()
	waitFor(t, 5*time.Second, "the long line", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte(" F short\n"))
	})
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	recs := readRecords(t, path)
	var sizes []int
	var tags []bool
	for _, r := range recs {
		sizes = append(sizes, len(r.content))
		tags = append(tags, r.partial)
	}
	if fmt.Sprint(sizes) != fmt.Sprint([]int{maxRecordContent, maxRecordContent, 100, 5}) ||
		fmt.Sprint(tags) != fmt.Sprint([]bool{true, true, false, false}) {
		t.Fatalf("records: sizes %v partial %v", sizes, tags)
	}
	if got := readAll(t, path, all); got != long+"\nshort\n" {
		t.Fatalf("Read did not join the long line: got %d bytes", len(got))
	}
}

func TestWriterFlushesUnterminatedLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{})
	fmt.Fprint(c.stdout, "Password: ")
	// No newline comes, yet the fragment shows up.
	waitFor(t, 5*time.Second, "the fragment", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte(" stdout P Password: \n"))
	})
	if got := readAll(t, path, all); got != "Password: " {
		t.Fatalf("log mid-line = %q", got)
	}
	fmt.Fprint(c.stdout, "hunter2\nno newline at the end")
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path, all); got != "Password: hunter2\nno newline at the end\n" {
		t.Fatalf("log = %q", got)
	}
	// A fragment followed by EOF is closed by an empty F record.
	path2 := filepath.Join(t.TempDir(), "1.log")
	c2 := startCopy(t, path2, RotateOptions{})
	fmt.Fprint(c2.stderr, "bye")
	waitFor(t, 5*time.Second, "the fragment", func() bool {
		b, _ := os.ReadFile(path2)
		return bytes.Contains(b, []byte(" P bye\n"))
	})
	if err := c2.wait(t); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path2, all); got != "bye\n" {
		t.Fatalf("log = %q", got)
	}
}

// TestWriterStopAndResume is the agent restarting: Copy stops when its
// context ends, reading nothing more; what the container writes meanwhile
// stays in the pipe; a new Writer on the same file and pipe carries on,
// and a line cut by the stop reads as one line.
func TestWriterStopAndResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{})
	fmt.Fprint(c.stdout, "before\nhalf ")
	waitFor(t, 5*time.Second, "the first line", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Contains(b, []byte(" F before\n"))
	})
	stopped := time.Now()
	c.cancel()
	if err := c.result(t); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(stopped); d > 2*time.Second {
		t.Errorf("stopping took %s", d)
	}
	// Written while nobody reads.
	fmt.Fprint(c.stdout, "a line\nwhile away\n")
	fmt.Fprint(c.stderr, "err while away\n")

	w, err := NewWriter(path, RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// One stream after the other: a stderr record between the halves of
	// a stdout line would make Read end that line early.
	c.stdout.Close()
	c.stderr.Close()
	for _, s := range []struct {
		name string
		r    *os.File
	}{{Stdout, c.outR}, {Stderr, c.errR}} {
		if err := w.Copy(context.Background(), s.name, s.r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, path, all)
	if got != "before\nhalf a line\nwhile away\nerr while away\n" {
		t.Fatalf("log = %q", got)
	}
}

// TestWriterPlainReader: a reader without deadlines is copied to EOF, and
// closed when the context ends.
func TestWriterPlainReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	w, err := NewWriter(path, RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Copy(context.Background(), Stdout, strings.NewReader("a\nb")); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Copy(ctx, Stderr, pr) }()
	fmt.Fprint(pw, "c\n")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Copy of an io.Pipe did not stop with its context")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path, all); got != "a\nb\nc\n" {
		t.Fatalf("log = %q", got)
	}
}

func TestWriterRotates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "0.log")
	o := RotateOptions{MaxSize: 1024, MaxFiles: 3}
	c := startCopy(t, path, o)
	const n = 200
	for i := range n {
		// One line per write, so records come in many batches. One
		// stream only: the order between two pipes is not defined.
		fmt.Fprintf(c.stdout, "line %03d\n", i)
	}
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	names, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != fmt.Sprint([]string{path, path + ".1", path + ".2"}) {
		t.Fatalf("files = %v", names)
	}
	for _, name := range names {
		st, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > o.MaxSize {
			t.Errorf("%s is %d bytes, over %d", name, st.Size(), o.MaxSize)
		}
		readRecords(t, name) // whole records only
	}
	// What is kept is an unbroken run of the newest lines.
	got := strings.Split(strings.TrimSuffix(readAll(t, path, all), "\n"), "\n")
	if len(got) < 20 {
		t.Fatalf("only %d lines kept", len(got))
	}
	for i, l := range got {
		if want := fmt.Sprintf("line %03d", n-len(got)+i); l != want {
			t.Fatalf("line %d of the kept log is %q, want %q", i, l, want)
		}
	}
}

func TestWriterMaxFilesOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	c := startCopy(t, path, RotateOptions{MaxSize: 200, MaxFiles: 1})
	for i := range 50 {
		fmt.Fprintf(c.stdout, "line %d\n", i)
	}
	if err := c.wait(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("MaxFiles 1 kept a rotated file: %v", err)
	}
	if got := readAll(t, path, all); !strings.HasSuffix(got, "line 49\n") {
		t.Fatalf("log = %q", got)
	}
}

// TestWriterNeverBlocks: when the file cannot be written the writer drops
// records but keeps draining, so the container's writes never stall.
func TestWriterNeverBlocks(t *testing.T) {
	for name, path := range map[string]string{
		"disk full":   "/dev/full",
		"missing dir": filepath.Join(t.TempDir(), "gone", "0.log"),
	} {
		t.Run(name, func(t *testing.T) {
			if path == "/dev/full" {
				if _, err := os.Stat(path); err != nil {
					t.Skip("no /dev/full here")
				}
			}
			c := startCopy(t, path, RotateOptions{})
			// Far more than a pipe holds (64 KiB).
			chunk := bytes.Repeat([]byte("spam spam spam\n"), 1<<12)
			wrote := make(chan error, 1)
			go func() {
				for range 64 {
					if _, err := c.stdout.Write(chunk); err != nil {
						wrote <- err
						return
					}
				}
				wrote <- nil
			}()
			select {
			case err := <-wrote:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("container writes blocked")
			}
			if err := c.wait(t); err == nil {
				t.Fatal("no error reported for an unwritable log")
			}
		})
	}
}

func TestWriterBadOptions(t *testing.T) {
	for name, o := range map[string]RotateOptions{
		"negative size":  {MaxSize: -1},
		"negative files": {MaxFiles: -1},
	} {
		if _, err := NewWriter(filepath.Join(t.TempDir(), "0.log"), o); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%s: error %v, want ErrBadOptions", name, err)
		}
	}
	if _, err := NewWriter("", RotateOptions{}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("empty path: error %v, want ErrBadOptions", err)
	}
	path := filepath.Join(t.TempDir(), "0.log")
	w, err := NewWriter(path, RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Copy(context.Background(), "stdin", strings.NewReader("x\n")); !errors.Is(err, ErrBadOptions) {
		t.Errorf("stream stdin: error %v, want ErrBadOptions", err)
	}
	// After Close nothing is written, and the file is not made again.
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := w.Copy(context.Background(), Stdout, strings.NewReader("late\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a closed writer made its file again: %v", err)
	}
}
