// Package logs owns containers' log files: the Writer that makes them and
// the reader that serves them to `kubectl logs`.
//
// # Writing
//
// The agent copies each container's stdout and stderr into its log file:
// the runtime hands Writer.Copy the read ends of the container's FIFOs
// (package agent/runtime/containerd), one Copy per stream, both into one
// Writer. Copying in the agent costs a goroutine and a read buffer per
// stream; a logger process per container, as containerd's binary log
// driver would run, costs megabytes each.
//
// The file is in the CRI log format that the kubelet and crictl use, one
// record per line:
//
//	2024-05-01T10:00:00.123456789Z stdout F hello
//
// where the tag is F for a full line and P for a fragment of a longer one
// (lines are split every 16 KiB, and a line left without its newline for a
// moment is written as a fragment so it is visible at once). Every batch
// of records is written in one write call under one lock, so the two
// streams never interleave within a record. Files rotate by size:
// path -> path.1 -> ... -> path.<MaxFiles-1>, the oldest dropped.
//
// A line is written as soon as its newline is read; a \r before the
// newline (a terminal's line end) is dropped, as the CRI plugin does.
// When Copy is stopped (the agent restarting) it reads nothing more and
// writes the unterminated rest of a line as a fragment: the container's
// pipe keeps the rest for the next agent, which carries on the same file.
//
// A Writer must never block the container: if the disk is full or the
// file cannot be opened, it drops records and keeps reading (retrying the
// file now and then), because a full pipe would stall the container's
// writes.
//
// # Reading
//
// Read serves what `kubectl logs` asks for: tail, since, timestamps,
// limitBytes and follow, over the rotated files oldest first and then the
// current one, joining fragments back into lines. A follow notices
// rotation by comparing the open file with the one at the path, finishes
// the old one and moves on, so no line is lost or repeated.
//
// This package depends on neither the agent nor containerd: it sees
// readers and files only.
package logs
