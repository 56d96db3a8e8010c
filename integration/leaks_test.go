package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the leak checks end-to-end tests call after a run, and the
// /proc and /proc/self/mountinfo readers the cleanups share.

// netnsDir is where `ip netns add` keeps named network namespaces (a bind
// mount of the namespace file per name).
const netnsDir = "/run/netns"

// checkNoLeakedNetns fails t if any named network namespace starting with
// prefix is still in /run/netns or still mounted there.
func checkNoLeakedNetns(t testing.TB, prefix string) {
	t.Helper()
	var left []string
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !os.IsNotExist(err) {
		t.Errorf("read %s: %v", netnsDir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			left = append(left, e.Name())
		}
	}
	for _, m := range mountPoints() {
		if strings.HasPrefix(m, filepath.Join(netnsDir, prefix)) {
			left = append(left, "mount "+m)
		}
	}
	if len(left) > 0 {
		t.Errorf("network namespaces left with prefix %q: %v", prefix, left)
	}
}

// checkNoLeakedMounts fails t if anything is mounted at dir or below it.
func checkNoLeakedMounts(t testing.TB, dir string) {
	t.Helper()
	if left := mountsUnder(dir); len(left) > 0 {
		t.Errorf("mounts left under %s: %v", dir, left)
	}
}

// mountPoints lists this mount namespace's mount points in mountinfo order
// (a mount stacked on another comes after it).
func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMountinfo(fields[4]))
		}
	}
	return out
}

// mountsUnder lists the mount points at or below dir, deepest last.
func mountsUnder(dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, m := range mountPoints() {
		if m == dir || strings.HasPrefix(m, dir+"/") {
			out = append(out, m)
		}
	}
	return out
}

// unmountUnder lazily unmounts everything at or below dir, newest first so a
// mount stacked on another goes before the one beneath it. It returns what
// would not go.
func unmountUnder(dir string) []string {
	var failed []string
	for i := 0; i < 5; i++ { // a lazy unmount can reveal another mount under it
		ms := mountsUnder(dir)
		if len(ms) == 0 {
			return nil
		}
		failed = failed[:0]
		for j := len(ms) - 1; j >= 0; j-- {
			if err := unix.Unmount(ms[j], unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
				failed = append(failed, fmt.Sprintf("%s: %v", ms[j], err))
			}
		}
	}
	if ms := mountsUnder(dir); len(ms) > 0 && len(failed) == 0 {
		failed = ms
	}
	return failed
}

// unescapeMountinfo undoes the octal escapes mountinfo uses for space, tab,
// newline and backslash.
func unescapeMountinfo(s string) string {
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

// proc is one process as /proc shows it.
type proc struct {
	pid, ppid int
	zombie    bool
}

// listProcs reads every process in /proc; processes that exit meanwhile are
// skipped.
func listProcs() []proc {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name is in parentheses and may itself hold spaces or
		// parentheses, so fields are counted from the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		out = append(out, proc{pid: pid, ppid: ppid, zombie: f[0] == "Z" || f[0] == "X"})
	}
	return out
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return false
	}
	st := s[i+2]
	return st != 'Z' && st != 'X'
}

// pidsInNetns lists the live processes whose network namespace is the one
// bound at nsPath, other than this test binary.
func pidsInNetns(nsPath string) []int {
	want, err := os.Stat(nsPath)
	if err != nil {
		return nil
	}
	var out []int
	for _, p := range listProcs() {
		if p.zombie || p.pid == os.Getpid() {
			continue
		}
		// Zombies have no namespace links, so a process already killed but
		// not yet reaped is not reported.
		fi, err := os.Stat(fmt.Sprintf("/proc/%d/ns/net", p.pid))
		if err == nil && os.SameFile(fi, want) {
			out = append(out, p.pid)
		}
	}
	return out
}

// descendants lists every live process below the given ones (not the
// roots themselves), read from one /proc snapshot.
func descendants(roots []int) []int {
	children := map[int][]int{}
	for _, p := range listProcs() {
		if !p.zombie {
			children[p.ppid] = append(children[p.ppid], p.pid)
		}
	}
	var out []int
	queue := append([]int(nil), roots...)
	seen := map[int]bool{}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	return out
}

// killAndWait sends SIGKILL to pids and waits until none is alive; it
// returns the ones still there at the deadline.
func killAndWait(pids []int, timeout time.Duration) []int {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			sort.Ints(left)
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}
