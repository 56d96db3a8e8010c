package logs

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestParseLine(t *testing.T) {
	ts := time.Date(2024, 5, 1, 10, 0, 0, 123456789, time.UTC)
	tests := []struct {
		name    string
		line    string
		want    record
		wantErr bool
	}{
		{name: "full", line: "2024-05-01T10:00:00.123456789Z stdout F hello world\n",
			want: record{time: ts, stream: Stdout, content: []byte("hello world")}},
		{name: "partial stderr", line: "2024-05-01T10:00:00.123456789Z stderr P abc",
			want: record{time: ts, stream: Stderr, partial: true, content: []byte("abc")}},
		{name: "empty content", line: "2024-05-01T10:00:00.123456789Z stdout F \n",
			want: record{time: ts, stream: Stdout, content: []byte{}}},
		{name: "tag ends line", line: "2024-05-01T10:00:00.123456789Z stdout F",
			want: record{time: ts, stream: Stdout}},
		{name: "content keeps spaces", line: "2024-05-01T10:00:00.123456789Z stdout F  a  b ",
			want: record{time: ts, stream: Stdout, content: []byte(" a  b ")}},
		{name: "offset timestamp", line: "2024-05-01T12:00:00.123456789+02:00 stdout F x",
			want: record{time: ts, stream: Stdout, content: []byte("x")}},
		{name: "empty", line: "", wantErr: true},
		{name: "bad time", line: "yesterday stdout F x", wantErr: true},
		{name: "bad stream", line: "2024-05-01T10:00:00Z stdin F x", wantErr: true},
		{name: "bad tag", line: "2024-05-01T10:00:00Z stdout X x", wantErr: true},
		{name: "long tag", line: "2024-05-01T10:00:00Z stdout FF x", wantErr: true},
		{name: "no tag", line: "2024-05-01T10:00:00Z stdout", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLine([]byte(tt.line))
			if tt.wantErr {
				if !errors.Is(err, ErrBadRecord) {
					t.Fatalf("parseLine(%q) error = %v, want ErrBadRecord", tt.line, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseLine(%q): %v", tt.line, err)
			}
			if !got.time.Equal(tt.want.time) || got.stream != tt.want.stream || got.partial != tt.want.partial || !bytes.Equal(got.content, tt.want.content) {
				t.Fatalf("parseLine(%q) = %+v, want %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestAppendRecordRoundTrip(t *testing.T) {
	// A whole second: RFC3339Nano drops the fraction, which must still parse.
	for _, ts := range []time.Time{time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), time.Now()} {
		line := appendRecord(nil, ts, Stderr, true, []byte("a b"))
		r, err := parseLine(line)
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		if !r.time.Equal(ts) || r.stream != Stderr || !r.partial || string(r.content) != "a b" {
			t.Fatalf("round trip of %q = %+v", line, r)
		}
	}
}

// FuzzParseLine: any input either parses or fails with ErrBadRecord, never
// panics, and whatever parses survives being written and parsed again.
func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		"2024-05-01T10:00:00.123456789Z stdout F hello\n",
		"2024-05-01T10:00:00Z stderr P ",
		"2024-05-01T10:00:00+01:00 stdout F",
		"x stdout F y",
		" ",
		"2024-05-01T10:00:00Z  F x",
		"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := parseLine(line)
		if err != nil {
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("parseLine(%q): error %v does not wrap ErrBadRecord", line, err)
			}
			return
		}
		if bytes.IndexByte(r.content, '\n') >= 0 {
			// A newline inside content cannot be written back as one
			// record; the Writer never produces it.
			return
		}
		again, err := parseLine(appendRecord(nil, r.time, r.stream, r.partial, r.content))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", line, err)
		}
		if !again.time.Equal(r.time) || again.stream != r.stream || again.partial != r.partial || !bytes.Equal(again.content, r.content) {
			t.Fatalf("round trip of %q: %+v != %+v", line, again, r)
		}
	})
}
