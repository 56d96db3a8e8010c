package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"flotilla/agent/containerdproc"
)

// One containerd serves every end-to-end test in the binary: each agent
// uses its own containerd namespace in it, as the design says. It starts on
// first use, on a private socket with root and state under a short
// temporary directory, and TestMain stops it after m.Run.
//
// agent/containerdproc starts and stops the daemon. What this file adds is
// what a test run needs beyond that: a directory lock that tells a live
// run's containerd from one a crashed run left, a sweep that removes the
// latter (daemon, shims, containers, mounts, runc state, shim sockets,
// cgroups), and the same leftovers check after a normal stop.

// containerdDirPrefix names the directories under os.TempDir() that hold a
// test containerd; sweepStaleContainerd looks for it.
const containerdDirPrefix = "flt-ctd-"

var shared struct {
	once sync.Once
	proc *containerdProc
	err  error
}

// sharedContainerd returns the address of the package's containerd,
// starting it on first use. It skips t where containerd cannot run.
func sharedContainerd(t testing.TB) string {
	t.Helper()
	requireContainerd(t)
	shared.once.Do(func() {
		// Its log (tasks it had to delete at the end, restarts) goes to
		// stderr: it outlives any one test.
		log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test", "shared-containerd")
		shared.proc, shared.err = startContainerd(log)
	})
	if shared.err != nil {
		t.Fatalf("shared containerd: %v", shared.err)
	}
	return shared.proc.address
}

// stopSharedContainerd stops the shared containerd, if it was started, and
// removes everything it left. TestMain calls it after m.Run.
func stopSharedContainerd() {
	if shared.proc == nil {
		return
	}
	for _, p := range shared.proc.stop() {
		fmt.Fprintln(os.Stderr, "integration: shared containerd:", p)
	}
}

// requireContainerd skips t unless containerd and its runc shim can run.
func requireContainerd(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd tests need root")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("containerd tests need %s (apt-get install containerd runc): %v", bin, err)
		}
	}
}

// containerdProc is one test containerd.
type containerdProc struct {
	dir     string
	address string
	proc    *containerdproc.Process
	lock    *os.File // the flock on dir that says "in use"
}

// newContainerdDir makes a short, locked directory for a containerd. The
// flock is taken while the directory still has a name the sweep ignores,
// then the directory is renamed: a sweep never sees it unlocked while its
// owner lives.
func newContainerdDir() (string, *os.File, error) {
	base := os.TempDir()
	if len(base) > 40 { // keep the socket under Dir (sun_path is 108 bytes)
		base = "/tmp"
	}
	tmp, err := os.MkdirTemp(base, "."+containerdDirPrefix+"new-")
	if err != nil {
		return "", nil, err
	}
	lock, err := os.Open(tmp)
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
	}
	dir := filepath.Join(base, containerdDirPrefix+strings.TrimPrefix(filepath.Base(tmp), "."+containerdDirPrefix+"new-"))
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		os.RemoveAll(tmp)
		return "", nil, fmt.Errorf("containerd dir: %w", err)
	}
	return dir, lock, nil
}

// startContainerd starts a containerd in a fresh locked directory and
// waits until it answers.
func startContainerd(log *slog.Logger) (*containerdProc, error) {
	dir, lock, err := newContainerdDir()
	if err != nil {
		return nil, err
	}
	p := &containerdProc{dir: dir, lock: lock}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p.proc, err = containerdproc.Start(ctx, containerdproc.Config{Dir: dir, Logger: log})
	if err != nil {
		for _, pr := range cleanupContainerdDir(dir, containerdproc.AddressFor(dir)) {
			err = fmt.Errorf("%w; %s", err, pr)
		}
		p.release()
		return nil, err
	}
	p.address = p.proc.Address()
	return p, nil
}

// stop stops the daemon (containerdproc deletes the tasks still running
// first), checks the directory for anything left and undoes it, and
// deletes it. It returns what it had to undo or could not.
func (p *containerdProc) stop() []string {
	var problems []string
	if err := p.proc.Stop(); err != nil {
		problems = append(problems, err.Error())
	}
	problems = append(problems, cleanupContainerdDir(p.dir, p.address)...)
	p.release()
	return problems
}

