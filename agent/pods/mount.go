package pods

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountPoints lists the mount points of this process's mount namespace.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		out = append(out, unescapeMountPath(fields[4]))
	}
	return out, sc.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes ("\040" for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isMountPoint(path string) (bool, error) {
	mps, err := mountPoints()
	if err != nil {
		return false, err
	}
	clean := filepath.Clean(path)
	for _, mp := range mps {
		if mp == clean {
			return true, nil
		}
	}
	return false, nil
}

func mountTmpfs(dir, opts string) error {
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// unmountUnder unmounts every mount point at or below root, deepest first,
// so that removing root never reaches into a mounted filesystem.
func unmountUnder(root string) error {
	mps, err := mountPoints()
	if err != nil {
		return err
	}
	root = filepath.Clean(root)
	var under []string
	for _, mp := range mps {
		if mp == root || strings.HasPrefix(mp, root+"/") {
			under = append(under, mp)
		}
	}
	sort.Slice(under, func(i, j int) bool { return len(under[i]) > len(under[j]) })
	for _, mp := range under {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	return nil
}

// removeLogFiles removes a container's log file and its rotated siblings
// (<path>.<n>, <path>.<n>.gz, ...).
func removeLogFiles(path string) {
	_ = os.Remove(path)
	if matches, err := filepath.Glob(path + ".*"); err == nil {
		for _, m := range matches {
			_ = os.Remove(m)
		}
	}
}
