package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Rotation defaults, the kubelet's containerLogMaxSize and
// containerLogMaxFiles.
const (
	DefaultMaxSize  = 10 << 20
	DefaultMaxFiles = 5
)

const (
	// partialFlush is how long an unterminated line waits for its newline
	// before it is written as a P record, so a prompt without a newline is
	// still visible.
	partialFlush = 250 * time.Millisecond
	// reopenEvery spaces retries of a log file that cannot be opened.
	reopenEvery = time.Second
	// readBuf is what one Copy reads at a time: one record's worth, so an
	// idle stream (most of them) holds little memory.
	readBuf = maxRecordContent
)

// ErrBadOptions is returned for invalid options or arguments.
var ErrBadOptions = errors.New("invalid log options")

// RotateOptions bounds a container's log on disk.
type RotateOptions struct {
	// MaxSize is the size in bytes at which the file rotates (default
	// DefaultMaxSize). A single record larger than that still gets written,
	// alone in its file.
	MaxSize int64
	// MaxFiles is how many files are kept, the current one included
	// (default DefaultMaxFiles). 1 means the file is started afresh when
	// full.
	MaxFiles int
}

// withDefaults fills zero fields and rejects negative ones.
func (o RotateOptions) withDefaults() (RotateOptions, error) {
	if o.MaxSize < 0 || o.MaxFiles < 0 {
		return o, fmt.Errorf("rotate options max-size %d max-files %d: %w", o.MaxSize, o.MaxFiles, ErrBadOptions)
	}
	if o.MaxSize == 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.MaxFiles == 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	return o, nil
}

// Writer writes one container's log file. Copy its streams into it (one
// Copy per stream, concurrently), then Close it.
type Writer struct {
	fw *fileWriter
}

// NewWriter returns a Writer appending to the CRI log file at path (made
// if missing) and rotating it by o. A file that cannot be opened is not an
// error: records are dropped and the open retried now and then, because
// the container's output must keep flowing whatever the disk does.
func NewWriter(path string, o RotateOptions) (*Writer, error) {
	if path == "" {
		return nil, fmt.Errorf("new log writer: empty path: %w", ErrBadOptions)
	}
	fw, err := newFileWriter(path, o)
	if err != nil {
		return nil, fmt.Errorf("new log writer %s: %w", path, err)
	}
	return &Writer{fw: fw}, nil
}

// Copy reads one of the container's streams (Stdout or Stderr) from r
// until EOF or until ctx ends, and writes it as records: each line as soon
// as its newline is read, a line left unterminated for partialFlush as a
// fragment (P), a line longer than 16 KiB in fragments. At EOF the
// unterminated rest ends the line; when ctx ends Copy stops reading at
// once and writes that rest as a fragment, since the line goes on in
// whatever reads the stream next (a restarted agent).
//
// The timed flush and a prompt stop need r to have SetReadDeadline (an
// *os.File on a pipe or FIFO, a net.Conn); another reader that is an
// io.Closer is closed when ctx ends. Copy returns nil at EOF or when ctx
// ends, else the read error. Records that cannot be written are dropped:
// Close reports the first write error.
func (w *Writer) Copy(ctx context.Context, stream string, r io.Reader) error {
	if stream != Stdout && stream != Stderr {
		return fmt.Errorf("copy log stream %q: %w", stream, ErrBadOptions)
	}
	dl, canDeadline := r.(interface{ SetReadDeadline(time.Time) error })
	canDeadline = canDeadline && dl.SetReadDeadline(time.Time{}) == nil
	var stopping atomic.Bool
	stopWatch := context.AfterFunc(ctx, func() {
		stopping.Store(true)
		switch c, ok := r.(io.Closer); {
		case canDeadline:
			// A deadline in the past fails the pending read and every
			// later one without consuming data.
			dl.SetReadDeadline(time.Unix(1, 0))
		case ok:
			c.Close()
		}
	})
	defer stopWatch()

	p := pump{stream: stream, w: w.fw}
	buf := make([]byte, readBuf)
	var lastData time.Time
	for {
		if canDeadline {
			var d time.Time
			if len(p.pending) > 0 {
				d = lastData.Add(partialFlush)
			}
			dl.SetReadDeadline(d)
			// The stop may have come between its deadline and ours.
			if stopping.Load() {
				dl.SetReadDeadline(time.Unix(1, 0))
			}
		}
		n, err := r.Read(buf)
		now := time.Now()
		if n > 0 {
			p.pending = append(p.pending, buf[:n]...)
			lastData = now
			p.emit(now)
		}
		switch {
		case err == nil:
			continue
		case stopping.Load():
			p.flush(now, false)
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			p.flush(now, false)
			continue
		case errors.Is(err, io.EOF):
			p.flush(now, true)
			return nil
		}
		p.flush(now, true)
		return fmt.Errorf("copy log stream %s: %w", stream, err)
	}
}

