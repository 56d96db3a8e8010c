package containerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"golang.org/x/sys/unix"

	"flotilla/agent/runtime"
)

// fifoBuffered reports how many bytes wait in a FIFO, without reading
// them: opening a read end and asking costs the FIFO nothing.
func fifoBuffered(t *testing.T, path string) int {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatalf("open fifo: %v", err)
	}
	defer f.Close()
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCINQ) // FIONREAD
	if err != nil {
		t.Fatalf("FIONREAD %s: %v", path, err)
	}
	return n
}

// blockedInWrite reports whether a thread of process pid is in a write to
// its stdout or stderr (/proc/<pid>/task/*/syscall starts with the
// syscall's number and first argument).
func blockedInWrite(pid int) bool {
	threads, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", pid))
	for _, p := range threads {
		b, _ := os.ReadFile(p)
		for _, fd := range []string{"0x1", "0x2"} {
			if strings.HasPrefix(string(b), fmt.Sprintf("%d %s ", unix.SYS_WRITE, fd)) {
				return true
			}
		}
	}
	return false
}

// checkLines checks that the log holds "line 0" ... "line n-1" exactly
// once each, even lines on stdout and odd ones on stderr (as the toolbox's
// log command writes them), each stream in order.
func checkLines(t *testing.T, path string, n int) {
	t.Helper()
	last := map[string]int{"stdout": -2, "stderr": -1}
	// A line cut by a Runtime going away mid-line is a P record whose
	// rest follows in the next record of its stream; readers join them.
	partial := map[string]string{}
	count := 0
	for _, rec := range logContent(t, path) {
		stream, rest, _ := strings.Cut(rec, " ")
		tag, content, _ := strings.Cut(rest, " ")
		if tag == "P" {
			partial[stream] += content
			continue
		}
		content, partial[stream] = partial[stream]+content, ""
		i, err := strconv.Atoi(strings.TrimPrefix(content, "line "))
		if tag != "F" || err != nil {
			t.Fatalf("unexpected record %q", rec)
		}
		if i != last[stream]+2 {
			t.Fatalf("%s: line %d follows line %d", stream, i, last[stream])
		}
		last[stream] = i
		count++
	}
	if count != n {
		t.Fatalf("log has %d lines, want %d", count, n)
	}
}

// TestOutputSurvivesAgentRestart: closing the Runtime (the agent going
// away) leaves the container running, its writes waiting in the FIFOs and
// then blocking once they are full (not failing); a new Runtime on the
// same FIFO dir reads on, and every line reaches the log exactly once.
func TestOutputSurvivesAgentRestart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// About 1 MB of output as fast as the container can write it, far more
	// than the pipes between it and us hold (64 KiB in the shim's pipe,
	// 64 KiB in each FIFO): it is still writing when the Runtime closes.
	const n = 100000
	s := e.spec("chatty", "log", strconv.Itoa(n))
	id := e.run(s)
	if err := e.rt.Close(); err != nil {
		t.Fatal(err)
	}
	size := func() int64 {
		st, err := os.Stat(s.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	away := size()

	// Nobody reads now. The container goes on until the pipes are full,
	// then blocks in write: still running, not killed by SIGPIPE.
	ctr, err := e.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	tk, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	stdout := filepath.Join(e.fifoDir, id, "stdout")
	if err := poll(30*time.Second, func() bool {
		return fifoBuffered(t, stdout) >= 48<<10 && blockedInWrite(int(tk.Pid()))
	}); err != nil {
		t.Fatalf("container not blocked on a full fifo: %d bytes buffered", fifoBuffered(t, stdout))
	}
	if st, err := tk.Status(ctx); err != nil || st.Status != containerd.Running {
		t.Fatalf("container while its output is not read: %+v, %v", st, err)
	}
	if size() != away {
		t.Fatal("the log grew while no Runtime was reading")
	}
	t.Logf("%d bytes of the log written before the Runtime closed", away)

	// The agent is back: it reattaches on its own.
	e.rt = e.newRuntime()
	got := e.waitState(e.rt, id, runtime.StateExited, time.Minute)
	if got.ExitCode != 0 {
		t.Fatalf("container exited %d (%s), want 0", got.ExitCode, got.Reason)
	}
	checkLines(t, s.LogPath, n)
	if _, err := os.Stat(filepath.Join(e.fifoDir, id)); !os.IsNotExist(err) {
		t.Errorf("fifo dir of an exited container: %v", err)
	}
}

// TestOutputCleanup: copiers end with their tasks and RemoveContainer
// leaves no FIFO directory, goroutine or file descriptor behind.
func TestOutputCleanup(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// Warm up: the first container makes connections and caches that stay.
	warm := e.run(e.spec("warm", "exit", "0"))
	e.waitState(e.rt, warm, runtime.StateExited, 20*time.Second)
	if err := e.rt.RemoveContainer(ctx, warm); err != nil {
		t.Fatal(err)
	}
	goroutines := goruntime.NumGoroutine()
	fds := openFDs(t)

	exits := e.run(e.spec("exits", "log", "3"))
	stopped := e.run(e.spec("stopped", "sleep", "infinity"))
	killed := e.run(e.spec("killed", "sleep", "infinity", "--ignore-term"))
	tty := e.spec("tty", "sleep", "infinity")
	tty.TTY = true
	terminal := e.run(tty)
	e.waitState(e.rt, exits, runtime.StateExited, 20*time.Second)
	for _, id := range []string{stopped, killed, terminal} {
		e.waitState(e.rt, id, runtime.StateRunning, 10*time.Second)
	}
	if got := len(dirEntries(t, e.fifoDir)); got != 3 {
		t.Errorf("%d fifo dirs for 3 running containers", got)
	}
	t.Logf("3 running containers: %d goroutines, %d fds more than before", goruntime.NumGoroutine()-goroutines, openFDs(t)-fds)
	if err := e.rt.StopContainer(ctx, stopped, time.Second); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{exits, stopped, killed, terminal} {
		if err := e.rt.RemoveContainer(ctx, id); err != nil {
			t.Fatal(err)
		}
		e.checkGone(id)
	}
	if left := dirEntries(t, e.fifoDir); len(left) != 0 {
		t.Errorf("fifo dir keeps %v", left)
	}
	if err := poll(10*time.Second, func() bool {
		return goruntime.NumGoroutine() <= goroutines && openFDs(t) <= fds
	}); err != nil {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines %d (was %d), fds %d (was %d)\n%s",
			goruntime.NumGoroutine(), goroutines, openFDs(t), fds, buf[:goruntime.Stack(buf, true)])
	}
}

