package containerd

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/containers"
)

const cgroupRoot = "/sys/fs/cgroup"

// swapAccounting reports whether a memory limit can also cap swap: cgroup
// v1 with memory.memsw.* (swapaccount on), or cgroup v2. Writing a swap
// limit the kernel does not account makes runc fail.
func swapAccounting() bool {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "memory", "memory.memsw.limit_in_bytes")); err == nil {
		return true
	}
	_, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers"))
	return err == nil
}

// oomKilled decides whether an exit was the kernel's OOM killer. A TaskOOM
// event is the usual witness, but events can be missed (agent or
// containerd restarting), so the cgroup's own counter is asked too while
// the cgroup still exists (it goes with the task). Without a counter (old
// kernels), a SIGKILL we did not send to a container that hit its memory
// limit is taken as an OOM kill.
func (r *Runtime) oomKilled(id string, info containers.Container, code uint32) bool {
	r.infoMu.Lock()
	seen, killedByUs := r.oom[id], r.killed[id]
	r.infoMu.Unlock()
	if seen || info.Labels[labelOOM] == "true" {
		return true
	}
	// containerd's default cgroupsPath, which we never override.
	path := filepath.Join("/", r.cfg.Namespace, id)
	if n, ok := cgroupOOMKills(path); ok {
		return n > 0
	}
	return code == 128+9 && !killedByUs && memoryLimitHit(path)
}

// cgroupOOMKills reads the "oom_kill" counter of a container's memory
// cgroup (v1 memory.oom_control, v2 memory.events); ok is false when the
// cgroup or the counter is not there.
func cgroupOOMKills(path string) (n int64, ok bool) {
	for _, f := range []string{
		filepath.Join(cgroupRoot, "memory", path, "memory.oom_control"),
		filepath.Join(cgroupRoot, path, "memory.events"),
	} {
		if n, ok := readCounter(f, "oom_kill"); ok {
			return n, true
		}
	}
	return 0, false
}

// memoryLimitHit: the v1 cgroup's usage reached its limit at least once.
func memoryLimitHit(path string) bool {
	n, ok := readCounter(filepath.Join(cgroupRoot, "memory", path, "memory.failcnt"), "")
	return ok && n > 0
}

// readCounter reads "key value" lines (or, with key "", a bare number).
func readCounter(file, key string) (int64, bool) {
	f, err := os.Open(file)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		var v string
		switch {
		case key == "" && len(fields) == 1:
			v = fields[0]
		case len(fields) == 2 && fields[0] == key:
			v = fields[1]
		default:
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	return 0, false
}
