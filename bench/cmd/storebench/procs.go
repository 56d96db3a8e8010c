package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// harness owns every process and directory the benchmark makes, so one
// cleanup ends them all: on success, on error and on SIGINT/SIGTERM.
type harness struct {
	dir  string // root temp dir; every data dir and log lives under it
	keep bool   // keep dir and everything under it (debugging)
	log  *slog.Logger

	mu    sync.Mutex
	procs map[*proc]struct{}
	ports map[string]bool // ip:port handed out in this run
}

func newHarness(tmpRoot string, keep bool, log *slog.Logger) (*harness, error) {
	dir, err := os.MkdirTemp(tmpRoot, "storebench-")
	if err != nil {
		return nil, fmt.Errorf("make temp dir under %s: %w", tmpRoot, err)
	}
	return &harness{dir: dir, keep: keep, log: log, procs: map[*proc]struct{}{}, ports: map[string]bool{}}, nil
}

// subdir makes a fresh directory under the harness root.
func (h *harness) subdir(name string) (string, error) {
	d := filepath.Join(h.dir, name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	return d, os.MkdirAll(d, 0o700)
}

// removeDir removes a run's directory once its processes are gone, unless keep.
func (h *harness) removeDir(dir string) {
	if !h.keep {
		_ = os.RemoveAll(dir)
	}
}

// cleanup kills every process still running and removes the temp dir unless keep.
func (h *harness) cleanup() {
	h.mu.Lock()
	ps := make([]*proc, 0, len(h.procs))
	for p := range h.procs {
		ps = append(ps, p)
	}
	h.mu.Unlock()
	for _, p := range ps {
		p.kill()
	}
	if h.keep {
		h.log.Info("kept temp dir", "dir", h.dir)
		return
	}
	if err := os.RemoveAll(h.dir); err != nil {
		h.log.Warn("remove temp dir", "dir", h.dir, "err", err)
	}
}

// freePort returns a TCP port on ip that is free for TCP and UDP now and
// was not handed out before in this run (gossip needs both protocols).
func (h *harness) freePort(ip string) (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, fmt.Errorf("listen on %s: %w (is 127.0.0.0/8 on lo?)", ip, err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, uerr := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		_ = l.Close()
		if uerr != nil {
			continue
		}
		_ = u.Close()
		key := net.JoinHostPort(ip, strconv.Itoa(port))
		h.mu.Lock()
		used := h.ports[key]
		h.ports[key] = true
		h.mu.Unlock()
		if !used {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port on %s", ip)
}

// proc is one child process: its own process group, killed with the harness.
type proc struct {
	h    *harness
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
}

// start runs bin with args, stdout and stderr appended to logPath.
func (h *harness) start(name, bin string, args []string, logPath string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = lf
	cmd.Stderr = lf
	// Own process group so a kill reaches any children; Pdeathsig so the
	// child dies with us even if we are killed with SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{h: h, name: name, cmd: cmd, done: make(chan struct{})}
	h.mu.Lock()
	h.procs[p] = struct{}{}
	h.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		_ = lf.Close()
		h.mu.Lock()
		delete(h.procs, p)
		h.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the process group and waits for the exit.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	<-p.done
}

// killNow sends SIGKILL and returns at once (the failover clock starts here).
func (p *proc) killNow() error {
	return syscall.Kill(-p.pid(), syscall.SIGKILL)
}

// stop asks politely (SIGTERM), then kills after timeout.
func (p *proc) stop(timeout time.Duration) {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
	}
}

// waitFor polls cond every interval until it returns nil, ctx ends, or the
// timeout passes; the last error says why it gave up.
func waitFor(ctx context.Context, timeout, interval time.Duration, what string, cond func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = cond(ctx); last == nil {
			return nil
		}
		var exit *exitError
		if errors.As(last, &exit) {
			return fmt.Errorf("%s: %w", what, last)
		}
		select {
		case <-ctx.Done():
			if last == nil || errors.Is(last, context.DeadlineExceeded) {
				last = ctx.Err()
			}
			return fmt.Errorf("%s: gave up after %s: %w", what, timeout, last)
		case <-time.After(interval):
		}
	}
}

// memInfo is a process's resident memory from /proc/PID/status, in bytes.
type memInfo struct {
	rss, hwm, anon, file int64
}

func readMem(pid int) (memInfo, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{}, err
	}
	var m memInfo
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var kb int64
		if _, err := fmt.Sscanf(strings.TrimSpace(val), "%d kB", &kb); err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			m.rss = kb << 10
		case "VmHWM":
			m.hwm = kb << 10
		case "RssAnon":
			m.anon = kb << 10
		case "RssFile":
			m.file = kb << 10
		}
	}
	if m.rss == 0 {
		return m, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return m, nil
}

// loadAvg is the 1-minute load average: other work on this small machine
// skews every number, so each run records it.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
