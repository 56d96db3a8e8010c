package containerdproc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd"
)

// Errors Start returns, matched with errors.Is.
var (
	// ErrNoBinary: the containerd executable was not found.
	ErrNoBinary = errors.New("containerd binary not found")
	// ErrAlreadyRunning: something already answers on the socket Start
	// would use, so a second daemon over the same root must not start.
	ErrAlreadyRunning = errors.New("containerd already running")
)

const (
	// maxSocketPath keeps the socket (and its ".ttrpc" sibling) under the
	// 108-byte sun_path limit with room to spare.
	maxSocketPath = 100
	// longPathSocketDir holds sockets whose path under Dir would be too long.
	longPathSocketDir = "/run/flotilla"

	readyTimeout = 30 * time.Second // a cold containerd loads its plugins in well under this
	termTimeout  = 10 * time.Second // SIGTERM → SIGKILL
	pingTimeout  = 2 * time.Second
)

// Config says where and how to run containerd. The zero value of every
// field but Dir is a usable default.
type Config struct {
	// Dir holds root/, state/, config.toml and containerd.log, and the
	// socket too when its path is short enough (else it goes under
	// /run/flotilla/, named after a hash of Dir).
	Dir string
	// Binary is the containerd executable; default "containerd" from PATH,
	// then /usr/bin/containerd.
	Binary string
	// Logger receives what this package does (not containerd's own log,
	// which goes to Dir/containerd.log). Default: discard.
	Logger *slog.Logger
}

// Process is one containerd this package started (and restarts). Its
// methods are safe for concurrent use.
type Process struct {
	dir, binary string
	address     string
	ttrpc       string
	configPath  string
	logPath     string
	log         *slog.Logger

	mu       sync.Mutex
	d        *daemon // the current daemon process; nil before the first launch
	stopping bool    // Stop was called: nothing may launch again
}

// daemon is one containerd process, started by us or adopted from a
// previous agent.
type daemon struct {
	pid    int
	exited chan struct{} // closed once the process is gone
}

func (d *daemon) running() bool { return d != nil && !closed(d.exited) }

// AddressFor returns the socket a Process started with this Dir listens on,
// so a caller can find a daemon that outlived its previous agent.
func AddressFor(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	sock := filepath.Join(abs, "containerd.sock")
	if len(sock)+len(".ttrpc") < maxSocketPath {
		return sock
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(longPathSocketDir, hex.EncodeToString(sum[:8])+".sock")
}

// Start writes the config, starts containerd and returns once its socket
// answers Version (or fails: the daemon is then killed and the error says
// why, with the tail of its log). ctx bounds the wait, not the daemon's life.
func Start(ctx context.Context, cfg Config) (*Process, error) {
	if cfg.Dir == "" {
		return nil, errors.New("start containerd: Config.Dir is empty")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("start containerd: resolve dir %q: %w", cfg.Dir, err)
	}
	bin, err := findBinary(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Process{
		dir:        dir,
		binary:     bin,
		address:    AddressFor(dir),
		configPath: filepath.Join(dir, "config.toml"),
		logPath:    filepath.Join(dir, "containerd.log"),
		log:        log.With("component", "containerd", "dir", dir),
	}
	p.ttrpc = p.address + ".ttrpc"

	if Running(ctx, p.address) {
		// A managed containerd outlives its agent on purpose (the
		// containers do not need the agent); the restarted agent takes it
		// over rather than starting a second one over the same root.
		pid := findDaemon(p.configPath)
		if pid == 0 {
			return nil, fmt.Errorf("start containerd on %s: %w (and not one started with %s)", p.address, ErrAlreadyRunning, p.configPath)
		}
		p.d = adopt(pid)
		p.log.Info("adopted running containerd", "pid", pid, "address", p.address)
		return p, nil
	}
	for _, d := range []string{dir, p.root(), p.state(), filepath.Dir(p.address)} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("start containerd: make %s: %w", d, err)
		}
	}
	if err := os.WriteFile(p.configPath, []byte(p.config()), 0o644); err != nil {
		return nil, fmt.Errorf("start containerd: write config: %w", err)
	}
	if err := p.launch(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

func findBinary(name string) (string, error) {
	if name != "" {
		path, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %v", ErrNoBinary, name, err)
		}
		return path, nil
	}
	if path, err := exec.LookPath("containerd"); err == nil {
		return path, nil
	}
	if _, err := os.Stat("/usr/bin/containerd"); err == nil {
		return "/usr/bin/containerd", nil
	}
	return "", fmt.Errorf("%w: not in PATH nor /usr/bin", ErrNoBinary)
}

func (p *Process) root() string  { return filepath.Join(p.dir, "root") }
func (p *Process) state() string { return filepath.Join(p.dir, "state") }

// config is containerd's config (version 2). Every path containerd would
// otherwise take from its defaults under /var/lib, /run or /opt is pinned
// under Dir, so two daemons (a test's and a real one) never share a file.
func (p *Process) config() string {
	q := strconv.Quote
	return fmt.Sprintf(`# Written by flotilla (agent/containerdproc); rewritten on every start.
version = 2
root = %s
state = %s
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %s

[ttrpc]
  address = %s

[plugins."io.containerd.internal.v1.opt"]
  path = %s
`, q(p.root()), q(p.state()), q(p.address), q(p.ttrpc), q(filepath.Join(p.root(), "opt")))
}

// Address is the daemon's gRPC socket.
func (p *Process) Address() string { return p.address }

// Dir is the directory everything of this daemon lives under.
func (p *Process) Dir() string { return p.dir }

// launch starts the daemon unless one of ours is running, and waits until
// it answers. Callers must not hold p.mu.
func (p *Process) launch(ctx context.Context) error {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		return errors.New("start containerd: process is stopping")
	}
	if p.d.running() {
		p.mu.Unlock()
		return nil
	}
	// A daemon killed with SIGKILL leaves its sockets; containerd refuses
	// to listen on an existing path.
	for _, s := range []string{p.address, p.ttrpc} {
		if err := os.Remove(s); err != nil && !os.IsNotExist(err) {
			p.mu.Unlock()
			return fmt.Errorf("start containerd: remove stale socket: %w", err)
		}
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.mu.Unlock()
		return fmt.Errorf("start containerd: open log: %w", err)
	}
	cmd := exec.Command(p.binary, "--config", p.configPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = p.dir
	cmd.Env = withSbinPath(os.Environ())
	// Its own process group: a terminal's Ctrl-C reaches the agent, which
	// then stops containerd in order, rather than both at once.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		p.mu.Unlock()
		return fmt.Errorf("start containerd %s: %w", p.binary, err)
	}
	logf.Close() // the child has its own copy
	d := &daemon{pid: cmd.Process.Pid, exited: make(chan struct{})}
	p.d = d
	p.mu.Unlock()

	go func() {
		err := cmd.Wait()
		p.log.Info("containerd exited", "pid", d.pid, "err", err)
		close(d.exited)
	}()
	p.log.Info("containerd started", "pid", d.pid, "address", p.address)

	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if Running(ctx, p.address) {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("start containerd: exited before answering on %s: %s", p.address, p.logTail())
		case <-ctx.Done():
			p.kill(d)
			return fmt.Errorf("start containerd: wait for %s: %w", p.address, ctx.Err())
		case <-deadline.C:
			p.kill(d)
			return fmt.Errorf("start containerd: no answer on %s after %s: %s", p.address, readyTimeout, p.logTail())
		case <-tick.C:
		}
	}
}