func openFDs(t *testing.T) int { return len(dirEntries(t, "/proc/self/fd")) }

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// A container with a terminal has one stream; its \r\n line ends are
// plain lines in the log.
func TestTTYOutput(t *testing.T) {
	e := newEnv(t)
	s := e.spec("tty", "log", "3")
	s.TTY = true
	id := e.run(s)
	e.waitState(e.rt, id, runtime.StateExited, 20*time.Second)
	want := []string{"stdout F line 0", "stdout F line 1", "stdout F line 2"}
	if got := logContent(t, s.LogPath); !slices.Equal(got, want) {
		t.Errorf("log records %q, want %q", got, want)
	}
}

// TestOutputLatency: a line a running container writes is in its log at
// once. The bound is loose for loaded CI machines; the log says what it
// was.
func TestOutputLatency(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec("quiet", "sleep", "infinity")
	id := e.run(s)
	waitLog(t, s.LogPath, "sleeping infinity")
	var worst time.Duration
	for i := range 10 {
		line := fmt.Sprintf("ping %d", i)
		// Written by an exec'd process into the container's own stdout.
		if code, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "write", "/proc/1/fd/1", line + "\n"}}); err != nil || code != 0 {
			t.Fatalf("exec write: %d %v", code, err)
		}
		written := time.Now()
		waitLog(t, s.LogPath, " F "+line+"\n")
		worst = max(worst, time.Since(written))
	}
	t.Logf("worst time from a line written to it in the log: %s", worst)
	if worst > time.Second {
		t.Errorf("a line took %s to reach the log", worst)
	}
}

func TestDefaultFIFODir(t *testing.T) {
	rt, err := New(context.Background(), Config{Address: "/tmp/flotilla-no-such-" + randHex(4) + ".sock", Namespace: "ns-" + randHex(4)})
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(os.TempDir(), "flotilla-fifo", rt.cfg.Namespace)
	if os.Geteuid() == 0 {
		want = "/run/flotilla/fifo/" + rt.cfg.Namespace
	}
	if rt.cfg.FIFODir != want {
		t.Errorf("FIFODir %q, want %q", rt.cfg.FIFODir, want)
	}
	if st, err := os.Stat(want); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Errorf("fifo dir: %v %v", st, err)
	}
	// Empty, it goes with the Runtime.
	rt.Close()
	if _, err := os.Stat(want); !os.IsNotExist(err) {
		t.Errorf("fifo dir after Close: %v", err)
	}
	// So do its parents if this test made them (they are empty then).
	os.Remove(filepath.Dir(want))
	os.Remove(filepath.Dir(filepath.Dir(want)))
}