// Close closes the file and returns the first error met writing it.
// Records written after Close (by a Copy still running) are dropped.
func (w *Writer) Close() error {
	return w.fw.close()
}

// pump turns one stream's bytes into records.
type pump struct {
	stream      string
	w           *fileWriter
	pending     []byte // the start of a line whose newline has not come
	openPartial bool   // a P record was written; the line is not ended yet
	out         []byte
}

// emit writes the complete lines in pending, and 16 KiB fragments of a
// longer line, in one write, keeping the rest.
func (p *pump) emit(now time.Time) {
	p.out = p.out[:0]
	rest := p.pending
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		// A terminal ends lines with \r\n; the CRI plugin (which reads
		// lines with bufio's ReadLine) drops the \r too.
		line := bytes.TrimSuffix(rest[:i], []byte{'\r'})
		for len(line) > maxRecordContent {
			p.out = appendRecord(p.out, now, p.stream, true, line[:maxRecordContent])
			line = line[maxRecordContent:]
		}
		p.out = appendRecord(p.out, now, p.stream, false, line)
		p.openPartial = false
		rest = rest[i+1:]
	}
	for len(rest) >= maxRecordContent {
		p.out = appendRecord(p.out, now, p.stream, true, rest[:maxRecordContent])
		p.openPartial = true
		rest = rest[maxRecordContent:]
	}
	p.pending = append(p.pending[:0], rest...)
	if len(p.out) > 0 {
		p.w.write(p.out)
	}
}

// flush writes the unterminated rest of a line: as a fragment after a
// pause or a stop, or as the line's end when the stream is over (as the
// CRI plugin does), closing an open fragment with an empty F record so a
// reader sees the line end.
func (p *pump) flush(now time.Time, eof bool) {
	if len(p.pending) == 0 && !(eof && p.openPartial) {
		return
	}
	p.out = appendRecord(p.out[:0], now, p.stream, !eof, p.pending)
	p.openPartial = !eof
	p.pending = p.pending[:0]
	p.w.write(p.out)
}

// fileWriter appends records to the log file and rotates it. Every write
// holds mu, so a batch from one stream never interleaves with the other's.
type fileWriter struct {
	path string
	opts RotateOptions

	mu       sync.Mutex
	f        *os.File
	size     int64
	broken   bool // the last write stopped mid-record: end it before the next
	closed   bool
	lastOpen time.Time
	firstErr error
}

// newFileWriter opens (or tries to open) path for appending.
func newFileWriter(path string, o RotateOptions) (*fileWriter, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	w := &fileWriter{path: path, opts: o}
	w.mu.Lock()
	w.ensureOpen()
	w.mu.Unlock()
	return w, nil
}