// withSbinPath makes sure the shim finds runc (in /usr/sbin on Debian) even
// when the agent was started with a user's PATH.
func withSbinPath(env []string) []string {
	const sbin = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			env[i] = "PATH=" + v + ":" + sbin
			return env
		}
	}
	return append(env, "PATH="+sbin)
}

func (p *Process) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 2000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "log tail: " + strings.TrimSpace(string(b))
}

func closed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// kill ends one daemon process: SIGTERM, then SIGKILL after termTimeout.
func (p *Process) kill(d *daemon) {
	if !d.running() {
		return
	}
	_ = syscall.Kill(d.pid, syscall.SIGTERM)
	t := time.NewTimer(termTimeout)
	defer t.Stop()
	select {
	case <-d.exited:
		return
	case <-t.C:
	}
	p.log.Warn("containerd ignored SIGTERM; killing it", "pid", d.pid)
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
	<-d.exited
}

// Kill ends the daemon with SIGKILL and nothing else: shims and containers
// keep running, as after a crash. Supervise (if running) brings it back;
// otherwise Restart does. Tests use it to exercise a containerd failure.
func (p *Process) Kill() error {
	p.mu.Lock()
	d := p.d
	p.mu.Unlock()
	if !d.running() {
		return nil
	}
	if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill containerd: %w", err)
	}
	<-d.exited
	return nil
}

// Restart starts the daemon again after Kill or a crash (a running one is
// killed first) and waits until it answers. Running containers are kept:
// the new daemon reconnects to their shims.
func (p *Process) Restart(ctx context.Context) error {
	if err := p.Kill(); err != nil {
		return err
	}
	return p.launch(ctx)
}

// Supervise restarts containerd whenever it exits, with exponential
// back-off (0.5 s doubling to 30 s, reset after a minute of good running),
// until ctx ends or Stop is called. It does not stop the daemon when ctx
// ends: Stop does, so the agent chooses the order of shutdown.
func (p *Process) Supervise(ctx context.Context) {
	const (
		minBackoff = 500 * time.Millisecond
		maxBackoff = 30 * time.Second
		stableFor  = time.Minute
	)
	backoff := minBackoff
	for {
		p.mu.Lock()
		d, stopping := p.d, p.stopping
		p.mu.Unlock()
		if stopping {
			return
		}
		began := time.Now()
		if d != nil {
			select {
			case <-ctx.Done():
				return
			case <-d.exited:
			}
		}
		if time.Since(began) > stableFor {
			backoff = minBackoff
		}
		p.mu.Lock()
		stopping = p.stopping
		p.mu.Unlock()
		if stopping {
			return
		}
		p.log.Warn("containerd is not running; restarting", "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := p.launch(ctx); err != nil {
			p.log.Error("restart containerd", "err", err)
			backoff = min(backoff*2, maxBackoff)
			// launch left p.d exited (or killed it), so the next round
			// waits only for the back-off.
			continue
		}
		p.log.Info("containerd restarted")
	}
}

