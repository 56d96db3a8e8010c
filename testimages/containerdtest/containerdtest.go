package containerdtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Binaries the tests use; Debian's packages put them here.
const (
	ContainerdPath = "/usr/bin/containerd"
	CtrPath        = "/usr/bin/ctr"
)

// maxSocketPath keeps the socket under the kernel's sun_path limit (108
// bytes) with room for the ".ttrpc" suffix containerd adds.
const maxSocketPath = 100

// Containerd is one running private containerd.
type Containerd struct {
	// Address is the gRPC socket, for ctr -a or containerd.New.
	Address string
	// Dir holds config.toml, root/, state/ and containerd.log.
	Dir string

	cmd  *exec.Cmd
	done chan struct{}
}

// Skip skips t unless containerd can be run here: root, and the
// containerd, ctr and runc binaries present.
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd needs root; run the tests as root")
	}
	for _, bin := range []string{ContainerdPath, CtrPath} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("%s is not installed (apt-get install containerd)", bin)
		}
	}
	if _, err := exec.LookPath("runc"); err != nil {
		if _, err := os.Stat("/usr/sbin/runc"); err != nil {
			t.Skip("runc is not installed (apt-get install runc)")
		}
	}
}

// Start starts a private containerd and stops it, with everything it
// made, when t ends. Tests should use namespaces of their own names:
// the cgroups ctr run makes are named after them. It skips t if containerd cannot run here (see Skip).
func Start(t testing.TB) *Containerd {
	t.Helper()
	Skip(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "c.sock")
	if len(sock) > maxSocketPath {
		// Long test names make long temp dirs: put the socket in a short
		// one of its own.
		short, err := os.MkdirTemp("", "ctd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		sock = filepath.Join(short, "c.sock")
	}
	c := &Containerd{Address: sock, Dir: dir, done: make(chan struct{})}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
# The CRI plugin would want a CNI setup and its own images; opt would write
# to /opt; the other snapshotters only fail to load.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = %q

[debug]
  level = "info"
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(ContainerdPath, "--config", cfgPath)
	c.cmd.Stdout, c.cmd.Stderr = logFile, logFile
	// Shims find runc by PATH; tests may run with a thin one.
	c.cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	// Its own process group, so a ^C to the test does not race the
	// cleanup below.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start containerd: %v", err)
	}
	go func() {
		c.cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	t.Cleanup(func() { c.stop(t) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
			if _, err := c.Run("version"); err == nil {
				return c
			}
		}
		select {
		case <-c.done:
			t.Fatalf("containerd exited at start:\n%s", c.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not come up within 30s:\n%s", c.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Log returns what containerd has logged so far.
func (c *Containerd) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "containerd.log"))
	return string(b)
}

// Run runs ctr against this containerd and returns its combined output;
// the error is an *exec.ExitError when ctr ran and failed.
func (c *Containerd) Run(args ...string) (string, error) {
	cmd := exec.Command(CtrPath, append([]string{"--address", c.Address}, args...)...)
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Ctr runs ctr and fails t if it fails.
func (c *Containerd) Ctr(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.Run(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// stop removes every task and container in every namespace, stops the
// daemon, then clears what could outlive it: shims of this socket and
// mounts under its directories.
func (c *Containerd) stop(t testing.TB) {
	select {
	case <-c.done:
	default:
		nss, _ := c.Run("namespaces", "ls", "-q")
		defer removeNamespaceCgroups(t, strings.Fields(nss))
		for _, ns := range strings.Fields(nss) {
			tasks, _ := c.Run("-n", ns, "tasks", "ls", "-q")
			for _, id := range strings.Fields(tasks) {
				if out, err := c.Run("-n", ns, "tasks", "rm", "-f", id); err != nil {
					t.Logf("cleanup: remove task %s/%s: %v %s", ns, id, err, out)
				}
			}
			ctrs, _ := c.Run("-n", ns, "containers", "ls", "-q")
			for _, id := range strings.Fields(ctrs) {
				if out, err := c.Run("-n", ns, "containers", "rm", id); err != nil {
					t.Logf("cleanup: remove container %s/%s: %v %s", ns, id, err, out)
				}
			}
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			c.cmd.Process.Kill()
			<-c.done
		}
	}
	for _, pid := range shimsOf(c.Address) {
		t.Logf("cleanup: killing leftover shim %d", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	unmountUnder(t, c.Dir)
}

// removeNamespaceCgroups removes the per-namespace parent cgroups
// (/sys/fs/cgroup/<controller>/<namespace>) that ctr run's default cgroup
// path "/<namespace>/<id>" leaves behind once its containers are gone.
// rmdir only succeeds on an empty cgroup, so one still in use by anybody
// is left alone.
func removeNamespaceCgroups(t testing.TB, namespaces []string) {
	for _, ns := range namespaces {
		if ns == "" || strings.ContainsAny(ns, "/.") {
			continue
		}
		dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
		if d := filepath.Join("/sys/fs/cgroup", ns); isDir(d) {
			dirs = append(dirs, d) // cgroup v2
		}
		for _, d := range dirs {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				t.Logf("cleanup: remove cgroup %s: %v", d, err)
			}
		}
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// shimsOf finds shim processes serving the containerd at address: they
// are started with "-address <socket>".
func shimsOf(address string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == address {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// unmountUnder lazily unmounts whatever is still mounted below dir,
// deepest first, so the temp dir can be removed.
func unmountUnder(t testing.TB, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Logf("cleanup: unmount %s: %v", points[i], err)
		} else {
			t.Logf("cleanup: unmounted leftover %s", points[i])
		}
	}
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