// ensureOpen opens the file if it is closed and a retry is due; it
// reports whether the file is open. Called with mu held.
func (w *fileWriter) ensureOpen() bool {
	if w.f != nil {
		return true
	}
	if w.closed || (!w.lastOpen.IsZero() && time.Since(w.lastOpen) < reopenEvery) {
		return false
	}
	w.lastOpen = time.Now()
	f, err := os.OpenFile(w.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		w.fail(fmt.Errorf("open log file: %w", err))
		return false
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		w.fail(fmt.Errorf("stat log file: %w", err))
		return false
	}
	w.f, w.size = f, st.Size()
	// A file left by an earlier writer may end mid-record.
	w.broken = w.size > 0 && lastByteIsNot(f, w.size, '\n')
	return true
}

// lastByteIsNot reports whether the file's last byte is not c.
func lastByteIsNot(f *os.File, size int64, c byte) bool {
	var b [1]byte
	if _, err := f.ReadAt(b[:], size-1); err != nil {
		return false
	}
	return b[0] != c
}

func (w *fileWriter) fail(err error) {
	if w.firstErr == nil {
		w.firstErr = err
	}
}

// write appends whole records, rotating between records when the file
// would grow past MaxSize. Records that cannot be written are dropped.
func (w *fileWriter) write(b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(b) > 0 {
		if !w.ensureOpen() {
			return
		}
		chunk := b
		if w.size+int64(len(b)) > w.opts.MaxSize {
			room := int(min(int64(len(b)), max(w.opts.MaxSize-w.size, 0)))
			cut := bytes.LastIndexByte(b[:room], '\n') + 1
			switch {
			case cut > 0:
				chunk = b[:cut]
			case w.size > 0:
				if w.rotate() {
					continue
				}
				if w.f == nil {
					return
				}
				// Rotation failed but the old file is open again: grow
				// past the limit rather than lose the record or loop.
			default:
				// An empty file and a record larger than MaxSize: it
				// goes alone in this file.
				if i := bytes.IndexByte(b, '\n'); i >= 0 {
					chunk = b[:i+1]
				}
			}
		}
		w.writeChunk(chunk)
		b = b[len(chunk):]
	}
}

// writeChunk writes b; on failure the file is closed, to be reopened on a
// later write. Called with mu held.
func (w *fileWriter) writeChunk(b []byte) {
	if w.broken {
		if _, err := w.f.Write([]byte{'\n'}); err != nil {
			w.writeFailed(err)
			return
		}
		w.size++
		w.broken = false
	}
	n, err := w.f.Write(b)
	w.size += int64(n)
	if err != nil {
		w.broken = n > 0
		w.writeFailed(err)
	}
}

func (w *fileWriter) writeFailed(err error) {
	w.fail(fmt.Errorf("write log file: %w", err))
	w.f.Close()
	w.f = nil
	w.lastOpen = time.Now()
}

// rotate shifts path -> path.1 -> ... and opens a fresh path; it reports
// whether a fresh file is open. Called with mu held.
func (w *fileWriter) rotate() bool {
	w.f.Close()
	w.f = nil
	if w.opts.MaxFiles <= 1 {
		if err := os.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.fail(fmt.Errorf("rotate log file: %w", err))
		}
	} else {
		oldest := rotatedName(w.path, w.opts.MaxFiles-1)
		if err := os.Remove(oldest); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.fail(fmt.Errorf("rotate log file: %w", err))
		}
		for i := w.opts.MaxFiles - 2; i >= 1; i-- {
			if err := os.Rename(rotatedName(w.path, i), rotatedName(w.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				w.fail(fmt.Errorf("rotate log file: %w", err))
			}
		}
		if err := os.Rename(w.path, rotatedName(w.path, 1)); err != nil {
			w.fail(fmt.Errorf("rotate log file: %w", err))
		}
	}
	w.lastOpen = time.Time{}
	w.broken = false
	return w.ensureOpen() && w.size == 0
}

// close closes the file for good and returns the first error met.
func (w *fileWriter) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			w.fail(fmt.Errorf("close log file: %w", err))
		}
		w.f = nil
	}
	return w.firstErr
}

// rotatedName is the name of the i-th rotated file (1 = the newest).
func rotatedName(path string, i int) string {
	return path + "." + strconv.Itoa(i)
}