// Stop ends everything this daemon runs: every task (killed and deleted
// through the API, so runc cleans its state and cgroups), the daemon
// (SIGTERM, then SIGKILL), any shim still naming our socket and its
// processes, and any mount left under Dir. It removes no files but the
// sockets. Calling it twice is harmless.
func (p *Process) Stop() error {
	p.mu.Lock()
	p.stopping = true
	d := p.d
	p.mu.Unlock()

	var errs []error
	if d.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := deleteAllTasks(ctx, p.address, p.log); err != nil {
			p.log.Warn("delete tasks before stopping containerd", "err", err)
		}
		cancel()
		p.kill(d)
	}
	if killed, err := p.killShims(); err != nil {
		errs = append(errs, err)
	} else if killed {
		p.runcCleanup()
	}
	if err := UnmountUnder(p.dir); err != nil {
		errs = append(errs, err)
	}
	for _, s := range []string{p.address, p.ttrpc} {
		if err := os.Remove(s); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("remove socket: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop containerd: %w", err)
	}
	return nil
}

// Running reports whether a containerd answers Version on address within
// a couple of seconds.
func Running(ctx context.Context, address string) bool {
	if _, err := os.Stat(address); err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	c, err := containerd.New(address, containerd.WithTimeout(pingTimeout))
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.Version(ctx)
	return err == nil
}

// readProcFile reads a small /proc file; a process that vanished reads as
// empty.
func readProcFile(pid int, name string) string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
	if err != nil {
		return ""
	}
	return string(b)
}

// pids lists the numeric entries of /proc.
func pids() []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	var out []int
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// ppid reads a process's parent from /proc/PID/stat (the field after the
// parenthesised command, which may itself contain spaces or parentheses).
func ppid(pid int) int {
	s := readProcFile(pid, "stat")
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// shimsOf finds the shim processes started for the daemon on address: a
// v2 shim's command line is "containerd-shim-runc-v2 -namespace NS -id ID
// -address ADDR ...".
func shimsOf(address string) []int {
	var out []int
	for _, pid := range pids() {
		args := strings.Split(strings.TrimRight(readProcFile(pid, "cmdline"), "\x00"), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if (args[i] == "-address" || args[i] == "--address") && args[i+1] == address {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// killShims kills every shim still naming our socket and their children
// (container inits, exec'd processes, logger binaries), then waits until
// they are gone. The children die first: killing only the shim would leave
// them reparented and running.
func (p *Process) killShims() (bool, error) {
	shims := shimsOf(p.address)
	if len(shims) == 0 {
		return false, nil
	}
	isShim := map[int]bool{}
	for _, s := range shims {
		isShim[s] = true
	}
	var victims []int
	for _, pid := range pids() {
		if isShim[ppid(pid)] {
			victims = append(victims, pid)
		}
	}
	victims = append(victims, shims...)
	p.log.Warn("killing shims left by containerd", "shims", shims, "processes", len(victims))
	for _, pid := range victims {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range victims {
		for alive(pid) {
			if time.Now().After(deadline) {
				return true, fmt.Errorf("kill shims: process %d still alive", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return true, nil
}

// alive is true while pid exists and is not a zombie (a killed shim's
// zombie waits for init, which may take a moment; it holds nothing).
func alive(pid int) bool {
	s := readProcFile(pid, "stat")
	if s == "" {
		return false
	}
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}

// findDaemon returns the pid of a containerd started with configPath (by
// a previous agent), or 0.
func findDaemon(configPath string) int {
	for _, pid := range pids() {
		args := strings.Split(strings.TrimRight(readProcFile(pid, "cmdline"), "\x00"), "\x00")
		if len(args) == 3 && filepath.Base(args[0]) == "containerd" && args[1] == "--config" && args[2] == configPath {
			return pid
		}
	}
	return 0
}

// adopt watches a containerd we did not start: not our child, so no Wait;
// its exit is seen by polling /proc, with the start time guarding against
// the pid being reused.
func adopt(pid int) *daemon {
	d := &daemon{pid: pid, exited: make(chan struct{})}
	start := startTime(pid)
	go func() {
		for alive(pid) && startTime(pid) == start {
			time.Sleep(200 * time.Millisecond)
		}
		close(d.exited)
	}()
	return d
}

// startTime is field 22 of /proc/PID/stat, the process's start time in
// clock ticks since boot; "" when the process is gone.
func startTime(pid int) string {
	s := readProcFile(pid, "stat")
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}
