package containerdproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"golang.org/x/sys/unix"
)

// runcRoot is the state root containerd's runc v2 shim gives runc.
const runcRoot = "/run/containerd/runc"

// deleteAllTasks kills and deletes every task in every namespace of the
// daemon on address, so each shim exits cleanly and runc removes the
// container's state and cgroup; then it removes the namespaces' own cgroup
// directories when they are empty (runc leaves those).
func deleteAllTasks(ctx context.Context, address string, log *slog.Logger) error {
	c, err := containerd.New(address, containerd.WithTimeout(pingTimeout))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", address, err)
	}
	defer c.Close()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var errs []error
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		ctrs, err := c.Containers(nctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list containers in %s: %w", ns, err))
			continue
		}
		for _, ctr := range ctrs {
			task, err := ctr.Task(nctx, nil)
			if err != nil {
				continue // no task: nothing runs
			}
			log.Info("deleting task left running", "namespace", ns, "container", ctr.ID())
			if _, err := task.Delete(nctx, containerd.WithProcessKill); err != nil {
				errs = append(errs, fmt.Errorf("delete task %s/%s: %w", ns, ctr.ID(), err))
			}
		}
		removeNamespaceCgroups(ns)
		// The runc v2 shim keeps container state under its root per
		// namespace and removes only the container's directory.
		_ = unix.Rmdir(filepath.Join(runcRoot, ns))
	}
	return errors.Join(errs...)
}

// removeNamespaceCgroups removes /sys/fs/cgroup/[CONTROLLER/]NS when empty:
// containerd's default cgroupsPath for a container is /NS/ID, and runc
// deletes only the ID level. rmdir of a cgroup fails while it has children
// or processes, so this never disturbs another daemon using the same name.
func removeNamespaceCgroups(ns string) {
	if ns == "" || strings.ContainsAny(ns, "/.") {
		return
	}
	_ = unix.Rmdir(filepath.Join("/sys/fs/cgroup", ns)) // cgroup v2
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, c := range ctrls {
		if c.IsDir() {
			_ = unix.Rmdir(filepath.Join("/sys/fs/cgroup", c.Name(), ns))
		}
	}
}

// MountsUnder lists the mount points at or below dir, deepest first, from
// /proc/self/mountinfo.
func MountsUnder(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// Deepest first, so a mount inside another goes before its parent.
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
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

// UnmountUnder unmounts everything mounted at or below dir (rootfs
// overlays of tasks whose shim was killed, typically). A busy mount is
// detached lazily rather than left behind.
func UnmountUnder(dir string) error {
	mps, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mps {
		if err := unix.Unmount(mp, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
			}
		}
	}
	return errors.Join(errs...)
}

// runcCleanup removes what runc keeps for containers whose shim was
// killed rather than asked to delete them: its state and the container's
// cgroups ("runc delete --force" does both). The tasks are found in the
// daemon's state directory, STATE/io.containerd.runtime.v2.task/NS/ID.
func (p *Process) runcCleanup() {
	runc, err := exec.LookPath("runc")
	if err != nil {
		runc = "/usr/sbin/runc"
	}
	taskDir := filepath.Join(p.state(), "io.containerd.runtime.v2.task")
	nss, _ := os.ReadDir(taskDir)
	for _, ns := range nss {
		ids, _ := os.ReadDir(filepath.Join(taskDir, ns.Name()))
		for _, id := range ids {
			root := filepath.Join(runcRoot, ns.Name())
			if _, err := os.Stat(filepath.Join(root, id.Name())); err != nil {
				continue
			}
			out, err := exec.Command(runc, "--root", root, "delete", "--force", id.Name()).CombinedOutput()
			if err != nil {
				p.log.Warn("runc delete of orphaned container", "namespace", ns.Name(), "id", id.Name(), "err", err, "output", string(out))
			}
		}
		removeNamespaceCgroups(ns.Name())
		_ = unix.Rmdir(filepath.Join(runcRoot, ns.Name()))
	}
}
