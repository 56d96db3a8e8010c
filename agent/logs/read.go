package logs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Timings of a follow.
const (
	// followPoll is how often a follow looks for new data and rotation;
	// with the Writer writing each line at once, a line reaches the reader
	// within this time.
	followPoll = 50 * time.Millisecond
	// doneQuiet is how long a follow keeps reading after Done reports the
	// container gone and no new data came: the Writer may write the last
	// lines a moment after the exit is seen.
	doneQuiet = 150 * time.Millisecond
)

// outTimeFormat is how --timestamps prints a line's time: RFC 3339 with a
// fixed nine-digit fraction so lines align, as the kubelet prints it.
const outTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// ReadOptions are the `kubectl logs` options Read honours.
type ReadOptions struct {
	// Follow keeps reading as the log grows, across rotation, until ctx
	// ends or Done says the container is gone.
	Follow bool
	// TailLines is how many lines from the end to start with; < 0 is all.
	TailLines int64
	// Since skips lines older than it; zero is all.
	Since time.Time
	// Timestamps prefixes each line with its RFC 3339 timestamp, as
	// kubectl logs --timestamps.
	Timestamps bool
	// LimitBytes stops the read after that many bytes of output; 0 is no
	// limit.
	LimitBytes int64
	// Done is polled when a follow reaches the end of the file: the read
	// ends once Done returns true and nothing more is left to read (the
	// container has exited). nil = follow until ctx ends.
	Done func() bool
}

// errLimit ends a read at LimitBytes; Read returns nil for it.
var errLimit = errors.New("log byte limit reached")

// Read writes the container's log at path (the rotated files oldest first,
// then the current one) to w as kubectl expects: each line's content, with
// its timestamp if asked, fragments joined into their lines. A follow
// survives rotation and ends without error when ctx ends or Done says so.
// If w has a Flush method (http.Flusher, bufio.Writer) a follow calls it
// whenever it has caught up. A log that does not exist is an error
// matching fs.ErrNotExist.
func Read(ctx context.Context, path string, o ReadOptions, w io.Writer) error {
	if o.LimitBytes < 0 {
		return fmt.Errorf("read log %s: negative limit %d: %w", path, o.LimitBytes, ErrBadOptions)
	}
	files, err := openAll(path)
	if err != nil {
		return fmt.Errorf("read log %s: %w", path, err)
	}
	defer func() {
		for _, f := range files {
			f.close()
		}
	}()
	start, off, err := startAt(files, o)
	if err != nil {
		return fmt.Errorf("read log %s: %w", path, err)
	}
	p := newPrinter(w, o)
	err = read(ctx, path, files, start, off, o, p)
	if ferr := p.flush(); err == nil {
		err = ferr
	}
	if errors.Is(err, errLimit) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read log %s: %w", path, err)
	}
	return nil
}