// release deletes the directory, unless something is still mounted in it
// (RemoveAll would walk into the mount), and drops its lock.
func (p *containerdProc) release() {
	if ms := mountsUnder(p.dir); len(ms) > 0 {
		fmt.Fprintf(os.Stderr, "integration: not removing %s: still mounted %v\n", p.dir, ms)
	} else if err := os.RemoveAll(p.dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration: remove containerd dir:", err)
	}
	p.lock.Close()
}

// ctr runs the ctr CLI against address (and containerd namespace ns, when
// not empty).
func ctr(address, ns string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	pre := []string{"--address", address}
	if ns != "" {
		pre = append(pre, "--namespace", ns)
	}
	c := exec.CommandContext(ctx, "ctr", append(pre, args...)...)
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if err != nil {
		err = fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), err
}

// sweepStaleContainerd cleans and removes the test containerd directories
// whose owner is gone (their flock is free). A live one, of this or a
// concurrent test binary, is left alone.
func sweepStaleContainerd() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), containerdDirPrefix+"*"))
	if os.TempDir() != "/tmp" {
		more, _ := filepath.Glob(filepath.Join("/tmp", containerdDirPrefix+"*"))
		dirs = append(dirs, more...)
	}
	for _, dir := range dirs {
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // held: in use
			continue
		}
		for _, p := range cleanupContainerdDir(dir, containerdproc.AddressFor(dir)) {
			fmt.Fprintf(os.Stderr, "integration: sweep %s: %s\n", dir, p)
		}
		if ms := mountsUnder(dir); len(ms) > 0 {
			fmt.Fprintf(os.Stderr, "integration: sweep %s: not removed, still mounted %v\n", dir, ms)
		} else if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "integration: sweep %s: %v\n", dir, err)
		} else {
			fmt.Fprintf(os.Stderr, "integration: removed stale containerd dir %s\n", dir)
		}
		f.Close()
	}
}

// shimSocketDir is where containerd 1.6/1.7 shims put their sockets,
// whatever containerd's state dir is.
const shimSocketDir = "/run/containerd/s"

// runcRoot is the runc state root the runc v2 shim uses by default.
const runcRoot = "/run/containerd/runc"

