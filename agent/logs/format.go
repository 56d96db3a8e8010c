package logs

import (
	"bytes"
	"errors"
	"fmt"
	"time"
)

// The streams of a container, as a CRI log record names them; Copy takes
// one of them.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// Tags in a CRI log record.
const (
	tagFull    = 'F'
	tagPartial = 'P'
)

// maxRecordContent is where a long line is cut into P records, as
// containerd's CRI plugin does (16 KiB), so one record stays small enough
// for a reader to hold.
const maxRecordContent = 16 << 10

// timeFormat is the record timestamp layout, the one the CRI format and
// kubectl --timestamps use.
const timeFormat = time.RFC3339Nano

// ErrBadRecord is returned for a line that is not a CRI log record.
var ErrBadRecord = errors.New("malformed log record")

// record is one parsed line of a log file.
type record struct {
	time    time.Time
	stream  string // Stdout or Stderr
	partial bool   // tag P: the line continues in the next record of this stream
	content []byte // aliases the parsed buffer
}

// appendRecord appends one CRI record (with its newline) to buf.
func appendRecord(buf []byte, t time.Time, stream string, partial bool, content []byte) []byte {
	buf = t.UTC().AppendFormat(buf, timeFormat)
	buf = append(buf, ' ')
	buf = append(buf, stream...)
	if partial {
		buf = append(buf, ' ', tagPartial, ' ')
	} else {
		buf = append(buf, ' ', tagFull, ' ')
	}
	buf = append(buf, content...)
	return append(buf, '\n')
}

// parseLine parses one record; line may or may not end in its newline.
// The content aliases line.
func parseLine(line []byte) (record, error) {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	var r record
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return r, fmt.Errorf("parse log record: no stream: %w", ErrBadRecord)
	}
	t, err := time.Parse(timeFormat, string(ts))
	if err != nil {
		return r, fmt.Errorf("parse log record timestamp %q: %w", clip(ts), ErrBadRecord)
	}
	stream, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return r, fmt.Errorf("parse log record: no tag: %w", ErrBadRecord)
	}
	switch string(stream) {
	case Stdout:
		r.stream = Stdout
	case Stderr:
		r.stream = Stderr
	default:
		return r, fmt.Errorf("parse log record stream %q: %w", clip(stream), ErrBadRecord)
	}
	// The tag may be followed by a space and the content, or end the line
	// (an empty line written by a writer that trims trailing spaces).
	tag, content, _ := bytes.Cut(rest, []byte{' '})
	switch {
	case len(tag) == 1 && tag[0] == tagFull:
	case len(tag) == 1 && tag[0] == tagPartial:
		r.partial = true
	default:
		return r, fmt.Errorf("parse log record tag %q: %w", clip(tag), ErrBadRecord)
	}
	r.time = t
	r.content = content
	return r, nil
}

// clip shortens bad input quoted in an error message.
func clip(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}