// read prints files[start:] from off in the first, then follows if asked.
func read(ctx context.Context, path string, files []*logFile, start int, off int64, o ReadOptions, p *printer) error {
	for i := start; i < len(files); i++ {
		f := files[i]
		if f.f == nil {
			continue
		}
		if i == start && off > 0 {
			if _, err := f.f.Seek(off, io.SeekStart); err != nil {
				return fmt.Errorf("seek: %w", err)
			}
		}
		if _, err := f.drain(p); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	// The newest file opened: where a follow that finds the current file
	// missing (mid-rotation) carries on from.
	var last os.FileInfo
	for _, f := range files {
		if f.st != nil {
			last = f.st
		}
	}
	return follow(ctx, path, files[len(files)-1], last, o, p)
}

// follow reads the current file as it grows. On rotation it finishes the
// old file, then reads any rotated file it has not seen (several
// rotations may pass between two polls) and carries on with the new one.
func follow(ctx context.Context, path string, cur *logFile, last os.FileInfo, o ReadOptions, p *printer) error {
	ticker := time.NewTicker(followPoll)
	defer ticker.Stop()
	var (
		lastData = time.Now()
		doneAt   time.Time
	)
	if cur.f == nil {
		cur = nil
	}
	for {
		if cur != nil {
			n, err := cur.drain(p)
			if err != nil {
				return err
			}
			if n > 0 {
				lastData = time.Now()
			}
			moved, err := cur.moved(path)
			if err != nil {
				return err
			}
			if moved {
				// Whatever the writer put in before renaming is there now.
				if _, err := cur.drain(p); err != nil {
					return err
				}
				cur.close()
				cur = nil
				lastData = time.Now()
			}
		}
		if cur == nil {
			next, n, err := advance(path, last, p)
			if err != nil {
				return err
			}
			if n > 0 {
				lastData = time.Now()
			}
			if next != nil {
				cur, last = next, next.st
				continue
			}
		}

		if o.Done != nil {
			if doneAt.IsZero() && o.Done() {
				doneAt = time.Now()
			}
			if !doneAt.IsZero() && time.Since(lastData) >= doneQuiet && time.Since(doneAt) >= doneQuiet {
				return nil
			}
		}
		if err := p.flushClient(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			if cur != nil {
				cur.close()
			}
			return nil
		case <-ticker.C:
		}
	}
}

// advance reads the rotated files newer than last (the file finished
// last), then opens the current file. It returns nil (and no error) when
// the current file is not there yet, mid-rotation; the caller tries again.
func advance(path string, last os.FileInfo, p *printer) (*logFile, int, error) {
	total := 0
	for range 10 {
		set, err := stableFiles(path)
		if err != nil {
			return nil, total, err
		}
		rotated := set[:len(set)-1]
		newer := rotated // when last has aged out, every kept file is newer
		for i, e := range rotated {
			if last != nil && os.SameFile(e.st, last) {
				newer = rotated[i+1:]
			}
		}
		moved := false
		for _, e := range newer {
			f, err := openLog(e.name)
			if errors.Is(err, os.ErrNotExist) {
				moved = true
				break
			}
			if err != nil {
				return nil, total, err
			}
			if !os.SameFile(f.st, e.st) {
				f.close()
				moved = true
				break
			}
			n, err := f.drain(p)
			total += n
			f.close()
			if err != nil {
				return nil, total, err
			}
			last = f.st
		}
		if moved {
			continue // rotated again meanwhile: list afresh from last
		}
		want := set[len(set)-1].st
		if want == nil {
			return nil, total, nil
		}
		cur, err := openLog(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, total, nil
		}
		if err != nil {
			return nil, total, err
		}
		if !os.SameFile(cur.st, want) {
			cur.close()
			continue
		}
		return cur, total, nil
	}
	return nil, total, errors.New("log rotates too fast to follow")
}

// entry is one file of a log at one moment.
type entry struct {
	name string
	st   os.FileInfo // nil: absent (only ever the current file)
}

// listFiles lists the rotated files, oldest first, then the current one.
func listFiles(path string) ([]entry, error) {
	names, err := rotatedNames(path)
	if err != nil {
		return nil, err
	}
	set := make([]entry, 0, len(names)+1)
	for _, name := range append(names, path) {
		st, err := os.Stat(name)
		switch {
		case err == nil:
			set = append(set, entry{name, st})
		case !errors.Is(err, os.ErrNotExist):
			return nil, err
		case name == path:
			set = append(set, entry{name: name})
		}
		// A rotated file that vanished between listing and stat is being
		// renamed; the next listing sees where it went.
	}
	return set, nil
}

func sameSet(a, b []entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].name != b[i].name || (a[i].st == nil) != (b[i].st == nil) ||
			a[i].st != nil && !os.SameFile(a[i].st, b[i].st) {
			return false
		}
	}
	return true
}

// stableFiles lists the log's files until two listings agree, so that a
// rotation caught half-way (some renames done, others not) is not taken for
// the state of the log. A rotation takes microseconds; the logger rotates
// at most once per MaxSize bytes.
func stableFiles(path string) ([]entry, error) {
	prev, err := listFiles(path)
	if err != nil {
		return nil, err
	}
	for range 50 {
		cur, err := listFiles(path)
		if err != nil {
			return nil, err
		}
		if sameSet(prev, cur) {
			return cur, nil
		}
		prev = cur
		time.Sleep(time.Millisecond)
	}
	return nil, errors.New("log rotates too fast to read")
}

// logFile is one open log file and its reading state.
type logFile struct {
	f  *os.File
	st os.FileInfo
	lr lineReader
}

func openLog(name string) (*logFile, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &logFile{f: f, st: st, lr: lineReader{r: f}}, nil
}

func (l *logFile) close() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}

// drain prints every complete record now in the file; it returns how many
// lines it consumed. A half-written last line waits for the next call.
func (l *logFile) drain(p *printer) (int, error) {
	n := 0
	for {
		line, ok, err := l.lr.next()
		if err != nil {
			return n, err
		}
		if !ok {
			return n, nil
		}
		n++
		r, err := parseLine(line)
		if err != nil {
			continue // a torn or foreign line: skip it, as the kubelet does
		}
		if err := p.record(r); err != nil {
			return n, err
		}
	}
}