// cleanupContainerdDir undoes what a containerd at address, rooted in dir,
// may leave: the daemon itself if it still runs (a crashed test binary does
// not take it along), shims serving it and the containers under them
// (killed), their cgroups, shim sockets and runc state, and mounts under
// dir. It returns what it found and what it could not undo.
func cleanupContainerdDir(dir, address string) []string {
	var problems []string
	config := filepath.Join(dir, "config.toml")
	var daemons []int
	for _, pr := range listProcs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pr.pid))
		if err != nil || pr.zombie {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == "containerd" && slices.Contains(args, config) {
			daemons = append(daemons, pr.pid)
		}
	}
	if len(daemons) > 0 {
		problems = append(problems, fmt.Sprintf("containerd %v still running; killing it", daemons))
		if left := killAndWait(daemons, 10*time.Second); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("containerd %v would not die", left))
		}
	}
	type shim struct {
		pid    int
		ns, id string
	}
	var shims []shim
	for _, pr := range listProcs() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pr.pid))
		if err != nil || pr.zombie {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		s := shim{pid: pr.pid}
		var addr string
		for i := 1; i+1 < len(args); i++ {
			switch args[i] {
			case "-address", "--address":
				addr = args[i+1]
			case "-namespace", "--namespace":
				s.ns = args[i+1]
			case "-id", "--id":
				s.id = args[i+1]
			}
		}
		if addr == address {
			shims = append(shims, s)
		}
	}
	if len(shims) > 0 {
		var roots []int
		for _, s := range shims {
			roots = append(roots, s.pid)
			problems = append(problems, fmt.Sprintf("shim %s/%s (pid %d) left; killing it and its containers", s.ns, s.id, s.pid))
		}
		kids := descendants(roots)
		// The containers' cgroups are the ones runc made: those of the
		// shims' descendants that differ from the shim's own (which is the
		// test binary's and must not be touched).
		shimCg := map[string]bool{}
		for _, pid := range roots {
			for _, d := range cgroupDirs(pid) {
				shimCg[d] = true
			}
		}
		var cgs []string
		for _, pid := range kids {
			for _, d := range cgroupDirs(pid) {
				if !shimCg[d] {
					cgs = append(cgs, d)
				}
			}
		}
		if left := killAndWait(append(kids, roots...), 10*time.Second); len(left) > 0 {
			problems = append(problems, fmt.Sprintf("processes %v would not die", left))
		}
		problems = append(problems, removeCgroups(cgs)...)
		for _, s := range shims {
			os.Remove(shimSocket(address, s.ns, s.id))
		}
	}
	// Every task the containerd ran has a bundle; a killed one also left
	// runc state (naming the bundle, so only ours is removed) and perhaps a
	// shim socket.
	bundles, _ := filepath.Glob(filepath.Join(dir, "state", "io.containerd.runtime.v2.task", "*", "*"))
	for _, b := range bundles {
		ns, id := filepath.Base(filepath.Dir(b)), filepath.Base(b)
		os.Remove(shimSocket(address, ns, id))
		st := filepath.Join(runcRoot, ns, id)
		if data, err := os.ReadFile(filepath.Join(st, "state.json")); err == nil && bytes.Contains(data, []byte(dir+"/")) {
			if err := os.RemoveAll(st); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	if ms := mountsUnder(dir); len(ms) > 0 {
		problems = append(problems, fmt.Sprintf("mounts left: %v", ms))
		problems = append(problems, unmountUnder(dir)...)
	}
	return problems
}

// shimSocket is the socket path a shim for (ns, id) of the containerd at
// address listens on (containerd's shim.SocketAddress).
func shimSocket(address, ns, id string) string {
	return filepath.Join(shimSocketDir, fmt.Sprintf("%x", sha256.Sum256([]byte(filepath.Join(address, ns, id)))))
}

// cgroupDirs lists the cgroup directories pid is in, one per hierarchy,
// resolved through this mount namespace's cgroup mounts.
func cgroupDirs(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil
	}
	mounts := cgroupMounts()
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, m := range mounts {
			if m.matches(parts[1]) && strings.HasPrefix(parts[2], m.root) {
				rel := strings.TrimPrefix(parts[2], m.root)
				if rel != "" && rel != "/" {
					out = append(out, filepath.Join(m.point, rel))
				}
				break
			}
		}
	}
	return out
}

type cgroupMount struct {
	point, root string
	v2          bool
	opts        map[string]bool // v1 super options: controllers and name=
}

// matches reports whether the hierarchy named by a /proc/pid/cgroup
// controller field ("memory", "cpu,cpuacct", "name=systemd", "" for v2)
// is this mount.
func (m cgroupMount) matches(controllers string) bool {
	if controllers == "" {
		return m.v2
	}
	if m.v2 {
		return false
	}
	for _, c := range strings.Split(controllers, ",") {
		if !m.opts[c] {
			return false
		}
	}
	return true
}

func cgroupMounts() []cgroupMount {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []cgroupMount
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		m := cgroupMount{point: unescapeMountinfo(f[4]), root: unescapeMountinfo(f[3]), v2: g[0] == "cgroup2", opts: map[string]bool{}}
		for _, o := range strings.Split(g[2], ",") {
			m.opts[o] = true
		}
		out = append(out, m)
	}
	return out
}

// removeCgroups removes the given (now empty) cgroup directories, retrying
// briefly: the kernel may report a cgroup busy for a moment after its last
// process died.
func removeCgroups(dirs []string) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		var errs []string
		for _, d := range dirs {
			if err := unix.Rmdir(d); err != nil && err != unix.ENOENT {
				left = append(left, d)
				errs = append(errs, fmt.Sprintf("rmdir %s: %v", d, err))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return errs
		}
		dirs = left
		time.Sleep(50 * time.Millisecond)
	}
}

// removeEmptyNamespaceDirs removes the per-namespace directories runc
// leaves once a containerd namespace's last container is gone: its state
// root and the parent cgroup in each hierarchy. Only empty ones go.
func removeEmptyNamespaceDirs(ns string) {
	_ = os.Remove(filepath.Join(runcRoot, ns))
	for _, m := range cgroupMounts() {
		_ = unix.Rmdir(filepath.Join(m.point, ns))
	}
}
