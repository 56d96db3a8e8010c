package containerdproc

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// StartForTest starts a private containerd for one test under a short
// temporary directory (so its socket path fits) and stops it when the test
// ends: tasks killed, shims gone, mounts under the directory undone, then
// the directory removed. It skips the test, saying why, when not run as
// root or when containerd or runc is missing.
func StartForTest(t testing.TB) *Process {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd tests need root")
	}
	if _, err := findBinary(""); err != nil {
		t.Skipf("containerd tests need containerd: %v", err)
	}
	if !haveRunc() {
		t.Skip("containerd tests need runc (not in PATH nor /usr/sbin)")
	}
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatalf("make containerd dir: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, Config{Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
		// RemoveAll must never walk into a mount (a bind mount would take
		// the host's files with it), so check that Stop left none.
		if mps, err := MountsUnder(dir); err != nil || len(mps) > 0 {
			t.Errorf("containerd dir %s keeps mounts %v (%v); not removing it", dir, mps, err)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove containerd dir: %v", err)
		}
	})
	return p
}

func haveRunc() bool {
	if _, err := exec.LookPath("runc"); err == nil {
		return true
	}
	_, err := os.Stat("/usr/sbin/runc")
	return err == nil
}

// TestLogWriter returns a writer that sends log lines to t's log until t
// ends, then drops them: goroutines of a runtime or agent may still log
// after the test, when t.Log would panic. Call it before the cleanups of
// what logs to it, so its own cleanup runs last.
func TestLogWriter(t testing.TB) io.Writer {
	w := &testLogWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return w
}

type testLogWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