// moved reports whether path no longer names this file (it was rotated
// away or removed).
func (l *logFile) moved(path string) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return !os.SameFile(st, l.st), nil
}

// openAll opens the rotated files, oldest first, and then the current
// one, checking each is the file a stable listing found. The current file
// may be missing (a logFile with no file) when rotated ones exist; with
// none at all the error matches os.ErrNotExist.
func openAll(path string) ([]*logFile, error) {
	for range 10 {
		set, err := stableFiles(path)
		if err != nil {
			return nil, err
		}
		if len(set) == 1 && set[0].st == nil {
			return nil, os.ErrNotExist
		}
		var files []*logFile
		consistent := true
		for _, e := range set {
			if e.st == nil {
				files = append(files, &logFile{})
				continue
			}
			f, err := openLog(e.name)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				closeAll(files)
				return nil, err
			}
			if err != nil || !os.SameFile(f.st, e.st) {
				f.close()
				consistent = false
				break
			}
			files = append(files, f)
		}
		if consistent {
			return files, nil
		}
		closeAll(files)
	}
	return nil, errors.New("log rotates too fast to read")
}

func closeAll(files []*logFile) {
	for _, f := range files {
		f.close()
	}
}

// rotatedNames lists path.N files, oldest (highest N) first.
func rotatedNames(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type rotated struct {
		n    int
		name string
	}
	var found []rotated
	for _, e := range entries {
		suffix, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(suffix)
		if err != nil || n < 1 || strconv.Itoa(n) != suffix {
			continue
		}
		found = append(found, rotated{n, filepath.Join(dir, e.Name())})
	}
	slices.SortFunc(found, func(a, b rotated) int { return b.n - a.n })
	names := make([]string, len(found))
	for i, r := range found {
		names[i] = r.name
	}
	return names, nil
}

// startAt finds where output begins: the file index and the offset in it,
// from TailLines and Since.
func startAt(files []*logFile, o ReadOptions) (int, int64, error) {
	start, off := 0, int64(0)
	if o.TailLines >= 0 {
		start, off = len(files)-1, 0
		want := o.TailLines
		for i := len(files) - 1; i >= 0; i-- {
			start, off = i, 0
			if files[i].f == nil {
				continue
			}
			at, found, err := tailOffset(files[i].f, files[i].st.Size(), want)
			if err != nil {
				return 0, 0, err
			}
			if found == want {
				off = at
				break
			}
			want -= found
		}
	}
	// A rotated file last written before Since holds nothing to print.
	if !o.Since.IsZero() {
		for start < len(files)-1 && (files[start].st == nil || files[start].st.ModTime().Before(o.Since)) {
			start, off = start+1, 0
		}
	}
	return start, off, nil
}

// tailOffset scans a file backwards for its last n lines (a line ends with
// an F record). It returns the offset where they begin and n, or 0 and
// how many lines the whole file holds when that is fewer. A last line
// without its newline (being written) is not counted and is always after
// the offset.
func tailOffset(r io.ReaderAt, size, n int64) (int64, int64, error) {
	const chunk = 64 << 10
	var (
		data  []byte // the file's bytes [lo, hi): not yet scanned
		lo    = size
		found int64
	)
	if n == 0 {
		return size, 0, nil
	}
	// consider is called for each whole line from the end; it reports
	// whether this line is the (n+1)-th full line, which ends just where
	// the wanted lines begin.
	consider := func(line []byte) bool {
		rec, err := parseLine(line)
		if err != nil || rec.partial {
			return false
		}
		if found == n {
			return true
		}
		found++
		return false
	}
	trimmed := false // the unterminated tail has been dropped
	for {
		if !trimmed {
			if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
				data = data[:i+1]
				trimmed = true
			} else if lo == 0 {
				return 0, found, nil
			}
		}
		for trimmed && len(data) > 0 {
			j := bytes.LastIndexByte(data[:len(data)-1], '\n')
			if j < 0 && lo > 0 {
				break // the line starts in an earlier chunk
			}
			line := data[j+1:]
			if consider(line) {
				return lo + int64(j+1) + int64(len(line)), found, nil
			}
			data = data[:j+1]
		}
		if lo == 0 {
			return 0, found, nil
		}
		read := min(int64(chunk), lo)
		buf := make([]byte, int(read)+len(data))
		if _, err := r.ReadAt(buf[:read], lo-read); err != nil && !errors.Is(err, io.EOF) {
			return 0, 0, fmt.Errorf("read for tail: %w", err)
		}
		copy(buf[read:], data)
		data, lo = buf, lo-read
	}
}

// lineReader yields the complete lines of a growing file.
type lineReader struct {
	r        io.Reader
	buf      []byte
	start    int
	end      int
	skipping bool // dropping a line too long to be a record, up to its newline
}

// next returns the next complete line without its newline; ok is false
// when no complete line is there yet. The line is valid until the next
// call.
func (l *lineReader) next() ([]byte, bool, error) {
	if l.buf == nil {
		l.buf = make([]byte, 64<<10)
	}
	for {
		if i := bytes.IndexByte(l.buf[l.start:l.end], '\n'); i >= 0 {
			line := l.buf[l.start : l.start+i]
			l.start += i + 1
			if l.skipping {
				l.skipping = false
				continue
			}
			return line, true, nil
		}
		if l.start > 0 {
			l.end = copy(l.buf, l.buf[l.start:l.end])
			l.start = 0
		}
		if l.end == len(l.buf) {
			// No record is this long (16 KiB of content plus a header).
			l.skipping, l.end = true, 0
		}
		n, err := l.r.Read(l.buf[l.end:])
		l.end += n
		if n > 0 {
			continue
		}
		if err == nil || errors.Is(err, io.EOF) {
			return nil, false, nil
		}
		return nil, false, err
	}
}

// printer turns records into kubectl's output.
type printer struct {
	client io.Writer
	bw     *bufio.Writer
	lw     *limitWriter
	o      ReadOptions
	// Per stream (0 stdout, 1 stderr):
	inLine   [2]bool // a P record was seen; the next record continues the line
	skip     [2]bool // the line being read is older than Since
	midOut   [2]bool // part of this stream's line is printed, its newline is not
	tsBuf    []byte
	anyMidOn int // stream index with midOut set, or -1
}

func newPrinter(w io.Writer, o ReadOptions) *printer {
	p := &printer{client: w, o: o, anyMidOn: -1}
	var out io.Writer = w
	if o.LimitBytes > 0 {
		p.lw = &limitWriter{w: w, left: o.LimitBytes}
		out = p.lw
	}
	p.bw = bufio.NewWriterSize(out, 32<<10)
	return p
}

func (p *printer) record(r record) error {
	s := 0
	if r.stream == Stderr {
		s = 1
	}
	if !p.inLine[s] {
		p.skip[s] = !p.o.Since.IsZero() && r.time.Before(p.o.Since)
	}
	p.inLine[s] = r.partial
	if p.skip[s] {
		return nil
	}
	if p.anyMidOn >= 0 && p.anyMidOn != s {
		// The other stream's line is half printed: end it here rather
		// than glue two streams into one line; its rest starts afresh.
		if err := p.bw.WriteByte('\n'); err != nil {
			return p.err(err)
		}
		p.midOut[p.anyMidOn] = false
		p.anyMidOn = -1
	}
	if !p.midOut[s] && p.o.Timestamps {
		p.tsBuf = r.time.UTC().AppendFormat(p.tsBuf[:0], outTimeFormat)
		p.tsBuf = append(p.tsBuf, ' ')
		if _, err := p.bw.Write(p.tsBuf); err != nil {
			return p.err(err)
		}
	}
	if _, err := p.bw.Write(r.content); err != nil {
		return p.err(err)
	}
	if r.partial {
		p.midOut[s], p.anyMidOn = true, s
		return nil
	}
	p.midOut[s], p.anyMidOn = false, -1
	if err := p.bw.WriteByte('\n'); err != nil {
		return p.err(err)
	}
	return nil
}

func (p *printer) flush() error {
	return p.err(p.bw.Flush())
}

// flushClient pushes what is printed to the client, for a follow that has
// caught up.
func (p *printer) flushClient() error {
	if err := p.flush(); err != nil {
		return err
	}
	switch f := p.client.(type) {
	case interface{ Flush() error }:
		if err := f.Flush(); err != nil {
			return err
		}
	case interface{ Flush() }:
		f.Flush()
	}
	if p.lw != nil && p.lw.left == 0 {
		return errLimit
	}
	return nil
}

// err keeps errLimit recognisable through the bufio layer.
func (p *printer) err(err error) error {
	if err != nil && p.lw != nil && p.lw.left == 0 {
		return errLimit
	}
	return err
}

// limitWriter passes on at most left bytes, then fails with errLimit.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if l.left <= 0 {
		return 0, errLimit
	}
	cut := b
	if int64(len(cut)) > l.left {
		cut = cut[:l.left]
	}
	n, err := l.w.Write(cut)
	l.left -= int64(n)
	if err == nil && n < len(b) {
		err = errLimit
	}
	return n, err
}
